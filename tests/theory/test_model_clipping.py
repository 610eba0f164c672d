"""Tests of the model-clipping recursion (certunlearn_theory.model_clipping).

Oracles: THEORY.md section 6's worked example (eps = 1, r = 2, delta_0 = 1), an independent
recursion written here with the plain closed form of theta at 3x precision, the fixed-gamma and
total-variation bounds (which must never be tighter), and scipy in float64 where it is accurate.
"""
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mpmath import mp, mpf

import certunlearn_theory as ct
from certunlearn_theory import InvalidParameterError, UnreachableTargetError
from certunlearn_theory.closed_forms import paper_model_clipping_steps, tv_model_clipping_steps
from certunlearn_theory.model_clipping import (
    model_clipping_bound,
    model_clipping_delta,
    model_clipping_epsilon,
    model_clipping_sigma,
    model_clipping_steps,
)

from ..hypothesis_budget import examples


def plain_theta(eps, r):
    """theta by the textbook difference of normal CDFs (needs many digits; test-only)."""
    return mp.ncdf(r / 2 - eps / r) - mp.exp(eps) * mp.ncdf(-eps / r - r / 2)


def oracle_log_deltas(eps, r, T, log_delta0=0):
    """The recursion delta_{t+1} = delta_t theta_{eps~}(r) with plain arithmetic at 400 digits."""
    with mp.workdps(400):
        eps, r = mpf(eps), mpf(r)
        d = mp.exp(mpf(log_delta0))
        out = [mp.log(d)]
        for _ in range(T):
            et = mp.log(1 + (mp.exp(eps) - 1) / d)
            d = d * plain_theta(et, r)
            out.append(mp.log(d))
        return [float(x) for x in out]


def test_theory_worked_example():
    # eps = 1, r = 2 (C2 = sigma = 1), delta_0 = 1 (no initial noise)
    assert model_clipping_steps(1.0, 1.0, 1e-5, C0=1.0, C2=1.0) == 6
    assert model_clipping_steps(1.0, 1.0, 1e-10, C0=1.0, C2=1.0) == 7
    assert model_clipping_steps(1.0, 1.0, 1e-20, C0=1.0, C2=1.0) == 7
    assert model_clipping_steps(1.0, 1.0, 1e-100, C0=1.0, C2=1.0) == 8
    b = model_clipping_bound(1.0, 1.0, 9, C0=1.0, C2=1.0)
    assert b.log_deltas[-1] / math.log(10) < -1000
    assert b.log_deltas[8] / math.log(10) > -1000
    # the weaker closed forms
    assert paper_model_clipping_steps(1.0, 1e-5, 1.0, 1.0) == 18
    assert tv_model_clipping_steps(1e-5, 1.0, 1.0) == 31


@pytest.mark.parametrize("eps,r,T", [(1.0, 2.0, 8), (0.5, 1.0, 10), (2.0, 4.0, 25), (1.0, 0.7, 5)])
def test_trajectory_matches_plain_recursion_at_400_digits(eps, r, T):
    b = model_clipping_bound(2.0 / r, eps, T, C0=1.0, C2=1.0)  # sigma = 2 C2 / r
    expected = oracle_log_deltas(eps, r, T)
    # the trajectory stops once delta is below the float range (later values only decrease)
    assert len(b.log_deltas) == len(expected) or b.log_deltas[-1] < math.log(5e-324)
    for got, want in zip(b.log_deltas, expected):
        assert got >= want - 1e-12 * abs(want)
        assert got == pytest.approx(want, rel=1e-12, abs=1e-300)


def test_initial_noise_sets_delta0():
    # delta_0 = theta_eps(2 C0/sigma0): with sigma0 = 2 C0, r0 = 1
    b = model_clipping_bound(1.0, 1.0, 4, C0=1.0, C2=1.0, sigma0=2.0)
    with mp.workdps(50):
        d0 = float(mp.log(plain_theta(mpf(1), mpf(1))))
    assert b.log_deltas[0] == pytest.approx(d0, rel=1e-12)
    expected = oracle_log_deltas(1.0, 2.0, 4, log_delta0=d0)
    assert b.log_deltas[-1] == pytest.approx(expected[-1], rel=1e-10)
    assert b.delta < model_clipping_delta(1.0, 1.0, 4, C0=1.0, C2=1.0)


def test_noise_before_projection_first_step_is_not_a_contraction():
    # the first step is a Gaussian mechanism from the C0-ball: delta_1 = theta_eps(2(C0 + gamma C1)/sigma)
    C0, C2, C1, g, sig, eps = 3.0, 1.0, 1.0, 0.1, 1.0, 1.0
    b = model_clipping_bound(sig, eps, 3, C0=C0, C2=C2, C1=C1, gamma=g, noise_after_projection=False)
    with mp.workdps(60):
        first = float(mp.log(plain_theta(mpf(eps), mpf(2 * (C0 + g * C1) / sig))))
    assert b.log_deltas[1] == pytest.approx(first, rel=1e-12)
    # later steps contract with r = 2 (C2 + gamma C1)/sigma
    expected = oracle_log_deltas(eps, 2 * (C2 + g * C1) / sig, 2, log_delta0=first)
    assert b.log_deltas[3] == pytest.approx(expected[2], rel=1e-10)
    # weaker than noise after projection (same C2, sigma)
    assert b.delta >= model_clipping_delta(sig, eps, 3, C0=C0, C2=C2)


