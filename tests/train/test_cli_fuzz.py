"""Fuzzing the training subcommands with random arguments and random files.

Every call must end with a documented exit code and no traceback (not even an "internal error"),
and a failed call must leave no file behind that verify would accept. The accountant's own
subcommands (certunlearn_theory) are not driven here. Runs that do start work are kept short by
tiny demo settings and small epoch values.
"""
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from certunlearn_train import certificates as C
from certunlearn_train import demo as demo_module
from certunlearn_train.cli import EXIT_CODES, main

from ..hypothesis_budget import examples

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")

OPTIONS = {
    "demo": ["--out", "--quick", "--seed", "--no-progress", "--threads"],
    "train": ["--data", "--data-root", "--test-fraction", "--split-seed", "--model", "--hidden",
              "--epochs", "--lr", "--batch-size", "--seed", "--out", "--no-progress",
              "--threads"],
    "unlearn": ["--config", "--sign-key", "--model-factory", "--no-progress"],
    "evaluate": ["--model-factory", "--data", "--data-root", "--forget-fraction",
                 "--forget-classes", "--forget-seed", "--threads"],
    "verify": ["--chain", "--public-key"],
    "keygen": ["--out"],
}
VALUES = ["0", "-1", "1", "2", "0.5", "1e30", "nan", "inf", "-inf", "", " ", "abc", "mlp", "cnn",
          "digits", "cifar10", "mnist", "/proc/x", "/proc", ".", "..", "out", "out/sub",
          "a:b", "os:system", "--", "-h", "\x00", "é", "0x10"]
FILES = ["random.bin", "empty.bin", "truncated.pt", "cert.json", "model.pt", "junk.json",
         "config.yaml", "config.json", "dup.yaml", "indices.txt", "dir"]


def _make_files(root):
    rnd = __import__("random").Random(0)
    (root / "random.bin").write_bytes(bytes(rnd.randrange(256) for _ in range(200)))
    (root / "empty.bin").write_bytes(b"")
    model = open(os.path.join(FIXTURES, "run_v1_model.pt"), "rb").read()
    (root / "model.pt").write_bytes(model)
    (root / "truncated.pt").write_bytes(model[: len(model) // 3])
    shutil.copy(os.path.join(FIXTURES, "run_v1_gradient_clipping.json"), root / "cert.json")
    (root / "junk.json").write_text('{"format": "certunlearn.run/2", "eps": [1]}')
    (root / "config.yaml").write_text(
        "model_file: model.pt\nout: out\nforget_classes: [11]\nC0: 0.01\nC1: 0.004\n")
    (root / "config.json").write_text(json.dumps(
        {"model_file": "truncated.pt", "out": "out2", "forget_fraction": 0.1, "C0": 0.01,
         "C1": 0.004}))
    (root / "dup.yaml").write_text("model_file: a\nmodel_file: b\n")
    (root / "indices.txt").write_text("1\n1\n")
    (root / "dir").mkdir()


def _snapshot(root):
    return {os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs} | \
        {d for d, _, _ in os.walk(root)}


def _accepted_certificates(paths):
    accepted = []
    for p in paths:
        if not p.endswith(".json") or not os.path.isfile(p):
            continue
        try:
            cert = C.RunCertificate.load(p)
            cert.verify()
        except C.CertificateError:
            continue
        accepted.append(p)
    return accepted


#: Commands that work (or fail late, deep in the work) before one token is changed.
VALID = [
    ("verify", "cert.json", "model.pt"),
    ("verify", "--chain", "cert.json", "model.pt"),
    ("train", "--out", "m.pt", "--epochs", "0.05", "--hidden", "4", "--no-progress"),
    ("unlearn", "--config", "config.yaml", "--no-progress"),
    ("unlearn", "--config", "config.json", "--no-progress"),
    ("evaluate", "model.pt", "--forget-fraction", "0.1"),
    ("demo", "--quick", "--no-progress", "--out", "d"),
    ("keygen", "--out", "k"),
]

argvs = st.sampled_from(sorted(OPTIONS)).flatmap(lambda cmd: st.tuples(
    st.just(cmd),
    st.lists(st.one_of(st.sampled_from(OPTIONS[cmd]), st.sampled_from(VALUES),
                       st.sampled_from(FILES), st.text(max_size=6)), max_size=6)))


@pytest.fixture
def tiny_demo(monkeypatch):
    tiny = dict(demo_module.QUICK_SETTINGS, train_epochs=0.05, steps=2, finetune_epochs=0.05,
                retrain_epochs=0.05)
    monkeypatch.setattr(demo_module, "DEMO_SETTINGS", tiny)
    monkeypatch.setattr(demo_module, "QUICK_SETTINGS", tiny)


def test_random_arguments_and_files(tmp_path, monkeypatch, tiny_demo):
    work = tmp_path / "work"
    work.mkdir()
    _make_files(work)
    monkeypatch.chdir(work)
    pristine = _snapshot(str(work))
    pristine_bytes = {p: open(p, "rb").read() for p in pristine if os.path.isfile(p)}

    def check(argv):
        err, out = io.StringIO(), io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            code = main(argv)
        text = err.getvalue()
        assert code in EXIT_CODES, (argv, code, text)
        assert "Traceback" not in text and "internal error" not in text, (argv, text)
        if code != 0:
            assert text.strip(), (argv, "failed silently")
        new = _snapshot(str(work)) - pristine
        if code not in (0, 3):
            assert not _accepted_certificates(new), (argv, "left a certificate behind")
        # restore the work folder for the next example
        for p in sorted(new, key=len, reverse=True):
            if os.path.isdir(p):
                shutil.rmtree(p, ignore_errors=True)
            elif os.path.lexists(p):
                os.unlink(p)
        for p, raw in pristine_bytes.items():
            if not os.path.exists(p) or open(p, "rb").read() != raw:
                with open(p, "wb") as fh:
                    fh.write(raw)

    @settings(max_examples=examples(40), suppress_health_check=[HealthCheck.too_slow])
    @given(argvs)
    def random_argv(case):
        cmd, rest = case
        argv = [cmd] + [a.replace("\x00", "") for a in rest]
        if cmd == "train" and "--epochs" not in argv:
            argv += ["--epochs", "0.05"]
        check(argv)

    @settings(max_examples=examples(25), suppress_health_check=[HealthCheck.too_slow])
    @given(st.sampled_from(VALID), st.integers(0, 20), st.one_of(
        st.sampled_from(VALUES + FILES), st.text(max_size=6)), st.booleans())
    def mutated_valid_argv(base, where, token, insert):
        argv = list(base)
        i = 1 + where % len(argv[1:]) if len(argv) > 1 else 1
        token = token.replace("\x00", "")
        if insert or len(argv) == 1:
            argv.insert(i, token)
        else:
            argv[i] = token
        check(argv)

    random_argv()
    mutated_valid_argv()


@pytest.mark.parametrize("argv", [
    ["verify", "model.pt", "cert.json"],
    ["unlearn", "--config", "dup.yaml"],
    ["evaluate", "random.bin"],
    ["train", "--hidden", "0", "--out", "m.pt"],
])
def test_random_arguments_in_a_subprocess(tmp_path, argv):
    _make_files(tmp_path)
    res = subprocess.run([sys.executable, "-m", "certunlearn_train.cli", *argv], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode in (1, 2), res
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
