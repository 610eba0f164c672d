"""Tests of the Gaussian hockey-stick primitives (certunlearn_theory.divergences).

Oracles, all independent of the code under test:
* scipy.stats.norm in float64, where the plain closed form is accurate;
* the cancellation-free integral theta = phi(m) int_0^inf exp(-m u - u^2/2)(1 - e^{-r u}) du
  (THEORY.md section 2), integrated by mpmath.quad at twice the precision;
* the plain closed form Phi(r/2 - eps/r) - e^eps Phi(-eps/r - r/2) at several hundred digits;
* the leading term of Mills' ratio where it is exact to hundreds of digits;
* dp_accounting.gaussian_mechanism (analytic Gaussian mechanism in float64);
* published values quoted in THEORY.md sections 3 and 6.
"""
import math

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st
from mpmath import mp, mpf
from scipy.stats import norm

from certunlearn_theory import (
    InvalidParameterError,
    classical_gaussian_sigma,
    gaussian_delta,
    gaussian_epsilon,
    gaussian_renyi,
    gaussian_sigma,
    hockey_stick_contraction,
    log_theta,
    max_noise_ratio,
    precision,
    theta,
)

from ..hypothesis_budget import examples

TINY = 5e-324


# ----------------------------------------------------------------------------------------------
# Independent oracles
# ----------------------------------------------------------------------------------------------

def quad_log_theta(eps, r, dps):
    """ln theta from the integral form, by mpmath.quad with breakpoints on the integrand's scale."""
    with mp.workdps(dps):
        eps, r = mpf(eps), mpf(r)
        m = eps / r - r / 2
        scale = 1 / (abs(m) + r + 1)
        points = {mpf(0)} | {scale * 4 ** k for k in range(-1, 5)}
        if m < 0:
            points |= {max(mpf(0), -m + d) for d in (-8, -2, 0, 2, 8)}
        points = sorted(points) + [mp.inf]

        def integrand(u):
            return mp.exp(-m * u - u * u / 2) * (-mp.expm1(-r * u))

        integral = mp.quad(integrand, points)
        return -m * m / 2 - mp.log(2 * mp.pi) / 2 + mp.log(integral)


def closed_form_theta(eps, r, dps):
    with mp.workdps(dps):
        eps, r = mpf(eps), mpf(r)
        return mp.ncdf(r / 2 - eps / r) - mp.exp(eps) * mp.ncdf(-eps / r - r / 2)


def scipy_theta(eps, r):
    return norm.cdf(r / 2 - eps / r) - math.exp(eps) * norm.cdf(-eps / r - r / 2)


def relative_error(a, b):
    with mp.workdps(120), precision(120):
        return abs(mpf(a) - mpf(b)) / abs(mpf(b))


# ----------------------------------------------------------------------------------------------
# theta and log_theta: known answers
# ----------------------------------------------------------------------------------------------

FLOAT_RANGE_CASES = [(0.0, 0.5), (0.1, 1.0), (1.0, 1.0), (1.0, 2.0), (1.0, 0.3), (5.0, 1.0),
                     (0.5, 10.0), (3.0, 4.0), (8.0, 4.5), (0.01, 0.05)]


@pytest.mark.parametrize("eps,r", FLOAT_RANGE_CASES, ids=[f"eps={e},r={r}" for e, r in
                                                           FLOAT_RANGE_CASES])
def test_theta_matches_scipy_in_the_float_range(eps, r):
    expected = scipy_theta(eps, r)
    with mp.workdps(50), precision(50):
        got = theta(eps, r)
    assert relative_error(got, expected) < 1e-9


