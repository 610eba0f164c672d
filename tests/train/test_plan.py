"""certunlearn plan: the probe is unlearn's noisy phase, the numbers match the committed suite,
the knob search only returns certifiable settings, and bad input fails like unlearn."""
import csv
import json
import os

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import certunlearn_theory as ct
from certunlearn_theory import calibrate_with_float32_slack
from certunlearn_train import plan as plan_module
from certunlearn_train.certificates import split_tail_delta
from certunlearn_train.cli import main
from certunlearn_train.experiments.presets import get_preset
from certunlearn_train.experiments.runner import Experiment, _canonical, derive_seed
from certunlearn_train.plan import Knobs, plan, search_knobs, verdict_for
from certunlearn_train.unlearn import unlearn
from tests.hypothesis_budget import examples

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RESULTS = os.path.join(ROOT, "docs", "figures", "experiments")


@pytest.fixture(scope="module")
def digits_seed0(tmp_path_factory):
    """The digits preset's seed 0: its original model, retain set and test split."""
    exp = Experiment(get_preset("digits"), str(tmp_path_factory.mktemp("digits")),
                     progress=False, echo=lambda s: None)
    retain, _, _ = exp.data.split(0)
    return exp.original(0), retain, exp.data.test_t


def _suite_rows():
    """Gradient clipping's accuracy right after the noisy phase in the committed results."""
    with open(os.path.join(RESULTS, "digits", "summary.json"), encoding="utf-8") as fh:
        rows = [r for r in json.load(fh)["rows"]
                if r["method"] == "gradient_clipping" and r["target_drop"] == 1.0]
    with open(os.path.join(RESULTS, "digits-wide-eps", "summary.csv"), encoding="utf-8") as fh:
        wide = [dict(r, eps=float(r["eps"]), config=json.loads(r["config"]),
                     acc_after_noisy_mean=float(r["acc_after_noisy_mean"]),
                     acc_after_noisy_std=float(r["acc_after_noisy_std"]))
                for r in csv.DictReader(fh)
                if r["method"] == "gradient_clipping" and float(r["target_drop"]) == 1.0
                and float(r["eps"]) == 1e5]
    return rows + wide


def _knobs(cfg):
    return dict(C0=cfg["C0"], C1=cfg["C0"] / (cfg["noisy_lr"] * cfg["steps"]),
                steps=cfg["steps"], lr=cfg["noisy_lr"], batch_size=cfg["noisy_batch"])


def test_probe_is_unlearns_noisy_phase_weight_for_weight(digits_seed0, monkeypatch):
    model, retain, test = digits_seed0
    seen = []

    def spy(*args, **kwargs):
        out = unlearn(*args, **kwargs)
        seen.append(out)
        return out

    monkeypatch.setattr("certunlearn_train.unlearn.unlearn", spy)
    knobs = dict(C0=0.5, C1=0.5 / (0.05 * 20), steps=20, lr=0.05, batch_size=32)
    r = plan(model, retain, eps=50.0, delta=1e-5, eval_data=test, seed=11, **knobs)
    direct, cert = unlearn(model, retain, eps=50.0, delta=1e-5, finetune_epochs=0, seed=11,
                           progress=False, **knobs)
    (probed, probe_cert), = seen
    for (name, a), (_, b) in zip(probed.state_dict().items(), direct.state_dict().items()):
        assert torch.equal(a, b), name
    assert r.sigma == cert.sigma == probe_cert.sigma
    from certunlearn_train.evaluate import accuracy
    assert r.probe_accuracy == accuracy(direct, *test)
    # a different seed gives other weights (the comparison above can fail)
    other, _ = unlearn(model, retain, eps=50.0, delta=1e-5, finetune_epochs=0, seed=12,
                       progress=False, **knobs)
    assert not torch.equal(other.state_dict()["net.0.weight"], direct.state_dict()["net.0.weight"])


