"""Run certificates: the accountant's certificate plus everything needed to audit one unlearning run.

A :class:`RunCertificate` records the method, every parameter, the noise sigma, the (eps, delta)
guarantee, the accountant's certificate (with its derivation), the retain and forget set sizes,
the SHA-256 of the model weights before and after, and the library versions. It never records
the noise seed (whoever knows it can remove the noise); it only records whether the caller chose
one, which makes the run a reproduction rather than a private release.

:meth:`RunCertificate.verify` recomputes the guarantee with the accountant from the recorded
parameters and checks it against every recorded number, then (given the model) the weights'
hash. It raises :class:`CertificateError` (a ``ValueError``) with the reason.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import io
import json
import math
import os
import tempfile
from typing import Any, Dict, Mapping, Optional

__all__ = ["RunCertificate", "CertificateError", "build_run_certificate", "weights_sha256",
           "atomic_write_bytes", "FORMAT", "RUN_METHODS"]

FORMAT = "certunlearn.run/1"
#: Methods whose guarantee the accountant computes from (sigma, parameters).
_ACCOUNTED = ("gradient_clipping", "model_clipping", "output_perturbation")
RUN_METHODS = _ACCOUNTED + ("retrain", "dpsgd")


class CertificateError(ValueError):
    """A certificate is malformed, does not match the model, or its guarantee cannot be reproduced."""


def weights_sha256(model_or_state) -> str:
    """SHA-256 over a model's ``state_dict`` (names, dtypes, shapes and raw little-endian bytes).

    Accepts an ``nn.Module`` or a state dict; both give the same digest for the same weights.
    """
    import torch
    state = model_or_state.state_dict() if hasattr(model_or_state, "state_dict") \
        else model_or_state
    if not isinstance(state, Mapping):
        raise CertificateError(f"expected a model or a state dict, got {type(state).__name__}")
    h = hashlib.sha256()
    for name, tensor in state.items():
        if not isinstance(tensor, torch.Tensor):
            raise CertificateError(f"state dict entry {name!r} is not a tensor")
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory and a rename."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _versions() -> Dict[str, str]:
    import certunlearn_theory
    import certunlearn_train
    out = {"certunlearn": certunlearn_train.__version__,
           "certunlearn_theory": certunlearn_theory.__version__}
    try:
        import torch
        out["torch"] = torch.__version__
    except ImportError:  # pragma: no cover
        pass
    return out


def _accountant_certificate(method: str, sigma: float, eps: float, delta: float,
                            params: Mapping[str, Any], forget_size: Optional[int]):
    import certunlearn_theory as ct
    if method == "dpsgd":
        return ct.issue_dpsgd_certificate(
            params["noise_multiplier"], params["sampling_rate"], params["steps"], delta,
            group_size=params["group_size"], eps=eps)
    return ct.issue_certificate(
        sigma, delta, params["steps"], params["C0"], params.get("C1"), params.get("lr"),
        params.get("lam", 0.0), method=method, C2=params.get("C2"),
        sigma0=params.get("sigma0", 0.0), eps=eps)


def build_run_certificate(*, method: str, sigma: Optional[float], eps: float, delta: float,
                          parameters: Mapping[str, Any], retain_size: int,
                          forget_size: Optional[int], sha_before: str, sha_after: str,
                          seed_user_supplied: bool,
                          public_parameters: Optional[Mapping[str, Any]] = None,
                          ) -> "RunCertificate":
    """Issue the accountant's certificate for the run and wrap it with the run's metadata.

    ``public_parameters``: for a run that left some parameters untouched, their ``names``, the
    ``sha256`` over them and the ``assumption`` under which the guarantee covers them.
    """
    params = dict(parameters)
    if method == "retrain":
        acct, eps_c, delta_c = None, 0.0, 0.0
    else:
        acct_obj = _accountant_certificate(method, sigma, eps, delta, params, forget_size)
        acct = acct_obj.to_dict()
        eps_c, delta_c = float(acct_obj.eps), float(acct_obj.delta)
    return RunCertificate(
        method=method, epsilon=eps_c, delta=delta_c, sigma=sigma, parameters=params,
        retain_size=int(retain_size), forget_size=forget_size, model_sha256_before=sha_before,
        model_sha256_after=sha_after, accountant=acct, library_version=_versions(),
        noise_seed_user_supplied=bool(seed_user_supplied),
        created_utc=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        public_parameters=None if public_parameters is None else dict(public_parameters))


@dataclasses.dataclass(frozen=True)
class RunCertificate:
    """The record of one unlearning (or baseline) run; see the module docstring.

    ``epsilon`` and ``delta`` are the accountant's (rounded up); ``retrain`` is exact: (0, 0).
    """

    method: str
    epsilon: float
    delta: float
    sigma: Optional[float]
    parameters: Dict[str, Any]
    retain_size: int
    forget_size: Optional[int]
    model_sha256_before: str
    model_sha256_after: str
    accountant: Optional[Dict[str, Any]]
    library_version: Dict[str, str]
    noise_seed_user_supplied: bool
    created_utc: str
    format: str = FORMAT
    public_parameters: Optional[Dict[str, Any]] = None

    # -- serialisation ----------------------------------------------------------------------
    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "RunCertificate":
        if not isinstance(data, Mapping):
            raise CertificateError(f"a certificate must be a JSON object, got {type(data).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise CertificateError(f"unknown certificate field(s): {', '.join(unknown)}")
        missing = [n for n in names if n not in data and n not in ("format", "public_parameters")]
        if missing:
            raise CertificateError(f"certificate is missing field(s): {', '.join(missing)}")
        return cls(**{n: data[n] for n in names if n in data})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> "RunCertificate":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CertificateError(f"certificate is not valid JSON ({exc})") from None
        return cls.from_dict(data)

    def save(self, path: str) -> None:
        """Write the JSON atomically (temporary file + rename)."""
        atomic_write_bytes(path, (self.to_json() + "\n").encode())

    @classmethod
    def load(cls, path: str) -> "RunCertificate":
        try:
            with open(path, encoding="utf-8") as fh:
                return cls.from_json(fh.read())
        except OSError as exc:
            raise CertificateError(f"cannot read certificate {path!r}: {exc.strerror}") from None

    # -- verification -----------------------------------------------------------------------
    def verify(self, model=None) -> None:
        """Check the certificate (and, if given, that ``model`` is the certified output).

        Steps: the format and field types; for accounted methods, the accountant certificate's
        own check (``Certificate.verify``), then a fresh certificate issued from the recorded
        sigma and parameters must equal the recorded one and carry the recorded (eps, delta);
        ``retrain`` must claim exactly (0, 0); finally the SHA-256 of ``model``'s weights must
        equal ``model_sha256_after``.

        Raises:
            CertificateError: with the first reason found.
        """
        if self.format != FORMAT:
            raise CertificateError(f"unsupported certificate format {self.format!r} "
                                   f"(this library reads {FORMAT!r})")
        if self.method not in RUN_METHODS:
            raise CertificateError(f"unknown method {self.method!r}")
        for name in ("epsilon", "delta"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                    or v < 0:
                raise CertificateError(f"{name} must be a finite number >= 0, got {v!r}")
        if not isinstance(self.parameters, Mapping):
            raise CertificateError("parameters must be an object")
        if self.method == "retrain":
            if self.epsilon != 0 or self.delta != 0 or self.accountant is not None:
                raise CertificateError("a retrain certificate claims exact unlearning: epsilon "
                                       "and delta must be 0 and there is no accountant record")
        else:
            self._verify_accounted()
        if model is not None:
            got = weights_sha256(model)
            if got != self.model_sha256_after:
                raise CertificateError(
                    f"model weights do not match the certificate: SHA-256 {got[:16]}... but the "
                    f"certificate records {str(self.model_sha256_after)[:16]}...")

    def _verify_accounted(self) -> None:
        import certunlearn_theory as ct
        if not isinstance(self.accountant, Mapping):
            raise CertificateError(f"method {self.method} needs the accountant's certificate")
        try:
            recorded = ct.Certificate.from_dict(self.accountant)
            recorded.verify()
        except (ValueError, KeyError, TypeError) as exc:
            raise CertificateError(f"the accountant's certificate does not verify: {exc}") from None
        try:
            fresh = _accountant_certificate(self.method, self.sigma, self.epsilon, self.delta,
                                            self.parameters, self.forget_size)
        except (ValueError, KeyError, TypeError, ArithmeticError) as exc:
            raise CertificateError(
                f"the accountant cannot reproduce the guarantee ({self.epsilon}, {self.delta}) "
                f"from the recorded parameters: {exc}") from None
        if float(fresh.eps) > self.epsilon or float(fresh.delta) > self.delta:
            raise CertificateError(
                f"the accountant cannot reproduce the guarantee: recomputed (eps, delta) = "
                f"({float(fresh.eps)}, {float(fresh.delta)}), certificate claims "
                f"({self.epsilon}, {self.delta})")
        mismatched = _diff(fresh.to_dict(), dict(self.accountant))
        if mismatched:
            raise CertificateError(
                "the accountant's record does not match the run's parameters: "
                + "; ".join(mismatched))


def _diff(a: Mapping, b: Mapping, prefix: str = "") -> list:
    out = []
    for key in sorted(set(a) | set(b), key=str):
        if key in _VOLATILE:
            continue
        va, vb = a.get(key, "<absent>"), b.get(key, "<absent>")
        if isinstance(va, Mapping) and isinstance(vb, Mapping):
            out += _diff(va, vb, f"{prefix}{key}.")
        elif va != vb:
            out.append(f"{prefix}{key}: recomputed {va!r}, recorded {vb!r}")
    return out


#: Accountant record fields that legitimately differ between two issues (none known so far).
_VOLATILE: frozenset = frozenset()


def save_model_file(path: str, model, arch: Optional[Mapping[str, Any]] = None) -> None:
    """Save ``{"state_dict", "arch"}`` with ``torch.save``, atomically."""
    import torch
    buf = io.BytesIO()
    torch.save({"state_dict": model.state_dict(), "arch": dict(arch or {})}, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_model_file(path: str):
    """Load a file written by :func:`save_model_file`; returns ``(state_dict, arch)``."""
    import torch
    if not os.path.isfile(path):
        raise CertificateError(f"model file {path!r} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file
        raise CertificateError(f"cannot load model file {path!r}: {exc}") from None
    if isinstance(obj, Mapping) and "state_dict" in obj:
        return obj["state_dict"], dict(obj.get("arch") or {})
    if isinstance(obj, Mapping):
        return obj, {}
    raise CertificateError(f"model file {path!r} holds a {type(obj).__name__}, not a state dict")


__all__ += ["save_model_file", "load_model_file"]
