"""Tests of the safe-side display helpers format_up / format_down."""
import math
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mpmath import mp, mpf

from certunlearn_theory import InvalidParameterError, format_down, format_up

from ..hypothesis_budget import examples

finite = st.floats(allow_nan=False, allow_infinity=False)


def significant_digits(text: str) -> int:
    mantissa = text.lstrip("-").split("e")[0].replace(".", "").lstrip("0")
    return len(mantissa.rstrip("0")) if mantissa else 0


def test_the_audit_example():
    # an epsilon of 1.2345649 printed to nearest reads 1.23456, below the guarantee
    assert f"{1.2345649:.6g}" == "1.23456"
    assert format_up(1.2345649) == "1.23457"
    assert format_down(1.2345649) == "1.23456"


@pytest.mark.parametrize("x,digits,up,down", [
    (1.0, 6, "1", "1"),
    (0.25, 6, "0.25", "0.25"),
    (1e-5, 6, "1.00001e-05", "1e-05"),  # the double 1e-5 is 1.0000000000000000818e-05
    (9.9999999, 6, "10", "9.99999"),
    (123456789, 3, "1.24e+08", "1.23e+08"),
    (-1.2345649, 6, "-1.23456", "-1.23457"),
    (0.0, 6, "0", "0"),
    (math.inf, 6, "inf", "inf"),
    (12, 1, "2e+01", "1e+01"),  # the layout of format(x, ".1g")
    (Fraction(1, 3), 4, "0.3334", "0.3333"),
    (Decimal("2.5"), 1, "3", "2"),
])
def test_known_answers(x, digits, up, down):
    assert format_up(x, digits) == up
    assert format_down(x, digits) == down


def test_mpf_uses_its_exact_value():
    with mp.workdps(40):
        x = mpf(1) / 3
    assert format_up(x, 30) == "0.333333333333333333333333333334"
    assert format_down(x, 30) == "0." + "3" * 30


@settings(max_examples=examples(300))
@given(x=finite, digits=st.integers(1, 20))
def test_safe_side_tightest_and_short(x, digits):
    up, down = format_up(x, digits), format_down(x, digits)
    exact = Decimal(x)  # the float's exact binary value
    assert Decimal(up) >= exact >= Decimal(down)
    assert significant_digits(up) <= digits and significant_digits(down) <= digits
    # tightest: each is less than one unit of the last shown digit away (exact arithmetic)
    if x != 0:
        unit = Fraction(10) ** (exact.adjusted() - digits + 1)
        assert Fraction(Decimal(up)) - Fraction(x) < unit
        assert Fraction(x) - Fraction(Decimal(down)) < unit
    # the layout is Python's '.{digits}g' wherever that happens to round the safe way
    usual = format(x, f".{digits}g")
    if usual not in ("0", "-0") and Decimal(usual) >= exact:
        assert Decimal(up) == Decimal(usual)


@settings(max_examples=examples(300))
@given(x=finite)
def test_shortest_round_trip(x):
    up, down = format_up(x, None), format_down(x, None)
    assert float(up) == x and float(down) == x or x == 0
    assert Decimal(up) >= Decimal(x) >= Decimal(down)
    assert significant_digits(up) <= 18


@pytest.mark.parametrize("bad", [math.nan, "1.0", None, True, complex(1, 1), mpf("nan")])
def test_bad_value(bad):
    with pytest.raises(InvalidParameterError, match="x must be"):
        format_up(bad)


@pytest.mark.parametrize("digits", [0, -1, 1.5, True, 10 ** 6])
def test_bad_digits(digits):
    with pytest.raises(InvalidParameterError, match="digits must be an integer"):
        format_down(1.0, digits)


def test_shortest_needs_a_float():
    with pytest.raises(InvalidParameterError, match="needs a float"):
        format_up(Fraction(1, 3), None)
