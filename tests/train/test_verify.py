"""RunCertificate.verify: every field of a real certificate is either checked or declared unchecked.

Certificates come from tiny real runs (unlearn with gradient and model clipping, output
perturbation, DP-SGD, retraining). For each top-level field of the format (so a field added
without a rule fails here) and each value inside it, two edits are made: a change of value and a
change of type. Each edit must be refused by ``verify`` or listed by it as not checked.
"""
import copy
import dataclasses
import json

import pytest
import torch

from certunlearn_train import baselines as B
from certunlearn_train import certificates as C
from certunlearn_train.ledger import Ledger
from certunlearn_train.unlearn import unlearn

from .helpers import tiny_problem
from .resnet import pretrained_resnet18

FIELDS = C.RunCertificate.json_fields()


@pytest.fixture(scope="module")
def runs():
    model, x, y = tiny_problem()
    out = {}
    first = next(iter(model.state_dict()))  # a public (frozen) parameter, recorded by hash
    m, c = unlearn(model, (x, y), eps=1.0, delta=1e-5, C0=0.5, C1=0.05, lr=0.1, steps=6,
                   batch_size=8, finetune_epochs=1, forget_size=3, seed=11, progress=False,
                   private=lambda name, p: name != first)
    assert c.public_parameters["names"] == [first]
    c = Ledger.new(27).request([24, 25, 26]).bind(c)  # a ledger entry: 24 retained, 3 forgotten
    out["gradient_clipping"] = (c, m)
    out["model_clipping"] = unlearn(model, (x, y), eps=1.0, delta=1e-5, method="model_clipping",
                                    C0=0.5, C2=1.0, lam=0.1, lr=0.1, steps=4, batch_size=8,
                                    forget_size=3, progress=False)[::-1]
    out["output_perturbation"] = B.output_perturbation(
        model, (x, y), eps=1.0, delta=1e-5, C0=0.5, forget_size=3, progress=False)[::-1]
    net, bx, by = pretrained_resnet18(width=4)  # public and private BatchNorm buffers
    out["batchnorm"] = unlearn(net, (bx, by), eps=1.0, delta=1e-5, C0=0.5, C1=0.05, lr=0.1,
                               steps=2, batch_size=4, forget_size=3, progress=False,
                               private=[net.layer4[1], net.fc])[::-1]
    assert set(out["batchnorm"][0].buffers) == {"public", "private"}
    out["retrain"] = B.retrain(model, (x, y), epochs=1, lr=0.1, forget_size=3,
                               progress=False)[::-1]
    out["dpsgd_group"] = B.dpsgd_train(model, (x, y), eps=8.0, delta=1e-5, group_size=2,
                                       epochs=1, lr=0.1, clip=1.0, expected_batch_size=12,
                                       progress=False)[::-1]
    return out


def _leaves(value, path):
    """(path, value) of every scalar inside ``value``; lists: first and last element only."""
    if isinstance(value, dict) and value:
        for key in value:
            yield from _leaves(value[key], path + (key,))
    elif isinstance(value, list) and value:
        idx = sorted({0, len(value) - 1})
        for i in idx:
            yield from _leaves(value[i], path + (i,))
    else:
        yield path, value


def _edits(value):
    """A change of value and a change of type."""
    if isinstance(value, bool):
        yield not value
        yield int(value)
    elif isinstance(value, int):
        yield value + 1
        yield str(value)
    elif isinstance(value, float):
        yield value * 1.5 + 0.25 if value >= 0 else value * 0.5
        yield [value]
    elif isinstance(value, str):
        last = value[-1:] or "x"
        hexd = "0123456789abcdef"
        swap = hexd[(hexd.index(last) + 1) % 16] if last in hexd else chr(ord(last) ^ 1)
        yield value[:-1] + swap
        yield 7
    elif value is None:
        yield 1
        yield "x"
    else:  # empty container
        yield None
        yield {"junk": 1} if isinstance(value, list) else ["junk"]


def _set(data, path, value):
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


def _outcome(data, model):
    """None when refused, else the report's unchecked field names."""
    try:
        return C.RunCertificate.from_dict(data).verify(
            model, allow_unverifiable=True).not_checked_fields()
    except C.CertificateError:
        return None


@pytest.mark.parametrize("kind", ["gradient_clipping", "model_clipping", "output_perturbation",
                                  "retrain", "dpsgd_group", "batchnorm"])
@pytest.mark.parametrize("field", FIELDS)
def test_every_edit_is_refused_or_declared(runs, kind, field):
    cert, model = runs[kind]
    base = cert.to_dict()
    if field in C.OPTIONAL_FIELDS and field not in base:
        assert any(field in c.to_dict() for c, _ in runs.values())  # exercised by another run
        return
    assert field in base
    assert _outcome(copy.deepcopy(base), model) is not None  # the untouched certificate passes
    silent = []
    for path, value in _leaves(base[field], (field,)):
        for new in _edits(value):
            data = copy.deepcopy(base)
            _set(data, path, new)
            unchecked = _outcome(data, model)
            if unchecked is None:
                continue
            dotted = [".".join(map(str, path[:i])) for i in range(1, len(path) + 1)]
            if not any(d in unchecked for d in dotted):
                silent.append(f"{'.'.join(map(str, path))} = {new!r}")
    assert not silent, f"edits neither refused nor listed as not checked: {silent}"


