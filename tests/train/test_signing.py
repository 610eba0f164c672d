"""Ed25519 signatures over certificates: keygen, signing (API, config key, --sign-key), verify with
and without --public-key, edits after signing, wrong keys, unsigned certificates."""
import json
import os
import stat

import pytest

from certunlearn_train import certificates as C
from certunlearn_train import signing as S
from certunlearn_train.cli import main
from certunlearn_train.unlearn import unlearn

from .helpers import tiny_problem


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keys")
    assert main(["keygen", "--out", str(folder / "a.key")]) == 0
    assert main(["keygen", "--out", str(folder / "b.key")]) == 0
    return folder / "a.key", folder / "b.key"


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    model, x, y = tiny_problem()
    out, cert = unlearn(model, (x, y), eps=1.0, delta=1e-5, C0=0.5, C1=0.05, lr=0.1, steps=6,
                        batch_size=8, seed=3, progress=False)
    folder = tmp_path_factory.mktemp("pair")
    C.save_model_file(str(folder / "model.pt"), out)
    return folder, out, cert


def test_keygen_files_and_permissions(keys, capsys):
    key, _ = keys
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    assert open(key).read().startswith("-----BEGIN PRIVATE KEY-----")
    assert open(str(key) + ".pub").read().startswith("-----BEGIN PUBLIC KEY-----")
    S.load_private_key(str(key))
    S.load_public_key(str(key) + ".pub")
    before = open(key).read()
    assert main(["keygen", "--out", str(key)]) == 1  # never overwrites
    assert "already exists" in capsys.readouterr().err
    assert open(key).read() == before


def test_signed_certificate_verifies_and_binds_every_field(keys, pair, tmp_path, capsys):
    key, other = keys
    folder, out, cert = pair
    signed = cert.sign(str(key))
    assert signed.signature["algorithm"] == "ed25519"
    # the signed bytes are the canonical JSON without the signature
    data = signed.to_dict()
    assert C.canonical_bytes(data) == C.canonical_bytes(cert.to_dict())
    report = signed.verify(out, public_key=str(key) + ".pub")
    assert report.signature.startswith("valid, by the given key")
    assert "signature" not in report.not_checked_fields()
    # without a key: never "valid" unqualified, the signer is unknown
    unknown = signed.verify(out)
    assert unknown.signature.startswith("signed by an unknown key")
    assert "signature.signer" in unknown.not_checked_fields()
    path = tmp_path / "certificate.json"
    signed.save(str(path))
    assert main(["verify", str(path), str(folder / "model.pt"), "--public-key",
                 str(key) + ".pub"]) == 0
    assert "signature: valid, by the given key" in capsys.readouterr().out
    # edits after signing, including the fields no one can recompute
    for field, value in (("noise_seed_user_supplied", False), ("created_utc",
                                                               "2020-01-01T00:00:00+00:00"),
                         ("retain_size", 25), ("model_sha256_before", "0" * 64)):
        edited = dict(data, **{field: value})
        with pytest.raises(C.CertificateError, match="bad signature"):
            C.RunCertificate.from_dict(edited).verify(out)
        path.write_text(json.dumps(edited))
        assert main(["verify", str(path), str(folder / "model.pt")]) == 1
        assert "bad signature" in capsys.readouterr().err
    # another key
    with pytest.raises(C.CertificateError, match="not by the given public key"):
        signed.verify(out, public_key=str(other) + ".pub")
    # a forged signature value
    forged = dict(data, signature=dict(data["signature"], value="00" * 64))
    with pytest.raises(C.CertificateError, match="bad signature"):
        C.RunCertificate.from_dict(forged).verify()
    # re-signed by another key after an edit: the embedded key changes, --public-key catches it
    resigned = C.RunCertificate.from_dict(dict(data, retain_size=25)).sign(str(other))
    resigned.verify(out)
    with pytest.raises(C.CertificateError, match="not by the given public key"):
        resigned.verify(out, public_key=str(key) + ".pub")


def test_unsigned_certificates(keys, pair, tmp_path, capsys):
    key, _ = keys
    folder, out, cert = pair
    assert cert.verify(out).signature == "unsigned"
    with pytest.raises(C.CertificateError, match="unsigned, but a public key was given"):
        cert.verify(out, public_key=str(key) + ".pub")
    path = tmp_path / "certificate.json"
    cert.save(str(path))
    assert main(["verify", str(path), str(folder / "model.pt")]) == 0
    assert "signature: unsigned" in capsys.readouterr().out
    assert main(["verify", str(path), str(folder / "model.pt"), "--public-key",
                 str(key) + ".pub"]) == 1
    assert "unsigned" in capsys.readouterr().err


@pytest.mark.parametrize("signature, message", [
    ({"algorithm": "rsa", "public_key": "00", "value": "00"}, "signature must be null or"),
    ("abc", "signature must be null or"),
    ({"algorithm": "ed25519", "public_key": "zz", "value": "00"}, "not valid hex"),
])
def test_malformed_signature_field(pair, signature, message):
    _, out, cert = pair
    with pytest.raises(C.CertificateError, match=message):
        C.RunCertificate.from_dict(dict(cert.to_dict(), signature=signature)).verify(out)


def test_bad_key_files(tmp_path, pair):
    _, _, cert = pair
    junk = tmp_path / "junk.key"
    junk.write_bytes(os.urandom(64))
    with pytest.raises(S.SigningError, match="not an unencrypted PEM private key"):
        cert.sign(str(junk))
    with pytest.raises(S.SigningError, match="does not exist"):
        cert.sign(str(tmp_path / "none.key"))
    with pytest.raises(S.SigningError, match="not a PEM public key"):
        S.load_public_key(str(junk))


def test_unlearn_cli_signs_with_flag_and_config_key(keys, tmp_path, capsys):
    key, _ = keys
    model = tmp_path / "original.pt"
    assert main(["train", "--out", str(model), "--epochs", "1", "--hidden", "8", "--seed", "0",
                 "--no-progress"]) == 0
    base = {"model_file": str(model), "forget_fraction": 0.1, "C0": 0.01, "C1": 0.02,
            "lr": 0.05, "steps": 10}
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps(dict(base, out=str(tmp_path / "r1"))))
    assert main(["unlearn", "--config", str(cfg), "--no-progress", "--sign-key", str(key)]) == 0
    cfg.write_text(json.dumps(dict(base, out=str(tmp_path / "r2"), sign_key=str(key))))
    assert main(["unlearn", "--config", str(cfg), "--no-progress"]) == 0
    capsys.readouterr()
    for run in ("r1", "r2"):
        assert json.loads((tmp_path / run / "certificate.json").read_text())["signature"]
        assert main(["verify", str(tmp_path / run / "certificate.json"),
                     str(tmp_path / run / "model.pt"), "--public-key", str(key) + ".pub"]) == 0
    # a bad key fails before any work, leaving no run folder
    junk = tmp_path / "junk.key"
    junk.write_text("not a key")
    cfg.write_text(json.dumps(dict(base, out=str(tmp_path / "r3"))))
    assert main(["unlearn", "--config", str(cfg), "--no-progress", "--sign-key", str(junk)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not an unencrypted PEM private key" in err
    assert not (tmp_path / "r3").exists()
