"""Noisy steps per second at 1 and 2 ranks (data parallel), and the all-reduce's share of a step.

For each model (the digits MLP 64-64-10 and a CIFAR-shaped SmallCNN on 3x32x32 inputs) and each
clipping mode, every rank runs what ``unlearn()`` runs per step in a process group: its slice of
a global batch of B samples (default 256) through the local gradient source, the all-reduce of
the gradient sum (:class:`certunlearn_train.distributed.DistributedGradients`), and the fused
noisy step on the replicated parameters. Reported: global steps per second (median step time
over ``--repeats`` steps, after warm-up, the slowest rank's), the speed-up over one process, and
the share of a step spent inside the all-reduce call (which includes waiting for the slower rank).

Run (CPU, gloo; the script spawns the ranks itself):
    .venv/bin/python benchmarks/bench_distributed.py [--batch 256] [--repeats 30] [--worlds 1 2]
Run (GPUs, NCCL; one process per GPU, started by torchrun):
    torchrun --nproc_per_node 2 benchmarks/bench_distributed.py --device cuda
"""
from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import tempfile
import time
import warnings

import torch

MODELS = ("mlp", "cnn")
CLIPS = ("batch", "per_sample")


def _build(name, device):
    from certunlearn_train.models import MLP, SmallCNN
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    if name == "mlp":
        model, shape = MLP(64, 10, (64,)), (1, 8, 8)
    else:
        model, shape = SmallCNN(3, 32, 10), (3, 32, 32)
    x = torch.rand((2048,) + shape, generator=g)
    y = torch.randint(0, 10, (2048,), generator=g)
    return model.to(device), x.to(device), y.to(device)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(name, clip, batch, repeats, device):
    """Median step seconds and median all-reduce seconds on this rank (in a group or not)."""
    from certunlearn_train import distributed
    from certunlearn_train._flat import FlatParameters, GradientSource
    from certunlearn_train.ops import NoiseStream, noisy_step_
    model, x, y = _build(name, device)
    flat = FlatParameters(model)
    source = distributed.gradient_source(
        GradientSource(model, flat, clip, 1.0, torch.nn.functional.cross_entropy, batch), flat)
    if isinstance(source, distributed.DistributedGradients):
        source.every = 10 ** 9  # the replica check is timed apart (see check_ms)
    noise = NoiseStream(seed=1)
    gen = torch.Generator().manual_seed(distributed.from_rank0(5))
    reduce_s = []
    original = distributed._all_reduce

    def timed(t, op, what):
        _sync(device)
        t0 = time.perf_counter()
        out = original(t, op, what)
        _sync(device)
        reduce_s.append(time.perf_counter() - t0)
        return out

    distributed._all_reduce = timed
    step_s = []
    try:
        model.train()
        for _ in range(repeats + 5):
            idx = torch.randperm(len(y), generator=gen)[:batch].to(device)
            _sync(device)
            t0 = time.perf_counter()
            grads = source(x[idx], y[idx])
            s, o = noise.take(flat.numel)
            noisy_step_(flat.flat, grads, lr=1e-3, clip=1.0, noise_std=1e-3, seed=s, offset=o)
            _sync(device)
            step_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        for _ in range(10):
            distributed.check_replicas(flat.flat)
        _sync(device)
        check_s = (time.perf_counter() - t0) / 10
    finally:
        distributed._all_reduce = original
    step = statistics.median(step_s[5:])
    red = statistics.median(reduce_s[5:]) if reduce_s else 0.0
    return step, red, check_s if distributed.active() else 0.0, flat.numel


def run_all(args, device):
    """Every (model, clip) row on this rank; the slowest rank's times (max over ranks)."""
    from certunlearn_train import distributed
    rows = []
    for name in args.models:
        for clip in args.clips:
            step, red, check, d = measure(name, clip, args.batch, args.repeats, device)
            if distributed.active():
                t = torch.tensor([step, red, check], dtype=torch.float64)
                distributed._all_reduce(t, distributed._reduce_op("MAX"), "benchmark times")
                step, red, check = t.tolist()
            rows.append((name, clip, d, step, red, check))
    return rows


def _worker(rank, world, store, args, out):
    import torch.distributed as dist
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=300))
    rows = run_all(args, torch.device("cpu"))
    if rank == 0:
        torch.save(rows, out)
    dist.destroy_process_group()


def spawn(world, args):
    import multiprocessing
    if world == 1:
        torch.set_num_threads(args.threads)
        return run_all(args, torch.device("cpu"))
    ctx = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "rows.pt")
        procs = [ctx.Process(target=_worker, args=(r, world, os.path.join(tmp, "store"), args,
                                                   out)) for r in range(world)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        if any(p.exitcode for p in procs):
            sys.exit(f"a rank failed: exit codes {[p.exitcode for p in procs]}")
        return torch.load(out, weights_only=False)


def report(results, batch):
    print(f"global batch {batch}; times are medians, the slowest rank's")
    print(f"{'model':5} {'clip':10} {'d':>7} {'ranks':>5} {'step ms':>8} {'steps/s':>8} "
          f"{'speed-up':>8} {'allreduce':>9} {'check ms':>8}")
    base = {}  # one-rank times, when that row was measured
    for world, rows in results:
        for name, clip, d, step, red, check in rows:
            if world == 1:
                base[(name, clip)] = step
            speedup = f"{base[(name, clip)] / step:7.2f}x" if (name, clip) in base else \
                f"{'-':>8}"
            print(f"{name:5} {clip:10} {d:7d} {world:5d} {1e3 * step:8.2f} {1 / step:8.1f} "
                  f"{speedup} {100 * red / step:8.1f}% {1e3 * check:8.3f}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=256, help="global batch size")
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--threads", type=int, default=1, help="torch threads per rank (CPU)")
    p.add_argument("--worlds", type=int, nargs="+", default=[1, 2],
                   help="numbers of ranks to spawn (CPU, gloo)")
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    p.add_argument("--clips", nargs="+", choices=CLIPS, default=list(CLIPS))
    p.add_argument("--device", default="cpu", help="cpu, or cuda under torchrun")
    args = p.parse_args()
    warnings.simplefilter("ignore")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 or args.device != "cpu":
        # started by torchrun (or on one GPU): this process is one rank of the group
        from certunlearn_train import distributed
        started = distributed.init_from_env()
        device = distributed.device() or torch.device(args.device)
        rows = run_all(args, device)
        if distributed.is_writer():
            report([(distributed.world_size(), rows)], args.batch)
        distributed.shutdown(started)
        return
    report([(w, spawn(w, args)) for w in args.worlds], args.batch)


if __name__ == "__main__":
    main()
