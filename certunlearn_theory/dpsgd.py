"""DP-SGD with group privacy: the baseline for forgetting k points by training privately.

Per step, DP-SGD releases a Poisson-subsampled Gaussian mechanism (sampling rate q, noise
multiplier sigma = noise std / clipping norm). Its Renyi divergence at order alpha > 1
(add/remove neighbours) is (Mironov, Talwar, Zhang 2019, arXiv:1908.10530, Sec. 3.3)

    eps(alpha) = ln(A_alpha) / (alpha - 1),
    A_alpha = E_{z ~ N(0, sigma^2)} [((1 - q) + q exp((2z - 1) / (2 sigma^2)))^alpha],

which at integer orders is the sum of positive terms
``sum_{k=0}^{alpha} C(alpha, k) (1 - q)^(alpha - k) q^k exp((k^2 - k) / (2 sigma^2))``, evaluated
exactly in mpmath, and at fractional orders the integral itself, by tanh-sinh quadrature at two
precisions, raised by ten times the quadrature's error estimates (the same A_alpha that
dp_accounting sums as a series of absolute values, which can overstate it by ~0.5% and drops
orders where its series does not converge). T steps compose additively (T eps(alpha)). The
conversion to (eps1, delta1) is the improved one of :mod:`certunlearn_theory.renyi`, minimised
over ``DPSGD_ORDERS``: 1.05 to 10.95 in steps of 0.05 (twice as dense as dp_accounting's
default), the integers 2..64 and larger integers up to 131072 (a group of k needs orders near
ln(1/delta) k/eps). Integer orders alone were 6-12% looser than dp_accounting's default
accountant at small orders (noise multiplier 0.8, q = 0.05, 500 steps, delta = 1e-6: 15.83 against
14.92; now 14.85).

A group of k examples (THEORY.md section 7; Dwork & Roth 2014, Thm 2.2 by induction on k) gets

    (k eps1, delta1 sum_{i<k} e^(i eps1)) = (k eps1, delta1 (e^(k eps1) - 1) / (e^eps1 - 1)),

with the whole geometric sum kept (dropping it understates delta by orders of magnitude for large
k). :func:`dpsgd_epsilon` searches the per-example eps1 whose group delta meets the target;
:func:`dpsgd_noise_multiplier` uses the split eps1 = eps/k, delta1 = delta (e^eps1 - 1)/(e^eps - 1).

Speed: orders are selected with a float64 log-space evaluation (trapezoid rule at fractional
orders); the guarantee itself is computed in mpmath at the selected order (and its integer
neighbours), rounded up: any order gives a valid bound. numpy is imported on first use only.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from mpmath import mp, mpf

from ._numerics import (
    GUARD_DIGITS,
    check_delta,
    check_epsilon,
    check_int,
    check_positive,
    check_real,
    entry_point,
    finish,
    to_float,
    widen,
    working_digits,
)
from .errors import InvalidParameterError, UnreachableTargetError
from .renyi import RenyiCurve, renyi_to_delta, renyi_to_dp

__all__ = ["DPSGD_ORDERS", "DpsgdBound", "subsampled_gaussian_rdp", "dpsgd_bound",
           "dpsgd_epsilon", "dpsgd_noise_multiplier", "group_privacy", "group_split"]

_INTEGER_ORDERS = tuple(list(range(2, 65)) + [72, 80, 96, 112, 128, 160, 192, 256, 320, 384, 512,
                                              768, 1024, 1536, 2048, 3072, 4096, 6144, 8192,
                                              12288, 16384, 24576, 32768, 49152, 65536, 98304,
                                              131072])
# fractional orders 1.05, 1.10, ..., 10.95 (twice as dense as dp_accounting's 1.1, 1.2, ...)
_FRACTIONAL_ORDERS = tuple(mpf(20 + x) / 20 for x in range(1, 200) if x % 20)
DPSGD_ORDERS = tuple(sorted(_FRACTIONAL_ORDERS + tuple(mpf(a) for a in _INTEGER_ORDERS)))
_NEIGHBOURS = 3  # exact evaluation at the best float order and this many on each side
_LARGE_ORDER = 2048  # beyond this only the best order itself is evaluated exactly


def _is_integer(alpha) -> bool:
    return alpha == int(alpha)


def _check_orders(orders):
    if orders is None:
        return DPSGD_ORDERS
    out = set()
    for a in orders:
        value = check_real("order", a, low=1, low_open=True)
        if value > _INTEGER_ORDERS[-1] and not _is_integer(value):
            raise InvalidParameterError(f"order must be an integer above {_INTEGER_ORDERS[-1]} "
                                        f"(fractional orders up to it), got {a!r}")
        out.add(value)
    if not out:
        raise InvalidParameterError("orders must contain at least one real order > 1")
    return tuple(sorted(out))


def _validate(noise_multiplier, sampling_rate, steps):
    nm = check_positive("noise_multiplier", noise_multiplier)
    q = check_real("sampling_rate", sampling_rate, low=0, high=1, low_open=True)
    steps = check_int("steps", steps, low=1)
    return nm, q, steps


# ----------------------------------------------------------------------------------------------
# Exact RDP (mpmath) and the float64 order selection
# ----------------------------------------------------------------------------------------------

def _log_a_mp(alpha: int, q: mpf, nm: mpf) -> mpf:
    """ln A_alpha at an integer order, at the current precision: a sum of alpha + 1 positive
    terms, no cancellation.

    Terms t_k = C(alpha, k) (1 - q)^(alpha - k) q^k e^((k^2 - k)/(2 nm^2)) by the recurrence
    t_{k+1} = t_k (alpha - k)/(k + 1) (q/(1 - q)) e^(k/nm^2): multiplications only, so large
    orders (10^5 terms) stay cheap; every term is kept (no truncation).
    """
    alpha = int(alpha)
    if q == 1:
        return alpha * (alpha - 1) / (2 * nm * nm)
    ratio = q / (1 - q)
    growth = mp.exp(1 / (nm * nm))
    term = mpf(1)  # t_k / (1 - q)^alpha
    power = mpf(1)  # e^(k / nm^2)
    total = mpf(1)
    for k in range(alpha):
        term = term * (alpha - k) / (k + 1) * ratio * power
        power = power * growth
        total += term
    return alpha * mp.log1p(-q) + mp.log(total)


def _log_a_quad(alpha: mpf, q: mpf, nm: mpf):
    """ln A_alpha at a real order by tanh-sinh quadrature at the current precision.

    A_alpha = E_{z ~ N(0, nm^2)} [((1 - q) + q e^((2z - 1)/(2 nm^2)))^alpha] (Mironov, Talwar,
    Zhang 2019, Sec. 3.3; the binomial sum is its value at integer orders). The integrand is
    smooth and positive with one bump near 0 and one near alpha; the intervals are split there.
    Returns (ln A, relative error estimate of A).
    """
    if q == 1:
        return alpha * (alpha - 1) / (2 * nm * nm), mpf(0)
    two_var = 2 * nm * nm
    log_norm = -mp.log(nm) - mp.log(2 * mp.pi) / 2
    log_keep, log_q = mp.log1p(-q), mp.log(q)

    def integrand(z):
        x = log_q + (2 * z - 1) / two_var
        mix = x + mp.log1p(mp.exp(log_keep - x)) if x > log_keep else \
            log_keep + mp.log1p(mp.exp(x - log_keep))
        return mp.exp(log_norm - z * z / two_var + alpha * mix)

    width = 12 * nm + 1
    points = sorted({-width, mpf(0), mpf(1) / 2, alpha, alpha + width})
    value, error = mp.quad(integrand, [mp.ninf] + points + [mp.inf], error=True)
    return mp.log(value), error / value


def _rdp_up(alpha, q: mpf, nm: mpf, steps: int) -> mpf:
    """steps * ln(A_alpha)/(alpha - 1) rounded up, at P + GUARD_DIGITS digits.

    Integer orders: the exact binomial sum, widened by a relative 10^-(P-10). Real orders: the
    quadrature at P + GUARD_DIGITS and P + GUARD_DIGITS + 15 digits; the larger value is raised
    by ten times (the two estimated quadrature errors + the difference of the two values), then
    widened like the integer case.
    """
    digits = working_digits() + GUARD_DIGITS
    if _is_integer(alpha):
        with mp.workdps(digits):
            return widen(steps * _log_a_mp(int(alpha), q, nm) / (alpha - 1), "up")
    with mp.workdps(digits + 15):
        fine, fine_err = _log_a_quad(alpha, q, nm)
    with mp.workdps(digits):
        coarse, coarse_err = _log_a_quad(alpha, q, nm)
        slack = 10 * (abs(fine - coarse) + abs(fine_err) + abs(coarse_err))
        log_a = max(fine, coarse) + slack + mpf(10) ** -(digits - 5) * (1 + abs(fine))
        return widen(steps * log_a / (alpha - 1), "up")


@entry_point
def subsampled_gaussian_rdp(order, noise_multiplier, sampling_rate, *, steps=1, as_mpf=False):
    """Renyi DP of ``steps`` Poisson-subsampled Gaussian steps at a real order > 1, rounded up.

    ``steps * ln(A_alpha)/(alpha - 1)`` with ``A_alpha`` the binomial sum of the module docstring
    at integer orders (a sum of positive terms) and its integral form at fractional orders
    (tanh-sinh quadrature at two precisions, raised by ten times the error estimates), computed
    at the working precision plus guard digits and widened upward by a relative 10^-(P-10)
    (Mironov, Talwar, Zhang 2019, Sec. 3.3).

    >>> round(subsampled_gaussian_rdp(2, 1.0, 1.0), 12)  # q = 1: the Gaussian, alpha/(2 sigma^2)
    1.0
    """
    (alpha,) = _check_orders([order])
    nm, q, steps = _validate(noise_multiplier, sampling_rate, steps)
    return finish(_rdp_up(alpha, q, nm, steps), "up", as_mpf)


def _log_binomials(alpha: int):
    """ln C(alpha, k), k and alpha - k for k = 0..alpha (float64, cumulative sums)."""
    import numpy as np
    k = np.arange(alpha + 1, dtype=float)
    steps = np.log(alpha - k[:-1]) - np.log(k[:-1] + 1)
    return np.concatenate(([0.0], np.cumsum(steps))), k, alpha - k


_log_binomials = functools.lru_cache(maxsize=256)(_log_binomials)


def _log_a_frac_float(alpha: float, q: float, nm: float) -> float:
    """ln A_alpha at a real order in float64 (trapezoid rule in log space; selection only)."""
    import numpy as np
    width = 12 * nm + 1
    z = np.linspace(-width, alpha + width, 4001)
    x = math.log(q) + (2 * z - 1) / (2 * nm * nm)
    g = -z * z / (2 * nm * nm) + alpha * np.logaddexp(math.log1p(-q), x)
    top = g.max()
    dz = z[1] - z[0]
    return top + math.log(np.exp(g - top).sum() * dz) - math.log(nm * math.sqrt(2 * math.pi))


def _rdp_float(nm: float, q: float, orders):
    """Per-step RDP at the given orders in float64 log space (order selection only)."""
    import numpy as np
    if q == 1.0:
        return np.array([float(a) / (2 * nm * nm) for a in orders], dtype=float)
    l1, lq, inv = math.log1p(-q), math.log(q), 1 / (2 * nm * nm)
    out = np.empty(len(orders))
    for i, a in enumerate(orders):
        if _is_integer(a):
            log_binom, k, a_minus_k = _log_binomials(int(a))
            terms = log_binom + a_minus_k * l1 + k * lq + k * (k - 1) * inv
            top = terms.max()
            out[i] = (top + math.log(np.exp(terms - top).sum())) / (int(a) - 1)
        else:
            out[i] = _log_a_frac_float(float(a), q, nm) / (float(a) - 1)
    return out


def _eps_float(total_rdp, orders, delta: float) -> tuple[float, int]:
    """Improved conversion in float64 over the orders: (eps, index of the best order)."""
    import numpy as np
    a = np.asarray([float(x) for x in orders], dtype=float)
    eps = total_rdp + np.log1p(-1 / a) - (math.log(delta) + np.log(a)) / (a - 1)
    i = int(np.argmin(eps))
    return max(float(eps[i]), 0.0), i


def _log_delta_float(total_rdp, orders, eps: float) -> tuple[float, int]:
    import numpy as np
    a = np.asarray([float(x) for x in orders], dtype=float)
    logd = (a - 1) * (total_rdp - eps + np.log1p(-1 / a)) - np.log(a)
    i = int(np.argmin(logd))
    return min(float(logd[i]), 0.0), i


def _log_group_factor(eps1: float, k: int) -> float:
    """ln((e^(k eps1) - 1) / (e^eps1 - 1)) (= ln k at eps1 = 0)."""
    if k == 1:
        return 0.0
    if eps1 == 0:
        return math.log(k)

    def log_expm1(x):
        return x + math.log(-math.expm1(-x)) if x > 1 else math.log(math.expm1(x))
    return log_expm1(k * eps1) - log_expm1(eps1)


def _exact_curve(nm: mpf, q: mpf, steps: int, orders, centre: int):
    """Exact (rounded up) RDP at the best float order and its integer neighbours.

    Fractional orders are evaluated by quadrature, so only the best one is: its integer
    neighbours (exact binomial sums, cheap) guard against a float selection error.
    """
    reach = 0 if orders[centre] >= _LARGE_ORDER else _NEIGHBOURS
    lo, hi = max(0, centre - reach), min(len(orders), centre + reach + 1)
    chosen = [a for i, a in enumerate(orders[lo:hi], lo) if i == centre or _is_integer(a)]
    values = {a: _rdp_up(a, q, nm, steps) for a in chosen}
    return RenyiCurve.from_orders(values), values


def _order_key(alpha):
    """An order as recorded: an int for integer orders, a float otherwise."""
    return int(alpha) if _is_integer(alpha) else float(alpha)


def _group_factor_mp(eps1: mpf, k: int) -> mpf:
    with mp.workdps(working_digits() + GUARD_DIGITS):
        if k == 1:
            return mpf(1)
        if eps1 == 0:
            return mpf(k)
        return widen(mp.expm1(k * eps1) / mp.expm1(eps1), "up")


# ----------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------

@entry_point
def group_privacy(eps1, delta1, group_size, *, as_mpf=False):
    """Lift a per-example (eps1, delta1) guarantee to a group of k examples, rounded UP.

    ``(k eps1, delta1 sum_{i<k} e^(i eps1)) = (k eps1, delta1 (e^(k eps1) - 1)/(e^eps1 - 1))``
    (Dwork & Roth 2014, Thm 2.2, induction over k neighbouring datasets; THEORY.md section 7).
    The delta is capped at 1.

    >>> group_privacy(0.5, 1e-6, 1)
    (0.5, 1e-06)
    """
    eps1 = check_epsilon(eps1, "eps1")
    delta1 = check_real("delta1", delta1, low=0, high=1)
    k = check_int("group_size", group_size, low=1)
    with mp.workdps(working_digits() + GUARD_DIGITS):
        eps = k * eps1
        delta = min(mpf(1), delta1 * _group_factor_mp(eps1, k))
        if k > 1:
            eps, delta = widen(eps, "up"), min(mpf(1), widen(delta, "up"))
    return finish(eps, "up", as_mpf), finish(delta, "up", as_mpf)


@entry_point
def group_split(eps, delta, group_size, *, as_mpf=False):
    """Per-example target (eps1, delta1) whose group-of-k lift is exactly (eps, delta).

    ``eps1 = eps/k`` and ``delta1 = delta (e^eps1 - 1)/(e^eps - 1)`` (THEORY.md section 7; the
    whole geometric sum, not its largest term). Both are rounded DOWN (a smaller per-example
    target is safe).

    >>> e1, d1 = group_split(1.0, 1e-5, 6000)
    >>> round(e1 * 6000, 12), d1 < 1e-9
    (1.0, True)
    """
    eps = check_epsilon(eps)
    delta = check_delta(delta)
    k = check_int("group_size", group_size, low=1)
    with mp.workdps(working_digits() + GUARD_DIGITS):
        if k == 1:
            return finish(eps, "down", as_mpf), finish(delta, "down", as_mpf)
        eps1 = widen(eps / k, "down")
        delta1 = delta / k if eps == 0 else widen(delta * mp.expm1(eps1) / mp.expm1(eps), "down")
    return finish(eps1, "down", as_mpf), finish(delta1, "down", as_mpf)

@dataclass(frozen=True)
class DpsgdBound:
    """An (eps, delta) group guarantee of DP-SGD and its derivation.

    Attributes:
        eps: group epsilon, k * eps1, rounded up.
        delta: the target group delta.
        eps1, delta1: the per-example guarantee used (delta1 rounded up).
        group_size: k.
        orders: {order: total RDP at that order (rounded up)} evaluated exactly.
        order: the order achieving the per-example guarantee.
    """
    eps: float
    delta: float
    eps1: float
    delta1: float
    group_size: int
    orders: dict
    order: object


def _search_eps1(rdp_total, orders, delta: float, k: int) -> float:
    """Smallest eps1 (float search) with delta1(eps1) * group factor <= delta."""
    log_target = math.log(delta)

    def ok(e1):
        return _log_delta_float(rdp_total, orders, e1)[0] + _log_group_factor(e1, k) <= log_target

    hi = max(_eps_float(rdp_total, orders, delta / k)[0], 1e-12)
    # the group factor grows with eps1, so the crossing can move: grow until the condition holds
    for _ in range(200):
        if ok(hi):
            break
        hi *= 1.5
    else:
        raise UnreachableTargetError(
            f"no per-example epsilon gives group delta <= {delta} for k={k} with the orders used",
            best=None)
    lo = hi / 1.5
    while lo > 1e-300 and ok(lo):
        hi, lo = lo, lo / 1.5
    for _ in range(200):
        if hi - lo <= 1e-13 * hi:
            break
        mid = 0.5 * (lo + hi)
        if ok(mid):
            hi = mid
        else:
            lo = mid
    return hi


@entry_point
def dpsgd_bound(noise_multiplier, sampling_rate, steps, delta, *, group_size=1,
                orders=None) -> DpsgdBound:
    """(eps, delta) group guarantee of DP-SGD with its derivation (see :func:`dpsgd_epsilon`)."""
    nm, q, steps = _validate(noise_multiplier, sampling_rate, steps)
    delta_m = check_delta(delta)
    k = check_int("group_size", group_size, low=1)
    orders = _check_orders(orders)
    rdp_total = steps * _rdp_float(float(nm), float(q), orders)
    if k == 1:
        _, centre = _eps_float(rdp_total, orders, float(delta))
        curve, values = _exact_curve(nm, q, steps, orders, centre)
        eps, order = renyi_to_dp(curve, delta_m, with_order=True, as_mpf=True)
        return DpsgdBound(eps=to_float(eps, "up"), delta=float(delta), eps1=to_float(eps, "up"),
                          delta1=float(delta), group_size=1,
                          orders={_order_key(a): to_float(v, "up") for a, v in values.items()},
                          order=_order_key(order))
    eps1 = _search_eps1(rdp_total, orders, float(delta), k)
    _, centre = _log_delta_float(rdp_total, orders, eps1)
    curve, values = _exact_curve(nm, q, steps, orders, centre)
    log_target = mp.log(delta_m)
    bump = 1e-12
    for _ in range(60):
        e1 = mpf(eps1)
        delta1, order = renyi_to_delta(curve, e1, with_order=True, as_mpf=True)
        with mp.workdps(working_digits() + GUARD_DIGITS):
            group_delta = widen(delta1 * _group_factor_mp(e1, k), "up")
            if group_delta > 0 and mp.log(group_delta) <= log_target:
                eps = widen(k * e1, "up")
                return DpsgdBound(eps=to_float(eps, "up"), delta=float(delta),
                                  eps1=to_float(e1, "up"), delta1=to_float(delta1, "up"),
                                  group_size=k,
                                  orders={_order_key(a): to_float(v, "up")
                                          for a, v in values.items()},
                                  order=_order_key(order))
        eps1 *= 1 + bump
        bump *= 4
    raise UnreachableTargetError(f"could not certify group delta <= {delta} for k={k}")


@entry_point
def dpsgd_epsilon(noise_multiplier, sampling_rate, steps, delta, *, group_size=1, orders=None):
    """Epsilon of DP-SGD (Poisson sampling, Gaussian noise) for a group of k examples, rounded UP.

    Per-example RDP of the subsampled Gaussian at integer orders (Mironov, Talwar, Zhang 2019,
    exact binomial sum, composed over ``steps``), converted to (eps1, delta1) with the improved
    conversion (Canonne, Kamath, Steinke 2020, Prop. 12), lifted to the group by
    (k eps1, delta1 (e^(k eps1) - 1)/(e^eps1 - 1)) (THEORY.md section 7). For k > 1 the returned
    eps is k times the smallest eps1 (searched to a relative 1e-13) whose group delta is at most
    ``delta``; the final numbers are verified in mpmath.

    Args:
        noise_multiplier: noise std divided by the clipping norm, > 0.
        sampling_rate: Poisson sampling probability q in (0, 1].
        steps: number of steps, >= 1.
        delta: target (group) delta in (0, 1).
        group_size: k >= 1, the number of examples to protect together.
        orders: real orders > 1 to optimise over (default ``DPSGD_ORDERS``: 1.05 to 10.95 in
            steps of 0.05, the integers 2..64 and larger integers up to 131072).

    >>> dpsgd_epsilon(1.0, 0.01, 1000, 1e-5) > 0
    True
    """
    return dpsgd_bound(noise_multiplier, sampling_rate, steps, delta, group_size=group_size,
                       orders=orders).eps


@entry_point
def dpsgd_noise_multiplier(eps, delta, sampling_rate, steps, *, group_size=1, orders=None):
    """Smallest noise multiplier whose DP-SGD group guarantee is (eps, delta), rounded UP.

    The target is split as eps1 = eps/k and delta1 = delta (e^eps1 - 1)/(e^eps - 1) (THEORY.md
    section 7, with the exact geometric sum), then the per-example noise is found by bisection on
    the noise multiplier (float search) and checked with :func:`dpsgd_epsilon`; the returned value
    is the bracket end whose certified epsilon is <= eps.

    >>> nm = dpsgd_noise_multiplier(1.0, 1e-5, 0.01, 1000)
    >>> dpsgd_epsilon(nm, 0.01, 1000, 1e-5) <= 1.0
    True
    """
    eps_m = check_epsilon(eps)
    if eps_m == 0:
        raise InvalidParameterError("eps must be > 0 for DP-SGD calibration, got 0")
    check_delta(delta)
    q = check_real("sampling_rate", sampling_rate, low=0, high=1, low_open=True)
    steps = check_int("steps", steps, low=1)
    k = check_int("group_size", group_size, low=1)
    orders = _check_orders(orders)
    eps1, delta1 = group_split(eps, delta, k)
    if delta1 <= 0:
        raise UnreachableTargetError(
            f"the per-example delta for k={k} underflows: (eps={eps}, delta={delta}) is out of "
            f"reach for this group size", best=None)

    def eps_of(nm):
        return _eps_float(steps * _rdp_float(nm, float(q), orders), orders, delta1)[0]

    lo, hi = 1e-3, 1.0
    while eps_of(hi) > eps1:
        lo, hi = hi, hi * 2
        if hi > 1e12:
            raise UnreachableTargetError("no noise multiplier below 1e12 reaches the target")
    while eps_of(lo) <= eps1 and lo > 1e-6:
        hi, lo = lo, lo / 2
    while hi - lo > 1e-12 * hi:
        mid = 0.5 * (lo + hi)
        if eps_of(mid) <= eps1:
            hi = mid
        else:
            lo = mid
    nm = hi
    step = 1e-12
    for _ in range(40):
        # the float64 search can be off by ~1e-9 at orders near 10^5: grow the nudge quickly
        if dpsgd_epsilon(nm, sampling_rate, steps, delta, group_size=k, orders=orders) <= eps:
            return nm
        nm = math.nextafter(nm * (1 + step), math.inf)
        step *= 8
    raise UnreachableTargetError("could not certify a noise multiplier for the target")
