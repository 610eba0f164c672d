"""float32 rounding in the accountant's terms: the per-step shift slack (THEORY.md section 8.1).

The bounds of :mod:`amplification` and :mod:`model_clipping` assume exact arithmetic. The noisy
phase runs in float32, so every step may move the coupled shift by its rounding error. This
module bounds that error and turns it into the ``shift_slack`` the bounds accept:

- gradient clipping: an a-priori bound on every iterate's norm, which holds except on an event
  of probability at most ``delta_tail`` (Laurent-Massart, union bound over the steps and both
  coupled runs); the run's delta is the accountant's delta plus ``delta_tail``
  (:func:`split_tail_delta`, :func:`run_delta`); sigma is calibrated at the fixed point of
  "the slack depends on sigma and sigma on the slack" (:func:`calibrate_with_float32_slack`);
- model clipping and output perturbation: every iterate lies in a ball by construction, so a
  relative slack :data:`PROJECTION_SLACK` of the radius covers the roundings.

Plain floats, no mpmath: the quantities are bounds computed with a relative safety factor and
rounded up; the accountant calls that consume them run in their own precision contexts.
"""
from __future__ import annotations

import math
from fractions import Fraction
from typing import Tuple

from ._numerics import entry_point
from .calibration import noise_for

__all__ = ["FLOAT32_U", "TAIL_DELTA_SHARE", "PROJECTION_SLACK", "split_tail_delta", "run_delta",
           "float32_shift_slack", "calibrate_with_float32_slack"]

#: Unit roundoff of float32 round-to-nearest.
FLOAT32_U = 2.0 ** -24
#: Share of the target delta spent on the event that an iterate norm exceeds its a-priori bound.
TAIL_DELTA_SHARE = 2.0 ** -10
#: Relative shift slack of the projection-only methods (model clipping: times C2; output
#: perturbation: times C0): a diameter 2C(1 + 2^-20) covers up to 16 float32 roundings.
PROJECTION_SLACK = 2.0 ** -19
_SAFETY = 1.0 + 2.0 ** -10  # on the float evaluation of the slack formula


def _up(x: float) -> float:
    return math.nextafter(x, math.inf)


@entry_point
def split_tail_delta(delta: float) -> Tuple[float, float]:
    """``(delta_accountant, delta_tail)`` for a gradient-clipping target ``delta``.

    ``delta_tail = delta * 2^-10`` bounds the probability that an iterate leaves the a-priori
    ball of :func:`float32_shift_slack`; ``delta_accountant`` is ``delta - delta_tail`` rounded
    down, so that ``run_delta(delta_accountant, delta_tail) <= delta``.
    """
    tail = float(delta) * TAIL_DELTA_SHARE
    acct = float(delta) - tail
    while Fraction(acct) + Fraction(tail) > Fraction(delta):
        acct = math.nextafter(acct, 0.0)
    return acct, tail


@entry_point
def run_delta(delta_accountant: float, delta_tail: float) -> float:
    """``delta_accountant + delta_tail`` rounded up to a float (the run's delta)."""
    s = delta_accountant + delta_tail
    if Fraction(s) < Fraction(delta_accountant) + Fraction(delta_tail):
        s = _up(s)
    return s


@entry_point
def float32_shift_slack(*, sigma: float, T: int, d: int, C0: float, C1: float, gamma: float,
                        lam: float, eps: float, delta_tail: float, batch_size: int) -> float:
    """Per-step shift slack covering float32 rounding in gradient clipping.

    With probability at least ``1 - delta_tail / (1 + e^eps)`` every iterate of both coupled
    runs has norm at most ``B = C0 c^T + gamma C1 sum_{k<T} c^k + sigma sqrt(sum_{k<T} c^(2k))
    (sqrt(d) + sqrt(2x))`` with ``c = max(1, |1 - gamma lam|)`` and
    ``x = ln(2 T (1 + e^eps) / delta_tail)`` (Laurent-Massart, union bound over T steps and two
    runs). On that event one step's rounding moves the coupled shift by at most
    ``6 u B + 2 (batch_size + 2) u gamma C1``, u = 2^-24; the result carries a relative
    safety factor 1 + 2^-10 on its float evaluation and is rounded up.

    Raises:
        ValueError: the bound is not finite (the iterates may grow geometrically, gamma lam > 2,
            over many steps).
    """
    c = max(1.0, abs(1.0 - gamma * lam))
    if c == 1.0:
        geo, geo2, cT = float(T), float(T), 1.0
    else:  # gamma lam > 2: the iterates may grow geometrically
        try:
            cT = c ** T
        except OverflowError:
            cT = math.inf
        geo = (cT - 1.0) / (c - 1.0)
        geo2 = (cT * cT - 1.0) / (c * c - 1.0)
    log_ratio = math.log(2.0 * T) + eps + math.log1p(math.exp(-eps)) - math.log(delta_tail)
    x = log_ratio * _SAFETY
    norm = (C0 * cT + gamma * C1 * geo
            + sigma * math.sqrt(geo2) * (math.sqrt(d) + math.sqrt(2.0 * x))) * _SAFETY
    slack = (6.0 * FLOAT32_U * norm + 2.0 * (batch_size + 2) * FLOAT32_U * gamma * C1) * _SAFETY
    if not math.isfinite(slack):
        raise ValueError(f"the float32 shift slack is not finite for sigma={sigma!r}, T={T!r}, "
                         f"d={d!r}, C0={C0!r}, C1={C1!r}, gamma={gamma!r}, lam={lam!r}")
    return _up(slack)


@entry_point
def calibrate_with_float32_slack(eps: float, delta: float, *, T: int, d: int, C0: float,
                                 C1: float, gamma: float, lam: float, batch_size: int,
                                 max_rounds: int = 10) -> Tuple[float, float, float]:
    """sigma for gradient clipping whose guarantee covers float32 rounding.

    The slack depends on sigma and sigma on the slack: starting from the slack-free sigma,
    ``sigma_{k+1} = noise_for(eps, delta - delta_tail, ..., shift_slack=slack(sigma_k (1 +
    1e-3)))`` until ``slack(sigma_{k+1})`` is at most the slack it was calibrated with.

    Returns:
        ``(sigma, shift_slack, delta_tail)``: the run certifies (eps, delta - delta_tail) from
        the accountant with ``shift_slack``, plus ``delta_tail`` for the iterate-norm tail.

    Raises:
        ValueError: the iteration does not settle within ``max_rounds`` rounds.
    """
    acct_delta, tail = split_tail_delta(delta)

    def slack_of(sigma: float) -> float:
        return float32_shift_slack(sigma=sigma, T=T, d=d, C0=C0, C1=C1, gamma=gamma, lam=lam,
                                   eps=eps, delta_tail=tail, batch_size=batch_size)

    sigma = float(noise_for(eps, acct_delta, T, C0, C1, gamma, lam))
    for _ in range(max_rounds):
        slack = slack_of(sigma * (1 + 1e-3))
        sigma = float(noise_for(eps, acct_delta, T, C0, C1, gamma, lam, shift_slack=slack))
        if slack_of(sigma) <= slack:
            return sigma, slack, tail
    raise ValueError(f"the noise calibration with the float32 shift slack did not settle in "
                     f"{max_rounds} rounds (eps={eps!r}, delta={delta!r}, T={T}, d={d}, "
                     f"C0={C0!r}, C1={C1!r}, gamma={gamma!r}): the rounding error grows faster "
                     "than the noise; use fewer private parameters, fewer steps or a larger C1")
