"""The mnist and cifar10 presets end to end on tiny stand-in files in the standard formats.

Real MNIST/CIFAR-10 runs are for a GPU; here each preset's data path, model and every method run
once on a few random images (one configuration, one epoch), to show the presets are runnable.
"""
import json

import pytest

from certunlearn_train.experiments.presets import METHOD_NAMES, get_preset
from certunlearn_train.experiments.runner import Experiment
from tests.train.test_data import _write_cifar, _write_mnist

pytestmark = pytest.mark.slow


def _shrink(cfg):
    cfg = dict(cfg, epochs=1, n_configs=2, seeds=3, eps=[1.0, 100.0], main_eps=1.0, threads=1,
               device="cpu", original=dict(cfg["original"], epochs=1, batch_size=16))
    grids = {}
    for m, g in cfg["grids"].items():
        one = {k: v[:1] for k, v in g.items()}
        one["lr"] = [0.05, 0.1]  # two configurations each
        for k in ("batch_size", "noisy_batch", "dp_batch"):
            if k in one:
                one[k] = [16]
        if "steps" in one:
            one["steps"] = [3]
        if "dp_epochs" in one:
            one["dp_epochs"] = [1]
        grids[m] = one
    cfg["grids"] = grids
    return cfg


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_image_preset_runs_on_stand_in_files(name, tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    if name == "mnist":
        _write_mnist(str(root), compress=True, n_train=120, n_test=30)
    else:
        _write_cifar(str(root), n_per_batch=24)
    from certunlearn_train.experiments.presets import validate_experiment
    cfg = validate_experiment(_shrink(get_preset(name, data_root=str(root))))
    out = tmp_path / "out"
    summary = Experiment(cfg, str(out), progress=False, echo=lambda s: None).run()
    rows = [json.loads(line) for line in (out / "curves.jsonl").read_text().splitlines()]
    assert {r["method"] for r in rows} == set(METHOD_NAMES)
    for r in rows:
        if r["status"] == "ok":
            assert r["points"][-1]["epochs"] == pytest.approx(r["noisy_epochs"] + 1)
    assert summary["certificates_verified"] == sum(r["status"] == "ok" for r in rows) > 0
    # tuned at the main eps only: the other eps reuse that choice and were never tuned
    assert cfg["tune_each_eps"] is False
    tuning = json.loads((out / "tuning.json").read_text())
    assert {t["eps"] for t in tuning["tried"]} == {1.0, None}
    for m in ("gradient_clipping", "model_clipping", "output_perturbation", "dpsgd_group"):
        assert tuning["chosen"][f"{m}@100"]["config"] == tuning["chosen"][f"{m}@1"]["config"]
    assert {r["eps"] for r in rows} == {1.0, 100.0, None}
