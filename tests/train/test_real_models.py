"""What real users bring: other losses, float regression targets, integer token inputs, eval-mode
models, bad data, diverging runs, data-dependent buffers."""
import copy
import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from certunlearn_train import baselines as B
from certunlearn_train import certificates as C
from certunlearn_train.train import as_tensors, train
from certunlearn_train.unlearn import unlearn

from .helpers import flat_params, tiny_problem

KW = dict(eps=1.0, delta=1e-5, C0=1.0, C1=0.5, lr=0.05, steps=4, batch_size=8, progress=False)


def _regression(n=40, seed=0):
    """y = x w* + 0.01 noise with float targets like 0.909 (cast to int64 they would be 0)."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x = torch.randn(n, 5, generator=g)
    w = torch.randn(5, 2, generator=g)
    y = x @ w + 0.01 * torch.randn(n, 2, generator=g)
    return torch.nn.Linear(5, 2), x, y


class Tokens(torch.nn.Module):
    """Embedding of integer token ids, mean over the sequence, then a Linear head."""

    def __init__(self, vocab=20, dim=6, classes=3):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, dim)
        self.head = torch.nn.Linear(dim, classes)

    def forward(self, x):
        return self.head(self.emb(x).mean(1))


def _tokens(n=36, seed=0):
    """Class = whether token 0..6 dominates, 7..13 or 14..19: learnable from the mean embedding."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    x = (y[:, None] * 7 + torch.randint(0, 6, (n, 5), generator=g)).clamp(max=19)
    return Tokens(), x, y


SMOOTH = staticmethod(lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1))


def _mse_of(model, x, y):
    with torch.no_grad():
        return float(F.mse_loss(model(x), y))


# ----------------------------------------------------------------------------------------------
# loss_fn everywhere, dtypes and shapes kept
# ----------------------------------------------------------------------------------------------

def test_as_tensors_keeps_float_targets_and_integer_inputs():
    x, y = as_tensors((torch.randn(3, 2, dtype=torch.float64), torch.tensor([[0.909], [1.5], [2.]])),
                      dtype=torch.float32, loss_fn=F.mse_loss)
    assert x.dtype == torch.float32 and y.dtype == torch.float32 and y.shape == (3, 1)
    assert float(y[0, 0]) == pytest.approx(0.909)
    x, y = as_tensors((torch.tensor([[1, 2], [3, 4]]), torch.tensor([0, 1], dtype=torch.int32)),
                      dtype=torch.float32)
    assert x.dtype == torch.int64 and y.dtype == torch.int64
    # float labels that are whole numbers are class indices for cross-entropy
    _, y = as_tensors((torch.zeros(2, 3), torch.tensor([1.0, 2.0])))
    assert y.dtype == torch.int64 and y.tolist() == [1, 2]


def test_train_regression_with_mse():
    model, x, y = _regression()
    before = _mse_of(model, x, y)
    train(model, (x, y), epochs=60, lr=0.05, batch_size=8, seed=0, loss_fn=F.mse_loss,
          progress=False)
    # least squares reaches the noise floor (1e-4); truncated int targets would leave ~0.5
    assert _mse_of(model, x, y) < 0.01 < before


@pytest.mark.parametrize("clip", ["batch", "per_sample"])
def test_unlearn_and_baselines_regression_end_to_end(clip):
    model, x, y = _regression()
    train(model, (x, y), epochs=60, lr=0.05, batch_size=8, seed=0, loss_fn=F.mse_loss,
          progress=False)
    out, cert = unlearn(model, (x, y), loss_fn=F.mse_loss, clip=clip, finetune_epochs=40,
                        finetune_lr=0.05, seed=1, **KW)
    cert.verify(out)
    assert _mse_of(out, x, y) < 0.05  # fine-tuned back on the float targets
    # the fine-tuning is train() with the same loss on the same float targets
    noisy, _ = unlearn(model, (x, y), loss_fn=F.mse_loss, clip=clip, seed=1, **KW)
    manual = train(copy.deepcopy(noisy), (x, y), epochs=40, lr=0.05, batch_size=8, seed=2,
                   loss_fn=F.mse_loss, progress=False)
    assert torch.equal(flat_params(out), flat_params(manual))
    r, _ = B.retrain(model, (x, y), epochs=60, lr=0.05, batch_size=8, seed=0,
                     loss_fn=F.mse_loss, progress=False)
    assert _mse_of(r, x, y) < 0.01
    o, _ = B.output_perturbation(model, (x, y), eps=1.0, delta=1e-5, C0=1.0, finetune_epochs=40,
                                 finetune_lr=0.05, batch_size=8, seed=1, loss_fn=F.mse_loss,
                                 progress=False)
    assert _mse_of(o, x, y) < 0.05
    d, cert = B.dpsgd_train(model, (x, y), eps=50.0, delta=1e-5, group_size=1, epochs=30,
                            lr=0.5, clip=5.0, expected_batch_size=10, seed=1,
                            loss_fn=F.mse_loss, progress=False)
    cert.verify(d)
    assert _mse_of(d, x, y) < 0.5 * _mse_of(torch.nn.Linear(5, 2), x, y)