INTEGRAL_CASES = [
    (1.0, 2.0),          # theta ~ 0.5
    (1.0, 0.3),          # theta ~ 5e-5
    (0.0, 1e-6),         # total variation, tiny r
    (1e-6, 1e-8),        # eps/r^2 = 1e10: ten digits of cancellation in the closed form
    (1.0, 1e-3),         # theta ~ 1e-217157
    (50.0, 1.0),         # theta ~ 1e-536
    (1000.5 - 1e-9, 1.0),  # m just below the switch to the asymptotic series
    (1000.5 + 1e-9, 1.0),  # m just above it
    (2000.0, 1.0),       # asymptotic route
    (1e4, 1e-2),         # m = 1e6
    (0.5, 20.0),         # theta close to 1
]


@pytest.mark.parametrize("eps,r", INTEGRAL_CASES, ids=[f"eps={e:g},r={r:g}" for e, r in
                                                       INTEGRAL_CASES])
def test_theta_and_log_theta_match_the_integral_form(eps, r):
    expected_log = quad_log_theta(eps, r, 80)
    with mp.workdps(50), precision(50):
        got_log = log_theta(eps, r)
        got = theta(eps, r)
    with mp.workdps(110), precision(110):
        assert abs(got_log - expected_log) <= mpf(10) ** -45 * (1 + abs(expected_log))
        assert relative_error(got, mp.exp(expected_log)) < 1e-45


@pytest.mark.parametrize("eps,r", [(1.0, 0.3), (1e-6, 1e-8), (20.0, 0.5), (0.0, 1e-6),
                                   (1e-300, 1e-150), (1e-310, 1e-150), (3.0, 1e-20)])
def test_theta_matches_the_closed_form_at_high_precision(eps, r):
    # the plain formula at 1000 digits absorbs the cancellation (at most ~400 digits here)
    expected = closed_form_theta(eps, r, 1000)
    with mp.workdps(60), precision(60):
        assert relative_error(theta(eps, r), expected) < 1e-55


@pytest.mark.parametrize("eps,r", [(1e8, 1e-3), (1e300, 1e-100), (1e6, 1e-300)])
def test_log_theta_beyond_the_range_of_erfc(eps, r):
    # For m >= 1e11 the asymptotic series of Mills' ratio beyond its first term is below
    # 10^-22 relative, and at m >= 1e300 below 10^-600: the leading term is an exact oracle.
    with mp.workdps(700), precision(700):
        e, rr = mpf(eps), mpf(r)
        m = e / rr - rr / 2
        leading = -m * m / 2 - mp.log(2 * mp.pi) / 2 + mp.log(1 / m - 1 / (m + rr))
        tolerance = 3 / m ** 2
    with mp.workdps(50), precision(50):
        got = log_theta(eps, r)
    with mp.workdps(700), precision(700):
        assert abs(got - leading) <= abs(leading) * (tolerance + mpf(10) ** -45)
        assert got < -1e20  # theta < 10^(-10^19)


def test_log_theta_near_one_keeps_relative_precision():
    # theta = 1 - 4.5e-14: ln theta ~ -(1 - theta) must keep all its digits
    with mp.workdps(300), precision(300):
        expected = mp.log(closed_form_theta(0.1, 15.0, 300))
    with mp.workdps(50), precision(50):
        got = log_theta(0.1, 15.0)
    assert relative_error(got, expected) < 1e-45


def test_theta_does_not_round_its_arguments_regression():
    # theta used to round an mpf r to the ambient precision; at m ~ 4e5 that moved ln theta by
    # m^2 * 1e-50 and made gaussian_delta(66, 0.001, 6) fail its two-precision agreement check
    with mp.workdps(70), precision(70):
        r = mpf(0.001) / 6
    with mp.workdps(50), precision(50):
        low = theta(66, r)
    with mp.workdps(70), precision(70):
        high = theta(66, r)
    assert relative_error(low, high) < 1e-48
    assert gaussian_delta(66.0, 0.001, 6.0) == TINY


