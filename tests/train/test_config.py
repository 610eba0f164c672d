"""Config files: every bad key or value is a one-line error naming it."""
import json

import pytest

from certunlearn_train.config import ConfigError, load_config, validate_config

GOOD = {"model_file": "m.pt", "out": "o", "forget_fraction": 0.1, "C0": 0.01, "C1": 0.004,
        "lr": 0.05, "steps": 50}


def test_defaults_filled_and_yaml_float_literals(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model_file: m.pt\nout: o\nforget_fraction: 0.1\nC0: 0.01\nC1: 4e-3\n"
                    "delta: 1e-5\n")
    cfg = load_config(str(path))
    assert cfg["delta"] == 1e-5 and cfg["C1"] == 0.004  # PyYAML reads 1e-5 as a string
    assert cfg["method"] == "gradient_clipping" and cfg["clip"] == "batch"
    path = tmp_path / "c.json"
    path.write_text(json.dumps(GOOD))
    assert load_config(str(path))["steps"] == 50


@pytest.mark.parametrize("change, message", [
    ({"colour": 1}, r"unknown key 'colour' \(allowed: "),
    ({"eps": -1}, r"key 'eps' must be a number > 0.0, got -1"),
    ({"eps": "big"}, r"key 'eps' must be a number, got 'big'"),
    ({"delta": 1.5}, r"key 'delta' must be a number < 1.0, got 1.5"),
    ({"delta": 1}, r"key 'delta' must be a number < 1.0, got 1"),
    ({"steps": 10 ** 8 + 1}, r"key 'steps' must be an integer <= 100000000, got 100000001"),
    ({"eps": float("nan")}, r"key 'eps' must be a finite number"),
    ({"steps": 2.5}, r"key 'steps' must be an integer, got 2.5"),
    ({"steps": 0}, r"key 'steps' must be an integer >= 1, got 0"),
    ({"batch_size": True}, r"key 'batch_size' must be an integer, got True"),
    ({"clip": "row"}, r"key 'clip' must be one of 'batch', 'per_sample', got 'row'"),
    ({"method": "magic"}, r"key 'method' must be one of"),
    ({"forget_classes": [1]}, "exactly one of 'forget_fraction', 'forget_classes' and "
                              "'forget_indices_file' \\(got 2"),
    ({"forget_indices_file": "f.txt"}, "exactly one of .*got 2: forget_fraction, "
                                       "forget_indices_file"),
    ({"steps": 10 ** 30}, r"key 'steps' must be an integer <= 100000000, got 10{30}"),
    ({"steps": 1e30}, r"key 'steps' must be an integer, got 1e\+30"),
    ({"epochs": 1e30, "steps": None}, r"key 'epochs' must be a number <= 1000000.0"),
    ({"seed": -1}, r"key 'seed' must be an integer >= 0, got -1"),
    ({"threads": 0}, r"key 'threads' must be an integer >= 1, got 0"),
    ({"model_factory": ""}, r"key 'model_factory' must be a non-empty string"),
    ({"forget_fraction": None}, "exactly one of"),
    ({"forget_fraction": None, "forget_classes": []}, "key 'forget_classes' must be a non-empty"),
    ({"data": "mnist"}, "data 'mnist' needs 'data_root'"),
    ({"C1": None}, "'gradient_clipping' needs 'C1'"),
    ({"method": "model_clipping"}, "'model_clipping' needs 'C2'"),
    ({"C2": 1.0}, "key 'C2' applies to model_clipping only"),
    ({"epochs": 2.0}, "give 'steps' or 'epochs', not both"),
])
def test_bad_values_are_named(change, message):
    cfg = dict(GOOD, **change)
    with pytest.raises(ConfigError, match=message) as info:
        validate_config(cfg, "c.yaml")
    assert "\n" not in str(info.value) and str(info.value).startswith("c.yaml: ")


@pytest.mark.parametrize("missing", ["model_file", "out"])
def test_missing_required_key(missing):
    cfg = dict(GOOD)
    del cfg[missing]
    with pytest.raises(ConfigError, match=f"missing required key '{missing}'"):
        validate_config(cfg)


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "nope.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\nb: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: invalid YAML at line \d+"):
        load_config(str(bad))
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(ConfigError, match="invalid JSON"):
        load_config(str(bad))
    top = tmp_path / "list.yaml"
    top.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(str(top))


@pytest.mark.parametrize("text", ["steps: 1e30\n", "steps: 1.0e+30\n"])
def test_yaml_steps_1e30_is_refused(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text("model_file: m.pt\nout: o\nforget_fraction: 0.1\nC0: 0.01\nC1: 0.004\n" + text)
    with pytest.raises(ConfigError, match="key 'steps' must be an integer"):
        load_config(str(path))


def test_duplicated_keys_are_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model_file: m.pt\nout: o\nforget_fraction: 0.1\nC0: 0.01\nC1: 0.004\n"
                    "eps: 1.0\neps: 8.0\n")
    with pytest.raises(ConfigError, match=r"key 'eps' is given twice \(line 7\)"):
        load_config(str(path))
    path = tmp_path / "c.json"
    path.write_text('{"model_file": "m.pt", "out": "o", "eps": 1.0, "forget_fraction": 0.1, '
                    '"C0": 0.01, "C1": 0.004, "eps": 8.0}')
    with pytest.raises(ConfigError, match="key 'eps' is given twice"):
        load_config(str(path))


def test_yaml_cannot_build_objects(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model_file: !!python/object/apply:os.system ['touch pwned']\nout: o\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(str(path))
    assert not (tmp_path / "pwned").exists()


def test_forget_indices_file_key(tmp_path):
    cfg = validate_config(dict(GOOD, forget_fraction=None, forget_indices_file="f.txt"))
    assert cfg["forget_indices_file"] == "f.txt" and cfg["forget_fraction"] is None
