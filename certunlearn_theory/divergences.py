"""Hockey-stick divergence of two Gaussians and the analytic Gaussian mechanism.

Everything here is built on one function (THEORY.md section 2; Balle & Wang 2018, Theorem 8)::

    theta_eps(r) = E_{e^eps}(N(r, 1) || N(0, 1))
                 = Phi(r/2 - eps/r) - e^eps Phi(-eps/r - r/2),        r > 0, eps >= 0,

the privacy profile of a Gaussian mechanism with sensitivity-to-noise ratio ``r``. Writing
``m = eps/r - r/2``, ``phi`` for the standard normal density and ``R(x) = Q(x)/phi(x)`` for Mills'
ratio (``Q = 1 - Phi``), the identity ``e^eps phi(m + r) = phi(m)`` gives the forms used below:

* ``m >= 0``:  ``theta = phi(m) (R(m) - R(m + r))``, a difference of one decreasing function; the
  cancellation (about ``log10((m + r)/r)`` digits) is paid for with extra working digits, which are
  checked after the fact;
* ``m < 0``:   ``theta = Q(m) - phi(m) R(m + r)``, and ``1 - theta = Q(-m) + phi(m) R(m + r)`` (a
  sum of positive terms) when ``theta`` is close to 1;
* ``m >= 1000``: ``ln theta = -m^2/2 - ln sqrt(2 pi) + ln(R(m) - R(m + r))`` with the asymptotic
  series of Mills' ratio, differenced term by term without cancellation. This never forms
  ``e^-m^2/2`` and so works where ``theta < 10^(-10^6)`` and where mpmath's ``erfc`` overflows.

Derivatives used by the solvers: ``d theta/d r = phi(m)`` and ``d theta/d eps = -phi(m) R(m + r)``.

The public guarantee functions validate their inputs, compute at the working precision plus guard
digits and round on the safe side (see each docstring); ``as_mpf=True`` returns the mpmath value.
"""
from __future__ import annotations

import math

from mpmath import mp, mpf

from ._numerics import (
    GUARD_DIGITS,
    bracketed_newton,
    check_delta,
    check_epsilon,
    check_nonnegative,
    check_positive,
    check_real,
    entry_point,
    finish,
    rigorous,
    to_float,
    widen,
    working_digits,
)
from .errors import PrecisionError

__all__ = [
    "theta",
    "log_theta",
    "gaussian_delta",
    "gaussian_epsilon",
    "gaussian_sigma",
    "max_noise_ratio",
    "classical_gaussian_sigma",
    "gaussian_renyi",
    "hockey_stick_contraction",
]

# Above this argument Mills' ratio comes from its asymptotic series (each extra term gains at
# least six digits), below it from mpmath's erfc.
_ASYMPTOTIC_FROM = 1000
_MAX_EXTRA_DIGITS = 20000


# ----------------------------------------------------------------------------------------------
# Normal tail building blocks (all at the current mp.dps, arguments are mpf)
# ----------------------------------------------------------------------------------------------

def _exact(x) -> mpf:
    """x as an mpf without rounding (mpf(x) would round an mpf to the ambient precision)."""
    if isinstance(x, mpf):
        return x
    if isinstance(x, int):
        with mp.workprec(max(mp.prec, x.bit_length() + 1)):
            return mpf(x)
    with mp.workprec(max(mp.prec, 64)):  # floats are exact at 53 bits
        return mpf(x)


def _log_phi(x: mpf) -> mpf:
    """ln phi(x) = -x^2/2 - ln sqrt(2 pi), to an absolute 10^-(dps+5) (so exp of it keeps the
    current relative precision): the sum carries log10(x^2) extra digits and is not rounded back."""
    with mp.workdps(15):
        extra = 5 + max(0, int(mp.ceil(mp.log10(1 + x * x))))
    with mp.workdps(mp.dps + extra):
        return -x * x / 2 - mp.log(2 * mp.pi) / 2


