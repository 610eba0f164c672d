"""The paper's closed-form noise levels and step counts, for comparison only.

These are the simple formulas of Koloskova et al. 2025 (as quoted in THEORY.md section 5 and 6).
They are **not** guarantees issued by this library: :func:`certunlearn_theory.noise_for` and
friends compute the exact bounds. Where a closed form asks for less noise than the exact
accountant proves necessary, it is unsound, and the test-suite shows it:

* :func:`paper_sigma_regularized` assumes ``q^(2T) <= 1/2`` (q = 1 - gamma lam) without saying so;
  for short runs it is too small (T = 5: a target eps = 1 is only certified at about 1.18).
* :func:`paper_sigma_unregularized` is half the variance the same derivation gives in the
  lam -> 0 limit. It certifies rho = 2 eps^2 / (9 L), which converts back to eps only for
  eps up to about 0.69 L at delta = 1e-5 (improved conversion), not for all eps <= 3 L: at
  eps = 8, delta = 1e-5 it certifies 8.02.

Functions return plain floats computed in mpmath at the working precision, rounded to nearest
(they are reference values, not bounds). ``L = ln(1/delta)`` throughout.
"""
from __future__ import annotations

from mpmath import mp, mpf

from ._numerics import (
    check_delta,
    check_epsilon,
    check_int,
    check_nonnegative,
    check_positive,
    entry_point,
    working_digits,
)
from .divergences import raw_log_theta
from .errors import InvalidParameterError

__all__ = ["paper_rho", "paper_sigma_unregularized", "paper_sigma_regularized",
           "paper_model_clipping_steps", "tv_model_clipping_steps"]


def _eps_delta(eps, delta):
    eps = check_epsilon(eps)
    if eps == 0:
        raise InvalidParameterError("eps must be > 0, got 0")
    delta = check_delta(delta)
    L = -mp.log(delta)
    if eps > 3 * L:
        raise InvalidParameterError(
            f"the paper's closed forms need eps <= 3 ln(1/delta) = {mp.nstr(3 * L, 8)}, "
            f"got eps={mp.nstr(eps, 8)}")
    return eps, delta, L


@entry_point
def paper_rho(eps, delta) -> float:
    """The paper's Renyi budget rho = eps^2 / (9 L) (Mironov's conversion at alpha = 1 + 3L/eps).

    Valid (it converts to at most eps) for eps <= 3 L, but loose: at (1, 1e-5) it is 0.00965 where
    the improved conversion allows 0.03056 (:func:`certunlearn_theory.linear_rho_max`).

    >>> round(paper_rho(1.0, 1e-5), 5)
    0.00965
    """
    with mp.workdps(working_digits()):
        eps, delta, L = _eps_delta(eps, delta)
        return float(eps ** 2 / (9 * L))


@entry_point
def paper_sigma_unregularized(eps, delta, T, C0, C1, gamma) -> float:
    """The paper's noise for gradient clipping without regularisation (comparison only).

    ``sigma^2 = 9 L (C0 + C1 gamma T)^2 / (eps^2 T)``, stated for eps <= 3 L (Koloskova et al.
    2025, gradient-clipping theorem, lam = 0). It is half the lam -> 0 limit of the regularised
    derivation and corresponds to rho = 2 eps^2/(9 L), which is not certified for large eps
    (eps = 8, delta = 1e-5 gives 8.02).

    >>> round(paper_sigma_unregularized(1.0, 1e-5, 100, 1.0, 1.0, 0.01), 6)
    2.035842
    """
    with mp.workdps(working_digits()):
        eps, delta, L = _eps_delta(eps, delta)
        T = check_int("T", T, low=1)
        C0, C1, gamma = (check_positive(n, v) for n, v in (("C0", C0), ("C1", C1),
                                                            ("gamma", gamma)))
        return float(mp.sqrt(9 * L * (C0 + C1 * gamma * T) ** 2 / (eps ** 2 * T)))


