"""Noisy-phase steps read from disk through a DataLoader against the same steps from memory.

The model is the CIFAR-shaped CNN (``certunlearn_train.models.SmallCNN(3, 32, 10)``). The data
are ``--n`` random float32 images of 3x32x32 written to a temporary folder and read through a
``Dataset`` over an ``np.memmap`` (each worker maps the file itself), by a ``DataLoader`` with
``--workers`` workers, ``shuffle=True``, ``pin_memory`` on CUDA. The reference is the same
number of steps of ``unlearn()`` on the same data as in-memory tensors.

Both run through ``unlearn(clip=...)`` with the same settings; the per-step time is the gap
between two consecutive calls of the loss (one per noisy step), so worker start-up and the
checks before the first step are not counted. Rows are interleaved over ``--rounds`` (a burst of
load from other processes hits both alike); the table shows the median step of each and the
ratio disk / memory from the same run (goal: within 10%).

Run: .venv/bin/python benchmarks/bench_data.py [--n 4096] [--batch 128] [--steps 40]
     [--workers 2] [--rounds 2] [--threads 1] [--clip batch]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from certunlearn_train.models import SmallCNN  # noqa: E402
from certunlearn_train.unlearn import unlearn  # noqa: E402

SHAPE = (3, 32, 32)


class MemmapImages(Dataset):
    """Images in a raw float32 file, memory-mapped once per process, labels in memory."""

    def __init__(self, path: str, labels: np.ndarray):
        self.path, self.labels, self._mm = path, labels, None

    def __len__(self):
        return len(self.labels)

    def _map(self):
        if self._mm is None:
            self._mm = np.memmap(self.path, dtype=np.float32, mode="r",
                                 shape=(len(self.labels),) + SHAPE)
        return self._mm

    def __getstate__(self):  # workers map the file themselves
        return {**self.__dict__, "_mm": None}

    def __getitem__(self, i):
        return torch.from_numpy(np.array(self._map()[i])), int(self.labels[i])

    def __getitems__(self, idx):
        rows = np.asarray(idx)
        x = torch.from_numpy(np.ascontiguousarray(self._map()[rows]))
        return list(zip(x, self.labels[rows].tolist()))


def _write(folder: str, n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    path = os.path.join(folder, "images.f32")
    with open(path, "wb") as fh:
        for i in range(0, n, 512):
            rng.random((min(512, n - i),) + SHAPE, dtype=np.float32).tofile(fh)
    return path, rng.integers(0, 10, n)


def _step_times(data, args, device):
    stamps = []

    def loss(out, y):
        stamps.append(time.perf_counter())
        return F.cross_entropy(out, y)

    torch.manual_seed(0)
    model = SmallCNN(3, 32, 10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        unlearn(model, data, eps=1.0, delta=1e-5, C0=1.0, C1=1.0, lr=0.01, steps=args.steps,
                clip=args.clip, seed=0, loss_fn=loss, device=device, progress=False,
                **({} if isinstance(data, DataLoader) else {"batch_size": args.batch}))
    gaps = np.diff(np.array(stamps[-args.steps:])) * 1e3
    return list(gaps[2:])  # the first steps warm up caches and workers


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=4096)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--clip", default="batch", choices=("batch", "per_sample"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory() as folder:
        path, labels = _write(folder, args.n)
        ds = MemmapImages(path, labels)
        x = torch.from_numpy(np.fromfile(path, dtype=np.float32).reshape((args.n,) + SHAPE))
        y = torch.from_numpy(labels)
        loader = DataLoader(ds, batch_size=args.batch, shuffle=True, num_workers=args.workers,
                            pin_memory=device == "cuda", persistent_workers=False)
        memory, disk = [], []
        for _ in range(args.rounds):
            memory += _step_times((x, y), args, device)
            disk += _step_times(loader, args, device)
    m, d = statistics.median(memory), statistics.median(disk)
    print(f"device {device}, threads {args.threads}, n {args.n} ({args.n * 12288 / 2**20:.0f} MiB "
          f"on disk), batch {args.batch}, clip {args.clip}, {args.steps} steps x {args.rounds} "
          f"rounds, DataLoader workers {args.workers}")
    print("| source | median ms/step | steps timed |")
    print("| --- | --- | --- |")
    print(f"| in-memory tensors | {m:.2f} | {len(memory)} |")
    print(f"| DataLoader over np.memmap | {d:.2f} | {len(disk)} |")
    print(f"ratio disk / memory: {d / m:.3f}")


if __name__ == "__main__":
    main()
