"""Tests of Renyi-DP curves and their conversions (certunlearn_theory.renyi).

Oracles: closed forms written out here in float64 or mpmath, a brute-force minimisation over a
dense grid of orders, scipy's bounded scalar minimiser, dp_accounting's rdp conversions (which
optimise over a fixed grid of orders, so they can never beat an exact real-order optimum), the
exact Gaussian privacy profile, and published values quoted in THEORY.md sections 4 and 9.
"""
import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mpmath import mp, mpf
from scipy.optimize import minimize_scalar

from certunlearn_theory import (
    InvalidParameterError,
    RenyiCurve,
    gaussian_epsilon,
    linear_rho_max,
    precision,
    renyi_to_delta,
    renyi_to_dp,
)

from ..hypothesis_budget import examples

DP_ORDERS = ([1 + x / 10.0 for x in range(1, 100)] + list(range(11, 64))
             + [128, 256, 512, 1024])


def as_fraction(x):
    """The exact rational value of a finite mpf."""
    mantissa, exponent = x.man_exp  # (mpf(x) would round to the ambient precision)
    return Fraction(mantissa) * Fraction(2) ** exponent


def improved_objective(rho, alpha, delta):
    """float64: rho*alpha + ln(1 - 1/alpha) - (ln delta + ln alpha)/(alpha - 1)."""
    return rho * alpha + math.log1p(-1 / alpha) - (math.log(delta) + math.log(alpha)) / (alpha - 1)


def float_optimum(rho, delta):
    """scipy's bounded minimiser of the improved objective over ln(alpha - 1)."""
    res = minimize_scalar(lambda v: improved_objective(rho, 1 + math.exp(v), delta),
                          bounds=(-15, 25), method="bounded", options={"xatol": 1e-12})
    return res.fun


# ----------------------------------------------------------------------------------------------
# Published values (THEORY.md sections 4 and 9)
# ----------------------------------------------------------------------------------------------

def test_linear_curve_rho_one_published_values():
    # D_alpha <= alpha at delta = 1e-5: 7.077 (improved) and 7.786 (Mironov), not the 1.0036 that
    # treating the coefficient as an alpha-independent epsilon would give
    curve = RenyiCurve.linear(1.0)
    assert round(renyi_to_dp(curve, 1e-5), 3) == 7.077
    assert round(renyi_to_dp(curve, 1e-5, conversion="mironov"), 3) == 7.786


def test_rho_max_published_value_and_paper_shortcut():
    # (1, 1e-5): rho_max = 0.03056, the paper's eps^2/(9L) = 0.00965, so sigma is 1.78x too large
    rho = linear_rho_max(1.0, 1e-5)
    assert round(rho, 5) == 0.03056
    shortcut = 1.0 / (9 * math.log(1e5))
    assert round(shortcut, 5) == 0.00965
    assert round(math.sqrt(rho / shortcut), 2) == 1.78
    # the shortcut is safe (Mironov at alpha = 1 + 3L/eps certifies eps <= 1)
    assert renyi_to_dp(RenyiCurve.linear(shortcut), 1e-5, conversion="mironov") <= 1.0


# ----------------------------------------------------------------------------------------------
# Closed forms and independent optimisers
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("rho,delta", [(1.0, 1e-5), (0.01, 1e-10), (1e-6, 1e-5), (50.0, 0.1),
                                       (3e-3, 1e-300)])
def test_mironov_closed_form(rho, delta):
    big_l = -math.log(delta)
    expected = rho + 2 * math.sqrt(rho * big_l)
    eps, alpha = renyi_to_dp(RenyiCurve.linear(rho), delta, conversion="mironov", with_order=True)
    assert eps == pytest.approx(expected, rel=1e-14)
    assert eps >= expected * (1 - 1e-15)
    assert alpha == pytest.approx(1 + math.sqrt(big_l / rho), rel=1e-14)
    # inverse: (sqrt(L + eps) - sqrt(L))^2
    assert linear_rho_max(expected, delta, conversion="mironov") == pytest.approx(rho, rel=1e-12)


