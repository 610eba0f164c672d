"""Accountant benchmark: certunlearn_theory side by side with Google's dp_accounting.

Each section times the same quantity computed both ways (median over repeats, one process, one
run) and prints the values, their ratio (tightness) and the time ratio (speed). certunlearn works
in mpmath at the default 50 digits and rounds every guarantee on the safe side; dp_accounting works
in float64.

Run:  .venv/bin/python benchmarks/bench_accountant.py [--repeats N]

Sections are plain functions taking ``repeats``; add one by appending it to ``SECTIONS``.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from certunlearn_theory import (  # noqa: E402
    RenyiCurve,
    classical_gaussian_sigma,
    gaussian_sigma,
    linear_rho_max,
    renyi_to_dp,
)


def median_seconds(function: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``function()`` over ``repeats`` calls, after one warm-up call."""
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    print(f"\n== {title}")
    print("  ".join(h.rjust(w) for h, w in zip(header, widths)))
    for row in rows:
        print("  ".join(c.rjust(w) for c, w in zip(row, widths)))


def section_gaussian_sigma(repeats: int) -> None:
    """Analytic Gaussian calibration: gaussian_sigma vs dp_accounting.get_sigma_gaussian."""
    from dp_accounting import gaussian_mechanism

    rows = []
    for eps, delta in [(0.5, 1e-5), (1.0, 1e-5), (4.0, 1e-8), (10.0, 1e-10), (1.0, 1e-100)]:
        ours = gaussian_sigma(eps, delta, 1.0)
        theirs = gaussian_mechanism.get_sigma_gaussian(eps, delta)
        t_ours = median_seconds(lambda: gaussian_sigma(eps, delta, 1.0), repeats)
        t_theirs = median_seconds(lambda: gaussian_mechanism.get_sigma_gaussian(eps, delta),
                                  repeats)
        classical = (f"{classical_gaussian_sigma(eps, delta, 1.0):.6g}" if eps < 1 else "-")
        rows.append([f"{eps:g}", f"{delta:g}", f"{ours:.12g}", f"{theirs:.12g}",
                     f"{ours / theirs:.12f}", classical, f"{t_ours * 1e3:.2f}",
                     f"{t_theirs * 1e3:.2f}", f"{t_ours / t_theirs:.1f}"])
    print_table("gaussian_sigma (sensitivity 1) vs dp_accounting.gaussian_mechanism.get_sigma_gaussian",
                ["eps", "delta", "sigma ours", "sigma dp_acc", "ours/dp_acc", "classical",
                 "ms ours", "ms dp_acc", "time ratio"], rows)


def section_renyi_to_dp(repeats: int) -> None:
    """Linear curve rho*alpha: exact real-order optimum vs dp_accounting.compute_epsilon on its
    default orders."""
    from dp_accounting.rdp import rdp_privacy_accountant as rdp

    orders = rdp.DEFAULT_RDP_ORDERS
    rows = []
    for rho, delta in [(1e-3, 1e-5), (0.0306, 1e-5), (1.0, 1e-5), (0.01, 1e-10), (1e-5, 1e-5)]:
        curve = RenyiCurve.linear(rho)
        values = [rho * a for a in orders]
        ours, alpha = renyi_to_dp(curve, delta, with_order=True)
        theirs, their_alpha = rdp.compute_epsilon(orders, values, delta)
        t_ours = median_seconds(lambda: renyi_to_dp(curve, delta), repeats)
        t_theirs = median_seconds(lambda: rdp.compute_epsilon(orders, values, delta), repeats)
        rows.append([f"{rho:g}", f"{delta:g}", f"{ours:.10g}", f"{theirs:.10g}",
                     f"{ours / theirs:.6f}", f"{alpha:.6g}", f"{their_alpha:g}",
                     f"{t_ours * 1e3:.2f}", f"{t_theirs * 1e3:.2f}", f"{t_ours / t_theirs:.1f}"])
    print_table("renyi_to_dp (improved) on a linear curve vs dp_accounting.rdp.compute_epsilon",
                ["rho", "delta", "eps ours", "eps dp_acc", "ours/dp_acc", "alpha ours",
                 "alpha dp_acc", "ms ours", "ms dp_acc", "time ratio"], rows)


