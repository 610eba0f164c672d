"""The extra per-step shift ``shift_slack`` (float rounding of each step, THEORY.md section 8).

Gradient clipping: s_t = 2 gamma C1 + slack and Z_0 = 2 C0 + slack; model clipping: the
diameters 2 C0 + slack and 2 C2 + slack; output perturbation: the sensitivity 2 C0 + slack.
"""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mpmath import mp, mpf

import certunlearn_theory as ct

from ..hypothesis_budget import examples

GC = dict(T=40, C0=0.01, C1=0.004, gamma=0.05)


def test_known_answer_gradient_clipping():
    # lam = 0, T below the best horizon a/s: tau = T, Z = a + T s, S = T sigma^2 with
    # a = 2 C0 + slack and s = 2 gamma C1 + slack
    sigma, T, C0, C1, gamma, slack = 0.5, 20, 1.0, 1.0, 0.01, 0.003
    b = ct.pabi_bound(sigma, T, C0, C1, gamma, shift_slack=slack, as_mpf=True)
    with mp.workdps(60):
        a = 2 * mpf(C0) + mpf(slack)
        s = 2 * mpf(gamma) * mpf(C1) + mpf(slack)
        Z = a + T * s
        rho = Z * Z / (2 * T * mpf(sigma) ** 2)
        assert b.horizon == T
        assert b.Z >= Z and b.Z - Z <= mpf(10) ** -35 * Z
        assert b.rho >= rho and b.rho - rho <= mpf(10) ** -35 * rho
    path = ct.shift_path(sigma, T, C0, C1, gamma, shift_slack=slack)
    assert path["z"][0] == pytest.approx(2 * C0 + slack, rel=1e-15)
    assert path["z"][-1] == pytest.approx(0.0, abs=1e-12)


def test_known_answer_model_clipping_and_output_perturbation():
    slack = 0.25
    kw = dict(method="model_clipping", sigma0=0.7)
    with_slack = ct.delta_for(0.9, 1.0, 6, 1.0, None, None, C2=1.0, shift_slack=slack, **kw)
    widened = ct.delta_for(0.9, 1.0, 6, 1.0 + slack / 2, None, None, C2=1.0 + slack / 2, **kw)
    assert with_slack == widened
    op = dict(method="output_perturbation")
    assert ct.delta_for(3.0, 1.0, None, 1.0, None, None, shift_slack=slack, **op) \
        == ct.gaussian_delta(1.0, 2.0 + slack, 3.0)


def test_zero_slack_changes_nothing_and_negative_is_refused():
    assert ct.epsilon_for(0.03, 1e-5, **GC, shift_slack=0.0) == ct.epsilon_for(0.03, 1e-5, **GC)
    with pytest.raises(ct.InvalidParameterError, match="shift_slack must be >= 0"):
        ct.epsilon_for(0.03, 1e-5, **GC, shift_slack=-1e-6)


def test_demo_float32_slack():
    # THEORY.md section 8: d = 4810, T = 50, C0 = 0.01, C1 = 0.004, lr = 0.05: iterate norm
    # <= 11.25, slack 6 * 2^-24 * 11.25 = 4.02e-6 per step: eps 1 -> 1.0056
    sigma = ct.noise_for(1.0, 1e-5, 50, 0.01, 0.004, 0.05)
    assert sigma == pytest.approx(0.022883, abs=1e-6)
    slack = 6 * 2.0 ** -24 * (0.01 + 50 * 0.05 * 0.004 + sigma * (4810 * 50) ** 0.5)
    assert slack == pytest.approx(4.02e-6, rel=1e-3)
    eps = ct.epsilon_for(sigma, 1e-5, 50, 0.01, 0.004, 0.05, shift_slack=slack)
    assert eps == pytest.approx(1.00558, abs=1e-5)
    cert = ct.issue_certificate(sigma, 1e-5, 50, 0.01, 0.004, 0.05, shift_slack=slack)
    assert cert.parameters["shift_slack"] == slack and cert.eps == eps
    cert.verify()
    assert "shift_slack" not in ct.issue_certificate(sigma, 1e-5, 50, 0.01, 0.004, 0.05).parameters


@settings(max_examples=examples(10))
@given(small=st.floats(0, 1e-3), factor=st.floats(1.0, 100.0),
       method=st.sampled_from(["gradient_clipping", "model_clipping", "output_perturbation"]))
def test_more_slack_never_helps(small, factor, method):
    large = small * factor + 1e-7
    if method == "gradient_clipping":
        args, sigma, kw = (GC["T"], GC["C0"], GC["C1"], GC["gamma"]), 0.03, {}
    elif method == "model_clipping":
        args, sigma, kw = (6, 0.01, None, None), 0.02, dict(method=method, C2=0.01)
    else:
        args, sigma, kw = (None, 0.01, None, None), 0.1, dict(method=method)
    eps = [ct.epsilon_for(sigma, 1e-5, *args, shift_slack=x, **kw) for x in (small, large)]
    delta = [ct.delta_for(sigma, 1.0, *args, shift_slack=x, **kw) for x in (small, large)]
    noise = [ct.noise_for(1.0, 1e-5, *args, shift_slack=x, **kw) for x in (small, large)]
    assert eps[0] <= eps[1] and delta[0] <= delta[1] and noise[0] <= noise[1]