def test_total_variation_at_huge_ratios_regression():
    # erf/erfc overflowed (r = 1e300) or lost the exponent of 1 - theta (r = 2e100)
    with mp.workdps(50), precision(50):
        assert theta(0, 2e300) == 1
        x = mpf(1e100)  # r/2; ln(1 - 2Q(x)) = -2Q(x) = -2 phi(x)/x (1 + O(1e-200))
        with mp.workdps(300), precision(300):
            expected = -2 * mp.exp(-x * x / 2 - mp.log(2 * mp.pi) / 2) / x
        assert relative_error(log_theta(0, 2e100), expected) < 1e-45
    assert hockey_stick_contraction(0.0, 1.0, 1e300, 1.0) == 1.0
    assert gaussian_epsilon(1e-5, 1e300, 1.0) == math.inf  # eps ~ r^2/2 is beyond the floats


def test_theta_special_values():
    with mp.workdps(50), precision(50):
        assert theta(1, mp.inf) == 1
        assert log_theta(1, mp.inf) == 0
        assert theta(mp.inf, 1) == 0
        assert log_theta(mp.inf, 1) == mp.ninf
        assert theta(1, 0) == 0
        # total variation: theta_0(r) = 2 Phi(r/2) - 1
        assert relative_error(theta(0, 1.3), 2 * norm.cdf(0.65) - 1) < 1e-14


@settings(max_examples=examples(60))
@given(eps=st.floats(0, 1e4), log_r=st.floats(-8, 8))
def test_theta_is_a_probability_and_log_theta_agrees(eps, log_r):
    r = 10.0 ** log_r
    with mp.workdps(30), precision(30):
        t = theta(eps, r)
        lt = log_theta(eps, r)
        assert 0 <= t <= 1
        assert lt <= 0
        if t > 0:
            assert abs(mp.log(t) - lt) <= mpf(10) ** -25 * (1 + abs(lt))


# ----------------------------------------------------------------------------------------------
# gaussian_delta
# ----------------------------------------------------------------------------------------------

def test_classical_sigma_fails_at_eps_10_published_value():
    # THEORY.md section 3: the classical sigma at (10, 1e-5) has true delta 2.27e-5
    sigma = math.sqrt(2 * math.log(1.25 / 1e-5)) / 10
    delta = gaussian_delta(10.0, 1.0, sigma)
    assert 2.26e-5 < delta < 2.28e-5
    # and at (20, 1e-100) it fails too
    sigma = math.sqrt(2 * math.log(1.25e100)) / 20
    assert gaussian_delta(20.0, 1.0, sigma) > 1e-100
    # while at eps = 8 (delta = 1e-5) it still holds
    sigma = math.sqrt(2 * math.log(1.25 / 1e-5)) / 8
    assert gaussian_delta(8.0, 1.0, sigma) <= 1e-5


def test_delta_below_the_float_range_is_the_smallest_float_never_zero():
    assert gaussian_delta(1.0, 0.01, 1.0) == TINY  # theta ~ 1e-2170
    assert gaussian_delta(1e4, 1e-3, 1.0) == TINY
    assert 0 < gaussian_delta(1.0, 0.01, 1.0, as_mpf=True) < mpf(10) ** -2000


def test_delta_never_exceeds_one():
    # theta_0(100) = 1 - 1e-2000: rounding up must stop at 1
    assert gaussian_delta(0.0, 100.0, 1.0) == 1.0
    assert gaussian_delta(0.0, 1e8, 1.0, as_mpf=True) <= 1
    assert hockey_stick_contraction(0.0, 1.0, 50.0, 1.0) == 1.0


def test_zero_sensitivity_gives_exactly_zero_delta_and_epsilon():
    assert gaussian_delta(0.0, 0.0, 1.0) == 0.0
    assert gaussian_epsilon(1e-5, 0.0, 1.0) == 0.0


@settings(max_examples=examples(25))
@given(eps=st.floats(0, 50), log_ratio=st.floats(-3, 2))
def test_gaussian_delta_is_rounded_up_and_tight(eps, log_ratio):
    sigma = 10.0 ** -log_ratio
    got = gaussian_delta(eps, 1.0, sigma)
    with precision(100):
        with mp.workdps(120), precision(120):
            exact = theta(eps, 1 / mpf(sigma))
    with mp.workdps(120), precision(120):
        assert mpf(got) >= exact
        if exact > mpf(TINY):
            assert math.nextafter(got, 0.0) < exact or got == TINY


