"""Certificates that account for float32 rounding (THEORY.md section 8.1).

Gradient clipping: a per-step shift slack from an a-priori iterate-norm bound, whose tail
probability is folded into delta; model clipping and output perturbation: 2^-19 times the radius.
The known answers below are computed here from the formula in THEORY.md, not by the library.
"""
import dataclasses
import math
from fractions import Fraction
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import certunlearn_theory as ct
from certunlearn_theory import calibrate_with_float32_slack
from certunlearn_train import baselines as B
from certunlearn_train import certificates as C
from certunlearn_train.models import MLP
from certunlearn_train.unlearn import unlearn

from ..hypothesis_budget import examples
from .helpers import tiny_problem

U = 2.0 ** -24
FIXTURES = Path(__file__).parent / "fixtures"
# the demo: digits MLP 64-64-10 (d = 4810), T = 50, C0 = 0.01, C1 = 0.004, gamma = 0.05
DEMO = dict(T=50, C0=0.01, C1=0.004, lr=0.05, batch_size=64)
D_DEMO = 64 * 64 + 64 + 64 * 10 + 10


def reference_slack(sigma, T, d, C0, C1, gamma, eps, tail, batch):
    """THEORY.md 8.1 for lam = 0, in exact-enough float64, without the safety factor."""
    x = math.log(2 * T * (1 + math.exp(eps)) / tail)
    norm = C0 + T * gamma * C1 + sigma * math.sqrt(T) * (math.sqrt(d) + math.sqrt(2 * x))
    return 6 * U * norm + 2 * (batch + 2) * U * gamma * C1


@pytest.fixture(scope="module")
def demo_run():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model = MLP(64, 10, (64,))
    x, y = torch.rand(128, 64, generator=g), torch.randint(0, 10, (128,), generator=g)
    return unlearn(model, (x, y), eps=1.0, delta=1e-5, steps=DEMO["T"], C0=DEMO["C0"],
                   C1=DEMO["C1"], lr=DEMO["lr"], batch_size=DEMO["batch_size"], seed=3,
                   progress=False)


def test_slack_known_answer_for_the_demo():
    tail = 1e-5 * 2.0 ** -10
    sigma = 0.023
    ref = reference_slack(sigma, 50, D_DEMO, 0.01, 0.004, 0.05, 1.0, tail, 64)
    got = C.float32_shift_slack(sigma=sigma, T=50, d=D_DEMO, C0=0.01, C1=0.004, gamma=0.05,
                                lam=0.0, eps=1.0, delta_tail=tail, batch_size=64)
    assert 4.3e-6 < ref < 4.6e-6  # "about 4.4e-6 per step"
    assert ref <= got <= ref * (1 + 4e-3)  # the safety factors only enlarge it, and by little


def test_tail_split_never_exceeds_the_target():
    for delta in (1e-5, 1e-9, 0.3, 1.0 / 3.0, 5e-300):
        acct, tail = C.split_tail_delta(delta)
        assert tail == delta * 2.0 ** -10
        total = C.run_delta(acct, tail)
        assert Fraction(acct) + Fraction(tail) <= Fraction(total) <= Fraction(delta)


def test_demo_certificate_includes_the_slack(demo_run):
    _, cert = demo_run
    p = cert.parameters
    assert p["d"] == D_DEMO and p["shift_slack"] > 0
    assert p["float32_tail_delta"] == 1e-5 * 2.0 ** -10
    acct_delta = cert.accountant["delta"]
    assert Fraction(acct_delta) + Fraction(p["float32_tail_delta"]) <= Fraction(cert.delta)
    assert cert.delta <= 1e-5
    eps = ct.epsilon_for(cert.sigma, acct_delta, p["T"], p["C0"], p["C1"], p["gamma"], p["lam"],
                         shift_slack=p["shift_slack"])
    assert eps <= cert.eps <= 1.0
    need = reference_slack(cert.sigma, p["T"], p["d"], p["C0"], p["C1"], p["gamma"], cert.eps,
                           p["float32_tail_delta"], p["batch_size"])
    assert p["shift_slack"] >= need
    report = cert.verify(demo_run[0])
    assert "float32_rounding" not in report.not_checked_fields()
    # the slack-free sigma would not meet the target once the slack is counted
    plain = ct.noise_for(1.0, 1e-5, p["T"], p["C0"], p["C1"], p["gamma"])
    assert ct.epsilon_for(plain, acct_delta, p["T"], p["C0"], p["C1"], p["gamma"],
                          shift_slack=p["shift_slack"]) > 1.0


