"""A record of post-processing done by the user's own code after the noisy phase.

``unlearn(..., finetune_epochs=0)`` returns the noisy-phase model and its certificate. Anything
computed from that model, the retain set and public data alone is post-processing and keeps the
guarantee (THEORY.md section 10.5): a fine-tuning loop of one's own, pruning, quantisation. A
:class:`PostprocessRecord` (format ``certunlearn.postprocess/1``, written next to the
certificate) binds the certificate (the SHA-256 of its signed bytes), the noisy-phase model
(the certificate's ``model_sha256_after``) and the final model, states the assumption the
guarantee then rests on, and carries the guarantee unchanged.

:func:`verify_postprocess` checks the certificate itself, the bindings and whichever models are
given, and lists the rest (above all the assumption) as not checked.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
from typing import Any, Dict, Mapping, Tuple

from ..files import atomic_write_bytes
from ._values import SHA_RE, CertificateError, check_utc_time, read_record, same_value
from .checks import VerifyReport
from .hashing import canonical_bytes, weights_sha256

__all__ = ["PostprocessRecord", "PostprocessReport", "record_postprocess", "verify_postprocess",
           "POSTPROCESS_FORMAT", "POSTPROCESS_ASSUMPTION", "certificate_sha256"]

POSTPROCESS_FORMAT = "certunlearn.postprocess/1"
POSTPROCESS_ASSUMPTION = ("the post-processing read only the noisy-phase model, the retain set "
                          "and public data: not the forget set, not the starting model")


def certificate_sha256(cert) -> str:
    """SHA-256 of the bytes a certificate's signature covers (every field but the signature)."""
    return hashlib.sha256(canonical_bytes(cert.to_dict())).hexdigest()


@dataclasses.dataclass(frozen=True)
class PostprocessRecord:
    """See the module docstring. ``eps`` and ``delta`` are the certificate's, unchanged."""

    certificate_sha256: str
    noisy_model_sha256: str
    model_sha256: str
    eps: float
    delta: float
    description: str
    assumption: str
    created_utc: str
    format: str = POSTPROCESS_FORMAT

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, allow_nan=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "PostprocessRecord":
        if not isinstance(data, Mapping) or data.get("format") != POSTPROCESS_FORMAT:
            fmt = data.get("format") if isinstance(data, Mapping) else None
            raise CertificateError(f"not a post-processing record (format {fmt!r}, expected "
                                   f"{POSTPROCESS_FORMAT!r})")
        names = [f.name for f in dataclasses.fields(cls)]
        if set(data) != set(names):
            extra, missing = sorted(set(data) - set(names)), sorted(set(names) - set(data))
            raise CertificateError(f"post-processing record: unknown field(s) {extra}, missing "
                                   f"field(s) {missing}")
        rec = cls(**{n: data[n] for n in names})
        rec.check_types()
        return rec

    @classmethod
    def from_json(cls, text: str) -> "PostprocessRecord":
        try:
            return cls.from_dict(json.loads(text))
        except (json.JSONDecodeError, RecursionError) as exc:
            raise CertificateError(f"post-processing record is not valid JSON ({exc})") from None

    def save(self, path: str) -> None:
        """Write the JSON atomically (temporary file + rename)."""
        atomic_write_bytes(path, (self.to_json() + "\n").encode())

    @classmethod
    def load(cls, path: str) -> "PostprocessRecord":
        raw = read_record(path, "post-processing record", 1 << 20)
        try:
            return cls.from_json(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise CertificateError(f"{path}: not a post-processing record (not UTF-8 text)"
                                   ) from None

    def check_types(self) -> None:
        for name in ("certificate_sha256", "noisy_model_sha256", "model_sha256"):
            v = getattr(self, name)
            if not isinstance(v, str) or not SHA_RE.match(v):
                raise CertificateError(f"{name} must be 64 lowercase hex digits, got {v!r}")
        for name in ("description", "assumption"):
            if not isinstance(getattr(self, name), str):
                raise CertificateError(f"{name} must be text, got {getattr(self, name)!r}")
        if self.assumption != POSTPROCESS_ASSUMPTION:
            raise CertificateError(f"assumption must be {POSTPROCESS_ASSUMPTION!r} (the one the "
                                   f"guarantee rests on), got {self.assumption!r}")
        check_utc_time(self.created_utc)


def record_postprocess(cert, final_model, *, noisy_model=None,
                       description: str = "") -> PostprocessRecord:
    """The record of a post-processing step from ``cert``'s noisy-phase model to ``final_model``
    (a module or its state dict). ``noisy_model``, if given, must match the certificate.
    ``description`` is free text (what was done: "fine-tuned 20 epochs, SGD, cosine lr, ...")."""
    if noisy_model is not None and weights_sha256(noisy_model) != cert.model_sha256_after:
        raise CertificateError("noisy_model does not match the certificate's "
                               "model_sha256_after")
    if not isinstance(description, str):
        raise CertificateError(f"description must be text, got {type(description).__name__}")
    return PostprocessRecord(
        certificate_sha256=certificate_sha256(cert), noisy_model_sha256=cert.model_sha256_after,
        model_sha256=weights_sha256(final_model), eps=cert.eps, delta=cert.delta,
        description=description, assumption=POSTPROCESS_ASSUMPTION,
        created_utc=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))


