"""Runs read from a Dataset, an IterableDataset or a DataLoader, batch by batch
(certunlearn_train.batches): the same result as tensors where the batches are the same, every
batch checked as it arrives, the batch size the certificate records, bounded memory."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset

from certunlearn_train.baselines import dpsgd_train, output_perturbation, retrain
from certunlearn_train.batches import index_batches
from certunlearn_train.train import train
from certunlearn_train.unlearn import batch_generator_seed, unlearn

from .helpers import Pairs, flat_params, tiny_problem

GC = dict(eps=50.0, delta=1e-5, C0=1.0, C1=0.5, lr=0.05, progress=False)


class Stream(IterableDataset):
    """An iterable dataset without a length."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __iter__(self):
        return iter(zip(self.x, self.y))


class SizedStream(Stream):
    def __len__(self):
        return len(self.y)


def _problem(n=24, seed=0):
    return tiny_problem(n, seed)


def _cert(c):
    return {**c.to_dict(), "created_utc": None}


def test_a_dataset_gives_the_weights_and_certificate_of_tensors():
    model, x, y = _problem()
    a, ca = unlearn(model, (x, y), steps=7, batch_size=5, seed=3, finetune_epochs=1.0,
                    finetune_lr=0.1, **GC)
    b, cb = unlearn(model, Pairs(x, y), steps=7, batch_size=5, seed=3, finetune_epochs=1.0,
                    finetune_lr=0.1, **GC)
    assert torch.equal(flat_params(a), flat_params(b))
    assert _cert(ca) == _cert(cb)


@pytest.mark.parametrize("clip", ["batch", "per_sample"])
def test_a_loader_with_the_tensor_paths_batches_gives_the_same_weights(clip):
    """The tensor path draws its batches from index_batches with the generator seeded by
    batch_generator_seed(seed); a DataLoader handed those index batches is the same run."""
    model, x, y = _problem()
    steps, bs, seed = 7, 5, 4
    gen = torch.Generator().manual_seed(batch_generator_seed(seed))
    it = index_batches(len(y), bs, gen)
    order = [next(it).tolist() for _ in range(steps)]
    loader = DataLoader(Pairs(x, y), batch_sampler=order)
    a, ca = unlearn(model, (x, y), steps=steps, batch_size=bs, clip=clip, seed=seed, **GC)
    b, cb = unlearn(model, loader, steps=steps, batch_size=bs, clip=clip, seed=seed, **GC)
    assert torch.equal(flat_params(a), flat_params(b))
    assert cb.parameters["batch_size"] == bs
    assert {**_cert(ca), "sha256_after": None} == {**_cert(cb), "sha256_after": None}


def test_a_non_shuffling_loader_is_reproducible_and_records_its_batch_size():
    """In order, not in the tensor path's random order: the same seed gives the same weights
    run after run (the noise does not depend on the batches), but not the tensors' weights."""
    model, x, y = _problem(20)
    loader = DataLoader(Pairs(x, y), batch_size=8, shuffle=False)  # 8, 8 and a last batch of 4
    a, ca = unlearn(model, loader, steps=5, seed=5, **GC)
    b, _ = unlearn(model, loader, steps=5, seed=5, **GC)
    c, _ = unlearn(model, (x, y), steps=5, batch_size=8, seed=5, **GC)
    assert torch.equal(flat_params(a), flat_params(b))
    assert not torch.equal(flat_params(a), flat_params(c))
    assert ca.parameters["batch_size"] == 8  # the largest batch, not the last one's 4
    assert ca.retain_size == 20
    ca.verify(a)


def test_a_shuffled_loader_with_workers_gives_a_certificate_that_verifies():
    model, x, y = _problem(30)
    loader = DataLoader(Pairs(x, y), batch_size=7, shuffle=True, num_workers=1)
    out, cert = unlearn(model, loader, epochs=2.0, finetune_epochs=1.0, finetune_lr=0.1, **GC)
    assert cert.parameters["T"] == 2 * len(loader)
    assert cert.parameters["batch_size"] == 7
    report = cert.verify(out)
    assert report.guarantee_recomputed


