"""What users call before they unlearn: noise for a target, the guarantee of a setting, steps.

Four functions share their argument names and meaning:

* :func:`noise_for`   (eps, delta, T, ...)   -> sigma, the smallest per-step noise std, rounded up;
* :func:`epsilon_for` (sigma, delta, T, ...) -> eps, rounded up;
* :func:`delta_for`   (sigma, eps, T, ...)   -> delta, rounded up;
* :func:`steps_for`   (sigma, eps, delta, ...) -> the fewest steps T.

``method`` selects the bound:

``"gradient_clipping"``
    Noisy SGD with gradient clipping C1, learning rate gamma, L2 regularisation lam, from the
    model clipped to C0 (optional initial noise sigma0). Privacy amplification by iteration:
    ``D_alpha <= alpha rho_PABI`` with ``rho_PABI = 1/2 min_{tau <= T} Z_tau^2/S_tau``
    (:mod:`certunlearn_theory.amplification`), converted to (eps, delta) with the improved
    conversion (Canonne, Kamath, Steinke 2020) over real orders. C1, gamma, lam (and sigma in
    :func:`epsilon_for`/:func:`delta_for`) may be per-step sequences of length T.
``"model_clipping"``
    Projection onto the C2-ball each step, noise after the projection (``noise_after_projection
    =False``: gradient clipping to C1 and noise before the projection). The exact hockey-stick
    recursion (:mod:`certunlearn_theory.model_clipping`). C1 may be None.
``"output_perturbation"``
    One Gaussian release of the C0-clipped model (sensitivity 2 C0), the analytic Gaussian
    mechanism (Balle & Wang 2018). T and the step parameters are ignored.

All results are rounded on the safe side; they are computed at ``working_digits()`` (see
:func:`certunlearn_theory.precision`).
"""
from __future__ import annotations

import math

from ._numerics import (
    check_delta,
    check_epsilon,
    check_nonnegative,
    check_positive,
    entry_point,
    finish,
    to_float,
)
from .amplification import pabi_rho, pabi_sigma, pabi_steps
from .divergences import classical_gaussian_sigma, gaussian_delta, gaussian_epsilon, gaussian_sigma
from .errors import InvalidParameterError, UnreachableTargetError
from .formatting import format_down, format_up
from .model_clipping import (
    model_clipping_delta,
    model_clipping_epsilon,
    model_clipping_sigma,
    model_clipping_steps,
)
from .renyi import RenyiCurve, linear_rho_max, renyi_to_delta, renyi_to_dp

__all__ = ["METHODS", "noise_for", "epsilon_for", "delta_for", "steps_for",
           "output_perturbation_classical_sigma"]

METHODS = ("gradient_clipping", "model_clipping", "output_perturbation")


def _check_method(method) -> str:
    if method not in METHODS:
        raise InvalidParameterError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    return method


def _sigma0(sigma0):
    return 0.0 if sigma0 is None else sigma0


def _sensitivity(C0, shift_slack):
    """Output perturbation: 2 C0 (+ the shift slack, e.g. the float rounding of the clip)."""
    return 2 * check_positive("C0", C0) + check_nonnegative("shift_slack", shift_slack)


def _gc_epsilon(sigma, delta, T, C0, C1, gamma, lam, sigma0, conversion, as_mpf=True,
                slack=0.0):
    rho = pabi_rho(sigma, T, C0, C1, gamma, lam, sigma0=sigma0, as_mpf=True, shift_slack=slack)
    return renyi_to_dp(RenyiCurve.linear(rho), delta, conversion=conversion, as_mpf=as_mpf)