def _rebuild(cert, **changes):
    params = dict(cert.parameters)
    for key, value in changes.items():
        if value is None:
            params.pop(key, None)
        else:
            params[key] = value
    return C.build_run_certificate(
        method=cert.method, sigma=cert.sigma, eps=cert.eps, delta=1e-5, parameters=params,
        retain_size=cert.retain_size, forget_size=cert.forget_size,
        sha_before=cert.model_sha256_before, sha_after=cert.model_sha256_after,
        seed_user_supplied=cert.noise_seed_user_supplied)


def _with_slack(cert, slack):
    """The certificate's dict with ``shift_slack`` replaced and the accountant record reissued
    for it (so that only the float32 check can object)."""
    data = cert.to_dict()
    data["parameters"]["shift_slack"] = slack
    params = dict(data["accountant"]["parameters"], shift_slack=slack)
    acct_delta = params.pop("delta")
    if cert.method == "output_perturbation":
        fresh = ct.issue_certificate(cert.sigma, acct_delta, None, params["C0"], None, None,
                                     method=cert.method, eps=cert.eps, shift_slack=slack)
    else:
        fresh = ct.issue_certificate(cert.sigma, acct_delta, params["T"], params["C0"],
                                     params.get("C1"), params.get("gamma"),
                                     params.get("lam", 0.0), method=cert.method,
                                     C2=params.get("C2"), sigma0=params["sigma0"], eps=cert.eps,
                                     shift_slack=slack)
    data["accountant"] = fresh.to_dict()
    return data


def test_lower_or_missing_slack_is_refused(demo_run):
    _, cert = demo_run
    p = cert.parameters
    need = C.float32_shift_slack(sigma=cert.sigma, T=p["T"], d=p["d"], C0=p["C0"], C1=p["C1"],
                                 gamma=p["gamma"], lam=p["lam"], eps=cert.eps,
                                 delta_tail=p["float32_tail_delta"], batch_size=p["batch_size"])
    assert p["shift_slack"] >= need
    _rebuild(cert, shift_slack=need).verify()  # exactly the bound is enough
    with pytest.raises(C.CertificateError, match="below the float32 rounding bound"):
        _rebuild(cert, shift_slack=math.nextafter(need, 0.0))
    with pytest.raises(C.CertificateError, match="below the float32 rounding bound"):
        _rebuild(cert, d=p["d"] * 4)  # more parameters need more slack
    with pytest.raises(C.CertificateError, match="records the float32 rounding slack.*lack "
                                                 "shift_slack"):
        _rebuild(cert, shift_slack=None)
    # the file edited by hand: slack lowered, with a consistent accountant record for it
    with pytest.raises(C.CertificateError, match="below the float32 rounding bound"):
        C.RunCertificate.from_dict(_with_slack(cert, need / 2)).verify()
    # the run's delta must carry the tail
    bad = dataclasses.replace(cert, delta=cert.accountant["delta"])
    with pytest.raises(C.CertificateError, match="cannot reproduce delta"):
        bad.verify()


