"""Sequential requests that really forget: the ledger of forgotten points.

Request k's retain set is the training set less every forget set so far; its certificate binds
the ledger entry, and ``verify --chain`` refuses a chain whose retain sets are not accounted
for. Served the natural way from the command line (request 2 from request 1's model file), the
second forget set is drawn among the points not forgotten yet."""
import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from certunlearn_train import certificates as C
from certunlearn_train.cli import main
from certunlearn_train.ledger import Ledger, LedgerError
from certunlearn_train.model_files import load_model_file, model_file_bytes

from ..hypothesis_budget import examples


def _config(folder, model_file, out, **over):
    cfg = {"model_file": str(model_file), "out": str(out), "forget_fraction": 0.1,
           "forget_seed": 0, "C0": 0.01, "C1": 0.02, "lr": 0.05, "steps": 10,
           "finetune_epochs": 1, "seed": 5}
    cfg.update(over)
    cfg = {k: v for k, v in cfg.items() if v is not None}
    path = folder / f"{out.name}.json"
    path.write_text(json.dumps(cfg))
    return path


@pytest.fixture(scope="module")
def requests(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ledger")
    assert main(["train", "--out", str(folder / "orig.pt"), "--epochs", "2", "--hidden", "16",
                 "--seed", "0", "--no-progress"]) == 0
    assert main(["unlearn", "--config", str(_config(folder, folder / "orig.pt",
                                                    folder / "run1")), "--no-progress"]) == 0
    # the natural second request: from run 1's model, with another seed
    assert main(["unlearn", "--config", str(_config(folder, folder / "run1" / "model.pt",
                                                    folder / "run2", forget_seed=1)),
                 "--no-progress"]) == 0
    return folder


def test_the_second_request_excludes_the_first_ones_points(requests):
    folder = requests
    ledger = Ledger.load(str(folder / "run2" / "ledger.json"))
    first, second = (set(r["forget_indices"]) for r in ledger.requests)
    assert len(first) == 144 and len(second) == 129 and not first & second
    c1 = C.RunCertificate.load(str(folder / "run1" / "certificate.json"))
    c2 = C.RunCertificate.load(str(folder / "run2" / "certificate.json"))
    assert c1.retain_size == 1438 - 144 and c2.retain_size == 1438 - 144 - 129
    assert c2.ledger["forgotten_before"] == 144 and c2.ledger["request"] == 2
    assert c2.ledger["sha256_before"] == C.entry_hash(c1.ledger)
    assert c2.ledger["forget_sha256"] == C.indices_sha256(second)


def test_verify_chain_checks_the_ledger(requests, capsys):
    folder = requests
    certs = [str(folder / f"run{k}" / "certificate.json") for k in (1, 2)]
    model = str(folder / "run2" / "model.pt")
    assert main(["verify", "--chain", *certs, model]) == 0
    assert "less every forget set so far (ledger entries 1 to 2" in capsys.readouterr().out
    assert main(["verify", "--chain", *certs, model,
                 "--ledger", str(folder / "run2" / "ledger.json")]) == 0
    capsys.readouterr()
    assert main(["verify", "--chain", *certs, model,
                 "--ledger", str(folder / "run1" / "ledger.json")]) == 1
    assert "not in the ledger" in capsys.readouterr().err


def test_a_chain_whose_retain_set_is_not_accounted_for_is_refused(requests, tmp_path, capsys):
    folder = requests
    c1 = C.RunCertificate.load(str(folder / "run1" / "certificate.json"))
    c2 = C.RunCertificate.load(str(folder / "run2" / "certificate.json"))
    # request 2 as if served on the full training set less its own points only (what the
    # command did before the ledger): consistent sizes, but 144 forgotten points trained on
    data = c2.to_dict()
    data["ledger"] = dict(data["ledger"], request=1, forgotten_before=0,
                          sha256_before=C.GENESIS)
    data["retain_size"] = 1438 - 129
    lone = C.RunCertificate.from_dict(data)
    lone.verify()  # on its own it is a consistent first request
    with pytest.raises(C.CertificateError, match="does not follow request 1"):
        C.verify_chain([c1, lone])
    data["ledger"]["request"] = 2
    with pytest.raises(C.CertificateError, match="first request"):
        C.RunCertificate.from_dict(data).verify()
    # a certificate without a ledger entry cannot be part of a chain
    bare = C.RunCertificate.from_dict({k: v for k, v in c2.to_dict().items() if k != "ledger"})
    with pytest.raises(C.CertificateError, match="no ledger entry, so its retain set is not "
                                                 "accounted for"):
        C.verify_chain([c1, bare])
    # an entry edited so that it no longer hashes to the previous state
    data = c2.to_dict()
    data["ledger"]["sha256_before"] = "f" * 64
    with pytest.raises(C.CertificateError, match="another ledger state"):
        C.verify_chain([c1, C.RunCertificate.from_dict(data)])


def test_a_retain_size_that_the_entry_does_not_account_for_is_refused(requests):
    c2 = C.RunCertificate.load(str(requests / "run2" / "certificate.json"))
    data = c2.to_dict()
    data["retain_size"] += 144
    with pytest.raises(C.CertificateError, match="less every forget set so far"):
        C.RunCertificate.from_dict(data).verify()


def test_the_ledger_must_come_with_the_model(requests, tmp_path, capsys):
    folder = requests
    # the model file alone, without the ledger beside it
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "model.pt").write_bytes((folder / "run1" / "model.pt").read_bytes())
    cfg = _config(tmp_path, alone / "model.pt", tmp_path / "next", forget_seed=1)
    assert main(["unlearn", "--config", str(cfg), "--no-progress"]) == 1
    assert "ledger" in capsys.readouterr().err
    # a model written by an unlearning run that kept no ledger (before ledgers existed)
    state, arch = load_model_file(str(folder / "run1" / "model.pt"))
    old = {k: v for k, v in arch.items() if k != "ledger"}
    legacy = tmp_path / "legacy"
    legacy.mkdir()

    class Holder(torch.nn.Module):
        def state_dict(self, *a, **k):
            return state
    (legacy / "model.pt").write_bytes(model_file_bytes(Holder(), old))
    cfg = _config(tmp_path, legacy / "model.pt", tmp_path / "next2")
    assert main(["unlearn", "--config", str(cfg), "--no-progress"]) == 1
    assert "kept no ledger" in capsys.readouterr().err


