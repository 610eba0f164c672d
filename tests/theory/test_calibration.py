"""Tests of noise_for / epsilon_for / delta_for / steps_for (certunlearn_theory.calibration).

Round trips must be safe (never past the target) and tight (relative 1e-9); monotonicity and
limits are hypothesis properties; the output-perturbation level is checked against scipy.
"""
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import norm

from certunlearn_theory import (
    InvalidParameterError,
    UnreachableTargetError,
    delta_for,
    epsilon_for,
    noise_for,
    output_perturbation_classical_sigma,
    steps_for,
)

from ..hypothesis_budget import examples

GC = dict(C0=1.0, C1=1.0, gamma=0.01)


@pytest.mark.parametrize("eps", [0.1, 1.0, 8.0])
@pytest.mark.parametrize("delta", [1e-5, 1e-12])
@pytest.mark.parametrize("T,lam", [(1, 0.0), (10, 0.0), (1000, 0.0), (10**6, 0.0), (50, 0.05),
                                   (10**5, 0.05)])
def test_gradient_clipping_round_trip(eps, delta, T, lam):
    s = noise_for(eps, delta, T, lam=lam, **GC)
    back = epsilon_for(s, delta, T, lam=lam, **GC)
    assert back <= eps
    assert back == pytest.approx(eps, rel=1e-9)
    assert delta_for(s, eps, T, lam=lam, **GC) <= delta
    assert epsilon_for(s * (1 - 1e-8), delta, T, lam=lam, **GC) > eps


@pytest.mark.parametrize("eps,delta,T", [(1.0, 1e-5, 1), (1.0, 1e-5, 10), (0.5, 1e-10, 30),
                                         (4.0, 1e-6, 100)])
def test_model_clipping_round_trip(eps, delta, T):
    kw = dict(method="model_clipping", C2=1.0)
    s = noise_for(eps, delta, T, 1.0, None, None, **kw)
    back = epsilon_for(s, delta, T, 1.0, None, None, **kw)
    assert back <= eps and back == pytest.approx(eps, rel=1e-9)
    assert delta_for(s, eps, T, 1.0, None, None, **kw) <= delta
    assert steps_for(s, eps, delta, 1.0, None, None, **kw) <= T


@pytest.mark.parametrize("eps,delta", [(0.5, 1e-5), (1.0, 1e-5), (10.0, 1e-5), (20.0, 1e-100)])
def test_output_perturbation_level(eps, delta):
    C0 = 3.0
    s = noise_for(eps, delta, None, C0, None, None, method="output_perturbation")
    back = epsilon_for(s, delta, None, C0, None, None, method="output_perturbation")
    assert back <= eps and back == pytest.approx(eps, rel=1e-9)
    # scipy in float64 (accurate here): theta_eps(2 C0/sigma) at the returned sigma is <= delta
    r = 2 * C0 / s
    if delta > 1e-15:
        theta = norm.cdf(r / 2 - eps / r) - math.exp(eps) * norm.cdf(-eps / r - r / 2)
        assert theta == pytest.approx(delta, rel=1e-6)
    if eps < 1:  # the classical calibration is valid and never smaller
        assert output_perturbation_classical_sigma(eps, delta, C0) >= s
    assert steps_for(s, eps, delta, C0, None, None, method="output_perturbation") == 0
    with pytest.raises(UnreachableTargetError):
        steps_for(s * 0.9, eps, delta, C0, None, None, method="output_perturbation")


def test_classical_formula_fails_at_eps_10():
    # THEORY.md section 3: sigma = Delta sqrt(2 ln(1.25/delta))/eps at eps = 10 has delta 2.27e-5
    s = 2.0 * math.sqrt(2 * math.log(1.25 / 1e-5)) / 10
    assert delta_for(s, 10.0, None, 1.0, None, None, method="output_perturbation") == \
        pytest.approx(2.27e-5, rel=1e-2)
    assert noise_for(10.0, 1e-5, None, 1.0, None, None, method="output_perturbation") > s


def test_iteration_beats_output_perturbation():
    op = noise_for(1.0, 1e-5, None, 1.0, None, None, method="output_perturbation")
    assert noise_for(1.0, 1e-5, 100, **GC) < op
    assert noise_for(1.0, 1e-5, 10, 1.0, None, None, method="model_clipping", C2=1.0) < op


@settings(max_examples=examples(20))
@given(eps=st.floats(0.05, 20), T=st.integers(1, 10**6), C0=st.floats(0.1, 10),
       C1=st.floats(0.1, 10), gamma=st.floats(1e-4, 0.1), f=st.floats(1.01, 4))
def test_sigma_monotone(eps, T, C0, C1, gamma, f):
    base = noise_for(eps, 1e-6, T, C0, C1, gamma)
    assert noise_for(eps, 1e-6, T, C0 * f, C1, gamma) >= base
    assert noise_for(eps, 1e-6, T, C0, C1 * f, gamma) >= base
    assert noise_for(eps / f, 1e-6, T, C0, C1, gamma) >= base
    assert noise_for(eps, 1e-6 / f, T, C0, C1, gamma) >= base