@pytest.mark.parametrize("kind", ["gradient_clipping", "retrain"])
def test_missing_and_unknown_fields_are_refused(runs, kind):
    cert, _ = runs[kind]
    for field in FIELDS:
        data = cert.to_dict()
        if field in C.OPTIONAL_FIELDS:  # may be left out: then None
            data.pop(field, None)
            assert getattr(C.RunCertificate.from_dict(data), field) is None
            continue
        del data[field]
        with pytest.raises(C.CertificateError, match=f"missing field.*{field}|format None"):
            C.RunCertificate.from_dict(data)
    with pytest.raises(C.CertificateError, match="unknown certificate field.*extra"):
        C.RunCertificate.from_dict(dict(cert.to_dict(), extra=1))
    data = cert.to_dict()
    data["parameters"]["momentum"] = 0.9
    with pytest.raises(C.CertificateError, match="momentum"):
        C.RunCertificate.from_dict(data).verify()


def test_parameters_that_do_not_change_the_bound_must_still_match(runs):
    """T past the horizon and lam do not change a gradient-clipping bound here; an edit of the
    run's copy alone is still refused because it differs from the accountant record."""
    cert, model = runs["gradient_clipping"]
    for key, value in (("T", 7), ("gamma", 0.1000001), ("sigma0", 0.0)):
        data = cert.to_dict()
        if data["parameters"][key] == value:
            continue
        data["parameters"][key] = value
        with pytest.raises(C.CertificateError, match="accountant"):
            C.RunCertificate.from_dict(data).verify(model)


def test_what_verify_declares_unchecked(runs):
    cert, model = runs["gradient_clipping"]
    report = cert.verify(model)
    assert report.guarantee_recomputed and report.model_checked and report.signature == "unsigned"
    unchecked = report.not_checked_fields()
    for name in ("retain_size", "forget_size", "model_sha256_before", "created_utc",
                 "noise_seed_user_supplied", "parameters.batch_size", "parameters.clip",
                 "parameters.finetune_epochs", "parameters.finetune_lr", "signature"):
        assert name in unchecked
    for name in ("eps", "delta", "sigma", "parameters.T", "parameters.C0", "parameters.C1",
                 "parameters.gamma", "model_sha256_after", "accountant"):
        assert name not in unchecked
    without_model = cert.verify().not_checked_fields()
    assert "model_sha256_after" in without_model and "public_parameters" in without_model


def test_retrain_is_never_reported_as_recomputed(runs):
    cert, model = runs["retrain"]
    # the Python API refuses what the CLI refuses (exit 3): every check ran, then it raises
    with pytest.raises(C.NotVerifiableError, match="NOT VERIFIABLE: retrain claims exact") as exc:
        cert.verify(model)
    assert [r.model_checked for r in exc.value.reports] == [True]
    report = cert.verify(model, allow_unverifiable=True)
    assert not report.guarantee_recomputed and report.model_checked
    assert "method" in report.not_checked_fields()
    data = cert.to_dict()
    data.update(eps=0.5)
    with pytest.raises(C.CertificateError, match="exact unlearning"):
        C.RunCertificate.from_dict(data).verify()


def test_public_parameters_hash_is_recomputed_from_the_model(runs):
    cert, model = runs["gradient_clipping"]
    name = cert.public_parameters["names"][0]
    changed = copy.deepcopy(model)
    # same overall hash is impossible to keep, so check the public hash on its own: a record
    # naming the parameters of another model fails even where the weights' hash is not the issue
    with torch.no_grad():
        changed.state_dict()[name].view(-1)[0] += 1.0
    other = C.public_parameters_record(changed, [name])
    forged = dataclasses.replace(cert, public_parameters=other)
    with pytest.raises(C.CertificateError, match="public parameters do not match"):
        forged.verify(model)
    with pytest.raises(C.CertificateError, match="not in the model"):
        C.public_parameters_record(model, ["no.such.parameter"])


def test_dpsgd_sizes_are_checked(runs):
    cert, model = runs["dpsgd_group"]
    assert cert.method == "dpsgd_group" and cert.parameters["group_size"] == cert.forget_size
    for change, message in (({"forget_size": 3}, "group_size"),
                            ({"retain_size": 5}, "train_size - group_size")):
        data = dict(cert.to_dict(), **change)
        with pytest.raises(C.CertificateError, match=message):
            C.RunCertificate.from_dict(data).verify(model)