def _mills_asymptotic(x: mpf) -> mpf:
    """R(x) = sum_k (-1)^k (2k-1)!! x^-(2k+1) for x >= 1000 (remainder below the last term)."""
    x2 = x * x
    term = 1 / x
    total = term
    tol = mpf(10) ** (-(mp.dps + 3))
    k = 0
    while True:
        k += 1
        term = -term * (2 * k - 1) / x2
        total += term
        if abs(term) <= tol * abs(total):
            return total
        if k > 100000:  # pragma: no cover - cannot happen for x >= 1000 and dps <= 25000
            raise PrecisionError(f"asymptotic series of Mills' ratio did not converge at x={x}")


def _mills(x: mpf) -> mpf:
    """Mills' ratio R(x) = Q(x)/phi(x) for x >= 0, to the current relative precision."""
    if x >= _ASYMPTOTIC_FROM:
        return _mills_asymptotic(x)
    target = mp.dps
    with mp.workdps(target + 6 + int(math.log10(1 + float(x) ** 2))):
        value = mp.sqrt(mp.pi / 2) * mp.erfc(x / mp.sqrt(2)) * mp.exp(x * x / 2)
    return +value


def _upper_tail(x: mpf) -> mpf:
    """Q(x) = 1 - Phi(x), any real x, to the current relative precision."""
    if x >= _ASYMPTOTIC_FROM:
        return mp.exp(_log_phi(x)) * _mills_asymptotic(x)
    if x >= 0:
        return mp.erfc(x / mp.sqrt(2)) / 2
    return 1 - _upper_tail(-x)  # _upper_tail(-x) <= 1/2: no cancellation


def _mills_difference_asymptotic(a: mpf, r: mpf) -> mpf:
    """R(a) - R(a + r) for a >= 1000, r > 0, summed term by term without cancellation.

    Term k of the series contributes (-1)^k (2k-1)!! (a^-n - (a+r)^-n) with n = 2k+1, and
    a^-n - (a+r)^-n = a^-n * (-expm1(-n log1p(r/a))) is computed directly.
    """
    log_ratio = mp.log1p(r / a)
    a2 = a * a
    power = 1 / a
    coefficient = mpf(1)
    total = mpf(0)
    tol = mpf(10) ** (-(mp.dps + 3))
    k = 0
    while True:
        n = 2 * k + 1
        term = coefficient * power * (-mp.expm1(-n * log_ratio))
        total = total + term if k % 2 == 0 else total - term
        if k > 0 and term <= tol * total:
            return total
        coefficient *= n
        power /= a2
        k += 1
        if k > 100000:  # pragma: no cover
            raise PrecisionError("asymptotic series of a Mills' ratio difference did not converge")


def _m_digits(eps: mpf, r: mpf) -> int:
    """Digits lost forming m = eps/r - r/2 (about log10(1 + eps/r)) and squaring it."""
    with mp.workdps(15):
        return int(mp.ceil(mp.log10(1 + eps / r))) + 2


def _extra_digits_for(eps: mpf, r: mpf) -> int:
    """Working digits lost to cancellation in theta, about log10((|m| + 1 + r)/r)."""
    with mp.workdps(15 + _m_digits(eps, r)):
        m = abs(eps / r - r / 2)
    with mp.workdps(15):
        return max(0, int(mp.ceil(mp.log10((m + 1 + r) / r)))) + _m_digits(eps, r)