@pytest.mark.parametrize("rho,delta", [(1.0, 1e-5), (0.01, 1e-10), (1e-4, 1e-5), (50.0, 0.1),
                                       (3e-3, 1e-300), (0.2, 0.5)])
def test_improved_optimum_matches_independent_minimisers(rho, delta):
    ours, alpha = renyi_to_dp(RenyiCurve.linear(rho), delta, with_order=True)
    # the order solves rho (alpha - 1)^2 + ln(alpha) = L
    assert rho * (alpha - 1) ** 2 + math.log(alpha) == pytest.approx(-math.log(delta), rel=1e-12)
    # a negative optimum is clipped to 0 (still a valid guarantee)
    assert ours == pytest.approx(max(0.0, float_optimum(rho, delta)), rel=1e-10)
    # a dense grid of orders (mpmath, 60 digits) can only do worse than the real optimum
    with mp.workdps(60):
        log_inv = -mp.log(mpf(delta))
        grid_best = min(
            rho * a + mp.log(1 - 1 / a) + (log_inv - mp.log(a)) / (a - 1)
            for a in (1 + (alpha - 1) * mp.exp(mpf(k) / 200) for k in range(-40, 41)))
        assert mpf(ours) <= max(grid_best * (1 + mpf(10) ** -15), 0)


@pytest.mark.parametrize("rho,delta", [(1.0, 1e-5), (0.1, 1e-8), (2.0, 1e-3), (0.02, 1e-12)])
def test_dp_accounting_rdp_conversion_is_never_below_ours(rho, delta):
    from dp_accounting.rdp import rdp_privacy_accountant as rdp

    rdp_values = [rho * a for a in DP_ORDERS]
    theirs, _ = rdp.compute_epsilon(DP_ORDERS, rdp_values, delta)
    ours = renyi_to_dp(RenyiCurve.linear(rho), delta)
    assert ours <= theirs
    assert ours >= theirs * 0.98  # their grid is dense enough to be within 2%
    # and on their own orders we agree with their formula exactly
    grid = renyi_to_dp(RenyiCurve.from_orders(dict(zip(DP_ORDERS, rdp_values))), delta)
    assert grid == pytest.approx(theirs, rel=1e-12)
    eps = ours * 1.1
    their_delta, _ = rdp.compute_delta(DP_ORDERS, rdp_values, eps)
    our_delta = renyi_to_delta(RenyiCurve.linear(rho), eps)
    assert our_delta <= their_delta
    assert our_delta >= their_delta * 0.9


@pytest.mark.parametrize("rho,eps", [(1.0, 10.0), (0.1, 2.0), (0.01, 0.5)])
def test_mironov_delta_closed_form(rho, eps):
    expected = math.exp(-(eps - rho) ** 2 / (4 * rho))
    got = renyi_to_delta(RenyiCurve.linear(rho), eps, conversion="mironov")
    assert got == pytest.approx(expected, rel=1e-13)
    assert renyi_to_delta(RenyiCurve.linear(rho), rho / 2, conversion="mironov") == 1.0


def test_improved_delta_order_solves_its_stationarity_condition():
    rho, eps = 0.3, 4.0
    delta, alpha = renyi_to_delta(RenyiCurve.linear(rho), eps, with_order=True)
    assert rho * (2 * alpha - 1) + math.log1p(-1 / alpha) == pytest.approx(eps, rel=1e-12)
    # brute force over a grid of orders in float64
    grid = [1 + math.exp(v) for v in np.linspace(-8, 8, 4001)]
    best = min((a - 1) * (rho * a - eps + math.log1p(-1 / a)) - math.log(a) for a in grid)
    assert math.log(delta) <= best + 1e-12
    assert math.log(delta) >= best - 1e-4


def test_delta_below_float_range_and_zero_curve():
    assert renyi_to_delta(RenyiCurve.linear(1e-3), 1000.0) == 5e-324
    assert renyi_to_delta(RenyiCurve.linear(0), 0.5) == 0.0
    assert renyi_to_delta(RenyiCurve.linear(0), 0.0) == 1.0
    assert renyi_to_dp(RenyiCurve.linear(0), 1e-5, with_order=True) == (0.0, math.inf)


