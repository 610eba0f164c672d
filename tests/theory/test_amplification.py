"""Tests of the amplification-by-iteration bound (gradient clipping), certunlearn_theory.amplification.

Oracles: a float64 NumPy recursion written here from THEORY.md section 5, a constrained quadratic
program solved by scipy (the shift allocation with every intermediate shift kept >= 0), and the
closed forms of section 5 for constant schedules.
"""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mpmath import mp, mpf
from scipy.optimize import minimize

import certunlearn_theory as ct
from certunlearn_theory import InvalidParameterError, UnreachableTargetError
from certunlearn_theory.amplification import pabi_bound, pabi_rho, pabi_sigma, pabi_steps, shift_path

from ..hypothesis_budget import examples

# ----------------------------------------------------------------------------------------------
# Independent oracles
# ----------------------------------------------------------------------------------------------

def _arr(v, T):
    return np.full(T, float(v)) if np.ndim(v) == 0 else np.asarray(v, dtype=float)


def numpy_ratios(sigma, T, C0, C1, gamma, lam=0.0, sigma0=0.0):
    """Z_tau^2 / S_tau for tau = 0..T by the plain recursion (inf where S = 0)."""
    sig, c1, g, lm = (_arr(v, T) for v in (sigma, C1, gamma, lam))
    Z, S = 2.0 * C0, sigma0 ** 2
    out = [Z * Z / S if S > 0 else math.inf]
    for t in range(T):
        q = abs(1 - g[t] * lm[t])
        Z = q * Z + 2 * g[t] * c1[t]
        S = q * q * S + sig[t] ** 2
        out.append(Z * Z / S)
    return np.array(out)


def numpy_rho(*args, **kw):
    r = numpy_ratios(*args, **kw)
    start = 0 if kw.get("sigma0", 0.0) > 0 else 1
    return 0.5 * r[start:].min()


def qp_cost(sigma, tau, C0, C1, gamma, lam, sigma0=0.0):
    """min sum a_t^2/sigma_t^2 s.t. a >= 0, z_t >= 0 (t < tau), z_tau = 0 (SLSQP)."""
    T = len(sigma)
    q = [abs(1 - gamma[t] * lam[t]) for t in range(T)]
    s = [2 * gamma[t] * C1[t] for t in range(T)]
    has0 = sigma0 > 0
    n = tau + (1 if has0 else 0)
    if n == 0:
        return math.inf
    # z_t = A_t @ a + b_t (a = [a_init?, a_0, ..., a_{tau-1}])
    rows, consts = [], []
    A = np.zeros(n)
    b = 2.0 * C0
    if has0:
        A[0] = -1.0
    rows.append(A.copy())
    consts.append(b)
    for t in range(tau):
        A = q[t] * A
        A[t + (1 if has0 else 0)] -= 1.0
        b = q[t] * b + s[t]
        rows.append(A.copy())
        consts.append(b)
    weights = np.array(([1 / sigma0 ** 2] if has0 else []) + [1 / sigma[t] ** 2 for t in range(tau)])
    scale = float(np.max(consts)) or 1.0
    cons = [{"type": "eq", "fun": lambda a: (rows[-1] @ a + consts[-1]) / scale,
             "jac": lambda a: rows[-1] / scale}]
    if len(rows) > 2:
        R, c = np.array(rows[:-1]), np.array(consts[:-1])
        cons.append({"type": "ineq", "fun": lambda a: (R @ a + c) / scale, "jac": lambda a: R / scale})
    x0 = np.full(n, consts[-1] / n)
    res = minimize(lambda a: float(weights @ (a * a)), x0, jac=lambda a: 2 * weights * a,
                   bounds=[(0, None)] * n, constraints=cons, method="SLSQP",
                   options={"ftol": 1e-15, "maxiter": 500})
    if not res.success:
        return math.inf
    return float(weights @ (res.x ** 2))


