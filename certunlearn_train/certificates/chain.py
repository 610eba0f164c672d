"""Chains of sequential requests, each served on the previous one's output (THEORY.md 10.3)."""
from __future__ import annotations

from typing import List

from ._values import CertificateError
from .checks import VerifyReport

__all__ = ["verify_chain"]


def verify_chain(certificates, model=None, *, public_key=None) -> List[VerifyReport]:
    """Check certificates of sequential requests served one on the output of the other.

    Each certificate is verified on its own (THEORY.md section 10.3: each run's guarantee holds
    for any starting point in the C0 ball, so request k is certified against retraining without
    all forget sets up to k, with no composition over requests); then certificate k+1 must
    start from the model certificate k produced (``model_sha256_before`` equal to the previous
    ``model_sha256_after``), and ``model`` must be the last output.
    """
    certificates = list(certificates)
    if not certificates:
        raise CertificateError("a chain needs at least one certificate")
    reports = []
    for k, cert in enumerate(certificates):
        try:
            reports.append(cert.verify(model if k == len(certificates) - 1 else None,
                                       public_key=public_key))
        except CertificateError as exc:
            raise CertificateError(f"certificate {k + 1} of the chain: {exc}") from None
        if k and cert.model_sha256_before != certificates[k - 1].model_sha256_after:
            raise CertificateError(
                f"broken chain: certificate {k + 1} starts from a model with SHA-256 "
                f"{cert.model_sha256_before[:16]}..., but certificate {k} produced "
                f"{certificates[k - 1].model_sha256_after[:16]}...")
    return reports
