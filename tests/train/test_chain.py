"""Sequential requests: run 2 unlearns from run 1's output; `verify --chain` checks each certificate,
the links (before-hash of k+1 = after-hash of k) and the final model."""
import pytest

from certunlearn_train import certificates as C
from certunlearn_train.cli import main
from certunlearn_train.ledger import Ledger
from certunlearn_train.unlearn import unlearn

from .helpers import tiny_problem


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """Two requests served through a ledger (request 2 forgets points 3-5 of what request 1
    left), and a run of request 2 that did not start from request 1's output."""
    model, x, y = tiny_problem(n=30)
    kw = dict(eps=1.0, delta=1e-5, C0=0.5, C1=0.05, lr=0.1, steps=5, batch_size=8,
              progress=False)
    ledger = Ledger.new(30)
    r1 = ledger.request([0, 1, 2])
    keep1 = r1.retain_indices
    out1, c1 = unlearn(model, (x[keep1], y[keep1]), forget_size=r1.forget_size, **kw)
    c1 = r1.bind(c1)
    ledger = ledger.commit(r1, c1)
    r2 = ledger.request([3, 4, 5])
    keep2 = r2.retain_indices
    assert list(keep2) == list(range(6, 30))
    out2, c2 = unlearn(out1, (x[keep2], y[keep2]), forget_size=r2.forget_size, **kw)
    c2 = r2.bind(c2)
    # a run that did not start from out1
    out3, c3 = unlearn(model, (x[keep2], y[keep2]), forget_size=r2.forget_size, **kw)
    c3 = r2.bind(c3)
    folder = tmp_path_factory.mktemp("chain")
    for name, cert, out in (("1", c1, out1), ("2", c2, out2), ("3", c3, out3)):
        cert.save(str(folder / f"c{name}.json"))
        C.save_model_file(str(folder / f"m{name}.pt"), out)
    return folder, (c1, c2, c3), (out1, out2, out3)


def _run(folder, *names):
    return main(["verify", "--chain", *[str(folder / n) for n in names]])


def test_chain_verifies(chain, capsys):
    folder, (c1, c2, _), (out1, out2, _) = chain
    assert c2.model_sha256_before == c1.model_sha256_after
    assert _run(folder, "c1.json", "c2.json", "m2.pt") == 0
    out = capsys.readouterr().out
    assert "certificate 1: gradient_clipping, (1, 1e-05)-unlearning recomputed" in out
    assert "chain: 2 certificates" in out
    reports = C.verify_chain([c1, c2], out2)
    assert len(reports) == 2 and reports[-1].model_checked and not reports[0].model_checked
    # a chain of one is a plain verify
    assert _run(folder, "c1.json", "m1.pt") == 0


@pytest.mark.parametrize("names, message", [
    (("c2.json", "c1.json", "m1.pt"), "broken chain: certificate 2 starts from"),
    (("c1.json", "c3.json", "m3.pt"), "broken chain: certificate 2 starts from"),
    (("c1.json", "c2.json", "m1.pt"), "certificate 2 of the chain: model weights do not match"),
    (("c1.json", "c2.json", "m3.pt"), "model weights do not match"),
])
def test_broken_chains_fail(chain, capsys, names, message):
    folder = chain[0]
    assert _run(folder, *names) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("certunlearn verify: FAILED:")
    assert message in err, err


def test_an_edited_certificate_in_the_chain_fails(chain, tmp_path, capsys):
    folder, (c1, c2, _), _ = chain
    data = c1.to_dict()
    data["parameters"]["C0"] = 0.25
    (tmp_path / "c1.json").write_text(C.RunCertificate.from_dict(data).to_json())
    assert main(["verify", "--chain", str(tmp_path / "c1.json"), str(folder / "c2.json"),
                 str(folder / "m2.pt")]) == 1
    assert "certificate 1 of the chain" in capsys.readouterr().err


def test_chain_needs_a_model(chain, capsys):
    folder = chain[0]
    assert main(["verify", "--chain", str(folder / "c1.json")]) == 2
    assert "--chain needs at least one certificate" in capsys.readouterr().err
