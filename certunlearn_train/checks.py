"""Argument and data checks shared by training, unlearning, the baselines, configs and the CLI.

One checker decides whether a scalar is acceptable: :func:`real_problem` and :func:`int_problem`
return the constraint a value breaks as text ("a real number > 0.0"), or None when it passes.
They import nothing heavy, so the torch-free accountant subcommands of the CLI use them too. Each
caller wraps the text in its own error: :func:`check_real`/:func:`check_int` raise one
:class:`ValueError` naming the parameter, the constraint and the value (and return the value
converted to the type the caller works with), the config file loader a ``ConfigError`` naming the
file and the key, the command line parser an ``argparse.ArgumentTypeError``. They are called
before any weight is touched.

torch is imported inside the functions that need it (:func:`check_device`, :func:`check_data`,
:func:`is_class_loss`), never when this module is imported.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable, Optional, Sequence

if TYPE_CHECKING:
    import torch

__all__ = ["real_problem", "int_problem", "check_real", "check_int", "check_choice",
           "check_device", "check_data", "is_class_loss", "MAX_STEPS"]

# Beyond this a run would take days at any realistic speed; refused with a clear message.
MAX_STEPS = 10 ** 8


def _bounds(low, low_open, high, high_open, fmt: Callable[[float], str] = str) -> str:
    """The range text appended to a noun, such as ``" > 0.0 and <= 1.0"`` (empty if unbounded)."""
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {fmt(low)}")
    if high is not None:
        parts.append(f"{'<' if high_open else '<='} {fmt(high)}")
    return (" " + " and ".join(parts)) if parts else ""


def real_problem(value, *, low: Optional[float] = None, high: Optional[float] = None,
                 low_open: bool = True, high_open: bool = False, allow_inf: bool = False,
                 noun: str = "a real number", detail: bool = False,
                 fmt: Callable[[float], str] = str) -> Optional[str]:
    """None if ``value`` is a real number (not bool), not NaN, finite (or +-inf if ``allow_inf``)
    and inside the bounds (open or closed as ``low_open``/``high_open`` say); else the constraint.

    The constraint reads ``noun`` plus the whole range ("a real number > 0.0 and <= 1.0"); with
    ``detail`` it names only what failed: ``noun`` for a value of the wrong type, "a finite
    number" for NaN or inf, ``noun`` plus the one bound broken otherwise. ``fmt`` writes a bound.
    """
    fault = None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        fault = "type"
    else:
        v = float(value)
        if math.isnan(v) or not (allow_inf or math.isfinite(v)):
            fault = "finite"
        elif low is not None and not (v > low if low_open else v >= low):
            fault = "low"
        elif high is not None and not (v < high if high_open else v <= high):
            fault = "high"
    if fault is None:
        return None
    if not detail:
        return noun + _bounds(low, low_open, high, high_open, fmt)
    if fault == "type":
        return noun
    if fault == "finite":
        return "a finite number"
    if fault == "low":
        return noun + _bounds(low, low_open, None, False, fmt)
    return noun + _bounds(None, False, high, high_open, fmt)


def int_problem(value, *, low: Optional[int] = None, high: Optional[int] = None,
                allow_float: bool = True, detail: bool = False) -> Optional[str]:
    """None if ``value`` is a whole number (not bool) in ``[low, high]``; else the constraint.

    A float with a whole value (3.0) counts as an integer when ``allow_float``. The constraint
    reads "an integer" plus the whole range ("an integer >= 1 and <= 256"); with ``detail`` it
    names only what failed: "an integer" for a value of the wrong type, else the one bound broken.
    """
    fault = None
    if isinstance(value, bool) or not isinstance(value, (int, float) if allow_float else int):
        fault = "type"
    elif isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        fault = "type"
    elif low is not None and int(value) < low:
        fault = "low"
    elif high is not None and int(value) > high:
        fault = "high"
    if fault is None:
        return None
    if not detail:
        return "an integer" + _bounds(low, False, high, False)
    if fault == "type":
        return "an integer"
    if fault == "low":
        return "an integer" + _bounds(low, False, None, False)
    return "an integer" + _bounds(None, False, high, False)


def check_real(name: str, value, *, low: Optional[float] = None, low_open: bool = True,
               high: Optional[float] = None, high_open: bool = False,
               allow_inf: bool = False) -> float:
    """``value`` as a float, refused unless real, finite (or +-inf if ``allow_inf``) and in range.

    ``low``/``high`` are the bounds, open or closed as ``low_open``/``high_open`` say.
    """
    problem = real_problem(value, low=low, high=high, low_open=low_open, high_open=high_open,
                           allow_inf=allow_inf)
    if problem:
        raise ValueError(f"{name} must be {problem}, got {value!r}")
    return float(value)


def check_int(name: str, value, *, low: Optional[int] = None,
              high: Optional[int] = None) -> int:
    """``value`` as an int, refused unless a whole number in ``[low, high]`` (float 3.0 is 3)."""
    problem = int_problem(value, low=low, high=high)
    if problem:
        raise ValueError(f"{name} must be {problem}, got {value!r}")
    return int(value)


def check_choice(name: str, value, choices: Sequence[str]) -> str:
    """``value`` unchanged, refused unless one of ``choices``."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def check_device(device) -> Optional[torch.device]:
    """``device`` as a :class:`torch.device` that exists here (None stays None)."""
    if device is None:
        return None
    import torch
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
    elif dev.type == "meta":
        raise ValueError(f"device must be one that holds data, such as 'cpu' or 'cuda:0', got "
                         f"{device!r} (a meta tensor has a shape but no values)")
    elif dev.type != "cpu":
        try:
            torch.empty(0, device=dev)
        except Exception as exc:  # noqa: BLE001 - any backend's "not available" error
            raise ValueError(f"device {device!r} is not available here ({type(exc).__name__})"
                             ) from None
    return dev


def is_class_loss(loss_fn: Callable) -> bool:
    """Whether ``loss_fn`` is known to take class-index targets (cross-entropy, NLL)."""
    import torch.nn.functional as F
    from torch import nn
    return loss_fn in (F.cross_entropy, F.nll_loss) or isinstance(
        loss_fn, (nn.CrossEntropyLoss, nn.NLLLoss))


def check_data(x: torch.Tensor, y: torch.Tensor, loss_fn: Callable,
               name: str = "data") -> torch.Tensor:
    """Refuse complex or non-finite inputs/targets and non-integer class labels; return ``y``.

    Class-index targets of a known class loss (:func:`is_class_loss`) stored as floats are
    accepted when every value is a whole number and returned as int64; any other value (0.909)
    is refused instead of being truncated.
    """
    import torch
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
