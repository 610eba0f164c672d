"""Chains of sequential requests, each served on the previous one's output (THEORY.md 10.3)."""
from __future__ import annotations

from typing import List

from ._values import CertificateError
from .checks import NotVerifiableError, VerifyReport
from .ledger_record import link_problem

__all__ = ["verify_chain", "chain_links_authenticated"]


def chain_links_authenticated(certificates) -> bool:
    """Whether the links of a chain are covered by signatures (every certificate signed).

    A link is certificate k+1's ``model_sha256_before`` equal to certificate k's
    ``model_sha256_after``. In an unsigned chain either hash can be edited to connect two runs
    that do not follow each other; in a signed one each side is covered by its certificate's
    signature.
    """
    return all(c.signature is not None for c in certificates)


def verify_chain(certificates, model=None, *, public_key=None,
                 allow_unverifiable: bool = False) -> List[VerifyReport]:
    """Check certificates of sequential requests served one on the output of the other.

    Each certificate is verified on its own (THEORY.md section 10.3: each run's guarantee holds
    for any starting point in the C0 ball, so request k is certified against retraining without
    all forget sets up to k, with no composition over requests); then certificate k+1 must
    start from the model certificate k produced (``model_sha256_before`` equal to the previous
    ``model_sha256_after``), and ``model`` must be the last output. Every certificate of a
    chain of two or more carries a ledger entry, and each entry follows the previous one: the
    retain set of request k+1 is the training set less every forget set up to k. A chain is signed throughout
    or not at all: a mixture is refused, since its unsigned links could be edited to connect
    (:func:`chain_links_authenticated` tells the caller which kind it is).

    Raises:
        NotVerifiableError: every check passed, but a link is a ``retrain`` (``reports`` holds
            every link's report), unless ``allow_unverifiable``.
        CertificateError: with the first reason found.
    """
    certificates = list(certificates)
    if not certificates:
        raise CertificateError("a chain needs at least one certificate")
    signed = [k + 1 for k, c in enumerate(certificates) if c.signature is not None]
    if signed and len(signed) != len(certificates):
        unsigned = [k + 1 for k in range(len(certificates)) if k + 1 not in signed]
        raise CertificateError(
            f"the chain mixes signed and unsigned certificates (unsigned: "
            f"{', '.join(map(str, unsigned))}): an unsigned link could have been edited to "
            f"connect; sign every request or none")
    reports = []
    for k, cert in enumerate(certificates):
        try:
            reports.append(cert.verify(model if k == len(certificates) - 1 else None,
                                       public_key=public_key, allow_unverifiable=True))
        except CertificateError as exc:
            raise CertificateError(f"certificate {k + 1} of the chain: {exc}") from None
        if k and cert.model_sha256_before != certificates[k - 1].model_sha256_after:
            raise CertificateError(
                f"broken chain: certificate {k + 1} starts from a model with SHA-256 "
                f"{cert.model_sha256_before[:16]}..., but certificate {k} produced "
                f"{certificates[k - 1].model_sha256_after[:16]}...")
        if len(certificates) > 1 and cert.ledger is None:
            raise CertificateError(
                f"certificate {k + 1} of the chain has no ledger entry, so its retain set is "
                f"not accounted for: request k must be served on the training set less every "
                f"earlier forget set (serve sequential requests through a ledger: "
                f"docs/training.md, sequential requests)")
        if k:
            problem = link_problem(certificates[k - 1].ledger, cert.ledger)
            if problem:
                raise CertificateError(f"broken chain at certificate {k + 1}: {problem}")
    if not allow_unverifiable and not all(r.guarantee_recomputed for r in reports):
        which = [str(k + 1) for k, r in enumerate(reports) if not r.guarantee_recomputed]
        raise NotVerifiableError(
            f"NOT VERIFIABLE: certificate(s) {', '.join(which)} of the chain claim exact "
            f"unlearning, which cannot be checked from a certificate", reports)
    return reports