@settings(max_examples=examples(12))
@given(eps=st.floats(0.1, 5), r=st.floats(0.5, 6), T=st.integers(1, 60))
def test_delta_decreases_at_least_geometrically(eps, r, T):
    # exact recursion <= fixed-gamma bound theta_eps(r)^T <= TV bound theta_0(r)^T, and each
    # step at least multiplies by theta_eps(r)
    b = model_clipping_bound(2.0 / r, eps, T, C0=1.0, C2=1.0)
    with mp.workdps(50):
        step = float(ct.log_theta(eps, r))
        tv = float(ct.log_theta(0, r))
    logs = b.log_deltas
    for a, c in zip(logs, logs[1:]):
        assert c <= a + step * (1 - 1e-12) + 1e-300
    assert logs[-1] <= T * step * (1 - 1e-12) + 1e-12
    assert T * step <= T * tv * (1 - 1e-12) + 1e-12


@settings(max_examples=examples(8))
@given(eps=st.floats(0.2, 4), delta=st.sampled_from([1e-3, 1e-5, 1e-10, 1e-30]),
       T=st.integers(2, 40), s0=st.sampled_from([0.0, 1.5, 5.0]))
def test_sigma_round_trip(eps, delta, T, s0):
    sig = model_clipping_sigma(eps, delta, T, C0=1.0, C2=1.0, sigma0=s0)
    if sig == 0.0:  # the initial noise alone suffices
        assert ct.gaussian_delta(eps, 2.0, s0) <= delta
        return
    assert model_clipping_delta(sig, eps, T, C0=1.0, C2=1.0, sigma0=s0) <= delta
    back = model_clipping_epsilon(sig, delta, T, C0=1.0, C2=1.0, sigma0=s0)
    assert back <= eps
    assert back == pytest.approx(eps, rel=1e-9)
    assert model_clipping_delta(sig * (1 - 1e-9), eps, T, C0=1.0, C2=1.0, sigma0=s0) > delta


def test_steps_round_trip_and_monotone():
    for sig in (0.4, 1.0, 3.0):
        T = model_clipping_steps(sig, 1.0, 1e-6, C0=1.0, C2=1.0)
        assert model_clipping_delta(sig, 1.0, T, C0=1.0, C2=1.0) <= 1e-6
        assert T == 1 or model_clipping_delta(sig, 1.0, T - 1, C0=1.0, C2=1.0) > 1e-6
    with pytest.raises(UnreachableTargetError, match="raise sigma") as info:
        model_clipping_steps(0.02, 1.0, 1e-6, C0=1.0, C2=1.0, max_steps=50)
    assert 1e-6 < info.value.best <= 1.0


def test_deep_tail_does_not_overflow():
    # delta_T far below 10^(-10^7): the float is the smallest subnormal, never 0 or NaN
    assert model_clipping_delta(1.0, 1.0, 40, C0=1.0, C2=1.0) == 5e-324
    assert model_clipping_delta(1.0, 50.0, 3, C0=1.0, C2=1.0) > 0


def test_safe_rounding_against_higher_precision():
    lo = model_clipping_bound(0.8, 1.0, 7, C0=1.0, C2=1.0).log_deltas[-1]
    with ct.precision(120):
        hi = model_clipping_bound(0.8, 1.0, 7, C0=1.0, C2=1.0).log_deltas[-1]
    assert lo >= hi - 1e-300
    assert lo == pytest.approx(hi, rel=1e-14)


@pytest.mark.parametrize("kwargs,match", [
    (dict(C2=None), "C2 .* is required"),
    (dict(C2=0.0), "C2 must be > 0"),
    (dict(sigma=0.0), "sigma must be > 0 when sigma0 = 0"),
    (dict(T=0), "T must be >= 1"),
    (dict(eps=-1.0), "eps must be >= 0"),
    (dict(noise_after_projection=False), "C1 .* is required"),
    (dict(noise_after_projection=False, C1=1.0), "gamma is required"),
])
def test_bad_input(kwargs, match):
    args = dict(sigma=1.0, eps=1.0, T=3, C0=1.0, C2=1.0)
    args.update(kwargs)
    with pytest.raises(InvalidParameterError, match=match):
        model_clipping_delta(**args)


@pytest.mark.parametrize("eps,C2,sigma,T", [(1.0, 1.0, 1.0, 6), (0.5, 2.0, 1.5, 8), (3.0, 1.0, 2.5, 12)])
def test_matches_iterated_hockey_stick_contraction(eps, C2, sigma, T):
    # the primitive applies one step (rounded up); iterating it is a looser but valid bound
    d = 1.0
    for _ in range(T):
        d = ct.hockey_stick_contraction(eps, d, C2, sigma)
        if d <= 5e-324:
            break
    ours = model_clipping_delta(sigma, eps, T, C0=1.0, C2=C2)
    assert ours <= d * (1 + 1e-12)
    if d > 1e-300:
        assert ours == pytest.approx(d, rel=1e-9)