def section_linear_rho_max(repeats: int) -> None:
    """Calibration inverse: linear_rho_max vs a float64 bisection on dp_accounting's
    compute_epsilon (the natural way to calibrate with it)."""
    from dp_accounting.rdp import rdp_privacy_accountant as rdp

    orders = rdp.DEFAULT_RDP_ORDERS

    def their_rho_max(eps, delta):
        lo, hi = 0.0, 1.0
        while rdp.compute_epsilon(orders, [hi * a for a in orders], delta)[0] <= eps:
            lo, hi = hi, 2 * hi
        for _ in range(60):
            mid = (lo + hi) / 2
            if rdp.compute_epsilon(orders, [mid * a for a in orders], delta)[0] <= eps:
                lo = mid
            else:
                hi = mid
        return lo

    rows = []
    for eps, delta in [(1.0, 1e-5), (0.1, 1e-5), (8.0, 1e-5), (1.0, 1e-10)]:
        ours = linear_rho_max(eps, delta)
        mironov = linear_rho_max(eps, delta, conversion="mironov")
        theirs = their_rho_max(eps, delta)
        t_ours = median_seconds(lambda: linear_rho_max(eps, delta), repeats)
        t_theirs = median_seconds(lambda: their_rho_max(eps, delta), max(1, repeats // 5))
        rows.append([f"{eps:g}", f"{delta:g}", f"{ours:.10g}", f"{theirs:.10g}",
                     f"{ours / theirs:.6f}", f"{mironov:.6g}", f"{t_ours * 1e3:.2f}",
                     f"{t_theirs * 1e3:.2f}", f"{t_ours / t_theirs:.3f}"])
    print_table("linear_rho_max (improved) vs bisection on dp_accounting.compute_epsilon",
                ["eps", "delta", "rho ours", "rho dp_acc", "ours/dp_acc", "rho Mironov",
                 "ms ours", "ms dp_acc", "time ratio"], rows)


def section_noise_for(repeats: int) -> None:
    """noise_for per method at T = 10, 1000, 10^6 next to the paper's closed forms and dp_accounting.

    Gradient clipping: the paper's sigma (with and without regularisation) and the sigma the same
    amplification bound would need if rho were calibrated through dp_accounting's RDP conversion
    on its default order grid. Model clipping: the paper's fixed-gamma contraction rule
    theta_eps(2 C2/sigma)^T <= delta. Output perturbation: dp_accounting's analytic Gaussian.
    """
    import math

    from dp_accounting import gaussian_mechanism
    from dp_accounting.rdp import rdp_privacy_accountant as rdp

    from certunlearn_theory import max_noise_ratio, noise_for
    from certunlearn_theory.closed_forms import paper_sigma_regularized, paper_sigma_unregularized

    eps, delta, C0, C1, gamma, C2 = 1.0, 1e-5, 1.0, 1.0, 0.01, 1.0
    orders = [1 + x / 10.0 for x in range(1, 100)] + list(range(11, 64)) + [128, 256, 512]

    def dp_rho_max():
        lo, hi = 0.0, 1.0
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            got, _ = rdp.compute_epsilon(orders, [mid * a for a in orders], delta)
            lo, hi = (mid, hi) if got <= eps else (lo, mid)
        return lo

    ratio_dp = math.sqrt(linear_rho_max(eps, delta) / dp_rho_max())
    rows = []
    for lam in (0.0, 0.1):
        for T in (10, 1000, 10**6):
            ours = noise_for(eps, delta, T, C0, C1, gamma, lam)
            t = median_seconds(lambda: noise_for(eps, delta, T, C0, C1, gamma, lam), repeats)
            paper = (paper_sigma_unregularized(eps, delta, T, C0, C1, gamma) if lam == 0
                     else paper_sigma_regularized(eps, delta, T, C0, C1, gamma, lam))
            rows.append([f"gradient_clipping lam={lam:g}", str(T), f"{ours:.6g}", f"{paper:.6g}",
                         f"{ours / paper:.4f}", f"{ours * ratio_dp:.6g}", f"{t * 1e3:.2f}"])
    for T in (10, 1000):
        kw = dict(method="model_clipping", C2=C2)
        ours = noise_for(eps, delta, T, C0, None, None, **kw)
        t = median_seconds(lambda: noise_for(eps, delta, T, C0, None, None, **kw),
                           min(repeats, 3))
        paper = 2 * C2 / max_noise_ratio(eps, delta ** (1.0 / T))
        rows.append(["model_clipping", str(T), f"{ours:.6g}", f"{paper:.6g}",
                     f"{ours / paper:.4f}", "-", f"{t * 1e3:.2f}"])
    rows.append(["model_clipping", "10^6", "not run", "-", "-", "-",
                 "not run: O(T) recursion, ~10 min"])
    ours = noise_for(eps, delta, None, C0, None, None, method="output_perturbation")
    t = median_seconds(lambda: noise_for(eps, delta, None, C0, None, None,
                                         method="output_perturbation"), repeats)
    theirs = 2 * C0 * gaussian_mechanism.get_sigma_gaussian(eps, delta)
    rows.append(["output_perturbation", "-", f"{ours:.6g}", f"{theirs:.6g} (dp_acc)",
                 f"{ours / theirs:.6f}", "-", f"{t * 1e3:.2f}"])
    print_table(f"noise_for at (eps, delta) = ({eps:g}, {delta:g}), C0 = C1 = C2 = 1, gamma = 0.01",
                ["method", "T", "sigma ours", "paper / ref", "ours/paper", "sigma via dp_acc rho",
                 "ms ours"], rows)


def section_dpsgd(repeats: int) -> None:
    """DP-SGD epsilon: dpsgd_epsilon (real orders) vs dp_accounting's RdpAccountant (default
    orders), with our integer orders alone for reference."""
    import logging

    from dp_accounting import dp_event
    from dp_accounting.rdp import rdp_privacy_accountant as rdp

    from certunlearn_theory import DPSGD_ORDERS, dpsgd_epsilon

    logging.getLogger("absl").setLevel(logging.ERROR)  # its non-converging fractional orders
    integer_orders = [a for a in DPSGD_ORDERS if a == int(a)]

    def theirs_of(z, q, steps, delta):
        acc = rdp.RdpAccountant()
        acc.compose(dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(z)), steps)
        return acc.get_epsilon(delta)

    rows = []
    for z, q, steps, delta in [(0.8, 0.05, 500, 1e-6), (0.8, 0.01, 5000, 1e-6),
                               (1.1, 0.05, 1000, 1e-5), (1.1, 0.2, 100, 1e-6),
                               (3.0, 0.05, 5000, 1e-6), (0.8, 0.2, 5000, 1e-6)]:
        ours = dpsgd_epsilon(z, q, steps, delta)
        integer = dpsgd_epsilon(z, q, steps, delta, orders=integer_orders)
        theirs = theirs_of(z, q, steps, delta)
        reps = max(1, min(repeats, 3))
        t_ours = median_seconds(lambda: dpsgd_epsilon(z, q, steps, delta), reps)
        t_theirs = median_seconds(lambda: theirs_of(z, q, steps, delta), reps)
        rows.append([f"{z:g}", f"{q:g}", str(steps), f"{delta:g}", f"{ours:.6g}",
                     f"{integer:.6g}", f"{theirs:.6g}", f"{ours / theirs:.4f}",
                     f"{integer / theirs:.4f}", f"{t_ours * 1e3:.0f}", f"{t_theirs * 1e3:.0f}"])
    print_table("dpsgd_epsilon (real orders) vs dp_accounting RdpAccountant (default orders)",
                ["z", "q", "steps", "delta", "eps ours", "ours int only", "eps dp_acc",
                 "ours/dp_acc", "int/dp_acc", "ms ours", "ms dp_acc"], rows)


SECTIONS: list[Callable[[int], None]] = [
    section_gaussian_sigma,
    section_renyi_to_dp,
    section_linear_rho_max,
    section_noise_for,
    section_dpsgd,
]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per measurement")
    args = parser.parse_args(argv)
    print("certunlearn_theory at 50 digits (safe-side rounding) vs dp_accounting (float64); "
          f"median of {args.repeats} calls")
    for section in SECTIONS:
        section(args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