def random_schedule(rng, T, kind):
    C0 = float(rng.uniform(0.2, 3))
    C1 = list(rng.uniform(0.1, 2, T))
    gamma = list(rng.uniform(0.01, 0.3, T))
    lam = list(rng.uniform(0, 1, T)) if kind != "nolam" else [0.0] * T
    if kind == "decreasing":  # noise falling fast: the full-horizon CS path goes negative
        sigma = list(3.0 * 0.4 ** np.arange(T))
    elif kind == "geometric":  # sigma_t proportional to rho^-(T-1-t) (THEORY section 5)
        sigma = list(0.2 * 1.5 ** (T - 1 - np.arange(T)))
    else:
        sigma = list(rng.uniform(0.1, 3, T))
    return sigma, C0, C1, gamma, lam


# ----------------------------------------------------------------------------------------------
# Known answers
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("T,C0,C1,gamma,sigma", [
    (10, 1.0, 1.0, 0.1, 0.5), (100, 1.0, 1.0, 0.01, 1.0), (7, 2.5, 0.3, 0.05, 0.7),
    (1, 1.0, 1.0, 1.0, 1.0)], ids=["T10", "T100-natural", "T7", "T1"])
def test_unregularized_known_answer(T, C0, C1, gamma, sigma):
    # T <= C0/(gamma C1): the best horizon is T and rho = 2 (C0 + gamma C1 T)^2 / (T sigma^2)
    assert T <= C0 / (gamma * C1)
    expected = 2 * (C0 + gamma * C1 * T) ** 2 / (T * sigma ** 2)
    b = pabi_bound(sigma, T, C0, C1, gamma)
    assert b.horizon == T
    assert b.rho >= expected and b.rho == pytest.approx(expected, rel=1e-14)


def test_unregularized_optimal_horizon_is_c0_over_gamma_c1():
    # beyond T = C0/(gamma C1) = 100 the bound stops improving; the horizon stays at 100
    for T in (100, 101, 1000, 10**6):
        b = pabi_bound(1.0, T, 1.0, 1.0, 0.01)
        assert b.horizon == 100
        assert b.rho == pytest.approx(0.08, rel=1e-14)


def test_regularized_closed_form_matches_theory():
    # Z_T = 2 C0 q^T + 2 C1 (1 - q^T)/lam, S_T = sigma^2 (1 - q^2T)/(1 - q^2) (C0 lam >= C1: tau = T)
    C0, C1, g, lam, sig, T = 5.0, 0.2, 0.1, 0.5, 0.8, 40
    q = 1 - g * lam
    Z = 2 * C0 * q ** T + 2 * C1 * (1 - q ** T) / lam
    S = sig ** 2 * (1 - q ** (2 * T)) / (1 - q * q)
    b = pabi_bound(sig, T, C0, C1, g, lam)
    assert b.horizon == T
    assert b.Z == pytest.approx(Z, rel=1e-13) and b.S == pytest.approx(S, rel=1e-13)
    assert b.rho == pytest.approx(Z * Z / (2 * S), rel=1e-13)


def test_regularized_c0_dependence_decays_like_q_to_the_T():
    C1, g, lam, T = 0.5, 0.1, 0.2, 300
    q = 1 - g * lam
    z_small = pabi_bound(1.0, T, 1e-30, C1, g, lam, as_mpf=True)
    for C0 in (1.0, 10.0):
        with mp.workdps(60):
            b = pabi_bound(1.0, T, C0, C1, g, lam, as_mpf=True)
            if b.horizon == T and z_small.horizon == T:
                assert float((b.Z - z_small.Z) / (2 * C0)) == pytest.approx(q ** T, rel=1e-10)


def test_initial_noise_horizon_zero_is_output_perturbation():
    # huge sigma0: the initial noise alone is the best horizon; rho = (2 C0)^2 / (2 sigma0^2)
    b = pabi_bound(0.01, 5, 1.0, 1.0, 0.1, sigma0=100.0)
    assert b.horizon == 0
    assert b.rho == pytest.approx(4 / (2 * 1e4), rel=1e-14)


@pytest.mark.parametrize("seed", range(30))
def test_fast_path_matches_numpy_recursion(seed):
    rng = np.random.default_rng(seed)
    T = int(rng.integers(1, 400))
    C0, C1, g = (float(x) for x in rng.uniform([0.05, 0.01, 1e-3], [5, 3, 0.5]))
    lam = float(rng.choice([0.0, rng.uniform(0, 1 / g)]))
    sig = float(rng.uniform(0.05, 3))
    s0 = float(rng.choice([0.0, rng.uniform(0.1, 5)]))
    expected = numpy_rho(sig, T, C0, C1, g, lam, sigma0=s0)
    got = pabi_rho(sig, T, C0, C1, g, lam, sigma0=s0)
    assert got >= expected * (1 - 1e-12)
    assert got == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("seed", range(10))
