"""A plain (non-editable) install works: build the wheel, install it into a fresh virtual
environment, and run the demo and verify from there, outside the checkout.

The editable install every other test uses would hide a subpackage missing from the wheel."""
import os
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def _run(cmd, cwd, timeout=600):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert res.returncode == 0, (cmd, res.stdout[-3000:], res.stderr[-3000:])
    return res


def test_wheel_installs_and_runs_the_demo_and_verify(tmp_path):
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-build-isolation", "--no-deps",
          "-w", str(dist), str(REPO)], cwd=tmp_path)
    wheels = list(dist.glob("certunlearn-*.whl"))
    assert len(wheels) == 1, wheels

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path)
    py = venv / "bin" / "python"
    # the dependencies (torch, numpy, ...) come from this environment's site-packages, added as
    # a plain path: its .pth files (the editable install of the checkout) are not processed
    venv_site = _run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     cwd=tmp_path).stdout.strip()
    ours = sysconfig.get_paths()["purelib"]
    assert ours in site.getsitepackages() or ours in sys.path
    Path(venv_site, "deps.pth").write_text(ours + "\n")
    _run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheels[0])],
         cwd=tmp_path)

    where = _run([str(py), "-c", "import certunlearn_train.grad, certunlearn_train.certificates,"
                  " certunlearn_train.experiments, certunlearn_train; "
                  "print(certunlearn_train.__file__)"], cwd=tmp_path).stdout.strip()
    assert where.startswith(venv_site), where

    script = venv / "bin" / "certunlearn"
    out = tmp_path / "run"
    demo = _run([str(script), "demo", "--out", str(out), "--no-progress"], cwd=tmp_path)
    assert "wrote" in demo.stdout
    check = _run([str(script), "verify", str(out / "certificate.json"), str(out / "model.pt")],
                 cwd=tmp_path)
    assert "OK: gradient_clipping" in check.stdout
