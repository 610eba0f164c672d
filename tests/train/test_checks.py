"""The one scalar checker behind check_real/check_int, config keys and command-line options."""
import subprocess
import sys

import pytest

from certunlearn_train.checks import check_int, check_real, int_problem, real_problem


@pytest.mark.parametrize("value, kwargs, whole, detail", [
    (0.5, dict(low=0.0, high=1.0), None, None),
    (1.0, dict(low=0.0, high=1.0), None, None),
    (1.0, dict(low=0.0, high=1.0, high_open=True), "a real number > 0.0 and < 1.0", "a real number < 1.0"),
    (0.0, dict(low=0.0, high=1.0), "a real number > 0.0 and <= 1.0", "a real number > 0.0"),
    (0.0, dict(low=0.0, low_open=False), None, None),
    (-1, dict(low=0.0, low_open=False), "a real number >= 0.0", "a real number >= 0.0"),
    ("1", dict(low=0.0), "a real number > 0.0", "a real number"),
    (True, dict(), "a real number", "a real number"),
    (float("nan"), dict(low=0.0), "a real number > 0.0", "a finite number"),
    (float("inf"), dict(low=0.0), "a real number > 0.0", "a finite number"),
    (float("inf"), dict(low=0.0, allow_inf=True), None, None),
    (float("inf"), dict(low=0.0, high=5.0, allow_inf=True), "a real number > 0.0 and <= 5.0",
     "a real number <= 5.0"),
])
def test_real_problem_names_the_constraint(value, kwargs, whole, detail):
    assert real_problem(value, **kwargs) == whole
    assert real_problem(value, detail=True, **kwargs) == detail


def test_real_problem_noun_and_bound_format():
    assert real_problem(0, low=0.0, high=1e6, noun="a finite number",
                        fmt=lambda b: f"{b:g}") == "a finite number > 0 and <= 1e+06"
    assert real_problem(-1, low=0.0, noun="a number", detail=True) == "a number > 0.0"


@pytest.mark.parametrize("value, kwargs, whole, detail", [
    (3, dict(low=1, high=5), None, None),
    (3.0, dict(low=1, high=5), None, None),
    (0, dict(low=1, high=5), "an integer >= 1 and <= 5", "an integer >= 1"),
    (6, dict(low=1, high=5), "an integer >= 1 and <= 5", "an integer <= 5"),
    (2.5, dict(low=1), "an integer >= 1", "an integer"),
    (float("inf"), dict(), "an integer", "an integer"),
    (True, dict(), "an integer", "an integer"),
    ("3", dict(), "an integer", "an integer"),
])
def test_int_problem_names_the_constraint(value, kwargs, whole, detail):
    assert int_problem(value, **kwargs) == whole
    assert int_problem(value, detail=True, **kwargs) == detail


def test_int_problem_without_floats():
    assert int_problem(3.0, allow_float=False) == "an integer"
    assert int_problem(3, allow_float=False) is None


def test_check_wrappers_raise_one_value_error_and_convert():
    assert check_int("steps", 3.0) == 3 and type(check_int("steps", 3.0)) is int
    assert check_real("lr", 1) == 1.0 and type(check_real("lr", 1)) is float
    with pytest.raises(ValueError, match=r"^lr must be a real number > 0.0, got -0.1$"):
        check_real("lr", -0.1, low=0.0)
    with pytest.raises(ValueError, match=r"^steps must be an integer >= 1 and <= 9, got 10$"):
        check_int("steps", 10, low=1, high=9)


def test_checks_module_imports_no_torch():
    code = ("import sys; import certunlearn_train.checks, certunlearn_train.config; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
