"""Renyi-DP curves and their conversion to (epsilon, delta) guarantees.

A :class:`RenyiCurve` is an upper bound ``D_alpha(P || Q) <= eps(alpha)`` holding for every order
``alpha > 1`` (and both directions). Two conversions to approximate DP are offered
(THEORY.md section 4), with ``L = ln(1/delta)``:

* ``"mironov"`` (Mironov 2017, Proposition 3): ``eps = eps(alpha) + L/(alpha - 1)``;
* ``"improved"`` (Canonne, Kamath, Steinke 2020, Proposition 12; Balle et al. 2020, Theorem 21;
  the rule of ``dp_accounting.rdp.compute_epsilon``):
  ``eps = eps(alpha) + ln(1 - 1/alpha) - (ln delta + ln alpha)/(alpha - 1)``, never larger.

Any single order gives a valid guarantee, so an approximate minimiser is safe: only the value at
the chosen order has to be rounded up, which is what every function here does. Linear curves
``eps(alpha) = rho alpha`` (privacy amplification by iteration) are optimised over real ``alpha``
by closed forms or a one-dimensional Newton iteration to full precision, never over a grid. Curves
known at a finite set of orders are optimised over exactly those orders.
"""
from __future__ import annotations

import math
from typing import Callable, Mapping, Optional, Tuple

from mpmath import mp, mpf

from ._numerics import (
    GUARD_DIGITS,
    bracketed_newton,
    check_delta,
    check_epsilon,
    check_int,
    check_nonnegative,
    check_positive,
    check_real,
    entry_point,
    finish,
    to_float,
    widen,
    working_digits,
)
from .divergences import renyi_coefficient_up
from .errors import InvalidParameterError

__all__ = ["RenyiCurve", "renyi_to_dp", "renyi_to_delta", "linear_rho_max"]

_CONVERSIONS = ("improved", "mironov")


def _check_conversion(conversion) -> str:
    if conversion not in _CONVERSIONS:
        raise InvalidParameterError(
            f"conversion must be one of {', '.join(repr(c) for c in _CONVERSIONS)}, "
            f"got {conversion!r}")
    return conversion


def _exact_sum(a: mpf, b: mpf) -> mpf:
    return mp.fadd(a, b, exact=True)


def _exact_product(a: mpf, b: mpf) -> mpf:
    return mp.fmul(a, b, exact=True)


def _order_from_gap(u: mpf) -> mpf:
    """alpha = 1 + u exactly, so that alpha - 1 recovers u even for u = 1e-300.

    Gaps below 2^(-4 prec) are raised to it (an exact 1 + e^(-10^100) does not fit in memory).
    Any order gives a valid bound, and such an order only arises where the bound is trivial
    (e.g. delta at an eps far below rho).
    """
    return mp.fadd(1, max(u, mpf(2) ** (-4 * mp.prec)), exact=True)


def _gap(alpha: mpf) -> mpf:
    """alpha - 1 exactly."""
    return mp.fsub(alpha, 1, exact=True)


def _log_one_minus_inverse(u: mpf) -> mpf:
    """ln(1 - 1/alpha) = ln(u/(1+u)) = -log1p(1/u), without cancellation for any u > 0."""
    return -mp.log1p(1 / u)


