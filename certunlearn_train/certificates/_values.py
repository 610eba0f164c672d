"""Shared by the certificate modules: the error type, the one comparison rule, field predicates."""
from __future__ import annotations

import math
import re
from typing import Any, Mapping, TypeGuard

__all__ = ["CertificateError", "check_utc_time", "read_record", "same_value", "SHA_RE", "is_num",
           "pos_int", "nonneg", "pos", "opt_pos", "clip_mode"]

SHA_RE = re.compile(r"^[0-9a-f]{64}$")


class CertificateError(ValueError):
    """A certificate is malformed, does not match the model, or its guarantee cannot be reproduced."""


def same_value(a: Any, b: Any) -> bool:
    """The one comparison rule of run certificates: equal JSON values, numbers compared exactly.

    Booleans are not numbers here (``True`` differs from ``1``), NaN equals nothing, an integer
    equals a float only when both denote the same number. Mappings and lists compare element-wise.
    """
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return set(a) == set(b) and all(same_value(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def is_num(v) -> TypeGuard[float]:
    return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)


def pos_int(v):
    return None if not isinstance(v, bool) and isinstance(v, int) and v >= 1 \
        else "an integer >= 1"


def nonneg(v):
    return None if is_num(v) and v >= 0 else "a finite number >= 0"


def pos(v):
    return None if is_num(v) and v > 0 else "a finite number > 0"


def opt_pos(v):
    return None if v is None else pos(v)


def clip_mode(v):
    return None if v in ("batch", "per_sample") else "'batch' or 'per_sample'"


def check_utc_time(value: Any, field: str = "created_utc") -> None:
    """Refuse anything but an ISO 8601 time in UTC (the creation time of a record)."""
    import datetime as _dt
    try:
        when = _dt.datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        when = None
    if when is None or when.utcoffset() != _dt.timedelta(0):
        raise CertificateError(f"{field} must be an ISO 8601 time in UTC, got {value!r}")


def read_record(path: str, what: str, limit: int) -> bytes:
    """The first ``limit`` bytes of the file ``path`` holding a ``what`` (a folder or an
    unreadable file: :class:`CertificateError` naming it)."""
    import os
    if os.path.isdir(path):
        raise CertificateError(f"{what} {path!r} is a directory")
    try:
        with open(path, "rb") as fh:
            return fh.read(limit)
    except OSError as exc:
        raise CertificateError(f"cannot read {what} {path!r}: {exc.strerror}") from None
