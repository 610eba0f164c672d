"""Working precision, input validation and safe-side rounding shared by every accountant module.

Conventions (THEORY.md section 8):

* All arithmetic runs in mpmath at ``working_digits()`` significant digits (default 50). The
  :func:`precision` context manager changes it for the current context only; mpmath's global
  context is only ever touched through ``mp.workdps``, which restores it on exit.
* A guarantee is computed twice, at P and P + ``GUARD_DIGITS`` digits (:func:`rigorous`). The two
  results must agree to a relative 10^-(P-10); the higher-precision value is then widened by that
  relative amount toward safety, and converted to a float with :func:`to_float` in the same
  direction (``math.nextafter`` when the nearest float lies on the unsafe side).
* "up" means the true value is <= the returned one (epsilon, delta, sigma, steps); "down" means
  the true value is >= the returned one (a maximal noise ratio, a sum of variances).
"""
from __future__ import annotations

import functools
import math
import numbers
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Callable, Iterator, Literal

from mpmath import mp, mpf

from .errors import InvalidParameterError, PrecisionError

DEFAULT_DIGITS = 50
GUARD_DIGITS = 20
MIN_DIGITS = 20
MAX_DIGITS = 5000
SMALLEST_POSITIVE_FLOAT = 5e-324

Direction = Literal["up", "down"]

_digits: ContextVar[int] = ContextVar("certunlearn_working_digits", default=DEFAULT_DIGITS)


def working_digits() -> int:
    """The number of significant decimal digits the accountant currently works at."""
    return _digits.get()


@contextmanager
def precision(digits: int) -> Iterator[int]:
    """Run the enclosed accountant calls at ``digits`` significant decimal digits.

    The setting is local to the ``with`` block (and to the current thread or task, through a
    ``ContextVar``); nothing global changes.

    >>> import certunlearn_theory as ct
    >>> with ct.precision(80):
    ...     ct.working_digits()
    80
    >>> ct.working_digits()
    50
    """
    if isinstance(digits, bool) or not isinstance(digits, numbers.Integral):
        raise InvalidParameterError(f"digits must be an integer, got {digits!r}")
    if not MIN_DIGITS <= digits <= MAX_DIGITS:
        raise InvalidParameterError(
            f"digits must be between {MIN_DIGITS} and {MAX_DIGITS}, got {digits!r}")
    token = _digits.set(int(digits))
    try:
        yield int(digits)
    finally:
        _digits.reset(token)


def entry_point(function):
    """Run ``function`` in the accountant's own mpmath context, whatever the caller's.

    Every public function and method of the accountant is wrapped with this decorator: it enters
    ``mp.workdps(working_digits())`` before anything is converted or computed, so inputs become
    ``mpf`` at the accountant's precision and every step that reads ``mp.dps`` sees the
    accountant's value, not the ``mp.dps``/``mp.prec`` the caller happens to have set (at
    ``mp.dps = 4`` a float input used to be rounded to 16 bits). mpmath restores the caller's
    precision on exit, also when an exception leaves the function. Calls between accountant
    functions re-enter the same context (cheap). Wrapped functions carry
    ``__accountant_entry_point__ = True`` (tested for the whole public API).
    """
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with mp.workdps(_digits.get()):
            return function(*args, **kwargs)

    wrapper.__accountant_entry_point__ = True
    return wrapper


# ----------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------

def check_real(name: str, value, *, low=None, high=None, low_open: bool = False,
               high_open: bool = False, allow_inf: bool = False) -> mpf:
    """Validate a real scalar and return it as an ``mpf`` (exactly: floats convert losslessly).

    Rejects bools, strings, complex numbers, NaN, and infinities unless ``allow_inf``. ``low`` and
    ``high`` are inclusive bounds unless ``low_open`` / ``high_open``. The error message names the
    parameter, the constraint and the value received.
    """
    if isinstance(value, bool) or not (isinstance(value, numbers.Real) or isinstance(value, mpf)):
        raise InvalidParameterError(f"{name} must be a real number, got {value!r} "
                                    f"of type {type(value).__name__}")
    if isinstance(value, mpf):
        x = value
    elif isinstance(value, numbers.Integral):
        n = int(value)
        with mp.workprec(max(mp.prec, n.bit_length() + 1)):  # exact for any integer
            x = mpf(n)
    else:
        x = mpf(float(value))  # exact: every float is an mpf
    if mp.isnan(x):
        raise InvalidParameterError(f"{name} must be a number, got NaN")
    if mp.isinf(x) and not allow_inf:
        raise InvalidParameterError(f"{name} must be finite, got {value!r}")
    constraint = []
    if low is not None:
        constraint.append(f"{'>' if low_open else '>='} {low}")
    if high is not None:
        constraint.append(f"{'<' if high_open else '<='} {high}")
    ok = True
    if low is not None and (x < low or (low_open and x == low)):
        ok = False
    if high is not None and (x > high or (high_open and x == high)):
        ok = False
    if not ok:
        raise InvalidParameterError(f"{name} must be {' and '.join(constraint)}, got {value!r}")
    return x


