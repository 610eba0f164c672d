"""The ledger of forgotten points: sequential requests whose retain sets really shrink.

Request k of a sequence is certified against retraining without *every* forget set so far
(THEORY.md section 10.3), so its retain set must be the training set less all of them. A
:class:`Ledger` records, per request, the forgotten indices (into the training set), the model
the request produced and the entry its certificate binds (:mod:`.certificates.ledger_record`);
entries chain by hash. The ledger file is the operator's record (it holds indices, not data);
certificates carry only sizes and hashes, which ``verify --chain`` checks link by link.

    ledger = Ledger.new(len(train_set))           # or Ledger.load("run1/ledger.json")
    request = ledger.request(forget_indices)      # refuses a point already forgotten
    model2, cert = unlearn(model, retain_of(request), ..., forget_size=request.forget_size)
    cert = request.bind(cert)                     # before signing
    ledger = ledger.commit(request, cert)
    ledger.save("run2/ledger.json")
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

import numpy as np

from .certificates import CertificateError, RunCertificate
from .certificates.ledger_record import GENESIS, check_entry, entry_hash, indices_sha256, link_problem
from .files import atomic_write_bytes

__all__ = ["FORMAT", "LEDGER_FILE", "Ledger", "LedgerError", "Request", "ledger_path_for"]

FORMAT = "certunlearn.ledger/1"
#: The ledger's file name next to a run's model.pt and certificate.json.
LEDGER_FILE = "ledger.json"


class LedgerError(ValueError):
    """A ledger file is malformed or inconsistent, or a request does not fit the ledger."""


@dataclasses.dataclass(frozen=True)
class Request:
    """A request planned on a ledger: its forget set, its retain set, the entry to bind."""

    entry: Dict[str, Any]
    forget_indices: Tuple[int, ...]
    retain_indices: np.ndarray

    @property
    def forget_size(self) -> int:
        return len(self.forget_indices)

    def bind(self, cert: RunCertificate) -> RunCertificate:
        """``cert`` of the run that served this request, carrying its ledger entry.

        Refuses a certificate whose sizes are not this request's, and a signed one (bind first,
        then sign: the signature must cover the entry).
        """
        if cert.signature is not None:
            raise LedgerError("bind the ledger entry before signing the certificate")
        if cert.forget_size != self.forget_size or cert.retain_size != len(self.retain_indices):
            raise LedgerError(
                f"the certificate's sizes (retain {cert.retain_size}, forget {cert.forget_size})"
                f" are not this request's (retain {len(self.retain_indices)}, forget "
                f"{self.forget_size}): run it on the request's retain set")
        bound = dataclasses.replace(cert, ledger=dict(self.entry))
        bound.verify(allow_unverifiable=True)
        return bound


@dataclasses.dataclass(frozen=True)
class Ledger:
    """The requests served so far on one training set (see the module docstring)."""

    train_size: int
    requests: Tuple[Dict[str, Any], ...] = ()
    dataset: Optional[Dict[str, Any]] = None

    @classmethod
    def new(cls, train_size: int, dataset: Optional[Mapping[str, Any]] = None) -> "Ledger":
        if isinstance(train_size, bool) or not isinstance(train_size, int) or train_size < 2:
            raise LedgerError(f"train_size must be an integer >= 2, got {train_size!r}")
        return cls(train_size, (), None if dataset is None else dict(dataset))

    # -- state -------------------------------------------------------------------------------
    def head(self) -> str:
        """The hash after the last request (:data:`GENESIS` for a new ledger)."""
        return entry_hash(self.requests[-1]["entry"]) if self.requests else GENESIS

    def forgotten(self) -> np.ndarray:
        """Every index forgotten so far, sorted."""
        if not self.requests:
            return np.zeros(0, dtype=np.int64)
        return np.sort(np.concatenate([np.asarray(r["forget_indices"], dtype=np.int64)
                                       for r in self.requests]))

    def remaining(self) -> np.ndarray:
        """The training indices not forgotten yet, sorted."""
        keep = np.ones(self.train_size, dtype=bool)
        keep[self.forgotten()] = False
        return np.flatnonzero(keep)

    # -- requests ----------------------------------------------------------------------------
    def request(self, forget_indices: Iterable[int]) -> Request:
        """Plan the next request: ``forget_indices`` into the training set.

        Raises:
            LedgerError: an index is out of range, repeated, or already forgotten by an earlier
                request, or nothing would remain to train on.
        """
        idx = np.asarray(list(forget_indices))
        if idx.size == 0:
            raise LedgerError("a request must forget at least one point")
        if not np.issubdtype(idx.dtype, np.integer):
            raise LedgerError(f"forget indices must be integers, got dtype {idx.dtype}")
        idx = idx.astype(np.int64)
        if idx.min() < 0 or idx.max() >= self.train_size:
            bad = idx[(idx < 0) | (idx >= self.train_size)][0]
            raise LedgerError(f"forget index {bad} is outside the training set "
                              f"[0, {self.train_size})")
        if len(np.unique(idx)) != len(idx):
            raise LedgerError("forget indices repeat")
        forgotten = self.forgotten()
        done = np.intersect1d(idx, forgotten)
        if done.size:
            k = next(i + 1 for i, r in enumerate(self.requests)
                     if int(done[0]) in set(r["forget_indices"]))
            raise LedgerError(f"point {int(done[0])} was already forgotten by request {k} "
                              f"({done.size} of this request's points were)")
        keep = np.ones(self.train_size, dtype=bool)
        keep[forgotten] = False
        keep[idx] = False
        retain = np.flatnonzero(keep)
        if retain.size == 0:
            raise LedgerError("this request would leave no training point")
        entry = {"request": len(self.requests) + 1, "train_size": self.train_size,
                 "forgotten_before": int(forgotten.size), "forget_size": int(idx.size),
                 "forget_sha256": indices_sha256(idx.tolist()), "sha256_before": self.head()}
        check_entry(entry)
        return Request(entry, tuple(sorted(int(i) for i in idx)), retain)

    def commit(self, request: Request, cert: RunCertificate) -> "Ledger":
        """The ledger with ``request`` served by the run of ``cert`` (its bound certificate)."""
        if request.entry["sha256_before"] != self.head() \
                or request.entry["request"] != len(self.requests) + 1:
            raise LedgerError("the request was planned on another state of the ledger")
        if cert.ledger != request.entry:
            raise LedgerError("the certificate does not carry this request's ledger entry "
                              "(Request.bind)")
        record = {"entry": dict(request.entry), "forget_indices": list(request.forget_indices),
                  "model_sha256_after": cert.model_sha256_after}
        return dataclasses.replace(self, requests=self.requests + (record,))

    # -- files -------------------------------------------------------------------------------
    def to_dict(self) -> Dict[str, Any]:
        return {"format": FORMAT, "train_size": self.train_size, "dataset": self.dataset,
                "requests": [dict(r) for r in self.requests]}

    def save(self, path: str) -> None:
        atomic_write_bytes(path, self.to_bytes())

    def to_bytes(self) -> bytes:
        return (json.dumps(self.to_dict(), indent=1, sort_keys=True) + "\n").encode()

    @classmethod
    def from_dict(cls, data: Any) -> "Ledger":
        """Read and check a ledger: every entry's hash, sizes and indices, and the chain."""
        if not isinstance(data, Mapping) or data.get("format") != FORMAT:
            raise LedgerError(f"not a ledger of format {FORMAT!r}")
        if set(data) != {"format", "train_size", "dataset", "requests"} \
                or not isinstance(data["requests"], list):
            raise LedgerError("a ledger holds exactly format, train_size, dataset and requests")
        ledger = cls.new(data["train_size"], data["dataset"])
        for k, r in enumerate(data["requests"], 1):
            if not isinstance(r, Mapping) or set(r) != {"entry", "forget_indices",
                                                       "model_sha256_after"}:
                raise LedgerError(f"request {k}: needs entry, forget_indices and "
                                  f"model_sha256_after")
            try:
                planned = ledger.request(r["forget_indices"])
            except (LedgerError, TypeError, ValueError) as exc:
                raise LedgerError(f"request {k}: {exc}") from None
            if planned.entry != r["entry"]:
                raise LedgerError(f"request {k}: its entry does not match its indices and the "
                                  f"requests before it")
            ledger = dataclasses.replace(ledger, requests=ledger.requests + (
                {"entry": dict(r["entry"]), "forget_indices": list(planned.forget_indices),
                 "model_sha256_after": r["model_sha256_after"]},))
        return ledger

    @classmethod
    def load(cls, path: str) -> "Ledger":
        try:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
        except FileNotFoundError:
            raise LedgerError(f"ledger {path!r} does not exist") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise LedgerError(f"cannot read ledger {path!r}: {exc}") from None
        try:
            return cls.from_dict(data)
        except LedgerError as exc:
            raise LedgerError(f"{path}: {exc}") from None

    def check_certificates(self, certificates: List[RunCertificate]) -> None:
        """Every certificate's entry is one of this ledger's, the models match, in order."""
        entries = {entry_hash(r["entry"]): r for r in self.requests}
        previous = None
        for k, cert in enumerate(certificates, 1):
            if cert.ledger is None:
                raise CertificateError(f"certificate {k} has no ledger entry")
            r = entries.get(entry_hash(cert.ledger))
            if r is None:
                raise CertificateError(f"certificate {k}'s ledger entry is not in the ledger")
            if r["model_sha256_after"] != cert.model_sha256_after:
                raise CertificateError(f"certificate {k}: the ledger records another model for "
                                       f"request {cert.ledger['request']}")
            if previous is not None and link_problem(previous, cert.ledger):
                raise CertificateError(f"certificate {k}: "
                                       f"{link_problem(previous, cert.ledger)}")
            previous = cert.ledger


def ledger_path_for(model_path: str, arch: Mapping[str, Any]) -> Optional[str]:
    """Where the ledger of the run that wrote ``model_path`` lives (None: not from a ledger)."""
    rec = arch.get("ledger")
    if not isinstance(rec, Mapping):
        return None
    return os.path.join(os.path.dirname(os.path.abspath(model_path)),
                        str(rec.get("file", LEDGER_FILE)))