def _theta_direct(eps: mpf, r: mpf) -> mpf:
    """theta for m < 1000 by the cancellation forms, with checked extra working digits."""
    target = mp.dps
    extra = 12 + _extra_digits_for(eps, r)
    for _ in range(16):
        with mp.workdps(target + extra):
            m = eps / r - r / 2
            if m >= 0:
                phi = mp.exp(_log_phi(m))
                r_m = _mills(m)
                head = phi * r_m
                value = phi * (r_m - _mills(m + r))
            else:
                head = _upper_tail(m)
                value = head - mp.exp(_log_phi(m)) * _mills(m + r)
            if value > 0:
                lost = int(mp.ceil(mp.log10(head / value)))
                if lost + 12 <= extra:
                    with mp.workdps(target):
                        return +value
                extra = max(2 * extra, lost + 24)
            else:
                extra *= 2
        if extra > _MAX_EXTRA_DIGITS:
            break
    raise PrecisionError(f"theta(eps={mp.nstr(eps, 10)}, r={mp.nstr(r, 10)}) lost more than "
                         f"{_MAX_EXTRA_DIGITS} digits to cancellation")


def _log_theta_asymptotic(eps: mpf, r: mpf) -> mpf:
    """ln theta for m >= 1000, accurate to an absolute 10^-(dps+5) (enough for exp)."""
    target = mp.dps
    m_est = _m_estimate(eps, r)
    with mp.workdps(20):
        extra = 10 + _m_digits(eps, r) + int(mp.ceil(mp.log10(m_est * m_est)))
        extra += int(mp.ceil(mp.log10((eps / r) / m_est)))
    with mp.workdps(target + extra):
        m = eps / r - r / 2
        value = _log_phi(m) + mp.log(_mills_difference_asymptotic(m, r))
    return value  # deliberately at the higher precision; callers round


def _m_estimate(eps: mpf, r: mpf) -> mpf:
    with mp.workdps(20 + _m_digits(eps, r)):
        return eps / r - r / 2


def _ratio(numerator: mpf, sigma: mpf, eps: mpf) -> mpf:
    """numerator/sigma with enough extra digits that theta_eps at the ratio keeps the current
    precision (d ln theta/d ln r grows like m^2 + m r, which the extra digits cover)."""
    with mp.workdps(15):
        r = numerator / sigma
        extra = 2 * int(mp.ceil(mp.log10(1 + abs(eps / r - r / 2) + r))) + 5
    with mp.workdps(mp.dps + extra):
        return numerator / sigma


def raw_theta(eps, r) -> mpf:
    """Hockey-stick divergence theta_eps(r) = E_{e^eps}(N(r,1) || N(0,1)) at the current mp.dps.

    The building block of every accountant computation, which calls it at the precisions it
    chooses itself; users call :func:`theta` (the same value at ``working_digits()``).

    Formula (Balle & Wang 2018, Theorem 8; THEORY.md section 2):
    ``Phi(r/2 - eps/r) - e^eps Phi(-eps/r - r/2)``. Accurate to full relative precision for every
    ``eps >= 0`` and ``r > 0`` (cancellation is covered by checked extra digits, huge ``eps/r`` by
    the asymptotic series of Mills' ratio), never negative. ``r = +inf`` gives 1, ``r = 0`` or
    ``eps = +inf`` gives 0.

    No validation and no safe-side rounding (use :func:`gaussian_delta` for a guarantee).
    Arguments are converted exactly (an ``mpf`` is not rounded to the ambient precision).
    """
    eps, r = _exact(eps), _exact(r)
    if mp.isinf(eps) or r == 0:
        return mpf(0)
    if mp.isinf(r):
        return mpf(1)
    if eps == 0:  # total variation 2 Phi(r/2) - 1 = erf(r/(2 sqrt 2)) = 1 - 2 Q(r/2)
        with mp.workdps(mp.dps + 5):
            value = mp.erf(r / (2 * mp.sqrt(2))) if r < 2 else 1 - 2 * _upper_tail(mp.ldexp(r, -1))
        return +value
    if _m_estimate(eps, r) >= _ASYMPTOTIC_FROM:
        value = mp.exp(_log_theta_asymptotic(eps, r))
        return +value
    return _theta_direct(eps, r)