def test_loader_batch_size_must_match_or_bound_a_batch_sampler():
    model, x, y = _problem(20)
    with pytest.raises(ValueError, match=r"batch_size=16 differs from the batch size of the "
                                         r"DataLoader retain_data \(8\)"):
        unlearn(model, DataLoader(Pairs(x, y), batch_size=8), steps=2, batch_size=16, **GC)
    sampler = [[0, 1, 2], list(range(3, 13))]  # a batch of 10
    with pytest.raises(ValueError, match="batch_sampler: give batch_size="):
        unlearn(model, DataLoader(Pairs(x, y), batch_sampler=sampler), steps=2, **GC)
    with pytest.raises(ValueError, match=r"batch 1 of the run\) holds 10 samples, more than the "
                                         r"8 the run was calibrated for"):
        unlearn(model, DataLoader(Pairs(x, y), batch_sampler=sampler), steps=2, batch_size=8,
                **GC)
    _, cert = unlearn(model, DataLoader(Pairs(x, y), batch_sampler=sampler), steps=2,
                      batch_size=10, **GC)
    assert cert.parameters["batch_size"] == 10


def test_an_iterable_dataset_needs_steps_when_it_has_no_length():
    model, x, y = _problem(20)
    with pytest.raises(ValueError, match=r"epochs needs the number of batches in one pass, and "
                                         r"retain_data \(an IterableDataset without __len__\)"
                                         r".*give steps="):
        unlearn(model, Stream(x, y), epochs=1.0, batch_size=8, **GC)
    out, cert = unlearn(model, Stream(x, y), steps=5, batch_size=8, seed=6, **GC)
    cert.verify(out)
    assert cert.parameters["T"] == 5 and cert.parameters["batch_size"] == 8
    assert cert.retain_size == 36  # no length: the samples read (8 + 8 + 4 + 8 + 8)
    out, cert = unlearn(model, SizedStream(x, y), epochs=2.0, batch_size=8, seed=6, **GC)
    assert cert.parameters["T"] == 6 and cert.retain_size == 20
    cert.verify(out)


class _Bad(Pairs):
    """Sample ``at`` holds ``value`` (in a later batch of an in-order loader)."""

    def __init__(self, x, y, at, what, value):
        super().__init__(x.clone(), y.clone())
        (self.x if what == "inputs" else self.y)[at] = value


@pytest.mark.parametrize("what,value,message", [
    ("inputs", float("nan"), r"retain_data \(batch 2 of the run\) inputs must be finite, "
                             r"sample 2 has NaN or inf"),
    ("targets", 10, r"retain_data \(batch 2 of the run\): labels must lie in \[0, 10\) for a "
                    r"model with 10 outputs, found 10"),
])
@pytest.mark.parametrize("kind", ["loader", "dataset"])
def test_a_bad_batch_midway_stops_the_run_and_leaves_the_model_untouched(what, value, message,
                                                                        kind):
    model, x, y = _problem(24)
    if kind == "loader":  # in order: sample 10 is sample 2 of batch 2
        data = DataLoader(_Bad(x, y, 10, what, value), batch_size=4)
    else:  # the tensor path's order: sample 2 of its batch 2 for this seed
        gen = torch.Generator().manual_seed(batch_generator_seed(7))
        it = index_batches(len(y), 4, gen)
        order = [next(it) for _ in range(3)]
        data = _Bad(x, y, int(order[2][2]), what, value)
    before = [(p.detach().clone(), p.data.data_ptr(), p.requires_grad)
              for p in model.parameters()]
    kwargs = dict(steps=6, batch_size=4, seed=7, inplace=True, finetune_epochs=1.0,
                  finetune_lr=0.1, **GC)
    with pytest.raises(ValueError, match=message):
        unlearn(model, data, **kwargs)
    for p, (v, ptr, rg) in zip(model.parameters(), before):
        assert torch.equal(p.detach(), v) and p.data.data_ptr() == ptr and p.requires_grad == rg