def test_probe_matches_the_suite_at_every_eps(digits_seed0):
    """For each eps of the digits preset (and 1e5 from the wide-eps run), the probe with the
    suite's chosen settings lands within the seed spread of the suite's accuracy right after the
    noisy phase, and the verdict reads 'at chance' at eps = 1 and 'survives' at 1e5."""
    model, retain, test = digits_seed0
    rows = _suite_rows()
    assert {r["eps"] for r in rows} == {0.5, 1.0, 2.0, 5.0, 10.0, 100.0, 1e5}
    for row in rows:
        cfg = row["config"]
        seed = derive_seed(0, "gradient_clipping", "noise", _canonical(cfg))
        r = plan(model, retain, eps=row["eps"], delta=1e-5, eval_data=test, seed=seed,
                 **_knobs(cfg))
        mean, std = row["acc_after_noisy_mean"], row["acc_after_noisy_std"]
        assert abs(r.probe_accuracy - mean) <= 3 * std + 0.02, (row["eps"], r.probe_accuracy,
                                                                 mean, std)
        if row["eps"] == 1.0:
            assert "at chance" in r.verdict and "retraining" in r.verdict
            assert r.noise_to_model > 100
        if row["eps"] == 1e5:
            assert "keeps" in r.verdict and "likely to save compute" in r.verdict
            assert "at chance" not in r.verdict
        assert f"e^{row['eps']:g}" in plan_module.ceiling_text(row["eps"], 1e-5)


@settings(max_examples=examples(15), deadline=None)
@given(log_eps=st.floats(-1.0, 5.0), log_delta=st.floats(-9.0, -2.0),
       d=st.integers(10, 10 ** 6), log_norm=st.floats(-2.0, 2.0), n=st.integers(50, 10 ** 5))
def test_knob_search_returns_only_certified_settings(log_eps, log_delta, d, log_norm, n):
    eps, delta = 10.0 ** log_eps, 10.0 ** log_delta
    k, tried = search_knobs(eps, delta, d=d, original_norm=10.0 ** log_norm, n=n)
    assert tried > 1 and k.method == "gradient_clipping"
    # recomputed independently, as unlearn() calibrates it, then the forward bound
    sigma, slack, _ = calibrate_with_float32_slack(eps, delta, T=k.steps, d=d, C0=k.C0,
                                                   C1=k.C1, gamma=k.lr, lam=k.lam,
                                                   batch_size=k.batch_size)
    acct_delta, _ = split_tail_delta(delta)
    assert ct.epsilon_for(sigma, acct_delta, k.steps, k.C0, k.C1, k.lr, k.lam,
                          shift_slack=slack) <= eps
    # never past the horizon where unlearn() warns that extra steps cannot lower the noise
    assert k.steps <= k.C0 / (k.lr * k.C1) * (1 + 1e-9)
    # and less noise than that would not be certified: the check is not vacuous
    assert ct.epsilon_for(sigma * 0.9, acct_delta, k.steps, k.C0, k.C1, k.lr, k.lam,
                          shift_slack=slack) > eps


def test_model_clipping_search_is_certified_too():
    eps, delta = 1.0, 1e-5
    k, _ = search_knobs(eps, delta, d=4810, original_norm=15.0, n=1000, method="model_clipping")
    sigma = plan_module.certified_sigma(k, eps, delta, 4810)
    assert ct.delta_for(sigma, eps, k.steps, k.C0, None, k.lr, k.lam, method="model_clipping",
                        C2=k.C2, shift_slack=2.0 ** -19 * k.C2) <= delta
    with pytest.raises(ValueError):  # a setting nothing certifies is refused, not returned
        plan_module.certified_sigma(Knobs("gradient_clipping", 1.0, 10, 0.05, C1=2.0), 1e-9,
                                    1e-300, 10)


def test_expected_noise_norm():
    k = Knobs("gradient_clipping", 1.0, 4, 0.1, C1=1.0)
    # sum of 4 steps of N(0, 0.5^2 I) in d dims: norm about 0.5 * 2 * sqrt(d)
    assert plan_module.expected_noise_norm(0.5, k, 10 ** 6) == pytest.approx(1000.0, rel=1e-5)
    decayed = plan_module.expected_noise_norm(0.5, Knobs("gradient_clipping", 1.0, 4, 0.1,
                                                         C1=1.0, lam=1.0), 10 ** 6)
    assert decayed < 1000.0


def test_verdicts_from_the_numbers():
    common = dict(metric="accuracy", original=0.96, chance=0.1, keep=0.9, noise_to_kept=5.0)
    assert "at chance (9% against 96% before" in verdict_for(probe=0.09, **common)
    assert "keeps 92% of the original accuracy" in verdict_for(probe=0.88, **common)
    part = verdict_for(probe=0.5, **common)
    assert "keeps part of the model" in part and "certunlearn experiment" in part
    no_probe = verdict_for(metric="accuracy", probe=None, original=None, chance=None, keep=0.9,
                           noise_to_kept=1000.0)
    assert "expect the model at chance" in no_probe
    reg = verdict_for(metric="loss", probe=0.99, original=0.1, chance=1.0, keep=0.9,
                      noise_to_kept=5.0)
    assert "at chance" in reg
    assert "no constraint" in plan_module.ceiling_text(1e5, 1e-5)