# ----------------------------------------------------------------------------------------------
# Properties
# ----------------------------------------------------------------------------------------------

@settings(max_examples=examples(40))
@given(log_rho=st.floats(-8, 3), log_delta=st.floats(-300, -0.5))
def test_improved_never_worse_than_mironov_and_rounded_up(log_rho, log_delta):
    rho, delta = 10.0 ** log_rho, 10.0 ** log_delta
    curve = RenyiCurve.linear(rho)
    improved = renyi_to_dp(curve, delta)
    mironov = renyi_to_dp(curve, delta, conversion="mironov")
    assert improved <= mironov
    with precision(100):
        exact = renyi_to_dp(curve, delta, as_mpf=True)
    with mp.workdps(120):
        assert mpf(improved) >= exact
        if exact > 0:
            assert mpf(math.nextafter(improved, 0.0)) < exact * (1 + mpf(10) ** -40)


@settings(max_examples=examples(40))
@given(log_eps=st.floats(-4, 3), log_delta=st.floats(-300, -0.5),
       conversion=st.sampled_from(["improved", "mironov"]))
def test_rho_max_round_trip(log_eps, log_delta, conversion):
    eps, delta = 10.0 ** log_eps, 10.0 ** log_delta
    rho = linear_rho_max(eps, delta, conversion=conversion)
    assert renyi_to_dp(RenyiCurve.linear(rho), delta, conversion=conversion) <= eps
    # tight: the next float up already exceeds eps (or sits on it within float resolution)
    bigger = rho * (1 + 1e-9)
    assert renyi_to_dp(RenyiCurve.linear(bigger), delta, conversion=conversion) > eps
    if conversion == "improved":
        assert rho >= linear_rho_max(eps, delta, conversion="mironov")
    # rounded down against a recomputation at twice the precision
    with precision(100):
        exact = linear_rho_max(eps, delta, conversion=conversion, as_mpf=True)
    with mp.workdps(120):
        assert mpf(rho) <= exact
        assert mpf(math.nextafter(rho, math.inf)) > exact * (1 - mpf(10) ** -40)


@settings(max_examples=examples(30))
@given(log_rho=st.floats(-300, 300), log_delta=st.floats(-320, -1e-9), log_eps=st.floats(-300, 300),
       conversion=st.sampled_from(["improved", "mironov"]))
def test_conversions_never_raise_or_return_nan_over_wide_ranges(log_rho, log_delta, log_eps,
                                                                conversion):
    rho, eps = 10.0 ** log_rho, 10.0 ** log_eps
    delta = max(10.0 ** log_delta, 5e-324)
    curve = RenyiCurve.linear(rho)
    found = renyi_to_dp(curve, delta, conversion=conversion)
    assert found >= 0 and math.isfinite(found)
    assert 0 <= renyi_to_delta(curve, eps, conversion=conversion) <= 1
    assert 0 <= linear_rho_max(eps, delta, conversion=conversion) < math.inf


@settings(max_examples=examples(30))
@given(log_delta=st.floats(-100, -1), log_ratio=st.floats(-2, 1))
def test_rdp_conversion_never_beats_the_exact_gaussian_profile(log_delta, log_ratio):
    delta, ratio = 10.0 ** log_delta, 10.0 ** log_ratio
    curve = RenyiCurve.gaussian(ratio, 1.0)
    assert renyi_to_dp(curve, delta) >= gaussian_epsilon(delta, ratio, 1.0)


@settings(max_examples=examples(30))
@given(log_rho=st.floats(-4, 1), log_delta=st.floats(-50, -1),
       conversion=st.sampled_from(["improved", "mironov"]))
