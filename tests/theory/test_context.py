"""The caller's mpmath context must not change any answer of the accountant.

Every public function and method runs inside its own ``mp.workdps(working_digits())`` (the
``entry_point`` decorator): inputs are converted and every step computed at the accountant's
precision, and the caller's ``mp.dps``/``mp.prec`` is restored on the way out.
"""
import inspect

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mpmath import mp, mpf

import certunlearn_theory as ct

from ..hypothesis_budget import examples

# the audit's counterexample: at mp.dps = 4 the float inputs were rounded to 16 bits
AUDIT = (137, 1.1668603608095194, 0.8315587597358287, 0.02329661498353811)


def _calls():
    """name -> zero-argument call; each result is compared bit for bit."""
    return {
        "noise_for audit": lambda: ct.noise_for(1.0, 1e-5, *AUDIT),
        "epsilon_for audit": lambda: ct.epsilon_for(2.4327397598926677, 1e-5, *AUDIT),
        "delta_for": lambda: ct.delta_for(1.7, 1.0, 100, 1.0, 1.0, 0.01, 0.1),
        "steps_for": lambda: ct.steps_for(1.7, 1.0, 1e-5, 1.0, 1.0, 0.01),
        "noise_for model clipping": lambda: ct.noise_for(
            1.0, 1e-5, 10, 1.0, None, None, method="model_clipping", C2=1.0, sigma0=0.5),
        "epsilon_for output perturbation": lambda: ct.epsilon_for(
            5.0, 1e-5, None, 1.0, None, None, method="output_perturbation"),
        "gaussian_sigma": lambda: ct.gaussian_sigma(0.3, 1e-7, 1.1),
        "gaussian_delta": lambda: ct.gaussian_delta(2.5, 1.1, 0.7),
        "max_noise_ratio": lambda: ct.max_noise_ratio(1.0, 1e-5),
        "hockey_stick_contraction": lambda: ct.hockey_stick_contraction(1.0, 0.3, 1.0, 2.0),
        "linear_rho_max": lambda: ct.linear_rho_max(1.3, 1e-6),
        "renyi_to_delta": lambda: ct.renyi_to_delta(ct.RenyiCurve.linear(0.1) * 3, 2.0),
        "gaussian curve": lambda: ct.renyi_to_dp(ct.RenyiCurve.gaussian(1.0, 3.3), 1e-5),
        "pabi_bound": lambda: ct.pabi_bound(0.9, 50, 1.0, 0.3, 0.05, 0.01, sigma0=0.2),
        "model_clipping_bound": lambda: ct.model_clipping_bound(0.8, 1.0, 6, 1.0, 1.0),
        "dpsgd_epsilon": lambda: ct.dpsgd_epsilon(1.1, 0.01, 100, 1e-5, group_size=2),
        "group_split": lambda: ct.group_split(1.0, 1e-5, 7),
        "paper_sigma_regularized": lambda: ct.paper_sigma_regularized(
            1.0, 1e-5, 1000, 1.0, 1.0, 0.01, 0.1),
        "theta": lambda: ct.theta(1.0, 2.0),
        "log_theta": lambda: ct.log_theta(3.0, 0.1),
        "certificate": lambda: ct.issue_certificate(1.7, 1e-5, 100, 1.0, 1.0, 0.01).to_json(),
    }


_REFERENCE = {}


def reference():
    if not _REFERENCE:
        with mp.workdps(15):  # mpmath's default
            _REFERENCE.update({name: call() for name, call in _calls().items()})
    return _REFERENCE


def same(a, b) -> bool:
    """Bit-identical: floats by repr, mpf by value and precision, containers element-wise."""
    if isinstance(a, mpf) or isinstance(b, mpf):
        return isinstance(a, mpf) and isinstance(b, mpf) and a._mpf_ == b._mpf_
    if isinstance(a, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and all(map(same, a, b))
    if hasattr(a, "__dataclass_fields__"):
        return type(a) is type(b) and all(same(getattr(a, f), getattr(b, f))
                                          for f in a.__dataclass_fields__)
    return type(a) is type(b) and repr(a) == repr(b)


@pytest.mark.parametrize("dps", [4, 5])
def test_audit_counterexamples(dps):
    # noise_for at mp.dps = 4 returned 2.4327327102849376, whose true eps is 1.0000031;
    # epsilon_for at mp.dps = 5 returned a value that is not the accountant's
    expected_sigma = ct.noise_for(1.0, 1e-5, *AUDIT)
    expected_eps = ct.epsilon_for(expected_sigma, 1e-5, *AUDIT)
    assert expected_eps <= 1.0
    saved = mp.prec
    mp.dps = dps
    try:
        sigma = ct.noise_for(1.0, 1e-5, *AUDIT)
        eps = ct.epsilon_for(expected_sigma, 1e-5, *AUDIT)
        assert mp.dps == dps
    finally:
        mp.prec = saved
    assert sigma == expected_sigma and eps == expected_eps


@settings(max_examples=examples(6))
@given(dps=st.integers(1, 100), use_prec=st.booleans(),
       names=st.lists(st.sampled_from(sorted(_calls())), min_size=3, max_size=6, unique=True))
def test_answers_do_not_depend_on_the_callers_precision(dps, use_prec, names):
    expected = reference()
    calls = _calls()
    saved = mp.prec
    try:
        if use_prec:
            mp.prec = max(2, int(dps * 3.33))
        else:
            mp.dps = dps
        ambient = mp.prec
        for name in names:
            got = calls[name]()
            assert mp.prec == ambient, name  # the caller's context is restored
            assert same(got, expected[name]), (name, got, expected[name])
        # also on the way out through an exception
        with pytest.raises(ct.InvalidParameterError):
            ct.noise_for(-1.0, 1e-5, 10, 1.0, 1.0, 0.1)
        assert mp.prec == ambient
    finally:
        mp.prec = saved


# public callables that set up the context themselves, not computations
_NOT_COMPUTATIONS = {"precision", "working_digits"}


def _public_functions():
    for name in sorted(dir(ct)):
        obj = getattr(ct, name)
        if name.startswith("_") or name in _NOT_COMPUTATIONS:
            continue
        if inspect.isfunction(obj):
            yield name, obj
        elif inspect.isclass(obj) and obj.__module__.startswith("certunlearn_theory") \
                and not issubclass(obj, BaseException):
            for attr, value in vars(obj).items():
                if isinstance(value, (classmethod, staticmethod)):
                    value = value.__func__
                if not inspect.isfunction(value):
                    continue
                if attr.startswith("_") and attr not in ("__add__", "__mul__", "__rmul__",
                                                         "__call__"):
                    continue
                yield f"{name}.{attr}", value


def test_every_public_entry_point_is_wrapped():
    names = [name for name, _ in _public_functions()]
    assert "noise_for" in names and "RenyiCurve.linear" in names and "Certificate.verify" in names
    missing = [name for name, f in _public_functions()
               if not getattr(f, "__accountant_entry_point__", False)]
    assert not missing, f"public functions without their own mpmath context: {missing}"
