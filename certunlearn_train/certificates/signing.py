"""Ed25519 signatures over run certificates (tamper evidence for the fields no one can recompute).

* ``certunlearn keygen --out KEY`` / :func:`generate_key_files` writes the private key (PKCS#8
  PEM, file mode 0600) to ``KEY`` and the public key (SubjectPublicKeyInfo PEM) to ``KEY.pub``.
* :func:`sign_record` signs :func:`certunlearn_train.certificates.hashing.canonical_bytes` of a
  certificate dict: its sorted-key compact JSON without the ``signature`` field. Those bytes
  include the weights' SHA-256, so the signature binds the model too.
* The ``signature`` field is ``{"algorithm": "ed25519", "public_key": <32 bytes, hex>,
  "value": <64 bytes, hex>}``. :func:`verify_record` checks it against the embedded public key
  and, when one is given, requires that key to be the given one.

Uses the ``cryptography`` package.
"""
from __future__ import annotations

import hashlib
import os
from typing import Any, Dict, Mapping, Union

from ._values import CertificateError
from .hashing import canonical_bytes

__all__ = ["SigningError", "generate_key_files", "load_private_key", "load_public_key",
           "sign_record", "verify_record", "fingerprint"]

_ALGORITHM = "ed25519"


class SigningError(ValueError):
    """A key file is unusable or a signature is malformed or does not verify."""


def _error(message):
    return CertificateError(message)


def fingerprint(raw_public: bytes) -> str:
    """First 16 hex digits of the SHA-256 of the raw 32-byte public key."""
    return hashlib.sha256(raw_public).hexdigest()[:16]


def _raw_public(public_key) -> bytes:
    from cryptography.hazmat.primitives import serialization
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def generate_key_files(path: str) -> str:
    """Write a new private key to ``path`` (mode 0600) and its public key to ``path + ".pub"``.

    Refuses to overwrite either file. Returns the public key's fingerprint.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    pub_path = path + ".pub"
    for p in (path, pub_path):
        if os.path.lexists(p):
            raise SigningError(f"key file {p!r} already exists; not overwriting it")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(private_pem)
        os.chmod(path, 0o600)  # whatever the umask
        with open(pub_path, "xb") as fh:
            fh.write(public_pem)
    except BaseException:
        for p in (path, pub_path):
            if os.path.exists(p):
                os.unlink(p)
        raise
    return fingerprint(_raw_public(key.public_key()))


def _read(path: Union[str, os.PathLike], what: str) -> bytes:
    if not isinstance(path, (str, os.PathLike)) or not os.path.isfile(path):
        raise SigningError(f"{what} file {path!r} does not exist")
    with open(path, "rb") as fh:
        return fh.read(1 << 16)


def load_private_key(path: Union[str, os.PathLike]):
    """The Ed25519 private key in a PEM file written by :func:`generate_key_files`."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    raw = _read(path, "private key")
    try:
        key = serialization.load_pem_private_key(raw, password=None)
    except (ValueError, TypeError) as exc:
        raise SigningError(f"{path}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningError(f"{path}: not an Ed25519 private key")
    return key


def load_public_key(path: Union[str, os.PathLike]):
    """The Ed25519 public key in a PEM file (``KEY.pub`` from :func:`generate_key_files`)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    raw = _read(path, "public key")
    try:
        key = serialization.load_pem_public_key(raw)
    except (ValueError, TypeError) as exc:
        raise SigningError(f"{path}: not a PEM public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SigningError(f"{path}: not an Ed25519 public key")
    return key


def sign_record(record: Mapping[str, Any], private_key) -> Dict[str, str]:
    """The ``signature`` field for a certificate dict (its ``signature`` entry is ignored)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    if isinstance(private_key, (str, os.PathLike)):
        private_key = load_private_key(private_key)
    if not isinstance(private_key, Ed25519PrivateKey):
        raise SigningError(f"private_key must be an Ed25519 private key or a key file path, got "
                           f"{type(private_key).__name__}")
    value = private_key.sign(canonical_bytes(record))
    return {"algorithm": _ALGORITHM, "public_key": _raw_public(private_key.public_key()).hex(),
            "value": value.hex()}


def verify_record(record: Mapping[str, Any], public_key=None) -> str:
    """Check ``record["signature"]``; return the signing key's fingerprint.

    With ``public_key`` (a key object or a ``.pub`` file path) the signature must also come from
    that key. Raises :class:`certunlearn_train.certificates.CertificateError` otherwise.
    """
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    sig = record.get("signature")
    if not isinstance(sig, Mapping) or set(sig) != {"algorithm", "public_key", "value"} \
            or sig.get("algorithm") != _ALGORITHM \
            or not all(isinstance(sig[k], str) for k in ("public_key", "value")):
        raise _error("signature must be null or {\"algorithm\": \"ed25519\", \"public_key\": hex, "
                     "\"value\": hex}")
    try:
        raw_pub, value = bytes.fromhex(sig["public_key"]), bytes.fromhex(sig["value"])
        embedded = Ed25519PublicKey.from_public_bytes(raw_pub)
    except ValueError:
        raise _error("signature: the public key or the value is not valid hex of the right "
                     "length") from None
    if public_key is not None:
        if isinstance(public_key, (str, os.PathLike)):
            public_key = load_public_key(public_key)
        if _raw_public(public_key) != raw_pub:
            raise _error(f"signature was made by key {fingerprint(raw_pub)}, not by the given "
                         f"public key {fingerprint(_raw_public(public_key))}")
    try:
        embedded.verify(value, canonical_bytes(record))
    except InvalidSignature:
        raise _error("bad signature: the certificate was changed after it was signed") from None
    return fingerprint(raw_pub)