@settings(max_examples=examples(40))
@given(eps=st.floats(0, 100), sensitivity=st.floats(1e-3, 1e3), sigma=st.floats(1e-2, 1e2),
       factor=st.floats(1.01, 3.0))
def test_gaussian_delta_monotonicity(eps, sensitivity, sigma, factor):
    base = gaussian_delta(eps, sensitivity, sigma)
    assert gaussian_delta(eps * factor, sensitivity, sigma) <= base
    assert gaussian_delta(eps, sensitivity, sigma * factor) <= base
    assert gaussian_delta(eps, sensitivity * factor, sigma) >= base


@settings(max_examples=examples(30))
@given(eps=st.floats(0, 100), sensitivity=st.floats(1e-3, 1e3), sigma=st.floats(1e-2, 1e2),
       power=st.integers(-20, 20), scale=st.floats(1e-3, 1e3))
def test_gaussian_delta_scale_invariance(eps, sensitivity, sigma, power, scale):
    base = gaussian_delta(eps, sensitivity, sigma)
    # a power of two scales both exactly: the result is identical
    assert gaussian_delta(eps, sensitivity * 2.0 ** power, sigma * 2.0 ** power) == base
    scaled = gaussian_delta(eps, sensitivity * scale, sigma * scale)
    if base > 1e-300:
        # the ratio is perturbed by 2 ulps; delta moves by at most d ln delta/d ln r times that
        with mp.workdps(30), precision(30):
            r = mpf(sensitivity) / mpf(sigma)
            slope = float(r * mp.exp(-(eps / r - r / 2) ** 2 / 2 - mp.log(2 * mp.pi) / 2
                                     - log_theta(eps, r)))
        assert abs(scaled - base) <= base * (1e-14 + 5e-16 * slope)


@settings(max_examples=examples(40))
@given(eps=st.floats(0, 1e4), log_ratio=st.floats(-8, 8))
def test_no_exception_or_nan_over_wide_ranges(eps, log_ratio):
    delta = gaussian_delta(eps, 10.0 ** log_ratio, 1.0)
    assert 0 < delta <= 1 and not math.isnan(delta)


@settings(max_examples=examples(30))
@given(eps=st.floats(0, 1e4), log_delta=st.floats(-320, -1e-9), log_ratio=st.floats(-8, 8))
def test_inversions_never_raise_or_return_nan_over_wide_ranges(eps, log_delta, log_ratio):
    delta = max(10.0 ** log_delta, TINY)
    sigma = gaussian_sigma(eps, delta, 1.0)
    assert sigma > 0 and not math.isnan(sigma)
    if math.isfinite(sigma):
        assert gaussian_delta(eps, 1.0, sigma) <= delta
    found = gaussian_epsilon(delta, 10.0 ** log_ratio, 1.0)
    assert found >= 0 and math.isfinite(found)
    assert gaussian_delta(found, 10.0 ** log_ratio, 1.0) <= delta


def test_dp_accounting_analytic_gaussian_agrees():
    from dp_accounting import gaussian_mechanism

    for eps, delta in [(0.5, 1e-5), (1.0, 1e-5), (3.0, 1e-8), (10.0, 1e-10), (0.1, 1e-3)]:
        ours = gaussian_sigma(eps, delta, 1.0)
        theirs = gaussian_mechanism.get_sigma_gaussian(eps, delta, tol=1e-14)
        assert abs(ours - theirs) <= 1e-9 * theirs
    for sigma, delta in [(1.0, 1e-5), (5.0, 1e-6), (0.7, 1e-3)]:
        ours = gaussian_epsilon(delta, 1.0, sigma)
        theirs = gaussian_mechanism.get_epsilon_gaussian(sigma, delta, tol=1e-14)
        assert abs(ours - theirs) <= 1e-9 * max(theirs, 1e-3)