@entry_point
def theta(eps, r) -> mpf:
    """Hockey-stick divergence theta_eps(r) = E_{e^eps}(N(r,1) || N(0,1)) as an ``mpf``.

    Formula (Balle & Wang 2018, Theorem 8; THEORY.md section 2):
    ``Phi(r/2 - eps/r) - e^eps Phi(-eps/r - r/2)``, accurate to full relative precision at
    ``working_digits()`` significant digits (set them with :func:`certunlearn_theory.precision`;
    the caller's ``mp.dps`` plays no part) for every ``eps >= 0`` and ``r > 0``, never negative.
    ``r = +inf`` gives 1, ``r = 0`` or ``eps = +inf`` gives 0. The raw value: no validation and
    no safe-side rounding (use :func:`gaussian_delta` for a guarantee).

    >>> from mpmath import mp
    >>> mp.nstr(theta(1, 2), 12)
    '0.509861660055'
    """
    return raw_theta(eps, r)


@entry_point
def log_theta(eps, r) -> mpf:
    """Natural logarithm of :func:`theta` at ``working_digits()``, to full relative precision.

    Works far below the range of ``theta`` itself (``theta < 10^(-10^6)`` and beyond) and near
    ``theta = 1``; see :func:`raw_log_theta`. ``r = +inf`` gives 0, ``r = 0`` or ``eps = +inf``
    gives ``-inf``. No validation, no rounding.
    """
    return raw_log_theta(eps, r)


def _one_minus_theta(eps: mpf, r: mpf) -> mpf:
    """1 - theta = Q(-m) + phi(m) R(m + r) for m < 0 (sum of positives)."""
    target = mp.dps
    with mp.workdps(15):
        magnitude = abs(eps / r) + r
    with mp.workdps(target + 10 + 2 * int(mp.ceil(mp.log10(1 + magnitude)))):
        m = eps / r - r / 2
        value = _upper_tail(-m) + mp.exp(_log_phi(m)) * _mills(m + r)
    return +value


def raw_log_theta(eps, r) -> mpf:
    """Natural logarithm of :func:`raw_theta`, at the current mp.dps, to full relative precision.

    Used inside accountant computations; users call :func:`log_theta` (``working_digits()``).

    Works far below the range of ``theta`` itself (``theta < 10^(-10^6)`` and beyond: for
    ``m = eps/r - r/2 >= 1000`` it uses ``-m^2/2 - ln sqrt(2 pi) + ln(R(m) - R(m + r))`` with the
    asymptotic series of Mills' ratio) and near ``theta = 1`` (through ``log1p(-(1 - theta))``).
    ``r = +inf`` gives 0, ``r = 0`` or ``eps = +inf`` gives ``-inf``. No validation, no rounding.
    """
    eps, r = _exact(eps), _exact(r)
    if mp.isinf(eps) or r == 0:
        return mp.ninf
    if mp.isinf(r):
        return mpf(0)
    target = mp.dps
    if eps > 0 and _m_estimate(eps, r) >= _ASYMPTOTIC_FROM:
        value = _log_theta_asymptotic(eps, r)
        with mp.workdps(target):
            return +value
    with mp.workdps(target + 5):
        value = raw_theta(eps, r)
        if value > mpf(1) / 2 and eps > 0:
            result = mp.log1p(-_one_minus_theta(eps, r))
        elif value > mpf(1) / 2:
            result = mp.log1p(-2 * _upper_tail(mp.ldexp(r, -1)))  # r/2 exactly (all bits of r)
        else:
            result = mp.log(value)
    with mp.workdps(target):
        return +result


def _log_phi_m(eps: mpf, r: mpf) -> mpf:
    m = eps / r - r / 2
    return _log_phi(m)


# ----------------------------------------------------------------------------------------------
# Guarantees of the Gaussian mechanism
# ----------------------------------------------------------------------------------------------

