"""The console script's training subcommands, called through main([...])."""
import json
import os
import subprocess
import sys

import pytest

from certunlearn_train.cli import main


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    path = folder / "original.pt"
    assert main(["train", "--out", str(path), "--epochs", "3", "--hidden", "16", "--seed", "0",
                 "--no-progress"]) == 0
    return folder, path


def _config(folder, model, **over):
    cfg = {"model_file": str(model), "out": str(folder / "out"), "forget_fraction": 0.1,
           "C0": 0.01, "C1": 0.01 / (0.05 * 10), "lr": 0.05, "steps": 10,
           "finetune_epochs": 1, "seed": 5}
    cfg.update(over)
    path = folder / "config.json"
    path.write_text(json.dumps(cfg))
    return path


def test_train_unlearn_evaluate_verify(trained, capsys):
    folder, model = trained
    assert main(["unlearn", "--config", str(_config(folder, model)), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "gradient_clipping: (1, 1e-05)-unlearning of 144 points" in out
    cert, unlearned = folder / "out" / "certificate.json", folder / "out" / "model.pt"
    assert main(["verify", str(cert), str(unlearned)]) == 0
    captured = capsys.readouterr()
    assert "OK" in captured.out and "caller-chosen noise seed" in captured.err
    assert main(["evaluate", str(unlearned), "--forget-fraction", "0.1"]) == 0
    assert "MIA AUC" in capsys.readouterr().out
    # the original model is not the certified one
    assert main(["verify", str(cert), str(model)]) == 1
    assert "model weights do not match" in capsys.readouterr().err


@pytest.mark.parametrize("method, extra", [
    ("retrain", {"retrain_epochs": 1}),
    ("output_perturbation", {"C1": None, "steps": None}),
    ("model_clipping", {"C2": 0.5, "lam": 0.1, "steps": 6}),
])
def test_unlearn_other_methods(trained, capsys, method, extra):
    folder, model = trained
    cfg = _config(folder, model, method=method, **extra)
    assert main(["unlearn", "--config", str(cfg), "--no-progress"]) == 0
    assert main(["verify", str(folder / "out" / "certificate.json"),
                 str(folder / "out" / "model.pt")]) == 0
    assert f"OK: {method}" in capsys.readouterr().out


@pytest.mark.parametrize("over, message", [
    ({"eps": -1}, "key 'eps' must be a number > 0.0, got -1"),
    ({"colour": "red"}, "unknown key 'colour'"),
    ({"model_file": "/nonexistent/m.pt"}, "does not exist"),
    ({"forget_fraction": None, "forget_classes": [11]}, r"forget classes \[11\] do not occur"),
])
def test_unlearn_errors_are_one_line(trained, capsys, over, message):
    folder, model = trained
    assert main(["unlearn", "--config", str(_config(folder, model, **over)),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("certunlearn unlearn: error:")
    assert __import__("re").search(message, err), err


def test_demo_quick_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--seed", "0", "--no-progress"]) == 0
    text = capsys.readouterr().out
    for row in ("original (trained on all)", "unlearned + fine-tuned", "retrained from scratch"):
        assert row in text
    assert (out / "certificate.json").is_file() and (out / "model.pt").is_file()
    assert main(["verify", str(out / "certificate.json"), str(out / "model.pt")]) == 0
    cert = json.loads((out / "certificate.json").read_text())
    assert cert["epsilon"] <= 1.0 and cert["delta"] <= 1e-5 and cert["forget_size"] == 144
    assert "seed" not in json.dumps(cert["parameters"])


def test_unwritable_output_is_one_line_not_a_traceback(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert main(["demo", "--quick", "--out", str(blocker / "demo"), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("certunlearn demo: error:"), err
    assert "a_file" in err


def test_accountant_commands_do_not_import_torch():
    code = ("import sys; from certunlearn_train.cli import build_parser; "
            "build_parser().parse_args(['verify', 'a', 'b']); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=os.path.dirname(__file__))
