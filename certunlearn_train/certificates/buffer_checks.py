"""Verification of the certificate's ``buffers`` field (THEORY.md section 10.4).

The field is ``{"public": {"names", "sha256", "assumption"}, "private": {"names",
"noisy_phase", "afterwards"}}``, each part optional. Its types and vocabulary are always
checked; given the model, the public buffers' hash is recomputed, every name must be a buffer
of the model, and (given as a module) every buffer of the model must be listed. That the public
buffers are public, and that the private ones were handled as stated, are declarations.
"""
from __future__ import annotations

from typing import Dict, Mapping

from ._values import SHA_RE, CertificateError
from .hashing import public_parameters_record
from .schema import BUFFERS_AFTERWARDS, NOISY_PHASE_STATISTICS

__all__ = ["check_buffers_types", "check_buffers_model"]


def _names(part, where: str) -> list:
    names = part.get("names")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n
                                                           for n in names) \
            or len(set(names)) != len(names):
        raise CertificateError(f"buffers.{where}.names must be a list of distinct buffer names")
    return names


def check_buffers_types(buffers) -> None:
    """Refuse a malformed ``buffers`` field (None: the model had no buffer)."""
    if buffers is None:
        return
    if not isinstance(buffers, Mapping) or not buffers or not set(buffers) <= {"public",
                                                                             "private"}:
        raise CertificateError("buffers must be null or an object with \"public\" and/or "
                               "\"private\"")
    pub, priv = buffers.get("public"), buffers.get("private")
    if pub is not None:
        if not isinstance(pub, Mapping) or set(pub) != {"names", "sha256", "assumption"} \
                or not isinstance(pub["sha256"], str) or not SHA_RE.match(pub["sha256"]) \
                or not isinstance(pub["assumption"], str):
            raise CertificateError("buffers.public must be {\"names\": [...], \"sha256\": 64 hex "
                                   "digits, \"assumption\": text}")
        _names(pub, "public")
    if priv is not None:
        if not isinstance(priv, Mapping) or set(priv) != {"names", "noisy_phase", "afterwards"}:
            raise CertificateError("buffers.private must be {\"names\": [...], \"noisy_phase\", "
                                   "\"afterwards\"}")
        _names(priv, "private")
        if priv["noisy_phase"] != NOISY_PHASE_STATISTICS:
            raise CertificateError(f"buffers.private.noisy_phase must be "
                                   f"{NOISY_PHASE_STATISTICS!r} (the only treatment the guarantee "
                                   f"covers), got {priv['noisy_phase']!r}")
        if priv["afterwards"] not in BUFFERS_AFTERWARDS:
            raise CertificateError(f"buffers.private.afterwards must be one of "
                                   f"{', '.join(map(repr, BUFFERS_AFTERWARDS))}, got "
                                   f"{priv['afterwards']!r}")
    if pub is not None and priv is not None and set(pub["names"]) & set(priv["names"]):
        raise CertificateError("buffers.public and buffers.private name the same buffer")


def check_buffers_model(cert, model, not_checked: Dict[str, str]) -> None:
    """With ``model`` (a module or its state dict), check the field against it; list the rest."""
    buffers = cert.buffers
    if buffers is None:  # a model without buffers (or with constant integer ones only)
        if model is not None and callable(getattr(model, "named_buffers", None)):
            floats = [n for n, b in model.named_buffers()
                      if b is not None and b.is_floating_point()]
            if floats:
                raise CertificateError(
                    f"the model has floating-point buffer(s) {', '.join(floats[:3])}"
                    f"{' ...' if len(floats) > 3 else ''} but the certificate records no "
                    "buffers field saying what the run did to them")
        return
    pub, priv = buffers.get("public"), buffers.get("private")
    if model is None:
        not_checked["buffers"] = "no model given"
    else:
        state = model.state_dict() if hasattr(model, "state_dict") else model
        listed = (pub["names"] if pub else []) + (priv["names"] if priv else [])
        missing = [n for n in listed if n not in state]
        if missing:
            raise CertificateError(f"buffers name(s) {', '.join(missing)} that the model does "
                                   "not have")
        if pub is not None and public_parameters_record(state, pub["names"])["sha256"] \
                != pub["sha256"]:
            raise CertificateError("the model's public buffers do not match the certificate's "
                                   "buffers.public.sha256")
        if callable(getattr(model, "named_buffers", None)):
            unlisted = [n for n, b in model.named_buffers() if b is not None
                        and n not in set(listed)]
            if unlisted:
                raise CertificateError(f"the model's buffer(s) {', '.join(unlisted)} are not in "
                                       "the certificate's buffers record")
        else:
            not_checked["buffers.names"] = ("that every buffer of the model is listed: checked "
                                            "only when the model is given as a module")
    if pub is not None:
        not_checked["buffers.public.names"] = (
            "that these buffers are public (fixed independently of the private data, their "
            "modules never updated on it) is the user's declaration")
        not_checked["buffers.public.assumption"] = "the issuer's words for that declaration"
    if priv is not None:
        not_checked["buffers.private"] = (
            "that the noisy phase used these constants for the private statistics and that "
            "they were re-estimated afterwards is the issuer's statement (the released values "
            "are covered by model_sha256_after)")