@entry_point
def gaussian_delta(eps, sensitivity, sigma, *, as_mpf: bool = False):
    """Exact privacy profile of the Gaussian mechanism, rounded UP.

    ``delta(eps) = theta_eps(sensitivity / sigma)``, the hockey-stick divergence
    ``E_{e^eps}(N(sensitivity, sigma^2) || N(0, sigma^2))`` (Balle & Wang 2018, Theorem 8). It is
    symmetric in the two Gaussians, so it bounds both directions. ``sensitivity = 0`` gives exactly
    0 (identical distributions), which is a true guarantee.

    Args:
        eps: epsilon >= 0 (finite).
        sensitivity: distance between the two means, >= 0.
        sigma: noise standard deviation, > 0.
        as_mpf: return the mpmath value instead of a float.

    Returns:
        delta, rounded up: the float is the smallest one >= a value that was checked at two
        working precisions; a delta below the float range comes back as 5e-324, never 0.

    >>> gaussian_delta(1.0, 1.0, 1.0)
    0.12693673750664397
    """
    eps = check_epsilon(eps)
    sensitivity = check_nonnegative("sensitivity", sensitivity)
    sigma = check_positive("sigma", sigma)
    if sensitivity == 0:
        return mpf(0) if as_mpf else 0.0
    value = rigorous(lambda: raw_theta(eps, _ratio(sensitivity, sigma, eps)), "up",
                     what="gaussian_delta")
    return finish(min(value, mpf(1)), "up", as_mpf)  # theta <= 1: widening stops at 1


def _solve_log_r(eps: mpf, log_delta: mpf) -> mpf:
    """Root in u = ln r of ln theta_eps(e^u) = ln delta at the current precision."""

    def f(u):
        r = mp.exp(u)
        log_t = raw_log_theta(eps, r)
        slope = r * mp.exp(_log_phi_m(eps, r) - log_t)  # d ln theta / d ln r
        return log_t - log_delta, slope

    with mp.workdps(20):
        z = mp.sqrt(-2 * log_delta)
        guess = 2 * eps / (mp.sqrt(z * z + 2 * eps) + z)  # sqrt(z^2 + 2 eps) - z, no cancellation
        guess = max(guess, mp.exp(log_delta) * 2)
    u = mp.log(guess)
    value = f(u)[0]
    step = mpf(1)
    if value > 0:
        hi = u
        lo = u - step
        while f(lo)[0] > 0:
            step *= 2
            lo = u - step
    else:
        lo = u
        hi = u + step
        while f(hi)[0] <= 0:
            step *= 2
            hi = u + step
    tol = mpf(10) ** (-(mp.dps - 12))
    return bracketed_newton(f, lo, hi, u, tol)


def _max_noise_ratio_mpf(eps: mpf, delta: mpf) -> mpf:
    """r* rounded down, verified: theta_eps(result) <= delta, at P + GUARD_DIGITS digits."""
    digits = working_digits()
    with mp.workdps(15):  # near r* ~ sqrt(2 eps), m = eps/r - r/2 cancels ~log10(eps) digits
        cancellation = int(mp.ceil(mp.log10(1 + eps)))
    with mp.workdps(digits + GUARD_DIGITS + cancellation):
        log_delta = mp.log(delta)
        u = _solve_log_r(eps, log_delta)
        margin = mpf(10) ** (-(digits + 12)) * (1 + abs(log_delta))
        shrink = mpf(10) ** (-(digits - 8))
        for _ in range(30):
            candidate = mp.exp(u) * (1 - shrink)
            if raw_log_theta(eps, candidate) <= log_delta - margin:
                return candidate
            shrink *= 10
            if shrink >= 1:
                break
    raise PrecisionError(f"max_noise_ratio(eps={eps}, delta={delta}): could not verify the root")


