"""Issuing a run certificate: the accountant's certificate plus the run's metadata."""
from __future__ import annotations

import datetime as _dt
import json
from typing import Any, Mapping, Optional

from certunlearn_theory.float32 import run_delta, split_tail_delta

from ._values import CertificateError, same_value
from .record import RunCertificate
from .schema import (
    METHOD_ALIASES,
    RUN_METHODS,
    issue_accountant,
    library_versions,
    normalise_params,
    rename_params,
)

__all__ = ["build_run_certificate"]


def build_run_certificate(*, method: str, sigma: Optional[float], eps: float, delta: float,
                          parameters: Mapping[str, Any], retain_size: int,
                          forget_size: Optional[int], sha_before: str, sha_after: str,
                          seed_user_supplied: bool,
                          public_parameters: Optional[Mapping[str, Any]] = None,
                          buffers: Optional[Mapping[str, Any]] = None,
                          ) -> RunCertificate:
    """Issue the accountant's certificate for the run and wrap it with the run's metadata.

    ``method`` may be an alias from :data:`METHOD_ALIASES` (``"dpsgd"``); parameter names may be
    the previous ones (``steps`` for ``T``, ``lr`` for ``gamma``): both are mapped to this
    format's names.
    """
    method = METHOD_ALIASES.get(method, method)
    if method not in RUN_METHODS:
        raise CertificateError(f"method must be one of {', '.join(RUN_METHODS)}, got {method!r}")
    if method == "retrain":
        acct, eps_c, delta_c, sigma = None, 0.0, 0.0, None
        params = normalise_params(method, parameters, None)
    else:
        renamed = rename_params(method, parameters)
        tail = renamed.get("float32_tail_delta") if method == "gradient_clipping" else None
        acct_delta = delta if tail is None else split_tail_delta(delta)[0]
        if tail is not None and not same_value(tail, split_tail_delta(delta)[1]):
            raise CertificateError(f"parameters.float32_tail_delta = {tail!r} is not delta * "
                                   f"2^-10 = {split_tail_delta(delta)[1]!r}")
        acct_obj = issue_accountant(method, sigma, eps, acct_delta, renamed)
        acct = acct_obj.to_dict()
        eps_c, delta_c, sigma = float(acct_obj.eps), float(acct_obj.delta), float(acct_obj.sigma)
        if tail is not None:
            delta_c = run_delta(delta_c, tail)
        params = normalise_params(method, renamed, acct["parameters"])
    cert = RunCertificate(
        method=method, eps=eps_c, delta=delta_c, sigma=sigma, parameters=params,
        retain_size=int(retain_size),
        forget_size=None if forget_size is None else int(forget_size),
        model_sha256_before=sha_before, model_sha256_after=sha_after,
        public_parameters=None if public_parameters is None else dict(public_parameters),
        buffers=None if buffers is None else json.loads(json.dumps(buffers)),
        accountant=acct, library_version=library_versions(),
        noise_seed_user_supplied=bool(seed_user_supplied),
        created_utc=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    cert.verify(allow_unverifiable=True)  # the issuer never writes what verify would refuse
    return cert
