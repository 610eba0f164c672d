"""Tests of Certificate, issue_certificate, issue_dpsgd_certificate and verify()."""
import dataclasses
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from certunlearn_theory import (
    Certificate,
    InvalidParameterError,
    dpsgd_epsilon,
    epsilon_for,
    issue_certificate,
    issue_dpsgd_certificate,
    noise_for,
)

from ..hypothesis_budget import examples

GC = (1e-5, 100, 1.0, 1.0, 0.01)


def _certs():
    s = noise_for(1.0, 1e-5, 100, 1.0, 1.0, 0.01)
    return [
        issue_certificate(s, *GC, eps=1.0),
        issue_certificate(2.0, 1e-6, 50, 1.0, 0.5, 0.02, 0.1, sigma0=0.5),
        issue_certificate(0.8, 1e-5, 10, 1.0, None, None, method="model_clipping", C2=1.0),
        issue_certificate(0.9, 1e-5, 10, 1.0, 1.0, 0.1, method="model_clipping", C2=1.0,
                          noise_after_projection=False),
        issue_certificate(5.0, 1e-5, None, 1.0, None, None, method="output_perturbation"),
        issue_dpsgd_certificate(1.0, 0.01, 1000, 1e-5, group_size=3),
    ]


CERTS = _certs()


@pytest.mark.parametrize("cert", CERTS, ids=lambda c: c.method)
def test_round_trip_and_verify(cert):
    again = Certificate.from_json(cert.to_json())
    assert again == cert
    assert again.to_dict() == cert.to_dict()
    assert Certificate.from_dict(cert.to_dict()) == cert
    assert cert.verify() is cert
    assert again.verify() is again
    assert cert.version and cert.eps > 0 and 0 < cert.delta < 1


@pytest.mark.parametrize("cert", CERTS, ids=lambda c: c.method)
def test_tampering_is_detected(cert):
    d = cert.to_dict()
    d["eps"] = cert.eps * 0.9
    with pytest.raises(ValueError, match="certifies eps="):
        Certificate.from_dict(d).verify()
    d = cert.to_dict()
    d["sigma"] = cert.sigma * 0.8
    with pytest.raises(ValueError):
        Certificate.from_dict(d).verify()
    d = cert.to_dict()
    key = next(k for k, v in d["derivation"].items() if isinstance(v, (float, list)))
    if isinstance(d["derivation"][key], list):
        d["derivation"][key][-1] = d["derivation"][key][-1] * 1.01 + 0.01
    else:
        d["derivation"][key] = d["derivation"][key] * 1.01 + 0.01
    with pytest.raises(ValueError, match="does not reproduce"):
        Certificate.from_dict(d).verify()
    d = cert.to_dict()
    d["parameters"].pop(next(iter(k for k in d["parameters"] if k not in ("delta", "conversion",
                                                                          "lam", "sigma0"))))
    with pytest.raises(ValueError):
        Certificate.from_dict(d).verify()


def test_immutable():
    cert = CERTS[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cert.eps = 0.5
    with pytest.raises(TypeError):
        cert.parameters["C0"] = 5.0
    with pytest.raises(TypeError):
        cert.derivation["rho_pabi"] = 0.0


@settings(max_examples=examples(60))
@given(st.floats(allow_nan=False, allow_infinity=False, min_value=1e-300, max_value=1e300))
def test_floats_round_trip_exactly(x):
    cert = Certificate(method="gradient_clipping", parameters={"C0": x, "list": [x, -x]},
                       sigma=x, eps=x, delta=min(x, 0.5), derivation={"v": x})
    back = Certificate.from_json(cert.to_json())
    assert back.sigma == x and back.eps == x and back.parameters["C0"] == x
    assert back.parameters["list"] == (x, -x) and back.derivation["v"] == x
    assert float.hex(back.sigma) == float.hex(x)


def test_certificate_numbers_match_the_accountant():
    s = noise_for(1.0, 1e-5, 100, 1.0, 1.0, 0.01)
    c = issue_certificate(s, *GC)
    assert c.eps == epsilon_for(s, *GC)
    assert c.derivation["horizon"] == 100
    assert c.derivation["rho_pabi"] == pytest.approx(
        (2 + 2 * 0.01 * 100) ** 2 / (2 * 100 * s * s), rel=1e-12)
    d = issue_dpsgd_certificate(1.0, 0.01, 1000, 1e-5)
    assert d.eps == dpsgd_epsilon(1.0, 0.01, 1000, 1e-5)


def test_claim_beyond_the_accountant_is_refused():
    with pytest.raises(ValueError, match="certifies only eps="):
        issue_certificate(1.0, *GC, eps=0.5)
    with pytest.raises(ValueError, match="certifies only eps="):
        issue_dpsgd_certificate(1.0, 0.01, 1000, 1e-5, eps=0.1)


@pytest.mark.parametrize("data,match", [
    ("not json", "not valid JSON"),
    (json.dumps({"method": "gradient_clipping"}), "missing"),
    (json.dumps({"method": "magic", "parameters": {}, "sigma": 1, "eps": 1, "delta": 0.1}),
     "method must be one of"),
    (json.dumps({"format": "other/9", "method": "gradient_clipping"}), "unknown certificate format"),
    (json.dumps({"method": "gradient_clipping", "parameters": {}, "sigma": "x", "eps": 1,
                 "delta": 0.1}), "sigma must be a number"),
])
def test_bad_certificates(data, match):
    with pytest.raises(InvalidParameterError, match=match):
        Certificate.from_json(data)