class RenyiCurve:
    """An immutable Renyi-DP curve ``alpha -> eps(alpha)``, ``alpha > 1``.

    Build one with :meth:`linear`, :meth:`gaussian`, :meth:`from_orders` or :meth:`from_function`;
    ``a + b`` is the curve of the composition (sum of the curves, Mironov 2017, Proposition 1),
    ``k * a`` the k-fold composition. A curve has a linear part ``rho * alpha`` (exact, ``rho``
    rounded up when derived from a mechanism), optionally values at a finite set of orders (then
    the curve is only known, and only converted, at those orders) and optionally callables
    evaluated at any real order. Calling the curve evaluates it: ``curve(alpha)`` (an ``mpf``).

    >>> c = RenyiCurve.linear(0.5) + RenyiCurve.gaussian(1.0, 1.0)
    >>> c.rho, c.is_linear
    (mpf('1.0'), True)
    """

    __slots__ = ("_rho", "_orders", "_functions")
    _rho: mpf
    _orders: Optional[Tuple[Tuple[mpf, mpf], ...]]
    _functions: Tuple[Callable, ...]

    def __init__(self, *, _rho=mpf(0), _orders=None, _functions=()):
        # an mpf keeps its own precision: mpf(x) would round it to the ambient mp.prec
        object.__setattr__(self, "_rho", _rho if isinstance(_rho, mpf) else mpf(_rho))
        object.__setattr__(self, "_orders", _orders)
        object.__setattr__(self, "_functions", tuple(_functions))

    def __setattr__(self, name, value):
        raise AttributeError("RenyiCurve is immutable")

    # constructors -----------------------------------------------------------------------------
    @classmethod
    @entry_point
    def linear(cls, rho) -> "RenyiCurve":
        """The curve ``eps(alpha) = rho * alpha``, ``rho >= 0`` (what amplification by iteration gives)."""
        return cls(_rho=check_nonnegative("rho", rho))

    @classmethod
    @entry_point
    def gaussian(cls, sensitivity, sigma) -> "RenyiCurve":
        """Curve of the Gaussian mechanism: ``alpha * sensitivity^2 / (2 sigma^2)`` (Mironov 2017,
        Proposition 7); the coefficient is rounded up."""
        sensitivity = check_nonnegative("sensitivity", sensitivity)
        sigma = check_positive("sigma", sigma)
        return cls(_rho=renyi_coefficient_up(sensitivity, sigma))

    @classmethod
    @entry_point
    def from_orders(cls, values: Mapping) -> "RenyiCurve":
        """A curve known at finitely many orders: ``{alpha: eps_alpha}``.

        Orders must be finite reals > 1, values reals >= 0 (``inf`` allowed: the order is useless).
        Conversions minimise over these orders only, which is safe.
        """
        if not isinstance(values, Mapping) or len(values) == 0:
            raise InvalidParameterError(
                f"values must be a non-empty mapping {{order: epsilon}}, got {values!r}")
        orders = {}
        for alpha, eps in values.items():
            a = check_real("order", alpha, low=1, low_open=True)
            e = check_real(f"epsilon at order {alpha!r}", eps, low=0, allow_inf=True)
            orders[a] = e
        return cls(_orders=tuple(sorted(orders.items())))

    @classmethod
    @entry_point
    def from_function(cls, function: Callable) -> "RenyiCurve":
        """A curve given by ``function(alpha) -> eps(alpha)`` for every real ``alpha > 1``.

        The function receives an ``mpf`` and must return a real >= 0 (or ``inf``). Conversions
        search ``ln(alpha - 1)`` over [-12, 30] (coarse grid, then golden section); the value at
        the order found is exact for the curve given, so the result is valid, and it is the
        optimum whenever the converted objective is unimodal in that range.
        """
        if not callable(function):
            raise InvalidParameterError(f"function must be callable, got {function!r}")
        return cls(_functions=(function,))

    # properties --------------------------------------------------------------------------------
    @property
    def rho(self) -> mpf:
        """Coefficient of the linear part ``rho * alpha``."""
        return self._rho

    @property
    def orders(self):
        """The finite set of orders the curve is known at (a tuple), or ``None`` (all real orders)."""
        return None if self._orders is None else tuple(a for a, _ in self._orders)

    @property
    def is_linear(self) -> bool:
        """True when the curve is exactly ``rho * alpha`` at every real order."""
        return self._orders is None and not self._functions

    # algebra -----------------------------------------------------------------------------------
    @entry_point
    def __add__(self, other: "RenyiCurve") -> "RenyiCurve":
        if not isinstance(other, RenyiCurve):
            return NotImplemented
        rho = _exact_sum(self._rho, other._rho)
        if self._orders is None:
            orders = other._orders
        elif other._orders is None:
            orders = self._orders
        else:
            theirs = dict(other._orders)
            orders = tuple((a, _exact_sum(e, theirs[a]) if mp.isfinite(e) and mp.isfinite(theirs[a])
                            else mp.inf) for a, e in self._orders if a in theirs)
            if not orders:
                raise InvalidParameterError(
                    "cannot compose curves known at disjoint sets of orders: "
                    f"{self.orders} and {other.orders}")
        return RenyiCurve(_rho=rho, _orders=orders, _functions=self._functions + other._functions)

    @entry_point
    def __mul__(self, count) -> "RenyiCurve":
        if isinstance(count, RenyiCurve):
            return NotImplemented
        k = check_int("count", count, low=0)
        rho = _exact_product(self._rho, mpf(k))
        orders = None if self._orders is None else tuple(
            (a, _exact_product(e, mpf(k)) if mp.isfinite(e) else (mp.inf if k else mpf(0)))
            for a, e in self._orders)
        functions = self._functions * k if k else ()
        if k == 0:
            return RenyiCurve(_rho=mpf(0), _orders=None if orders is None else
                              tuple((a, mpf(0)) for a, _ in orders))
        return RenyiCurve(_rho=rho, _orders=orders, _functions=functions)

    __rmul__ = __mul__

    @entry_point
    def __call__(self, alpha) -> mpf:
        """``eps(alpha)``; for a curve known at finitely many orders, ``alpha`` must be one of them."""
        a = check_real("alpha", alpha, low=1, low_open=True, allow_inf=False)
        return self._value(a)

    def _value(self, alpha: mpf) -> mpf:
        """eps(alpha), summed exactly (no rounding at any precision)."""
        total = _exact_product(alpha, self._rho)
        if self._orders is not None:
            table = dict(self._orders)
            if alpha not in table:
                raise InvalidParameterError(
                    f"alpha must be one of the orders the curve is known at "
                    f"({', '.join(mp.nstr(a, 8) for a in table)}), got {mp.nstr(alpha, 15)}")
            total = _exact_sum(total, table[alpha])
        for function in self._functions:
            value = check_real(f"curve function value at alpha={mp.nstr(alpha, 10)}",
                               function(alpha), low=0, allow_inf=True)
            total = _exact_sum(total, value)
        return total

    # dunder helpers ----------------------------------------------------------------------------
    def __eq__(self, other):
        if not isinstance(other, RenyiCurve):
            return NotImplemented
        return (self._rho == other._rho and self._orders == other._orders
                and self._functions == other._functions)

    def __hash__(self):
        return hash((self._rho, self._orders, self._functions))

    def __repr__(self):
        parts = []
        if self._rho != 0 or (self._orders is None and not self._functions):
            parts.append(f"linear(rho={mp.nstr(self._rho, 17)})")
        if self._orders is not None:
            parts.append(f"orders({len(self._orders)})")
        if self._functions:
            parts.append(f"functions({len(self._functions)})")
        return f"RenyiCurve({' + '.join(parts)})"