@entry_point
def noise_for(eps, delta, T, C0, C1, gamma, lam=0.0, *, method="gradient_clipping", C2=None,
              sigma0=0.0, noise_after_projection=True, conversion="improved", shift_slack=0.0):
    """Smallest per-step noise std sigma whose unlearning guarantee is (eps, delta), rounded UP.

    * gradient clipping: ``sigma^2 = min_tau Z_tau^2 / (2 rho_max S~_tau)`` with
      ``rho_max = linear_rho_max(eps, delta)`` (THEORY.md sections 4-5; for lam = 0 and
      T <= C0/(gamma C1): ``sigma^2 = 2 (C0 + gamma C1 T)^2 / (rho_max T)``);
    * model clipping: the smallest sigma with ``delta_T <= delta`` in the exact recursion
      (THEORY.md section 6);
    * output perturbation: ``sigma = 2 C0 / r*``, ``r* = sup{r : theta_eps(r) <= delta}``.

    No value leaves unchecked: the forward bound is evaluated at the returned float
    (``epsilon_for(noise_for(eps, ...), ...) <= eps`` for gradient clipping, ``delta_for(...)
    <= delta`` otherwise) and must meet the target, else :class:`UnreachableTargetError`. A
    result of 0.0 means the initial noise sigma0 alone already meets the target (checked too).
    A sigma beyond the float range raises :class:`UnreachableTargetError`.

    Args:
        eps: target epsilon > 0.
        delta: target delta in (0, 1).
        T: number of noisy steps (ignored for output perturbation).
        C0: radius the trained model is clipped to.
        C1: gradient clipping radius (None allowed for model clipping).
        gamma: learning rate.
        lam: L2 regularisation coefficient (gamma*lam <= 1).
        method: "gradient_clipping", "model_clipping" or "output_perturbation".
        C2: projection radius (model clipping).
        sigma0: std of the initial noise on the clipped model.
        noise_after_projection: model clipping order of noise and projection.
        conversion: Renyi-to-DP conversion for gradient clipping ("improved" or "mironov").
        shift_slack: extra mean distance per step (>= 0, default 0) covering what the exact
            model leaves out, e.g. the float32 rounding of each step (THEORY.md section 8,
            "Finite precision"): added to 2 gamma C1 and to the start diameter 2 C0 (gradient
            clipping), to the diameters 2 C0 and 2 C2 (model clipping), to the sensitivity 2 C0
            (output perturbation).

    >>> round(noise_for(1.0, 1e-5, 100, C0=1.0, C1=1.0, gamma=0.01), 6)
    1.618052
    """
    method = _check_method(method)
    eps_m = check_epsilon(eps)
    if eps_m == 0:
        raise InvalidParameterError("eps must be > 0 to calibrate noise, got 0")
    delta_m = check_delta(delta)
    sigma0 = _sigma0(sigma0)
    if method == "output_perturbation":
        sensitivity = _sensitivity(C0, shift_slack)
        result = gaussian_sigma(eps, delta, sensitivity)
        _check_float_range(result)
        meets = gaussian_delta(eps, sensitivity, result) <= delta_m
    elif method == "model_clipping":
        kw = dict(sigma0=sigma0, C1=C1, gamma=gamma, lam=lam,
                  noise_after_projection=noise_after_projection, shift_slack=shift_slack)
        result = model_clipping_sigma(eps, delta, T, C0, C2, **kw)
        _check_float_range(result)
        meets = model_clipping_delta(result, eps, T, C0, C2, **kw) <= delta_m
    else:
        result, meets = _gc_noise(eps_m, delta_m, T, C0, C1, gamma, lam, sigma0, conversion,
                                  shift_slack)
    if not meets:  # no value leaves the accountant without the forward bound meeting the target
        raise UnreachableTargetError(
            f"could not certify a noise level for eps={eps}, delta={delta} ({method}): the "
            f"forward bound at sigma={result!r} misses the target", best=None)
    return result


def _check_float_range(sigma: float) -> None:
    if math.isinf(sigma):
        raise UnreachableTargetError(
            "the noise needed for the target is beyond the float range (sigma > 1.8e308): "
            "lower the clipping radii or raise the target", best=None)


def _gc_noise(eps_m, delta_m, T, C0, C1, gamma, lam, sigma0, conversion, slack):
    """Gradient clipping: (sigma, whether the forward bound at it meets eps)."""
    rho_max = linear_rho_max(eps_m, delta_m, conversion=conversion, as_mpf=True)
    if rho_max <= 0:
        raise UnreachableTargetError(f"eps={float(eps_m)!r} at delta={float(delta_m)!r} allows "
                                     f"no Renyi budget", best=None)
    sigma = pabi_sigma(rho_max, T, C0, C1, gamma, lam, sigma0=sigma0, as_mpf=True,
                       shift_slack=slack)
    result = to_float(sigma, "up")
    _check_float_range(result)
    step = 1e-15
    for _ in range(100):  # the conversion rounds eps up by its own margin: check, nudge if needed
        if _gc_epsilon(result, delta_m, T, C0, C1, gamma, lam, sigma0, conversion,
                       slack=slack) <= eps_m:
            return result, True
        if result == 0:
            return result, False
        result = math.nextafter(result * (1 + step), math.inf)
        _check_float_range(result)
        step *= 2
    return result, False


@entry_point
def epsilon_for(sigma, delta, T, C0, C1, gamma, lam=0.0, *, method="gradient_clipping", C2=None,
                sigma0=0.0, noise_after_projection=True, conversion="improved", shift_slack=0.0):
    """The eps of a setting at a given delta, rounded UP (see :func:`noise_for` for the bounds).

    Gradient clipping: ``renyi_to_dp(RenyiCurve.linear(rho_PABI), delta)``; model clipping: the
    smallest eps with ``delta_T(eps) <= delta``; output perturbation: the analytic Gaussian eps
    of sensitivity 2 C0.

    >>> epsilon_for(1.618053, 1e-5, 100, C0=1.0, C1=1.0, gamma=0.01) <= 1.0
    True
    """
    method = _check_method(method)
    check_delta(delta)
    sigma0 = _sigma0(sigma0)
    if method == "output_perturbation":
        return gaussian_epsilon(delta, _sensitivity(C0, shift_slack), sigma)
    if method == "model_clipping":
        return model_clipping_epsilon(sigma, delta, T, C0, C2, sigma0=sigma0, C1=C1, gamma=gamma,
                                      lam=lam, noise_after_projection=noise_after_projection,
                                      shift_slack=shift_slack)
    return finish(_gc_epsilon(sigma, delta, T, C0, C1, gamma, lam, sigma0, conversion,
                              slack=shift_slack), "up", False)


