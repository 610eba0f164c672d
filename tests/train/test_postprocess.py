"""The user's own post-processing (THEORY.md section 10.5): the loop of docs/training.md, run as
written, then its record verified in Python and by the CLI, and every binding tampered with."""
import dataclasses
import os
import re

import pytest
import torch

from certunlearn_train import certificates as C
from certunlearn_train.certificates.postprocess import (
    PostprocessRecord,
    record_postprocess,
    verify_postprocess,
)
from certunlearn_train.cli import main

from .resnet import ResNet18

DOCS = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "training.md")


def _docs_loop() -> str:
    text = open(DOCS, encoding="utf-8").read()
    m = re.search(r"<!-- tested: tests/train/test_postprocess.py -->\n```python\n(.*?)```",
                  text, re.S)
    assert m, "the tested block of docs/training.md is missing"
    return m.group(1)


@pytest.fixture(scope="module")
def docs_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("post")
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model = ResNet18(num_classes=3, width=4).eval()  # public and private BatchNorm
    x_retain = torch.randn(16, 3, 16, 16, generator=g)
    y_retain = torch.randint(0, 3, (16,), generator=g)
    scope = dict(model=model, x_retain=x_retain, y_retain=y_retain)
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        exec(compile(_docs_loop(), "docs/training.md", "exec"), scope)
    finally:
        os.chdir(cwd)
    return folder, scope


def test_the_documented_loop_fine_tunes_and_records(docs_run):
    folder, scope = docs_run
    noisy, final, cert = scope["noisy"], scope["final"], scope["cert"]
    assert C.weights_sha256(noisy) == cert.model_sha256_after
    assert C.weights_sha256(final) != cert.model_sha256_after  # it did train
    assert scope["sched"].last_epoch == 3 * len(scope["loader"])  # the scheduler ran
    record = PostprocessRecord.load(str(folder / "postprocess.json"))
    assert record.model_sha256 == C.weights_sha256(final)
    assert (record.eps, record.delta) == (cert.eps, cert.delta)
    report = verify_postprocess(record, cert, model=final, noisy_model=noisy)
    assert report.model_checked and report.noisy_model_checked
    assert {"assumption", "description"} <= set(report.not_checked_fields())
    report = verify_postprocess(record, cert)
    assert {"model_sha256", "noisy_model_sha256"} <= set(report.not_checked_fields())


def test_every_binding_is_checked(docs_run):
    folder, scope = docs_run
    noisy, final, cert = scope["noisy"], scope["final"], scope["cert"]
    record = PostprocessRecord.load(str(folder / "postprocess.json"))
    with pytest.raises(C.CertificateError, match="do not match the post-processing record"):
        verify_postprocess(record, cert, model=noisy)
    with pytest.raises(C.CertificateError, match="model weights do not match"):
        verify_postprocess(record, cert, noisy_model=final)
    with pytest.raises(C.CertificateError, match="another certificate"):
        verify_postprocess(record, dataclasses.replace(cert, forget_size=5), model=final)
    for field, value, message in (("eps", record.eps / 2, "unchanged"),
                                  ("noisy_model_sha256", "0" * 64, "model_sha256_after"),
                                  ("assumption", "anything", "assumption must be"),
                                  ("model_sha256", "x", "64 lowercase hex")):
        bad = dataclasses.replace(record, **{field: value})
        with pytest.raises(C.CertificateError, match=message):
            verify_postprocess(bad, cert, model=final)
    with pytest.raises(C.CertificateError, match="noisy_model does not match"):
        record_postprocess(cert, final, noisy_model=final)
    with pytest.raises(C.CertificateError, match="unknown field"):
        PostprocessRecord.from_dict(dict(record.to_dict(), extra=1))


def test_cli_verifies_the_three_files_and_keeps_the_old_usage(docs_run, capsys):
    folder, scope = docs_run
    cert, post, model = (str(folder / n) for n in ("certificate.json", "postprocess.json",
                                                   "model.pt"))
    assert main(["verify", cert, post, model]) == 0
    out = capsys.readouterr().out
    assert "carried unchanged through post-processing" in out
    assert "not checked: assumption" in out
    noisy = str(folder / "noisy.pt")
    C.save_model_file(noisy, scope["noisy"])
    assert main(["verify", cert, noisy]) == 0  # CERT MODEL as before
    capsys.readouterr()
    assert main(["verify", cert, post, noisy]) == 1  # the noisy model is not the final one
    assert "do not match the post-processing record" in capsys.readouterr().err