def _check_curve(curve) -> RenyiCurve:
    if not isinstance(curve, RenyiCurve):
        raise InvalidParameterError(f"curve must be a RenyiCurve, got {curve!r} "
                                    f"of type {type(curve).__name__}")
    return curve


# ----------------------------------------------------------------------------------------------
# Per-order objectives: (value, bound on its absolute evaluation error) at the current precision
# ----------------------------------------------------------------------------------------------

def _epsilon_at(eps_alpha: mpf, alpha: mpf, log_inv_delta: mpf, conversion: str):
    """eps from eps(alpha) at one order; returns (value, error bound)."""
    if mp.isinf(alpha):
        return eps_alpha, mpf(0)
    u = _gap(alpha)
    terms: Tuple[mpf, ...]
    if conversion == "mironov":
        terms = (eps_alpha, log_inv_delta / u)
    else:
        terms = (eps_alpha, _log_one_minus_inverse(u), (log_inv_delta - mp.log1p(u)) / u)
    value = mp.fsum(terms)
    error = mp.fsum(abs(t) for t in terms) * mpf(10) ** (-(mp.dps - 5))
    return value, error


def _log_delta_at(eps_alpha: mpf, alpha: mpf, eps: mpf, conversion: str):
    """ln delta from eps(alpha) at one order for the target eps; returns (value, error bound)."""
    u = _gap(alpha)
    terms: Tuple[mpf, ...]
    if conversion == "mironov":
        terms = (u * eps_alpha, -u * eps)
    else:
        terms = (u * eps_alpha, -u * eps, u * _log_one_minus_inverse(u), -mp.log1p(u))
    value = mp.fsum(terms)
    error = mp.fsum(abs(t) for t in terms) * mpf(10) ** (-(mp.dps - 5)) * 4
    return value, error