class _Unreadable(Pairs):
    def __getitem__(self, i):
        if i == 10:
            raise OSError(f"disk error reading sample {i}")
        return super().__getitem__(i)


@pytest.mark.parametrize("workers", [0, 1])
def test_a_batch_that_cannot_be_read_stops_the_run_in_one_line(workers):
    """An exception in the user's dataset (here in a worker process) is one ValueError naming
    the argument and the batch; the model given is untouched (inplace=True)."""
    model, x, y = _problem(24)
    before = flat_params(model).clone()
    loader = DataLoader(_Unreadable(x, y), batch_size=4, num_workers=workers)
    with pytest.raises(ValueError, match=r"^retain_data \(batch 2 of the run\): reading the data "
                                         r"failed \(OSError: disk error reading sample 10\)$"):
        unlearn(model, loader, steps=6, inplace=True, **GC)
    assert torch.equal(flat_params(model), before)


def test_what_cannot_be_read_is_refused_naming_the_argument():
    model, x, y = _problem(8)
    with pytest.raises(ValueError, match="retain_data must be a pair .* a DataLoader, got dict"):
        unlearn(model, {"x": x}, steps=2, **GC)

    class Triples(Pairs):
        def __getitem__(self, i):
            return self.x[i], self.y[i], i
    with pytest.raises(ValueError, match=r"retain_data: each sample must be a pair \(x, y\)"):
        unlearn(model, Triples(x, y), steps=2, **GC)
    with pytest.raises(ValueError, match="retain_data is empty"):
        unlearn(model, Pairs(x[:0], y[:0]), steps=2, **GC)
    with pytest.raises(ValueError, match="train_data for dpsgd_train must be tensors or a "
                                         "map-style Dataset, got DataLoader.*Poisson"):
        dpsgd_train(model, DataLoader(Pairs(x, y), batch_size=4), eps=5.0, delta=1e-5,
                    group_size=1, epochs=1.0, lr=0.1, clip=1.0, expected_batch_size=4,
                    progress=False)


def test_baselines_and_train_take_datasets_and_loaders():
    model, x, y = _problem(24)
    ds, loader = Pairs(x, y), DataLoader(Pairs(x, y), batch_size=6, shuffle=True)
    a, ca = retrain(model, (x, y), epochs=1.0, lr=0.1, batch_size=6, seed=1, progress=False)
    b, cb = retrain(model, ds, epochs=1.0, lr=0.1, batch_size=6, seed=1, progress=False)
    assert torch.equal(flat_params(a), flat_params(b))
    _, cc = retrain(model, loader, epochs=1.0, lr=0.1, progress=False)
    assert cc.parameters["batch_size"] == 6 and cc.retain_size == 24
    a, ca = output_perturbation(model, (x, y), eps=5.0, delta=1e-5, C0=1.0, finetune_epochs=1.0,
                                finetune_lr=0.1, batch_size=6, seed=2, progress=False)
    b, cb = output_perturbation(model, ds, eps=5.0, delta=1e-5, C0=1.0, finetune_epochs=1.0,
                                finetune_lr=0.1, batch_size=6, seed=2, progress=False)
    assert torch.equal(flat_params(a), flat_params(b))
    out, cl = output_perturbation(model, loader, eps=5.0, delta=1e-5, C0=1.0,
                                  finetune_epochs=1.0, finetune_lr=0.1, progress=False)
    assert cl.parameters["batch_size"] == 6
    cl.verify(out)
    a, ca = dpsgd_train(model, (x, y), eps=50.0, delta=1e-5, group_size=1, epochs=1.0, lr=0.1,
                        clip=0.5, expected_batch_size=6, seed=3, progress=False)
    b, cb = dpsgd_train(model, ds, eps=50.0, delta=1e-5, group_size=1, epochs=1.0, lr=0.1,
                        clip=0.5, expected_batch_size=6, seed=3, progress=False)
    assert torch.equal(flat_params(a), flat_params(b))
    m1, m2 = tiny_problem(2, 9)[0], tiny_problem(2, 9)[0]
    train(m1, (x, y), epochs=2.0, lr=0.1, batch_size=5, seed=4, progress=False)
    train(m2, ds, epochs=2.0, lr=0.1, batch_size=5, seed=4, progress=False)
    assert torch.equal(flat_params(m1), flat_params(m2))
    train(m2, DataLoader(ds, batch_size=5), epochs=1.0, lr=0.1, progress=False)


