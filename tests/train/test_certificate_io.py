"""Certificate plumbing that does not need the accountant: weight hashes, atomic writes, parsing."""
import functools
import hashlib
import json
import os

import numpy as np
import pytest
import torch

from certunlearn_theory import format_down, format_up
from certunlearn_train import certificates as C


def test_weights_sha256_independent_recomputation():
    model = torch.nn.Linear(3, 2)
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(f"{name}\0torch.float32\0{tuple(t.shape)}\0".encode())
        h.update(np.ascontiguousarray(t.numpy()).astype("<f4").tobytes())
    assert C.weights_sha256(model) == h.hexdigest()
    assert C.weights_sha256(model.state_dict()) == h.hexdigest()


def test_weights_sha256_sees_a_single_ulp():
    model = torch.nn.Linear(3, 2)
    before = C.weights_sha256(model)
    with torch.no_grad():
        w = model.weight.view(-1)
        w[0] = float(np.nextafter(np.float32(w[0].item()), np.float32(np.inf)))
    assert C.weights_sha256(model) != before


def test_atomic_write_leaves_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "cert.json"
    path.write_text("old")

    def boom(src, dst):
        raise OSError("disk full")
    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        C.atomic_write_bytes(str(path), b"new")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["cert.json"]


def _retrain_cert(**over):
    fields = dict(method="retrain", eps=0.0, delta=0.0, sigma=None,
                  parameters={"epochs": 1.0, "gamma": 0.1, "batch_size": 8},
                  retain_size=10, forget_size=2, model_sha256_before="a" * 64,
                  model_sha256_after="b" * 64, accountant=None, library_version={},
                  noise_seed_user_supplied=False, created_utc="2026-01-01T00:00:00+00:00")
    fields.update(over)
    return C.RunCertificate(**fields)


def test_parsing_errors():
    with pytest.raises(C.CertificateError, match="not valid JSON"):
        C.RunCertificate.from_json("{")
    good = json.loads(_retrain_cert().to_json())
    with pytest.raises(C.CertificateError, match="unknown certificate field.*extra"):
        C.RunCertificate.from_dict(dict(good, extra=1))
    with pytest.raises(C.CertificateError, match="repeats the key.*eps"):
        C.RunCertificate.from_json(_retrain_cert().to_json()[:-2] + ', "eps": 0.0}')
    with pytest.raises(C.CertificateError, match="NaN"):
        C.RunCertificate.from_json(_retrain_cert().to_json().replace('"eps": 0.0', '"eps": NaN'))
    del good["sigma"]
    with pytest.raises(C.CertificateError, match="missing field.*sigma"):
        C.RunCertificate.from_dict(good)


def test_retrain_certificate_claims_exactly_zero():
    cert = _retrain_cert()
    with pytest.raises(C.NotVerifiableError):
        cert.verify()
    assert not cert.verify(allow_unverifiable=True).guarantee_recomputed
    with pytest.raises(C.CertificateError, match="exact unlearning"):
        _retrain_cert(eps=0.5).verify()
    with pytest.raises(C.CertificateError, match="unsupported certificate format"):
        _retrain_cert(format="other/9").verify()
    with pytest.raises(C.CertificateError, match="eps must be a finite number"):
        _retrain_cert(eps=float("nan")).verify()
    assert "seed" not in json.loads(cert.to_json()).get("parameters", {})


# ----------------------------------------------------------------------------------------------
# Format certunlearn.run/1 (files in fixtures/ written by the version-1 code) is read by conversion
# ----------------------------------------------------------------------------------------------

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


@pytest.mark.parametrize("name, method", [
    ("gradient_clipping", "gradient_clipping"), ("model_clipping", "model_clipping"),
    ("output_perturbation", "output_perturbation"), ("retrain", "retrain"),
    ("dpsgd", "dpsgd_group")])
def test_version_1_files_are_converted_and_verify(name, method):
    path = os.path.join(FIXTURES, f"run_v1_{name}.json")
    old = json.loads(open(path).read())
    assert old["format"] == C.FORMAT_V1
    cert = C.RunCertificate.load(path)
    assert cert.format == C.FORMAT and cert.method == method
    assert cert.eps == old["epsilon"] and cert.delta == old["delta"]
    assert cert.sigma == old["sigma"] and cert.accountant == old["accountant"]
    p, q = cert.parameters, old["parameters"]
    renames = {"lr": "gamma", "steps": "steps" if method == "dpsgd_group" else "T"}
    for key, value in q.items():
        new = renames.get(key, key)
        if new in p:
            assert C.same_value(p[new], value), key
        else:  # only unused slots are dropped
            assert value is None or value == 0, key
    report = cert.verify(allow_unverifiable=True)
    assert report.guarantee_recomputed == (method != "retrain")
    # written back, it is a version-2 file that reads back unchanged
    again = C.RunCertificate.from_json(cert.to_json())
    assert again == cert and json.loads(cert.to_json())["format"] == "certunlearn.run/2"


def test_version_1_file_with_its_model():
    cert = C.RunCertificate.load(os.path.join(FIXTURES, "run_v1_gradient_clipping.json"))
    state, _ = C.load_model_file(os.path.join(FIXTURES, "run_v1_model.pt"))
    assert cert.verify(state).model_checked
    first = next(iter(state))
    state[first].view(-1)[0] += 1.0
    with pytest.raises(C.CertificateError, match="model weights do not match"):
        cert.verify(state)


def test_version_1_edit_is_still_refused():
    data = json.loads(open(os.path.join(FIXTURES, "run_v1_gradient_clipping.json")).read())
    data["parameters"]["steps"] = 7
    with pytest.raises(C.CertificateError, match="accountant"):
        C.RunCertificate.from_dict(data).verify()


def test_format_up_and_down_reading_back():
    # the accountant's one formatter, with the option the CLI uses for recorded floats
    up = functools.partial(format_up, reads_back=True)
    down = functools.partial(format_down, reads_back=True)
    assert up(1.2345649, 6) == "1.23457" and down(1.2345649, 6) == "1.23456"
    assert up(1e-5, 3) == "1e-05"  # reads back as the double 1e-5 itself
    assert format_up(1e-5, 3) == "1.01e-05"  # without the option: above the double's value
    assert up(0.1, 6) == "0.1" and up(2 / 3, 3) == "0.667"
    assert up(1 / 3, 3) == "0.334" and down(2 / 3, 3) == "0.666"
    assert up(9.9999996, 6) == "10"
    assert up(0.0) == "0" and up(float("inf")) == "inf"
    with pytest.raises(ValueError, match="digits must be"):
        up(1.0, 0)


@pytest.mark.parametrize("x", [1.0, 0.1, 1.2345649, 1e-5, 3.7e-12, 123456789.0, 2.5e300,
                               0.30000000000000004, 7.0e-310])
@pytest.mark.parametrize("digits", [1, 3, 6, 17])
def test_format_up_is_never_below(x, digits):
    from decimal import Decimal
    up = format_up(x, digits, reads_back=True)
    down = format_down(x, digits, reads_back=True)
    # as decimals on the safe side, or the shortest string of x itself (reads back as x)
    assert Decimal(up) >= Decimal(x) or float(up) == x
    assert Decimal(down) <= Decimal(x) or float(down) == x
    assert float(up) >= x >= float(down)
    assert len(Decimal(up).normalize().as_tuple().digits) <= digits
