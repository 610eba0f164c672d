"""digits-quick end to end: killed mid-run, resumed without recomputing, outputs and certificates.

One run serves every check (the preset takes well under a minute on one thread): a subprocess
runs `certunlearn experiment --preset digits-quick` and is SIGKILLed as soon as a unit file
appears; the rerun (in this process, to read its counters) must reuse every finished unit
without touching its file, compute exactly the rest, and leave outputs that parse and
certificates that verify.
"""
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from certunlearn_train.experiments.figures import FIGURES
from certunlearn_train.experiments.presets import CERTIFIED, METHOD_NAMES, get_preset
from certunlearn_train.experiments.runner import Experiment, unit_key
from certunlearn_train.model_files import load_model

pytestmark = pytest.mark.slow


def _units(out: Path):
    return {p.name: p.stat().st_mtime_ns for p in (out / "units").glob("[0-9a-f]*.json")}


@pytest.fixture(scope="module")
def resumed_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("exp") / "quick"
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "certunlearn_train.cli", "experiment", "--preset",
           "digits-quick", "--out", str(out), "--no-progress"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if (out / "units").is_dir() and _units(out):
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed: " + \
            proc.stderr.read().decode()[-2000:]
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    before = _units(out)
    assert before, "no unit had finished when the run was killed"
    assert not (out / "summary.csv").exists(), "the run was not killed mid-way"
    time.sleep(0.01)
    cfg = get_preset("digits-quick")
    lines = []
    exp = Experiment(cfg, str(out), progress=False, echo=lines.append)
    summary = exp.run()
    return {"out": out, "before": before, "exp": exp, "cfg": cfg, "summary": summary,
            "printed": "\n".join(lines)}


def test_resume_recomputes_nothing_that_had_finished(resumed_run):
    out, before, exp = resumed_run["out"], resumed_run["before"], resumed_run["exp"]
    after = _units(out)
    for name, mtime in before.items():
        assert after[name] == mtime, f"unit {name} was rewritten"
    n_tune, n_eval = exp.plan()
    assert exp.reused >= len(before)  # every finished unit read back (some may repeat)
    assert exp.computed == len(after) - len(before)
    assert exp.computed + exp.reused == n_tune + n_eval
    stats = json.loads((out / "run_stats.json").read_text())
    assert stats["computed_units"] == exp.computed and stats["reused_units"] == exp.reused
    # a third run computes nothing at all
    again = Experiment(resumed_run["cfg"], str(out), progress=False, echo=lambda s: None)
    again.run()
    assert again.computed == 0 and _units(out) == after


def test_curves_cover_every_method_eps_and_seed(resumed_run):
    out, cfg = resumed_run["out"], resumed_run["cfg"]
    rows = [json.loads(line) for line in (out / "curves.jsonl").read_text().splitlines()]
    got = {(r["method"], r["eps"], r["seed"]) for r in rows}
    want = {(m, e, s) for m in CERTIFIED for e in cfg["eps"] for s in range(cfg["seeds"])} | \
        {(m, None, s) for m in ("retrain", "retrain_init_scale") for s in range(cfg["seeds"])}
    assert got == want
    for r in rows:
        if r["status"] != "ok":
            continue
        pts = r["points"]
        assert [p["epochs"] for p in pts] == sorted(p["epochs"] for p in pts)
        assert pts[-1]["epochs"] == pytest.approx(r["noisy_epochs"] + cfg["epochs"])
        assert all(0.0 <= p["test_acc"] <= 1.0 and p["wall_s"] >= 0 for p in pts)
        if r["method"] in ("gradient_clipping", "model_clipping"):
            c = r["config"]
            assert r["noisy_epochs"] == pytest.approx(c["steps"] * c["noisy_batch"]
                                                      / r["n_retain"])
            assert pts[0]["phase"] == "noisy"
    # each seed draws its own forget set (sizes equal, retain sets differ through the key)
    by_seed = {r["seed"]: r for r in rows if r["method"] == "retrain"}
    assert len({r["key"] for r in by_seed.values()}) == cfg["seeds"]


