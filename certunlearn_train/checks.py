"""Argument and data checks shared by training, unlearning and the baselines.

Every checker raises one :class:`ValueError` that names the parameter, the constraint and the
value, and returns the value converted to the type the caller works with. They are called before
any weight is touched.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch
from torch import nn
import torch.nn.functional as F

__all__ = ["check_real", "check_int", "check_choice", "check_device", "check_data",
           "is_class_loss", "MAX_STEPS"]

# Beyond this a run would take days at any realistic speed; refused with a clear message.
MAX_STEPS = 10 ** 8


def check_real(name: str, value, *, low: Optional[float] = None, low_open: bool = True,
               high: Optional[float] = None, high_open: bool = False,
               allow_inf: bool = False) -> float:
    """``value`` as a float, refused unless real, finite (or +-inf if ``allow_inf``) and in range.

    ``low``/``high`` are the bounds, open or closed as ``low_open``/``high_open`` say.
    """
    ok = not isinstance(value, bool) and isinstance(value, (int, float))
    if ok:
        v = float(value)
        ok = not math.isnan(v) and (allow_inf or math.isfinite(v))
        if ok and low is not None:
            ok = v > low if low_open else v >= low
        if ok and high is not None:
            ok = v < high if high_open else v <= high
    if not ok:
        raise ValueError(f"{name} must be a real number{_bounds(low, low_open, high, high_open)}"
                         f", got {value!r}")
    return float(value)


def check_int(name: str, value, *, low: Optional[int] = None,
              high: Optional[int] = None) -> int:
    """``value`` as an int, refused unless a whole number in ``[low, high]`` (float 3.0 is 3)."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float))
    if ok and isinstance(value, float):
        ok = math.isfinite(value) and value.is_integer()
    if ok:
        v = int(value)
        ok = (low is None or v >= low) and (high is None or v <= high)
    if not ok:
        raise ValueError(f"{name} must be an integer{_bounds(low, False, high, False)}, "
                         f"got {value!r}")
    return int(value)


def check_choice(name: str, value, choices: Sequence[str]) -> str:
    """``value`` unchanged, refused unless one of ``choices``."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def _bounds(low, low_open, high, high_open) -> str:
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {low}")
    if high is not None:
        parts.append(f"{'<' if high_open else '<='} {high}")
    return (" " + " and ".join(parts)) if parts else ""


def check_device(device) -> Optional[torch.device]:
    """``device`` as a :class:`torch.device` that exists here (None stays None)."""
    if device is None:
        return None
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ValueError(f"device must name a torch device such as 'cpu' or 'cuda:0', got "
                         f"{device!r} ({exc})") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (dev.index is not None and dev.index >= count):
            raise ValueError(f"device {device!r} does not exist here: {count} CUDA device(s) "
                             "available")
    elif dev.type != "cpu":
        try:
            torch.empty(0, device=dev)
        except Exception as exc:  # noqa: BLE001 - any backend's "not available" error
            raise ValueError(f"device {device!r} is not available here ({type(exc).__name__})"
                             ) from None
    return dev


_CLASS_LOSSES = (F.cross_entropy, F.nll_loss)


def is_class_loss(loss_fn: Callable) -> bool:
    """Whether ``loss_fn`` is known to take class-index targets (cross-entropy, NLL)."""
    return loss_fn in _CLASS_LOSSES or isinstance(loss_fn, (nn.CrossEntropyLoss, nn.NLLLoss))


def check_data(x: torch.Tensor, y: torch.Tensor, loss_fn: Callable,
               name: str = "data") -> torch.Tensor:
    """Refuse complex or non-finite inputs/targets and non-integer class labels; return ``y``.

    Class-index targets of a known class loss (:func:`is_class_loss`) stored as floats are
    accepted when every value is a whole number and returned as int64; any other value (0.909)
    is refused instead of being truncated.
    """
    for what, t in (("inputs", x), ("targets", y)):
        if t.is_complex():
            raise ValueError(f"{name} {what} must be real, got dtype {t.dtype}")
        if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t.reshape(len(t), -1))).any(1).nonzero()[0, 0])
            raise ValueError(f"{name} {what} must be finite, sample {bad} has NaN or inf")
    if is_class_loss(loss_fn) and y.is_floating_point() and y.dim() == 1:
        frac = y != torch.round(y)
        if bool(frac.any()):
            bad = int(frac.nonzero()[0, 0])
            raise ValueError(f"{name} targets must be integer class labels for "
                             f"{getattr(loss_fn, '__name__', type(loss_fn).__name__)}, "
                             f"sample {bad} has {float(y[bad])!r}")
        y = y.to(torch.int64)
    return y