# ----------------------------------------------------------------------------------------------
# Inversions: epsilon, sigma, max_noise_ratio
# ----------------------------------------------------------------------------------------------

@settings(max_examples=examples(40))
@given(log_delta=st.floats(-300, math.log10(0.5)), log_r=st.floats(-2, 2))
def test_epsilon_round_trip_is_safe_and_tight(log_delta, log_r):
    delta = 10.0 ** log_delta
    r = 10.0 ** log_r
    with mp.workdps(30), precision(30):
        assume(theta(0, r) > delta * 1.001)  # otherwise eps = 0 and there is nothing to invert
    eps = gaussian_epsilon(delta, r, 1.0)
    back = gaussian_delta(eps, r, 1.0)
    assert back <= delta
    assert back >= delta * (1 - 1e-12)
    # rounded up against a recomputation at twice the precision
    with precision(100):
        exact = gaussian_epsilon(delta, r, 1.0, as_mpf=True)
    with mp.workdps(120), precision(120):
        assert mpf(eps) >= exact
        assert mpf(math.nextafter(eps, 0.0)) < exact * (1 + mpf(10) ** -40)


@settings(max_examples=examples(25))
@given(eps=st.floats(0, 100), log_delta=st.floats(-300, math.log10(0.5)),
       sensitivity=st.floats(1e-3, 1e3))
# eps far below r*: the first guess sqrt(z^2 + 2 eps) - z cancelled to 0, and a Newton step made
# tiny by a slope of noise (ln theta and ln phi both ~ -1e139) was taken for convergence, so sigma
# came back 1e69 times too large (safe, but useless).
@example(eps=3.5260312273651704e-105, log_delta=-286.0, sensitivity=1.0)
@example(eps=3.5260312273651704e-105, log_delta=-287.0, sensitivity=1.0)
def test_sigma_calibrate_then_evaluate(eps, log_delta, sensitivity):
    delta = 10.0 ** log_delta
    sigma = gaussian_sigma(eps, delta, sensitivity)
    back = gaussian_delta(eps, sensitivity, sigma)
    assert back <= delta
    assert back >= delta * (1 - 1e-12)
    # rounded up against a recomputation at twice the precision
    with precision(100):
        exact = gaussian_sigma(eps, delta, sensitivity, as_mpf=True)
    with mp.workdps(120), precision(120):
        assert mpf(sigma) >= exact
        assert mpf(math.nextafter(sigma, 0.0)) < exact * (1 + mpf(10) ** -40)


def test_max_noise_ratio_is_rounded_down_and_defines_sigma():
    r = max_noise_ratio(1.0, 1e-5)
    with mp.workdps(80), precision(80):
        assert theta(1, mpf(r)) <= mpf(1e-5)
        assert theta(1, mpf(math.nextafter(r, math.inf)) * (1 + mpf(10) ** -15)) > mpf(1e-5)
    assert gaussian_sigma(1.0, 1e-5, 2.0) == pytest.approx(2 / r, rel=1e-15)


@pytest.mark.parametrize("eps,delta", [(0.0, 1e-5), (1e-12, 1e-100), (1e4, 1e-300), (10.0, 1e-320),
                                       (1.0, 0.999999), (100.0, 0.9)])
def test_sigma_at_extreme_inputs(eps, delta):
    sigma = gaussian_sigma(eps, delta, 1.0)
    assert math.isfinite(sigma) and sigma > 0
    assert gaussian_delta(eps, 1.0, sigma) <= delta


@pytest.mark.parametrize("eps", [1e5, 1e10, 1e15, 1e20])
def test_sigma_for_huge_eps_regression(eps):
    # m = eps/r - r/2 cancels by ~log10(eps/r) digits here; the ratio and m carry extra digits
    sigma = gaussian_sigma(eps, 1e-5, 1.0)
    back = gaussian_delta(eps, 1.0, sigma)
    assert back <= 1e-5 and back >= 1e-5 * (1 - 1e-4)
    assert gaussian_epsilon(1e-5, 1.0, sigma) == pytest.approx(eps, rel=1e-14)


