"""Certificate plumbing that does not need the accountant: weight hashes, atomic writes, parsing."""
import hashlib
import json
import os

import numpy as np
import pytest
import torch

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


def test_model_file_round_trip_and_errors(tmp_path):
    model = torch.nn.Linear(3, 2)
    path = str(tmp_path / "m.pt")
    C.save_model_file(path, model, {"name": "x"})
    state, arch = C.load_model_file(path)
    assert arch == {"name": "x"} and C.weights_sha256(state) == C.weights_sha256(model)
    assert [p for p in os.listdir(tmp_path) if p.startswith(".tmp-")] == []
    with pytest.raises(C.CertificateError, match="does not exist"):
        C.load_model_file(str(tmp_path / "none.pt"))
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(C.CertificateError, match="cannot load model file"):
        C.load_model_file(str(tmp_path / "junk.pt"))


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
    fields = dict(method="retrain", epsilon=0.0, delta=0.0, sigma=None, parameters={},
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
    del good["sigma"]
    with pytest.raises(C.CertificateError, match="missing field.*sigma"):
        C.RunCertificate.from_dict(good)


def test_retrain_certificate_claims_exactly_zero():
    cert = _retrain_cert()
    cert.verify()
    with pytest.raises(C.CertificateError, match="exact unlearning"):
        _retrain_cert(epsilon=0.5).verify()
    with pytest.raises(C.CertificateError, match="unsupported certificate format"):
        _retrain_cert(format="other/9").verify()
    with pytest.raises(C.CertificateError, match="epsilon must be a finite number"):
        _retrain_cert(epsilon=float("nan")).verify()
    assert "seed" not in json.loads(cert.to_json()).get("parameters", {})
