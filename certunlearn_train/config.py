"""Configuration files for ``certunlearn unlearn --config FILE`` (YAML or JSON, one flat mapping).

Every key is checked: an unknown key, a wrong type or a value out of range gets a one-line
:class:`ConfigError` naming the file, the key, the constraint and the value. Example (YAML)::

    model_file: runs/original/model.pt   # from `certunlearn train` (or a state dict, with
                                         # model_factory: pkg.module:function)
    data: digits                         # digits | mnist5k | mnist | cifar10 (data_root: last two)
    forget_fraction: 0.1                 # or forget_classes: [3], or forget_indices_file: f.txt
    forget_seed: 0
    method: gradient_clipping            # | model_clipping | output_perturbation | retrain
    eps: 1.0
    delta: 1.0e-5
    C0: 0.01
    C1: 0.004
    lr: 0.05
    steps: 50
    clip: batch                          # | per_sample
    finetune_epochs: 40
    out: runs/unlearned
    sign_key: keys/run.key               # optional: sign the certificate (certunlearn keygen)

A key given twice is refused (YAML and JSON), so no value silently replaces another.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict

from .checks import MAX_STEPS, int_problem, real_problem

__all__ = ["ConfigError", "ConfigFileError", "load_config", "validate_config", "CONFIG_KEYS"]


class ConfigError(ValueError):
    """A configuration key or value is invalid; the message names it."""


class ConfigFileError(ConfigError):
    """The configuration file is missing, unreadable or not text (exit code 1, not 2)."""


def _real(low=None, high=None, low_open=False, allow_inf=False, high_open=False):
    def check(v):
        return real_problem(v, low=low, high=high, low_open=low_open, high_open=high_open,
                            allow_inf=allow_inf, noun="a number", detail=True)
    check.numeric = True
    return check


def _int(low=None, high=None):
    def check(v):
        return int_problem(v, low=low, high=high, allow_float=False, detail=True)
    return check


def _choice(*options):
    def check(v):
        return None if v in options else "one of " + ", ".join(map(repr, options))
    return check


def _str(v):
    return None if isinstance(v, str) and v else "a non-empty string"


def _int_list(v):
    if not isinstance(v, list) or not v or any(int_problem(c, allow_float=False) for c in v):
        return "a non-empty list of integers"
    return None


def _optional(check):
    def inner(v):
        return None if v is None else check(v)
    inner.numeric = getattr(check, "numeric", False)
    return inner


#: Upper limits that keep a typo (steps: 1e30) from starting a run that never ends; the step
#: limit is unlearn()'s own, so a config it would refuse is refused before any work.
MAX_EPOCHS = 1e6

#: key -> (validator, default). A default of ``...`` means required.
CONFIG_KEYS: Dict[str, Any] = {
    "model_file": (_str, ...),
    "data": (_choice("digits", "mnist5k", "mnist", "cifar10"), "digits"),
    "data_root": (_optional(_str), None),
    "test_fraction": (_real(0.0, 1.0, low_open=True), 0.2),
    "split_seed": (_int(0, (1 << 62) - 1), 0),
    "forget_fraction": (_optional(_real(0.0, 1.0, low_open=True)), None),
    "forget_classes": (_optional(_int_list), None),
    "forget_indices_file": (_optional(_str), None),
    "forget_seed": (_int(0, (1 << 62) - 1), 0),
    "method": (_choice("gradient_clipping", "model_clipping", "output_perturbation", "retrain"),
               "gradient_clipping"),
    "eps": (_real(0.0, low_open=True), 1.0),
    "delta": (_real(0.0, 1.0, low_open=True, high_open=True), 1e-5),
    "steps": (_optional(_int(1, MAX_STEPS)), None),
    "epochs": (_optional(_real(0.0, MAX_EPOCHS, low_open=True)), None),
    "C0": (_optional(_real(0.0, low_open=True)), None),
    "C1": (_optional(_real(0.0, low_open=True)), None),
    "C2": (_optional(_real(0.0, low_open=True)), None),
    "sigma0": (_real(0.0), 0.0),
    "lr": (_real(0.0, low_open=True), 0.05),
    "lam": (_real(0.0), 0.0),
    "batch_size": (_int(1, 1 << 31), 64),
    "clip": (_choice("batch", "per_sample"), "batch"),
    "finetune_epochs": (_real(0.0, MAX_EPOCHS), 0.0),
    "finetune_lr": (_optional(_real(0.0, low_open=True)), None),
    "retrain_epochs": (_real(0.0, MAX_EPOCHS, low_open=True), 40.0),
    "seed": (_optional(_int(0, (1 << 62) - 1)), None),
    "out": (_str, ...),
    "threads": (_optional(_int(1, 256)), None),
    "model_factory": (_optional(_str), None),
    "sign_key": (_optional(_str), None),
}


def validate_config(raw: Any, source: str = "config") -> Dict[str, Any]:
    """Check a mapping against :data:`CONFIG_KEYS`; return it with defaults filled in."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of keys to values, got "
                          f"{type(raw).__name__}")
    for key in raw:
        if key not in CONFIG_KEYS:
            raise ConfigError(f"{source}: unknown key {key!r} (allowed: "
                              f"{', '.join(sorted(CONFIG_KEYS))})")
    out = {}
    for key, (check, default) in CONFIG_KEYS.items():
        if key not in raw:
            if default is ...:
                raise ConfigError(f"{source}: missing required key {key!r}")
            out[key] = default
            continue
        value = raw[key]
        if getattr(check, "numeric", False) and isinstance(value, str):
            # PyYAML reads 1e-5 (no dot) as a string; accept any float literal
            try:
                value = float(value)
            except ValueError:
                pass
        problem = check(value)
        if problem:
            raise ConfigError(f"{source}: key {key!r} must be {problem}, got {value!r}")
        out[key] = value
    given = [k for k in ("forget_fraction", "forget_classes", "forget_indices_file")
             if out[k] is not None]
    if len(given) != 1:
        raise ConfigError(f"{source}: give exactly one of 'forget_fraction', 'forget_classes' "
                          f"and 'forget_indices_file' (got {len(given)}: "
                          f"{', '.join(given) or 'none'})")
    if out["data"] not in ("digits", "mnist5k") and out["data_root"] is None:
        raise ConfigError(f"{source}: data {out['data']!r} needs 'data_root' (a local directory)")
    method = out["method"]
    if method != "retrain" and out["C0"] is None:
        raise ConfigError(f"{source}: method {method!r} needs 'C0'")
    if method == "gradient_clipping" and out["C1"] is None:
        raise ConfigError(f"{source}: method 'gradient_clipping' needs 'C1'")
    if method == "model_clipping" and out["C2"] is None:
        raise ConfigError(f"{source}: method 'model_clipping' needs 'C2'")
    if method != "model_clipping":
        for key in ("C2", "sigma0"):
            if out[key]:
                raise ConfigError(f"{source}: key {key!r} applies to model_clipping only, "
                                  f"got {out[key]!r} with method {method!r}")
    if out["steps"] is not None and out["epochs"] is not None:
        raise ConfigError(f"{source}: give 'steps' or 'epochs', not both")
    return out


