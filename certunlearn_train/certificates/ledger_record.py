"""The ledger entry a certificate binds: which request of a sequence the run served, and how its
retain set was formed (THEORY.md section 10.3).

Request k of a sequence must be certified against retraining without *every* forget set so far,
so its retain set is the training set less all of them. The entry records the training set's
size, how many points earlier requests forgot, this request's forget set (size and SHA-256 of
its sorted indices) and the hash of the ledger before it. Entries chain by hash, so that
``verify --chain`` checks from the certificates alone that each request's retain set shrank by
every earlier forget set: ``retain_size = train_size - forgotten_before - forget_size`` and
``forgotten_before`` of request k+1 is that of request k plus its ``forget_size``.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Iterable, Mapping, Optional

from ._values import SHA_RE, CertificateError

__all__ = ["GENESIS", "ENTRY_KEYS", "indices_sha256", "entry_hash", "check_entry",
           "link_problem"]

#: ``sha256_before`` of a sequence's first request.
GENESIS = "0" * 64
ENTRY_KEYS = ("request", "train_size", "forgotten_before", "forget_size", "forget_sha256",
              "sha256_before")


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode("ascii")


def indices_sha256(indices: Iterable[int]) -> str:
    """SHA-256 of a forget set: its indices into the training set, sorted, as compact JSON."""
    return hashlib.sha256(_canonical(sorted(int(i) for i in indices))).hexdigest()


def entry_hash(entry: Mapping[str, Any]) -> str:
    """The ledger's hash after ``entry`` (it covers ``sha256_before``, so entries chain)."""
    return hashlib.sha256(_canonical({k: entry[k] for k in ENTRY_KEYS})).hexdigest()


def _int(value, low: int) -> bool:
    return not isinstance(value, bool) and isinstance(value, int) and value >= low


def check_entry(entry: Any) -> None:
    """Refuse a malformed ledger entry (types, ranges, the first request's shape)."""
    if not isinstance(entry, Mapping) or set(entry) != set(ENTRY_KEYS):
        raise CertificateError(f"ledger must be null or an object with exactly the keys "
                               f"{', '.join(ENTRY_KEYS)}")
    for key, low in (("request", 1), ("train_size", 2), ("forgotten_before", 0),
                     ("forget_size", 1)):
        if not _int(entry[key], low):
            raise CertificateError(f"ledger.{key} must be an integer >= {low}, got "
                                   f"{entry[key]!r}")
    for key in ("forget_sha256", "sha256_before"):
        if not isinstance(entry[key], str) or not SHA_RE.match(entry[key]):
            raise CertificateError(f"ledger.{key} must be 64 lowercase hex digits, got "
                                   f"{entry[key]!r}")
    first = entry["request"] == 1
    if first != (entry["forgotten_before"] == 0) or first != (entry["sha256_before"] == GENESIS):
        raise CertificateError("ledger: the first request (request 1) and only it has "
                               "forgotten_before 0 and sha256_before " + GENESIS[:8] + "...")
    if entry["forgotten_before"] + entry["forget_size"] >= entry["train_size"]:
        raise CertificateError("ledger: the forget sets so far leave no training point")


def link_problem(before: Mapping[str, Any], after: Mapping[str, Any]) -> Optional[str]:
    """Why ``after`` is not the request right after ``before`` in one ledger (None if it is)."""
    if after["train_size"] != before["train_size"]:
        return (f"the training set changed size ({before['train_size']} to "
                f"{after['train_size']})")
    if after["request"] != before["request"] + 1:
        return f"request {after['request']} does not follow request {before['request']}"
    if after["forgotten_before"] != before["forgotten_before"] + before["forget_size"]:
        return (f"its retain set is not accounted for: {after['forgotten_before']} points "
                f"forgotten before it, but the previous requests forgot "
                f"{before['forgotten_before'] + before['forget_size']}")
    if after["sha256_before"] != entry_hash(before):
        return "it names another ledger state than the one the previous request left"
    return None
