"""The console script's training subcommands, called through main([...]) (a few as subprocesses).

Exit codes (docs/training.md, `--help`): 0 ok, 1 failure, 2 usage error, 3 verify: not
verifiable (retrain), 130 interrupted.
"""
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from certunlearn_train.cli import EXIT_CODES, main

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    path = folder / "original.pt"
    assert main(["train", "--out", str(path), "--epochs", "3", "--hidden", "16", "--seed", "0",
                 "--no-progress"]) == 0
    return folder, path


def _config(folder, model, name="config.json", **over):
    cfg = {"model_file": str(model), "out": str(folder / "out"), "forget_fraction": 0.1,
           "C0": 0.01, "C1": 0.01 / (0.05 * 10), "lr": 0.05, "steps": 10,
           "finetune_epochs": 1, "seed": 5}
    cfg.update(over)
    cfg = {k: v for k, v in cfg.items() if v is not None or k in over}
    path = folder / name
    path.write_text(json.dumps(cfg))
    return path


def _one_line_error(capsys, prefix):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(prefix), err
    assert "Traceback" not in err
    return err


def test_train_unlearn_evaluate_verify(trained, capsys):
    folder, model = trained
    assert main(["unlearn", "--config", str(_config(folder, model)), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "gradient_clipping: (1, 1e-05)-unlearning of 144 points" in out
    cert, unlearned = folder / "out" / "certificate.json", folder / "out" / "model.pt"
    assert main(["verify", str(cert), str(unlearned)]) == 0
    captured = capsys.readouterr()
    assert "OK: gradient_clipping" in captured.out and "caller-chosen noise seed" in captured.err
    for claim in ("retain_size", "forget_size", "model_sha256_before", "created_utc",
                  "noise_seed_user_supplied"):
        assert f"not checked: {claim}:" in captured.out
    assert "signature: unsigned" in captured.out
    assert main(["evaluate", str(unlearned), "--forget-fraction", "0.1"]) == 0
    assert "MIA AUC" in capsys.readouterr().out
    # the original model is not the certified one
    assert main(["verify", str(cert), str(model)]) == 1
    assert "model weights do not match" in capsys.readouterr().err


@pytest.mark.parametrize("method, extra, code", [
    ("retrain", {"retrain_epochs": 1}, 3),
    ("output_perturbation", {"C1": None, "steps": None}, 0),
    ("model_clipping", {"C2": 0.5, "lam": 0.1, "steps": 6}, 0),
])
def test_unlearn_other_methods(trained, capsys, method, extra, code):
    folder, model = trained
    cfg = _config(folder, model, method=method, out=str(folder / method), **extra)
    assert main(["unlearn", "--config", str(cfg), "--no-progress"]) == 0
    assert main(["verify", str(folder / method / "certificate.json"),
                 str(folder / method / "model.pt")]) == code
    out = capsys.readouterr().out
    if method == "retrain":
        assert "NOT VERIFIABLE: retrain claims exact unlearning; exact retraining cannot be " \
               "checked from a certificate" in out and "OK" not in out
    else:
        assert f"OK: {method}" in out


@pytest.mark.parametrize("over, message, code", [
    ({"eps": -1}, "key 'eps' must be a number > 0.0, got -1", 2),
    ({"colour": "red"}, "unknown key 'colour'", 2),
    ({"steps": 1e30}, "key 'steps' must be an integer, got 1e\\+30", 2),
    ({"model_file": "/nonexistent/m.pt"}, "does not exist", 1),
    ({"forget_fraction": None, "forget_classes": [11]}, r"forget classes \[11\] do not occur", 2),
])
def test_unlearn_errors_are_one_line(trained, capsys, over, message, code):
    folder, model = trained
    out = folder / "never-created" / "run"
    assert main(["unlearn", "--config", str(_config(folder, model, out=str(out), **over)),
                 "--no-progress"]) == code
    err = _one_line_error(capsys, "certunlearn unlearn: error:")
    assert re.search(message, err), err
    assert not (folder / "never-created").exists()  # no empty run folder left behind


def test_demo_quick_end_to_end_and_its_printed_command(tmp_path, capsys):
    out = tmp_path / "a demo folder"  # a space: the printed command must quote it
    assert main(["demo", "--quick", "--out", str(out), "--seed", "0", "--no-progress"]) == 0
    text = capsys.readouterr().out
    for row in ("original (trained on all)", "unlearned + fine-tuned", "retrained from scratch"):
        assert row in text
    assert (out / "certificate.json").is_file() and (out / "model.pt").is_file()
    assert main(["verify", str(out / "certificate.json"), str(out / "model.pt")]) == 0
    capsys.readouterr()
    cert = json.loads((out / "certificate.json").read_text())
    assert cert["eps"] <= 1.0 and cert["delta"] <= 1e-5 and cert["forget_size"] == 144
    assert "seed" not in json.dumps(cert["parameters"])
    command = re.search(r"check them with: (.*)", text).group(1)
    elsewhere = tmp_path / "fresh"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = "/usr/bin:/bin"  # a fresh shell: no venv on PATH
    res = subprocess.run(["bash", "-c", command], cwd=elsewhere, env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "OK: gradient_clipping" in res.stdout
    assert shlex.split(command)[-2] == str(out / "certificate.json")


def test_demo_table_rounds_the_guarantee_up(monkeypatch):
    from certunlearn_theory import format_up
    assert format_up(1.2345649, 6, reads_back=True) == "1.23457"
    # not 0.999..., never a stronger claim
    assert format_up(0.99999999999, 3, reads_back=True) == "1"


@pytest.mark.parametrize("argv, message", [
    (["demo", "--threads", "0"], "argument --threads: must be an integer >= 1 and <= 256, "
                                 "got '0'"),
    (["demo", "--threads", "100000"], "argument --threads: must be an integer >= 1 and <= 256"),
    (["demo", "--seed", "-1"], "argument --seed: must be an integer >= 0 and <= "),
    (["demo", "--seed", str(10 ** 30)], "argument --seed: must be an integer >= 0 and <= "),
    (["train", "--batch-size", "0", "--out", "m.pt"],
     "argument --batch-size: must be an integer >= 1"),
    (["train", "--hidden", "100000000", "--out", "m.pt"], "argument --hidden: must be an "
                                                          "integer >= 1 and <= 65536"),
    (["train", "--epochs", "nan", "--out", "m.pt"], "argument --epochs: must be a finite number"),
    (["train", "--seed", "-1", "--out", "m.pt"], "argument --seed: must be an integer >= 0"),
    (["train"], "the following arguments are required: --out"),
    (["evaluate", "m.pt", "--forget-fraction", "1.5"], "argument --forget-fraction"),
    (["verify", "only-one.json"], "give CERT MODEL"),
    (["frobnicate"], "invalid choice"),
])
def test_usage_errors_are_one_line_exit_2(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = _one_line_error(capsys, "certunlearn")
    assert message in err, err
    assert os.listdir(tmp_path) == []


def test_train_output_path_checked_before_the_work(tmp_path, capsys):
    folder = tmp_path / "existing"
    folder.mkdir()
    assert main(["train", "--out", str(folder), "--no-progress"]) == 2
    assert "is an existing directory" in _one_line_error(capsys, "certunlearn train: error:")
    assert main(["train", "--out", "/proc/certunlearn-test/m.pt", "--no-progress"]) == 1
    _one_line_error(capsys, "certunlearn train: error:")
    assert main(["train", "--out", "/proc/m.pt", "--no-progress"]) == 1
    assert "cannot write into folder '/proc'" in _one_line_error(capsys, "certunlearn train:")


@pytest.mark.parametrize("target", ["/proc/certunlearn-demo", "/proc/self/certunlearn-demo"])
def test_demo_output_under_proc_is_refused_before_the_work(capsys, target):
    assert main(["demo", "--quick", "--out", target, "--no-progress"]) == 1
    _one_line_error(capsys, "certunlearn demo: error:")
    assert not os.path.exists(target)


def test_unwritable_output_is_one_line_not_a_traceback(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert main(["demo", "--quick", "--out", str(blocker / "demo"), "--no-progress"]) == 1
    assert "a_file" in _one_line_error(capsys, "certunlearn demo: error:")


@pytest.mark.parametrize("content", [b"", b"\x00" * 10, os.urandom(300), b"PK\x03\x04trunc",
                                     b"\x80\x04K\x01."])
def test_bad_model_files_are_one_line_exit_1(trained, tmp_path, capsys, content):
    folder, model = trained
    bad = tmp_path / "bad.pt"
    bad.write_bytes(content)
    for argv in (["evaluate", str(bad)],
                 ["unlearn", "--config", str(_config(tmp_path, bad, out=str(tmp_path / "o")))]):
        assert main(argv) == 1
        assert "not a certunlearn model file" in _one_line_error(capsys, "certunlearn")
    assert not (tmp_path / "o").exists()


def test_truncated_model_file(trained, tmp_path, capsys):
    folder, model = trained
    raw = model.read_bytes()
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(raw[: len(raw) // 2])
    assert main(["evaluate", str(bad)]) == 1
    assert "not a certunlearn model file" in _one_line_error(capsys, "certunlearn evaluate:")


def test_verify_swapped_and_bad_files(trained, tmp_path, capsys):
    folder, model = trained
    assert main(["unlearn", "--config", str(_config(tmp_path, model, out=str(tmp_path / "out"))),
                 "--no-progress"]) == 0
    capsys.readouterr()
    cert, out = str(tmp_path / "out" / "certificate.json"), str(tmp_path / "out" / "model.pt")
    assert main(["verify", out, cert]) == 2
    assert "look swapped" in _one_line_error(capsys, "certunlearn verify: error:")
    junk = tmp_path / "junk.pt"
    with open(out, "rb") as fh:
        head = fh.read(200)
    for content in (b"", os.urandom(100), head):
        junk.write_bytes(content)
        assert main(["verify", cert, str(junk)]) == 1
        assert "not a certunlearn model file" in _one_line_error(capsys, "certunlearn verify:")
    bad_cert = tmp_path / "c.json"
    bad_cert.write_bytes(os.urandom(64))
    assert main(["verify", str(bad_cert), out]) == 1
    _one_line_error(capsys, "certunlearn verify: FAILED:")
    assert main(["verify", str(tmp_path / "none.json"), out]) == 1
    assert "cannot read certificate" in _one_line_error(capsys, "certunlearn verify: FAILED:")


def test_help_lists_the_exit_codes(capsys):
    for argv in (["--help"], ["verify", "--help"], ["unlearn", "--help"]):
        assert main(argv) == 0
        text = capsys.readouterr().out
        assert "exit codes:" in text
        for code in EXIT_CODES:
            assert re.search(rf"^\s+{code}\s", text, re.M), (argv, code)
    docs = open(os.path.join(REPO, "docs", "training.md")).read()
    for code in EXIT_CODES:
        assert re.search(rf"^\| `{code}` \|", docs, re.M), code


def test_ctrl_c_during_demo_exits_130_without_traceback(tmp_path):
    out = tmp_path / "interrupted"
    proc = subprocess.Popen(
        [sys.executable, "-u", "-m", "certunlearn_train.cli", "demo", "--out", str(out),
         "--no-progress", "--seed", "0"], cwd=tmp_path, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint)
    try:
        line = proc.stdout.readline()  # printed once the data are loaded, before training
        assert line.startswith("digits:"), line
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, (stdout, stderr)
    assert stderr.strip() == "certunlearn demo: interrupted", stderr
    assert not (out / "certificate.json").exists()


# a command whose handler (defined before this text) runs through the console entry
_PROBE_COMMAND = """
import argparse
import certunlearn_train.cli as cli
from certunlearn_train.console import run

class Parser:
    def parse_args(self, argv):
        return argparse.Namespace(command="probe", handler=handler)

cli.build_parser = Parser
run([])
"""

_INTERRUPT_IN_EXEC = """
def handler(args):
    # the interrupt lands inside an exec of a string, as in dataclasses and namedtuple
    exec("import os, signal\\nos.kill(os.getpid(), signal.SIGINT)\\nfor _ in range(10**7): pass")
    return 0
"""


def _default_sigint():
    # the child must handle SIGINT even where this test runs with it ignored (a background job
    # of a non-interactive shell inherits SIG_IGN, and Python then keeps ignoring it)
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _run_module(folder, name, code):
    # run as `python -m`, like torchrun and the tests' demo: with -c or a script path, CPython
    # exits through another route that never reaches its "unhandled KeyboardInterrupt" check
    (folder / f"{name}.py").write_text(code)
    return subprocess.run([sys.executable, "-m", name], cwd=folder, capture_output=True,
                          text=True, timeout=120, preexec_fn=_default_sigint)


def test_interrupt_inside_exec_of_a_string_still_exits_130(tmp_path):
    # CPython marks a KeyboardInterrupt raised in exec(str) as unhandled even when it is caught
    # and then kills the process with SIGINT at exit (exit -2): the cause of a flaky Ctrl-C test
    res = _run_module(tmp_path, "probe_exec", _INTERRUPT_IN_EXEC + _PROBE_COMMAND)
    assert res.returncode == 130, (res.returncode, res.stderr)
    assert res.stderr.strip() == "certunlearn probe: interrupted", res.stderr


_INTERRUPT_IN_A_DESTRUCTOR = """
import os, signal

class Dropped:
    def __del__(self):
        # the interrupt lands where Python drops exceptions ("Exception ignored in ...")
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(10**6): pass

def handler(args):
    Dropped()
    for _ in range(10**8): pass  # the command goes on: the interrupt must land here
    return 0
"""


def test_an_interrupt_python_would_drop_is_delivered_again(tmp_path):
    res = _run_module(tmp_path, "probe_dropped", _INTERRUPT_IN_A_DESTRUCTOR + _PROBE_COMMAND)
    assert res.returncode == 130, (res.returncode, res.stderr)
    assert res.stderr.strip() == "certunlearn probe: interrupted", res.stderr


_INTERRUPT_DURING_IMPORTS = """
import importlib.abc, os, signal, sys

class Interrupt(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "certunlearn_train.cli":
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(10**7): pass
        return None

sys.meta_path.insert(0, Interrupt())
from certunlearn_train.console import run
run(["demo"])
"""


def test_ctrl_c_while_the_command_imports_exits_130_without_traceback(tmp_path):
    res = _run_module(tmp_path, "probe_imports", _INTERRUPT_DURING_IMPORTS)
    assert res.returncode == 130, (res.returncode, res.stderr)
    assert res.stderr.strip() == "certunlearn: interrupted", res.stderr


def test_ctrl_c_after_the_command_returned_is_ignored(tmp_path):
    code = ("import os, signal, sys\n"
            "import certunlearn_train.cli as cli\n"
            "from certunlearn_train.console import run\n"
            "def main(argv):\n"
            "    return 0\n"
            "cli.main = main\n"
            "import atexit\n"
            "atexit.register(lambda: os.kill(os.getpid(), signal.SIGINT))\n"
            "run([])\n")
    res = _run_module(tmp_path, "probe_after", code)
    assert res.returncode == 0, (res.returncode, res.stderr)
    assert res.stderr == ""


# ----------------------------------------------------------------------------------------------
# Forget indices from a file; a model given as a state dict plus a factory
# ----------------------------------------------------------------------------------------------

def test_forget_indices_file_text_and_npy(trained, tmp_path, capsys):
    folder, model = trained
    idx = [5, 17, 3, 1000]
    txt = tmp_path / "forget.txt"
    txt.write_text("\n".join(map(str, idx)) + "\n")
    npy = tmp_path / "forget.npy"
    np.save(npy, np.array(idx, dtype=np.int64))
    for source in (txt, npy):
        cfg = _config(tmp_path, model, forget_fraction=None, forget_indices_file=str(source),
                      out=str(tmp_path / "run"))
        assert main(["unlearn", "--config", str(cfg), "--no-progress", "--overwrite"]) == 0
        assert "-unlearning of 4 points" in capsys.readouterr().out
        cert = json.loads((tmp_path / "run" / "certificate.json").read_text())
        assert cert["forget_size"] == 4 and cert["retain_size"] == 1438 - 4
        # the model file records the forget set, so evaluate finds it again
        assert main(["evaluate", str(tmp_path / "run" / "model.pt")]) == 0
        assert "forget acc" in capsys.readouterr().out


@pytest.mark.parametrize("content, message", [
    ("1\n2\n2\n", "line 3: forget index 2 repeats line 2"),
    ("1\n2.0\n", "line 2: forget index must be an integer, got '2.0'"),
    ("1\n99999\n", r"line 2: forget index must be in \[0, 1438\), got 99999"),
    ("-1\n", r"line 1: forget index must be in \[0, 1438\), got -1"),
    ("\n\n", "no forget indices"),
])
def test_forget_indices_file_errors(trained, tmp_path, capsys, content, message):
    folder, model = trained
    bad = tmp_path / "forget.txt"
    bad.write_text(content)
    cfg = _config(tmp_path, model, forget_fraction=None, forget_indices_file=str(bad),
                  out=str(tmp_path / "run"))
    assert main(["unlearn", "--config", str(cfg), "--no-progress"]) == 2
    assert re.search(message, _one_line_error(capsys, "certunlearn unlearn: error:"))
    assert not (tmp_path / "run").exists()


FACTORY = '''
import torch
from torch import nn


def build():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 12), nn.Tanh(), nn.Linear(12, 10))


def not_a_module():
    return 3


def exits():
    raise SystemExit(5)
'''


def test_model_factory_with_a_plain_state_dict(tmp_path, monkeypatch, capsys):
    import torch
    (tmp_path / "my_arch_mod.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("my_arch_mod", None)
    import my_arch_mod
    torch.manual_seed(0)
    net = my_arch_mod.build()
    torch.save(net.state_dict(), tmp_path / "plain.pt")
    cfg = _config(tmp_path, tmp_path / "plain.pt", out=str(tmp_path / "run"), finetune_epochs=0)
    # without a factory: refused with a hint
    assert main(["unlearn", "--config", str(cfg), "--no-progress"]) == 1
    assert "--model-factory" in _one_line_error(capsys, "certunlearn unlearn: error:")
    assert main(["unlearn", "--config", str(cfg), "--no-progress", "--model-factory",
                 "my_arch_mod:build"]) == 0
    capsys.readouterr()
    run = tmp_path / "run"
    assert main(["verify", str(run / "certificate.json"), str(run / "model.pt")]) == 0
    # the output file records the factory, so evaluate needs no flag
    assert main(["evaluate", str(run / "model.pt")]) == 0
    capsys.readouterr()
    cfg2 = _config(tmp_path, tmp_path / "plain.pt", name="c2.json", out=str(tmp_path / "run2"),
                   model_factory="my_arch_mod:build")
    assert main(["unlearn", "--config", str(cfg2), "--no-progress"]) == 0
    capsys.readouterr()
    for spec, message in (("my_arch_mod:not_a_module", "must return an nn.Module"),
                          ("my_arch_mod:nothing", "has no callable 'nothing'"),
                          ("my_arch_mod:exits", "failed: SystemExit: 5"),
                          ("no_such_module_xyz:build", "cannot import")):
        assert main(["evaluate", str(tmp_path / "plain.pt"), "--model-factory", spec]) == 1
        assert message in _one_line_error(capsys, "certunlearn evaluate: error:")
    # a malformed name is a usage error, like any other bad argument
    cfg3 = _config(tmp_path, tmp_path / "plain.pt", name="c3.json", out=str(tmp_path / "run3"))
    for spec in ("just-a-name", "a:b:c", "my arch:build", "my_arch_mod:"):
        for argv in (["evaluate", str(tmp_path / "plain.pt")],
                     ["unlearn", "--config", str(cfg3), "--no-progress"]):
            assert main(argv + ["--model-factory", spec]) == 2
            assert "must be 'package.module:function'" in _one_line_error(capsys, "certunlearn")
    assert not (tmp_path / "run3").exists()


def test_accountant_commands_do_not_import_torch():
    code = ("import sys; from certunlearn_train.cli import build_parser; "
            "build_parser().parse_args(['verify', 'a', 'b']); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=os.path.dirname(__file__))


def test_missing_data_files_exit_1(tmp_path, capsys):
    assert main(["train", "--data", "cifar10", "--data-root", str(tmp_path), "--out",
                 str(tmp_path / "m.pt"), "--no-progress"]) == 1
    assert "missing file" in _one_line_error(capsys, "certunlearn train: error: CIFAR-10:")
    assert main(["train", "--data", "mnist", "--out", str(tmp_path / "m.pt")]) == 2
    assert "needs a local directory" in _one_line_error(capsys, "certunlearn train: error:")


def test_unlearn_output_under_proc_or_a_file(trained, tmp_path, capsys):
    folder, model = trained
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    for out in ("/proc/certunlearn-run", str(blocker), str(blocker / "run")):
        cfg = _config(tmp_path, model, out=out)
        assert main(["unlearn", "--config", str(cfg), "--no-progress"]) == 1
        _one_line_error(capsys, "certunlearn unlearn: error:")
    assert not os.path.exists("/proc/certunlearn-run") and blocker.read_text() == ""


# ----------------------------------------------------------------------------------------------
# Results are never replaced silently, never the input, and the pair is written together
# ----------------------------------------------------------------------------------------------

def _hashes(folder):
    import hashlib
    return {p: hashlib.sha256((folder / p).read_bytes()).hexdigest()
            for p in sorted(os.listdir(folder))}


def test_unlearn_never_replaces_a_result_unless_asked_and_never_its_input(trained, tmp_path,
                                                                         capsys):
    folder, model = trained
    out = tmp_path / "run"
    cfg = _config(tmp_path, model, out=str(out))
    assert main(["unlearn", "--config", str(cfg), "--no-progress"]) == 0
    first = _hashes(out)
    assert sorted(first) == ["certificate.json", "ledger.json", "model.pt"]
    capsys.readouterr()
    assert main(["unlearn", "--config", str(cfg), "--no-progress"]) == 2
    assert "already exist: give --overwrite" in _one_line_error(capsys, "certunlearn unlearn:")
    assert _hashes(out) == first
    # the model it reads, in the folder it writes: refused, --overwrite or not
    again = _config(tmp_path, out / "model.pt", name="again.json", out=str(out), seed=6)
    for extra in ([], ["--overwrite"]):
        assert main(["unlearn", "--config", str(again), "--no-progress", *extra]) == 2
        assert "is also an input of this run" in _one_line_error(capsys, "certunlearn unlearn:")
        assert _hashes(out) == first
    assert main(["unlearn", "--config", str(_config(tmp_path, model, out=str(out), seed=6)),
                 "--no-progress", "--overwrite"]) == 0
    replaced = _hashes(out)
    assert replaced["model.pt"] != first["model.pt"]
    assert replaced["certificate.json"] != first["certificate.json"]


def test_unlearn_checks_both_result_paths_before_the_work(trained, tmp_path, capsys,
                                                          monkeypatch):
    import certunlearn_train.cli as cli
    folder, model = trained
    out = tmp_path / "run"
    (out / "certificate.json").mkdir(parents=True)
    monkeypatch.setattr(cli, "load_data", lambda *a: pytest.fail("the work started"))
    cfg = _config(tmp_path, model, out=str(out))
    for extra in ([], ["--overwrite"]):
        assert main(["unlearn", "--config", str(cfg), "--no-progress", *extra]) == 2
        assert "certificate.json' is an existing directory" in _one_line_error(
            capsys, "certunlearn unlearn:")
        assert os.listdir(out) == ["certificate.json"]


def test_train_never_replaces_a_model_unless_asked(tmp_path, capsys):
    path = tmp_path / "m.pt"
    path.write_bytes(b"earlier")
    argv = ["train", "--out", str(path), "--epochs", "1", "--hidden", "4", "--no-progress"]
    assert main(argv) == 2
    assert "m.pt' already exists" in _one_line_error(capsys, "certunlearn train: error:")
    assert path.read_bytes() == b"earlier"
    assert main(argv + ["--overwrite"]) == 0
    assert path.read_bytes() != b"earlier"


def test_the_pair_is_written_together_or_not_at_all(tmp_path, monkeypatch):
    import certunlearn_train.files as cli
    a, b = tmp_path / "model.pt", tmp_path / "certificate.json"
    a.write_bytes(b"old model")
    b.write_bytes(b"old certificate")
    real_replace = os.replace

    def failing_replace(src, dst):
        if str(dst) == str(b):
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)
    monkeypatch.setattr(cli.os, "replace", failing_replace)
    with pytest.raises(OSError):
        cli.write_together([(str(a), b"new model"), (str(b), b"new certificate")])
    monkeypatch.setattr(cli.os, "replace", real_replace)
    assert a.read_bytes() == b"old model" and b.read_bytes() == b"old certificate"
    assert sorted(os.listdir(tmp_path)) == ["certificate.json", "model.pt"]  # no leftovers
    b.unlink()  # a first run: neither file may be left
    a.unlink()
    monkeypatch.setattr(cli.os, "replace", failing_replace)
    with pytest.raises(OSError):
        cli.write_together([(str(a), b"new model"), (str(b), b"new certificate")])
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------------------------
# Exit codes and messages
# ----------------------------------------------------------------------------------------------

def test_verify_a_certificate_with_a_huge_integer_is_a_bad_certificate(trained, tmp_path,
                                                                       capsys):
    folder, model = trained
    out = tmp_path / "run"
    assert main(["unlearn", "--config", str(_config(tmp_path, model, out=str(out))),
                 "--no-progress"]) == 0
    text = (out / "certificate.json").read_text()
    huge = tmp_path / "huge.json"
    huge.write_text(re.sub(r'"retain_size": \d+', '"retain_size": ' + "9" * 5000, text))
    capsys.readouterr()
    assert main(["verify", str(huge), str(out / "model.pt")]) == 1
    assert "integer too long" in _one_line_error(capsys, "certunlearn verify: FAILED:")


ARCHS = """
from torch import nn


def with_batchnorm():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.BatchNorm1d(16), nn.Linear(16, 10))


def wider():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def renamed():
    return nn.Sequential(nn.Flatten(), nn.Sequential(nn.Linear(64, 16)), nn.ReLU(),
                         nn.Linear(16, 10))
"""


def test_model_factory_from_the_current_folder_and_its_failures(tmp_path, monkeypatch, capsys):
    import torch
    from torch import nn
    monkeypatch.chdir(tmp_path)  # as documented: my_arch.py next to the config, no PYTHONPATH
    (tmp_path / "local_arch_xyz.py").write_text(ARCHS)
    sys.modules.pop("local_arch_xyz", None)
    assert str(tmp_path) not in sys.path and "" not in sys.path
    torch.manual_seed(0)
    bn = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.BatchNorm1d(16), nn.Linear(16, 10))
    torch.save(bn.state_dict(), "bn.pt")
    cfg = _config(tmp_path, "bn.pt", out="run")
    assert main(["unlearn", "--config", str(cfg), "--no-progress", "--model-factory",
                 "local_arch_xyz:with_batchnorm"]) == 1  # an unusable model, like the others
    assert "BatchNorm1d" in _one_line_error(capsys, "certunlearn unlearn: error: bn.pt:")
    assert str(tmp_path) not in sys.path  # the folder was on the path for the import only
    for spec, parts in (("wider", ["size mismatch for 1.weight", "[16, 64]", "[32, 64]"]),
                        ("renamed", ['Missing key(s) in state_dict: "1.0.weight"',
                                     'Unexpected key(s) in state_dict: "1.weight"'])):
        assert main(["evaluate", "bn.pt", "--model-factory", f"local_arch_xyz:{spec}"]) == 1
        err = _one_line_error(capsys, "certunlearn evaluate: error: weights do not fit")
        assert all(part in err for part in parts), err
    assert not os.path.exists("run")


def test_a_random_file_as_a_model_is_one_short_reason(tmp_path, capsys):
    bad = tmp_path / "random.pt"
    bad.write_bytes(bytes(range(256)) * 2)
    assert main(["evaluate", str(bad)]) == 1
    err = _one_line_error(capsys, "certunlearn evaluate: error:")
    assert "not a certunlearn model file" in err
    assert "weights_only" not in err and "PyTorch" not in err and len(err) < 300, err


@pytest.mark.parametrize("content", [None, b"\xff\xfe\x00binary", b"model_file: \x00"])
def test_a_missing_or_binary_config_file_exits_1(tmp_path, capsys, content):
    path = tmp_path / "c.yaml"
    if content is not None:
        path.write_bytes(content)
    assert main(["unlearn", "--config", str(path), "--no-progress"]) == 1
    _one_line_error(capsys, "certunlearn unlearn: error:")


def test_a_closed_pipe_ends_the_command_quietly(trained, tmp_path):
    folder, model = trained
    out = tmp_path / "run"
    assert main(["unlearn", "--config", str(_config(tmp_path, model, out=str(out))),
                 "--no-progress"]) == 0
    argv = [sys.executable, "-m", "certunlearn_train.cli", "verify", str(out / "certificate.json"),
            str(out / "model.pt")]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the first line (`| head -0`)
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 0
    assert "Broken pipe" not in err and "Traceback" not in err and "error" not in err, err


# ----------------------------------------------------------------------------------------------
# What a newcomer meets first
# ----------------------------------------------------------------------------------------------

def test_the_example_config_runs_as_documented(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--data", "digits", "--model", "mlp", "--epochs", "2",
                 "--out", "runs/original.pt"]) == 0
    example = os.path.join(REPO, "examples", "unlearn.yaml")
    assert main(["unlearn", "--config", example]) == 0
    assert "gradient_clipping: (1, 1e-05)-unlearning of 144 points" in capsys.readouterr().out
    assert main(["verify", "runs/unlearned/certificate.json", "runs/unlearned/model.pt"]) == 0
    assert "OK: gradient_clipping" in capsys.readouterr().out
    # the next request, as documented in examples/unlearn-next.yaml
    assert main(["unlearn", "--config", os.path.join(REPO, "examples", "unlearn-next.yaml")]) == 0
    assert "of 129 points" in capsys.readouterr().out  # 10% of the 1294 not forgotten yet
    assert main(["verify", "--chain", "runs/unlearned/certificate.json",
                 "runs/unlearned-2/certificate.json", "runs/unlearned-2/model.pt"]) == 0


def test_keygen_creates_the_documented_key_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["keygen", "--out", "keys/run.key"]) == 0
    assert sorted(os.listdir("keys")) == ["run.key", "run.key.pub"]
    assert main(["keygen", "--out", "keys/run.key"]) == 1  # never overwritten
    assert "already exists" in _one_line_error(capsys, "certunlearn keygen: error:")


def test_no_progress_bars_when_stderr_is_not_a_terminal(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "m.pt"), "--epochs", "1", "--hidden",
                 "4"]) == 0
    assert "\r" not in capsys.readouterr().err
    parser = __import__("certunlearn_train.cli", fromlist=["build_parser"]).build_parser()
    for argv in (["demo"], ["train", "--out", "m.pt"], ["unlearn", "--config", "c.yaml"],
                 ["evaluate", "m.pt"], ["experiment", "--preset", "digits"]):
        assert parser.parse_args(argv + ["--no-progress"]).no_progress
    assert parser.parse_args(["train", "--out", "m.pt"]).threads == 1


def test_demo_help_and_output_folder(tmp_path, monkeypatch, capsys):
    assert main(["demo", "--help"]) == 0
    text = capsys.readouterr().out
    assert "10%" in text and "%%" not in text
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--quick", "--out", "", "--no-progress"]) == 2
    assert "--out must name a folder" in _one_line_error(capsys, "certunlearn demo: error:")
    (tmp_path / "earlier").mkdir()
    (tmp_path / "earlier" / "model.pt").write_bytes(b"an earlier result")
    assert main(["demo", "--quick", "--out", "earlier", "--no-progress"]) == 2
    assert "already exists: give --overwrite" in _one_line_error(capsys, "certunlearn demo:")
    assert sorted(os.listdir(tmp_path)) == ["earlier"]