def test_a_point_forgotten_before_cannot_be_forgotten_again(requests, tmp_path, capsys):
    folder = requests
    ledger = Ledger.load(str(folder / "run2" / "ledger.json"))
    again = ledger.requests[0]["forget_indices"][:3]
    idx = tmp_path / "again.txt"
    idx.write_text("\n".join(map(str, again)) + "\n")
    cfg = _config(tmp_path, folder / "run2" / "model.pt", tmp_path / "run3",
                  forget_fraction=None, forget_seed=None, forget_indices_file=str(idx))
    assert main(["unlearn", "--config", str(cfg), "--no-progress"]) == 2
    assert f"point {again[0]} was already forgotten by request 1" in capsys.readouterr().err


def test_an_edited_ledger_file_is_refused(requests, tmp_path, capsys):
    folder = requests
    data = json.loads((folder / "run2" / "ledger.json").read_text())
    data["requests"][0]["forget_indices"][0] += 1  # no longer the hashed set
    (tmp_path / "ledger.json").write_text(json.dumps(data))
    with pytest.raises(LedgerError, match="request 1: its entry does not match"):
        Ledger.load(str(tmp_path / "ledger.json"))


def test_the_demo_model_can_serve_the_next_request(tmp_path, capsys):
    from certunlearn_train.demo import run_demo
    run_demo(str(tmp_path / "demo"), quick=True, seed=0, progress=False, echo=lambda *a: None)
    assert (tmp_path / "demo" / "ledger.json").exists()
    cfg = _config(tmp_path, tmp_path / "demo" / "model.pt", tmp_path / "next", forget_seed=1)
    assert main(["unlearn", "--config", str(cfg), "--no-progress"]) == 0
    assert "request 2:" in capsys.readouterr().out


@settings(max_examples=examples(40), deadline=None)
@given(st.integers(10, 200), st.lists(st.integers(1, 5), min_size=1, max_size=6),
       st.integers(0, 2 ** 32 - 1))
def test_requests_partition_the_training_set(n, sizes, seed):
    rng = np.random.default_rng(seed)
    ledger = Ledger.new(n)
    seen = set()
    for size in sizes:
        remaining = ledger.remaining()
        if size >= len(remaining):
            break
        pick = rng.choice(remaining, size=size, replace=False)
        request = ledger.request(pick)
        assert set(request.retain_indices) == set(range(n)) - seen - set(pick.tolist())
        cert = _fake_cert(n - len(seen) - size, size)
        bound = request.bind(cert)
        ledger = ledger.commit(request, bound)
        seen |= set(pick.tolist())
        assert set(ledger.forgotten().tolist()) == seen
    again = Ledger.from_dict(json.loads(ledger.to_bytes()))
    assert again == ledger and again.head() == ledger.head()


def _fake_cert(retain, forget):
    return C.build_run_certificate(
        method="retrain", sigma=None, eps=0.0, delta=0.0,
        parameters={"epochs": 1.0, "gamma": 0.1, "batch_size": 8}, retain_size=retain,
        forget_size=forget, sha_before="a" * 64, sha_after="b" * 64, seed_user_supplied=False)


def test_bind_refuses_other_sizes_and_signed_certificates(tmp_path):
    ledger = Ledger.new(20)
    request = ledger.request([1, 2])
    with pytest.raises(LedgerError, match="are not this request's"):
        request.bind(_fake_cert(20, 2))
    key = tmp_path / "k"
    from certunlearn_train.signing import generate_key_files
    generate_key_files(str(key))
    with pytest.raises(LedgerError, match="before signing"):
        request.bind(_fake_cert(18, 2).sign(str(key)))
    with pytest.raises(LedgerError, match="outside the training set"):
        ledger.request([20])
    with pytest.raises(LedgerError, match="repeat"):
        ledger.request([1, 1])
