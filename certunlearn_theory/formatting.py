"""Safe-side decimal display of guarantees.

A number shown to a user must be on the safe side of the value it stands for, not merely close to
it: an epsilon of 1.2345649 shown as ``1.23456`` (round to nearest) states a guarantee the
accountant never gave. :func:`format_up` writes the smallest decimal with the requested number of
significant digits that is >= the exact value (epsilon, delta, sigma, step counts);
:func:`format_down` the largest one <= it (lower bounds such as a maximal noise ratio).

Both work on the exact value of the argument (a float's binary value, an ``mpf``, an ``int``, a
``Fraction`` or a ``Decimal``) with integer arithmetic, so the comparison ``Decimal(text) >= x``
(or ``<=``) holds exactly. The layout follows Python's ``format(x, ".{digits}g")`` (trailing zeros
dropped, an exponent below 1e-4 or from 10**digits on), so the text differs from the usual one
only where the usual one rounds the wrong way. ``digits=None`` gives the shortest text that is on
the safe side and still reads back (``float(text)``) as the same float, the safe counterpart of
``repr``.
"""
from __future__ import annotations

import math
import numbers
from decimal import Decimal
from fractions import Fraction

from mpmath import mpf

from ._numerics import entry_point
from .errors import InvalidParameterError

__all__ = ["format_up", "format_down"]

_MAX_DIGITS = 1000


def _exact(name: str, x) -> Fraction | float:
    """x as an exact Fraction, or a float infinity."""
    if isinstance(x, bool) or not isinstance(x, (numbers.Real, mpf, Decimal)):
        raise InvalidParameterError(f"{name} must be a real number, got {x!r} "
                                    f"of type {type(x).__name__}")
    if isinstance(x, mpf):
        if x != x:
            raise InvalidParameterError(f"{name} must be a number, got NaN")
        if x in (mpf("inf"), mpf("-inf")):
            return math.inf if x > 0 else -math.inf
        sign, man, exp, _ = x._mpf_
        value = Fraction(int(man)) * (Fraction(2) ** int(exp))
        return -value if sign else value
    if isinstance(x, Decimal):
        if x.is_nan():
            raise InvalidParameterError(f"{name} must be a number, got NaN")
        if x.is_infinite():
            return math.inf if x > 0 else -math.inf
        return Fraction(x)
    if isinstance(x, numbers.Integral):
        return Fraction(int(x))
    if isinstance(x, Fraction):
        return x
    f = float(x)
    if math.isnan(f):
        raise InvalidParameterError(f"{name} must be a number, got NaN")
    if math.isinf(f):
        return f
    return Fraction(f)


def _decimal_exponent(v: Fraction) -> int:
    """e with 10^e <= v < 10^(e+1), for v > 0."""
    e = len(str(v.numerator)) - len(str(v.denominator))
    # v lies within a factor 10 of 10^e: adjust once or twice
    while Fraction(10) ** e > v:
        e -= 1
    while Fraction(10) ** (e + 1) <= v:
        e += 1
    return e


def _round(v: Fraction, digits: int, up: bool) -> tuple[int, int]:
    """(n, k): v rounded toward +inf (up) or -inf to ``digits`` significant digits is n * 10^k."""
    if v == 0:
        return 0, 0
    e = _decimal_exponent(abs(v))
    k = e - digits + 1
    scaled = v / (Fraction(10) ** k)
    n = math.ceil(scaled) if up else math.floor(scaled)
    if abs(n) >= 10 ** digits:  # 9.99..95 rounded away from zero to 10.0: n = +-10^digits
        n //= 10
        k += 1
    return n, k


def _layout(n: int, k: int, digits: int) -> str:
    """n * 10^k written like Python's '.{digits}g' format (trailing zeros dropped)."""
    if n == 0:
        return "0"
    sign = "-" if n < 0 else ""
    text = str(abs(n)).rstrip("0")
    k += len(str(abs(n))) - len(text)
    exponent = k + len(text) - 1  # of the leading digit
    if -4 <= exponent < digits:
        if k >= 0:
            body = text + "0" * k
        elif exponent >= 0:
            body = text[:exponent + 1] + "." + text[exponent + 1:]
        else:
            body = "0." + "0" * (-exponent - 1) + text
        return sign + body
    mantissa = text[0] + ("." + text[1:] if len(text) > 1 else "")
    return f"{sign}{mantissa}e{'-' if exponent < 0 else '+'}{abs(exponent):02d}"