def _round_up_value(value: mpf, error: mpf, digits: int) -> mpf:
    return widen(value + error, "up", digits)


# ----------------------------------------------------------------------------------------------
# Order search for linear and general curves
# ----------------------------------------------------------------------------------------------

def _expanding_bracket(g, start: mpf, increasing: bool):
    """Find lo < hi around the root of a monotone g (in ln(alpha - 1) space) starting at ``start``."""
    value = g(start)[0]
    step = mpf(1)
    # the root is above start if g(start) < 0 for increasing g (or > 0 for decreasing g)
    root_above = (value < 0) == increasing
    other = start + step if root_above else start - step
    for _ in range(2000):
        v = g(other)[0]
        if (v < 0) != (value < 0) or v == 0:
            break
        step *= 2
        other = start + step if root_above else start - step
    return (start, other) if root_above else (other, start)


def _linear_dp_order(rho: mpf, log_inv_delta: mpf, conversion: str) -> mpf:
    """Optimal order of the linear curve rho*alpha for the eps conversion."""
    if conversion == "mironov":
        return _order_from_gap(mp.sqrt(log_inv_delta / rho))  # Mironov: 1 + sqrt(L/rho)
    # improved: root u of rho u^2 + ln(1 + u) = L; solved in v = ln u (increasing)

    def g(v):
        u = mp.exp(v)
        return rho * u * u + mp.log1p(u) - log_inv_delta, 2 * rho * u * u + u / (1 + u)

    u_low = 2 * log_inv_delta / (1 + mp.sqrt(1 + 4 * rho * log_inv_delta))  # g <= 0 there
    u_high = mp.sqrt(log_inv_delta / rho)  # g > 0 there
    lo, hi = mp.log(u_low), mp.log(u_high)
    if hi <= lo:
        return _order_from_gap(u_low)
    v = bracketed_newton(g, lo, hi, (lo + hi) / 2, mpf(10) ** (-(mp.dps - 12)))
    return _order_from_gap(mp.exp(v))


def _linear_delta_order(rho: mpf, eps: mpf, conversion: str):
    """Optimal order of the linear curve rho*alpha for the delta conversion (None: delta = 1)."""
    if conversion == "mironov":
        if eps <= rho:
            return None
        return _order_from_gap((eps - rho) / (2 * rho))  # maximises (alpha - 1)(eps - rho alpha)
    # improved: root of rho (2u + 1) + ln(u/(1+u)) = eps in v = ln u (increasing)

    def g(v):
        u = mp.exp(v)
        return rho * (2 * u + 1) + _log_one_minus_inverse(u) - eps, 2 * rho * u + 1 / (1 + u)

    start = mp.log((eps + 1) / (2 * rho))
    lo, hi = _expanding_bracket(g, start, increasing=True)
    v = bracketed_newton(g, lo, hi, (lo + hi) / 2, mpf(10) ** (-(mp.dps - 12)))
    return _order_from_gap(mp.exp(v))


