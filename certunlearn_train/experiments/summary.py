"""Outputs of an experiment: raw curves, tuning record, summary table (CSV/JSON/Markdown), figures.

Files written into the results folder:

* ``curves.jsonl``: one line per evaluation run (method, eps, delta, seed, configuration, every
  evaluated point, wall time per phase, certificate path);
* ``tuning.json``: every method's grid, the score of each configuration tried, the one chosen;
* ``summary.csv`` / ``summary.json``: per method, eps and target, epochs to target (mean, sample
  std, seeds that reached it), wall time to target, accuracy right after the noisy phase, final
  accuracy and wall time per phase;
* ``table.md``: the table at the main eps, with the ratio to both retraining baselines;
* ``figures/*.png`` (see :mod:`.figures`).

Targets are "retrained accuracy minus k points": the mean over seeds of ``retrain``'s final test
accuracy, minus k/100.
"""
from __future__ import annotations

import csv
import json
import math
import os
from typing import Any, Dict, List, Optional

from .metrics import epochs_to_target, mean_spread, wall_to_target
from .presets import CERTIFIED, METHOD_NAMES
from .results import load_results

__all__ = ["write_outputs", "summarize", "load_results", "verify_certificates", "format_table",
           "SUMMARY_FIELDS"]

SUMMARY_FIELDS = ["method", "eps", "delta", "target_drop", "target_acc", "epochs_mean",
                  "epochs_std", "reached", "n_seeds", "wall_to_target_s_mean", "noisy_epochs",
                  "acc_after_noisy_mean", "acc_after_noisy_std", "final_acc_mean",
                  "final_acc_std", "pre_request_s_mean", "noisy_s_mean", "train_s_mean",
                  "ratio_vs_retrain", "ratio_vs_retrain_init_scale", "config"]


def _num(v):
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else v


def reference_accuracy(results: List[Dict[str, Any]]) -> float:
    """Mean final test accuracy of ``retrain`` over its seeds."""
    finals = [r["points"][-1]["test_acc"] for r in results
              if r["method"] == "retrain" and r["status"] == "ok" and r["points"]]
    if not finals:
        raise ValueError("no finished retrain run: the targets are defined from it")
    return sum(finals) / len(finals)


