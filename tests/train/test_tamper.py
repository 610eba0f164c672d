"""Certificates edited to claim more than the run proves, each one consistent with itself (the
accountant record re-issued for the edit), are refused by the Python API and by the CLI.

Cases: a smaller parameter count ``d`` and batch size (a smaller float32 slack, a smaller eps);
the float32 fields deleted and the eps re-derived without them; a forged retrain; an unsigned
chain link edited to connect; a signature by an unknown key; a chain that mixes signed and
unsigned links."""
import copy
import json

import pytest

import certunlearn_theory as ct
from certunlearn_train import certificates as C
from certunlearn_train.cli import EXIT_FAILED, EXIT_NOT_VERIFIABLE, EXIT_OK, main
from certunlearn_train.model_files import load_model


def _reissue(data, **params):
    """``data`` (a gradient-clipping certificate dict) with ``params`` changed or deleted
    (None), the float32 slack recomputed for them when its fields remain, the eps re-derived at
    the same sigma and delta, and the accountant record re-issued: consistent in itself."""
    data = copy.deepcopy(data)
    p = data["parameters"]
    for key, value in params.items():
        if value is None:
            p.pop(key, None)
        else:
            p[key] = value
    sigma, delta = data["sigma"], data["delta"]
    if "shift_slack" in p:
        acct_delta, tail = C.split_tail_delta(delta)
        eps = data["eps"]
        for _ in range(20):  # a slack computed at an eps at least the one it gives
            slack = C.float32_shift_slack(sigma=sigma, T=p["T"], d=p["d"], C0=p["C0"],
                                          C1=p["C1"], gamma=p["gamma"], lam=p["lam"], eps=eps,
                                          delta_tail=tail, batch_size=p["batch_size"])
            new = float(ct.epsilon_for(sigma, acct_delta, p["T"], p["C0"], p["C1"], p["gamma"],
                                       p["lam"], shift_slack=slack))
            done = new <= eps
            eps = new
            if done:
                break
        p["shift_slack"] = slack
    else:
        acct_delta, slack = delta, 0.0
        eps = float(ct.epsilon_for(sigma, delta, p["T"], p["C0"], p["C1"], p["gamma"], p["lam"]))
    fresh = ct.issue_certificate(sigma, acct_delta, p["T"], p["C0"], p["C1"], p["gamma"],
                                 p["lam"], sigma0=p["sigma0"], eps=eps, shift_slack=slack)
    data["eps"] = float(fresh.eps)
    data["accountant"] = fresh.to_dict()
    if "float32_tail_delta" in p:
        data["delta"] = C.run_delta(float(fresh.delta), p["float32_tail_delta"])
    return data


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tamper")
    original = folder / "original.pt"
    assert main(["train", "--out", str(original), "--epochs", "2", "--hidden", "16",
                 "--seed", "0", "--no-progress"]) == 0
    cfg = {"model_file": str(original), "out": str(folder / "run"), "forget_fraction": 0.1,
           "C0": 0.01, "C1": 0.002, "lr": 0.05, "steps": 10, "finetune_epochs": 1, "seed": 5}
    (folder / "config.json").write_text(json.dumps(cfg))
    assert main(["unlearn", "--config", str(folder / "config.json"), "--no-progress"]) == 0
    cert = C.RunCertificate.load(str(folder / "run" / "certificate.json"))
    model, _ = load_model(str(folder / "run" / "model.pt"))
    return folder, cert, model


def _cli(folder, data, capsys, *extra):
    path = folder / "forged.json"
    path.write_text(json.dumps(data))
    code = main(["verify", str(path), str(folder / "run" / "model.pt"), *extra])
    return code, capsys.readouterr()


def test_the_untouched_run_verifies_with_its_parameter_count(run, capsys):
    folder, cert, model = run
    assert cert.parameters["d"] == sum(p.numel() for p in model.parameters())
    cert.verify(model)
    code, out = _cli(folder, cert.to_dict(), capsys)
    assert code == EXIT_OK, out.err
    assert "parameters.d" not in out.out  # counted from the model file's architecture


def test_a_smaller_d_and_batch_size_reissued_consistently_is_refused(run, capsys):
    folder, cert, model = run
    forged = _reissue(cert.to_dict(), d=1, batch_size=1)
    assert forged["eps"] < cert.eps  # the forgery claims a stronger guarantee
    with pytest.raises(C.CertificateError, match="parameters.d = 1 is not the model's number"):
        C.RunCertificate.from_dict(forged).verify(model)
    code, out = _cli(folder, forged, capsys)
    assert code == EXIT_FAILED and "parameters.d = 1 is not the model's number" in out.err
    # weights alone cannot tell: the count is then listed as not checked, never passed over
    report = C.RunCertificate.from_dict(forged).verify(model.state_dict())
    assert "parameters.d" in report.not_checked_fields()