@settings(max_examples=examples(15))
@given(sigma=st.floats(0.05, 50), T=st.integers(1, 10**6), extra=st.integers(1, 10**6),
       lam=st.sampled_from([0.0, 1e-3, 0.5]))
def test_more_steps_never_weaken(sigma, T, extra, lam):
    assert epsilon_for(sigma, 1e-5, T + extra, lam=lam, **GC) <= epsilon_for(sigma, 1e-5, T, lam=lam, **GC)


@settings(max_examples=examples(10))
@given(T=st.integers(1, 10**6), eps=st.floats(0.1, 10))
def test_lam_to_zero_continuity(T, eps):
    s0 = noise_for(eps, 1e-5, T, **GC)
    s = noise_for(eps, 1e-5, T, lam=1e-12, **GC)
    assert s == pytest.approx(s0, rel=1e-6)
    assert s <= s0 * (1 + 1e-12)


def test_regularized_c0_dependence_vanishes():
    # the C0 term decays like (1 - gamma lam)^T: for long runs C0 hardly matters
    # (C0 lam >= C1 for both, so the best horizon is T in both cases)
    kw = dict(C1=1.0, gamma=0.01, lam=0.5)
    short = [noise_for(1.0, 1e-5, 10, C0, **kw) for C0 in (10.0, 1000.0)]
    long = [noise_for(1.0, 1e-5, 20000, C0, **kw) for C0 in (10.0, 1000.0)]
    assert short[1] / short[0] > 10
    assert long[1] / long[0] == pytest.approx(1.0, rel=1e-6)


def test_steps_for_round_trip_and_floor():
    s = noise_for(1.0, 1e-5, 80, **GC)
    T = steps_for(s, 1.0, 1e-5, **GC)
    assert T == 80
    assert epsilon_for(s, 1e-5, T, **GC) <= 1.0 < epsilon_for(s, 1e-5, T - 1, **GC)
    # lam = 0: the best horizon is C0/(gamma C1) = 100; below that sigma no T reaches eps = 1
    s_floor = noise_for(1.0, 1e-5, 100, **GC)
    with pytest.raises(UnreachableTargetError, match="floor over all T is eps=") as info:
        steps_for(s_floor * 0.99, 1.0, 1e-5, **GC)
    assert info.value.best == pytest.approx(epsilon_for(s_floor * 0.99, 1e-5, 100, **GC), rel=1e-6)
    assert info.value.best > 1.0


def test_schedules():
    # a decreasing learning rate: valid, and a per-step sigma sequence evaluates
    gammas = [0.02 * 0.99 ** t for t in range(200)]
    s = noise_for(1.0, 1e-5, 200, 1.0, 1.0, gammas)
    assert epsilon_for(s, 1e-5, 200, 1.0, 1.0, gammas) <= 1.0
    sig = [s] * 200
    assert epsilon_for(sig, 1e-5, 200, 1.0, 1.0, gammas) == epsilon_for(s, 1e-5, 200, 1.0, 1.0, gammas)


def test_mironov_conversion_needs_more_noise():
    assert noise_for(1.0, 1e-5, 100, conversion="mironov", **GC) > noise_for(1.0, 1e-5, 100, **GC)


def test_initial_noise_helps_and_can_suffice():
    s = noise_for(1.0, 1e-5, 50, sigma0=1.0, **GC)
    assert s < noise_for(1.0, 1e-5, 50, **GC)
    assert epsilon_for(s, 1e-5, 50, sigma0=1.0, **GC) <= 1.0
    assert noise_for(1.0, 1e-5, 50, sigma0=100.0, **GC) == 0.0


@pytest.mark.parametrize("call,match", [
    (lambda: noise_for(1.0, 1e-5, 10, 1.0, 1.0, 0.1, method="sgd"), "method must be one of"),
    (lambda: noise_for(0.0, 1e-5, 10, 1.0, 1.0, 0.1), "eps must be > 0"),
    (lambda: noise_for(1.0, 0.0, 10, 1.0, 1.0, 0.1), "delta must be"),
    (lambda: noise_for(1.0, 1e-5, 10, 1.0, None, 0.1), "C1 .* is required"),
    (lambda: noise_for(1.0, 1e-5, 10, 1.0, None, None, method="model_clipping"), "C2 .* required"),
    (lambda: epsilon_for(-1.0, 1e-5, 10, 1.0, 1.0, 0.1), "sigma must be >= 0"),
    (lambda: steps_for(1.0, 1.0, 1e-5, 1.0, 1.0, [0.1, 0.2]), "gamma must be a scalar"),
    (lambda: noise_for(1.0, 1e-5, 10, -1.0, None, None, method="output_perturbation"),
     "C0 must be > 0"),
])
def test_bad_input(call, match):
    with pytest.raises(InvalidParameterError, match=match):
        call()


@pytest.mark.parametrize("name", ["amplification", "model_clipping", "dpsgd", "closed_forms",
                                  "calibration", "certificate"])
def test_docstring_examples(name):
    import doctest
    import importlib
    module = importlib.import_module(f"certunlearn_theory.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