def test_schedule_matches_numpy_recursion(seed):
    rng = np.random.default_rng(100 + seed)
    T = int(rng.integers(2, 300))
    sigma, C0, C1, gamma, lam = random_schedule(rng, T, "random")
    expected = numpy_rho(sigma, T, C0, C1, gamma, lam)
    assert pabi_rho(sigma, T, C0, C1, gamma, lam) == pytest.approx(expected, rel=1e-10)


# ----------------------------------------------------------------------------------------------
# The constrained shift optimum (every intermediate shift >= 0)
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed,kind", [(s, k) for s in range(6)
                                       for k in ("random", "decreasing", "geometric", "nolam")])
def test_rule_equals_constrained_optimum_with_free_tail(seed, kind):
    rng = np.random.default_rng(seed)
    T = int(rng.integers(3, 9))
    sigma, C0, C1, gamma, lam = random_schedule(rng, T, kind)
    s0 = float(rng.choice([0.0, 2.0])) if kind == "random" else 0.0
    qp = min(qp_cost(sigma, tau, C0, C1, gamma, lam, s0) for tau in range(0 if s0 else 1, T + 1))
    ours = 2 * pabi_rho(sigma, T, C0, C1, gamma, lam, sigma0=s0)
    assert ours >= qp * (1 - 1e-12) or ours == pytest.approx(qp, rel=1e-6)
    assert ours == pytest.approx(qp, rel=1e-6)
    # and the shift path at our horizon is feasible
    path = shift_path(sigma, T, C0, C1, gamma, lam, sigma0=s0)
    assert min(path["z"][:-1]) >= -1e-12
    assert path["cost"] == pytest.approx(ours, rel=1e-9)


@pytest.mark.parametrize("seed", range(4))
def test_full_horizon_cauchy_schwarz_path_can_go_negative(seed):
    # decreasing noise: at the fixed horizon T the unconstrained CS path dips below zero, so the
    # constrained fixed-horizon optimum is strictly larger than Z_T^2/S_T; the minimum over
    # horizons is below both and is feasible.
    rng = np.random.default_rng(50 + seed)
    T = 6
    sigma, C0, C1, gamma, lam = random_schedule(rng, T, "decreasing")
    full = shift_path(sigma, T, C0, C1, gamma, lam, horizon=T)
    assert min(full["z"][:-1]) < 0
    cs_T = numpy_ratios(sigma, T, C0, C1, gamma, lam)[T]
    qp_T = qp_cost(sigma, T, C0, C1, gamma, lam)
    assert qp_T > cs_T * (1 + 1e-3)
    ours = 2 * pabi_rho(sigma, T, C0, C1, gamma, lam)
    assert ours <= cs_T * (1 + 1e-12)


# ----------------------------------------------------------------------------------------------
# Properties
# ----------------------------------------------------------------------------------------------

pos = st.floats(0.05, 5.0)


@settings(max_examples=examples(30))
@given(T=st.integers(1, 10**6), extra=st.integers(1, 10**6), C0=pos, C1=pos,
       gamma=st.floats(1e-4, 0.5), lam=st.one_of(st.just(0.0), st.floats(0.0, 1.0)), sigma=pos)
def test_more_steps_never_weaken(T, extra, C0, C1, gamma, lam, sigma):
    lam = min(lam, 1 / gamma)
    assert pabi_rho(sigma, T + extra, C0, C1, gamma, lam) <= pabi_rho(sigma, T, C0, C1, gamma, lam)


@settings(max_examples=examples(15))
@given(seed=st.integers(0, 10**6), T=st.integers(1, 40), extra=st.integers(1, 40))
def test_more_steps_never_weaken_schedules(seed, T, extra):
    rng = np.random.default_rng(seed)
    sigma, C0, C1, gamma, lam = random_schedule(rng, T + extra, "random")
    long = pabi_rho(sigma, T + extra, C0, C1, gamma, lam)
    short = pabi_rho(sigma[:T], T, C0, C1[:T], gamma[:T], lam[:T])
    assert long <= short