@entry_point
def max_noise_ratio(eps, delta, *, as_mpf: bool = False):
    """Largest sensitivity-to-noise ratio of a Gaussian mechanism that is (eps, delta)-DP.

    ``r* = sup{r > 0 : theta_eps(r) <= delta}`` (the analytic Gaussian mechanism, Balle & Wang
    2018, Theorem 8 and Algorithm 1; THEORY.md section 3), found by a bracketed Newton iteration on
    ``ln theta_eps(e^u) - ln delta`` in ``u = ln r`` (``d theta/d r = phi(eps/r - r/2)``).

    Rounded DOWN: the returned ratio is verified to satisfy ``theta_eps(r) <= delta`` at the working
    precision plus guard digits, and the float is the largest one not above it.

    >>> round(max_noise_ratio(1.0, 1e-5), 10)
    0.2680511232
    """
    eps = check_epsilon(eps)
    delta = check_delta(delta)
    return finish(_max_noise_ratio_mpf(eps, delta), "down", as_mpf)


@entry_point
def gaussian_sigma(eps, delta, sensitivity, *, as_mpf: bool = False):
    """Smallest noise standard deviation making the Gaussian mechanism (eps, delta)-DP.

    ``sigma = sensitivity / r*`` with ``r* = sup{r : theta_eps(r) <= delta}`` (analytic Gaussian
    mechanism, Balle & Wang 2018, Theorem 8; THEORY.md section 3). Valid for every ``eps >= 0``,
    unlike :func:`classical_gaussian_sigma`.

    Rounded UP, and the float is checked once more: ``gaussian_delta(eps, sensitivity, sigma)``
    with the returned float is <= ``delta``.

    Args:
        eps: epsilon >= 0.
        delta: in (0, 1).
        sensitivity: > 0 (the L2 distance between the two means).
        as_mpf: return the mpmath value.

    >>> round(gaussian_sigma(1.0, 1e-5, 2.0), 8)
    7.46126327
    """
    eps = check_epsilon(eps)
    delta = check_delta(delta)
    sensitivity = check_positive("sensitivity", sensitivity)
    r_star = _max_noise_ratio_mpf(eps, delta)
    with mp.workdps(working_digits() + GUARD_DIGITS):
        sigma = widen(sensitivity / r_star, "up", working_digits() + 10)
    if as_mpf:
        return sigma
    result = to_float(sigma, "up")
    if math.isinf(result):  # sigma beyond the float range: infinite noise is the safe answer
        return result
    for _ in range(8):  # guard against the float landing a hair on the unsafe side
        if gaussian_delta(eps, sensitivity, result) <= delta:
            return result
        result = math.nextafter(result, math.inf)
    raise PrecisionError("gaussian_sigma: the rounded sigma does not verify")  # pragma: no cover


def _solve_epsilon(r: mpf, log_delta: mpf) -> mpf:
    """Root in eps of ln theta_eps(r) = ln delta (ln theta_0(r) > ln delta assumed)."""

    def f(eps):
        log_t = raw_log_theta(eps, r)
        m_plus_r = eps / r + r / 2
        slope = -mp.exp(_log_phi_m(eps, r) + mp.log(_mills(m_plus_r)) - log_t)
        return log_t - log_delta, slope

    with mp.workdps(20):
        z = mp.sqrt(-2 * log_delta)
        guess = max(r * z + r * r / 2, mpf(10) ** -10)
    lo = mpf(0)
    hi = guess
    while f(hi)[0] > 0:
        lo = hi
        hi *= 2
    tol = mpf(10) ** (-(mp.dps - 12))
    return bracketed_newton(f, lo, hi, guess, tol)