def test_forget_sets_and_originals_differ_between_seeds(resumed_run):
    exp = resumed_run["exp"]
    import torch
    f0 = exp.data.split(0)[1][0]
    f1 = exp.data.split(1)[1][0]
    assert f0.shape == f1.shape and not torch.equal(f0, f1)
    w0 = next(exp.original(0).parameters()).detach().clone()
    w1 = next(exp.original(1).parameters()).detach().clone()
    assert not torch.equal(w0, w1)


def test_summary_table_and_figures(resumed_run):
    out, cfg = resumed_run["out"], resumed_run["cfg"]
    with open(out / "summary.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["method"] for r in rows} == set(METHOD_NAMES)
    assert len(rows) == (len(CERTIFIED) * len(cfg["eps"]) + 2) * len(cfg["targets"])
    ref = resumed_run["summary"]["reference_accuracy"]
    for r in rows:
        assert float(r["target_acc"]) == pytest.approx(ref - float(r["target_drop"]) / 100)
        assert int(r["reached"]) <= int(r["n_seeds"]) == cfg["seeds"]
        if r["method"] == "retrain":
            assert r["ratio_vs_retrain"] in ("", "1.0")
    table = (out / "table.md").read_text()
    for m in METHOD_NAMES:
        assert f"| {m} |" in table
    printed = resumed_run["printed"]
    for m in METHOD_NAMES:  # the grids are printed with the results
        assert f"  {m}: " in printed
    tuning = json.loads((out / "tuning.json").read_text())
    counts = {}
    for t in tuning["tried"]:
        counts.setdefault((t["method"], t["eps"]), set()).add(t["config_index"])
    assert {len(v) for v in counts.values()} == {cfg["n_configs"]}
    for name in FIGURES:
        data = (out / "figures" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_every_certificate_is_saved_and_verifies(resumed_run):
    from certunlearn_train.certificates import RunCertificate
    out = resumed_run["out"]
    rows = [json.loads(line) for line in (out / "curves.jsonl").read_text().splitlines()]
    ok = [r for r in rows if r["status"] == "ok"]
    assert ok and all(r["certificate"] for r in ok)
    for r in ok:
        cert = RunCertificate.load(str(out / r["certificate"]))
        model_file = str(out / r["certificate"])[:-len(".json")] + ".pt"
        assert cert.verify(load_model(model_file)[0], allow_unverifiable=True).model_checked
        want = {"dpsgd_group": ("dpsgd", "dpsgd_group"),
                "retrain_init_scale": ("retrain",)}.get(r["method"], (r["method"],))
        assert cert.method in want
        if r["method"] in CERTIFIED:
            assert cert.epsilon <= r["eps"] * (1 + 1e-9) and cert.delta <= r["delta"]
        else:
            assert (cert.epsilon, cert.delta) == (0.0, 0.0)
    assert resumed_run["summary"]["certificates_verified"] == len(ok)


def test_the_command_verifies_a_stored_certificate_with_its_model(resumed_run, capsys):
    from certunlearn_train.cli import EXIT_NOT_VERIFIABLE, EXIT_OK, main
    out = resumed_run["out"]
    rows = [json.loads(line) for line in (out / "curves.jsonl").read_text().splitlines()]
    for method, code in (("gradient_clipping", EXIT_OK), ("retrain", EXIT_NOT_VERIFIABLE)):
        r = next(r for r in rows if r["method"] == method and r["status"] == "ok")
        cert = str(out / r["certificate"])
        assert main(["verify", cert, cert[:-len(".json")] + ".pt"]) == code
    assert "parameters.d" not in capsys.readouterr().out  # counted from the stored model


def test_a_certificate_edited_on_disk_stops_a_rerun(resumed_run, tmp_path):
    import shutil

    from certunlearn_train.certificates import CertificateError
    out = tmp_path / "copy"
    shutil.copytree(resumed_run["out"], out)
    rows = [json.loads(line) for line in (out / "curves.jsonl").read_text().splitlines()]
    victim = out / next(r for r in rows if r["status"] == "ok")["certificate"]
    original = victim.read_bytes()
    data = json.loads(original)
    data["noise_seed_user_supplied"] = False  # unchecked by verify, but not by the rerun
    victim.write_text(json.dumps(data))
    exp = Experiment(resumed_run["cfg"], str(out), progress=False, echo=lambda s: None)
    with pytest.raises(CertificateError, match="edited after its run"):
        exp.run()
    assert exp.computed == 0  # every unit was reused: the check is on reuse
    victim.write_bytes(original)
    victim.with_suffix(".pt").unlink()  # the model it binds is gone
    with pytest.raises(CertificateError, match="the model it binds, .* is missing"):
        Experiment(resumed_run["cfg"], str(out), progress=False, echo=lambda s: None).run()


def test_unit_key_depends_on_every_part_of_the_config():
    cfg = get_preset("digits-quick")
    exp = Experiment.__new__(Experiment)
    exp.cfg = cfg
    a = exp.unit_spec("gradient_clipping", {"C0": 0.01}, 0, 1.0)
    assert unit_key(a) == unit_key(json.loads(json.dumps(a)))
    for changed in (exp.unit_spec("gradient_clipping", {"C0": 0.02}, 0, 1.0),
                    exp.unit_spec("gradient_clipping", {"C0": 0.01}, 1, 1.0),
                    exp.unit_spec("gradient_clipping", {"C0": 0.01}, 0, 2.0),
                    exp.unit_spec("model_clipping", {"C0": 0.01}, 0, 1.0)):
        assert unit_key(changed) != unit_key(a)
    exp.cfg = dict(cfg, epochs=cfg["epochs"] + 1)
    assert unit_key(exp.unit_spec("gradient_clipping", {"C0": 0.01}, 0, 1.0)) != unit_key(a)


def test_an_unreadable_unit_file_is_computed_again(resumed_run, tmp_path):
    import shutil
    out = tmp_path / "copy"
    shutil.copytree(resumed_run["out"], out)
    victim = sorted((out / "units").glob("[0-9a-f]*.json"))[0]
    victim.write_text("{not json")
    exp = Experiment(resumed_run["cfg"], str(out), progress=False, echo=lambda s: None)
    exp.run()
    assert exp.computed == 1
    assert json.loads(victim.read_text())["key"] == victim.stem


def test_each_choice_is_the_best_validation_score(resumed_run):
    """The chosen configuration maximises the validation score recomputed from the tuning
    units' curves (validation accuracy only; the test accuracy never enters)."""
    from certunlearn_train.experiments.metrics import validation_score
    out, cfg, exp = resumed_run["out"], resumed_run["cfg"], resumed_run["exp"]
    tuning = json.loads((out / "tuning.json").read_text())
    for chosen in tuning["chosen"].values():
        tried = [t for t in tuning["tried"]
                 if t["method"] == chosen["method"] and t["eps"] == chosen["eps"]]
        scores = []
        for t in tried:
            vals = []
            for ts in cfg["tune_seeds"]:
                key = unit_key(exp.unit_spec(t["method"], t["config"], ts, t["eps"]))
                rec = json.loads((out / "units" / f"{key}.json").read_text())
                vals.append(validation_score(rec["points"], cfg["epochs"])
                            if rec["status"] == "ok" else float("-inf"))
            scores.append(sum(vals) / len(vals))
            assert scores[-1] == pytest.approx(t["val_score"])
        assert chosen["val_score"] == pytest.approx(max(scores))
        assert chosen["config"] == tried[scores.index(max(scores))]["config"]


def test_choices_do_not_move_when_the_test_accuracies_do(resumed_run, tmp_path):
    """Rewrite every tuning unit's test accuracies (anti-correlated with validation): the
    resumed run reads them back and must choose exactly the same configurations."""
    import shutil
    out = tmp_path / "copy"
    shutil.copytree(resumed_run["out"], out)
    tune_seeds = set(resumed_run["cfg"]["tune_seeds"])
    changed = 0
    for path in (out / "units").glob("[0-9a-f]*.json"):
        rec = json.loads(path.read_text())
        if rec["seed"] in tune_seeds and rec["status"] == "ok":
            for p in rec["points"]:
                p["test_acc"] = 1.0 - p["val_acc"]
            path.write_text(json.dumps(rec))
            changed += 1
    assert changed
    exp = Experiment(resumed_run["cfg"], str(out), progress=False, echo=lambda s: None)
    exp.run()
    assert exp.computed == 0
    before = json.loads((resumed_run["out"] / "tuning.json").read_text())["chosen"]
    after = json.loads((out / "tuning.json").read_text())["chosen"]
    assert {g: c["config"] for g, c in after.items()} == \
        {g: c["config"] for g, c in before.items()}
