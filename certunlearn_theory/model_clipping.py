"""Model clipping: the exact strong data-processing recursion for projected noisy fine-tuning.

The run starts from ``x_0 = clip(x_hat, C0) + N(0, sigma0^2 I)`` and takes T steps

    x_{t+1} = Pi_{C2}(x_t - gamma (g_t + lam x_t)) + N(0, sigma^2 I)         (noise after projection)

Every step is a Markov kernel whose Gaussian means lie in a ball of diameter 2 C2, whatever the
gradients. For a kernel K with means at most D apart and gamma = e^eps, the hockey-stick divergence
contracts (Balle, Barthe, Gaboardi, Geumlek 2019; Asoodeh, Diaz, Calmon 2021; THEORY.md section 6)

    E_{e^eps}(mu K || nu K) <= delta * theta_{eps~}(D / sigma),   eps~ = ln(1 + (e^eps - 1)/delta),

with delta = E_{e^eps}(mu || nu) (any upper bound of it may be used: the right side is
nondecreasing in delta). Starting from delta_0 = theta_eps(2 C0/sigma0) (1 without initial noise):

    delta_{t+1} = delta_t * theta_{eps~_t}(2 C2 / sigma)

and the run is (eps, delta_T)-unlearning. Once delta_t is small, ln(1/delta) roughly squares each
step (ln theta_{eps~}(r) ~ -eps~^2/(2 r^2)), far faster than the fixed-gamma bound theta_eps(r)^T.

Variant ``noise_after_projection=False`` (gradient clipping to C1, noise added before the
projection): from a point of the C2-ball the means ``(1 - gamma lam) x - gamma clip(g)`` are at
most ``2 (|1 - gamma lam| C2 + gamma C1)`` apart. That needs the incoming iterate in the C2-ball,
which fails for the first step (x_0 lies in the C0-ball plus unbounded initial noise). The first
step is therefore bounded directly as a Gaussian mechanism from the C0-ball (coupling the initial
noise of both runs): ``delta_1 = min(delta_0, theta_eps(2 (|1 - gamma lam| C0 + gamma C1)/sigma))``;
the contraction applies from the second step on.

Numerics: the recursion is carried on ln delta_t (delta_t passes 10^(-10^7) within a few steps).
Solvers search in float64 (log-space normal CDFs) and then certify the answer with the mpmath
recursion at the working precision and 20 guard digits (both evaluations must agree); the
certified delta is rounded up, a calibrated sigma or eps up, a step count up.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from mpmath import mp, mpf

from ._numerics import (
    check_delta,
    check_epsilon,
    check_int,
    check_nonnegative,
    check_positive,
    entry_point,
    finish,
    log_float_up,
    rigorous,
    to_float,
    working_digits,
)
from .divergences import raw_log_theta
from .errors import InvalidParameterError, PrecisionError, UnreachableTargetError
from .formatting import format_up

__all__ = ["ModelClippingBound", "model_clipping_bound", "model_clipping_delta",
           "model_clipping_epsilon", "model_clipping_sigma", "model_clipping_steps"]

_LOG_SMALLEST_FLOAT = math.log(5e-324)
_ERFC_SAFE = 1000  # mpmath's erfc is used below this argument only


# ----------------------------------------------------------------------------------------------
# Setting
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Setting:
    """Radii (mean-distance / sigma) of the run and the initial log delta."""
    log_delta0: Any         # mpf
    r_first: Any            # mpf or None: radius of the first step as a Gaussian mechanism
    r: Any                  # mpf: radius of every contraction step
    contraction_from: int   # first step index that contracts (0 or 1)


def _validate(sigma, T, C0, C2, sigma0, C1, gamma, lam, noise_after_projection, *,
              sigma_known=True, T_required=True, shift_slack=0.0):
    """Validated inputs; a shift slack widens every mean distance by ``shift_slack``.

    The slack (e.g. float32 rounding, THEORY.md section 8) enters through the radii: the start
    diameter 2 C0 + slack and the step diameter 2 C2 + slack (noise after projection) or
    2 (|1 - gamma lam| C2 + gamma C1) + slack (noise before projection, through C1 + slack /
    (2 gamma)).
    """
    slack = check_nonnegative("shift_slack", shift_slack)
    T = check_int("T", T, low=1) if (T is not None or T_required) else None
    C0 = check_positive("C0", C0)
    if C2 is None:
        raise InvalidParameterError("C2 (the projection radius) is required for model clipping, "
                                    "got None")
    C2 = check_positive("C2", C2)
    sigma0 = check_nonnegative("sigma0", sigma0)
    if sigma_known:
        sigma = check_nonnegative("sigma", sigma)
        if sigma == 0 and sigma0 == 0:
            raise InvalidParameterError("sigma must be > 0 when sigma0 = 0, got sigma=0")
    extra = None
    if not noise_after_projection:
        if C1 is None:
            raise InvalidParameterError(
                "C1 (gradient clipping radius) is required when noise is added before the "
                "projection (noise_after_projection=False), got None")
        if gamma is None:
            raise InvalidParameterError("gamma is required when noise_after_projection=False, "
                                        "got None")
        C1 = check_nonnegative("C1", C1)
        gamma = check_positive("gamma", gamma)
        lam = check_nonnegative("lam", 0.0 if lam is None else lam)
        if gamma * lam > 1:
            raise InvalidParameterError(f"gamma*lam must be <= 1, got gamma={float(gamma)}, "
                                        f"lam={float(lam)}")
        extra = (C1 + slack / (2 * gamma), gamma, lam)
    elif slack > 0:
        C2 = C2 + slack / 2
    if slack > 0:
        C0 = C0 + slack / 2
    return sigma, T, C0, C2, sigma0, extra


def _radius(numerator, sigma: mpf) -> mpf:
    """numerator()/sigma with enough extra digits that theta at the radius keeps the current
    precision: near r ~ 1e200 (tiny sigma) ln(1 - theta) ~ -r^2/8 needs r to 2 log10(r) more
    digits than the result (``numerator`` is a callable, evaluated at the raised precision)."""
    if sigma == 0:
        return mp.inf
    with mp.workdps(15):
        estimate = abs(numerator() / sigma)
        extra = 2 * max(0, int(mp.ceil(mp.log10(1 + estimate)))) + 5
    with mp.workdps(mp.dps + extra):
        return numerator() / sigma


def _setting(eps: mpf, sigma: mpf, C0, C2, sigma0, extra) -> _Setting:
    """Radii at the current precision (and ln delta_0)."""
    log_d0 = mpf(0) if sigma0 == 0 else min(mpf(0),
                                             raw_log_theta(eps, _radius(lambda: 2 * C0, sigma0)))
    if extra is None:
        return _Setting(log_d0, None, _radius(lambda: 2 * C2, sigma), 0)
    C1, gamma, lam = extra
    r_first = _radius(lambda: 2 * (abs(1 - gamma * lam) * C0 + gamma * C1), sigma)
    r = _radius(lambda: 2 * (abs(1 - gamma * lam) * C2 + gamma * C1), sigma)
    return _Setting(log_d0, r_first, r, 1)


# ----------------------------------------------------------------------------------------------
# ln theta: float64 (search) and a fast mpmath route (certification)
# ----------------------------------------------------------------------------------------------

_SQRT_HALF_PI = math.sqrt(math.pi / 2)
_SQRT_HALF = math.sqrt(0.5)


def _log_theta_float(eps: float, r: float) -> float:
    """ln theta in float64 (search only; scipy is imported on first use)."""
    from scipy.special import erfcx, log_ndtr, ndtr
    if r == math.inf:
        return 0.0
    if r == 0 or eps == math.inf:
        return -math.inf
    m = eps / r - r / 2
    if m < 0:
        if eps < 700:
            one_minus = 0.5 * (math.erfc(-m * _SQRT_HALF)
                               + math.exp(eps) * math.erfc((m + r) * _SQRT_HALF))
        else:
            one_minus = ndtr(m) + math.exp(min(eps + log_ndtr(-m - r), 700.0))
        if one_minus < 0.5:
            return math.log1p(-one_minus)
    la = log_ndtr(-m)
    d = eps + log_ndtr(-m - r) - la
    if d < -1e-3:
        return la + math.log1p(-math.exp(d))
    # theta = phi(m) (R(m) - R(m + r)), R the Mills ratio (cancellation only r/m relative)
    diff = _SQRT_HALF_PI * (erfcx(m / math.sqrt(2)) - erfcx((m + r) / math.sqrt(2)))
    if diff > 0 and math.isfinite(diff):
        log_diff = math.log(diff)
    elif m > 0:  # cancelled or overflowed: R(m) - R(m + r) ~ r / (m (m + r)) for large m
        log_diff = math.log(r) - math.log(m) - math.log(m + r)
    else:  # theta <= Phi(-m): an upper bound is good enough for a search
        return la
    return -m * m / 2 - 0.5 * math.log(2 * math.pi) + log_diff


def _log_theta_mp(eps: mpf, r: mpf, exp_eps=None) -> mpf:
    """ln theta_eps(r) at the current precision; the 1 - theta sum of positives when m < 0.

    ``exp_eps`` may pass e^eps when the caller already has it. Arguments of ``erfc`` beyond
    1000 (huge ratios r = 2 C2/sigma at tiny sigma, where mpmath's ``erfc`` overflows) go to
    :func:`raw_log_theta`, which uses the asymptotic series there.
    """
    if mp.isinf(r):
        return mpf(0)
    m = eps / r - r / 2
    if m < 0 and -m < _ERFC_SAFE and m + r < _ERFC_SAFE:
        s2 = mp.sqrt(2)
        if exp_eps is None:
            exp_eps = mp.exp(eps)
        one_minus = (mp.erfc(-m / s2) + exp_eps * mp.erfc((m + r) / s2)) / 2
        if one_minus < mpf(1) / 2:
            return mp.log1p(-one_minus)
    return raw_log_theta(eps, r)


def _eps_tilde(log_expm1_eps, log_delta, lib):
    """eps~ = ln(1 + (e^eps - 1)/delta) from ln(e^eps - 1) and ln delta."""
    if log_expm1_eps == (mp.ninf if lib is mp else -math.inf):
        return 0 * log_delta
    t = log_expm1_eps - log_delta
    if t > 0:
        return t + lib.log1p(lib.exp(-t))
    return lib.log1p(lib.exp(t))


def _log_expm1(eps, lib):
    if eps == 0:
        return mp.ninf if lib is mp else -math.inf
    if eps > 1:
        return eps + lib.log(-lib.expm1(-eps))
    return lib.log(lib.expm1(eps))


# ----------------------------------------------------------------------------------------------
# Trajectories
# ----------------------------------------------------------------------------------------------

def _trajectory_float(eps: float, s: _Setting, T: int, stop_below: float):
    """ln delta_t in float64 for t = 0..n (n <= T), stopping once ln delta_t <= stop_below."""
    le = _log_expm1(eps, math)
    log_d = float(s.log_delta0)
    out = [log_d]
    r = float(s.r)
    for t in range(T):
        if log_d <= stop_below:
            break
        if t < s.contraction_from:
            log_d = min(log_d, _log_theta_float(eps, float(s.r_first)))
        else:
            log_d = log_d + _log_theta_float(_eps_tilde(le, log_d, math), r)
        out.append(log_d)
    return out


def _trajectory_mp(eps: mpf, s: _Setting, steps: int):
    """ln delta_t in mpmath for t = 0..steps at the current precision."""
    le = _log_expm1(eps, mp)
    log_d = s.log_delta0
    out = [log_d]
    for t in range(steps):
        if t < s.contraction_from:
            log_d = min(log_d, _log_theta_mp(eps, s.r_first))
        elif mp.isinf(le):  # eps = 0: eps~ = 0, the total-variation contraction
            log_d = log_d + _log_theta_mp(mpf(0), s.r)
        else:
            # e^eps~ = 1 + (e^eps - 1)/delta: one exponential serves eps~ and e^eps~
            ratio = mp.exp(le - log_d)
            log_d = log_d + _log_theta_mp(mp.log1p(ratio), s.r, exp_eps=1 + ratio)
        out.append(log_d)
    return out


def _certified_log_delta(eps: mpf, sigma: mpf, C0, C2, sigma0, extra, steps: int):
    """ln delta_steps, rounded up (two precisions must agree), and the high-precision trajectory."""
    holder = {}

    def compute():
        s = _setting(eps, sigma, C0, C2, sigma0, extra)
        traj = _trajectory_mp(eps, s, steps)
        holder[mp.dps] = traj
        return traj[-1]
    value = rigorous(compute, "up", what="model-clipping ln delta")
    traj = holder[max(holder)]
    return value, traj


def _meets(eps: mpf, sigma: mpf, C0, C2, sigma0, extra, T: int, log_target: mpf) -> bool:
    """Certified: ln delta_T <= log_target (mpmath recursion at two precisions).

    delta_t never increases with t (each factor theta is at most 1), so the recursion may stop at
    any n <= T once ln delta_n meets the target: the float recursion proposes the first n far
    below it (past that point ln(1/delta) keeps squaring, and so would the digits needed). If the
    certified value at n misses the target, the full T steps decide.
    """
    n = T
    try:
        with mp.workdps(30):
            s = _setting(eps, sigma, C0, C2, sigma0, extra)
        n = len(_trajectory_float(float(eps), s, T, 2 * float(log_target) - 50)) - 1
    except (OverflowError, ValueError, ZeroDivisionError):  # float64 out of its depth: all steps
        n = T
    value, _ = _certified_log_delta(eps, sigma, C0, C2, sigma0, extra, n)
    if value <= log_target:
        return True
    if n < T:
        value, _ = _certified_log_delta(eps, sigma, C0, C2, sigma0, extra, T)
        return value <= log_target
    return False


# ----------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelClippingBound:
    """(eps, delta) of a model-clipping run and its derivation.

    Attributes:
        eps: epsilon (the same at every step).
        delta: delta_T rounded up (5e-324 if below the float range).
        steps: T.
        log_deltas: ln delta_t for t = 0..n (floats, each rounded up), n <= T: the trajectory
            stops early once it is below the float range (later values only decrease).
    """
    eps: float
    delta: float
    steps: int
    log_deltas: tuple


@entry_point
def model_clipping_bound(sigma, eps, T, C0, C2, *, sigma0=0.0, C1=None, gamma=None, lam=0.0,
                         noise_after_projection=True, shift_slack=0.0) -> ModelClippingBound:
    """delta_T of the exact recursion with its trajectory (see :func:`model_clipping_delta`)."""
    eps_m = check_epsilon(eps)
    sigma, T, C0, C2, sigma0, extra = _validate(sigma, T, C0, C2, sigma0, C1, gamma, lam,
                                                noise_after_projection, shift_slack=shift_slack)
    with mp.workdps(30):
        s = _setting(eps_m, sigma, C0, C2, sigma0, extra)
    # the float trajectory decides where to stop (below the float range nothing changes)
    n = len(_trajectory_float(float(eps_m), s, T, _LOG_SMALLEST_FLOAT - 50)) - 1
    log_delta, traj = _certified_log_delta(eps_m, sigma, C0, C2, sigma0, extra, n)
    delta = 5e-324 if n < T and log_delta < _LOG_SMALLEST_FLOAT else log_float_up(log_delta)
    return ModelClippingBound(eps=float(eps), delta=min(1.0, delta), steps=T,
                              log_deltas=tuple(to_float(x, "up") for x in traj[:-1])
                              + (to_float(log_delta, "up"),))


@entry_point
def model_clipping_delta(sigma, eps, T, C0, C2, *, sigma0=0.0, C1=None, gamma=None, lam=0.0,
                         noise_after_projection=True, shift_slack=0.0):
    """delta of T projected noisy steps at a given eps (exact recursion), rounded UP.

    ``delta_0 = theta_eps(2 C0/sigma0)`` (1 if sigma0 = 0) and
    ``delta_{t+1} = delta_t theta_{eps~_t}(2 C2/sigma)``, ``eps~_t = ln(1 + (e^eps - 1)/delta_t)``
    (module docstring; Balle et al. 2019, Asoodeh et al. 2021). The float is the smallest one
    >= delta_T (5e-324 when delta_T is below the float range).

    >>> model_clipping_delta(1.0, 1.0, 6, C0=1.0, C2=1.0) <= 1e-5
    True
    """
    return model_clipping_bound(sigma, eps, T, C0, C2, sigma0=sigma0, C1=C1, gamma=gamma, lam=lam,
                                noise_after_projection=noise_after_projection,
                                shift_slack=shift_slack).delta


def _solve_decreasing(g, lo, hi, rel=1e-13):
    """Root of a non-increasing g on [lo, hi] (g(lo) > 0 >= g(hi)) by the Illinois method.

    Returns the bracket end ``hi`` with g(hi) <= 0 once the bracket is relatively narrower than
    ``rel`` (or g(hi) = 0).
    """
    g_lo, g_hi = g(lo), g(hi)
    side = 0
    for _ in range(200):
        if hi - lo <= rel * abs(hi) or g_hi == 0:
            break
        x = hi - g_hi * (hi - lo) / (g_hi - g_lo) if g_hi != g_lo else 0.5 * (lo + hi)
        if not lo < x < hi:
            x = 0.5 * (lo + hi)
        # keep the bracket shrinking from both sides: nudge the estimate by a little
        width = hi - lo
        x = min(max(x, lo + 1e-3 * width), hi - 1e-3 * width)
        g_x = g(x)
        if g_x <= 0:
            hi, g_hi = x, g_x
            if side == 1:
                g_lo /= 2
            side = 1
        else:
            lo, g_lo = x, g_x
            if side == -1:
                g_hi /= 2
            side = -1
    return hi


@entry_point
def model_clipping_sigma(eps, delta, T, C0, C2, *, sigma0=0.0, C1=None, gamma=None, lam=0.0,
                         noise_after_projection=True, as_mpf=False, shift_slack=0.0):
    """Smallest noise std sigma whose exact recursion gives delta_T <= delta at eps, rounded UP.

    Illinois root finding on ln sigma with the float64 recursion proposes a candidate; the
    mpmath recursion certifies it (nudged up until it is). If a sigma 1e-9 smaller is certified
    too, the float search could not resolve the target (e.g. a target within float resolution of
    delta_0, where every tiny sigma looks good in float64): the answer then comes from a
    bisection on ln sigma with the certified recursion. The result is raised by a relative 1e-11,
    so that :func:`model_clipping_epsilon` at the returned sigma gives back at most eps. 0.0
    when the initial noise alone already meets the target (certified). Every target is
    reachable in exact arithmetic (delta_T -> 0 as sigma grows); :class:`UnreachableTargetError`
    when the sigma needed is beyond the float range.

    >>> s = model_clipping_sigma(1.0, 1e-5, 6, C0=1.0, C2=1.0)
    >>> model_clipping_delta(s, 1.0, 6, C0=1.0, C2=1.0) <= 1e-5
    True
    """
    eps_m = check_epsilon(eps)
    delta_m = check_delta(delta)
    _, T, C0, C2, sigma0, extra = _validate(None, T, C0, C2, sigma0, C1, gamma, lam,
                                            noise_after_projection, sigma_known=False,
                                            shift_slack=shift_slack)
    with mp.workdps(working_digits()):
        log_target = mp.log(delta_m)
    log_target_f = float(log_target)

    def float_log_delta(sig):
        with mp.workdps(20):
            s = _setting(eps_m, mpf(sig), C0, C2, sigma0, extra)
        return _trajectory_float(float(eps_m), s, T, 4 * log_target_f - 10)[-1]

    def float_ok(sig):
        return float_log_delta(sig) <= log_target_f

    def certified_ok(sig):
        return _meets(eps_m, mpf(sig), C0, C2, sigma0, extra, T, log_target)

    if sigma0 > 0 and certified_ok(0.0):  # sigma = 0: the initial noise alone
        return finish(mpf(0), "up", as_mpf)
    # 1. a float64 proposal (fast, usually within 1e-15 of the root, but it cannot see a target
    #    closer to delta_0 than float resolution: then every tiny sigma looks good)
    proposal = _float_sigma_proposal(float_ok, float_log_delta, log_target_f, float(C2))
    # 2. certify: raise the proposal until the mpmath recursion certifies it
    sig = proposal * (1 + 1e-15) if proposal is not None else float(C2)
    step = 1e-14
    while not certified_ok(sig):
        sig = math.nextafter(sig * (1 + step), math.inf)
        step = min(2 * step, 1.0)
        if sig > _MAX_FLOAT / 4:
            raise UnreachableTargetError(
                "the noise needed for the target is beyond the float range (sigma > 4e307)")
    # 3. tight: if a slightly smaller sigma is also certified, the proposal was wrong; bisect
    #    on ln sigma with the certified recursion between a failing and a certified end
    if certified_ok(sig * (1 - 1e-9)):
        lo = sig * (1 - 1e-9)
        while certified_ok(lo):
            sig, lo = lo, lo / 16
            if lo < 1e-320:
                lo = 0.0
                break
        sig = _certified_bisection(certified_ok, lo, sig)
    # a relative margin of 1e-11 (larger sigma only helps) so that re-evaluating the guarantee
    # at this sigma, itself searched to ~1e-14, lands on the target's safe side
    result = finish(mpf(sig) * (1 + mpf(10) ** -11), "up", as_mpf)
    if not as_mpf and math.isinf(result):
        raise UnreachableTargetError(
            "the noise needed for the target is beyond the float range (sigma > 1.8e308)")
    return result


_MAX_FLOAT = 1.7976931348623157e308


def _float_sigma_proposal(float_ok, float_log_delta, log_target_f, start):
    """Float64 root of ln delta_T(sigma) = ln delta in ln sigma, or None if it is not bracketed."""
    hi = start
    while not float_ok(hi):
        hi *= 2
        if hi > 1e300:
            return None
    lo = hi / 2
    while float_ok(lo):
        hi, lo = lo, lo / 2
        if lo < 1e-320:
            return None
    # root of ln delta_T(e^u) - ln delta in u = ln sigma (clamped far below the target)
    u = _solve_decreasing(
        lambda v: max(float_log_delta(math.exp(v)), 4 * log_target_f - 10) - log_target_f,
        math.log(lo), math.log(hi), rel=1e-15)
    return math.exp(u)


def _certified_bisection(ok, lo: float, hi: float) -> float:
    """Smallest float sigma (to a relative 1e-13) with ok(sigma), ok(hi) true, ok(lo) false."""
    for _ in range(2000):
        if hi - lo <= 1e-13 * hi:
            break
        mid = math.sqrt(lo * hi) if lo > 0 and hi / lo > 4 else 0.5 * (lo + hi)
        if lo == 0.0:
            mid = hi / 16 if hi > 1e-300 else 0.5 * hi
        if not lo < mid < hi:
            break
        if ok(mid):
            hi = mid
        else:
            lo = mid
    return hi


@entry_point
def model_clipping_epsilon(sigma, delta, T, C0, C2, *, sigma0=0.0, C1=None, gamma=None, lam=0.0,
                           noise_after_projection=True, as_mpf=False, shift_slack=0.0):
    """Smallest eps with delta_T(eps) <= delta for the exact recursion, rounded UP.

    delta_T decreases in eps; bisection in float64, then certification in mpmath (nudged up until
    certified).

    >>> model_clipping_epsilon(1.0, 1e-5, 6, C0=1.0, C2=1.0) <= 1.0
    True
    """
    delta_m = check_delta(delta)
    sigma, T, C0, C2, sigma0, extra = _validate(sigma, T, C0, C2, sigma0, C1, gamma, lam,
                                                noise_after_projection, shift_slack=shift_slack)
    with mp.workdps(working_digits()):
        log_target = mp.log(delta_m)
    log_target_f = float(log_target)

    def float_log_delta(e):
        with mp.workdps(20):
            s = _setting(mpf(e), sigma, C0, C2, sigma0, extra)
        return _trajectory_float(e, s, T, 4 * log_target_f - 10)[-1]

    def float_ok(e):
        return float_log_delta(e) <= log_target_f

    def certified_ok(e):
        return _meets(mpf(e), sigma, C0, C2, sigma0, extra, T, log_target)

    if certified_ok(0.0):
        return finish(mpf(0), "up", as_mpf)
    hi = 1.0
    while not float_ok(hi):
        hi *= 2
        if hi > 1e15:
            raise UnreachableTargetError("no eps below 1e15 reaches the target delta", best=None)
    lo = 0.0 if hi == 1.0 else hi / 2
    e = _solve_decreasing(
        lambda x: max(float_log_delta(x), 4 * log_target_f - 10) - log_target_f, lo, hi)
    step = 1e-14
    for _ in range(200):
        if certified_ok(e):
            return finish(mpf(e), "up", as_mpf)
        e = math.nextafter(e * (1 + step), math.inf)
        step *= 2
    raise PrecisionError("could not certify a model-clipping epsilon")


@entry_point
def model_clipping_steps(sigma, eps, delta, C0, C2, *, sigma0=0.0, C1=None, gamma=None, lam=0.0,
                         noise_after_projection=True, max_steps: int = 10**7,
                         shift_slack=0.0) -> int:
    """Fewest steps T with delta_T <= delta at eps (exact recursion).

    The float recursion proposes T; the mpmath recursion certifies it (T is increased until it
    is). 0 when the initial noise alone suffices.

    Raises:
        UnreachableTargetError: when ``max_steps`` steps do not suffice (sigma far too small);
            ``best`` is the delta reached after ``max_steps`` steps.

    >>> model_clipping_steps(1.0, 1.0, 1e-5, C0=1.0, C2=1.0)
    6
    """
    eps_m = check_epsilon(eps)
    delta_m = check_delta(delta)
    sigma, _, C0, C2, sigma0, extra = _validate(sigma, None, C0, C2, sigma0, C1, gamma, lam,
                                                noise_after_projection, T_required=False,
                                                shift_slack=shift_slack)
    max_steps = check_int("max_steps", max_steps, low=1)
    with mp.workdps(working_digits()):
        log_target = mp.log(delta_m)
    with mp.workdps(30):
        s = _setting(eps_m, sigma, C0, C2, sigma0, extra)
    traj = _trajectory_float(float(eps_m), s, max_steps, float(log_target))
    if traj[-1] > float(log_target):
        raise UnreachableTargetError(
            f"{max_steps} steps give only delta = exp({format_up(traj[-1])}) > {float(delta_m)!r}: "
            f"raise sigma (or max_steps)", best=min(1.0, math.exp(traj[-1])))
    T = len(traj) - 1
    if T == 0:
        d0, _ = _certified_log_delta(eps_m, sigma, C0, C2, sigma0, extra, 0)
        if d0 <= log_target:
            return 0
        T = 1
    for _ in range(1000):
        value, _ = _certified_log_delta(eps_m, sigma, C0, C2, sigma0, extra, T)
        if value <= log_target:
            return T
        T += 1
    raise PrecisionError("could not certify a model-clipping step count")