def _golden_minimum(h, lo: float, hi: float, iterations: int = 60) -> mpf:
    """Golden-section search of h over [lo, hi] (in ln(alpha - 1)); returns the best point seen."""
    ratio = (math.sqrt(5) - 1) / 2
    a, b = mpf(lo), mpf(hi)
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    hc, hd = h(c), h(d)
    best = (hc, c) if hc <= hd else (hd, d)
    for _ in range(iterations):
        if hc <= hd:
            b, d, hd = d, c, hc
            c = b - ratio * (b - a)
            hc = h(c)
        else:
            a, c, hc = c, d, hd
            d = a + ratio * (b - a)
            hd = h(d)
        best = min(best, (hc, c), (hd, d), key=lambda t: t[0])
    return best[1]


def _search_orders(objective) -> mpf:
    """Order alpha minimising objective(alpha) over ln(alpha - 1) in [-12, 30]."""

    def h(v):
        value = objective(_order_from_gap(mp.exp(v)))
        return value if not mp.isnan(value) else mp.inf

    grid = [mpf(v) / 2 for v in range(-24, 61)]
    values = [h(v) for v in grid]
    best = min(range(len(grid)), key=lambda i: values[i])
    lo = grid[max(best - 1, 0)]
    hi = grid[min(best + 1, len(grid) - 1)]
    return _order_from_gap(mp.exp(_golden_minimum(h, lo, hi)))


def _candidate_orders(curve: RenyiCurve, objective):
    if curve._orders is not None:
        return [a for a, _ in curve._orders]
    return [_search_orders(objective)]


# ----------------------------------------------------------------------------------------------
# Public conversions
# ----------------------------------------------------------------------------------------------

def _renyi_to_dp_mpf(curve: RenyiCurve, delta: mpf, conversion: str):
    digits = working_digits()
    with mp.workdps(digits + GUARD_DIGITS):
        log_inv_delta = -mp.log(delta)
        if curve.is_linear:
            if curve.rho == 0:
                return mpf(0), mp.inf
            orders = [_linear_dp_order(curve.rho, log_inv_delta, conversion)]
        else:
            orders = _candidate_orders(
                curve, lambda a: _epsilon_at(curve._value(a), a, log_inv_delta, conversion)[0])
        best = None
        for alpha in orders:
            eps_alpha = curve._value(alpha)
            if mp.isinf(eps_alpha):
                continue
            value, error = _epsilon_at(eps_alpha, alpha, log_inv_delta, conversion)
            bound = _round_up_value(value, error, digits)
            if best is None or bound < best[0]:
                best = (bound, alpha)
        if best is None:
            return mp.inf, orders[0]
        return max(best[0], mpf(0)), best[1]


@entry_point
def renyi_to_dp(curve, delta, *, conversion: str = "improved", with_order: bool = False,
                as_mpf: bool = False):
    """Convert a Renyi-DP curve to an (eps, delta) guarantee: the smallest eps, rounded UP.

    ``eps = min_alpha eps(alpha) + L/(alpha - 1)`` (``"mironov"``, Mironov 2017, Proposition 3) or
    ``eps = min_alpha eps(alpha) + ln(1 - 1/alpha) - (ln delta + ln alpha)/(alpha - 1)``
    (``"improved"``, Canonne, Kamath, Steinke 2020, Proposition 12), ``L = ln(1/delta)``.

    For a linear curve ``rho * alpha`` the minimiser is exact: ``alpha = 1 + sqrt(L/rho)`` (Mironov,
    giving ``rho + 2 sqrt(rho L)``) or the root of ``rho (alpha-1)^2 + ln alpha = L`` (improved,
    bracketed Newton to full precision). Curves known at finitely many orders are minimised over
    those orders; curves with callables over a search in ``ln(alpha - 1)``.

    Rounded UP: the objective is evaluated at the chosen order with a bound on its evaluation
    error added; a negative value is clipped to 0 (a valid guarantee).

    Args:
        curve: a :class:`RenyiCurve`.
        delta: in (0, 1).
        conversion: ``"improved"`` (default) or ``"mironov"``.
        with_order: also return the order used (a float, ``inf`` for a zero curve).
        as_mpf: return mpmath values.

    >>> round(renyi_to_dp(RenyiCurve.linear(1.0), 1e-5, conversion="mironov"), 6)
    7.78614
    >>> round(renyi_to_dp(RenyiCurve.linear(1.0), 1e-5), 6)
    7.077197
    """
    curve = _check_curve(curve)
    delta = check_delta(delta)
    conversion = _check_conversion(conversion)
    eps, alpha = _renyi_to_dp_mpf(curve, delta, conversion)
    result = finish(eps, "up", as_mpf)
    if with_order:
        return result, (alpha if as_mpf else float(alpha))
    return result