def check_int(name: str, value, *, low: int | None = None, high: int | None = None) -> int:
    """Validate an integer (bools and floats with a fractional part are refused)."""
    if isinstance(value, bool):
        raise InvalidParameterError(f"{name} must be an integer, got {value!r}")
    if isinstance(value, numbers.Integral):
        n = int(value)
    elif isinstance(value, (numbers.Real, mpf)) and math.isfinite(float(value)) \
            and float(value) == int(float(value)):
        n = int(float(value))
    else:
        raise InvalidParameterError(f"{name} must be an integer, got {value!r}")
    if low is not None and n < low:
        raise InvalidParameterError(f"{name} must be >= {low}, got {value!r}")
    if high is not None and n > high:
        raise InvalidParameterError(f"{name} must be <= {high}, got {value!r}")
    return n


def check_epsilon(value, name: str = "eps") -> mpf:
    """epsilon: a finite real >= 0."""
    return check_real(name, value, low=0)


def check_delta(value, name: str = "delta") -> mpf:
    """delta: a real strictly inside (0, 1)."""
    return check_real(name, value, low=0, high=1, low_open=True, high_open=True)


def check_positive(name: str, value, *, allow_inf: bool = False) -> mpf:
    """A finite real > 0."""
    return check_real(name, value, low=0, low_open=True, allow_inf=allow_inf)


def check_nonnegative(name: str, value, *, allow_inf: bool = False) -> mpf:
    """A finite real >= 0."""
    return check_real(name, value, low=0, allow_inf=allow_inf)


def is_sequence(value) -> bool:
    """True for a per-step schedule (list, tuple, array), False for a scalar, a string or an mpf."""
    if isinstance(value, (str, bytes)) or isinstance(value, mpf):
        return False
    if isinstance(value, numbers.Real):
        return False
    try:
        len(value)
    except TypeError:
        return False
    return True


# ----------------------------------------------------------------------------------------------
# Safe-side rounding
# ----------------------------------------------------------------------------------------------

def _tolerance(digits: int) -> mpf:
    return mpf(10) ** (-(digits - 10))


def widen(x: mpf, direction: Direction, digits: int | None = None) -> mpf:
    """Move ``x`` by a relative 10^-(P-10) toward safety ("up": larger, "down": smaller)."""
    if mp.isinf(x) or x == 0:
        return x
    tol = _tolerance(working_digits() if digits is None else digits)
    factor = (1 + tol) if (direction == "up") == (x > 0) else (1 - tol)
    return x * factor


def rigorous(compute: Callable[[], mpf], direction: Direction, *, what: str = "value") -> mpf:
    """Evaluate ``compute()`` at P and P + GUARD_DIGITS digits, check agreement, widen to safety.

    ``compute`` must read the working precision from mpmath's context (``mp.dps``) and may return
    an ``mpf`` or ``+inf``. The returned ``mpf`` lives at P + GUARD_DIGITS digits and is on the
    safe side of the true value whenever the higher-precision evaluation is accurate to 10 digits
    less than asked, which the agreement check supports. Raises :class:`PrecisionError` when the
    two evaluations disagree (the computation lost more digits than the guard can cover).
    """
    digits = working_digits()
    with mp.workdps(digits):
        low_precision = mpf(compute())
    with mp.workdps(digits + GUARD_DIGITS):
        high_precision = mpf(compute())
        if mp.isinf(high_precision) or mp.isinf(low_precision):
            if low_precision != high_precision:
                raise PrecisionError(f"{what}: evaluations at {digits} and "
                                     f"{digits + GUARD_DIGITS} digits disagree "
                                     f"({low_precision} vs {high_precision})")
            return high_precision
        tol = _tolerance(digits)
        if abs(low_precision - high_precision) > tol * abs(high_precision):
            raise PrecisionError(
                f"{what}: evaluations at {digits} and {digits + GUARD_DIGITS} digits disagree "
                f"({mp.nstr(low_precision, 20)} vs {mp.nstr(high_precision, 20)}); raise the "
                f"working precision with certunlearn_theory.precision(...)")
        return widen(high_precision, direction, digits)


