"""Tests of the shared numerics: working precision, validation and safe-side rounding."""
import asyncio
import math
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mpmath import mp, mpf

from certunlearn_theory import PrecisionError, precision, working_digits
from certunlearn_theory._numerics import (
    DEFAULT_DIGITS,
    check_delta,
    check_epsilon,
    check_int,
    check_real,
    finish,
    log_float_up,
    rigorous,
    to_float,
    widen,
)
from certunlearn_theory.errors import InvalidParameterError

MAX = 1.7976931348623157e308
TINY = 5e-324


# ----------------------------------------------------------------------------------------------
# precision()
# ----------------------------------------------------------------------------------------------

def test_precision_is_local_nested_and_restored():
    ambient = mp.dps
    assert working_digits() == DEFAULT_DIGITS
    with precision(80) as digits:
        assert digits == 80 and working_digits() == 80
        with precision(30):
            assert working_digits() == 30
        assert working_digits() == 80
        assert mp.dps == ambient  # mpmath's global context is never touched
    assert working_digits() == DEFAULT_DIGITS


def test_precision_is_restored_after_an_exception():
    with pytest.raises(RuntimeError):
        with precision(90):
            raise RuntimeError("boom")
    assert working_digits() == DEFAULT_DIGITS


@pytest.mark.parametrize("digits", [True, 50.0, "50", 5, 10 ** 6, None])
def test_precision_rejects_bad_digits(digits):
    with pytest.raises(InvalidParameterError, match="digits"):
        with precision(digits):
            pass


def test_precision_is_isolated_between_threads():
    inside = threading.Barrier(2)
    seen = {}

    def worker():
        with precision(120):
            inside.wait()          # main thread reads while this thread is inside its block
            seen["worker"] = working_digits()
            inside.wait()

    thread = threading.Thread(target=worker)
    thread.start()
    inside.wait()
    seen["main"] = working_digits()
    inside.wait()
    thread.join()
    assert seen == {"worker": 120, "main": DEFAULT_DIGITS}


def test_precision_is_isolated_between_asyncio_tasks():
    async def task(digits, started, release):
        with precision(digits):
            started.set()
            await release.wait()   # the other task runs while this one is inside its block
            return working_digits()

    async def run():
        s1, s2, release = asyncio.Event(), asyncio.Event(), asyncio.Event()
        t1 = asyncio.create_task(task(70, s1, release))
        t2 = asyncio.create_task(task(90, s2, release))
        await s1.wait()
        await s2.wait()
        outside = working_digits()
        release.set()
        return await t1, await t2, outside

    assert asyncio.run(run()) == (70, 90, DEFAULT_DIGITS)


# ----------------------------------------------------------------------------------------------
# to_float: safe-side conversion, checked against exact mpf comparisons
# ----------------------------------------------------------------------------------------------

def check_bracket(x):
    """up is the smallest float >= x and down the largest float <= x (exact comparisons)."""
    up, down = to_float(x, "up"), to_float(x, "down")
    with mp.workdps(400):
        if not math.isinf(up):
            assert mpf(up) >= x
        if not math.isinf(down):
            assert mpf(down) <= x
        below_up = math.nextafter(up, -math.inf)
        above_down = math.nextafter(down, math.inf)
        assert math.isinf(below_up) or mpf(below_up) < x
        assert math.isinf(above_down) or mpf(above_down) > x
    return up, down


@given(value=st.floats(allow_nan=False, allow_infinity=False),
       offset=st.integers(-40, 40), sign=st.sampled_from([-1, 1]))
def test_to_float_brackets_values_between_floats(value, offset, sign):
    with mp.workdps(60):
        x = mpf(value) * (1 + sign * mpf(10) ** (offset - 50)) if value else mpf(10) ** (offset - 330)
    check_bracket(x)


def test_to_float_exact_values_are_unchanged():
    for value in [0.0, 1.0, -2.5, 0.1, TINY, -TINY, MAX, 2.0 ** -1074 * 3]:
        assert to_float(mpf(value), "up") == value
        assert to_float(mpf(value), "down") == value