@pytest.mark.parametrize("clip", ["batch", "per_sample"])
def test_label_smoothing_is_the_loss_of_every_phase(clip):
    model, x, y = tiny_problem(n=24)
    out, cert = unlearn(model, (x, y), loss_fn=SMOOTH, clip=clip, finetune_epochs=2,
                        finetune_lr=0.1, seed=3, **KW)
    noisy, _ = unlearn(model, (x, y), loss_fn=SMOOTH, clip=clip, seed=3, **KW)
    manual = train(copy.deepcopy(noisy), (x, y), epochs=2, lr=0.1, batch_size=8, seed=4,
                   loss_fn=SMOOTH, progress=False)
    plain = train(copy.deepcopy(noisy), (x, y), epochs=2, lr=0.1, batch_size=8, seed=4,
                  progress=False)
    assert torch.equal(flat_params(out), flat_params(manual))
    assert not torch.equal(flat_params(out), flat_params(plain))
    cert.verify(out)
    r, _ = B.retrain(model, (x, y), epochs=2, lr=0.1, batch_size=8, seed=4, loss_fn=SMOOTH,
                     progress=False)
    fresh = B.reinitialize_(copy.deepcopy(model), seed=4)
    manual = train(fresh, (x, y), epochs=2, lr=0.1, batch_size=8, seed=4, loss_fn=SMOOTH,
                   progress=False)
    assert torch.equal(flat_params(r), flat_params(manual))


def _acc(model, x, y):
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


@pytest.mark.parametrize("clip", ["batch", "per_sample"])
def test_token_model_end_to_end(clip):
    model, x, y = _tokens()
    train(model, (x, y), epochs=40, lr=0.2, batch_size=8, seed=0, progress=False)
    assert _acc(model, x, y) > 0.9
    out, cert = unlearn(model, (x, y), clip=clip, finetune_epochs=40, finetune_lr=0.2, seed=1,
                        **KW)
    cert.verify(out)
    assert _acc(out, x, y) > 0.9
    r, _ = B.retrain(model, (x, y), epochs=40, lr=0.2, batch_size=8, seed=0, progress=False)
    assert _acc(r, x, y) > 0.9
    o, _ = B.output_perturbation(model, (x, y), eps=1.0, delta=1e-5, C0=1.0,
                                 finetune_epochs=40, finetune_lr=0.2, batch_size=8, seed=1,
                                 progress=False)
    assert _acc(o, x, y) > 0.9
    d, cert = B.dpsgd_train(model, (x, y), eps=50.0, delta=1e-5, group_size=1, epochs=40,
                            lr=0.5, clip=1.0, expected_batch_size=9, seed=1, progress=False)
    cert.verify(d)
    assert _acc(d, x, y) > 0.6


# ----------------------------------------------------------------------------------------------
# train/eval modes
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["train", "eval", "mixed"])
@pytest.mark.parametrize("inplace", [False, True])
def test_train_eval_modes_are_restored(mode, inplace):
    model, x, y = tiny_problem()
    model.train(mode == "train")
    if mode == "mixed":
        model.net[0].train()
    flags = [m.training for m in model.modules()]
    out, _ = unlearn(model, (x, y), finetune_epochs=1, finetune_lr=0.1, inplace=inplace,
                     seed=0, **KW)
    assert [m.training for m in out.modules()] == flags
    assert [m.training for m in model.modules()] == flags
    o, _ = B.output_perturbation(model, (x, y), eps=1.0, delta=1e-5, C0=1.0, finetune_epochs=1,
                                 finetune_lr=0.1, inplace=inplace, progress=False)
    assert [m.training for m in o.modules()] == flags
    r, _ = B.retrain(model, (x, y), epochs=1, lr=0.1, progress=False)
    assert [m.training for m in r.modules()] == flags
    d, _ = B.dpsgd_train(model, (x, y), eps=8.0, delta=1e-5, group_size=1, epochs=1, lr=0.1,
                         clip=1.0, expected_batch_size=8, inplace=inplace, progress=False)
    assert [m.training for m in d.modules()] == flags
    train(model, (x, y), epochs=1, lr=0.1, progress=False)
    assert [m.training for m in model.modules()] == flags


