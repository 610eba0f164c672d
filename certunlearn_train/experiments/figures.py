"""PNG figures of an experiment's results folder (matplotlib, Agg backend).

* ``accuracy_vs_epochs.png``: test accuracy against epochs after the request, per method at the
  main eps (mean over seeds, band = min..max over seeds), with the targets dashed; the right
  panel zooms on the targets and the first half of the budget;
* ``epochs_to_target.png``: epochs to each target, per method (mean, error bar = sample std;
  "not reached" when a seed missed it within the budget);
* ``budget_curve.png``: epochs to target against eps for the certified methods, one panel per
  target, the two retraining baselines as horizontal lines;
* ``acc_after_noisy_vs_eps.png``: test accuracy right after the noisy phase (before any
  noise-free training) against eps.
"""
from __future__ import annotations

import os
from typing import Dict, Optional

from .metrics import curve_matrix
from .presets import CERTIFIED, EPS_FREE, METHOD_NAMES
from .results import load_results

__all__ = ["draw_all", "FIGURES", "COLORS"]

FIGURES = ("accuracy_vs_epochs.png", "epochs_to_target.png", "budget_curve.png",
           "acc_after_noisy_vs_eps.png")
COLORS = {m: f"C{i}" for i, m in enumerate(METHOD_NAMES)}
STYLES = {"retrain": "--", "retrain_init_scale": ":"}


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _title(summary):
    return (f"{summary.get('name') or ''}: {summary['seeds']} seeds, "
            f"delta = {summary['delta']:g}").strip(": ")