def test_current_format_without_the_slack_is_refused(demo_run):
    """Deleting the float32 fields and re-deriving a consistent, smaller eps without them: a
    certificate of the current format must carry every field its guarantee depends on."""
    _, cert = demo_run
    data = cert.to_dict()
    for key in ("shift_slack", "float32_tail_delta", "d"):
        del data["parameters"][key]
    import certunlearn_theory as ct
    p = data["parameters"]
    eps = float(ct.epsilon_for(cert.sigma, cert.delta, p["T"], p["C0"], p["C1"], p["gamma"],
                               p["lam"]))
    assert eps < cert.eps  # the forged claim is stronger
    fresh = ct.issue_certificate(cert.sigma, cert.delta, p["T"], p["C0"], p["C1"], p["gamma"],
                                 p["lam"], sigma0=p["sigma0"], eps=eps)
    data.update(eps=eps, accountant=fresh.to_dict())
    with pytest.raises(C.CertificateError, match="lack shift_slack, float32_tail_delta, d"):
        C.RunCertificate.from_dict(data).verify()
    assert "float32_rounding" not in cert.verify().not_checked_fields()


@pytest.mark.parametrize("name", ["gradient_clipping", "model_clipping", "output_perturbation",
                                  "retrain"])
def test_v1_fixtures_verify_and_declare_float32_unaccounted(name):
    cert = C.RunCertificate.load(str(FIXTURES / f"run_v1_{name}.json"))
    assert cert.read_from == C.FORMAT_V1 and cert.to_dict()["format"] == C.FORMAT
    report = cert.verify(allow_unverifiable=True)
    unaccounted = name in ("gradient_clipping", "model_clipping", "output_perturbation")
    assert ("float32_rounding" in report.not_checked_fields()) == unaccounted
    # said first and plainly, with the eps it would have (gradient clipping needs the model)
    assert bool(report.warnings) == unaccounted
    if unaccounted:
        assert report.warnings[0].startswith("format certunlearn.run/1: the guarantee omits "
                                             "float32 rounding")
        if name != "gradient_clipping":
            with_it = float(report.warnings[0].split("eps would be ")[1].split()[0])
            assert with_it > cert.eps


def test_v1_gradient_clipping_eps_with_rounding_given_the_model():
    cert = C.RunCertificate.load(str(FIXTURES / "run_v1_gradient_clipping.json"))
    state, _ = C.load_model_file(str(FIXTURES / "run_v1_model.pt"))
    from certunlearn_train.models import MLP
    model = MLP(64, 10, (8,))  # the run's model (a plain state dict in version 1)
    model.load_state_dict(state)
    assert cert.verify(state).warnings[0].endswith("to compute the eps with it")
    report = cert.verify(model)
    text = report.warnings[0]
    with_it = float(text.split("eps would be ")[1].split()[0])
    # independently: the slack at that eps, and the accountant's eps with it, is not above
    import certunlearn_theory as ct
    p = cert.parameters
    d = sum(q.numel() for q in model.parameters())
    acct_delta, tail = C.split_tail_delta(cert.delta)
    slack = C.float32_shift_slack(sigma=cert.sigma, T=p["T"], d=d, C0=p["C0"], C1=p["C1"],
                                  gamma=p["gamma"], lam=p["lam"], eps=with_it, delta_tail=tail,
                                  batch_size=p["batch_size"])
    need = float(ct.epsilon_for(cert.sigma, acct_delta, p["T"], p["C0"], p["C1"], p["gamma"],
                                p["lam"], shift_slack=slack))
    assert cert.eps < need <= with_it


def test_calibration_fixed_point_and_larger_sigma():
    acct_delta, tail = C.split_tail_delta(1e-5)
    sigma, slack, got_tail = calibrate_with_float32_slack(
        1.0, 1e-5, T=50, d=D_DEMO, C0=0.01, C1=0.004, gamma=0.05, lam=0.0, batch_size=64)
    assert got_tail == tail
    plain = float(ct.noise_for(1.0, 1e-5, 50, 0.01, 0.004, 0.05))
    assert sigma > plain
    assert C.float32_shift_slack(sigma=sigma, T=50, d=D_DEMO, C0=0.01, C1=0.004, gamma=0.05,
                                 lam=0.0, eps=1.0, delta_tail=tail, batch_size=64) <= slack
    assert ct.epsilon_for(sigma, acct_delta, 50, 0.01, 0.004, 0.05, shift_slack=slack) <= 1.0


