"""Per-step cost of a per-sample-clipped noisy step against a plain SGD step, and against Opacus.

For each model and batch size, in one run, times (median of repeated runs after warm-up):

* plain:       zero_grad, forward, backward, SGD update (torch.optim.SGD, no momentum);
* ours:        what ``unlearn(clip="per_sample")`` runs per step: ``GradientSource`` (ghost norms
               and the clipped mean from the layers' inputs and output gradients, no per-sample
               gradients, for models whose layers all have a rule; torch.func rows otherwise),
               then the fused noisy step (clip, Gaussian noise, projection);
* opacus hooks: Opacus ``GradSampleModule`` (per-sample gradients by hooks) + ``DPOptimizer``;
* opacus ghost: Opacus ``GradSampleModuleFastGradientClipping`` (ghost clipping: two backward
               passes) + ``DPOptimizerFastGradientClipping`` + ``DPLossFastGradientClipping``.

Opacus rows appear when opacus is installed (benchmark-only; ``pip install --no-deps opacus``).
All rows use clip 1.0 and Gaussian noise; "ratio" is ours / plain and "vs opacus" is the faster
Opacus mode / ours, both from the same run. Timings on a shared CPU are noisy: run with
``--threads 1`` and several ``--rounds`` (each round times every row ``--repeats`` times,
rows interleaved, so a burst of load from other processes hits all rows alike). The table shows
the ``--quantile`` (default 0.2) of all timed calls of a row: on a machine where other
processes preempt the benchmark, low quantiles estimate the unloaded cost and medians mostly
measure the load.

Every row runs in one process under the same allocator settings: ``--malloc keep`` (default,
what the ``certunlearn`` command sets) keeps freed memory for reuse; ``--malloc default`` leaves
glibc's settings, under which multi-megabyte tensors page-fault every step (both the plain and
the per-sample rows pay it, the per-sample ones more).

Run: .venv/bin/python benchmarks/bench_unlearn.py [--batch 64,256] [--threads 1] [--repeats 20]
     [--rounds 3] [--malloc keep|default]
     [--models digits-mlp,digits-cnn,mlp-784,cifar-cnn,embedding,resnet18-gn]
     (resnet18-gn: ResNet-18 with GroupNorm, benchmarks/resnet_gn.py; slow, so not a default)
"""
from __future__ import annotations

import argparse
import copy
import os
import platform
import sys
import time
import warnings

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))
from resnet_gn import ResNet18GN  # noqa: E402

LR, CLIP, SIGMA = 1e-3, 1.0, 1e-4


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _times_ms(fn, repeats, warmup=2):
    for _ in range(warmup):
        fn()
    _sync()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        _sync()
        times.append(1e3 * (time.perf_counter() - t))
    return times


def _quantile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


