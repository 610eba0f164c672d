"""Per-step cost of the noisy phase against a plain SGD step on the same model and batch.

For each model, at batch size B (default 256), times (median of repeated runs, after warm-up):

* plain:       zero_grad, forward, backward, SGD update (torch.optim.SGD, no momentum);
* batch clip:  forward, backward into the flat gradient buffer, fused noisy step (clip the batch
               gradient to C1, add noise): what ``unlearn(clip="batch")`` runs per step;
* per-sample:  what ``unlearn(clip="per_sample")`` runs: for models made of nn.Linear layers
               the clipped mean from activations and output gradients (no per-sample tensors);
               otherwise torch.func per-sample gradients in chunks, rows in a reused (B, d)
               buffer (or a chunk-by-chunk clipped mean beyond 64 MiB), then the fused step;
* per-sample, one vmap: the whole batch in one vmap call with a fresh (B, d) result every step
               (what a direct vmap(grad) does; shows the cost of first-touch page faults).

Ratios are to the plain step, measured in the same run. Targets (issue 5): batch clip <= 1.1x,
per-sample <= 5x on the digits MLP.

Run: .venv/bin/python benchmarks/bench_unlearn.py [--batch 256] [--threads 1] [--repeats 30]
"""
from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch
import torch.nn.functional as F


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _median_ms(fn, repeats, warmup=5):
    for _ in range(warmup):
        fn()
    _sync()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def bench_model(name, model, x, y, repeats):
    import copy
    from certunlearn_train._flat import FlatParameters, GradientSource
    from certunlearn_train.ops import NoiseStream, noisy_step_
    from torch.func import functional_call, grad, vmap

    # plain SGD step
    plain_model = copy.deepcopy(model)
    opt = torch.optim.SGD(plain_model.parameters(), lr=1e-3)

    def plain():
        opt.zero_grad()
        F.cross_entropy(plain_model(x), y).backward()
        opt.step()

    results = {"plain": _median_ms(plain, repeats)}
    noise = NoiseStream()
    for label, clip in (("batch clip", "batch"), ("per-sample", "per_sample")):
        m = copy.deepcopy(model)
        flat = FlatParameters(m)
        src = GradientSource(m, flat, clip, 1.0, F.cross_entropy, len(x))

        def step(src=src, flat=flat):
            grads = src(x, y)
            s, o = noise.take(flat.numel)
            noisy_step_(flat.flat, grads, lr=1e-3, clip=1.0, noise_std=1e-4, seed=s, offset=o)

        results[label] = _median_ms(step, repeats)
        if clip == "per_sample":
            results["path"] = ("nn.Linear identity" if src.linear is not None else
                               "(B, d) rows" if src.rows is not None else "chunked mean")

    m = copy.deepcopy(model)
    names = [n for n, _ in m.named_parameters()]
    params = tuple(p.detach() for p in m.parameters())

    def one(ps, xi, yi):
        return F.cross_entropy(functional_call(m, dict(zip(names, ps)), (xi[None],)), yi[None])

    fn = vmap(grad(one), in_dims=(None, 0, 0))

    def naive():
        g = fn(params, x, y)
        torch.cat([t.reshape(len(x), -1) for t in g], 1)

    results["one vmap"] = _median_ms(naive, max(5, repeats // 3), warmup=2)
    d = sum(p.numel() for p in model.parameters())
    return name, d, results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    dev = torch.device(args.device)
    torch.set_num_threads(args.threads)
    warnings.simplefilter("once")
    from certunlearn_train.models import MLP, SmallCNN
    from certunlearn_train.ops import extension_available
    torch.manual_seed(0)
    B = args.batch
    cases = [
        ("digits MLP 64-64-10", MLP(64, 10, (64,)), torch.rand(B, 1, 8, 8)),
        ("digits CNN", SmallCNN(1, 8, 10), torch.rand(B, 1, 8, 8)),
        ("MLP 784-256-10", MLP(784, 10, (256,)), torch.rand(B, 1, 28, 28)),
    ]
    cases = [(n, m.to(dev), x.to(dev)) for n, m, x in cases]
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else \
        f"cpu, {args.threads} thread(s)"
    print(f"batch {B}, {where}, torch {torch.__version__}, compiled op: "
          f"{extension_available()}; median ms per step (ratio to the plain step)")
    header = f"{'model':<22}{'d':>9}{'plain':>9}{'batch clip':>17}{'per-sample':>17}" \
             f"{'one vmap':>17}  per-sample path"
    print(header)
    print("-" * len(header))
    for name, model, x in cases:
        y = torch.randint(0, 10, (B,), device=dev)
        name, d, r = bench_model(name, model, x, y, args.repeats)
        p = r["plain"]
        cell = lambda k: f"{r[k]:8.2f} ({r[k] / p:4.1f}x)"  # noqa: E731
        print(f"{name:<22}{d:>9}{p:9.2f}{cell('batch clip'):>17}{cell('per-sample'):>17}"
              f"{cell('one vmap'):>17}  {r['path']}")


if __name__ == "__main__":
    main()
