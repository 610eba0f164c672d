"""Reading certificates of the previous format, ``certunlearn.run/1``."""
from __future__ import annotations

from typing import Any, Dict, Mapping

from .schema import (
    FORMAT,
    METHOD_ALIASES,
    RUN_METHODS,
    RUN_ONLY,
    acct_keys,
    no_unused_finetune_lr,
    rename_params,
)

__all__ = ["from_v1"]


def from_v1(data: Mapping[str, Any]) -> Dict[str, Any]:
    """A ``certunlearn.run/1`` dict in this format's vocabulary (same values, new names).

    Version 1 wrote ``epsilon``, ``dpsgd``, ``steps`` (for T) and ``lr``; it recorded unused slots
    as null or 0 (dropped here) and left ``conversion`` / ``noise_after_projection`` to the
    accountant record (copied from it). Anything else is kept for :meth:`verify` to judge.
    """
    out = dict(data)
    out["format"] = FORMAT
    if "epsilon" in out:
        out["eps"] = out.pop("epsilon")
    method = out.get("method")
    if method in METHOD_ALIASES:
        method = METHOD_ALIASES[method]
    out["method"] = method
    params = out.get("parameters")
    if method in RUN_METHODS and isinstance(params, Mapping):
        acct = out.get("accountant")
        acct_params = acct.get("parameters") if isinstance(acct, Mapping) else None
        acct_params = acct_params if isinstance(acct_params, Mapping) else {}
        renamed = rename_params(method, params)
        for key in ("conversion", "noise_after_projection"):
            if key in acct_params and key not in renamed:
                renamed[key] = acct_params[key]
        keep = set(RUN_ONLY[method]) | set(acct_keys(acct_params))
        out["parameters"] = no_unused_finetune_lr(
            {k: v for k, v in renamed.items()
             if k in keep or not (v is None or (not isinstance(v, bool) and v == 0))})
    out.setdefault("public_parameters", None)
    out.setdefault("signature", None)
    return out