@entry_point
def renyi_to_delta(curve, eps, *, conversion: str = "improved", with_order: bool = False,
                   as_mpf: bool = False):
    """Convert a Renyi-DP curve to the smallest delta at a given eps, rounded UP.

    Solving each conversion for delta at a fixed order:

    * Mironov: ``ln delta = (alpha - 1)(eps(alpha) - eps)``;
    * improved: ``ln delta = (alpha - 1)(eps(alpha) - eps + ln(1 - 1/alpha)) - ln alpha``
      (the rule of ``dp_accounting.rdp.compute_delta``),

    minimised over alpha and capped at 1. For a linear curve the order is exact:
    ``alpha = (eps + rho)/(2 rho)`` (Mironov, giving ``exp(-(eps - rho)^2/(4 rho))`` when
    ``eps > rho``) or the root of ``rho (2 alpha - 1) + ln(1 - 1/alpha) = eps`` (improved).

    Rounded UP; a delta below the float range comes back as 5e-324.

    >>> renyi_to_delta(RenyiCurve.linear(1.0), 7.78614042441512, conversion="mironov") <= 1e-5
    True
    """
    curve = _check_curve(curve)
    eps = check_epsilon(eps)
    conversion = _check_conversion(conversion)
    digits = working_digits()
    with mp.workdps(digits + GUARD_DIGITS):
        if curve.is_linear:
            if curve.rho == 0:
                orders = [mp.inf] if eps > 0 else []
            else:
                order = _linear_delta_order(curve.rho, eps, conversion)
                orders = [] if order is None else [order]
        else:
            orders = _candidate_orders(
                curve, lambda a: _log_delta_at(curve._value(a), a, eps, conversion)[0])
        best = (mpf(0), orders[0] if orders else mpf(1))  # ln delta = 0: the trivial bound
        for alpha in orders:
            if mp.isinf(alpha):  # zero curve: delta -> 0 as alpha -> inf
                best = (mp.ninf, alpha)
                break
            eps_alpha = curve._value(alpha)
            if mp.isinf(eps_alpha):
                continue
            value, error = _log_delta_at(eps_alpha, alpha, eps, conversion)
            bound = _round_up_value(value, error, digits)
            if bound < best[0]:
                best = (bound, alpha)
        log_delta, alpha = best
        delta = mpf(0) if mp.isinf(log_delta) else mp.exp(log_delta)
    if as_mpf:
        result = delta
    elif delta == 0:
        result = 0.0
    else:
        result = min(1.0, to_float(delta, "up"))
    if with_order:
        return result, (alpha if as_mpf else float(alpha))
    return result