def summarize(cfg: Dict[str, Any], results: List[Dict[str, Any]],
              chosen: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    """Summary rows (one per method, eps and target) from the evaluation runs."""
    ref = reference_accuracy(results)
    groups: Dict[Any, List[Dict[str, Any]]] = {}
    for r in results:
        groups.setdefault((r["method"], r["eps"]), []).append(r)
    rows = []
    for (method, eps), runs in groups.items():
        ok = [r for r in runs if r["status"] == "ok"]
        for drop in cfg["targets"]:
            target = ref - drop / 100.0
            ept = [epochs_to_target(r["points"], target) for r in ok] + \
                [None] * (len(runs) - len(ok))
            wtt = [wall_to_target(r["points"], target) for r in ok]
            m, s, reached, n = mean_spread(ept)
            # certified methods: the first point is the model right after the noise (for
            # dpsgd_group, the DP-SGD model); the exact methods have no such point
            after = mean_spread([r["points"][0]["test_acc"] for r in ok
                                 if r["points"] and method in CERTIFIED])
            final = mean_spread([r["points"][-1]["test_acc"] for r in ok])
            times = {k: mean_spread([r["times"][k] for r in ok])[0]
                     for k in ("pre_request_s", "noisy_s", "train_s")}
            config = chosen.get(method if eps is None else f"{method}@{eps:g}", {}).get("config")
            rows.append({
                "method": method, "eps": eps, "delta": runs[0]["delta"], "target_drop": drop,
                "target_acc": target, "epochs_mean": _num(m) if reached == n else None,
                "epochs_std": _num(s) if reached == n else None, "reached": reached,
                "n_seeds": n, "wall_to_target_s_mean": _num(mean_spread(wtt)[0])
                if reached == n else None,
                "noisy_epochs": ok[0]["noisy_epochs"] if ok else None,
                "acc_after_noisy_mean": _num(after[0]), "acc_after_noisy_std": _num(after[1]),
                "final_acc_mean": _num(final[0]), "final_acc_std": _num(final[1]),
                "pre_request_s_mean": _num(times["pre_request_s"]),
                "noisy_s_mean": _num(times["noisy_s"]), "train_s_mean": _num(times["train_s"]),
                "config": config, "status": "ok" if ok else "infeasible",
                "epochs_per_seed": ept})
    by = {(r["method"], r["eps"], r["target_drop"]): r for r in rows}
    for r in rows:
        for base in ("retrain", "retrain_init_scale"):
            b = by.get((base, None, r["target_drop"]))
            val = None
            if b and r["epochs_mean"] is not None and b["epochs_mean"]:
                val = r["epochs_mean"] / b["epochs_mean"]
            r[f"ratio_vs_{base}"] = val
    order = {m: i for i, m in enumerate(METHOD_NAMES)}
    rows.sort(key=lambda r: (r["target_drop"], order[r["method"]], r["eps"] or 0.0))
    return {"reference_accuracy": ref, "rows": rows, "main_eps": cfg["main_eps"],
            "delta": cfg["delta"], "targets": cfg["targets"], "epochs": cfg["epochs"],
            "seeds": cfg["seeds"], "name": cfg.get("name")}


def _fmt(v, spec=".2f", none="-"):
    if v is None:
        return none
    return format(v, spec)


def format_table(summary: Dict[str, Any], eps: Optional[float] = None) -> str:
    """Markdown table at ``eps`` (default: the main eps) plus the exact methods."""
    eps = summary["main_eps"] if eps is None else eps
    lines = [f"Targets: retrain's final test accuracy {summary['reference_accuracy']:.4f} minus "
             f"k points; (eps, delta) = ({eps:g}, {summary['delta']:g}) for the certified "
             f"methods; {summary['seeds']} seeds; epochs = passes over the retain set after "
             "the request (mean ± sample std; '-' when a seed never reached the target within "
             f"the {summary['epochs']}-epoch budget).", "",
             "| method | target | epochs to target | reached | ratio vs retrain | "
             "ratio vs retrain_init_scale | wall to target (s) | noisy epochs | "
             "acc. after noisy phase | final acc. | wall noisy / train / before request (s) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in summary["rows"]:
        if r["eps"] is not None and r["eps"] != eps:
            continue
        ept = "-" if r["epochs_mean"] is None else \
            f"{r['epochs_mean']:.2f} ± {r['epochs_std']:.2f}"
        after = "-" if r["acc_after_noisy_mean"] is None else \
            f"{r['acc_after_noisy_mean']:.3f}"
        final = "-" if r["final_acc_mean"] is None else \
            f"{r['final_acc_mean']:.3f} ± {r['final_acc_std']:.3f}"
        walls = " / ".join(_fmt(r[k], ".2f") for k in ("noisy_s_mean", "train_s_mean",
                                                         "pre_request_s_mean"))
        lines.append(
            f"| {r['method']} | -{r['target_drop']:g} pt ({r['target_acc']:.3f}) | {ept} | "
            f"{r['reached']}/{r['n_seeds']} | {_fmt(r['ratio_vs_retrain'])} | "
            f"{_fmt(r['ratio_vs_retrain_init_scale'])} | {_fmt(r['wall_to_target_s_mean'])} | "
            f"{_fmt(r['noisy_epochs'])} | {after} | {final} | {walls} |")
    return "\n".join(lines)


def verify_certificates(out: str, results: List[Dict[str, Any]]) -> int:
    """Verify every certificate the evaluation runs wrote, against the model stored with it
    and the file hash its unit recorded; return how many.

    Raises:
        CertificateError: a certificate or model is missing, was edited after its run, or
            does not verify (the message names the file).
    """
    import hashlib

    from ..certificates import CertificateError, RunCertificate
    from ..model_files import ModelFileError, load_model_file, model_from_arch
    n = 0
    for r in results:
        if not r.get("certificate"):
            continue
        path = os.path.join(out, r["certificate"])
        model_path = path[:-len(".json")] + ".pt"
        try:
            with open(path, "rb") as fh:
                raw = fh.read()
            if r.get("certificate_sha256") not in (None, hashlib.sha256(raw).hexdigest()):
                raise CertificateError("edited after its run (its SHA-256 is not the one the "
                                       "unit recorded)")
            if "certificate_sha256" not in r:
                raise CertificateError("written by an older version without its model: delete "
                                       "the unit to run it again")
            if not os.path.exists(model_path):
                raise CertificateError(f"the model it binds, {model_path}, is missing")
            state, arch = load_model_file(model_path)
            cert = RunCertificate.from_json(raw.decode("utf-8"))
            cert.verify(model_from_arch(arch, state), allow_unverifiable=True)
        except (OSError, UnicodeDecodeError, CertificateError, ModelFileError) as exc:
            raise CertificateError(f"{path}: {exc}") from None
        n += 1
    return n


def write_outputs(out: str, cfg: Dict[str, Any], tuning, chosen, results, *,
                  echo=print) -> Dict[str, Any]:
    from ..files import atomic_write_bytes
    from .figures import draw_all
    lines = [json.dumps({k: r.get(k) for k in ("method", "eps", "delta", "seed", "config",
                                                "status", "error", "noisy_epochs", "points",
                                                "times", "certificate", "certified_epsilon",
                                                "certified_delta", "sigma", "n_retain",
                                                "n_forget", "key")}, sort_keys=True)
             for r in results]
    atomic_write_bytes(os.path.join(out, "curves.jsonl"), ("\n".join(lines) + "\n").encode())
    grids = {m: cfg["grids"][m] for m in METHOD_NAMES}
    tuning_doc = {"n_configs": cfg["n_configs"], "tune_seeds": cfg["tune_seeds"],
                  "criterion": "mean validation accuracy at epochs 1..budget",
                  "grids": grids, "tried": tuning, "chosen": chosen}
    atomic_write_bytes(os.path.join(out, "tuning.json"),
                       (json.dumps(tuning_doc, indent=1, sort_keys=True) + "\n").encode())
    summary = summarize(cfg, results, chosen)
    n_cert = verify_certificates(out, results)
    summary["certificates_verified"] = n_cert
    atomic_write_bytes(os.path.join(out, "summary.json"),
                       (json.dumps(summary, indent=1, sort_keys=True) + "\n").encode())
    import io
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=SUMMARY_FIELDS, extrasaction="ignore",
                       lineterminator="\n")
    w.writeheader()
    for r in summary["rows"]:
        w.writerow({k: (json.dumps(r[k], sort_keys=True) if k == "config" else
                        ("" if r[k] is None else r[k])) for k in SUMMARY_FIELDS})
    atomic_write_bytes(os.path.join(out, "summary.csv"), buf.getvalue().encode())
    table = format_table(summary)
    atomic_write_bytes(os.path.join(out, "table.md"), (table + "\n").encode())
    draw_all(out)
    echo("grids (every method tried the same number of configurations, chosen on validation):")
    for m in METHOD_NAMES:
        echo(f"  {m}: {json.dumps(grids[m], sort_keys=True)}")
    echo("chosen:")
    for g, c in chosen.items():
        echo(f"  {g}: {json.dumps(c['config'], sort_keys=True)} (val score "
             f"{c['val_score']:.4f})")
    echo("")
    echo(table)
    echo("")
    echo(f"{n_cert} certificates saved under {out}/certificates with the models they bind, "
         f"all verified again from disk")
    return summary