@settings(max_examples=examples(25))
@given(T=st.integers(1, 10**5), C0=pos, C1=pos, gamma=st.floats(1e-4, 0.5),
       lam=st.floats(0.0, 0.5), rho=st.floats(1e-3, 10.0), f=st.floats(1.01, 3.0))
def test_sigma_grows_with_C0_C1_and_1_over_rho(T, C0, C1, gamma, lam, rho, f):
    lam = min(lam, 1 / gamma)
    base = pabi_sigma(rho, T, C0, C1, gamma, lam)
    assert pabi_sigma(rho, T, C0 * f, C1, gamma, lam) >= base
    assert pabi_sigma(rho, T, C0, C1 * f, gamma, lam) >= base
    assert pabi_sigma(rho / f, T, C0, C1, gamma, lam) >= base
    # calibrate then evaluate: the guarantee holds and is tight
    got = pabi_rho(base, T, C0, C1, gamma, lam)
    assert got <= rho * (1 + 1e-14)
    assert got == pytest.approx(rho, rel=1e-9)


@settings(max_examples=examples(20))
@given(T=st.integers(1, 10**6), C0=pos, C1=pos, gamma=st.floats(1e-4, 0.5), sigma=pos)
def test_lam_to_zero_is_continuous(T, C0, C1, gamma, sigma):
    r0 = pabi_rho(sigma, T, C0, C1, gamma, 0.0)
    r_small = pabi_rho(sigma, T, C0, C1, gamma, 1e-13)
    assert r_small == pytest.approx(r0, rel=1e-5)
    assert r_small <= r0 * (1 + 1e-12)  # regularisation only contracts


def test_sigma_with_initial_noise_round_trip():
    for s0 in (0.3, 1.0, 3.0):
        sig = pabi_sigma(0.05, 200, 1.0, 1.0, 0.01, sigma0=s0)
        assert pabi_rho(sig, 200, 1.0, 1.0, 0.01, sigma0=s0) <= 0.05
        assert pabi_rho(sig * (1 - 1e-9), 200, 1.0, 1.0, 0.01, sigma0=s0) > 0.05
    # the initial noise alone suffices: no per-step noise needed
    assert pabi_sigma(0.05, 200, 1.0, 1.0, 0.01, sigma0=100.0) == 0.0


def test_steps_round_trip_and_floor():
    T = pabi_steps(0.1, 1.0, 1.0, 1.0, 0.01)
    assert pabi_rho(1.0, T, 1.0, 1.0, 0.01) <= 0.1 < pabi_rho(1.0, T - 1, 1.0, 1.0, 0.01)
    # lam = 0: floor 8 C0 gamma C1 / sigma^2 = 0.08 at tau = C0/(gamma C1)
    with pytest.raises(UnreachableTargetError, match="floor") as info:
        pabi_steps(0.05, 1.0, 1.0, 1.0, 0.01)
    assert info.value.best == pytest.approx(0.08, rel=1e-12)
    # lam > 0 with C0 lam >= C1: infimum b^2 gamma lam (2 - gamma lam) / (2 sigma^2), b = 2 C1/lam
    g, lam, C1 = 0.01, 10.0, 1.0
    inf = (2 * C1 / lam) ** 2 * g * lam * (2 - g * lam) / 2
    with pytest.raises(UnreachableTargetError) as info:
        pabi_steps(inf * 0.999, 1.0, 1.0, C1, g, lam)
    assert info.value.best == pytest.approx(inf, rel=1e-9)
    T = pabi_steps(inf * 1.001, 1.0, 1.0, C1, g, lam)
    assert pabi_rho(1.0, T, 1.0, C1, g, lam) <= inf * 1.001 < pabi_rho(1.0, T - 1, 1.0, C1, g, lam)


def test_constant_schedule_T_1e6_is_fast():
    import time
    start = time.perf_counter()
    for _ in range(3):
        pabi_sigma(0.01, 10**6, 1.0, 1.0, 1e-3, 1e-3)
    # a loose sanity bound (the speed target itself is measured in benchmarks/)
    assert time.perf_counter() - start < 3.0


