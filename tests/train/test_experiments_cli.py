"""`certunlearn experiment`: bad arguments are one line on stderr and exit 2; the transfer set-up
certifies the head only and keeps the public backbone bit-identical."""
import json

import pytest

from certunlearn_train.cli import main
from certunlearn_train.experiments.presets import PRESETS, validate_experiment


@pytest.mark.parametrize("argv, match, code", [
    (["--preset", "digits", "--eps", "1,x"], "--eps must be a comma-separated list of numbers",
     2),
    (["--preset", "digits", "--seeds", "0"], "'seeds' must be an integer > 0, got 0", 2),
    (["--preset", "mnist"], "data.root", 2),
    (["--config", "/nonexistent/exp.yaml"], "does not exist", 1),
    (["--preset", "digits", "--device", "tpu"],
     "'device' must be 'cpu', 'cuda', 'cuda:N' or 'auto', got 'tpu'", 2),
    (["--preset", "digits", "--threads", "0"], "'threads' must be an integer > 0, got 0", 2),
    ([], "give --preset NAME or --config FILE (digits: 6 methods x 8 configurations, then 5 "
         "seeds; about 3.3 minutes", 2),
])
def test_bad_arguments_are_one_line(argv, match, code, capsys, tmp_path):
    rc = main(["experiment", "--out", str(tmp_path / "o"), "--no-progress"] + argv)
    err = capsys.readouterr().err
    assert rc == code
    assert match in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()  # nothing was started


@pytest.mark.parametrize("name, text", [
    ("dup.yaml", "preset: digits-quick\nseeds: 3\nseeds: 4\n"),
    ("nested.yaml", "preset: digits-quick\ndata:\n  forget_fraction: 0.1\n"
                    "  forget_fraction: 0.2\n"),
    ("dup.json", '{"preset": "digits-quick", "seeds": 3, "seeds": 4}'),
])
def test_a_key_given_twice_is_refused(name, text, capsys, tmp_path):
    path = tmp_path / name
    path.write_text(text)
    rc = main(["experiment", "--config", str(path), "--out", str(tmp_path / "o"),
               "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "is given twice" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o").exists()


def test_an_output_folder_that_cannot_be_made_is_one_line(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    rc = main(["experiment", "--preset", "digits-quick", "--out", str(blocker / "sub"),
               "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1 and "cannot read or write" in err and len(err.strip().splitlines()) == 1


def test_run_restores_the_thread_count(tmp_path, monkeypatch):
    import torch

    from certunlearn_train.experiments.presets import get_preset
    from certunlearn_train.experiments.runner import Experiment
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        exp = Experiment(dict(get_preset("digits-quick"), threads=1), str(tmp_path / "o"),
                         progress=False, echo=lambda s: None)
        monkeypatch.setattr(exp, "_run", lambda: torch.get_num_threads())
        assert exp.run() == 1
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_eps_option_sets_the_list_and_the_main_eps():
    from certunlearn_train.experiments.cli import _eps_list
    assert _eps_list("0.5, 1,2") == [0.5, 1.0, 2.0]
    with pytest.raises(ValueError, match="at least one"):
        _eps_list(" ")


@pytest.mark.slow
def test_transfer_certifies_the_head_and_keeps_the_backbone(tmp_path):
    from certunlearn_train.certificates import RunCertificate, weights_sha256
    from certunlearn_train.experiments.runner import Experiment
    cfg = dict(PRESETS["digits-transfer"], epochs=2, eps=[1.0], main_eps=1.0, n_configs=1,
               seeds=3, original={"epochs": 3, "lr": 0.1, "batch_size": 64},
               transfer=dict(PRESETS["digits-transfer"]["transfer"], backbone_epochs=3))
    cfg["grids"] = {m: {k: v[:1] for k, v in g.items()}
                    for m, g in PRESETS["digits-quick"]["grids"].items()}
    cfg = validate_experiment(cfg)
    exp = Experiment(cfg, str(tmp_path / "t"), progress=False, echo=lambda s: None)
    exp.run()
    # the data are the private classes only
    assert set(exp.data.train.y.tolist()) == {5, 6, 7, 8, 9}
    assert set(exp.data.test.y.tolist()) == {5, 6, 7, 8, 9}
    backbone = exp.backbone()
    public = {n: p.detach() for n, p in backbone.named_parameters()
              if n not in cfg["transfer"]["private"]}
    want = weights_sha256(public)
    for seed in range(cfg["seeds"]):  # every original shares the backbone, heads differ
        orig = dict(exp.original(seed).named_parameters())
        assert weights_sha256({n: orig[n].detach() for n in public}) == want
    rows = [json.loads(line) for line in (tmp_path / "t" / "curves.jsonl").read_text()
            .splitlines()]
    assert rows and all(r["status"] == "ok" for r in rows)
    for r in rows:
        cert = RunCertificate.load(str(tmp_path / "t" / r["certificate"]))
        cert.verify(allow_unverifiable=True)  # retrain runs are among them
        assert cert.public_parameters["names"] == sorted(public) or \
            set(cert.public_parameters["names"]) == set(public)
        assert cert.public_parameters["sha256"] == want


def test_demo_compares_with_its_control_and_claims_no_saving(tmp_path):
    import re

    from certunlearn_train.demo import run_demo
    lines = []
    result = run_demo(str(tmp_path / "demo"), quick=True, seed=0, progress=False,
                      echo=lines.append)
    line = next(s for s in lines if s.startswith("epochs to reach the retrained test accuracy"))
    target = result["results"]["retrained"]["test_acc"] - 0.01
    assert f"({target:.3f})" in line
    assert "control (same pipeline from zero)" in line
    assert re.search(r"(epochs fewer than the control in this run|no gain over the control)",
                     line)
    assert not re.search(r"saving \d+%", "\n".join(lines))
    assert "\ncontrol: same, from zero " in "\n".join(lines)