# ----------------------------------------------------------------------------------------------
# Bad data: one ValueError, the model bit-identical
# ----------------------------------------------------------------------------------------------

def _bad_inputs():
    model, x, y = tiny_problem()
    xn = x.clone()
    xn[5, 0, 1, 1] = float("nan")
    yf = y.float()
    yf[3] = 0.909
    return [
        ("nan input", (xn, y), {}, "data inputs must be finite, sample 5 has NaN or inf"),
        ("inf target", (x.flatten(1)[:, :10], torch.full((24, 10), math.inf)),
         dict(loss_fn=F.mse_loss), "data targets must be finite, sample 0"),
        ("fractional label", (x, yf), {}, r"integer class labels for cross_entropy, sample 3 has "
                                          r"0.90"),
        ("complex input", (x.to(torch.complex64), y), {}, "inputs must be real, got dtype "
                                                          "torch.complex64"),
        ("complex target", (x, y.to(torch.complex64)), {}, "targets must be real"),
        ("other device", (x.to("meta"), y), {}, "data inputs are on meta but the model is on "
                                                "cpu"),
        ("no such cuda", (x, y), dict(device="cuda:7"), "device 'cuda:7' does not exist here"),
        ("no such device", (x, y), dict(device="nonsense"), "device must name a torch device"),
        ("label out of range", (x, torch.cat([y[:-1], torch.tensor([10])])), {},
         r"labels must lie in \[0, 10\)"),
    ]


@pytest.mark.parametrize("name, data, extra, message", _bad_inputs(),
                         ids=[b[0] for b in _bad_inputs()])
def test_bad_data_refused_before_any_weight_is_touched(name, data, extra, message):
    model, _, _ = tiny_problem()
    before = C.weights_sha256(model)
    calls = [
        lambda: unlearn(model, data, inplace=True, **{**KW, **extra}),
        lambda: unlearn(model, data, inplace=True, clip="per_sample", **{**KW, **extra}),
        lambda: B.output_perturbation(model, data, eps=1.0, delta=1e-5, C0=1.0, inplace=True,
                                      finetune_epochs=1, finetune_lr=0.1, progress=False,
                                      **extra),
        lambda: B.dpsgd_train(model, data, eps=1.0, delta=1e-5, group_size=1, epochs=1, lr=0.1,
                              clip=1.0, expected_batch_size=8, inplace=True, progress=False,
                              **extra),
        lambda: B.retrain(model, data, epochs=1, lr=0.1, progress=False, **extra),
    ]
    if "device" not in extra:
        calls.append(lambda: train(model, data, epochs=1, lr=0.1, progress=False, **extra))
    for call in calls:
        with pytest.raises(ValueError, match=message):
            call()
        assert C.weights_sha256(model) == before


# ----------------------------------------------------------------------------------------------
# Divergence, step counts
# ----------------------------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore:steps=4 is more than")
def test_diverging_runs_raise_and_issue_no_certificate():
    model, x, y = _regression()
    with pytest.raises(ValueError, match="non-finite"):
        unlearn(model, (x, y), loss_fn=F.mse_loss, finetune_epochs=5, finetune_lr=1e6, seed=0,
                **KW)
    with pytest.raises(ValueError, match="non-finite"):
        unlearn(model, (x, y), loss_fn=F.mse_loss, **{**KW, "lr": 1e38, "C1": 1.0})
    with pytest.raises(ValueError, match="non-finite"):
        B.output_perturbation(model, (x, y), eps=1.0, delta=1e-5, C0=1.0, finetune_epochs=5,
                              finetune_lr=1e6, loss_fn=F.mse_loss, progress=False)
    with pytest.raises(ValueError, match="diverged|non-finite"):
        train(copy.deepcopy(model), (x, y), epochs=5, lr=1e6, loss_fn=F.mse_loss, progress=False)


