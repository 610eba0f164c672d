"""Execute every notebook in notebooks/ (it must run clean) without touching committed outputs.

Each notebook runs with the current interpreter's kernel, in the notebooks directory, with
CERTUNLEARN_NOTEBOOK_OUT pointing at a temporary folder so committed figures are not overwritten.
Committed notebooks must have their outputs stripped. unlearning_vs_retrain reads a results folder
that the test makes first with the digits-quick experiment preset.
"""
import json
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_clean(path, tmp_path, monkeypatch):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.get("outputs"), f"{path.name}: commit notebooks with outputs stripped"
    out = tmp_path / "out"
    monkeypatch.setenv("CERTUNLEARN_NOTEBOOK_OUT", str(out))
    if path.stem == "unlearning_vs_retrain":
        from certunlearn_train.experiments.presets import get_preset
        from certunlearn_train.experiments.runner import Experiment
        Experiment(get_preset("digits-quick"), str(tmp_path / "results"), progress=False,
                   echo=lambda s: None).run()
        monkeypatch.setenv("CERTUNLEARN_EXPERIMENT_RESULTS", str(tmp_path / "results"))
    # a kernelspec that runs this interpreter (the venv's), found through JUPYTER_PATH
    spec_dir = tmp_path / "jupyter" / "kernels" / "certunlearn-test"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "certunlearn test", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    client = nbclient.NotebookClient(nb, kernel_name="certunlearn-test", timeout=120,
                                     resources={"metadata": {"path": str(path.parent)}})
    client.execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors
    pngs = list(out.glob("*.png"))
    if path.stem == "sigma_vs_T":
        assert [p.name for p in pngs] == ["sigma_vs_T.png"]
        assert pngs[0].stat().st_size > 10_000
    if path.stem == "unlearning_vs_retrain":
        from certunlearn_train.experiments.figures import FIGURES
        assert sorted(p.name for p in pngs) == sorted(FIGURES)
        assert all(p.stat().st_size > 5_000 for p in pngs)
