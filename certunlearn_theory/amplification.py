"""Privacy amplification by iteration for noisy fine-tuning with gradient clipping.

The unlearning run starts from ``x_0 = clip(x_hat, C0) + N(0, sigma0^2 I)`` (``sigma0 = 0``: no
initial noise) and takes ``T`` steps

    x_{t+1} = psi_t(x_t) + N(0, sigma_t^2 I),    psi_t(x) = x - gamma_t (clip(g_t(x), C1_t) + lam_t x).

Both runs (from the model trained on D and from one trained on the retain set only) use the same
retain batches. ``psi_t`` moves two points apart by at most ``rho_t ||x - y|| + s_t`` with
``rho_t = |1 - gamma_t lam_t|`` and ``s_t = 2 gamma_t C1_t``, whatever the loss (no convexity), and
the starting points are at most ``2 C0`` apart.

Shift reduction (Feldman, Mironov, Talwar, Thakurta 2018, arXiv:1808.06651, Lemma 20 and Thm 22;
used without convexity by Koloskova et al. 2025) bounds the Renyi divergence of the final iterates by
``(alpha/2) sum_{t<tau} a_t^2 / sigma_t^2`` for any nonnegative shifts ``a_t`` that bring the
remaining shift ``z_{t+1} = rho_t z_t + s_t - a_t`` from ``z_0 = 2 C0`` to zero at some horizon
``tau <= T`` while staying ``>= 0``. With

    Z_0 = 2 C0,  Z_{t+1} = rho_t Z_t + s_t,
    S_0 = sigma0^2,  S_{t+1} = rho_t^2 S_t + sigma_t^2,

the Cauchy-Schwarz allocation for horizon ``tau`` costs ``Z_tau^2 / S_tau``. The bound used here is

    D_alpha(x_T || x_T') <= alpha * rho_PABI,   rho_PABI = 1/2 min_{tau} Z_tau^2 / S_tau,

with tau over 1..T (and 0 when sigma0 > 0). The minimum over horizons is what makes the bound valid
for every schedule: at the minimising horizon the Cauchy-Schwarz shift path never goes negative
(if it first reached zero at t' < tau, scaling its first t' shifts would give a cheaper horizon t'),
and steps after the horizon are post-processing. It also makes the bound non-increasing in T: more
steps never weaken the guarantee.

For constant schedules (q = 1 - gamma lam in [0, 1)) the sums have closed forms,

    Z_tau = 2 C0 q^tau + 2 gamma C1 (1 - q^tau) / (1 - q),    (2 C0 + 2 gamma C1 tau when lam = 0)
    S_tau = sigma0^2 q^(2 tau) + sigma^2 (1 - q^(2 tau)) / (1 - q^2),   (sigma0^2 + sigma^2 tau)

and Z_tau^2 / S_tau has at most one critical point in tau, so the minimum over horizons is found
among the ends and the two integers around that point: O(1) work for any T (T = 10^6 included).

Rounding: rho_PABI is rounded up (Z up, S down), a calibrated sigma up, a step count up.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from mpmath import mp, mpf

from ._numerics import (
    check_int,
    check_nonnegative,
    check_positive,
    entry_point,
    finish,
    is_sequence,
    rigorous,
    to_float,
    working_digits,
)
from .errors import InvalidParameterError, UnreachableTargetError

__all__ = ["PabiBound", "pabi_bound", "pabi_rho", "pabi_sigma", "pabi_steps", "shift_path"]


# ----------------------------------------------------------------------------------------------
# Schedules
# ----------------------------------------------------------------------------------------------

def _param(name: str, value, T: int, check):
    """A scalar (validated mpf) or a length-T list of validated mpf; constant lists collapse."""
    if is_sequence(value):
        items = list(value)
        if len(items) != T:
            raise InvalidParameterError(
                f"{name} must be a scalar or a sequence of length T={T}, got length {len(items)}")
        if T == 0:
            raise InvalidParameterError(f"{name} must not be an empty sequence")
        vals = [check(f"{name}[{i}]", v) for i, v in enumerate(items)]
        if all(v == vals[0] for v in vals):
            return vals[0]
        return vals
    return check(name, value)


def _pos(name, v):
    return check_positive(name, v)


def _nonneg(name, v):
    return check_nonnegative(name, v)


@dataclass(frozen=True)
class _Schedule:
    """Validated gradient-clipping run; per-step entries are mpf or lists of mpf."""
    T: int
    C0: mpf
    C1: Any  # mpf, None (for sigma) or a list of mpf, one per step
    gamma: Any
    lam: Any
    sigma: Any
    sigma0: mpf
    slack: mpf = mpf(0)  # extra additive shift per step (and on the start), e.g. float rounding

    def shift(self, t: int) -> mpf:
        """s_t = 2 gamma_t C1_t + slack."""
        return 2 * self.at("gamma", t) * self.at("C1", t) + self.slack

    @property
    def constant(self) -> bool:
        return not any(isinstance(v, list) for v in (self.C1, self.gamma, self.lam, self.sigma))

    def at(self, name: str, t: int) -> mpf:
        v = getattr(self, name)
        return v[t] if isinstance(v, list) else v


def _schedule(sigma, T, C0, C1, gamma, lam, sigma0, *, sigma_required=True,
              shift_slack=0.0) -> _Schedule:
    T = check_int("T", T, low=1)
    slack = check_nonnegative("shift_slack", shift_slack)
    C0 = check_positive("C0", C0)
    if C1 is None:
        raise InvalidParameterError("C1 (the gradient clipping radius) is required for "
                                    "gradient clipping, got None")
    C1 = _param("C1", C1, T, _nonneg)
    gamma = _param("gamma", gamma, T, _pos)
    lam = _param("lam", lam, T, _nonneg)
    sigma0 = check_nonnegative("sigma0", sigma0)
    if sigma_required:
        sigma = _param("sigma", sigma, T, _nonneg)
        if sigma0 == 0 and not isinstance(sigma, list) and sigma == 0:
            raise InvalidParameterError("sigma must be > 0 when sigma0 = 0, got sigma=0")
    for t in range(T if any(isinstance(v, list) for v in (gamma, lam)) else 1):
        g = gamma[t] if isinstance(gamma, list) else gamma
        lm = lam[t] if isinstance(lam, list) else lam
        if g * lm > 1:
            where = f" at step {t}" if any(isinstance(v, list) for v in (gamma, lam)) else ""
            raise InvalidParameterError(
                f"gamma*lam must be <= 1 (the weight-decay step must not flip the sign of the "
                f"parameters){where}, got gamma={mp.nstr(g, 17)}, lam={mp.nstr(lm, 17)}")
    return _Schedule(T, C0, C1, gamma, lam, sigma, sigma0, slack)


# ----------------------------------------------------------------------------------------------
# Z_tau, S_tau: recursion and constant-schedule closed form
# ----------------------------------------------------------------------------------------------

def _loop_values(sch: _Schedule, upto: int, unit_sigma: bool = False):
    """Yield (tau, Z_tau, S_tau) for tau = 0..upto by the recursion, at the current precision."""
    Z = 2 * sch.C0 + sch.slack
    S = mpf(0) if unit_sigma else sch.sigma0 ** 2
    yield 0, Z, S
    for t in range(upto):
        g = sch.at("gamma", t)
        q = abs(1 - g * sch.at("lam", t))
        Z = q * Z + sch.shift(t)
        sig2 = mpf(1) if unit_sigma else sch.at("sigma", t) ** 2
        S = q * q * S + sig2
        yield t + 1, Z, S


def _ratio(Z, S):
    if S == 0:
        return mp.inf
    return Z * Z / S


def _argmin_loop(sch: _Schedule, unit_sigma: bool) -> int:
    """Horizon minimising Z^2/S by the O(T) recursion.

    Any horizon gives a valid bound, so the choice is made in float64 (falling back to 20-digit
    mpmath if a float overflows); the bound itself is then evaluated in mpmath at that horizon.
    """
    start = 0 if (sch.sigma0 > 0 and not unit_sigma) else 1
    try:
        best_tau, best = start, math.inf
        Z = 2.0 * float(sch.C0) + float(sch.slack)
        slack = float(sch.slack)
        S = 0.0 if unit_sigma else float(sch.sigma0) ** 2
        if start == 0:
            best = Z * Z / S
        floats = {n: ([float(x) for x in v] if isinstance(v, list)
                      else (1.0 if v is None else float(v)))
                  for n, v in (("gamma", sch.gamma), ("lam", sch.lam), ("C1", sch.C1),
                               ("sigma", sch.sigma))}

        def at(name, t):
            v = floats[name]
            return v[t] if isinstance(v, list) else v
        for t in range(sch.T):
            g = at("gamma", t)
            q = abs(1 - g * at("lam", t))
            Z = q * Z + 2 * g * at("C1", t) + slack
            S = q * q * S + (1.0 if unit_sigma else at("sigma", t) ** 2)
            f = Z * Z / S if S > 0 else math.inf
            if f < best:
                best_tau, best = t + 1, f
        if math.isfinite(best) and best > 0:
            return best_tau
    except (OverflowError, ZeroDivisionError):
        pass
    best_tau, best_mp = start, None
    with mp.workdps(20):
        for tau, Z, S in _loop_values(sch, sch.T, unit_sigma):
            if tau < start:
                continue
            f = _ratio(Z, S)
            if best_mp is None or f < best_mp:
                best_tau, best_mp = tau, f
    return best_tau


def _const_ZS(sch: _Schedule, tau: int, unit_sigma: bool = False):
    """Closed-form Z_tau, S_tau for a constant schedule, at the current precision."""
    a = 2 * sch.C0 + sch.slack
    s = 2 * sch.gamma * sch.C1 + sch.slack
    gl = sch.gamma * sch.lam
    sig2 = mpf(1) if unit_sigma else sch.sigma ** 2
    s02 = mpf(0) if unit_sigma else sch.sigma0 ** 2
    if gl == 0:
        return a + s * tau, s02 + sig2 * tau
    if gl == 1:  # q = 0: the weight-decay step forgets the past entirely
        if tau == 0:
            return a, s02
        return s, sig2
    L = mp.log1p(-gl)  # ln q < 0
    one_minus_qt = -mp.expm1(tau * L)
    one_minus_q2t = -mp.expm1(2 * tau * L)
    qt = mp.exp(tau * L)
    Z = a * qt + s * one_minus_qt / gl
    S = s02 * qt * qt + sig2 * one_minus_q2t / (gl * (2 - gl))
    return Z, S


def _const_candidates(sch: _Schedule, unit_sigma: bool) -> list[int]:
    """Horizons among which the minimum of Z_tau^2/S_tau lies (constant schedule)."""
    T = sch.T
    start = 0 if (sch.sigma0 > 0 and not unit_sigma) else 1
    cands = {start, T}
    with mp.workdps(working_digits()):
        a = 2 * sch.C0 + sch.slack
        s = 2 * sch.gamma * sch.C1 + sch.slack
        gl = sch.gamma * sch.lam
        sig2 = mpf(1) if unit_sigma else sch.sigma ** 2
        s02 = mpf(0) if unit_sigma else sch.sigma0 ** 2
        crit = None
        if sig2 == 0:  # sigma = 0 (initial noise only): Z/sqrt(S) grows with tau, tau = 0 is best
            pass
        elif gl == 0:
            if s > 0:
                crit = a / s - 2 * s02 / sig2  # root of d/dtau ln((a + s tau)^2 / (s02 + sig2 tau))
        elif gl < 1 and s > 0:
            # in u = q^tau, with b = s/(1-q) the fixed point of z -> q z + s and
            # c = sig2/(1-q^2): Z = b + (a - b) u, S = c + (s02 - c) u^2; the one critical point
            # is u* = (1 - a/b) / (1 - s02/c), written without cancellation for tiny gamma*lam
            x = a * gl / s
            y = s02 * gl * (2 - gl) / sig2

            def ln_abs_one_minus(v):
                return mp.log1p(-v) if v < 1 else mp.log(v - 1)
            if (x - 1) * (y - 1) > 0:
                ln_u = ln_abs_one_minus(x) - ln_abs_one_minus(y)
                if ln_u < 0:
                    crit = ln_u / mp.log1p(-gl)
        if crit is not None and crit > start:
            if crit < T:
                lo = int(mp.floor(crit))
                cands.update({max(lo, start), min(lo + 1, T)})
    return sorted(cands)


# ----------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PabiBound:
    """The amplification-by-iteration Renyi bound ``D_alpha <= alpha * rho`` and how it was found.

    Attributes:
        rho: rho_PABI = Z_tau^2 / (2 S_tau), rounded up.
        horizon: the horizon tau at which the shift reaches zero (steps after it are
            post-processing).
        Z: Z_tau (total shift to absorb, rounded up).
        S: S_tau (weighted noise variance, rounded down).
    """
    rho: object
    horizon: int
    Z: object
    S: object


def _best_horizon(sch: _Schedule, unit_sigma: bool) -> int:
    if sch.constant:
        with mp.workdps(working_digits()):
            vals = [(_ratio(*_const_ZS(sch, tau, unit_sigma)), tau)
                    for tau in _const_candidates(sch, unit_sigma)]
        return min(vals)[1]
    return _argmin_loop(sch, unit_sigma)


def _ZS_at(sch: _Schedule, tau: int, unit_sigma: bool = False):
    if sch.constant:
        return _const_ZS(sch, tau, unit_sigma)
    for k, Z, S in _loop_values(sch, tau, unit_sigma):
        if k == tau:
            return Z, S
    raise AssertionError("unreachable")


@entry_point
def pabi_bound(sigma, T, C0, C1, gamma, lam=0.0, *, sigma0=0.0,
                shift_slack=0.0, as_mpf: bool = False) -> PabiBound:
    """Renyi bound of noisy gradient-clipped fine-tuning by amplification by iteration.

    ``D_alpha(x_T || x_T') <= alpha * rho`` for every alpha > 1, both directions, with

        rho = 1/2 min_{tau <= T} Z_tau^2 / S_tau

    (module docstring; Feldman et al. 2018, arXiv:1808.06651 v1, Thm 22 with the shift-reduction
    Lemma 20; Koloskova et al. 2025 for the non-convex use; the minimum over horizons keeps every
    intermediate shift nonnegative).

    Args:
        sigma: noise std added to the parameters at each step (scalar or length-T sequence).
        T: number of noisy steps (>= 1).
        C0: radius the trained model is clipped to before unlearning (start diameter 2*C0).
        C1: gradient clipping radius (scalar or sequence).
        gamma: learning rate (scalar or sequence).
        lam: L2 regularisation (weight decay) coefficient (scalar or sequence), gamma*lam <= 1.
        sigma0: std of the optional Gaussian noise added to the clipped model before step 0.
        shift_slack: extra additive shift (>= 0) per step and on the start diameter, covering
            what the exact model leaves out, e.g. the float32 rounding of each step (THEORY.md
            section 8, "Finite precision"): s_t = 2 gamma_t C1_t + shift_slack,
            Z_0 = 2 C0 + shift_slack.
        as_mpf: return mpf values instead of safely rounded floats.

    Returns:
        :class:`PabiBound` with rho rounded up, the horizon, Z rounded up and S rounded down.

    >>> b = pabi_bound(1.0, 100, C0=1.0, C1=1.0, gamma=0.01)
    >>> b.horizon, round(b.rho, 6)
    (100, 0.08)
    """
    sch = _schedule(sigma, T, C0, C1, gamma, lam, sigma0, shift_slack=shift_slack)
    tau = _best_horizon(sch, unit_sigma=False)
    rho = rigorous(lambda: _ratio(*_ZS_at(sch, tau)) / 2, "up", what="rho_PABI")
    Z = rigorous(lambda: _ZS_at(sch, tau)[0], "up", what="Z_tau")
    S = rigorous(lambda: _ZS_at(sch, tau)[1], "down", what="S_tau")
    return PabiBound(rho=finish(rho, "up", as_mpf), horizon=tau,
                     Z=finish(Z, "up", as_mpf), S=finish(S, "down", as_mpf))


@entry_point
def pabi_rho(sigma, T, C0, C1, gamma, lam=0.0, *, sigma0=0.0,
              shift_slack=0.0, as_mpf: bool = False):
    """rho_PABI of :func:`pabi_bound` alone (``D_alpha <= alpha * rho``), rounded up.

    >>> round(pabi_rho(0.5, 10, C0=1.0, C1=1.0, gamma=0.1), 6)
    3.2
    """
    sch = _schedule(sigma, T, C0, C1, gamma, lam, sigma0, shift_slack=shift_slack)
    tau = _best_horizon(sch, unit_sigma=False)
    rho = rigorous(lambda: _ratio(*_ZS_at(sch, tau)) / 2, "up", what="rho_PABI")
    return finish(rho, "up", as_mpf)


@entry_point
def pabi_sigma(rho_max, T, C0, C1, gamma, lam=0.0, *, sigma0=0.0,
                shift_slack=0.0, as_mpf: bool = False):
    """Smallest constant noise std sigma with rho_PABI(sigma) <= rho_max, rounded up.

    Without initial noise rho_PABI scales as 1/sigma^2 and the minimising horizon does not depend
    on sigma, so

        sigma^2 = min_tau Z_tau^2 / (2 rho_max S~_tau),   S~_tau = S_tau at sigma = 1

    (for a constant schedule with lam = 0 and tau = T this is sigma^2 = 2 (C0 + gamma C1 T)^2 /
    (rho_max T)). With ``sigma0 > 0`` sigma is found by bisection on ln sigma; the returned value is
    the bracket end that satisfies the bound (0.0 if the initial noise alone suffices).
    Schedules may vary gamma, C1 and lam per step; sigma is the one constant std.

    >>> round(pabi_sigma(0.08, 100, C0=1.0, C1=1.0, gamma=0.01), 9)
    1.0
    """
    rho_max = check_positive("rho_max", rho_max)
    sch = _schedule(None, T, C0, C1, gamma, lam, sigma0, sigma_required=False,
                    shift_slack=shift_slack)
    if sch.sigma0 == 0:
        tau = _best_horizon(sch, unit_sigma=True)

        def compute():
            Z, S1 = _ZS_at(sch, tau, unit_sigma=True)
            return mp.sqrt(Z * Z / (2 * rho_max * S1))
        return finish(rigorous(compute, "up", what="sigma"), "up", as_mpf)

    def rho_of(sig):
        s = _Schedule(sch.T, sch.C0, sch.C1, sch.gamma, sch.lam, sig, sch.sigma0, sch.slack)
        t = _best_horizon(s, unit_sigma=False)
        return rigorous(lambda: _ratio(*_ZS_at(s, t)) / 2, "up", what="rho_PABI")

    # the initial noise alone (horizon 0) may already suffice
    if rigorous(lambda: (2 * sch.C0 + sch.slack) ** 2 / (2 * sch.sigma0 ** 2), "up") <= rho_max:
        return finish(mpf(0), "up", as_mpf)
    with mp.workdps(working_digits()):
        hi_sch = _Schedule(sch.T, sch.C0, sch.C1, sch.gamma, sch.lam, None, mpf(0), sch.slack)
        tau = _best_horizon(hi_sch, unit_sigma=True)
        Z, S1 = _ZS_at(hi_sch, tau, unit_sigma=True)
        hi = mp.sqrt(Z * Z / (2 * rho_max * S1)) * (1 + mpf(10) ** -12)
    lo = hi
    while rho_of(lo) <= rho_max:
        lo = lo / 4
        if lo < hi * mpf(10) ** -30:
            return finish(lo, "up", as_mpf)
    return finish(_bisect_log(lambda x: rho_of(x) <= rho_max, lo, hi), "up", as_mpf)


def _bisect_log(ok, lo, hi, rel=mpf(10) ** -13):
    """Smallest x in (lo, hi] with ok(x) (monotone: ok(hi) true, ok(lo) false): returns hi end."""
    with mp.workdps(working_digits()):
        lo, hi = mpf(lo), mpf(hi)
        while hi - lo > rel * hi:
            mid = mp.sqrt(lo * hi) if lo > 0 else hi / 2
            if ok(mid):
                hi = mid
            else:
                lo = mid
        return hi


@entry_point
def pabi_steps(rho_max, sigma, C0, C1, gamma, lam=0.0, *, sigma0=0.0, max_steps: int = 10**12,
               shift_slack=0.0):
    """Fewest steps T with rho_PABI <= rho_max for a constant schedule.

    rho_PABI(T) is non-increasing in T (a minimum over horizons tau <= T), so the answer is the
    first horizon tau with Z_tau^2 / (2 S_tau) <= rho_max. Z_tau^2/S_tau has at most one interior
    minimum; the search runs on the decreasing part.

    Raises:
        UnreachableTargetError: when no T reaches rho_max. ``best`` is the smallest rho_PABI over
            all T (the bound's floor, rounded down, i.e. the infimum: for lam > 0 with
            C0*lam >= C1 it is approached as T grows but not reached).
    """
    rho_max = check_positive("rho_max", rho_max)
    sigma = check_positive("sigma", sigma)
    for name, v in (("C1", C1), ("gamma", gamma), ("lam", lam)):
        if is_sequence(v):
            raise InvalidParameterError(f"{name} must be a scalar when solving for the number of "
                                        f"steps, got a sequence")
    sch = _schedule(sigma, max_steps, C0, C1, gamma, lam, sigma0, shift_slack=shift_slack)

    def f(tau):
        return rigorous(lambda: _ratio(*_const_ZS(sch, tau)) / 2, "up", what="rho_PABI")

    if sch.sigma0 > 0 and f(0) <= rho_max:
        return 1
    cands = _const_candidates(sch, unit_sigma=False)
    best_tau = min(cands, key=lambda t: f(t))
    if f(best_tau) > rho_max:
        # floor: the minimum over all tau, or the tau -> infinity limit when decreasing throughout
        with mp.workdps(working_digits()):
            gl = sch.gamma * sch.lam
            floor = f(best_tau)
            if gl > 0 and best_tau == max_steps:
                b = (2 * sch.gamma * sch.C1 + sch.slack) / gl
                floor = b * b * gl * (2 - gl) / (2 * sch.sigma ** 2)
        raise UnreachableTargetError(
            f"no number of steps reaches rho <= {mp.nstr(rho_max, 10)}: the bound's floor over all "
            f"T is rho = {mp.nstr(floor, 10)} (raise sigma or lower C1*gamma)",
            best=to_float(floor, "down"))
    lo, hi = 0, best_tau  # f(hi) <= rho_max; find the first tau in (0, hi] with f <= rho_max
    if f(1) <= rho_max:
        return 1
    lo = 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if f(mid) <= rho_max:
            hi = mid
        else:
            lo = mid
    return hi


@entry_point
def shift_path(sigma, T, C0, C1, gamma, lam=0.0, *, sigma0=0.0, horizon=None, shift_slack=0.0):
    """Cauchy-Schwarz shift allocation for one horizon (floats, for inspection and tests).

    For horizon tau the shifts ``a_t = Z_tau w_t sigma_t^2 / S_tau`` (``w_t`` the product of the
    contractions after step t) absorb the whole shift at cost ``Z_tau^2 / S_tau``; ``z`` is the
    remaining shift ``z_0 = 2 C0 - a_init``, ``z_{t+1} = rho_t z_t + s_t - a_t``. At the horizon
    chosen by :func:`pabi_bound` (the default) every ``z_t >= 0``.

    Returns:
        dict with ``horizon``, ``a_init`` (shift absorbed by the initial noise), ``a`` (list of
        tau shifts), ``z`` (list of tau + 1 remaining shifts) and ``cost`` (sum a_t^2/sigma_t^2).
    """
    sch = _schedule(sigma, T, C0, C1, gamma, lam, sigma0, shift_slack=shift_slack)
    tau = _best_horizon(sch, unit_sigma=False) if horizon is None else \
        check_int("horizon", horizon, low=0 if sch.sigma0 > 0 else 1, high=sch.T)
    with mp.workdps(working_digits()):
        Z, S = _ZS_at(sch, tau)
        qs = [abs(1 - sch.at("gamma", t) * sch.at("lam", t)) for t in range(tau)]
        w = [mpf(1)] * (tau + 1)  # w[t] = prod_{t<k<tau} q_k for step t; w[tau] unused
        acc = mpf(1)
        for t in range(tau - 1, -1, -1):
            w[t] = acc
            acc *= qs[t]
        w_init = acc  # product of all contractions: weight of the initial-noise shift
        a_init = Z * w_init * sch.sigma0 ** 2 / S
        a = [Z * w[t] * sch.at("sigma", t) ** 2 / S for t in range(tau)]
        z = [2 * sch.C0 + sch.slack - a_init]
        for t in range(tau):
            z.append(qs[t] * z[-1] + sch.shift(t) - a[t])
        cost = (a_init ** 2 / sch.sigma0 ** 2 if sch.sigma0 > 0 else 0) + sum(
            (a[t] ** 2 / sch.at("sigma", t) ** 2 for t in range(tau) if a[t] != 0), mpf(0))
        return {"horizon": tau, "a_init": float(a_init), "a": [float(x) for x in a],
                "z": [float(x) for x in z], "cost": float(cost)}