@entry_point
def delta_for(sigma, eps, T, C0, C1, gamma, lam=0.0, *, method="gradient_clipping", C2=None,
              sigma0=0.0, noise_after_projection=True, conversion="improved", shift_slack=0.0):
    """The delta of a setting at a given eps, rounded UP (5e-324 below the float range).

    >>> delta_for(1.618053, 1.0, 100, C0=1.0, C1=1.0, gamma=0.01) <= 1e-5
    True
    """
    method = _check_method(method)
    check_epsilon(eps)
    sigma0 = _sigma0(sigma0)
    if method == "output_perturbation":
        return gaussian_delta(eps, _sensitivity(C0, shift_slack), sigma)
    if method == "model_clipping":
        return model_clipping_delta(sigma, eps, T, C0, C2, sigma0=sigma0, C1=C1, gamma=gamma,
                                    lam=lam, noise_after_projection=noise_after_projection,
                                    shift_slack=shift_slack)
    rho = pabi_rho(sigma, T, C0, C1, gamma, lam, sigma0=sigma0, as_mpf=True,
                   shift_slack=shift_slack)
    return renyi_to_delta(RenyiCurve.linear(rho), eps, conversion=conversion)


@entry_point
def steps_for(sigma, eps, delta, C0, C1, gamma, lam=0.0, *, method="gradient_clipping", C2=None,
              sigma0=0.0, noise_after_projection=True, conversion="improved",
              max_steps: int = 10**7, shift_slack=0.0):
    """The fewest noisy steps T whose guarantee is (eps, delta) at noise sigma.

    Gradient clipping: rho_PABI is non-increasing in T (a minimum over horizons), so T is the
    first horizon with ``Z_tau^2/(2 S_tau) <= linear_rho_max(eps, delta)``. The bound has a floor
    (for lam = 0 the best horizon is C0/(gamma C1) and more steps do not help): when the target is
    below it, :class:`UnreachableTargetError` states the best eps reachable, in ``.best``.
    Model clipping: the first t with ``delta_t <= delta`` (always reachable; ``max_steps`` caps
    the search). Output perturbation: 0 if the one-shot release meets the target.

    >>> steps_for(1.7, 1.0, 1e-5, C0=1.0, C1=1.0, gamma=0.01)
    54
    """
    method = _check_method(method)
    eps_m = check_epsilon(eps)
    delta_m = check_delta(delta)
    sigma0 = _sigma0(sigma0)
    if method == "output_perturbation":
        got = gaussian_epsilon(delta, _sensitivity(C0, shift_slack), sigma)
        if got <= eps:
            return 0
        raise UnreachableTargetError(
            f"output perturbation has no steps: at sigma={sigma} it certifies "
            f"eps={format_up(got)} > {eps}", best=got)
    if method == "model_clipping":
        return model_clipping_steps(sigma, eps, delta, C0, C2, sigma0=sigma0, C1=C1, gamma=gamma,
                                    lam=lam, noise_after_projection=noise_after_projection,
                                    max_steps=max_steps, shift_slack=shift_slack)
    rho_max = linear_rho_max(eps, delta, conversion=conversion, as_mpf=True)
    try:
        T = pabi_steps(rho_max, sigma, C0, C1, gamma, lam, sigma0=sigma0,
                       shift_slack=shift_slack)
    except UnreachableTargetError as exc:
        floor_rho = exc.best
        best = renyi_to_dp(RenyiCurve.linear(floor_rho), delta, conversion=conversion)
        raise UnreachableTargetError(
            f"no number of steps reaches eps={eps} at delta={delta} with sigma={sigma}: the "
            f"bound's floor over all T is eps={format_up(best)} (rho={format_down(floor_rho)}); "
            f"raise sigma or lower gamma*C1", best=best) from None
    # the conversion rounds up by its own margin: make sure the returned T is certified
    for _ in range(3):
        if _gc_epsilon(sigma, delta_m, T, C0, C1, gamma, lam, sigma0, conversion,
                       slack=shift_slack) <= eps_m:
            return T
        T += 1
    raise UnreachableTargetError("could not certify a step count", best=None)


@entry_point
def output_perturbation_classical_sigma(eps, delta, C0):
    """The textbook Gaussian-mechanism noise for output perturbation (comparison only).

    ``sigma = 2 C0 sqrt(2 ln(1.25/delta)) / eps`` (Dwork & Roth 2014, Thm A.1), proven only for
    eps < 1 (refused otherwise, see :func:`certunlearn_theory.classical_gaussian_sigma`); always
    at least the analytic value of :func:`noise_for` with ``method="output_perturbation"``.

    >>> round(output_perturbation_classical_sigma(0.5, 1e-5, 1.0), 6)
    19.379221
    """
    return classical_gaussian_sigma(eps, delta, 2 * check_positive("C0", C0))