@entry_point
def gaussian_epsilon(delta, sensitivity, sigma, *, as_mpf: bool = False):
    """Smallest eps >= 0 with ``theta_eps(sensitivity/sigma) <= delta``, rounded UP.

    Inverts the privacy profile of the Gaussian mechanism (Balle & Wang 2018, Theorem 8), using
    ``d theta/d eps = -e^eps Phi(-eps/r - r/2)``. Returns 0 when ``theta_0(r) = 2 Phi(r/2) - 1``
    (total variation) is already <= delta, including ``sensitivity = 0``.

    Rounded UP and verified: theta at the returned value is <= delta at the working precision plus
    guard digits, and for the float ``gaussian_delta(eps, sensitivity, sigma) <= delta``.

    >>> round(gaussian_epsilon(1e-5, 2.0, 7.461263269631884), 9)
    1.0
    """
    delta = check_delta(delta)
    sensitivity = check_nonnegative("sensitivity", sensitivity)
    sigma = check_positive("sigma", sigma)
    if sensitivity == 0:
        return mpf(0) if as_mpf else 0.0
    digits = working_digits()
    with mp.workdps(digits + GUARD_DIGITS):
        r = _ratio(sensitivity, sigma, mpf(0))
        log_delta = mp.log(delta)
        margin = mpf(10) ** (-(digits + 12)) * (1 + abs(log_delta))
        if raw_log_theta(0, r) <= log_delta - margin:
            eps = mpf(0)
        else:
            root = _solve_epsilon(r, log_delta)
            grow = mpf(10) ** (-(digits - 8))
            for _ in range(30):
                eps = root * (1 + grow) + grow * r
                if raw_log_theta(eps, r) <= log_delta - margin:
                    break
                grow *= 10
            else:  # pragma: no cover
                raise PrecisionError("gaussian_epsilon: could not verify the root")
    if as_mpf:
        return eps
    result = to_float(eps, "up")
    if math.isinf(result):  # eps beyond the float range (e.g. r = 1e300): +inf is the safe answer
        return result
    for _ in range(8):
        if gaussian_delta(result, sensitivity, sigma) <= delta:
            return result
        result = math.nextafter(result, math.inf)
    raise PrecisionError("gaussian_epsilon: the rounded epsilon does not verify")  # pragma: no cover


@entry_point
def classical_gaussian_sigma(eps, delta, sensitivity, *, as_mpf: bool = False):
    """Textbook Gaussian-mechanism noise ``sensitivity * sqrt(2 ln(1.25/delta)) / eps``, rounded UP.

    Dwork & Roth 2014, Theorem 3.22 (proof in Appendix A): proven only for ``0 < eps < 1``, so other
    values are refused. It is never smaller than :func:`gaussian_sigma` in that range and is kept
    for comparison only.

    >>> round(classical_gaussian_sigma(0.5, 1e-5, 1.0), 6)
    9.689611
    """
    eps = check_real("eps", eps, low=0, high=1, low_open=True, high_open=True)
    delta = check_delta(delta)
    sensitivity = check_nonnegative("sensitivity", sensitivity)
    value = rigorous(lambda: sensitivity * mp.sqrt(2 * mp.log(mpf(5) / 4 / delta)) / eps, "up",
                     what="classical_gaussian_sigma")
    return finish(value, "up", as_mpf)


@entry_point
def gaussian_renyi(alpha, sensitivity, sigma, *, as_mpf: bool = False):
    """Renyi divergence of order alpha between N(0, sigma^2) and N(sensitivity, sigma^2), rounded UP.

    ``D_alpha = alpha * sensitivity^2 / (2 sigma^2)`` for ``alpha > 1`` (Mironov 2017,
    Proposition 7). Use :class:`certunlearn_theory.RenyiCurve` for the whole curve. The products
    are exact and the one division is rounded toward +inf, so exact values stay exact.

    >>> gaussian_renyi(2, 1.0, 1.0)
    1.0
    """
    alpha = check_real("alpha", alpha, low=1, low_open=True)
    sensitivity = check_nonnegative("sensitivity", sensitivity)
    sigma = check_positive("sigma", sigma)
    return finish(renyi_coefficient_up(sensitivity, sigma, alpha), "up", as_mpf)


