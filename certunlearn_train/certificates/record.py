"""The run certificate: its fields, JSON form, files and signature.

A :class:`RunCertificate` (format ``certunlearn.run/2``) records the method, every parameter, the
noise sigma, the (eps, delta) guarantee, the accountant's certificate (with its derivation), the
retain and forget set sizes, the SHA-256 of the model weights before and after, the frozen public
parameters (names and hash) if any, the library versions, and optionally an Ed25519 signature. It
never records the noise seed (whoever knows it can remove the noise); it only records whether the
caller chose one, which makes the run a reproduction rather than a private release. Files of the
previous format ``certunlearn.run/1`` are converted when read (:mod:`.v1`).
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Dict, List, Mapping, Optional

from ..files import atomic_write_bytes
from ._values import CertificateError, read_record
from .checks import VerifyReport, float32_accounted, verify_certificate
from .schema import FORMAT, FORMAT_V1
from .signing import sign_record
from .v1 import from_v1

__all__ = ["RunCertificate", "OPTIONAL_FIELDS"]

#: Fields a certificate file may leave out (then None, and not written, so certificates without
#: them keep their bytes and signatures).
OPTIONAL_FIELDS = frozenset({"ledger", "buffers"})


@dataclasses.dataclass(frozen=True)
class RunCertificate:
    """The record of one unlearning (or baseline) run; see the module docstring.

    ``eps`` and ``delta`` are the accountant's (rounded up); ``retrain`` claims exact (0, 0),
    which no certificate can demonstrate.
    """

    method: str
    eps: float
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
    public_parameters: Optional[Dict[str, Any]] = None
    #: What the run did to each buffer (THEORY.md section 10.4); absent from the JSON when the
    #: model has none (and in certificates issued before the field existed).
    buffers: Optional[Dict[str, Any]] = None
    format: str = FORMAT
    signature: Optional[Dict[str, str]] = None
    #: The ledger entry of a request in a sequence (``ledger_record``); None for a run served
    #: outside a ledger. Written only when set, so certificates without it keep their bytes.
    ledger: Optional[Dict[str, Any]] = None
    #: The format the certificate was read from (not part of its JSON): ``certunlearn.run/1``
    #: files are converted to this format's vocabulary, and verify holds them to that format's
    #: rules (their guarantee does not cover float32 rounding).
    read_from: str = dataclasses.field(default=FORMAT, compare=False, repr=False)

    @property
    def epsilon(self) -> float:
        """``eps`` under its name in format ``certunlearn.run/1``."""
        return self.eps

    # -- serialisation ----------------------------------------------------------------------
    @classmethod
    def json_fields(cls) -> List[str]:
        """The names of the fields a certificate file holds."""
        return [f.name for f in dataclasses.fields(cls) if f.name != "read_from"]

    def to_dict(self) -> Dict[str, Any]:
        data = {name: getattr(self, name) for name in self.json_fields()
                if name not in OPTIONAL_FIELDS or getattr(self, name) is not None}
        return json.loads(json.dumps(data, allow_nan=False))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "RunCertificate":
        """Read a dict of this format, or of ``certunlearn.run/1`` (converted)."""
        if not isinstance(data, Mapping):
            raise CertificateError(f"a certificate must be a JSON object, got {type(data).__name__}")
        fmt = data.get("format")
        if fmt == FORMAT_V1:
            data = from_v1(data)
        elif fmt != FORMAT:
            raise CertificateError(f"unsupported certificate format {fmt!r} (this library reads "
                                   f"{FORMAT!r} and {FORMAT_V1!r})")
        names = cls.json_fields()
        unknown = sorted(set(data) - set(names), key=str)
        if unknown:
            raise CertificateError(f"unknown certificate field(s): {', '.join(map(str, unknown))}")
        missing = [n for n in names if n not in data and n not in OPTIONAL_FIELDS]
        if missing:
            raise CertificateError(f"certificate is missing field(s): {', '.join(missing)}")
        fields: Dict[str, Any] = {n: data.get(n) for n in names}
        return cls(**fields, read_from=fmt)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> "RunCertificate":
        def no_duplicates(pairs):
            keys = [k for k, _ in pairs]
            dup = sorted({k for k in keys if keys.count(k) > 1})
            if dup:
                raise CertificateError(f"certificate repeats the key(s) {', '.join(dup)}")
            return dict(pairs)

        def no_constant(name):
            raise CertificateError(f"certificate holds {name}, which JSON does not allow")
        try:
            data = json.loads(text, object_pairs_hook=no_duplicates, parse_constant=no_constant)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise CertificateError(f"certificate is not valid JSON ({exc})") from None
        except CertificateError:
            raise
        except ValueError:  # an integer of more digits than int() converts (4300 by default)
            raise CertificateError("certificate holds an integer too long to read") from None
        return cls.from_dict(data)

    def save(self, path: str) -> None:
        """Write the JSON atomically (temporary file + rename)."""
        atomic_write_bytes(path, (self.to_json() + "\n").encode())

    @classmethod
    def load(cls, path: str) -> "RunCertificate":
        raw = read_record(path, "certificate", 64 << 20)
        if raw[:2] == b"PK" or raw[:1] == b"\x80":
            raise CertificateError(f"{path}: this is a model file, not a certificate (usage: "
                                   "certunlearn verify CERT MODEL)")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise CertificateError(f"{path}: not a certificate (not UTF-8 text)") from None
        return cls.from_json(text)

    # -- signatures -------------------------------------------------------------------------
    def sign(self, private_key) -> "RunCertificate":
        """A copy carrying an Ed25519 signature over :func:`canonical_bytes` (see ``signing``).

        ``private_key`` is a key object or the path of a key file from ``certunlearn keygen``.
        """
        return dataclasses.replace(self, signature=sign_record(self.to_dict(), private_key))

    # -- verification -----------------------------------------------------------------------
    def verify(self, model=None, *, public_key=None,
               allow_unverifiable: bool = False) -> VerifyReport:
        """Check every field that can be checked; return what was taken on trust.

        ``model`` is the unlearned model (a module: then its private parameters are counted
        too) or its state dict. See
        :func:`certunlearn_train.certificates.checks.verify_certificate`.

        Raises:
            NotVerifiableError: a ``retrain`` certificate (exact retraining cannot be checked
                from a certificate), unless ``allow_unverifiable``.
            CertificateError: with the first reason found.
        """
        return verify_certificate(self, model, public_key=public_key,
                                  allow_unverifiable=allow_unverifiable)

    def float32_accounted(self) -> bool:
        """Whether the guarantee covers float32 rounding (a recorded shift slack, THEORY 8.1)."""
        return float32_accounted(self)