class CifarCNN(nn.Module):
    """3x32x32 input, four 3x3 convolutions (the last three with stride 2), GroupNorm after the
    first, then a linear classifier: about 0.43M parameters."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.c1 = nn.Conv2d(3, 32, 3, padding=1)
        self.n1 = nn.GroupNorm(4, 32)
        self.c2 = nn.Conv2d(32, 64, 3, padding=1, stride=2)
        self.c3 = nn.Conv2d(64, 128, 3, padding=1, stride=2)
        self.c4 = nn.Conv2d(128, 256, 3, padding=1, stride=2)
        self.fc = nn.Linear(256 * 4 * 4, num_classes)

    def forward(self, x):
        x = torch.relu(self.n1(self.c1(x)))
        x = torch.relu(self.c2(x))
        x = torch.relu(self.c3(x))
        x = torch.relu(self.c4(x))
        return self.fc(x.flatten(1))


class TokenModel(nn.Module):
    """Token ids (B, 16) from a vocabulary of 1000: Embedding(1000, 64), LayerNorm, a Linear
    applied per token, mean over tokens, Linear to the classes."""

    def __init__(self, vocab=1000, dim=64, num_classes=10):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.norm = nn.LayerNorm(dim)
        self.mix = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, num_classes)

    def forward(self, ids):
        h = torch.tanh(self.mix(self.norm(self.emb(ids))))
        return self.out(h.mean(1))


def cases(names, B, dev):
    from certunlearn_train.models import MLP, SmallCNN
    g = torch.Generator().manual_seed(0)
    table = {
        "digits-mlp": ("digits MLP 64-64-10", lambda: MLP(64, 10, (64,)),
                       lambda: torch.rand(B, 1, 8, 8, generator=g)),
        "digits-cnn": ("digits CNN", lambda: SmallCNN(1, 8, 10),
                       lambda: torch.rand(B, 1, 8, 8, generator=g)),
        "mlp-784": ("MLP 784-256-10", lambda: MLP(784, 10, (256,)),
                    lambda: torch.rand(B, 1, 28, 28, generator=g)),
        "cifar-cnn": ("CIFAR-shaped CNN", CifarCNN, lambda: torch.rand(B, 3, 32, 32, generator=g)),
        "embedding": ("embedding, 16 tokens", TokenModel,
                      lambda: torch.randint(0, 1000, (B, 16), generator=g)),
        "resnet18-gn": ("ResNet-18 GroupNorm", ResNet18GN,
                        lambda: torch.rand(B, 3, 32, 32, generator=g)),
    }
    for key in names:
        label, build, data = table[key]
        torch.manual_seed(0)
        yield label, build().to(dev), data().to(dev), torch.randint(0, 10, (B,), generator=g).to(dev)


def step_functions(model, x, y, with_opacus):
    from certunlearn_train._flat import FlatParameters, GradientSource
    from certunlearn_train.ops import NoiseStream, noisy_step_
    fns, info = {}, {}

    plain_model = copy.deepcopy(model)
    opt = torch.optim.SGD(plain_model.parameters(), lr=LR)

    def plain():
        opt.zero_grad()
        F.cross_entropy(plain_model(x), y).backward()
        opt.step()
    fns["plain"] = plain

    ours_model = copy.deepcopy(model)
    flat = FlatParameters(ours_model)
    src = GradientSource(ours_model, flat, "per_sample", CLIP, F.cross_entropy, len(x))
    src.probe(x, y)
    noise = NoiseStream()

    def ours():
        grads = src(x, y)
        s, o = noise.take(flat.numel)
        noisy_step_(flat.flat, grads, lr=LR, clip=CLIP, noise_std=SIGMA, seed=s, offset=o,
                    norms=src.norms)
    fns["ours"] = ours
    info["route"] = lambda: src.route

    if with_opacus:
        from opacus import GradSampleModule
        from opacus.grad_sample import GradSampleModuleFastGradientClipping
        from opacus.optimizers import DPOptimizer, DPOptimizerFastGradientClipping
        from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping

        hooks_model = GradSampleModule(copy.deepcopy(model))
        hooks_opt = DPOptimizer(torch.optim.SGD(hooks_model.parameters(), lr=LR),
                                noise_multiplier=SIGMA, max_grad_norm=CLIP,
                                expected_batch_size=len(x))

        def opacus_hooks():
            hooks_opt.zero_grad()
            F.cross_entropy(hooks_model(x), y).backward()
            hooks_opt.step()
        fns["opacus hooks"] = opacus_hooks

        ghost_model = GradSampleModuleFastGradientClipping(
            copy.deepcopy(model), max_grad_norm=CLIP, use_ghost_clipping=True)
        ghost_opt = DPOptimizerFastGradientClipping(
            torch.optim.SGD(ghost_model.parameters(), lr=LR), noise_multiplier=SIGMA,
            max_grad_norm=CLIP, expected_batch_size=len(x))
        criterion = DPLossFastGradientClipping(ghost_model, ghost_opt,
                                               nn.CrossEntropyLoss(reduction="mean"))

        def opacus_ghost():
            ghost_opt.zero_grad()
            criterion(ghost_model(x), y).backward()
            ghost_opt.step()
        fns["opacus ghost"] = opacus_ghost
    return fns, info


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", default="64,256", help="comma-separated batch sizes")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per row and round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--quantile", type=float, default=0.2,
                        help="quantile of all timed calls shown (0.5 = median)")
    parser.add_argument("--models", default="digits-mlp,digits-cnn,mlp-784,cifar-cnn,embedding")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-opacus", action="store_true")
    parser.add_argument("--malloc", choices=("keep", "default"), default="keep",
                        help="keep: glibc keeps freed memory (certunlearn_train.allocator, what "
                             "the certunlearn command does); default: glibc's own settings, "
                             "under which large tensors page-fault every step")
    args = parser.parse_args(argv)
    if args.malloc == "keep":
        from certunlearn_train.allocator import keep_freed_memory
        if not keep_freed_memory():
            args.malloc = "default (keep_freed_memory does not apply here)"
    dev = torch.device(args.device)
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    try:
        import opacus
        with_opacus = not args.no_opacus
        opacus_version = opacus.__version__
    except ImportError:
        with_opacus, opacus_version = False, "not installed"
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else \
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, " \
        f"{args.threads} thread(s)"
    print(f"{where}; torch {torch.__version__}; opacus {opacus_version}; malloc "
          f"{args.malloc}; ms per step, "
          f"{args.quantile:g}-quantile of {args.rounds} round(s) x {args.repeats} calls; "
          f"ratio = ours / plain; vs opacus = fastest Opacus mode / ours")
    cols = ["plain", "ours", "opacus hooks", "opacus ghost"] if with_opacus else ["plain", "ours"]
    header = f"{'model':<22}{'B':>5}{'d':>9}" + "".join(f"{c:>14}" for c in cols) + \
        f"{'ratio':>8}" + (f"{'vs opacus':>11}" if with_opacus else "") + "  our route"
    print(header)
    print("-" * len(header))
    for B in [int(b) for b in args.batch.split(",")]:
        for label, model, x, y in cases(args.models.split(","), B, dev):
            fns, info = step_functions(model, x, y, with_opacus)
            calls = {k: [] for k in fns}
            for _ in range(args.rounds):
                for k, fn in fns.items():
                    calls[k] += _times_ms(fn, args.repeats)
            ms = {k: _quantile(v, args.quantile) for k, v in calls.items()}
            d = sum(p.numel() for p in model.parameters())
            line = f"{label:<22}{B:>5}{d:>9}" + "".join(f"{ms[c]:>14.2f}" for c in cols)
            line += f"{ms['ours'] / ms['plain']:>7.2f}x"
            if with_opacus:
                line += f"{min(ms['opacus hooks'], ms['opacus ghost']) / ms['ours']:>10.2f}x"
            print(line + f"  {info['route']()}", flush=True)


if __name__ == "__main__":
    main()
