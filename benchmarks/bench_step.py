"""Speed of one noisy step: the fused op against the alternatives, side by side in one run.

For each (B, d) (float32 per-sample gradients G of shape (B, d), flat params of d), prints the
median wall time over ``--repeats`` runs of

* ``G.sum(0)``: one read of G, the floor for any step that must read every gradient;
* the fused op ``certunlearn_train.ops.noisy_step_`` (clip, noise, projection), computing the
  row norms itself and with precomputed norms;
* the eager pure-PyTorch reference (float32 accumulation; Philox noise in torch ops);
* ``torch.compile`` of that reference with the noise switched off, plus the op's noise added
  eagerly (the same step, noise after the projection), and ``torch.compile`` of the whole
  reference including its Philox rounds (compiling those took more than ten minutes on a 2-core
  CPU, so on the CPU this row runs only when ``--skip`` is given explicitly without it); a row
  whose compilation fails is skipped with the reason;
* Opacus ``DPOptimizer.step`` on the same per-sample gradients (skipped if Opacus is missing;
  install it for the benchmark only with ``pip install opacus --no-deps``);
* on CUDA, a device-to-device ``clone`` of G, the card's copy bandwidth;

with GB/s counted as the bytes a single-pass step must move, (B d + 2 d) * 4, and ratios against
the fused op.

Usage: python benchmarks/bench_step.py [--device cpu|cuda] [--sizes 1x1e7,256x1e6]
       [--repeats 5] [--skip compile,compile-full,opacus,reference]
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
import warnings

import torch

sys.path.insert(0, __import__("os").path.join(__import__("os").path.dirname(__file__), ".."))
from certunlearn_train import ops  # noqa: E402
from tests.kernel import reference as R  # noqa: E402  (the pure-PyTorch reference)

DEFAULT_SIZES = "1x1e7,64x1e5,256x1e6,1024x1e6"
LR, CLIP, STD, RADIUS = 0.1, 1.0, 0.01, 100.0


def parse_sizes(text: str) -> list[tuple[int, int]]:
    sizes = []
    for item in text.split(","):
        b, _, d = item.strip().partition("x")
        try:
            sizes.append((int(float(b)), int(float(d))))
        except ValueError:
            raise SystemExit(f"bench_step.py: --sizes wants BxD items like 256x1e6, got {item!r}") from None
    return sizes


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, repeats: int, budget_s: float = 20.0) -> float:
    """Median seconds of ``fn()`` after one warm-up call; fewer repeats for very slow calls."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    first = time.perf_counter() - start
    n = max(1, min(repeats, int(budget_s / max(first, 1e-9))))
    times = []
    for _ in range(n):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def opacus_step(x: torch.Tensor, G: torch.Tensor, B: int):
    """A closure running Opacus DPOptimizer.step on per-sample gradients G; None if unavailable."""
    try:
        from opacus.optimizers import DPOptimizer
    except Exception as exc:  # ImportError or a version mismatch
        return None, f"{type(exc).__name__}: {exc}"
    p = torch.nn.Parameter(x.clone())
    opt = DPOptimizer(torch.optim.SGD([p], lr=LR), noise_multiplier=STD / CLIP,
                      max_grad_norm=CLIP, expected_batch_size=B)

    def run():
        p.grad_sample = G.detach()  # a fresh tensor object: Opacus marks grad_sample as processed
        p.summed_grad = None
        p.grad = None
        opt.step()

    return run, None


