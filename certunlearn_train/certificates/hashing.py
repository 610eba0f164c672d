"""What a certificate binds: the SHA-256 of weights and of public parameters, and the signed bytes."""
from __future__ import annotations

import hashlib
import json
from typing import Any, Dict, Mapping

from ._values import CertificateError

__all__ = ["weights_sha256", "public_parameters_record", "canonical_bytes"]


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


def public_parameters_record(model_or_state, names) -> Dict[str, Any]:
    """``{"names": [...], "sha256": ...}`` of frozen public parameters (THEORY.md section 10.2).

    The hash is :func:`weights_sha256` of the state-dict entries ``names`` in the order given, so
    anyone holding the model can recompute it.
    """
    state = model_or_state.state_dict() if hasattr(model_or_state, "state_dict") \
        else model_or_state
    names = list(names)
    if not names or not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
        raise CertificateError(f"public parameter names must be distinct strings, got {names!r}")
    missing = [n for n in names if n not in state]
    if missing:
        raise CertificateError(f"public parameter(s) {', '.join(missing)} are not in the model")
    return {"names": names, "sha256": weights_sha256({n: state[n] for n in names})}


def canonical_bytes(data: Mapping[str, Any]) -> bytes:
    """The bytes a signature covers: sorted-key compact JSON of the certificate without
    ``signature`` (ASCII, floats by ``repr``, no NaN)."""
    body = {k: v for k, v in data.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")