@dataclasses.dataclass(frozen=True)
class PostprocessReport:
    """What :func:`verify_postprocess` established: the certificate's report, whether each model
    was checked, and every claim taken on trust."""
    certificate: VerifyReport
    eps: float
    delta: float
    noisy_model_checked: bool
    model_checked: bool
    not_checked: Tuple[Tuple[str, str], ...]

    def not_checked_fields(self):
        return [f for f, _ in self.not_checked]


def verify_postprocess(record: PostprocessRecord, cert, *, model=None, noisy_model=None,
                       public_key=None) -> PostprocessReport:
    """Check ``record`` against the certificate ``cert`` (verified itself, against
    ``noisy_model`` when given) and the final ``model`` when given.

    Raises:
        CertificateError: with the first reason found.
    """
    record.check_types()
    report = cert.verify(noisy_model, public_key=public_key)
    not_checked: Dict[str, str] = {f"certificate.{k}": v for k, v in report.not_checked}
    if record.certificate_sha256 != certificate_sha256(cert):
        raise CertificateError("the post-processing record was issued for another certificate "
                               "(certificate_sha256 differs)")
    if record.noisy_model_sha256 != cert.model_sha256_after:
        raise CertificateError("the post-processing record's noisy_model_sha256 is not the "
                               "certificate's model_sha256_after")
    for key in ("eps", "delta"):
        if not same_value(getattr(record, key), getattr(cert, key)):
            raise CertificateError(f"the post-processing record claims {key} = "
                                   f"{getattr(record, key)!r}, the certificate "
                                   f"{getattr(cert, key)!r}; post-processing carries the "
                                   f"guarantee unchanged")
    if model is not None:
        got = weights_sha256(model)
        if got != record.model_sha256:
            raise CertificateError(f"model weights do not match the post-processing record: "
                                   f"SHA-256 {got[:16]}... but it records "
                                   f"{record.model_sha256[:16]}...")
    else:
        not_checked["model_sha256"] = "no final model given"
    if noisy_model is None:
        not_checked["noisy_model_sha256"] = ("no noisy-phase model given (the certificate binds "
                                             "its hash)")
    not_checked["assumption"] = ("that the post-processing read only the noisy-phase model, the "
                                 "retain set and public data: the user's declaration")
    not_checked["description"] = "the user's words for what was done"
    not_checked["created_utc"] = "the creation time"
    return PostprocessReport(certificate=report, eps=cert.eps, delta=cert.delta,
                             noisy_model_checked=noisy_model is not None,
                             model_checked=model is not None,
                             not_checked=tuple(not_checked.items()))