def test_sigma_for_delta_beyond_the_float_range():
    tiny = mpf(10) ** -1000
    sigma = gaussian_sigma(1.0, tiny, 1.0, as_mpf=True)
    with mp.workdps(80), precision(80):
        assert log_theta(1, 1 / sigma) <= mp.log(tiny)
        # sqrt(2 L) is the leading behaviour of sigma for tiny delta
        assert 0.9 < sigma / mp.sqrt(2 * mp.log(1 / tiny)) < 1.1


def test_epsilon_is_zero_when_total_variation_is_below_delta():
    # theta_0(r) = 2 Phi(r/2) - 1 ~ r phi(0) for small r
    assert gaussian_epsilon(0.5, 0.1, 1.0) == 0.0
    assert gaussian_epsilon(1e-3, 0.1, 1.0) > 0.0


# ----------------------------------------------------------------------------------------------
# classical sigma, Renyi, contraction
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("eps,delta", [(0.1, 1e-5), (0.5, 1e-10), (0.99, 1e-3)])
def test_classical_sigma_known_answer_and_never_below_analytic(eps, delta):
    classical = classical_gaussian_sigma(eps, delta, 2.0)
    expected = 2.0 * math.sqrt(2 * math.log(1.25 / delta)) / eps
    assert classical == pytest.approx(expected, rel=1e-14)
    with mp.workdps(60), precision(60):
        assert mpf(classical) >= 2 * mp.sqrt(2 * mp.log(mpf(1.25) / mpf(delta))) / mpf(eps)
    assert classical >= gaussian_sigma(eps, delta, 2.0)


@pytest.mark.parametrize("eps", [0.0, 1.0, 10.0, -1.0])
def test_classical_sigma_refuses_eps_outside_zero_one(eps):
    with pytest.raises(InvalidParameterError, match="eps must be > 0 and < 1"):
        classical_gaussian_sigma(eps, 1e-5, 1.0)


def test_gaussian_renyi_is_exact_where_representable_and_rounded_up():
    assert gaussian_renyi(2, 1.0, 1.0) == 1.0
    assert gaussian_renyi(3.5, 2.0, 4.0) == 3.5 * 4 / 32
    value = gaussian_renyi(1.5, 1.0, 3.0)
    with mp.workdps(60), precision(60):
        assert mpf(value) >= mpf(1.5) / 18
        assert mpf(math.nextafter(value, 0)) < mpf(1.5) / 18
    with pytest.raises(InvalidParameterError, match="alpha"):
        gaussian_renyi(1.0, 1.0, 1.0)


def test_contraction_with_delta_one_is_the_gaussian_profile():
    for eps, radius, sigma in [(1.0, 1.0, 1.0), (0.5, 2.0, 3.0), (3.0, 0.1, 0.5)]:
        assert hockey_stick_contraction(eps, 1.0, radius, sigma) == pytest.approx(
            gaussian_delta(eps, 2 * radius, sigma), rel=1e-15)


def test_contraction_matches_direct_formula():
    for eps, delta_in, radius, sigma in [(1.0, 1e-3, 1.0, 1.0), (2.0, 0.3, 0.5, 2.0),
                                         (0.1, 1e-30, 1.0, 1.0)]:
        with mp.workdps(80), precision(80):
            e, d = mpf(eps), mpf(delta_in)
            eps_tilde = mp.log(1 + (mp.exp(e) - 1) / d)
            expected = d * mp.exp(quad_log_theta(eps_tilde, 2 * mpf(radius) / sigma, 80))
        got = hockey_stick_contraction(eps, delta_in, radius, sigma, as_mpf=True)
        assert relative_error(got, expected) < 1e-35
        assert hockey_stick_contraction(eps, delta_in, radius, sigma) >= float(expected)


