"""Reading accuracy curves: epochs to a target, the tuning score, summaries over seeds.

A curve is a list of points ``{"epochs": e, "test_acc": a, "val_acc": v, "wall_s": w}`` sorted
by ``epochs``: the number of passes over the retain set spent after the deletion request (the
noisy steps count as T * batch / n_retain passes, so a point may sit at a fractional epoch),
the accuracies of the model at that moment and the wall time spent so far (evaluation excluded).
"""
from __future__ import annotations

import math
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np

__all__ = ["epochs_to_target", "wall_to_target", "validation_score", "mean_spread",
           "accuracy_at"]


def _check_curve(points: Sequence[Dict], key: str) -> None:
    last = -math.inf
    for p in points:
        e = p.get("epochs")
        if not isinstance(e, (int, float)) or isinstance(e, bool) or not e >= 0:
            raise ValueError(f"curve point epochs must be a number >= 0, got {e!r}")
        if e < last:
            raise ValueError(f"curve points must be sorted by epochs, got {e} after {last}")
        last = e
        if key not in p:
            raise ValueError(f"curve point at epoch {e} has no {key!r}")


def _first_reaching(points, target, key):
    if not (isinstance(target, (int, float)) and math.isfinite(target)):
        raise ValueError(f"target must be a finite number, got {target!r}")
    _check_curve(points, key)
    for p in points:
        v = p[key]
        if v is not None and not (isinstance(v, float) and math.isnan(v)) and v >= target:
            return p
    return None


def epochs_to_target(points: Sequence[Dict], target: float, key: str = "test_acc"
                     ) -> Optional[float]:
    """Epochs of the first point whose ``key`` accuracy is at least ``target``; None if never.

    Only measured points count (no interpolation between epochs): a method whose noisy phase
    already reaches the target is credited with the phase's fractional epochs.
    """
    p = _first_reaching(points, target, key)
    return None if p is None else float(p["epochs"])


def wall_to_target(points: Sequence[Dict], target: float, key: str = "test_acc"
                   ) -> Optional[float]:
    """Wall seconds (evaluation excluded) until the first point reaching ``target``; None if never."""
    p = _first_reaching(points, target, key)
    return None if p is None else float(p["wall_s"])


def accuracy_at(points: Sequence[Dict], epoch: float, key: str = "val_acc",
                before: float = 0.0) -> float:
    """Accuracy of the last point at or before ``epoch`` (``before`` when there is none)."""
    value = before
    for p in points:
        if p["epochs"] <= epoch + 1e-9:
            value = p[key]
        else:
            break
    return float(value)


def validation_score(points: Sequence[Dict], budget: int, key: str = "val_acc") -> float:
    """Tuning score: mean validation accuracy at epochs 1, 2, ..., ``budget``.

    Each epoch counts the model available then (the last point at or before it; 0 before the
    first). It rewards reaching a high accuracy early and staying there, and charges the noisy
    phase its epochs. Never computed on the test set.
    """
    if budget < 1:
        raise ValueError(f"budget must be >= 1 epoch, got {budget!r}")
    _check_curve(points, key)
    return float(np.mean([accuracy_at(points, e, key) for e in range(1, int(budget) + 1)]))


def mean_spread(values: Iterable[Optional[float]]):
    """(mean, sample std, number of values, number given) over the values that are not None."""
    vals = list(values)
    got = [float(v) for v in vals if v is not None]
    if not got:
        return math.nan, math.nan, 0, len(vals)
    std = float(np.std(got, ddof=1)) if len(got) > 1 else 0.0
    return float(np.mean(got)), std, len(got), len(vals)


def curve_matrix(curves: List[Sequence[Dict]], key: str = "test_acc"):
    """Common epoch grid (the first curve's) and one row per curve, interpolated onto it."""
    grid = np.array([p["epochs"] for p in curves[0]], dtype=float)
    rows = []
    for c in curves:
        xs = np.array([p["epochs"] for p in c], dtype=float)
        ys = np.array([p[key] for p in c], dtype=float)
        rows.append(np.interp(grid, xs, ys))
    return grid, np.vstack(rows)


def comparison_line(noisy_epochs: float, noisy_acc: float, unlearn_accs: Sequence[float],
                    control_noisy_acc: float, control_accs: Sequence[float],
                    retrain_accs: Sequence[float], drop: float = 1.0) -> str:
    """One line comparing one unlearning run with its control and a retrain (used by the demo).

    The target is the retrain's final test accuracy minus ``drop`` points. ``unlearn_accs``,
    ``control_accs`` and ``retrain_accs`` are test accuracies after each pass; the unlearning
    and the control start after ``noisy_epochs`` with ``noisy_acc`` / ``control_noisy_acc``.
    The control is the same pipeline (noisy phase, fine-tuning) started from a model whose
    private parameters are zero, a point of the C0 ball (THEORY.md section 10.5): whatever the
    unlearning gains over it came from the original model. Only that difference is stated as a
    gain, for this one run; a saving is what ``certunlearn experiment`` measures over seeds.
    """
    if not retrain_accs:
        raise ValueError("retrain_accs must hold at least one epoch's accuracy")
    target = retrain_accs[-1] - drop / 100.0

    def reach(start_acc, accs):
        return epochs_to_target([{"epochs": noisy_epochs, "test_acc": start_acc}] +
                                [{"epochs": noisy_epochs + i + 1, "test_acc": a}
                                 for i, a in enumerate(accs)], target)

    u, c = reach(noisy_acc, unlearn_accs), reach(control_noisy_acc, control_accs)
    r = epochs_to_target([{"epochs": i + 1, "test_acc": a} for i, a in enumerate(retrain_accs)],
                         target)

    def show(x, n):
        return f"never within {n:g}" if x is None else f"{x:.2f}"

    head = (f"epochs to reach the retrained test accuracy minus {drop:g} point ({target:.3f}): "
            f"unlearning {show(u, noisy_epochs + len(unlearn_accs))}, control (same pipeline "
            f"from zero) {show(c, noisy_epochs + len(control_accs))}, retraining "
            f"{show(r, len(retrain_accs))}")
    if u is None or c is None:
        verdict = "no gain over the control measured"
    elif u < c:
        verdict = f"{c - u:.2f} epochs fewer than the control in this run"
    else:
        verdict = "no gain over the control in this run"
    return (f"{head}: {verdict} (one seed, not a measured saving; `certunlearn experiment` "
            f"measures over seeds against retraining with a tuned initialisation scale)")