def _accuracy_vs_epochs(res, path):
    plt = _plt()
    s = res["summary"]
    eps = s["main_eps"]
    ref = s["reference_accuracy"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for ax in axes:
        for m in METHOD_NAMES:
            runs = [c for c in res["curves"] if c["method"] == m and c["status"] == "ok"
                    and (c["eps"] is None or c["eps"] == eps) and c["points"]]
            if not runs:
                continue
            grid, mat = curve_matrix([c["points"] for c in runs])
            label = m if m in EPS_FREE else f"{m} (eps={eps:g})"
            ax.plot(grid, mat.mean(0), color=COLORS[m], ls=STYLES.get(m, "-"), lw=1.8,
                    label=label)
            ax.fill_between(grid, mat.min(0), mat.max(0), color=COLORS[m], alpha=0.15, lw=0)
        for k in s["targets"]:
            ax.axhline(ref - k / 100, color="0.5", lw=0.7, ls="--")
        ax.set_xlabel("epochs after the request (passes over the retain set)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy")
    axes[0].set_ylim(0, 1)
    axes[0].set_title("whole budget; dashed: targets")
    low = ref - max(s["targets"]) / 100 - 0.04
    axes[1].set_ylim(low, min(1.0, ref + 0.02))
    axes[1].set_xlim(0, s["epochs"] / 2)
    axes[1].set_title("zoom on the targets (band: min..max over seeds)")
    axes[1].legend(fontsize=8, loc="lower right")
    fig.suptitle(f"Accuracy vs epochs ({_title(s)})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _rows(summary, method, eps, drop):
    for r in summary["rows"]:
        if r["method"] == method and r["target_drop"] == drop and \
                (r["eps"] is None or r["eps"] == eps):
            return r
    return None


def _epochs_to_target(res, path):
    plt = _plt()
    s = res["summary"]
    eps = s["main_eps"]
    targets = s["targets"]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    width = 0.8 / len(METHOD_NAMES)
    top = 1.0
    for j, m in enumerate(METHOD_NAMES):
        for i, k in enumerate(targets):
            r = _rows(s, m, eps, k)
            if r is None:
                continue
            x = i + (j - (len(METHOD_NAMES) - 1) / 2) * width
            if r["epochs_mean"] is None:
                ax.text(x, 0.2, f"not reached ({r['reached']}/{r['n_seeds']})", rotation=90,
                        ha="center", va="bottom", fontsize=7, color=COLORS[m])
                continue
            ax.bar(x, r["epochs_mean"], width, yerr=r["epochs_std"], color=COLORS[m],
                   label=m if i == 0 or not ax.get_legend_handles_labels()[1].count(m) else None,
                   capsize=2, hatch="//" if m in EPS_FREE else None, edgecolor="white")
            top = max(top, r["epochs_mean"] + (r["epochs_std"] or 0))
    handles, labels = ax.get_legend_handles_labels()
    uniq = dict(zip(labels, handles))
    ax.legend(uniq.values(), uniq.keys(), fontsize=8)
    ax.set_xticks(range(len(targets)))
    ax.set_xticklabels([f"retrain - {k:g} pt\n({s['reference_accuracy'] - k / 100:.3f})"
                        for k in targets])
    ax.set_ylabel("epochs to target")
    ax.set_ylim(0, top * 1.15)
    ax.set_title(f"Epochs to target at eps = {eps:g} ({_title(s)})")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _eps_values(s):
    return sorted({r["eps"] for r in s["rows"] if r["eps"] is not None})


def _budget_curve(res, path):
    plt = _plt()
    s = res["summary"]
    eps_values = _eps_values(s)
    targets = s["targets"]
    fig, axes = plt.subplots(1, len(targets), figsize=(4.2 * len(targets), 4), sharey=True,
                             squeeze=False)
    ceiling = s["epochs"] * 1.05
    for ax, k in zip(axes[0], targets):
        for m in CERTIFIED:
            xs, ys, es, miss = [], [], [], []
            for e in eps_values:
                r = _rows(s, m, e, k)
                if r is None:
                    continue
                if r["epochs_mean"] is None:
                    miss.append(e)
                else:
                    xs.append(e), ys.append(r["epochs_mean"]), es.append(r["epochs_std"])
            if xs:
                ax.errorbar(xs, ys, yerr=es, color=COLORS[m], marker="o", ms=4, capsize=2,
                            label=m)
            if miss:
                ax.scatter(miss, [ceiling] * len(miss), color=COLORS[m], marker="x",
                           label=None if xs else f"{m} (not reached)")
        for m in EPS_FREE:
            r = _rows(s, m, None, k)
            if r is not None and r["epochs_mean"] is not None:
                ax.axhline(r["epochs_mean"], color=COLORS[m], ls=STYLES[m], label=m)
        ax.axhline(ceiling, color="0.6", lw=0.6)
        ax.set_xscale("log")
        ax.set_xlabel("eps")
        ax.set_title(f"target: retrain - {k:g} pt")
        ax.grid(alpha=0.3, which="both")
    axes[0][0].set_ylabel("epochs to target (x: not reached)")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(f"Budget curve ({_title(s)})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _acc_after_noisy(res, path):
    plt = _plt()
    s = res["summary"]
    eps_values = _eps_values(s)
    drop = s["targets"][0]
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for m in CERTIFIED:
        xs, ys, es = [], [], []
        for e in eps_values:
            r = _rows(s, m, e, drop)
            if r is not None and r["acc_after_noisy_mean"] is not None:
                xs.append(e), ys.append(r["acc_after_noisy_mean"])
                es.append(r["acc_after_noisy_std"])
        if xs:
            ax.errorbar(xs, ys, yerr=es, color=COLORS[m], marker="o", ms=4, capsize=2, label=m)
    ax.axhline(s["reference_accuracy"], color=COLORS["retrain"], ls="--",
               label="retrain (final)")
    ax.set_xscale("log")
    ax.set_ylim(0, 1)
    ax.set_xlabel("eps")
    ax.set_ylabel("test accuracy right after the noisy phase")
    ax.set_title(f"Before any noise-free training ({_title(s)})", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def draw_all(results_dir: str, out_dir: Optional[str] = None) -> Dict[str, str]:
    """Draw the four figures of ``results_dir`` into ``out_dir`` (default: its ``figures/``)."""
    res = load_results(results_dir)
    out_dir = out_dir or os.path.join(results_dir, "figures")
    os.makedirs(out_dir, exist_ok=True)
    paths = {}
    for name, fn in zip(FIGURES, (_accuracy_vs_epochs, _epochs_to_target, _budget_curve,
                                  _acc_after_noisy)):
        p = os.path.join(out_dir, name)
        fn(res, p)
        paths[name] = p
    return paths
