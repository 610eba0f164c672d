"""BatchNorm and other buffers in unlearn() (THEORY.md section 10.4), on a ResNet-18.

A public BatchNorm (frozen backbone in eval mode) keeps its buffers bit-identical and is
recorded by hash; a private one runs the noisy phase with mean 0 / variance 1, so the run does
not depend on its starting statistics, and has its statistics re-estimated afterwards; what
cannot be covered is refused with the reason; verify checks the record.
"""
import copy

import pytest
import torch
from torch import nn

from certunlearn_train import certificates as C
from certunlearn_train.buffers import NOISY_PHASE_STATISTICS, REESTIMATED
from certunlearn_train.models import UnsupportedModelError
from certunlearn_train.unlearn import unlearn

from .resnet import pretrained_resnet18
from .routes_helpers import explicit_clipped_mean

KW = dict(eps=1.0, delta=1e-5, C0=1.0, C1=0.1, lr=0.1, steps=3, batch_size=4, seed=5,
          progress=False)


def _buffers(model):
    return {n: b.clone() for n, b in model.named_buffers()}


def test_frozen_pretrained_backbone_with_a_private_head():
    model, x, y = pretrained_resnet18()  # full width, eval mode, statistics not the defaults
    before = _buffers(model)
    for clip in ("batch", "per_sample"):
        out, cert = unlearn(model, (x, y), private=[model.fc], clip=clip, **KW)
        for name, b in out.named_buffers():
            assert torch.equal(b, before[name]), name
        for (name, p), (_, q) in zip(model.named_parameters(), out.named_parameters()):
            if not name.startswith("fc."):
                assert torch.equal(p, q), name
        names = cert.buffers["public"]["names"]
        assert names == list(before) and "private" not in cert.buffers
        report = C.RunCertificate.from_json(cert.to_json()).verify(out)
        assert {"buffers.public.names", "buffers.public.assumption"} <= set(
            report.not_checked_fields())
        tampered = copy.deepcopy(out)
        tampered.layer2[0].bn1.running_mean[0] += 1e-3  # a statistic other than the released
        with pytest.raises(C.CertificateError):
            cert.verify(tampered)


def test_public_batchnorm_in_train_mode_is_refused_with_the_reason():
    model, x, y = pretrained_resnet18(width=4)
    model.layer1.train()
    with pytest.raises(UnsupportedModelError, match=r"layer1\.0\.bn1 .*train mode.*\.eval\(\)"):
        unlearn(model, (x, y), private=[model.fc], **KW)


def test_private_batchnorm_never_reads_its_starting_statistics():
    """Two starting models that differ only in the private block's running statistics give
    bit-identical runs (same seed): the noisy phase used constants, and the statistics were
    re-estimated from the retain set through the noisy model."""
    model, x, y = pretrained_resnet18(width=8)
    other = copy.deepcopy(model)
    with torch.no_grad():
        for bn in (other.layer4[1].bn1, other.layer4[1].bn2):
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 3.0)
            bn.num_batches_tracked += 7
    public_before = {n: b.clone() for n, b in model.named_buffers()
                     if not n.startswith("layer4.1.")}
    for clip in ("batch", "per_sample"):
        a, ca = unlearn(model, (x, y), private=[model.layer4[1], model.fc], clip=clip, **KW)
        b, cb = unlearn(other, (x, y), private=[other.layer4[1], other.fc], clip=clip, **KW)
        assert ca.model_sha256_after == cb.model_sha256_after
        assert ca.model_sha256_before != cb.model_sha256_before
        priv = ca.buffers["private"]
        assert priv["names"] == [f"layer4.1.{m}.{k}" for m in ("bn1", "bn2") for k in
                                 ("running_mean", "running_var", "num_batches_tracked")]
        assert priv["noisy_phase"] == NOISY_PHASE_STATISTICS and priv["afterwards"] == REESTIMATED
        for name, buf in public_before.items():
            assert torch.equal(dict(a.named_buffers())[name], buf), name
        stats = a.layer4[1].bn1
        assert not torch.equal(stats.running_var, torch.ones_like(stats.running_var))
        assert not torch.equal(stats.running_var, model.layer4[1].bn1.running_var)
        ca.verify(a)