def test_delta_and_epsilon_conversions_are_consistent(log_rho, log_delta, conversion):
    rho, delta = 10.0 ** log_rho, 10.0 ** log_delta
    curve = RenyiCurve.linear(rho)
    eps = renyi_to_dp(curve, delta, conversion=conversion)
    back = renyi_to_delta(curve, eps, conversion=conversion)
    assert back <= delta
    if eps > 0:  # eps = 0 is a clipped (negative) improved optimum: delta(0) is then below delta
        assert back >= delta * (1 - 1e-9)


@settings(max_examples=examples(20))
@given(a=st.floats(0, 10), b=st.floats(0, 10), log_delta=st.floats(-20, -1))
def test_composition_adds_curves(a, b, log_delta):
    delta = 10.0 ** log_delta
    composed = RenyiCurve.linear(a) + RenyiCurve.linear(b)
    assert composed.is_linear
    assert as_fraction(composed.rho) == Fraction(a) + Fraction(b)  # exact sum
    assert as_fraction(composed(3.0)) == 3 * (Fraction(a) + Fraction(b))
    assert renyi_to_dp(composed, delta) >= renyi_to_dp(RenyiCurve.linear(max(a, b)), delta)


# ----------------------------------------------------------------------------------------------
# Curve algebra and general curves
# ----------------------------------------------------------------------------------------------

def test_gaussian_curve_coefficient_and_self_composition():
    curve = RenyiCurve.gaussian(2.0, 4.0)
    assert curve.rho == mpf(2.0) ** 2 / (2 * 16)
    assert (3 * curve).rho == 3 * curve.rho
    assert (curve * 0).rho == 0
    assert renyi_to_dp(curve + curve, 1e-5) == renyi_to_dp(2 * curve, 1e-5)
    # sensitivity/sigma = 1/3 is not exact: the coefficient is rounded up
    third = RenyiCurve.gaussian(1.0, 3.0)
    with mp.workdps(100):
        assert third.rho >= mpf(1) / 18
        assert third.rho - mpf(1) / 18 < mpf(10) ** -60


def test_orders_curve_minimises_over_its_orders_only():
    values = {2: 0.5, 4: 1.0, 16: 4.0, 64: 16.0}
    curve = RenyiCurve.from_orders(values)
    delta = 1e-5
    eps, alpha = renyi_to_dp(curve, delta, with_order=True)
    expected = min(improved_objective(0.25, a, delta) for a in values)
    assert eps == pytest.approx(expected, rel=1e-13)
    assert alpha in values
    assert curve.orders == tuple(mpf(a) for a in sorted(values))
    with pytest.raises(InvalidParameterError, match="one of the orders"):
        curve(3)
    # composition with a linear curve adds rho*alpha at each order
    both = curve + RenyiCurve.linear(0.25)
    assert both(4) == mpf(2.0)
    # disjoint orders cannot be composed
    with pytest.raises(InvalidParameterError, match="disjoint"):
        curve + RenyiCurve.from_orders({3: 1.0})
    # an infinite value makes that order useless, not the curve
    assert renyi_to_dp(RenyiCurve.from_orders({2: math.inf, 4: 1.0}), delta, with_order=True)[1] == 4


def test_function_curve_matches_linear_curve():
    rho, delta = 0.05, 1e-6
    by_function = RenyiCurve.from_function(lambda a: rho * a)
    linear = RenyiCurve.linear(rho)
    assert renyi_to_dp(by_function, delta) == pytest.approx(renyi_to_dp(linear, delta), rel=1e-9)
    assert renyi_to_dp(by_function, delta) >= renyi_to_dp(linear, delta)
    assert renyi_to_delta(by_function, 2.0) == pytest.approx(renyi_to_delta(linear, 2.0), rel=1e-7)
    mixed = by_function + linear
    assert renyi_to_dp(mixed, delta) == pytest.approx(
        renyi_to_dp(RenyiCurve.linear(2 * rho), delta), rel=1e-9)


def test_function_curve_bad_values_are_reported():
    curve = RenyiCurve.from_function(lambda a: -1.0)
    with pytest.raises(InvalidParameterError, match="curve function value"):
        renyi_to_dp(curve, 1e-5)
    with pytest.raises(InvalidParameterError, match="callable"):
        RenyiCurve.from_function(3.0)