def test_safe_rounding_against_higher_precision():
    with ct.precision(100):
        exact = pabi_rho(0.37, 123, 1.3, 0.7, 0.013, 0.02, as_mpf=True)
    assert mpf(pabi_rho(0.37, 123, 1.3, 0.7, 0.013, 0.02)) >= exact
    with ct.precision(100):
        exact_sigma = pabi_sigma(0.01, 123, 1.3, 0.7, 0.013, 0.02, as_mpf=True)
    assert mpf(pabi_sigma(0.01, 123, 1.3, 0.7, 0.013, 0.02)) >= exact_sigma


@pytest.mark.parametrize("kwargs,match", [
    (dict(sigma=0.0), "sigma must be > 0"),
    (dict(sigma=-1.0), "sigma must be >= 0"),
    (dict(T=0), "T must be >= 1"),
    (dict(T=2.5), "T must be an integer"),
    (dict(C0=0.0), "C0 must be > 0"),
    (dict(C1=None), "C1 .* is required"),
    (dict(C1=float("nan")), "C1 must be a number"),
    (dict(gamma=0.0), "gamma must be > 0"),
    (dict(lam=-0.1), "lam must be >= 0"),
    (dict(gamma=0.5, lam=3.0), "gamma\\*lam must be <= 1"),
    (dict(sigma=[1.0, 2.0]), "length T=3"),
    (dict(sigma="1"), "sigma must be a real number"),
    (dict(sigma0=-1.0), "sigma0 must be >= 0"),
])
def test_bad_input(kwargs, match):
    args = dict(sigma=1.0, T=3, C0=1.0, C1=1.0, gamma=0.1, lam=0.0)
    args.update(kwargs)
    with pytest.raises(InvalidParameterError, match=match):
        pabi_rho(**args)


def test_regression_tiny_lam_finds_interior_horizon():
    # gamma*lam ~ 5e-51: the interior optimum tau = C0/(gamma C1) = 2 must not be lost to
    # cancellation in 1 - C0 lam / C1
    args = (1.0, 1.0, 2.0, 0.25, 1.8427288213179398e-50)
    assert pabi_bound(args[0], 3, *args[1:]).horizon == 2
    assert pabi_rho(args[0], 3, *args[1:]) <= pabi_rho(args[0], 2, *args[1:])
    assert pabi_rho(args[0], 3, *args[1:]) == pytest.approx(numpy_rho(args[0], 3, *args[1:]))


@pytest.mark.parametrize("T,C0,C1,gamma,lam,sigma", [
    (20, 1.0, 1.0, 0.05, 0.0, 1.0), (50, 2.0, 0.5, 0.1, 0.3, 0.7), (8, 0.3, 2.0, 0.2, 1.0, 2.0)])
def test_constant_schedule_path_matches_closed_form_and_qp(T, C0, C1, gamma, lam, sigma):
    # THEORY.md section 5: for constant schedules the full-horizon CS path is
    # z_t = d (r^t - r^(2T-t))/(1 - r^(2T)) + s (1 - r^t)(r^t - r^T)/((1 - r) r^t (1 + r^T)),
    # d (1 - t/T) for r = 1; it is feasible, so the constrained fixed-horizon optimum equals CS
    path = shift_path(sigma, T, C0, C1, gamma, lam, horizon=T)
    d, s, r = 2 * C0, 2 * gamma * C1, 1 - gamma * lam
    for t, z in enumerate(path["z"]):
        if r == 1:
            expected = d * (1 - t / T)
        else:
            expected = (d * (r ** t - r ** (2 * T - t)) / (1 - r ** (2 * T))
                        + s * (1 - r ** t) * (r ** t - r ** T) / ((1 - r) * r ** t * (1 + r ** T)))
        assert z == pytest.approx(expected, rel=1e-9, abs=1e-12)
        assert z >= -1e-12
    if T <= 20:
        qp = qp_cost([sigma] * T, T, C0, [C1] * T, [gamma] * T, [lam] * T)
        assert qp == pytest.approx(numpy_ratios(sigma, T, C0, C1, gamma, lam)[T], rel=1e-6)