def test_contraction_recursion_published_step_counts():
    # THEORY.md section 6: eps = 1, r = 2C2/sigma = 2, delta_0 = 1:
    # delta <= 1e-5 at T = 6; 1e-10 and 1e-20 at T = 7; 1e-100 at T = 8; 1e-1000 at T = 9
    log10_deltas = []
    delta = mpf(1)
    for _ in range(9):
        delta = hockey_stick_contraction(1.0, delta, 1.0, 1.0, as_mpf=True)
        with mp.workdps(30), precision(30):
            log10_deltas.append(float(mp.log10(delta)))
    assert log10_deltas[4] > -5 >= log10_deltas[5]
    assert log10_deltas[5] > -10 and log10_deltas[6] <= -20
    assert log10_deltas[6] > -100 >= log10_deltas[7]
    assert log10_deltas[7] > -1000 >= log10_deltas[8]
    # the float version never underflows to zero
    assert hockey_stick_contraction(1.0, 1e-300, 1.0, 1.0) == TINY


@settings(max_examples=examples(30))
@given(eps=st.floats(0, 20), d1=st.floats(1e-300, 1.0), d2=st.floats(1e-300, 1.0),
       radius=st.floats(1e-2, 10.0))
def test_contraction_nondecreasing_in_delta_in(eps, d1, d2, radius):
    lo, hi = min(d1, d2), max(d1, d2)
    assert hockey_stick_contraction(eps, lo, radius, 1.0) <= hockey_stick_contraction(
        eps, hi, radius, 1.0)


# ----------------------------------------------------------------------------------------------
# Input validation
# ----------------------------------------------------------------------------------------------

BAD_EPS = [-1.0, math.nan, math.inf, "1", True, None, 1j]
BAD_DELTA = [0.0, 1.0, -0.1, 1.5, math.nan, "1e-5", False]
BAD_SIGMA = [0.0, -1.0, math.nan, math.inf, "2", True]


@pytest.mark.parametrize("value", BAD_EPS, ids=repr)
def test_bad_eps_is_refused_with_its_name(value):
    for call in (lambda: gaussian_delta(value, 1.0, 1.0), lambda: gaussian_sigma(value, 1e-5, 1.0),
                 lambda: hockey_stick_contraction(value, 0.5, 1.0, 1.0)):
        with pytest.raises(ValueError, match="eps"):
            call()


@pytest.mark.parametrize("value", BAD_DELTA, ids=repr)
def test_bad_delta_is_refused_with_its_name(value):
    for call in (lambda: gaussian_epsilon(value, 1.0, 1.0), lambda: gaussian_sigma(1.0, value, 1.0),
                 lambda: max_noise_ratio(1.0, value)):
        with pytest.raises(ValueError, match="delta"):
            call()


@pytest.mark.parametrize("value", BAD_SIGMA, ids=repr)
def test_bad_sigma_is_refused_with_its_name(value):
    for call in (lambda: gaussian_delta(1.0, 1.0, value), lambda: gaussian_epsilon(1e-5, 1.0, value),
                 lambda: hockey_stick_contraction(1.0, 0.5, 1.0, value)):
        with pytest.raises(ValueError, match="sigma"):
            call()


def test_other_bad_inputs():
    with pytest.raises(ValueError, match="sensitivity must be >= 0, got -1"):
        gaussian_delta(1.0, -1.0, 1.0)
    with pytest.raises(ValueError, match="sensitivity must be > 0"):
        gaussian_sigma(1.0, 1e-5, 0.0)
    with pytest.raises(ValueError, match="delta_in must be > 0 and <= 1"):
        hockey_stick_contraction(1.0, 1.5, 1.0, 1.0)
    with pytest.raises(ValueError, match="radius"):
        hockey_stick_contraction(1.0, 0.5, -1.0, 1.0)
    assert hockey_stick_contraction(1.0, 0.5, 0.0, 1.0) == 0.0