def test_steps_beyond_the_flat_bound_warn():
    model, x, y = tiny_problem()
    # C0 / (lr C1) = 1 / (0.05 * 0.5) = 40: the bound does not improve beyond 40 steps
    with pytest.warns(UserWarning, match="bound does not improve beyond"):
        unlearn(model, (x, y), **{**KW, "steps": 41})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        unlearn(model, (x, y), **{**KW, "steps": 40})
        unlearn(model, (x, y), **{**KW, "steps": 41, "lam": 0.1})  # with weight decay it does
        unlearn(model, (x, y), **{**KW, "steps": 1, "lr": 10.0})  # T* = 0.2: one step is least


# ----------------------------------------------------------------------------------------------
# Buffers
# ----------------------------------------------------------------------------------------------

class _Counter(torch.nn.Module):
    """An integer buffer that counts the batches seen in train mode: state from the data."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(64, 10)
        self.register_buffer("seen", torch.zeros((), dtype=torch.int64))

    def forward(self, x):
        if self.training:
            self.seen += len(x)
        return self.lin(x.flatten(1))


class _ConstantIndex(torch.nn.Module):
    """A constant integer buffer (an index table): fine."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(64, 10)
        self.register_buffer("order", torch.arange(64))

    def forward(self, x):
        return self.lin(x.flatten(1)[:, self.order])


def test_data_dependent_buffers_are_refused():
    _, x, y = tiny_problem()
    torch.manual_seed(0)
    model = _Counter()
    before = C.weights_sha256(model)
    for call in (lambda: unlearn(model, (x, y), inplace=True, **KW),
                 lambda: B.output_perturbation(model, (x, y), eps=1.0, delta=1e-5, C0=1.0,
                                               finetune_epochs=1, finetune_lr=0.1, inplace=True,
                                               progress=False),
                 lambda: B.dpsgd_train(model, (x, y), eps=1.0, delta=1e-5, group_size=1,
                                       epochs=1, lr=0.1, clip=1.0, expected_batch_size=8,
                                       inplace=True, progress=False)):
        with pytest.raises(ValueError, match=r"buffer\(s\) seen change during a forward"):
            call()
        assert C.weights_sha256(model) == before
    # BatchNorm without running statistics still mixes the samples of a batch
    bn = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 4),
                             torch.nn.BatchNorm1d(4, track_running_stats=False)).eval()
    with pytest.raises(ValueError, match="BatchNorm1d.*use GroupNorm or LayerNorm"):
        unlearn(bn, (x, y), **KW)
    out, cert = unlearn(_ConstantIndex(), (x, y), **KW)
    cert.verify(out)


# ----------------------------------------------------------------------------------------------
# DP-SGD starts from scratch
# ----------------------------------------------------------------------------------------------

def test_dpsgd_does_not_depend_on_the_weights_given():
    model, x, y = tiny_problem()
    other = copy.deepcopy(model)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(1.0)
    kw = dict(eps=8.0, delta=1e-5, group_size=1, epochs=2, lr=0.1, clip=1.0,
              expected_batch_size=8, seed=11, progress=False)
    a, cert_a = B.dpsgd_train(model, (x, y), **kw)
    b, cert_b = B.dpsgd_train(other, (x, y), **kw)
    assert torch.equal(flat_params(a), flat_params(b))
    assert cert_a.model_sha256_before != cert_b.model_sha256_before
    c, _ = B.dpsgd_train(model, (x, y), **{**kw, "seed": 12})
    assert not torch.equal(flat_params(a), flat_params(c))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("clip", ["batch", "per_sample"])
def test_token_model_with_public_embedding_on_cuda_matches_cpu(clip):
    model, x, y = _tokens()
    kw = dict(KW, clip=clip, seed=5, finetune_epochs=1, finetune_lr=0.1,
              private=[model.head])
    out_cpu, cert_cpu = unlearn(model, (x, y), **kw)
    out_gpu, cert_gpu = unlearn(model, (x, y), device="cuda", **kw)
    assert next(out_gpu.parameters()).is_cuda and cert_gpu.sigma == cert_cpu.sigma
    assert cert_gpu.public_parameters == cert_cpu.public_parameters
    assert torch.equal(out_gpu.emb.weight.cpu(), model.emb.weight)
    torch.testing.assert_close(flat_params(out_gpu).cpu(), flat_params(out_cpu), rtol=1e-4,
                               atol=1e-5)
    with pytest.raises(ValueError, match="data inputs are on cuda:0 but the model is on cpu"):
        unlearn(model, (x.cuda(), y.cuda()), **kw)
    out, _ = unlearn(out_gpu, (x.cuda(), y.cuda()), **{**kw, "private": [out_gpu.head]})
    assert next(out.parameters()).is_cuda