def to_float(x: mpf, direction: Direction) -> float:
    """Convert to a Python float on the safe side of ``x``.

    "up" returns the smallest float >= x (a positive x below the float range gives the smallest
    positive subnormal, never 0); "down" returns the largest float <= x.
    """
    if not isinstance(x, mpf):  # never re-round an mpf to the caller's (possibly low) mp.dps
        with mp.workdps(max(mp.dps, 30)):
            x = mpf(x)
    if mp.isnan(x):
        raise PrecisionError("cannot convert NaN to a guarantee")
    if mp.isinf(x):
        return math.inf if x > 0 else -math.inf
    f = float(x)
    toward = math.inf if direction == "up" else -math.inf
    with mp.workdps(max(mp.dps, 30)):
        if math.isinf(f):
            # overflow: +inf is a safe "up" bound, -inf a safe "down" bound; otherwise step back
            if (f > 0) != (direction == "up"):
                f = math.nextafter(f, toward)
        elif (mpf(f) < x) if direction == "up" else (mpf(f) > x):
            f = math.nextafter(f, toward)
    return f


def finish(x: mpf, direction: Direction, as_mpf: bool):
    """Return ``x`` as an ``mpf`` (``as_mpf=True``) or as a safely rounded float."""
    if as_mpf:
        return x if isinstance(x, mpf) else mpf(x)  # an mpf keeps its own precision
    return to_float(x, direction)


def log_float_up(log_value: mpf) -> float:
    """exp(log_value) rounded up to a float (smallest positive float if it underflows)."""
    with mp.workdps(max(mp.dps, 30)):
        if log_value < -800:  # far below the float range
            return SMALLEST_POSITIVE_FLOAT
        return to_float(mp.exp(log_value), "up")


# ----------------------------------------------------------------------------------------------
# A bracketed Newton solver (used in log space by every inversion)
# ----------------------------------------------------------------------------------------------

def bracketed_newton(f, lo: mpf, hi: mpf, start: mpf, tol: mpf, max_iter: int = 400) -> mpf:
    """Root of ``f`` (returning ``(value, slope)``) with ``f(lo) < 0 < f(hi)`` or the reverse.

    The one-dimensional solver of the accountant (the Gaussian inversions in divergences.py, the
    optimal Renyi orders in renyi.py), at the current mp.dps.

    Newton steps that leave the bracket are replaced by bisection. Returns the last iterate;
    callers move it to the safe side and verify, so the solver itself need not be exact.
    """
    f_lo = f(lo)[0]
    negative_end, positive_end = (lo, hi) if f_lo <= 0 else (hi, lo)
    x = start if lo < start < hi else (lo + hi) / 2
    for _ in range(max_iter):
        value, slope = f(x)
        if value == 0:
            return x
        if value < 0:
            negative_end = x
        else:
            positive_end = x
        low, high = min(negative_end, positive_end), max(negative_end, positive_end)
        step = -value / slope if slope != 0 and mp.isfinite(slope) else None
        if step is not None and abs(step) <= tol * (1 + abs(x)):
            # A negligible step means convergence only if f changes sign just past it: where
            # f's terms cancel (|f| ~ 1e300 from two nearly equal logarithms) the slope is noise
            # and the step is tiny far from the root. Otherwise keep bisecting.
            probe = x + 2 * step + mp.sign(step) * tol * (1 + abs(x))
            probe = min(max(probe, low), high)  # never outside the bracket (e.g. eps < 0)
            probe_value = f(probe)[0]
            if probe_value == 0 or (probe_value < 0) != (value < 0):
                return x + step  # converged (the bracket may be far on one side)
            step = None
        candidate = x + step if step is not None else None
        if candidate is None or not low < candidate < high:
            candidate = (low + high) / 2
        if abs(candidate - x) <= tol * (1 + abs(x)) or high - low <= tol * (1 + abs(x)):
            return candidate
        x = candidate
    return x