def test_same_value_rule():
    assert C.same_value(1, 1.0) and C.same_value(0.1, 0.1) and C.same_value(None, None)
    assert not C.same_value(True, 1) and not C.same_value(float("nan"), float("nan"))
    assert not C.same_value(0.1, 0.1 + 2 ** -56 * 2) and not C.same_value("a", ["a"])
    assert C.same_value({"a": [1, 2.5]}, {"a": [1, 2.5]})
    assert not C.same_value({"a": 1}, {"a": 1, "b": 2})


def test_certificate_json_round_trip_is_exact(runs):
    for cert, _ in runs.values():
        again = C.RunCertificate.from_json(cert.to_json())
        assert again == cert and json.loads(again.to_json()) == json.loads(cert.to_json())


def test_build_accepts_the_callers_vocabulary():
    """Callers (baselines) may say "dpsgd", "steps" and "lr"; a fine-tuning step size without
    fine-tuning is not recorded (the CLI passes one for output perturbation either way)."""
    common = dict(retain_size=10, forget_size=2, sha_before="a" * 64, sha_after="b" * 64,
                  seed_user_supplied=False)
    cert = C.build_run_certificate(
        method="output_perturbation", sigma=5.0, eps=2.0, delta=1e-5,
        parameters=dict(steps=0, C0=0.5, C1=None, lr=None, lam=0.0, C2=None, sigma0=0.0,
                        batch_size=64, finetune_epochs=0.0, finetune_lr=0.05,
                        shift_slack=C.PROJECTION_SLACK * 0.5), **common)
    assert cert.parameters == {"C0": 0.5, "batch_size": 64, "finetune_epochs": 0.0,
                               "finetune_lr": None, "shift_slack": C.PROJECTION_SLACK * 0.5}
    tail = C.split_tail_delta(1e-5)[1]
    slack = C.float32_shift_slack(sigma=2.0, T=5, d=100, C0=0.5, C1=0.1, gamma=0.1, lam=0.0,
                                  eps=2.0, delta_tail=tail, batch_size=8)
    cert = C.build_run_certificate(
        method="gradient_clipping", sigma=2.0, eps=2.0, delta=1e-5,
        parameters=dict(steps=5, C0=0.5, C1=0.1, lr=0.1, lam=0.0, C2=None, sigma0=0.0,
                        batch_size=8, clip="batch", finetune_epochs=0.0, finetune_lr=None,
                        shift_slack=slack, float32_tail_delta=tail, d=100),
        **common)
    assert cert.parameters["T"] == 5 and cert.parameters["gamma"] == 0.1
    assert "steps" not in cert.parameters and "lr" not in cert.parameters
    with pytest.raises(C.CertificateError, match="'momentum' = 0.9 does not apply"):
        C.build_run_certificate(
            method="gradient_clipping", sigma=2.0, eps=2.0, delta=1e-5,
            parameters=dict(steps=5, C0=0.5, C1=0.1, lr=0.1, lam=0.0, sigma0=0.0, batch_size=8,
                            clip="batch", finetune_epochs=0.0, finetune_lr=None, momentum=0.9),
            **common)
    with pytest.raises(C.CertificateError, match="method must be one of"):
        C.build_run_certificate(method="magic", sigma=2.0, eps=2.0, delta=1e-5, parameters={},
                                **common)


def test_demo_certificate_rewritten_as_retrain_is_never_ok(runs):
    """A certificate of a noisy run rewritten as an exact retrain: refused (its parameters are
    not a retrain's); rewritten completely, it is at best NOT VERIFIABLE, never recomputed."""
    cert, model = runs["gradient_clipping"]
    data = dict(cert.to_dict(), method="retrain", eps=0.0, delta=0.0, accountant=None,
                sigma=None)
    with pytest.raises(C.CertificateError, match="does not belong to method retrain"):
        C.RunCertificate.from_dict(data).verify(model)
    data["parameters"] = {"epochs": 1.0, "gamma": 0.1, "batch_size": 8}
    data["public_parameters"] = None
    with pytest.raises(C.NotVerifiableError):
        C.RunCertificate.from_dict(data).verify(model)
    report = C.RunCertificate.from_dict(data).verify(model, allow_unverifiable=True)
    assert not report.guarantee_recomputed and "method" in report.not_checked_fields()


def test_optional_fields_may_be_absent(runs):
    """A certificate of a model without buffers (or issued before the field existed) has no
    ``buffers`` key, so its signed bytes are what they were; one with the record keeps it."""
    cert, model = runs["gradient_clipping"]
    assert "buffers" not in cert.to_dict() and cert.buffers is None
    C.RunCertificate.from_dict(cert.to_dict()).verify(model)
    bn_cert, bn_model = runs["batchnorm"]
    assert C.RunCertificate.from_json(bn_cert.to_json()) == bn_cert
    data = bn_cert.to_dict()
    del data["buffers"]
    with pytest.raises(C.CertificateError, match="floating-point buffer.*no buffers field"):
        C.RunCertificate.from_dict(data).verify(bn_model)
