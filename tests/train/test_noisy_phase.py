"""The noisy phase against a slow reference loop written with plain PyTorch ops, step for step.

The reference computes per-sample gradients one sample at a time with ``torch.autograd.grad``,
clips and averages them by hand, applies weight decay, projection and noise with elementary
tensor ops, draws its own batches from a generator seeded the same way, and takes the noise of
step t at counter block t * ceil(d / 2) (the NoiseStream contract). Only ``gaussian_noise`` (the
kernel owner's tested generator) is shared.
"""
import copy
import math

import pytest
import torch
import torch.nn.functional as F

from certunlearn_train._flat import FlatParameters
from certunlearn_train.models import MLP, SmallCNN
from certunlearn_train.ops import NoiseStream, gaussian_noise
from certunlearn_train.unlearn import noisy_phase

SLACK = 2.0 ** -20  # the op projects onto radius * (1 - 2^-20): documented in ops.noisy_step_


def _data(n=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


def _models():
    torch.manual_seed(0)
    return {"mlp": MLP(64, 10, (12,)), "cnn": SmallCNN(1, 8, 10, (3, 4))}


def reference(model, x, y, *, steps, lr, lam, clip, C1, sigma, radius, batch_size, batch_seed,
              noise_seed, noise_offset=0):
    """Trajectory [x_1, ..., x_T] of flattened parameters (float32)."""
    model = copy.deepcopy(model)
    params = list(model.parameters())
    d = sum(p.numel() for p in params)
    g = torch.Generator().manual_seed(batch_seed)
    n = len(y)
    batches = []
    while len(batches) < steps:
        perm = torch.randperm(n, generator=g)
        batches += [perm[i:i + batch_size] for i in range(0, n, batch_size)]
    out = []
    for t in range(steps):
        idx = batches[t]
        if clip == "batch":
            loss = F.cross_entropy(model(x[idx]), y[idx])
            rows = [torch.cat([gr.reshape(-1) for gr in torch.autograd.grad(loss, params)])]
        else:
            rows = []
            for i in idx.tolist():
                loss = F.cross_entropy(model(x[i:i + 1]), y[i:i + 1])
                rows.append(torch.cat([gr.reshape(-1) for gr in torch.autograd.grad(loss, params)]))
        clipped = []
        for r in rows:
            norm = float(r.double().norm())
            clipped.append(r * min(1.0, C1 / norm) if norm > 0 else r)
        mean = torch.stack(clipped).double().mean(0)
        with torch.no_grad():
            flat = torch.cat([p.reshape(-1) for p in params]).double()
            u = (1 - lr * lam) * flat - lr * mean
            r_eff = radius * (1 - SLACK)
            norm = float(u.norm())
            if norm > r_eff:
                u = u * (r_eff / norm)
            z = gaussian_noise(d, noise_seed, noise_offset + t * math.ceil(d / 2),
                               dtype=torch.float64)
            new = (u + sigma * z).float()
            o = 0
            for p in params:
                p.copy_(new[o:o + p.numel()].view_as(p))
                o += p.numel()
        out.append(new.clone())
    return out


CASES = [
    # name, clip, C1, sigma, radius, lam, grad_buffer_bytes, ghost_norms
    ("batch-noise-off", "batch", 0.3, 0.0, math.inf, 0.0, 1 << 30, True),
    ("batch-noise-on", "batch", 0.3, 0.02, math.inf, 0.05, 1 << 30, True),
    ("per-sample-rows-noise-off", "per_sample", 0.3, 0.0, math.inf, 0.0, 1 << 30, False),
    ("per-sample-rows-noise-on", "per_sample", 0.3, 0.02, math.inf, 0.05, 1 << 30, False),
    ("per-sample-chunked-noise-on", "per_sample", 0.3, 0.02, math.inf, 0.05, 0, False),
    ("per-sample-linear-noise-off", "per_sample", 0.3, 0.0, math.inf, 0.0, 1 << 30, True),
    ("per-sample-linear-noise-on", "per_sample", 0.3, 0.02, math.inf, 0.05, 1 << 30, True),
    ("model-clipping-noise-on", "batch", math.inf, 0.02, 1.5, 0.05, 1 << 30, True),
    ("no-clip-no-noise-is-sgd", "batch", math.inf, 0.0, math.inf, 0.0, 1 << 30, True),
]


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
@pytest.mark.parametrize("name, clip, C1, sigma, radius, lam, gbytes, linear", CASES,
                         ids=[c[0] for c in CASES])
def test_noisy_phase_matches_reference_step_for_step(arch, name, clip, C1, sigma, radius, lam,
                                                     gbytes, linear):
    base = _models()[arch]
    x, y = _data()
    steps, lr, bs = 4, 0.2, 8  # 20 points in batches of 8, 8, 4: crosses an epoch boundary
    ref = reference(base, x, y, steps=steps, lr=lr, lam=lam, clip=clip, C1=C1, sigma=sigma,
                    radius=radius, batch_size=bs, batch_seed=11, noise_seed=5)
    for k in range(1, steps + 1):
        model = copy.deepcopy(base)
        flat = FlatParameters(model)
        gen = torch.Generator().manual_seed(11)
        noisy_phase(model, flat, x, y, steps=k, lr=lr, lam=lam, clip=clip, C1=C1, sigma=sigma,
                    radius=radius, batch_size=bs, generator=gen, noise=NoiseStream(5),
                    grad_buffer_bytes=gbytes, ghost_norms=linear, progress=False)
        torch.testing.assert_close(flat.flat, ref[k - 1], rtol=1e-5, atol=2e-6,
                                   msg=lambda m: f"step {k}: {m}")
        if math.isfinite(radius) and sigma == 0:
            assert float(flat.flat.double().norm()) <= radius
    # the steps did something (the comparison is not between two unchanged models)
    start = torch.cat([p.detach().reshape(-1) for p in base.parameters()])
    assert float((ref[-1] - start).abs().max()) > 1e-3


def test_flat_parameters_are_views_and_release_restores_storage():
    model = _models()["mlp"]
    before = [p.detach().clone() for p in model.parameters()]
    flat = FlatParameters(model)
    flat.flat.add_(1.0)
    for p, b in zip(model.parameters(), before):
        torch.testing.assert_close(p.detach(), b + 1.0)
        assert p.grad is not None and p.grad.data_ptr() >= flat.grad.data_ptr()
    flat.release()
    flat.flat.add_(1.0)  # no longer connected
    for p, b in zip(model.parameters(), before):
        torch.testing.assert_close(p.detach(), b + 1.0)
        assert p.grad is None


def test_shared_parameters_appear_once():
    lin = torch.nn.Linear(3, 3)
    model = torch.nn.Sequential(lin, torch.nn.ReLU(), lin)
    flat = FlatParameters(model)
    assert flat.numel == 12


def test_ghost_route_is_used_for_mlp_and_cnn():
    from certunlearn_train._flat import GradientSource
    models = _models()
    x, y = _data()
    for arch in ("mlp", "cnn"):
        model = models[arch]
        src = GradientSource(model, FlatParameters(model), "per_sample", 0.3, F.cross_entropy, 8)
        src(x[:8], y[:8])
        assert src.route == "ghost" and src.ghost is not None
        assert src.rows is None  # no (B, d) buffer on the ghost route


def test_layer_called_twice_gives_the_exact_clipped_mean():
    from certunlearn_train._flat import GradientSource
    torch.manual_seed(0)
    lin = torch.nn.Linear(4, 4)
    model = torch.nn.Sequential(lin, torch.nn.Tanh(), lin)
    x, y = torch.randn(6, 4), torch.randint(0, 4, (6,))
    flat = FlatParameters(model)
    src = GradientSource(model, flat, "per_sample", 0.5, F.cross_entropy, 6)
    row = src(x, y)
    assert src.route == "ghost" and row.shape == (1, flat.numel)
    expected = 0
    for i in range(6):
        g = torch.autograd.grad(F.cross_entropy(model(x[i:i + 1]), y[i:i + 1]),
                                list(model.parameters()))
        g = torch.cat([t.reshape(-1) for t in g])
        expected = expected + g * min(1.0, 0.5 / float(g.norm())) / 6
    torch.testing.assert_close(row[0], expected, rtol=1e-5, atol=1e-6)


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.cuda
@CUDA
@pytest.mark.parametrize("arch", ["mlp", "cnn"])
@pytest.mark.parametrize("name, clip, C1, sigma, radius, lam, gbytes, linear", CASES,
                         ids=[c[0] for c in CASES])
def test_noisy_phase_on_cuda_matches_cpu_reference(arch, name, clip, C1, sigma, radius, lam,
                                                   gbytes, linear):
    base = _models()[arch]
    x, y = _data()
    ref = reference(base, x, y, steps=4, lr=0.2, lam=lam, clip=clip, C1=C1, sigma=sigma,
                    radius=radius, batch_size=8, batch_seed=11, noise_seed=5)
    model = copy.deepcopy(base).cuda()
    flat = FlatParameters(model)
    gen = torch.Generator().manual_seed(11)
    noisy_phase(model, flat, x.cuda(), y.cuda(), steps=4, lr=0.2, lam=lam, clip=clip, C1=C1,
                sigma=sigma, radius=radius, batch_size=8, generator=gen, noise=NoiseStream(5),
                grad_buffer_bytes=gbytes, ghost_norms=linear, progress=False)
    torch.testing.assert_close(flat.flat.cpu(), ref[-1], rtol=1e-4, atol=1e-5)