def test_no_batch_statistic_is_used_in_the_noisy_phase():
    """Every forward with gradients (the noisy steps) sees every BatchNorm in eval mode, and
    the private ones with mean 0 and variance 1."""
    model, x, y = pretrained_resnet18(width=4)
    seen = []

    def record(module, inputs, output):
        if torch.is_grad_enabled():
            seen.append((module.training, float(module.running_mean.abs().max()),
                         float((module.running_var - 1).abs().max()), module.private))
    for name, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            m.private = name.startswith("layer4.1.")
            m.register_forward_hook(record)
    model.train()  # the user's flags: the private block trains, the backbone ...
    for name, m in model.named_modules():
        if not (name.startswith("layer4.1") or name == "fc"):
            m.eval()  # ... is frozen in eval mode
    for clip in ("batch", "per_sample"):
        seen.clear()
        unlearn(model, (x, y), private=[model.layer4[1], model.fc], clip=clip, **KW)
        assert seen and not any(training for training, *_ in seen)
        assert all(mean == 0 and var == 0 for _, mean, var, private in seen if private)


def test_batchnorm_per_sample_gradients_are_exact_in_eval_mode():
    from certunlearn_train._flat import FlatParameters, GradientSource
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(),
                          nn.Linear(12, 5), nn.BatchNorm1d(5), nn.Linear(5, 3)).double()
    with torch.no_grad():
        for m in (model[1], model[5]):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
            m.weight.normal_()
            m.bias.normal_()
    model.eval()
    x, y = torch.randn(6, 2, 4, 4, dtype=torch.float64), torch.randint(0, 3, (6,))
    loss = nn.functional.cross_entropy
    expected = explicit_clipped_mean(model, x, y, loss, 0.3)
    work = copy.deepcopy(model).float()
    flat = FlatParameters(work)
    try:
        src = GradientSource(work, flat, "per_sample", 0.3, loss, 6, 0, True)
        got = src(x.float(), y)[0].double()
        assert src.ghost is not None  # the rule, not the vmap fallback
    finally:
        flat.release()
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


class _Positional(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)
        self.register_buffer("pe", torch.sin(torch.arange(4.0)))

    def forward(self, x):
        return self.lin(x + self.pe)


def test_a_constant_buffer_is_refused_with_a_hint_and_accepted_once_declared_public():
    torch.manual_seed(0)
    model, x, y = _Positional(), torch.randn(8, 4), torch.randint(0, 3, (8,))
    with pytest.raises(UnsupportedModelError, match=r"buffer pe .*public_buffers=\['pe'\]"):
        unlearn(model, (x, y), **KW)
    out, cert = unlearn(model, (x, y), public_buffers=["pe"], **KW)
    assert torch.equal(out.pe, model.pe)
    assert cert.buffers["public"]["names"] == ["pe"]
    cert.verify(out)
    with pytest.raises(ValueError, match="buffer 'nope'"):
        unlearn(model, (x, y), public_buffers=["nope"], **KW)


def test_a_buffer_the_forward_changes_is_refused_even_when_declared_public():
    class Counter(_Positional):
        def forward(self, x):
            self.pe.add_(1.0)
            return super().forward(x)
    torch.manual_seed(0)
    model, x, y = Counter(), torch.randn(8, 4), torch.randint(0, 3, (8,))
    with pytest.raises(UnsupportedModelError, match="change during a forward pass"):
        unlearn(model, (x, y), public_buffers=["pe"], **KW)


def test_batchnorm_without_running_statistics_is_refused():
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3, track_running_stats=False))
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    with pytest.raises(UnsupportedModelError, match="tracks no running statistics.*mixes"):
        unlearn(model, (x, y), **KW)


def test_fine_tuning_keeps_public_statistics_and_is_recorded():
    model, x, y = pretrained_resnet18(width=4)
    before = _buffers(model)
    out, cert = unlearn(model, (x, y), private=[model.layer4[1], model.fc],
                        finetune_epochs=1, finetune_lr=0.01, **KW)
    for name, b in out.named_buffers():
        if not name.startswith("layer4.1."):
            assert torch.equal(b, before[name]), name
    assert cert.buffers["private"]["afterwards"].endswith("fine-tuning on the retain set")
    cert.verify(out)


def test_verify_refuses_a_bad_buffers_record():
    model, x, y = pretrained_resnet18(width=4)
    out, cert = unlearn(model, (x, y), private=[model.layer4[1], model.fc], **KW)
    for edit in (lambda d: d["buffers"]["private"].update(noisy_phase="the starting model's"),
                 lambda d: d["buffers"]["private"]["names"].pop(),
                 lambda d: d.pop("buffers")):
        data = cert.to_dict()
        edit(data)
        with pytest.raises(C.CertificateError):
            C.RunCertificate.from_dict(data).verify(out)