def test_a_smaller_batch_size_is_declared_loudly(run):
    _, cert, model = run
    forged = C.RunCertificate.from_dict(_reissue(cert.to_dict(), batch_size=1))
    report = forged.verify(model)  # no certificate can show the batch size actually used
    reason = dict(report.not_checked)["parameters.batch_size"]
    assert "understate the slack" in reason and "only a signature protects it" in reason


@pytest.mark.parametrize("deleted", [("shift_slack", "float32_tail_delta", "d"),
                                     ("shift_slack",), ("d",), ("float32_tail_delta",)])
def test_float32_fields_deleted_and_eps_rederived_are_refused(run, capsys, deleted):
    folder, cert, model = run
    data = cert.to_dict()
    if len(deleted) == 3:
        forged = _reissue(data, **{k: None for k in deleted})
        assert forged["eps"] < cert.eps
    else:
        forged = copy.deepcopy(data)
        for key in deleted:
            del forged["parameters"][key]
    with pytest.raises(C.CertificateError, match="lack|go together|does not match"):
        C.RunCertificate.from_dict(forged).verify(model)
    code, out = _cli(folder, forged, capsys)
    assert code == EXIT_FAILED, out


def test_a_forged_retrain_raises_in_python_as_the_cli_exits_3(run, capsys):
    folder, cert, model = run
    forged = dict(cert.to_dict(), method="retrain", eps=0.0, delta=0.0, accountant=None,
                  sigma=None, parameters={"epochs": 1.0, "gamma": 0.1, "batch_size": 8})
    with pytest.raises(C.NotVerifiableError, match="NOT VERIFIABLE"):
        C.RunCertificate.from_dict(forged).verify(model)
    code, out = _cli(folder, forged, capsys)
    assert code == EXIT_NOT_VERIFIABLE and "NOT VERIFIABLE" in out.out


def test_a_signature_without_a_key_names_an_unknown_signer(run, tmp_path, capsys):
    folder, cert, model = run
    key = tmp_path / "k.key"
    assert main(["keygen", "--out", str(key)]) == 0
    capsys.readouterr()
    signed = cert.sign(str(key))
    code, out = _cli(folder, signed.to_dict(), capsys)
    assert code == EXIT_OK
    line = next(s for s in out.out.splitlines() if "signature:" in s)
    assert "unknown key" in line and "valid" not in line
    code, out = _cli(folder, signed.to_dict(), capsys, "--public-key", str(key) + ".pub")
    assert code == EXIT_OK and "valid, by the given key" in out.out


@pytest.fixture(scope="module")
def requests():
    """Request 1 served through a ledger, and request 2 run from the *original* model (not
    request 1's output) with its starting hash edited to connect: a forged link."""
    from certunlearn_train.ledger import Ledger
    from certunlearn_train.unlearn import unlearn

    from .helpers import tiny_problem
    model, x, y = tiny_problem(n=30)
    kw = dict(eps=1.0, delta=1e-5, C0=0.5, C1=0.05, lr=0.1, steps=5, batch_size=8,
              progress=False)
    ledger = Ledger.new(30)
    r1 = ledger.request([0, 1, 2])
    out1, c1 = unlearn(model, (x[r1.retain_indices], y[r1.retain_indices]), forget_size=3, **kw)
    c1 = r1.bind(c1)
    r2 = ledger.commit(r1, c1).request([3, 4, 5])
    out2, c2 = unlearn(model, (x[r2.retain_indices], y[r2.retain_indices]), forget_size=3, **kw)
    forged = C.RunCertificate.from_dict(dict(r2.bind(c2).to_dict(),
                                             model_sha256_before=c1.model_sha256_after))
    return c1, forged, out2


def test_an_edited_unsigned_link_is_reported_unauthenticated(requests, tmp_path, capsys):
    first, second, out2 = requests
    c1, c2, m = tmp_path / "c1.json", tmp_path / "c2.json", tmp_path / "m.pt"
    c1.write_text(first.to_json())
    c2.write_text(second.to_json())
    C.save_model_file(str(m), out2)
    code = main(["verify", "--chain", str(c1), str(c2), str(m)])
    out = capsys.readouterr().out
    assert code == EXIT_OK and "the links are unauthenticated" in out


def test_a_chain_mixing_signed_and_unsigned_links_is_refused(requests, tmp_path):
    first, second, out2 = requests
    key = tmp_path / "k.key"
    assert main(["keygen", "--out", str(key)]) == 0
    with pytest.raises(C.CertificateError, match="mixes signed and unsigned"):
        C.verify_chain([first.sign(str(key)), second], out2)
    both = [first.sign(str(key)), second.sign(str(key))]
    C.verify_chain(both, out2, public_key=str(key) + ".pub")
    assert C.chain_links_authenticated(both)