def _improved_rho_max(eps: mpf, log_inv_delta: mpf) -> mpf:
    """max over alpha of (eps - c(alpha))/alpha, c(alpha) = ln(1 - 1/alpha) + (L - ln alpha)/(alpha-1).

    The maximiser solves E(alpha) = eps with E(alpha) = alpha rho(alpha) + c(alpha) and
    rho(alpha) = (L - ln alpha)/(alpha - 1)^2 (THEORY.md section 4); E is decreasing, and
    dE/dv = -(u + 2 alpha (L - ln alpha))/u^2 in v = ln u, u = alpha - 1. Any alpha gives a
    feasible rho, so the result is rounded down only for evaluation error.
    """
    L = log_inv_delta

    def parts(u):
        log_alpha = mp.log1p(u)
        k = L - log_alpha
        c_terms = (_log_one_minus_inverse(u), k / u)
        return log_alpha, k, c_terms

    def g(v):
        u = mp.exp(v)
        alpha = 1 + u
        _, k, c_terms = parts(u)
        e = alpha * k / (u * u) + mp.fsum(c_terms)
        return e - eps, -(u + 2 * alpha * k) / (u * u)

    # start from the Mironov optimum, which is close; bracket within (0, 1/delta - 1)
    with mp.workdps(20):
        rho_m = (eps / (mp.sqrt(L + eps) + mp.sqrt(L))) ** 2
        start = mp.log(mp.sqrt(L / rho_m)) if rho_m > 0 else mp.mpf(0)
    v_top = mp.log(mp.expm1(L))  # alpha = 1/delta: E = ln(1 - delta) < 0 <= eps
    start = min(start, v_top - 1)
    if g(start)[0] <= 0:
        hi = start
        lo = start - 1
        step = mpf(1)
        while g(lo)[0] <= 0:
            step *= 2
            lo = start - step
    else:
        lo, hi = _expanding_bracket(g, start, increasing=False)
        hi = min(hi, v_top)
    v = bracketed_newton(g, lo, hi, start, mpf(10) ** (-(mp.dps // 2)))
    # one exact Newton polish is unnecessary: rho is stationary in alpha at the optimum
    u = mp.exp(v)
    alpha = _order_from_gap(u)
    _, _, c_terms = parts(u)
    value = (eps - mp.fsum(c_terms)) / alpha
    error = (eps + mp.fsum(abs(t) for t in c_terms)) / alpha * mpf(10) ** (-(mp.dps - 5))
    return value - error


@entry_point
def linear_rho_max(eps, delta, *, conversion: str = "improved", as_mpf: bool = False):
    """Largest rho such that the linear curve ``rho * alpha`` converts to at most eps at delta.

    Calibration inverse of :func:`renyi_to_dp` for linear curves (THEORY.md section 4):

    * Mironov: ``rho_max = (sqrt(L + eps) - sqrt(L))^2``, ``L = ln(1/delta)``, evaluated as
      ``eps^2 / (sqrt(L + eps) + sqrt(L))^2``;
    * improved: ``rho_max = max_alpha (eps - ln(1 - 1/alpha) - (L - ln alpha)/(alpha - 1))/alpha``,
      maximised by a Newton iteration on ``E(alpha) = eps`` in ``ln(alpha - 1)``.

    Rounded DOWN: ``renyi_to_dp(RenyiCurve.linear(result), delta) <= eps`` holds (at the order
    used, the improved objective is exactly ``eps`` minus the rounding margin).

    >>> round(linear_rho_max(1.0, 1e-5), 5)
    0.03056
    """
    eps = check_epsilon(eps)
    delta = check_delta(delta)
    conversion = _check_conversion(conversion)
    digits = working_digits()
    with mp.workdps(digits + GUARD_DIGITS):
        log_inv_delta = -mp.log(delta)
        if eps == 0:
            rho = mpf(0)
        elif conversion == "mironov":
            rho = widen((eps / (mp.sqrt(log_inv_delta + eps) + mp.sqrt(log_inv_delta))) ** 2,
                        "down", digits)
        else:
            rho = widen(max(_improved_rho_max(eps, log_inv_delta), mpf(0)), "down", digits)
    return finish(rho, "down", as_mpf)

