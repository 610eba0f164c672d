"""Summary table and figures from synthetic runs with known answers (no training)."""
import csv
import json

import pytest

from certunlearn_train.experiments.figures import FIGURES
from certunlearn_train.experiments.presets import CERTIFIED, METHOD_NAMES, get_preset
from certunlearn_train.experiments.summary import summarize, write_outputs


def _run(method, eps, seed, accs, noisy=0.0, status="ok"):
    pts = [{"epochs": noisy + i + (0 if method in CERTIFIED else 1), "test_acc": a,
            "val_acc": a, "wall_s": 0.5 * (i + 1), "phase": "noisy" if i == 0 else "train"}
           for i, a in enumerate(accs)]
    return {"method": method, "eps": eps, "delta": None if eps is None else 1e-5,
            "seed": seed, "config": {"lr": 0.1}, "status": status,
            "error": None if status == "ok" else "out of reach", "noisy_epochs": noisy,
            "points": pts if status == "ok" else [], "certificate": None,
            "times": {"pre_request_s": 0.0, "noisy_s": 0.1, "train_s": 1.0},
            "certified_epsilon": None, "certified_delta": None, "sigma": None,
            "n_retain": 100, "n_forget": 10, "key": f"{method}-{eps}-{seed}"}


@pytest.fixture
def synthetic():
    cfg = get_preset("digits-quick")  # eps [1, 100], targets 1, 2, 5 points, 3 seeds
    results = []
    for seed in range(3):
        # retrain ends at 0.90 on every seed: targets 0.89, 0.88, 0.85
        results.append(_run("retrain", None, seed, [0.5, 0.86, 0.89, 0.90]))  # 3, 3, 2 epochs
        results.append(_run("retrain_init_scale", None, seed, [0.5, 0.7, 0.86, 0.95]))  # 4,4,3
        for eps in cfg["eps"]:
            # gradient clipping: noisy phase of 0.5 epochs, target -1 reached 1.5 epochs later
            results.append(_run("gradient_clipping", eps, seed, [0.1, 0.85, 0.9, 0.9], 0.5))
            results.append(_run("model_clipping", eps, seed, [0.1, 0.2, 0.3, 0.4], 0.25))
            results.append(_run("output_perturbation", eps, seed,
                                [0.1, 0.9 if seed else 0.1, 0.9, 0.9]))
            results.append(_run("dpsgd_group", eps, seed, [0.1, 0.2, 0.3, 0.4],
                                status="ok" if eps == 1.0 else "infeasible"))
    chosen = {}
    return cfg, results, chosen


def _row(summary, method, eps, drop):
    return next(r for r in summary["rows"] if r["method"] == method and r["eps"] == eps
                and r["target_drop"] == drop)


def test_summary_known_answers(synthetic):
    cfg, results, chosen = synthetic
    s = summarize(cfg, results, chosen)
    assert s["reference_accuracy"] == pytest.approx(0.90)
    r = _row(s, "retrain", None, 1.0)
    assert (r["epochs_mean"], r["epochs_std"], r["reached"]) == (3.0, 0.0, 3)
    r = _row(s, "gradient_clipping", 1.0, 1.0)
    assert r["epochs_mean"] == pytest.approx(2.5) and r["noisy_epochs"] == 0.5
    assert r["ratio_vs_retrain"] == pytest.approx(2.5 / 3)
    assert r["ratio_vs_retrain_init_scale"] == pytest.approx(2.5 / 4)
    assert r["acc_after_noisy_mean"] == pytest.approx(0.1)
    r = _row(s, "gradient_clipping", 1.0, 5.0)  # 0.85 >= 0.85 one epoch after the phase
    assert r["epochs_mean"] == pytest.approx(1.5)
    r = _row(s, "output_perturbation", 1.0, 1.0)  # seeds: 2, 1, 1 epochs
    assert r["epochs_mean"] == pytest.approx(4 / 3)
    assert r["epochs_std"] == pytest.approx(((2 / 3) ** 2 + 2 * (1 / 3) ** 2) ** 0.5 / 2 ** 0.5)
    r = _row(s, "model_clipping", 100.0, 2.0)
    assert r["epochs_mean"] is None and r["reached"] == 0 and r["ratio_vs_retrain"] is None
    r = _row(s, "dpsgd_group", 100.0, 1.0)
    assert r["status"] == "infeasible" and r["reached"] == 0 and r["final_acc_mean"] is None
    assert _row(s, "retrain", None, 1.0)["acc_after_noisy_mean"] is None


def test_outputs_and_figures_with_unreached_and_infeasible_methods(synthetic, tmp_path):
    cfg, results, chosen = synthetic
    lines = []
    write_outputs(str(tmp_path), cfg, [], chosen, results, echo=lines.append)
    with open(tmp_path / "summary.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["method"] for r in rows} == set(METHOD_NAMES)
    bad = next(r for r in rows if r["method"] == "dpsgd_group" and r["eps"] == "100.0")
    assert bad["epochs_mean"] == "" and bad["reached"] == "0"
    table = (tmp_path / "table.md").read_text()
    assert "| model_clipping | -1 pt (0.890) | - | 0/3 |" in table
    assert len(open(tmp_path / "curves.jsonl").read().splitlines()) == len(results)
    for name in FIGURES:
        assert (tmp_path / "figures" / name).read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "summary.json").read_text())["certificates_verified"] == 0


def test_no_finished_retrain_is_an_error(synthetic):
    cfg, results, chosen = synthetic
    with pytest.raises(ValueError, match="no finished retrain run"):
        summarize(cfg, [r for r in results if r["method"] != "retrain"], chosen)
