"""Data loaders on tiny files written here in the exact standard formats, and forget selection."""
import gzip
import os
import pickle
import struct

import numpy as np
import pytest

from certunlearn_train import data as D


def _idx_bytes(arr: np.ndarray) -> bytes:
    code = {np.uint8: 0x08, np.int32: 0x0C}[arr.dtype.type]
    header = bytes([0, 0, code, arr.ndim]) + b"".join(struct.pack(">I", s) for s in arr.shape)
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def _write_mnist(root, compress, n_train=7, n_test=3, seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        for kind, arr in (("images-idx3-ubyte", images), ("labels-idx1-ubyte", labels)):
            raw = _idx_bytes(arr)
            name = f"{prefix}-{kind}" + (".gz" if compress else "")
            with open(os.path.join(root, name), "wb") as fh:
                fh.write(gzip.compress(raw) if compress else raw)
        out[prefix] = (images, labels)
    return out


@pytest.mark.parametrize("compress", [True, False], ids=["gz", "raw"])
def test_mnist_idx_round_trip(tmp_path, compress):
    truth = _write_mnist(tmp_path, compress)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        ds = D.load_mnist(str(tmp_path), split)
        images, labels = truth[prefix]
        assert ds.x.shape == (len(labels), 1, 28, 28) and ds.x.dtype == np.float32
        np.testing.assert_allclose(ds.x[:, 0], images / 255.0, rtol=1e-6)
        np.testing.assert_array_equal(ds.y, labels.astype(np.int64))


def test_read_idx_int32_big_endian(tmp_path):
    arr = np.array([[1, -2, 70000], [3, 4, -5]], dtype=np.int32)
    path = tmp_path / "a.idx"
    path.write_bytes(_idx_bytes(arr))
    np.testing.assert_array_equal(D.read_idx(str(path)), arr)


def test_mnist_missing_file_is_named(tmp_path):
    _write_mnist(tmp_path, compress=False)
    os.remove(tmp_path / "train-labels-idx1-ubyte")
    with pytest.raises(D.DataError, match="train-labels-idx1-ubyte"):
        D.load_mnist(str(tmp_path), "train")
    with pytest.raises(D.DataError, match="does not exist"):
        D.load_mnist(str(tmp_path / "nowhere"))


def test_idx_bad_magic_and_truncation(tmp_path):
    p = tmp_path / "bad"
    p.write_bytes(b"\x12\x34\x08\x01" + b"\x00" * 8)
    with pytest.raises(D.DataError, match="not an IDX file"):
        D.read_idx(str(p))
    arr = np.arange(10, dtype=np.uint8)
    p.write_bytes(_idx_bytes(arr)[:-3])
    with pytest.raises(D.DataError, match="expected 10 data bytes"):
        D.read_idx(str(p))


def _write_cifar(root, n_per_batch=4, seed=0):
    rng = np.random.default_rng(seed)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(n_per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n_per_batch).tolist()
        with open(os.path.join(root, name), "wb") as fh:
            pickle.dump({b"batch_label": name.encode(), b"data": data, b"labels": labels,
                         b"filenames": [b"x.png"] * n_per_batch}, fh, protocol=2)
        batches[name] = (data, labels)
    return batches


def test_cifar10_pickle_batches(tmp_path):
    nested = tmp_path / "cifar-10-batches-py"
    nested.mkdir()
    truth = _write_cifar(nested)
    train = D.load_cifar10(str(tmp_path), "train")  # parent directory works too
    assert train.x.shape == (20, 3, 32, 32)
    first = truth["data_batch_1"][0][0]
    # channel-major layout: the first 1024 bytes are the red plane, row by row
    np.testing.assert_allclose(train.x[0, 0], first[:1024].reshape(32, 32) / 255.0, rtol=1e-6)
    np.testing.assert_allclose(train.x[0, 2], first[2048:].reshape(32, 32) / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(train.y[4:8], truth["data_batch_2"][1])
    test = D.load_cifar10(str(nested), "test")
    np.testing.assert_array_equal(test.y, truth["test_batch"][1])


def test_cifar10_missing_batch_is_named(tmp_path):
    _write_cifar(tmp_path)
    os.remove(tmp_path / "data_batch_3")
    with pytest.raises(D.DataError, match="data_batch_3"):
        D.load_cifar10(str(tmp_path), "train")


class _WritesMarker:
    """Unpickling this calls open(marker, "w"): what a crafted batch file would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


class _RunsShell:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("payload", [_WritesMarker, _RunsShell])
@pytest.mark.parametrize("protocol", [2, 4])
def test_cifar10_crafted_pickle_cannot_run_code(tmp_path, payload, protocol):
    _write_cifar(tmp_path)
    marker = tmp_path / "marker"
    batch = {b"data": payload(str(marker)), b"labels": [0]}
    with open(tmp_path / "data_batch_1", "wb") as fh:
        pickle.dump(batch, fh, protocol=protocol)
    with pytest.raises(D.DataError, match=r"data_batch_1: not a CIFAR-10 pickle batch "
                                          r"\(refused to load (builtins|io|posix|os|nt)\.(open|system)"):
        D.load_cifar10(str(tmp_path), "train")
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_restricted_unpickler_reads_what_the_format_holds(protocol):
    value = {b"batch_label": b"x", "s": "t", b"data": np.arange(12, dtype=np.uint8).reshape(3, 4),
             b"labels": [1, 2, 3], b"filenames": [b"a.png"], b"f": 1.5, b"t": (1, None, True)}
    back = D.safe_unpickle(pickle.dumps(value, protocol=protocol))
    np.testing.assert_array_equal(back[b"data"], value[b"data"])
    assert {k: v for k, v in back.items() if k != b"data"} == \
        {k: v for k, v in value.items() if k != b"data"}


def test_cifar10_object_array_or_wrong_shape_is_refused(tmp_path):
    _write_cifar(tmp_path)
    for data, message in ((np.array([["a"] * 3072], dtype=object), "must hold integers"),
                          (np.zeros((2, 5), dtype=np.uint8), "must be \\(N, 3072\\)")):
        with open(tmp_path / "data_batch_1", "wb") as fh:
            pickle.dump({b"data": data, b"labels": [0] * len(data)}, fh)
        with pytest.raises(D.DataError, match=message):
            D.load_cifar10(str(tmp_path), "train")


def test_load_forget_indices(tmp_path):
    p = tmp_path / "f.txt"
    p.write_text(" 3\n1\n\n+7\n")
    np.testing.assert_array_equal(D.load_forget_indices(str(p), 10), [3, 1, 7])
    q = tmp_path / "f.npy"
    np.save(q, np.array([[1, 2]]))
    with pytest.raises(D.DataError, match="1-D integer array"):
        D.load_forget_indices(str(q), 10)
    np.save(q, np.array([1.0, 2.0]))
    with pytest.raises(D.DataError, match="1-D integer array"):
        D.load_forget_indices(str(q), 10)
    np.save(q, np.array([4, 4]))
    with pytest.raises(D.DataError, match="entry 1: forget index 4 repeats entry 0"):
        D.load_forget_indices(str(q), 10)
    q.write_bytes(b"junk")
    with pytest.raises(D.DataError, match="not a .npy array"):
        D.load_forget_indices(str(q), 10)
    with pytest.raises(D.DataError, match="does not exist"):
        D.load_forget_indices(str(tmp_path / "none.txt"), 10)


def test_digits_and_split_are_stratified_and_seeded():
    train, test = D.load_dataset("digits", test_fraction=0.2, split_seed=3)
    assert len(train) + len(test) == 1797
    assert train.x.shape[1:] == (1, 8, 8) and 0.0 <= train.x.min() and train.x.max() <= 1.0
    counts = np.bincount(test.y, minlength=10)
    assert counts.min() >= 34 and counts.max() <= 38  # 20% of ~180 per class
    train2, _ = D.load_dataset("digits", test_fraction=0.2, split_seed=3)
    np.testing.assert_array_equal(train.y, train2.y)


def test_select_forget_fraction_and_classes():
    labels = np.repeat(np.arange(5), 20)
    a = D.select_forget(labels, fraction=0.1, seed=1)
    assert len(a) == 10 and len(np.unique(a)) == 10 and a.max() < 100
    np.testing.assert_array_equal(a, D.select_forget(labels, fraction=0.1, seed=1))
    assert not np.array_equal(a, D.select_forget(labels, fraction=0.1, seed=2))
    c = D.select_forget(labels, classes=[1, 3])
    np.testing.assert_array_equal(c, np.flatnonzero((labels == 1) | (labels == 3)))


@pytest.mark.parametrize("kwargs, message", [
    (dict(fraction=0.1, classes=[1]), "exactly one"),
    (dict(), "exactly one"),
    (dict(fraction=1.5), r"forget fraction must be in \(0, 1\), got 1.5"),
    (dict(fraction=0.001), "selects no point"),
    (dict(classes=[7]), r"forget classes \[7\] do not occur"),
])
def test_select_forget_errors(kwargs, message):
    with pytest.raises(D.DataError, match=message):
        D.select_forget(np.repeat(np.arange(5), 20), **kwargs)


@pytest.mark.parametrize("indices, message", [
    ([0, 12], r"must be in \[0, 12\), got \[12\]"),
    ([-1], r"got \[-1\]"),
    ([1, 1], "must not repeat"),
    ([], "forget set is empty"),
    (list(range(12)), "retain set is empty"),
    ([0.5], "must be integers"),
])
def test_split_forget_errors(indices, message):
    ds = D.ArrayDataset(np.zeros((12, 1, 2, 2), np.float32), np.arange(12) % 3, 3)
    with pytest.raises(D.DataError, match=message):
        D.split_forget(ds, indices)


def test_split_forget_partitions():
    ds = D.ArrayDataset(np.arange(12, dtype=np.float32).reshape(12, 1, 1, 1), np.arange(12) % 3, 3)
    retain, forget = D.split_forget(ds, [5, 2])
    assert sorted(retain.x.ravel().tolist() + forget.x.ravel().tolist()) == list(range(12))
    np.testing.assert_array_equal(forget.x.ravel(), [2, 5])