def _unique_key_loader(path: str):
    """A ``yaml.SafeLoader`` subclass that refuses a mapping with a repeated key."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        pass

    def construct_mapping(loader, node, deep=False):
        loader.flatten_mapping(node)
        seen = set()
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=deep)
            try:
                repeated = key in seen
            except TypeError:  # an unhashable key: let the base class report it
                break
            if repeated:
                raise ConfigError(f"{path}: key {key!r} is given twice (line "
                                  f"{key_node.start_mark.line + 1})")
            seen.add(key)
        return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)

    UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
                                    construct_mapping)
    return UniqueKeyLoader


def load_config(path: str) -> Dict[str, Any]:
    """Read a YAML (``.yaml``/``.yml``) or JSON file and validate it."""
    if not os.path.isfile(path):
        raise ConfigFileError(f"config file {path!r} does not exist")
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read(1 << 20)
    except UnicodeDecodeError:
        raise ConfigFileError(f"{path}: not a text file (not UTF-8)") from None
    except OSError as exc:
        raise ConfigFileError(f"cannot read config file {path!r}: {exc.strerror or exc}"
                              ) from None
    if "\x00" in text:
        raise ConfigFileError(f"{path}: not a text file (it holds NUL bytes)")
    if path.endswith(".json"):
        def no_duplicates(pairs):
            seen = set()
            for key, _ in pairs:
                if key in seen:
                    raise ConfigError(f"{path}: key {key!r} is given twice")
                seen.add(key)
            return dict(pairs)
        try:
            raw = json.loads(text, object_pairs_hook=no_duplicates)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise ConfigError(f"{path}: invalid JSON ({exc})") from None
    else:
        import yaml
        try:
            raw = yaml.load(text, Loader=_unique_key_loader(path))  # noqa: S506 - a SafeLoader
        except RecursionError:
            raise ConfigError(f"{path}: invalid YAML (nested too deeply)") from None
        except yaml.YAMLError as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"{path}: invalid YAML{where} ({first})") from None
    return validate_config(raw, path)
