"""Packaging: the runtime torch is the build's torch, and the sdist installs in a fresh venv."""
import os
import subprocess
import sys
import venv

import pytest

ROOT = os.path.normpath(os.path.join(os.path.dirname(__file__), ".."))


def test_mismatch_message_names_both_versions(monkeypatch):
    from certunlearn_train import build_check
    monkeypatch.setattr(build_check, "built_against", lambda: "2.13.0+cpu")
    msg = build_check.extension_torch_mismatch("2.99.0")
    assert "2.13.0+cpu" in msg and "2.99.0" in msg and "--no-build-isolation" in msg
    assert build_check.extension_torch_mismatch("2.13.0+cpu") is None


def test_installed_metadata_pins_the_build_torch():
    from importlib.metadata import requires

    import torch

    from certunlearn_train.build_check import built_against
    assert built_against() == torch.__version__
    torch_reqs = [r for r in requires("certunlearn") if r.split(";")[0].startswith("torch")]
    assert torch_reqs == ["torch==" + torch.__version__.split("+")[0]], torch_reqs


@pytest.mark.slow
def test_sdist_installs_without_build_isolation_in_a_fresh_venv(tmp_path):
    """``python -m build --sdist``, then a fresh venv with torch, then ``pip install
    --no-build-isolation`` of the sdist: the extension loads there (no files from the checkout)."""
    pytest.importorskip("build")
    import torch
    dist = tmp_path / "dist"
    out = subprocess.run([sys.executable, "-m", "build", "--sdist", "--no-isolation",
                          "--outdir", str(dist), ROOT], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    (sdist,) = list(dist.glob("certunlearn-*.tar.gz"))
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = str(env_dir / "bin" / "python")
    pip = [py, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    torch_pin = "torch==" + torch.__version__.split("+")[0]
    for args in (["setuptools>=64", "wheel", torch_pin], ["--no-build-isolation", str(sdist)]):
        out = subprocess.run(pip + args, capture_output=True, text=True, timeout=900,
                             env=dict(os.environ, MAX_JOBS="2", CERTUNLEARN_CUDA="0"))
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    probe = ("import certunlearn_train.ops as o, torch; "
             "assert o.extension_available(), o.extension_unavailable_reason(); "
             "x = torch.zeros(4); o.noisy_step_(x, torch.ones(1, 4), lr=0.5, seed=1, offset=0); "
             "print('ok', x.tolist())")
    out = subprocess.run([py, "-c", probe], capture_output=True, text=True, timeout=300,
                         cwd=str(tmp_path))
    assert out.returncode == 0 and out.stdout.startswith("ok"), out.stdout + out.stderr
