"""The paper's closed forms against the exact accountant (certunlearn_theory.closed_forms).

Expected facts (THEORY.md section 5): the closed forms are sometimes looser than the exact bound
and sometimes unsound; the library never hands out their numbers as guarantees.
"""
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from certunlearn_theory import (
    InvalidParameterError,
    RenyiCurve,
    epsilon_for,
    linear_rho_max,
    noise_for,
    renyi_to_dp,
)
from certunlearn_theory.closed_forms import (
    paper_model_clipping_steps,
    paper_rho,
    paper_sigma_regularized,
    paper_sigma_unregularized,
    tv_model_clipping_steps,
)

from ..hypothesis_budget import examples


def test_formulas_by_hand():
    L = math.log(1e5)
    assert paper_rho(1.0, 1e-5) == pytest.approx(1 / (9 * L), rel=1e-15)
    assert paper_sigma_unregularized(1.0, 1e-5, 100, 1.0, 1.0, 0.01) == pytest.approx(
        math.sqrt(9 * L * 4 / 100), rel=1e-14)
    q = 1 - 0.01 * 0.1
    assert paper_sigma_regularized(1.0, 1e-5, 1000, 1.0, 1.0, 0.01, 0.1) == pytest.approx(
        math.sqrt(72 * 0.001 * L * (q ** 1000 + 10) ** 2), rel=1e-12)


def test_paper_rho_is_valid_but_loose():
    # rho = eps^2/(9L) converts (Mironov, alpha = 1 + 3L/eps) to at most eps ...
    for eps in (0.1, 1.0, 5.0, 30.0):
        assert renyi_to_dp(RenyiCurve.linear(paper_rho(eps, 1e-5)), 1e-5, conversion="mironov") <= eps
    # ... but the improved conversion allows 3.17x more: sigma 1.78x larger than needed
    assert linear_rho_max(1.0, 1e-5) / paper_rho(1.0, 1e-5) == pytest.approx(3.1665, rel=1e-3)


def test_unregularized_closed_form_is_unsound_at_eps_8():
    # sigma^2 = 9 L (C0 + C1 gamma T)^2/(eps^2 T) corresponds to rho = 2 eps^2/(9L); at eps = 8,
    # delta = 1e-5 the exact accountant certifies only 8.02 (T <= C0/(gamma C1): best horizon T)
    s = paper_sigma_unregularized(8.0, 1e-5, 10, 1.0, 1.0, 0.01)
    assert epsilon_for(s, 1e-5, 10, 1.0, 1.0, 0.01) == pytest.approx(8.0217, abs=1e-3)
    assert noise_for(8.0, 1e-5, 10, 1.0, 1.0, 0.01) > s


def test_unregularized_closed_form_sound_for_small_eps_and_ours_is_smaller():
    # at eps = 1 it is sound and our sigma is smaller by sqrt(rho_max / (2 eps^2/(9L)))
    for T in (10, 100, 1000):
        paper = paper_sigma_unregularized(1.0, 1e-5, T, 1.0, 1.0, 0.01)
        assert epsilon_for(paper, 1e-5, T, 1.0, 1.0, 0.01) <= 1.0
        ours = noise_for(1.0, 1e-5, T, 1.0, 1.0, 0.01)
        assert ours < paper
    # T <= C0/(gamma C1): same horizon, ratio is exactly sqrt(2 rho_paper / rho_max)
    ratio = noise_for(1.0, 1e-5, 50, 1.0, 1.0, 0.01) / paper_sigma_unregularized(
        1.0, 1e-5, 50, 1.0, 1.0, 0.01)
    assert ratio == pytest.approx(math.sqrt(2 * paper_rho(1.0, 1e-5) / linear_rho_max(1.0, 1e-5)),
                                  rel=1e-9)


def test_regularized_closed_form_unsound_for_short_runs():
    # q^(2T) > 1/2: T = 5 with gamma*lam = 0.01 certifies only eps = 1.18 for a target of 1
    args = (5, 10.0, 1.0, 0.01, 1.0)
    s = paper_sigma_regularized(1.0, 1e-5, *args)
    got = epsilon_for(s, 1e-5, *args)
    assert got == pytest.approx(1.1821, abs=1e-3)
    assert noise_for(1.0, 1e-5, *args) > s
    # with a large C0 and tiny gamma*lam it is far worse (target 1, certified ~193)
    args = (5, 100.0, 0.1, 0.001, 0.001)
    assert epsilon_for(paper_sigma_regularized(1.0, 1e-5, *args), 1e-5, *args) > 150


def test_regularized_closed_form_sound_when_long_and_ours_is_smaller():
    for T in (1000, 10000):
        args = (T, 1.0, 1.0, 0.01, 0.1)  # q^(2T) = 0.999^(2T) <= 1/2
        assert (1 - 0.001) ** (2 * T) <= 0.5
        paper = paper_sigma_regularized(1.0, 1e-5, *args)
        assert epsilon_for(paper, 1e-5, *args) <= 1.0
        assert noise_for(1.0, 1e-5, *args) < paper


def test_model_clipping_closed_forms_never_beat_the_exact_recursion():
    from certunlearn_theory import steps_for
    for sigma in (0.5, 1.0, 2.0):
        exact = steps_for(sigma, 1.0, 1e-5, 1.0, None, None, method="model_clipping", C2=1.0)
        assert exact <= paper_model_clipping_steps(1.0, 1e-5, 1.0, sigma) <= \
            tv_model_clipping_steps(1e-5, 1.0, sigma)


def test_conditions_refused():
    with pytest.raises(InvalidParameterError, match="eps <= 3 ln"):
        paper_sigma_unregularized(40.0, 1e-5, 10, 1.0, 1.0, 0.1)
    with pytest.raises(InvalidParameterError, match="lam must be > 0"):
        paper_sigma_regularized(1.0, 1e-5, 10, 1.0, 1.0, 0.1, 0.0)



@settings(max_examples=examples(25))
@given(eps=st.floats(0.1, 10), T=st.integers(1, 10**5), C0=st.floats(0.1, 10),
       C1=st.floats(0.1, 10), gamma=st.floats(1e-4, 0.1), lam=st.floats(0.0, 1.0))
def test_ours_never_above_a_sound_closed_form(eps, T, C0, C1, gamma, lam):
    if lam > 0 and gamma * lam <= 1:
        paper = paper_sigma_regularized(eps, 1e-5, T, C0, C1, gamma, lam)
    else:
        lam = 0.0
        paper = paper_sigma_unregularized(eps, 1e-5, T, C0, C1, gamma)
    ours = noise_for(eps, 1e-5, T, C0, C1, gamma, lam)
    if epsilon_for(paper, 1e-5, T, C0, C1, gamma, lam) <= eps:  # the closed form is sound here
        assert ours <= paper
    else:  # unsound: it asks for less noise than the guarantee needs
        assert ours > paper
