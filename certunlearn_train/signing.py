"""Ed25519 signatures over run certificates; see :mod:`certunlearn_train.certificates.signing`."""
from .certificates.signing import (
    SigningError,
    fingerprint,
    generate_key_files,
    load_private_key,
    load_public_key,
    sign_record,
    verify_record,
)

__all__ = ["SigningError", "generate_key_files", "load_private_key", "load_public_key",
           "sign_record", "verify_record", "fingerprint"]