def bench_size(B: int, d: int, device: torch.device, repeats: int, skip: set[str]) -> None:
    gen = torch.Generator(device="cpu").manual_seed(0)
    G = torch.empty(B, d, device=device)
    if device.type == "cpu":
        G.uniform_(-1.0, 1.0, generator=gen)
    else:
        G.uniform_(-1.0, 1.0)
    G.mul_(2.0 / math.sqrt(d))  # row norms around 1.15: some rows clipped, some not
    x = torch.randn(d, generator=gen).to(device)
    norms = torch.linalg.vector_norm(G, dim=1)
    stream = ops.NoiseStream(seed=1)
    kw = dict(lr=LR, clip=CLIP, noise_std=STD, radius=RADIUS)
    step_bytes = (B * d + 2 * d) * 4

    rows: list[tuple[str, float | None, str]] = []

    def add(name, fn, note=""):
        try:
            rows.append((name, timed(fn, device, repeats), note))
        except Exception as exc:
            rows.append((name, None, f"skipped: {type(exc).__name__}: {str(exc).splitlines()[0]}"))

    add("one read of G: G.sum(0)", lambda: G.sum(0))
    if device.type == "cuda":
        add("copy of G: G.clone()", lambda: G.clone())

    def fused():
        seed, off = stream.take(d)
        ops.noisy_step_(x, G, seed=seed, offset=off, **kw)

    def fused_norms():
        seed, off = stream.take(d)
        ops.noisy_step_(x, G, seed=seed, offset=off, norms=norms, **kw)

    add("fused op", fused, "" if ops.extension_available() else "REFERENCE FALLBACK")
    add("fused op, precomputed norms", fused_norms)

    def reference():
        seed, off = stream.take(d)
        R.noisy_step_reference(x, G, seed=seed, offset=off, accumulate_dtype=torch.float32, **kw)

    if "reference" not in skip:
        add("eager reference (torch)", reference)
    if "compile" not in skip:
        # The reference with the noise switched off, compiled, plus the op's noise added eagerly:
        # the same step (noise after the projection) without tracing the Philox rounds.
        compiled_arith = torch.compile(R.noisy_step_reference)
        kw_quiet = dict(kw, noise_std=0.0)

        def reference_compiled_arith():
            seed, off = stream.take(d)
            compiled_arith(x, G, seed=1, offset=0, accumulate_dtype=torch.float32, **kw_quiet)
            x.add_(ops.gaussian_noise(d, seed, off, device=device), alpha=STD)

        add("torch.compile(ref), eager noise", reference_compiled_arith)
    if "compile-full" not in skip:
        compiled = torch.compile(R.noisy_step_reference)

        def reference_compiled():
            # Fixed (seed, offset): new Python ints on every call would make torch.compile
            # recompile (fine for timing; a real run must never reuse counters).
            compiled(x, G, seed=1, offset=0, accumulate_dtype=torch.float32, **kw)

        add("torch.compile(reference)", reference_compiled)
    if "opacus" not in skip:
        run, why = opacus_step(x, G, B)
        if run is None:
            rows.append(("Opacus DPOptimizer.step", None, f"skipped: {why}"))
        else:
            add("Opacus DPOptimizer.step", run)

    fused_t = dict((n, t) for n, t, _ in rows).get("fused op")
    print(f"\n(B, d) = ({B}, {d:.0e})  G = {B * d * 4 / 1e9:.2f} GB float32, device {device}")
    print(f"  {'variant':34s} {'median ms':>10s} {'GB/s':>8s} {'time / fused':>13s}")
    sys.stdout.flush()
    for name, t, note in rows:
        if t is None:
            print(f"  {name:34s} {'-':>10s} {'-':>8s} {'-':>13s}  {note}")
            continue
        nbytes = 2 * B * d * 4 if name.startswith("copy") else (
            B * d * 4 if name.startswith("one read") else step_bytes)
        ratio = f"{t / fused_t:13.2f}" if fused_t else f"{'-':>13s}"
        print(f"  {name:34s} {t * 1e3:10.2f} {nbytes / t / 1e9:8.1f} {ratio}  {note}")
    times = {n: t for n, t, _ in rows if t is not None}
    if fused_t:
        summary = []
        if "Opacus DPOptimizer.step" in times:
            summary.append(f"Opacus/fused = {times['Opacus DPOptimizer.step'] / fused_t:.2f}x")
        if "eager reference (torch)" in times:
            summary.append(f"eager/fused = {times['eager reference (torch)'] / fused_t:.2f}x")
        floor = times.get("one read of G: G.sum(0)")
        if floor and "fused op, precomputed norms" in times:
            summary.append(f"fused(norms)/one-read = {times['fused op, precomputed norms'] / floor:.2f}x")
        if "copy of G: G.clone()" in times:
            copy_bw = 2 * B * d * 4 / times["copy of G: G.clone()"]
            for name in ("fused op", "fused op, precomputed norms"):
                if name in times:
                    summary.append(f"{name}: {100 * step_bytes / times[name] / copy_bw:.0f}% of copy "
                                   f"bandwidth ({copy_bw / 1e9:.0f} GB/s)")
        print("  " + "; ".join(summary), flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help=f"BxD list (default {DEFAULT_SIZES})")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per variant (median)")
    parser.add_argument("--skip", default=None,
                        help="comma list of: reference, compile, compile-full, opacus (default: "
                             "compile-full on the CPU, where compiling the Philox rounds takes more "
                             "than ten minutes on small machines; nothing on CUDA)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench_step.py: --device cuda but no CUDA device is available", file=sys.stderr)
        return 2
    if args.repeats < 1:
        print("bench_step.py: --repeats must be >= 1", file=sys.stderr)
        return 2
    if args.skip is None:
        args.skip = "compile-full" if device.type == "cpu" else ""
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    unknown = skip - {"reference", "compile", "compile-full", "opacus"}
    if unknown:
        print(f"bench_step.py: unknown --skip items {sorted(unknown)}", file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    ext = "loaded" if ops.extension_available() else \
        "MISSING: " + str(ops.extension_unavailable_reason())
    print(f"noisy step benchmark: torch {torch.__version__}, device {device} ({name}), "
          f"{torch.get_num_threads()} threads, extension {ext}"
          f"{', CUDA kernels' if ops.cuda_kernels_available() else ''}; lr={LR} clip={CLIP} "
          f"noise_std={STD} radius={RADIUS}; medians of {args.repeats}")
    warnings.simplefilter("once")
    for B, d in parse_sizes(args.sizes):
        bench_size(B, d, device, args.repeats, skip)
    return 0


if __name__ == "__main__":
    sys.exit(main())