def test_calibration_that_cannot_settle_is_refused():
    # an enormous dimension: the rounding error outgrows any noise
    with pytest.raises(ValueError, match="did not settle"):
        calibrate_with_float32_slack(1.0, 1e-5, T=50, d=10**15, C0=0.01, C1=0.004, gamma=0.05,
                                     lam=0.0, batch_size=64)


@settings(max_examples=examples(20), deadline=None)
@given(sigma=st.floats(1e-3, 10.0), T=st.integers(1, 10**5), d=st.integers(1, 10**9),
       lam=st.sampled_from([0.0, 0.5, 30.0]), k=st.floats(1.01, 4.0))
def test_slack_is_monotone(sigma, T, d, lam, k):
    base = dict(sigma=sigma, T=T, d=d, C0=1.0, C1=0.1, gamma=0.05, lam=lam, eps=1.0,
                delta_tail=1e-8, batch_size=32)
    s0 = C.float32_shift_slack(**base)
    assert s0 >= reference_slack(sigma, T, d, 1.0, 0.1, 0.05, 1.0, 1e-8, 32) or lam > 0
    for key, bigger in (("sigma", sigma * k), ("T", T + 1), ("d", d * 2), ("C0", k),
                        ("batch_size", 64)):
        assert C.float32_shift_slack(**dict(base, **{key: bigger})) >= s0
    assert C.float32_shift_slack(**dict(base, delta_tail=1e-9)) >= s0


def test_growing_iterates_known_answer_and_overflow():
    # gamma lam = 3: c = 2, so B = C0 2^T + gamma C1 (2^T - 1) + sigma sqrt((4^T - 1)/3) (...)
    T, sigma, tail = 10, 0.5, 1e-8
    x = math.log(2 * T * (1 + math.e) / tail)
    norm = 1.0 * 2 ** T + 0.05 * 0.1 * (2 ** T - 1) \
        + sigma * math.sqrt((4 ** T - 1) / 3) * (math.sqrt(100) + math.sqrt(2 * x))
    ref = 6 * U * norm + 2 * 34 * U * 0.05 * 0.1
    got = C.float32_shift_slack(sigma=sigma, T=T, d=100, C0=1.0, C1=0.1, gamma=0.05, lam=60.0,
                                eps=1.0, delta_tail=tail, batch_size=32)
    assert ref <= got <= ref * (1 + 4e-3)
    with pytest.raises(ValueError, match="not finite"):
        C.float32_shift_slack(sigma=sigma, T=10**5, d=100, C0=1.0, C1=0.1, gamma=0.05,
                              lam=60.0, eps=1.0, delta_tail=tail, batch_size=32)


def test_projection_methods_record_and_check_their_slack():
    model, x, y = tiny_problem()
    _, mc = unlearn(model, (x, y), eps=1.0, delta=1e-5, method="model_clipping", C0=0.5,
                    C2=1.0, lam=0.1, lr=0.1, steps=3, batch_size=8, progress=False)
    _, op = B.output_perturbation(model, (x, y), eps=1.0, delta=1e-5, C0=0.5, progress=False)
    for cert, radius in ((mc, 1.0), (op, 0.5)):
        assert cert.parameters["shift_slack"] == 2.0 ** -19 * radius
        assert "float32_rounding" not in cert.verify().not_checked_fields()
        C.RunCertificate.from_dict(_with_slack(cert, 2.0 ** -19 * radius)).verify()  # as issued
        with pytest.raises(C.CertificateError, match="below the float32 rounding bound"):
            C.RunCertificate.from_dict(_with_slack(cert, 2.0 ** -20 * radius)).verify()