def renyi_coefficient_up(sensitivity: mpf, sigma: mpf, alpha: mpf = mpf(1)) -> mpf:
    """alpha * sensitivity^2 / (2 sigma^2) with exact products and one division rounded up.

    Shared with :class:`certunlearn_theory.RenyiCurve` (the Gaussian curve's coefficient);
    not exported from the package (arguments must already be validated ``mpf``).
    """
    numerator = mp.fmul(alpha, mp.fmul(sensitivity, sensitivity, exact=True), exact=True)
    denominator = mp.fmul(2, mp.fmul(sigma, sigma, exact=True), exact=True)
    bits = int((working_digits() + GUARD_DIGITS) * 3.33) + 8
    return mp.fdiv(numerator, denominator, prec=bits, rounding="c")


def _log_expm1(x: mpf) -> mpf:
    """ln(e^x - 1) for x > 0 without overflow."""
    if x > 1:
        return x + mp.log(-mp.expm1(-x))
    return mp.log(mp.expm1(x))


def _contraction_log(eps: mpf, delta_in: mpf, radius: mpf, sigma: mpf) -> mpf:
    """ln(delta_in) + ln theta_{eps~}(r) with eps~ = ln(1 + (e^eps - 1)/delta_in)."""
    if eps == 0:
        eps_tilde = mpf(0)
    else:
        t = _log_expm1(eps) - mp.log(delta_in)  # ln((e^eps - 1)/delta_in)
        eps_tilde = t + mp.log1p(mp.exp(-t)) if t > 0 else mp.log1p(mp.exp(t))
    return mp.log(delta_in) + raw_log_theta(eps_tilde, _ratio(2 * radius, sigma, eps_tilde))


@entry_point
def hockey_stick_contraction(eps, delta_in, radius, sigma, *, as_mpf: bool = False):
    """One strong data-processing step of a Gaussian kernel applied after projection on a ball.

    If ``E_{e^eps}(mu || nu) <= delta_in`` and both are pushed through ``x -> Pi(x) + N(0, sigma^2 I)``
    with ``Pi`` the projection onto a ball of radius ``radius`` (so the means are at most
    ``2 radius`` apart), then (Balle, Barthe, Gaboardi, Geumlek 2019; Asoodeh, Diaz, Calmon 2021;
    THEORY.md section 6)::

        E_{e^eps}(mu K || nu K) <= delta_in * theta_{eps~}(2 radius / sigma),
        eps~ = ln(1 + (e^eps - 1) / delta_in).

    The right-hand side is nondecreasing in ``delta_in``, so an upper bound may be passed in.
    Computed in log space (``eps~`` without overflow for huge ``eps``, ``ln theta`` by
    :func:`log_theta`). ``radius = 0`` gives 0 (both outputs have the same law).

    Args:
        eps: epsilon >= 0, the same at every step of the recursion.
        delta_in: the incoming delta, in (0, 1].
        radius: projection radius, >= 0.
        sigma: noise standard deviation, > 0.
        as_mpf: return the mpmath value.

    Returns:
        The outgoing delta, rounded UP (smallest positive float if it is below the float range).

    >>> hockey_stick_contraction(1.0, 1.0, 1.0, 1.0) == gaussian_delta(1.0, 2.0, 1.0)
    True
    """
    eps = check_epsilon(eps)
    delta_in = check_real("delta_in", delta_in, low=0, high=1, low_open=True)
    radius = check_nonnegative("radius", radius)
    sigma = check_positive("sigma", sigma)
    if radius == 0:
        return mpf(0) if as_mpf else 0.0
    log_value = rigorous(lambda: _contraction_log(eps, delta_in, radius, sigma), "up",
                         what="hockey_stick_contraction")
    with mp.workdps(working_digits() + GUARD_DIGITS):
        # widen the exponent by an absolute amount too, then exponentiate
        log_value = log_value + mpf(10) ** (-(working_digits() - 10))
        value = min(mp.exp(log_value), delta_in)  # theta <= 1
    return finish(value, "up", as_mpf)