def test_regression_probe_reports_the_loss():
    torch.manual_seed(0)
    x = torch.randn(300, 5)
    y = (x @ torch.randn(5, 1)) + 0.01 * torch.randn(300, 1)
    model = nn.Linear(5, 1)
    from certunlearn_train.train import train
    train(model, (x, y), epochs=30, lr=0.05, batch_size=32, loss_fn=F.mse_loss, seed=0,
          progress=False)
    r = plan(model, (x, y), eps=1e5, delta=1e-5, loss_fn=F.mse_loss, seed=0, eps_grid=[1.0])
    assert r.metric == "loss" and r.probe_accuracy is None and r.chance_accuracy is None
    assert r.original_loss < r.chance_loss and r.eval_size == 60
    assert len(r.probes) == 2 and r.probes[0].eps == 1.0
    assert r.probe_loss is not None and r.probe_loss < r.chance_loss


# ----------------------------------------------------------------------------------------------
# the command
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("m") / "digits.pt"
    assert main(["train", "--data", "digits", "--epochs", "5", "--seed", "0", "--out", str(path),
                 "--no-progress", "--threads", "1"]) == 0
    return str(path)


def test_command_prints_the_plan_and_draws_the_figure(digits_model, tmp_path, capsys):
    png = tmp_path / "plan.png"
    assert main(["plan", digits_model, "--eps", "1,100000", "--seed", "0", "--plot",
                 str(png)]) == 0
    out = capsys.readouterr().out
    for text in ("sigma = ", "x C0", "epochs", "accuracy right after the noisy phase",
                 "verdict:", "e^1 = 2.72", "searched"):
        assert text in out, out
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert main(["plan", digits_model, "--eps", "1", "--no-probe", "--json", "--C0", "0.01",
                 "--steps", "10", "--C1", "0.02"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["probe_accuracy"] is None and r["searched"] is False
    assert r["knobs"]["C0"] == 0.01 and r["sigma"] > 0


def _unlearnable_factory(tmp_path, monkeypatch):
    (tmp_path / "bn_arch_mod.py").write_text(
        "from torch import nn\n"
        "def build():\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.BatchNorm1d(8),\n"
        "                         nn.Linear(8, 10))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from certunlearn_train.model_files import save_model_file
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.BatchNorm1d(8), nn.Linear(8, 10))
    path = tmp_path / "bn.pt"
    save_model_file(str(path), model, {"factory": "bn_arch_mod:build"})
    return str(path)


def test_bad_input_is_one_line_with_unlearns_exit_codes(digits_model, tmp_path, monkeypatch,
                                                         capsys):
    def one_line(code_expected, argv):
        code = main(argv)
        err = capsys.readouterr().err.strip()
        assert code == code_expected and len(err.splitlines()) == 1, (argv, code, err)
        assert "Traceback" not in err
        return err

    assert "invalid choice: 'nope'" in one_line(2, ["plan", digits_model, "--data", "nope",
                                                    "--eps", "1"])
    for bad in ("0", "-1", "1,-2", "x"):
        assert "argument --eps" in one_line(2, ["plan", digits_model, "--eps", bad])
    bn = _unlearnable_factory(tmp_path, monkeypatch)
    err = one_line(1, ["plan", bn, "--eps", "1"])
    assert "cannot be unlearned" in err and "BatchNorm1d" in err
    cfg = tmp_path / "u.yaml"
    cfg.write_text(f"model_file: {bn}\nforget_fraction: 0.1\nC0: 0.01\nC1: 0.02\nsteps: 10\n"
                   f"out: {tmp_path / 'out'}\n")
    assert one_line(1, ["unlearn", "--config", str(cfg), "--no-progress"]).endswith(
        err.split("error: ", 1)[1])  # the same message as unlearn's
    assert "cannot be unlearned" in one_line(1, ["plan", "--config", str(cfg)])
    assert "does not exist" in one_line(1, ["plan", str(tmp_path / "missing.pt"), "--eps", "1"])
    assert "--eps is required" in one_line(2, ["plan", digits_model])
    bad_cfg = tmp_path / "bad.yaml"
    bad_cfg.write_text(f"model_file: {digits_model}\nforget_fraction: 0.1\neps: -1\nC0: 0.01\n"
                       f"C1: 0.02\nout: {tmp_path / 'o'}\n")
    assert "key 'eps' must be a number > 0" in one_line(2, ["plan", "--config", str(bad_cfg)])