_MEMORY_SCRIPT = textwrap.dedent("""
    import json, os, sys, tempfile
    import numpy as np
    import torch
    from torch import nn
    from torch.utils.data import Dataset
    from certunlearn_train.unlearn import unlearn

    torch.set_num_threads(1)
    folder, n = sys.argv[1], int(sys.argv[2])
    shape = (n, 3, 32, 32)
    path = os.path.join(folder, "x.f32")
    rng = np.random.default_rng(0)
    with open(path, "wb") as fh:  # written in small chunks
        for i in range(0, n, 256):
            rng.random((min(256, n - i), 3, 32, 32), dtype=np.float32).tofile(fh)
    labels = rng.integers(0, 10, n)

    def anon():  # anonymous resident memory: what the process itself holds
        for line in open("/proc/self/status"):
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024

    peak = [0]

    def sample():
        peak[0] = max(peak[0], anon())

    class OnDisk(Dataset):
        '''A float32 data set on disk, memory-mapped batch by batch.'''
        def __len__(self):
            return n
        def __getitems__(self, idx):
            idx = np.sort(np.asarray(idx))
            mm = np.memmap(path, dtype=np.float32, mode="r", shape=shape)
            x = torch.from_numpy(np.ascontiguousarray(mm[idx]))
            del mm
            sample()  # a batch in flight
            return [(x[i], int(labels[j])) for i, j in enumerate(idx)]
        def __getitem__(self, i):
            return self.__getitems__([i])[0]

    def loss(out, y):
        value = torch.nn.functional.cross_entropy(out, y)
        sample()  # inside a step: batch, activations, gradients
        return value

    def model():
        torch.manual_seed(0)
        return nn.Sequential(nn.Flatten(), nn.Linear(3072, 16), nn.ReLU(), nn.Linear(16, 10))

    kw = dict(eps=50.0, delta=1e-5, C0=1.0, C1=0.5, lr=0.05, batch_size=256, seed=0,
              progress=False, loss_fn=loss)
    small = (torch.rand(512, 3, 32, 32), torch.randint(0, 10, (512,)))
    unlearn(model(), small, steps=4, **kw)  # warm-up: every buffer of a step at its size
    base = peak[0]
    steps = -(-n // 256)
    unlearn(model(), OnDisk(), steps=steps, **kw)  # one whole pass over the file
    print(json.dumps({"base": base, "peak": peak[0], "bytes": int(np.prod(shape)) * 4,
                      "steps": steps}))
""")


def test_a_run_over_a_memory_mapped_data_set_does_not_load_it(tmp_path):
    """One pass over a 200 MB float32 file read through a Dataset: the resident memory grows by
    far less than the file (measured in a fresh process).

    The measure is RssAnon (/proc/self/status), the memory the process itself holds, read
    whenever a batch is in flight (each fetch and each loss); its largest value over the run is
    compared with its largest value over a warm-up run on 512 samples in memory. VmHWM is no
    measure here: it also counts the file's page-cache pages the kernel maps in around each
    access (on recent kernels whole large folios, most of a freshly written file for one batch
    of random rows), which the run does not hold and the kernel can drop at any time."""
    n = 200 * 2 ** 20 // (3 * 32 * 32 * 4)
    repo = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=str(repo), OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT, str(tmp_path), str(n)],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["bytes"] >= 200 * 2 ** 20 - 3 * 32 * 32 * 4
    growth = r["peak"] - r["base"]
    assert growth < 100 * 2 ** 20, f"peak memory grew by {growth / 2 ** 20:.0f} MiB"