@entry_point
def paper_sigma_regularized(eps, delta, T, C0, C1, gamma, lam) -> float:
    """The paper's noise for gradient clipping with L2 regularisation lam > 0 (comparison only).

    ``sigma^2 = 72 gamma lam L (C0 q^T + C1/lam)^2 / eps^2``, q = 1 - gamma lam, eps <= 3 L
    (Koloskova et al. 2025). It follows from the exact bound with rho = eps^2/(9L),
    Z <= 2 (C0 q^T + C1/lam), 1 - q^2 <= 2 gamma lam and 1 - q^(2T) >= 1/2; the last step needs
    q^(2T) <= 1/2, which the formula does not check: for short runs it asks for too little noise.

    >>> round(paper_sigma_regularized(1.0, 1e-5, 1000, 1.0, 1.0, 0.01, 0.1), 6)
    9.439333
    """
    with mp.workdps(working_digits()):
        eps, delta, L = _eps_delta(eps, delta)
        T = check_int("T", T, low=1)
        C0, C1, gamma, lam = (check_positive(n, v) for n, v in (
            ("C0", C0), ("C1", C1), ("gamma", gamma), ("lam", lam)))
        if gamma * lam > 1:
            raise InvalidParameterError(f"gamma*lam must be <= 1, got {mp.nstr(gamma * lam, 8)}")
        q = 1 - gamma * lam
        return float(mp.sqrt(72 * gamma * lam * L * (C0 * q ** T + C1 / lam) ** 2 / eps ** 2))


def _steps_from_log_factor(log_factor, log_delta0, delta) -> int:
    if log_factor >= 0:
        raise InvalidParameterError("the per-step factor is 1: no number of steps helps")
    need = (mp.log(delta) - log_delta0) / log_factor
    return max(0, int(mp.ceil(need)))


@entry_point
def paper_model_clipping_steps(eps, delta, C2, sigma, *, C0=None, sigma0=0.0) -> int:
    """Steps for model clipping from the fixed-gamma contraction (the paper's T = O(log 1/delta)).

    Each projected noisy step contracts E_{e^eps} by at least theta_eps(2 C2/sigma) (the strong
    data-processing factor with gamma' = gamma kept fixed), so
    ``delta_T <= delta_0 theta_eps(2 C2/sigma)^T`` and ``T = ceil(ln(delta/delta_0) /
    ln theta_eps(2 C2/sigma))``, with ``delta_0 = theta_eps(2 C0/sigma0)`` (1 without initial
    noise). Valid but much weaker than the exact recursion of
    :mod:`certunlearn_theory.model_clipping` (eps = 1, r = 2, delta = 1e-5: 18 steps vs 6).

    >>> paper_model_clipping_steps(1.0, 1e-5, 1.0, 1.0)
    18
    """
    with mp.workdps(working_digits()):
        eps = check_epsilon(eps)
        delta = check_delta(delta)
        C2 = check_positive("C2", C2)
        sigma = check_positive("sigma", sigma)
        sigma0 = check_nonnegative("sigma0", sigma0)
        log_d0 = mpf(0)
        if sigma0 > 0:
            if C0 is None:
                raise InvalidParameterError("C0 is required when sigma0 > 0")
            log_d0 = min(mpf(0), raw_log_theta(eps, 2 * check_positive("C0", C0) / sigma0))
        return _steps_from_log_factor(raw_log_theta(eps, 2 * C2 / sigma), log_d0, delta)


@entry_point
def tv_model_clipping_steps(delta, C2, sigma) -> int:
    """Steps for model clipping from the total-variation contraction theta_0(2 C2/sigma)^T.

    The eps = 0 case of :func:`paper_model_clipping_steps` (Dobrushin contraction):
    ``T = ceil(ln delta / ln(2 Phi(C2/sigma) - 1))`` (eps = 1, r = 2, delta = 1e-5: 31 steps).

    >>> tv_model_clipping_steps(1e-5, 1.0, 1.0)
    31
    """
    return paper_model_clipping_steps(0.0, delta, C2, sigma)