def test_to_float_subnormals_underflow_and_overflow():
    with mp.workdps(60):
        assert check_bracket(mpf("1e-400")) == (TINY, 0.0)
        assert check_bracket(-mpf("1e-400")) == (-0.0, -TINY) or \
            check_bracket(-mpf("1e-400")) == (0.0, -TINY)
        up, down = check_bracket(mpf("1e-320"))
        assert 0 < down < up < 1e-319
        assert check_bracket(mpf("1e400")) == (math.inf, MAX)
        assert check_bracket(-mpf("1e400")) == (-MAX, -math.inf)
        assert to_float(mp.exp(-mpf(10) ** 20), "up") == TINY
    assert to_float(mp.inf, "down") == math.inf
    with pytest.raises(PrecisionError):
        to_float(mp.nan, "up")


def test_to_float_does_not_reround_at_a_low_ambient_precision():
    # a 60-digit value just above a float: at mp.dps = 15, mpf(x) would round it onto the float
    with mp.workdps(60):
        base = mpf(0.1)
        x = base + base * mpf(10) ** -30
    with mp.workdps(15):
        up = to_float(x, "up")
        down = to_float(x, "down")
        kept = finish(x, "up", as_mpf=True)
    assert up == math.nextafter(0.1, 1.0) and down == 0.1
    assert kept is x


def test_log_float_up():
    assert log_float_up(mpf(-1000)) == TINY
    assert log_float_up(mpf(0)) == 1.0
    with mp.workdps(60):
        assert mpf(log_float_up(mpf(-1))) >= mp.exp(-1)


# ----------------------------------------------------------------------------------------------
# rigorous() and widen()
# ----------------------------------------------------------------------------------------------

def test_rigorous_widens_toward_safety():
    with mp.workdps(200):
        third = mpf(1) / 3
    up = rigorous(lambda: mpf(1) / 3, "up")
    down = rigorous(lambda: mpf(1) / 3, "down")
    with mp.workdps(200):
        assert down < third < up
        assert up - third < mpf(10) ** -(DEFAULT_DIGITS - 12)
    negative = rigorous(lambda: -mpf(1) / 3, "up")
    with mp.workdps(200):
        assert negative > -third


def test_rigorous_raises_on_an_unstable_computation():
    # (e^x - 1)/x at x = 10^-60 by the naive formula: 0 at 50 digits, 1 at 70 digits
    def unstable():
        x = mpf(10) ** -60
        return (mp.exp(x) - 1) / x

    with pytest.raises(PrecisionError, match="disagree"):
        rigorous(unstable, "up", what="naive expm1")
    # the stable form passes
    assert rigorous(lambda: mp.expm1(mpf(10) ** -60) / mpf(10) ** -60, "up") >= 1


def test_rigorous_handles_infinities():
    assert rigorous(lambda: mp.inf, "up") == mp.inf
    with pytest.raises(PrecisionError):
        rigorous(lambda: mp.inf if mp.dps < DEFAULT_DIGITS + 5 else mpf(1), "up")


def test_widen_directions():
    with mp.workdps(80):
        x = mpf(2)
        assert widen(x, "up") > x > widen(x, "down")
        assert widen(-x, "up") > -x > widen(-x, "down")
        assert widen(mpf(0), "up") == 0


# ----------------------------------------------------------------------------------------------
# Validation helpers
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value,match", [
    (True, "eps must be a real number, got True of type bool"),
    ("1", "eps must be a real number, got '1' of type str"),
    (1j, "eps must be a real number"),
    (math.nan, "eps must be a number, got NaN"),
    (math.inf, "eps must be finite, got inf"),
    (-0.5, "eps must be >= 0, got -0.5"),
])
def test_check_epsilon_messages(value, match):
    with pytest.raises(InvalidParameterError, match=match):
        check_epsilon(value)


def test_check_delta_and_int():
    assert check_delta(0.5) == mpf(0.5)
    for bad in (0, 1, 1.0, -1e-300):
        with pytest.raises(InvalidParameterError, match="delta must be > 0 and < 1"):
            check_delta(bad)
    assert check_int("steps", 3.0) == 3
    with pytest.raises(InvalidParameterError, match="steps must be an integer"):
        check_int("steps", 2.5)
    with pytest.raises(InvalidParameterError, match="steps must be >= 1, got 0"):
        check_int("steps", 0, low=1)


def test_check_real_is_exact():
    # floats convert losslessly whatever the ambient precision; mpf inputs are kept as they are
    with mp.workdps(5):
        assert check_real("x", 0.1) == mpf(0.1)
    with mp.workdps(60):
        x = mpf(1) / 3
    assert check_real("x", x) is x
    big = 3 ** 100  # 159 bits
    mantissa, exponent = check_real("x", big).man_exp
    assert mantissa * 2 ** exponent == big
