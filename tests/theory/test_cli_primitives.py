"""Tests of the gaussian-sigma / gaussian-delta / gaussian-epsilon subcommands."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from certunlearn_theory import (
    classical_gaussian_sigma,
    format_up,
    gaussian_delta,
    gaussian_epsilon,
    gaussian_sigma,
)
from certunlearn_theory.cli import main

REPO = Path(__file__).resolve().parents[2]


def run_json(capsys, *argv):
    assert main([*argv, "--json"]) == 0
    out = capsys.readouterr().out
    return json.loads(out)


def test_gaussian_sigma_text_output_shows_classical_value_below_eps_one(capsys):
    assert main(["gaussian-sigma", "--eps", "0.5", "--delta", "1e-5", "--sensitivity", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    sigma = gaussian_sigma(0.5, 1e-5, 2.0)
    classical = classical_gaussian_sigma(0.5, 1e-5, 2.0)
    assert out[0].startswith(f"sigma = {format_up(sigma, None)} ")
    assert out[1].startswith(f"classical sigma = {format_up(classical, None)} ")
    assert f"{classical / sigma:.4f}x" in out[1]


def test_gaussian_sigma_json_and_no_classical_value_at_eps_one(capsys):
    record = run_json(capsys, "gaussian-sigma", "--eps", "1", "--delta", "1e-5",
                      "--sensitivity", "2")
    assert record["sigma"] == gaussian_sigma(1.0, 1e-5, 2.0)
    assert record["classical_sigma"] is None
    assert record["digits"] == 50
    # the printed sigma really is (1, 1e-5)-DP
    assert gaussian_delta(1.0, 2.0, record["sigma"]) <= 1e-5


def test_gaussian_delta_and_epsilon_commands(capsys):
    record = run_json(capsys, "gaussian-delta", "--eps", "1", "--sensitivity", "1",
                      "--sigma", "3", "--digits", "80")
    assert record["delta"] == gaussian_delta(1.0, 1.0, 3.0)
    assert record["digits"] == 80
    record = run_json(capsys, "gaussian-epsilon", "--delta", "1e-6", "--sensitivity", "1",
                      "--sigma", "3")
    assert record["eps"] == gaussian_epsilon(1e-6, 1.0, 3.0)
    assert main(["gaussian-epsilon", "--delta", "1e-6", "--sensitivity", "1", "--sigma", "3"]) == 0
    assert capsys.readouterr().out.startswith(f"eps = {format_up(record['eps'], None)} ")


@pytest.mark.parametrize("argv,match", [
    (["gaussian-sigma", "--eps", "-1", "--delta", "1e-5", "--sensitivity", "1"], "eps must be >= 0"),
    (["gaussian-sigma", "--eps", "1", "--delta", "2", "--sensitivity", "1"], "delta must be > 0"),
    (["gaussian-delta", "--eps", "1", "--sensitivity", "1", "--sigma", "nan"], "sigma must be a number"),
    (["gaussian-epsilon", "--delta", "1e-5", "--sensitivity", "1", "--sigma", "inf"],
     "sigma must be finite"),
    (["gaussian-delta", "--eps", "1", "--sensitivity", "1", "--sigma", "1", "--digits", "3"],
     "digits must be between"),
])
def test_bad_input_is_one_line_on_stderr_with_exit_code_2(capsys, argv, match):
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and match in lines[0] and lines[0].startswith(f"certunlearn {argv[0]}")


def test_console_script_runs_without_importing_torch():
    code = ("import sys; from certunlearn_theory.cli import main; "
            "rc = main(['gaussian-sigma', '--eps', '1', '--delta', '1e-5', '--sensitivity', '2', "
            "'--json']); assert rc == 0; assert 'torch' not in sys.modules, 'torch was imported'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["sigma"] == gaussian_sigma(1.0, 1e-5, 2.0)
    script = Path(sys.executable).parent / "certunlearn"
    if script.exists():  # the installed console script (certunlearn_train.cli)
        result = subprocess.run([str(script), "gaussian-sigma", "--eps", "1", "--delta", "1e-5",
                                 "--sensitivity", "2", "--json"], capture_output=True, text=True,
                                cwd=REPO, timeout=120, env={**os.environ})
        assert result.returncode == 0, result.stderr
        assert math.isclose(json.loads(result.stdout)["sigma"], gaussian_sigma(1.0, 1e-5, 2.0),
                            rel_tol=0)
