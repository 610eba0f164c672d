"""Where a run reads its data from, one batch at a time: tensors, a ``Dataset``, an
``IterableDataset`` or a ``DataLoader``.

:func:`as_batches` turns what the caller gave into a :class:`Batches`:

* a pair ``(x, y)``, a ``TensorDataset`` or an ``ArrayDataset``: :class:`TensorBatches`, the data
  in memory on the run's device (as before); batches are a fresh random permutation each pass;
* a map-style ``Dataset`` of ``(x, y)`` samples: :class:`DatasetBatches`, the same index batches
  as for tensors (same generator, so the same samples in the same order), each read from the
  dataset and collated when it is used;
* an ``IterableDataset``: :class:`IterableBatches`, its samples in the order it yields them, in
  batches of ``batch_size``; a new pass starts when it ends;
* a ``DataLoader``: :class:`LoaderBatches`, the loader's own batches (its batch size, sampler,
  workers, ``collate_fn``, ``pin_memory``); a new pass starts when it ends.

Every batch that does not come from memory is checked as it arrives (complex or non-finite
values, non-integer class labels, labels outside the model's outputs, a batch larger than the
run was calibrated for) and moved to the run's device; only the batches in flight are held.

Under a process group each rank reads only its part of every global batch: for tensors and a
map-style dataset the part :func:`certunlearn_train.distributed.local_range` assigns it; a
``DataLoader`` or an ``IterableDataset`` must be sharded by the user (a ``DistributedSampler``,
or an iterable that yields each rank its own samples); the global batch size of each step is the
sum of the ranks' parts.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Optional, Tuple

import torch

from . import distributed
from .checks import check_data, check_int, is_class_loss

__all__ = ["DataReadError", "DataFormatError", "Batches", "TensorBatches", "DatasetBatches",
           "IterableBatches", "LoaderBatches", "as_batches", "index_batches", "convert_pair",
           "tensor_pair", "is_stream"]

#: One step's data on this rank: inputs, targets (None when this rank has no part of the
#: batch) and the size of the global batch.
Step = Tuple[Optional[torch.Tensor], Optional[torch.Tensor], int]


def index_batches(n: int, batch_size: int, generator: torch.Generator):
    """Endless stream of index batches: a fresh random permutation each pass, split in order."""
    while True:
        perm = torch.randperm(n, generator=generator)
        for i in range(0, n, batch_size):
            yield perm[i:i + batch_size]


def convert_pair(raw_x, raw_y, device=None, dtype: Optional[torch.dtype] = None,
                 loss_fn: Optional[Callable] = None, name: str = "data"):
    """``(x, y)`` as checked tensors: floating values cast to ``dtype``, integer inputs kept,
    integer targets widened to int64, on ``device`` (see :func:`certunlearn_train.train.as_tensors`)."""
    import torch.nn.functional as F
    loss_fn = F.cross_entropy if loss_fn is None else loss_fn
    try:
        x = torch.as_tensor(raw_x)
        y = torch.as_tensor(raw_y)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{name} must be numeric arrays or tensors: {exc}") from None
    if x.dim() == 0 or y.dim() == 0 or x.shape[:1] != y.shape[:1]:
        raise ValueError(f"{name}: x and y must have the same length, got shapes "
                         f"{tuple(x.shape)} and {tuple(y.shape)}")
    if x.dtype == torch.bool:
        x = x.float()
    y = check_data(x, y, loss_fn, name)
    if x.is_floating_point() and dtype is not None:
        x = x.to(dtype)
    if y.is_floating_point():
        if dtype is not None:
            y = y.to(dtype)
    elif y.dtype != torch.bool:
        y = y.to(torch.int64)
    if device is not None and torch.device(device).type == "cuda":
        return x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    return x.to(device), y.to(device)


def tensor_pair(data, name: str = "data"):
    """The raw ``(x, y)`` of a pair, a ``TensorDataset`` or an ``ArrayDataset`` (unconverted)."""
    from torch.utils.data import TensorDataset

    from .data import ArrayDataset
    if isinstance(data, ArrayDataset):
        return data.x, data.y
    if isinstance(data, TensorDataset):
        if len(data.tensors) != 2:
            raise ValueError(f"a TensorDataset must hold (x, y), got {len(data.tensors)} tensors")
        return data.tensors
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return data
    raise ValueError(f"{name} must be a pair (x, y), a TensorDataset, an ArrayDataset, a "
                     "Dataset of (x, y) samples, an IterableDataset or a DataLoader, got "
                     f"{type(data).__name__}")


def _kind(data) -> Optional[str]:
    from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

    from .data import ArrayDataset
    if isinstance(data, (ArrayDataset, TensorDataset)) or (
            isinstance(data, (tuple, list)) and len(data) == 2):
        return "tensors"
    if isinstance(data, DataLoader):
        return "loader"
    if isinstance(data, IterableDataset):
        return "iterable"
    if isinstance(data, Dataset) or (hasattr(data, "__getitem__") and hasattr(data, "__len__")
                                     and not isinstance(data, (str, bytes, dict))):
        return "dataset"
    return None


def is_stream(data) -> bool:
    """Whether ``data`` is read batch by batch (a dataset or a loader) rather than held in memory."""
    return isinstance(data, Batches) or _kind(data) not in (None, "tensors")


class Batches:
    """A run's data, read one batch at a time.

    Attributes:
        name: the argument's name, for messages ("retain_data").
        n: the number of samples (global), None when unknown (an iterable without ``len``).
        batch_size: the largest global batch a step can see; the float32 slack and the
            certificate use it.
        per_pass: steps in one pass over the data, None when unknown.
        label_bound: the number of model outputs labels are checked against (set by the run
            after its first model check), or None.
    """

    kind = ""

    def __init__(self, *, name: str, device, dtype, loss_fn, batch_size: int,
                 n: Optional[int], per_pass: Optional[int]):
        self.name, self.device, self.dtype, self.loss_fn = name, device, dtype, loss_fn
        self.batch_size, self.n, self.per_pass = int(batch_size), n, per_pass
        self.label_bound: Optional[int] = None
        self.read = 0  # samples read by this rank so far
        self._first: Optional[Tuple[torch.Tensor, torch.Tensor]] = None

    # -- what subclasses provide ----------------------------------------------------------------
    def first(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """A checked batch from the start of the data, on the run's device, for the model checks
        that run before any weight is touched (read once, then kept)."""
        if self._first is None:
            self._first = self._read_first()
            self.read = 0
        return self._first

    def _read_first(self) -> Tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def stream(self, generator: torch.Generator) -> Iterator[Step]:
        """Endless stream of this rank's part of every global batch (see :data:`Step`)."""
        raise NotImplementedError

    def rebatched(self, batch_size: int, name: str) -> "Batches":
        """The same data in batches of ``batch_size`` (the fine-tuning's)."""
        raise NotImplementedError

    # -- shared ---------------------------------------------------------------------------------
    def pass_length(self, what: str = "epochs") -> int:
        """``per_pass``, or a ValueError saying that ``what`` needs it and steps= does not."""
        if self.per_pass is None:
            raise ValueError(f"{what} needs the number of batches in one pass, and {self.name} "
                             f"(an IterableDataset without __len__) does not say it: give steps= "
                             "instead")
        return self.per_pass

    def check(self, raw_x, raw_y, index: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Convert, check and move one batch as it arrives; one clear ValueError if it is bad."""
        where = f"{self.name} (batch {index} of the run)"
        x, y = convert_pair(raw_x, raw_y, self.device, self.dtype, self.loss_fn, where)
        if self.label_bound is not None and is_class_loss(self.loss_fn) \
                and not y.is_floating_point() and y.dim() == 1 and len(y):
            lo, hi = int(y.min()), int(y.max())
            if lo < 0 or hi >= self.label_bound:
                raise ValueError(f"{where}: labels must lie in [0, {self.label_bound}) for a "
                                 f"model with {self.label_bound} outputs, found "
                                 f"{lo if lo < 0 else hi}")
        self.read += len(y)
        return x, y

    def retain_size(self) -> int:
        """The number of samples the certificate records: ``n``, or (unknown size) the samples
        the run read, summed over the ranks."""
        if self.n is not None:
            return int(self.n)
        return max(1, distributed.sum_int(self.read))


class TensorBatches(Batches):
    """Tensors in memory: random index batches, as :func:`certunlearn_train.train.train` and the
    noisy phase always drew them."""

    kind = "tensors"

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, name: str = "data",
                 loss_fn=None):
        n = len(y)
        b = min(int(batch_size), n)
        super().__init__(name=name, device=x.device, dtype=None, loss_fn=loss_fn, batch_size=b,
                         n=n, per_pass=-(-n // b))
        self.x, self.y = x, y

    def _read_first(self):
        return self.x, self.y

    def stream(self, generator):
        for idx in index_batches(len(self.y), self.batch_size, generator):
            idx = idx.to(self.x.device)
            lo, hi = distributed.local_range(len(idx))
            mine = idx[lo:hi]
            yield (self.x[mine], self.y[mine], len(idx)) if hi > lo else (None, None, len(idx))

    def batch_at(self, idx: torch.Tensor, t: int):
        """The samples at ``idx`` (an index batch drawn by the caller, e.g. Poisson sampling)."""
        idx = idx.to(self.x.device)
        return self.x[idx], self.y[idx]

    def rebatched(self, batch_size, name):
        return TensorBatches(self.x, self.y, batch_size, name, self.loss_fn)


class DatasetBatches(Batches):
    """A map-style dataset of ``(x, y)`` samples: the index batches of :class:`TensorBatches`,
    each rank reading only its slice of every global batch."""

    kind = "dataset"

    def __init__(self, dataset, batch_size: int, *, name, device, dtype, loss_fn):
        try:
            n = len(dataset)
        except TypeError:
            raise ValueError(f"{name} is a map-style dataset without __len__; give it one, or "
                             "wrap it in an IterableDataset") from None
        if n == 0:
            raise ValueError(f"{name} is empty: the run needs samples")
        b = min(int(batch_size), n)
        super().__init__(name=name, device=device, dtype=dtype, loss_fn=loss_fn, batch_size=b,
                         n=n, per_pass=-(-n // b))
        self.dataset = dataset
        distributed.check_same_int(n, f"the sizes of {name} on the ranks")

    def _fetch(self, indices):
        from torch.utils.data import default_collate
        getitems = getattr(self.dataset, "__getitems__", None)
        with _reading(self.name):
            samples = getitems(indices) if getitems is not None else [
                self.dataset[i] for i in indices]
        try:
            pairs = [tuple(s) for s in samples]
        except TypeError:
            pairs = []
        if not pairs or any(len(p) != 2 for p in pairs):
            raise DataFormatError(f"{self.name}: each sample must be a pair (x, y), got "
                             f"{type(samples[0]).__name__ if len(samples) else 'nothing'}")
        try:
            return default_collate(pairs)
        except (TypeError, RuntimeError) as exc:
            raise DataFormatError(f"{self.name}: samples cannot be stacked into a batch "
                             f"({type(exc).__name__}: {str(exc)[:200]})") from None

    def _read_first(self):
        x, y = self._fetch(list(range(self.batch_size)))
        return self.check(x, y, 0)

    def stream(self, generator):
        for t, idx in enumerate(index_batches(self.n, self.batch_size, generator)):
            lo, hi = distributed.local_range(len(idx))
            if hi > lo:
                x, y = self._fetch(idx[lo:hi].tolist())
                yield (*self.check(x, y, t), len(idx))
            else:
                yield None, None, len(idx)

    def batch_at(self, idx: torch.Tensor, t: int):
        """The samples at ``idx``, read, checked and moved as they are used."""
        x, y = self._fetch(idx.tolist())
        return self.check(x, y, t)

    def rebatched(self, batch_size, name):
        return DatasetBatches(self.dataset, batch_size, name=name, device=self.device,
                              dtype=self.dtype, loss_fn=self.loss_fn)


class DataReadError(ValueError):
    """Reading a batch failed in the user's dataset, sampler, collate_fn or worker."""


class DataFormatError(ValueError):
    """A sample or batch is not what a run can use (not a pair, not stackable)."""


@contextlib.contextmanager
def _reading(name: str, index: Optional[int] = None):
    """Turn a failure of the user's data code into one line naming the argument and batch."""
    try:
        yield
    except (DataFormatError, DataReadError, StopIteration, GeneratorExit):
        raise
    except Exception as exc:  # a dataset, transform, sampler, collate_fn or worker that raised
        lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
        # a worker's exception arrives as "Caught X in DataLoader worker ...", its traceback,
        # and the original "X: message" last
        first = (lines[-1] if lines[0].startswith("Caught ") else lines[0])[:300] if lines else ""
        first = first.removeprefix(f"{type(exc).__name__}: ")
        where = name if index is None else f"{name} (batch {index} of the run)"
        raise DataReadError(f"{where}: reading the data failed ({type(exc).__name__}: "
                            f"{first})") from exc


def _read_all(batches, name: str, start: int):
    """``batches`` with every failure to read one reported by :func:`_reading`."""
    it = iter(batches)
    t = start
    while True:
        with _reading(name, t):
            try:
                raw = next(it)
            except StopIteration:
                return
        yield raw
        t += 1


def _pair(batch, name):
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch
    length = f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else ""
    raise DataFormatError(f"{name} must yield (inputs, targets) pairs, got "
                     f"{type(batch).__name__}{length}")


class _Passes(Batches):
    """Shared by the iterable and the loader: read pass after pass, sum the parts over ranks."""

    def _batches(self) -> Iterator:
        raise NotImplementedError

    def _local_bound(self) -> int:
        raise NotImplementedError

    def _read_first(self):
        try:
            with _reading(self.name):
                raw = next(iter(self._batches()))
        except StopIteration:
            raise ValueError(f"{self.name} yields no data: the run needs samples") from None
        x, y = self.check(*_pair(raw, self.name), 0)
        if distributed.active():
            distributed.check_sharded(x, y, self.name)
        return x, y

    def stream(self, generator):
        t = 0
        while True:
            empty = True
            for raw in _read_all(self._batches(), self.name, t):
                x, y = self.check(*_pair(raw, self.name), t)
                if len(y) == 0:
                    raise ValueError(f"{self.name} (batch {t} of the run) is empty")
                if len(y) > self._local_bound():
                    raise ValueError(
                        f"{self.name} (batch {t} of the run) holds {len(y)} samples, more than "
                        f"the {self._local_bound()} the run was calibrated for; give batch_size= "
                        "the largest batch the loader yields")
                empty = False
                yield x, y, distributed.sum_int(len(y)) if distributed.active() else len(y)
                t += 1
            if empty:
                raise ValueError(f"{self.name} yielded no batch in a pass")


class IterableBatches(_Passes):
    """An ``IterableDataset`` of ``(x, y)`` samples, in the order it yields them, in batches of
    ``batch_size`` (under a process group: this rank's share of it, from its own shard)."""

    kind = "iterable"

    def __init__(self, dataset, batch_size: int, *, name, device, dtype, loss_fn):
        try:
            n: Optional[int] = len(dataset)
        except TypeError:
            n = None
        self.dataset = dataset
        lo, hi = distributed.local_range(int(batch_size))
        self.local = max(1, hi - lo)
        per_pass = None if n is None else -(-n // self.local)
        if n is not None:
            n = distributed.sum_int(n) if distributed.active() else n
        super().__init__(name=name, device=device, dtype=dtype, loss_fn=loss_fn,
                         batch_size=int(batch_size), n=n, per_pass=per_pass)

    def _local_bound(self):
        return self.local

    def _batches(self):
        from torch.utils.data import default_collate
        buf = []
        for sample in self.dataset:
            buf.append(tuple(_pair(sample, f"each sample of {self.name}")))
            if len(buf) == self.local:
                yield default_collate(buf)
                buf = []
        if buf:
            yield default_collate(buf)

    def rebatched(self, batch_size, name):
        return IterableBatches(self.dataset, batch_size, name=name, device=self.device,
                               dtype=self.dtype, loss_fn=self.loss_fn)


class LoaderBatches(_Passes):
    """A ``DataLoader``'s own batches. The largest global batch is the loader's ``batch_size``
    (or, for a ``batch_sampler``, the ``batch_size`` the caller gives as its bound), summed over
    the ranks; every batch is checked against it."""

    kind = "loader"

    def __init__(self, loader, batch_size: Optional[int], *, name, device, dtype, loss_fn):
        from torch.utils.data import IterableDataset
        from torch.utils.data.distributed import DistributedSampler
        own = loader.batch_size
        if own is None and batch_size is None:
            raise ValueError(f"{name} is a DataLoader with a batch_sampler: give batch_size= the "
                             "largest batch it yields (the float32 slack and the certificate "
                             "need it; every batch is checked against it)")
        if own is not None and batch_size is not None and int(batch_size) != own:
            raise ValueError(f"batch_size={batch_size!r} differs from the batch size of the "
                             f"DataLoader {name} ({own}): the loader's batches are the run's; "
                             "leave batch_size out or make them equal")
        bound = own if own is not None else batch_size
        assert bound is not None
        self.loader, self.bound = loader, int(bound)
        dataset = loader.dataset
        iterable = isinstance(dataset, IterableDataset)
        if distributed.active() and not iterable and loader.batch_size is not None \
                and not isinstance(loader.sampler, DistributedSampler):
            raise ValueError(
                f"{name}: under a process group each rank must read its own part of every "
                "global batch; give this DataLoader a DistributedSampler (same seed on every "
                "rank), or pass the Dataset itself and the run splits each global batch")
        try:
            per_pass: Optional[int] = len(loader)
        except TypeError:
            per_pass = None
        try:
            n: Optional[int] = len(dataset)
        except TypeError:
            n = None
        if n is not None and iterable and distributed.active():
            n = distributed.sum_int(n)
        if per_pass is not None:
            distributed.check_same_int(per_pass, f"the number of batches of {name} on the ranks")
        total = distributed.sum_int(self.bound) if distributed.active() else self.bound
        super().__init__(name=name, device=device, dtype=dtype, loss_fn=loss_fn,
                         batch_size=total, n=n, per_pass=per_pass)

    def _local_bound(self):
        return self.bound

    def _batches(self):
        return iter(self.loader)

    def rebatched(self, batch_size, name):
        if int(batch_size) not in (self.bound, self.batch_size):
            raise ValueError(f"finetune_batch_size={batch_size!r} differs from the batch size of "
                             f"the DataLoader {self.name} ({self.bound}); leave it out or pass "
                             "the loader you want for fine-tuning as data")
        return self


def as_batches(data, *, batch_size: Optional[int], device=None, dtype=None, loss_fn=None,
               name: str = "data", default_batch_size: int = 64) -> Batches:
    """``data`` as a :class:`Batches` (see the module docstring for what is accepted).

    ``batch_size``: the batch size (tensors, datasets) or, for a ``DataLoader``, None (its own)
    or the bound of a ``batch_sampler``'s batches. Refuses what it cannot read with one
    ValueError naming ``name``.
    """
    import torch.nn.functional as F
    loss_fn = F.cross_entropy if loss_fn is None else loss_fn
    if isinstance(data, Batches):
        return data if batch_size is None else data.rebatched(batch_size, name)
    kind = _kind(data)
    if kind is None:
        raise ValueError(f"{name} must be a pair (x, y), a TensorDataset, an ArrayDataset, a "
                         "Dataset of (x, y) samples, an IterableDataset or a DataLoader, got "
                         f"{type(data).__name__}")
    if kind == "loader":
        if batch_size is not None:
            batch_size = check_int("batch_size", batch_size, low=1)
        return LoaderBatches(data, batch_size, name=name, device=device, dtype=dtype,
                             loss_fn=loss_fn)
    bs = check_int("batch_size", default_batch_size if batch_size is None else batch_size, low=1)
    if kind == "tensors":
        raw_x, raw_y = tensor_pair(data, name)
        x, y = convert_pair(raw_x, raw_y, device, dtype, loss_fn, name)
        if len(y) == 0:
            raise ValueError(f"{name} is empty: the run needs samples")
        return TensorBatches(x, y, bs, name, loss_fn)
    if kind == "iterable":
        return IterableBatches(data, bs, name=name, device=device, dtype=dtype, loss_fn=loss_fn)
    return DatasetBatches(data, bs, name=name, device=device, dtype=dtype, loss_fn=loss_fn)