def test_curves_are_immutable_and_comparable():
    curve = RenyiCurve.linear(0.5)
    with pytest.raises(AttributeError):
        curve.rho = 1.0
    with pytest.raises(AttributeError):
        curve._rho = mpf(1)
    assert curve == RenyiCurve.linear(0.5)
    assert hash(curve) == hash(RenyiCurve.linear(0.5))
    assert "0.5" in repr(curve)


# ----------------------------------------------------------------------------------------------
# Input validation
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("call,match", [
    (lambda: RenyiCurve.linear(-1.0), "rho must be >= 0"),
    (lambda: RenyiCurve.linear(math.nan), "rho must be a number"),
    (lambda: RenyiCurve.linear("1"), "rho must be a real number"),
    (lambda: RenyiCurve.gaussian(1.0, 0.0), "sigma must be > 0"),
    (lambda: RenyiCurve.from_orders({1.0: 1.0}), "order must be > 1"),
    (lambda: RenyiCurve.from_orders({2.0: -1.0}), "epsilon at order 2.0 must be >= 0"),
    (lambda: RenyiCurve.from_orders({}), "non-empty mapping"),
    (lambda: renyi_to_dp(RenyiCurve.linear(1.0), 0.0), "delta must be > 0 and < 1"),
    (lambda: renyi_to_dp(RenyiCurve.linear(1.0), True), "delta must be a real number"),
    (lambda: renyi_to_dp(RenyiCurve.linear(1.0), 1e-5, conversion="rdp"), "conversion must be"),
    (lambda: renyi_to_dp(1.0, 1e-5), "curve must be a RenyiCurve"),
    (lambda: renyi_to_delta(RenyiCurve.linear(1.0), -1.0), "eps must be >= 0"),
    (lambda: linear_rho_max(math.inf, 1e-5), "eps must be finite"),
    (lambda: linear_rho_max(1.0, 1.0), "delta must be > 0 and < 1"),
    (lambda: RenyiCurve.linear(1.0)(1.0), "alpha must be > 1"),
    (lambda: RenyiCurve.linear(1.0) * 1.5, "count must be an integer"),
])
def test_bad_inputs_raise_clear_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("rho", [1e-300, 1e-30, 1e-8, 1e30, 1e300])
@pytest.mark.parametrize("conversion", ["improved", "mironov"])
def test_extreme_coefficients_regression(rho, conversion):
    # alpha - 1 far below the working precision (rho = 1e300) and ln(1 - 1/alpha) at alpha ~ 1e151
    # (rho = 1e-300) used to divide by zero and to cancel to a trivial delta. Compared as mpf: at
    # eps ~ 1e30 one float ulp of eps moves delta by a factor ~2.
    curve = RenyiCurve.linear(rho)
    eps = renyi_to_dp(curve, 1e-5, conversion=conversion, as_mpf=True)
    assert mp.isfinite(eps) and eps >= 0
    back = renyi_to_delta(curve, eps, conversion=conversion, as_mpf=True)
    # both directions round up by a relative ~1e-40 (eps at rho = 1e30 moves by 1e-10, delta by
    # a relative u * 1e-10 ~ 1e-25), so the round trip is exact to ~1e-20; at
    # rho = 1e300 the widening of eps (1e260) swamps its 2 sqrt(rho L) ~ 1e151 part, so delta
    # comes back far smaller (valid, just not tight at 50 digits)
    with mp.workdps(80):
        assert back <= mpf(1e-5) * (1 + mpf(10) ** -35)
        if 0 < eps and rho < 1e100:  # (eps = 0 is the clipped improved bound for a tiny rho)
            assert back >= mpf(1e-5) * (1 - mpf(10) ** -20)
            rho_back = linear_rho_max(eps, 1e-5, conversion=conversion, as_mpf=True)
            assert rho * (1 - mpf(10) ** -20) <= rho_back <= rho * (1 + mpf(10) ** -30)
