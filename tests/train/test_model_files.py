"""Model files: round trip, architecture records, factories, and files that are not model files."""
import os
import sys

import pytest
import torch

from certunlearn_train import certificates as C
from certunlearn_train import model_files as M
from certunlearn_train.models import MLP


def test_round_trip_with_a_bundled_architecture(tmp_path):
    torch.manual_seed(0)
    model = MLP(64, 10, (8,))
    arch = M.model_arch("mlp", (1, 8, 8), 10, {"name": "digits"}, hidden=(8,))
    assert arch["kwargs"] == {"hidden": [8]}
    path = str(tmp_path / "m.pt")
    M.save_model_file(path, model, arch)
    assert [p for p in os.listdir(tmp_path) if p.startswith(".tmp-")] == []
    state, arch_back = M.load_model_file(path)
    assert arch_back == arch and C.weights_sha256(state) == C.weights_sha256(model)
    rebuilt, _ = M.load_model(path)
    assert C.weights_sha256(rebuilt) == C.weights_sha256(model)
    # the old import path still works
    assert C.load_model_file is M.load_model_file and C.save_model_file is M.save_model_file


def test_plain_state_dict_needs_a_factory(tmp_path, monkeypatch):
    (tmp_path / "fact_mod_x.py").write_text(
        "from certunlearn_train.models import MLP\n"
        "def make():\n    return MLP(64, 10, (8,))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("fact_mod_x", None)
    torch.manual_seed(1)
    model = MLP(64, 10, (8,))
    path = str(tmp_path / "plain.pt")
    torch.save(model.state_dict(), path)
    with pytest.raises(M.ModelFileError, match="no architecture record.*--model-factory"):
        M.load_model(path)
    rebuilt, arch = M.load_model(path, "fact_mod_x:make")
    assert arch["factory"] == "fact_mod_x:make"
    assert C.weights_sha256(rebuilt) == C.weights_sha256(model)
    wrong = MLP(64, 10, (9,))
    torch.save(wrong.state_dict(), path)
    with pytest.raises(M.ModelFileError, match="weights do not fit the module built by"):
        M.load_model(path, "fact_mod_x:make")


@pytest.mark.parametrize("content, message", [
    (b"", "not a certunlearn model file \\(the file is empty\\)"),
    (b"not a torch file", "not a certunlearn model file"),
    (bytes(range(256)) * 4, "not a certunlearn model file"),
])
def test_junk_is_not_a_model_file(tmp_path, content, message):
    path = tmp_path / "junk.pt"
    path.write_bytes(content)
    with pytest.raises(M.ModelFileError, match=message) as info:
        M.load_model_file(str(path))
    assert "\n" not in str(info.value)


def test_truncated_and_other_objects(tmp_path):
    model = MLP(64, 10, (8,))
    path = tmp_path / "m.pt"
    M.save_model_file(str(path), model)
    raw = path.read_bytes()
    for cut in (10, len(raw) // 2, len(raw) - 5):
        path.write_bytes(raw[:cut])
        with pytest.raises(M.ModelFileError, match="not a certunlearn model file"):
            M.load_model_file(str(path))
    torch.save([1, 2, 3], path)
    with pytest.raises(M.ModelFileError, match="holds a list"):
        M.load_model_file(str(path))
    torch.save({"a": 1}, path)
    with pytest.raises(M.ModelFileError, match="not a state dict of tensors"):
        M.load_model_file(str(path))
    with pytest.raises(M.ModelFileError, match="does not exist"):
        M.load_model_file(str(tmp_path / "none.pt"))
    with pytest.raises(M.ModelFileError, match="is a directory"):
        M.load_model_file(str(tmp_path))


def test_loading_never_runs_code(tmp_path):
    marker = tmp_path / "marker"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "arch": {"x": Evil()}}, path)
    with pytest.raises(M.ModelFileError, match="not a certunlearn model file"):
        M.load_model_file(str(path))
    assert not marker.exists()
