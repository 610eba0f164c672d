"""The op under torch.compile: a new offset every step must not recompile every step.

seed and offset are ``SymInt`` in the op schemas and the wrappers check them with
``torch._check``, so dynamo compiles once with the first value and once more with the offset
dynamic (automatic dynamic shapes), then reuses that graph. Compiles are counted with a counting
backend; the eager backends keep this fast on a small CPU.
"""
import torch
import torch.nn.functional as F
from torch._dynamo.testing import CompileCounterWithBackend
from torch.func import functional_call, grad, vmap

from certunlearn_train import ops

STEPS = 100


def _count(fn, backend="eager", fullgraph=True):
    torch._dynamo.reset()
    counter = CompileCounterWithBackend(backend)
    return torch.compile(fn, backend=counter, fullgraph=fullgraph), counter


def test_step_with_a_new_offset_each_call_compiles_at_most_twice():
    def step(x, G, seed, offset):
        return ops.noisy_step_(x, G, lr=0.1, clip=1.0, noise_std=0.1, radius=5.0, seed=seed,
                               offset=offset)

    compiled, counter = _count(step, backend="aot_eager")
    g = torch.Generator().manual_seed(0)
    a = torch.randn(33, generator=g)
    G = torch.randn(4, 33, generator=g)
    b = a.clone()
    stream = ops.NoiseStream(seed=2 ** 64 - 5)  # a seed above 2^63 (signed form in the op)
    for _ in range(STEPS):
        seed, offset = stream.take(33)
        n_c = compiled(a, G, seed, offset)
        n_e = step(b, G, seed, offset)
        assert torch.equal(n_c, n_e)
    assert torch.equal(a, b)
    assert counter.frame_count <= 2, f"{counter.frame_count} compiles for {STEPS} offsets"


def test_noise_with_a_new_offset_each_call_compiles_at_most_twice():
    def draw(seed, offset):
        return ops.gaussian_noise(10, seed, offset)

    compiled, counter = _count(draw)
    for i in range(STEPS):
        assert torch.equal(compiled(3, 5 * i), draw(3, 5 * i))
    assert counter.frame_count <= 2, f"{counter.frame_count} compiles for {STEPS} offsets"


def test_whole_per_sample_step_in_one_graph():
    # vmap per-sample gradients of a small MLP, then the fused op: fullgraph (no graph break)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    numels = [p.numel() for p in model.parameters()]

    def step(flat, x, y, seed, offset):
        ps = dict(zip(names, [t.view(s) for t, s in zip(flat.split(numels), shapes)]))

        def loss(ps, xi, yi):
            return F.cross_entropy(functional_call(model, ps, (xi[None],)), yi[None])

        g = vmap(grad(loss), in_dims=(None, 0, 0))(ps, x, y)
        rows = torch.cat([g[n].reshape(len(x), -1) for n in names], 1)
        return ops.noisy_step_(flat, rows, lr=0.1, clip=0.5, noise_std=0.01, seed=seed,
                               offset=offset)

    compiled, counter = _count(step, backend="aot_eager")
    a = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    b = a.clone()
    x, y = torch.randn(4, 6), torch.randint(0, 3, (4,))
    for i in range(20):
        compiled(a, x, y, 7, 50 * i)
        step(b, x, y, 7, 50 * i)
    assert torch.equal(a, b)
    assert counter.frame_count <= 2


def test_bad_offset_still_refused_under_compile():
    def step(x, G, offset):
        return ops.noisy_step_(x, G, lr=0.1, seed=1, offset=offset)

    compiled, _ = _count(step)
    x, G = torch.zeros(8), torch.ones(2, 8)
    compiled(x, G, 0)
    compiled(x, G, 4)  # now dynamic
    try:
        compiled(x, G, -3)
    except Exception as exc:  # a runtime assertion from torch._check (type depends on torch)
        assert "offset" in str(exc) or "Runtime assertion" in str(exc) or "-3" in str(exc), exc
    else:
        raise AssertionError("a negative offset was accepted under torch.compile")