def _format(x, digits, up: bool, name: str, reads_back: bool = False) -> str:
    v = _exact("x", x)
    if isinstance(v, float):  # an infinity
        return "inf" if v > 0 else "-inf"
    if reads_back and isinstance(x, float) and isinstance(digits, int) \
            and not isinstance(digits, bool) and 1 <= digits <= _MAX_DIGITS:
        short = Decimal(repr(x)).normalize()  # the shortest text that reads back as x
        sign, mantissa, exponent = short.as_tuple()
        if len(mantissa) <= digits and isinstance(exponent, int):
            n = int("".join(map(str, mantissa)))
            return _layout(-n if sign else n, exponent, digits)
    if digits is None:
        if not isinstance(x, float):
            raise InvalidParameterError(f"digits=None (shortest text that reads back) needs a "
                                        f"float, got {type(x).__name__}; pass digits")
        for d in range(1, 19):  # 18 digits always suffice for a directed rounding of a double
            n, k = _round(v, d, up)
            text = _layout(n, k, 16)  # repr's layout: exponent from 1e16 on
            if float(text) == x:
                return text
        raise AssertionError("unreachable")  # pragma: no cover
    if isinstance(digits, bool) or not isinstance(digits, numbers.Integral) \
            or not 1 <= int(digits) <= _MAX_DIGITS:
        raise InvalidParameterError(f"digits must be an integer between 1 and {_MAX_DIGITS} "
                                    f"(or None), got {digits!r}")
    n, k = _round(v, int(digits), up)
    return _layout(n, k, int(digits))


@entry_point
def format_up(x, digits=6, *, reads_back: bool = False) -> str:
    """Decimal text >= x with at most ``digits`` significant digits (the smallest such text).

    For anything that is an upper bound: epsilon, delta, sigma, a step count. ``x`` may be a
    float, int, ``Fraction``, ``Decimal`` or ``mpf``; its exact value is rounded toward +inf, so
    ``Decimal(format_up(x, d)) >= x`` holds exactly. Infinities give ``"inf"``/``"-inf"``; NaN
    is refused. ``digits=None`` (floats only): the shortest such text that ``float()`` reads back
    as ``x`` itself.

    ``reads_back=True`` (floats): when the shortest text that reads back as the float ``x``
    (``repr``) has at most ``digits`` significant digits, that text, since it names the recorded
    float itself (``1e-05`` for the double nearest 1e-5, whose exact value is a little above);
    otherwise as without it. For showing a value recorded as a float, such as a certificate's
    delta, where ``1.01e-05`` would read as a different number.

    >>> format_up(1.2345649)
    '1.23457'
    >>> format_up(1e-5), format_up(1e-5, 3)
    ('1.00001e-05', '1.01e-05')
    >>> format_up(0.25), format_up(1.0), format_up(123456789, 3)
    ('0.25', '1', '1.24e+08')
    >>> format_up(1.6180521433169779, None), format_up(0.1, None)
    ('1.6180521433169779', '0.10000000000000001')
    >>> format_up(1e-5, 3, reads_back=True), format_up(1.2345649, 6, reads_back=True)
    ('1e-05', '1.23457')
    """
    return _format(x, digits, True, "x", reads_back)


@entry_point
def format_down(x, digits=6, *, reads_back: bool = False) -> str:
    """Decimal text <= x with at most ``digits`` significant digits (the largest such text).

    For lower bounds, e.g. a maximal noise ratio or a sum of variances; otherwise as
    :func:`format_up`, rounding toward -inf.

    >>> format_down(0.26805112323), format_down(-1.2345649)
    ('0.268051', '-1.23457')
    """
    return _format(x, digits, False, "x", reads_back)
