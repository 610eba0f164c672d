"""Tests of the noise-for / epsilon-for / delta-for / steps-for subcommands."""
import subprocess
import sys
from decimal import Decimal

import pytest

from certunlearn_theory import Certificate, delta_for, epsilon_for, format_up, noise_for, precision, steps_for
from certunlearn_theory.cli import main

GC = ["--C0", "1", "--C1", "1", "--gamma", "0.01"]


def run(capsys, argv):
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def printed(out: str, name: str) -> str:
    assert out.startswith(f"{name} = "), out
    return out.split()[2]


def test_noise_for_prints_the_api_value(capsys):
    code, out, _ = run(capsys, ["noise-for", "--eps", "1", "--delta", "1e-5", "--T", "100", *GC])
    assert code == 0
    sigma = noise_for(1.0, 1e-5, 100, 1.0, 1.0, 0.01)
    text = printed(out, "sigma")
    # on the safe side of the float (not merely its nearest decimal) and read back as it
    assert text == format_up(sigma, None)
    assert float(text) == sigma and Decimal(text) >= Decimal(sigma)


def test_printed_numbers_are_rounded_up(capsys):
    # 0.1 as a double is 0.1000000000000000055...: repr's "0.1" is below it, the CLI is not
    code, out, _ = run(capsys, ["gaussian-delta", "--eps", "0", "--sensitivity", "1",
                                "--sigma", "1"])
    assert code == 0
    text = printed(out, "delta")
    from certunlearn_theory import gaussian_delta
    value = gaussian_delta(0.0, 1.0, 1.0)
    assert float(text) == value and Decimal(text) >= Decimal(value)
    assert format_up(0.1, None) == "0.10000000000000001" and repr(0.1) == "0.1"


def test_epsilon_delta_steps(capsys):
    code, out, _ = run(capsys, ["epsilon-for", "--sigma", "1.7", "--delta", "1e-5", "--T", "100",
                                *GC])
    assert code == 0
    assert printed(out, "eps") == format_up(epsilon_for(1.7, 1e-5, 100, 1.0, 1.0, 0.01), None)
    code, out, _ = run(capsys, ["delta-for", "--sigma", "1.7", "--eps", "1", "--T", "100", *GC])
    assert code == 0
    assert printed(out, "delta") == format_up(delta_for(1.7, 1.0, 100, 1.0, 1.0, 0.01), None)
    code, out, _ = run(capsys, ["steps-for", "--sigma", "1.7", "--eps", "1", "--delta", "1e-5",
                                *GC])
    assert code == 0 and f"T = {steps_for(1.7, 1.0, 1e-5, 1.0, 1.0, 0.01)}" in out


@pytest.mark.parametrize("argv,method", [
    (["noise-for", "--eps", "1", "--delta", "1e-5", "--T", "100", *GC], "gradient_clipping"),
    (["noise-for", "--eps", "1", "--delta", "1e-5", "--T", "10", "--C0", "1", "--C2", "1",
      "--method", "model_clipping"], "model_clipping"),
    (["epsilon-for", "--sigma", "5", "--delta", "1e-5", "--C0", "1",
      "--method", "output_perturbation"], "output_perturbation"),
    (["steps-for", "--sigma", "1", "--eps", "1", "--delta", "1e-5", "--C0", "1", "--C2", "1",
      "--method", "model_clipping"], "model_clipping"),
])
def test_json_prints_a_verifiable_certificate(capsys, argv, method):
    code, out, _ = run(capsys, argv + ["--json"])
    assert code == 0
    cert = Certificate.from_json(out)
    assert cert.method == method
    cert.verify()


def test_errors_are_one_line(capsys):
    code, _, err = run(capsys, ["steps-for", "--sigma", "1.5", "--eps", "1", "--delta", "1e-5",
                                *GC])
    assert code == 2 and "floor over all T is eps=" in err and err.count("\n") == 1
    code, _, err = run(capsys, ["noise-for", "--eps", "1", "--delta", "1e-5", *GC])
    assert code == 2 and "--T is required" in err
    code, _, err = run(capsys, ["noise-for", "--eps", "1", "--delta", "2", "--T", "5", *GC])
    assert code == 2 and "delta must be" in err
    with pytest.raises(SystemExit):
        main(["noise-for", "--eps", "one", "--delta", "1e-5", "--T", "5", *GC])


def test_digits_option(capsys):
    for digits in (30, 80):
        code, out, _ = run(capsys, ["noise-for", "--eps", "1", "--delta", "1e-5", "--T", "100",
                                    "--digits", str(digits), *GC])
        assert code == 0
        with precision(digits):
            expected = noise_for(1.0, 1e-5, 100, 1.0, 1.0, 0.01)
        assert printed(out, "sigma") == format_up(expected, None)
        assert "T=100, eps=1.0, delta=1e-05; rounded up" in out


def test_console_script_imports_no_torch():
    code = ("import sys; from certunlearn_theory.cli import main; "
            "rc = main(['noise-for', '--eps', '1', '--delta', '1e-5', '--T', '100', '--C0', '1', "
            "'--C1', '1', '--gamma', '0.01']); assert 'torch' not in sys.modules; sys.exit(rc)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "sigma = " in res.stdout


def test_shift_slack_option(capsys):
    code, out, _ = run(capsys, ["epsilon-for", "--sigma", "1.7", "--delta", "1e-5", "--T", "100",
                                "--shift-slack", "0.001", *GC])
    assert code == 0
    expected = epsilon_for(1.7, 1e-5, 100, 1.0, 1.0, 0.01, shift_slack=0.001)
    assert expected > epsilon_for(1.7, 1e-5, 100, 1.0, 1.0, 0.01)
    assert printed(out, "eps") == format_up(expected, None)
    code, out, _ = run(capsys, ["noise-for", "--eps", "1", "--delta", "1e-5", "--T", "100",
                                "--shift-slack", "0.001", "--json", *GC])
    assert code == 0
    cert = Certificate.from_json(out)
    assert cert.parameters["shift_slack"] == 0.001
    cert.verify()
