"""Model files: weights plus the record of how to rebuild the architecture.

A model file is what ``torch.save`` writes for ``{"state_dict": ..., "arch": {...}}``; it is
read back with ``weights_only=True`` (no code runs while loading). The architecture is either

* a record of a bundled model (:func:`model_arch`: ``name``, ``input_shape``, ``num_classes``,
  ``kwargs``, plus the data set it was trained on), rebuilt by :func:`model_from_arch`; or
* a model factory ``"pkg.module:function"`` given by the user (``--model-factory`` on the
  command line, ``model_factory`` in a config): ``function()`` returns the ``nn.Module`` and the
  state dict is loaded into it. Any file holding a plain state dict (``torch.save(model.
  state_dict(), path)``) works this way.

Anything that is not such a file (random bytes, an empty or truncated file, a pickle of another
object) is a :class:`ModelFileError` saying ``not a certunlearn model file``.
"""
from __future__ import annotations

import importlib
import io
import os
import sys
import warnings
from typing import Any, Dict, Mapping, Optional, Tuple

__all__ = ["ModelFileError", "FactorySpecError", "save_model_file", "model_file_bytes",
           "load_model_file", "model_arch", "model_from_arch", "load_model", "import_factory"]


class ModelFileError(ValueError):
    """A model file is missing, unreadable, not a certunlearn model file, or does not fit."""


def model_arch(name: str, input_shape, num_classes: int, data: Dict[str, Any],
               **kwargs) -> Dict[str, Any]:
    """The architecture record stored next to the weights of a bundled model."""
    return {"name": name, "input_shape": [int(s) for s in input_shape],
            "num_classes": int(num_classes),
            "kwargs": {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()},
            "data": dict(data)}


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 3].rstrip() + "..."


def _load_state(model, state_dict, what: str):
    try:
        model.load_state_dict(state_dict)
    except (RuntimeError, KeyError, TypeError, ValueError) as exc:
        # torch lists the missing and unexpected keys and the shape mismatches on lines of their
        # own after a header: keep each (shortened), on one line
        lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
        if len(lines) > 1 and lines[0].startswith("Error(s) in loading state_dict"):
            lines = lines[1:]
        detail = "; ".join(_shorten(ln, 240) for ln in lines) or type(exc).__name__
        raise ModelFileError(f"weights do not fit {what}: {_shorten(detail, 800)}") from None
    return model


def model_from_arch(arch: Mapping[str, Any], state_dict=None):
    """Rebuild the bundled model recorded by :func:`model_arch` (and load ``state_dict``)."""
    from .models import build_model
    try:
        model = build_model(arch["name"], arch["input_shape"], arch["num_classes"],
                            **dict(arch.get("kwargs") or {}))
    except KeyError as exc:
        raise ModelFileError(f"model file has no architecture record (missing {exc}); give "
                             "--model-factory for a plain state dict") from None
    except (TypeError, ValueError) as exc:
        raise ModelFileError(f"the model file's architecture record is invalid: {exc}") from None
    if state_dict is not None:
        _load_state(model, state_dict, "the recorded architecture")
    return model


class FactorySpecError(ValueError):
    """A model factory name that is not of the form ``package.module:function`` (a usage error)."""


def import_factory(spec: str):
    """The callable named by ``"pkg.module:function"`` (imported, not called).

    The module is looked up on ``sys.path`` and then in the current folder (as ``python -m``
    would find it; installed packages keep precedence over a local file of the same name).
    """
    if not isinstance(spec, str) or spec.count(":") != 1 or not all(spec.split(":")) \
            or not all(part.isidentifier() for part in spec.replace(":", ".").split(".")):
        raise FactorySpecError(f"model factory must be 'package.module:function', got {spec!r}")
    mod_name, fn_name = spec.split(":")
    here = os.getcwd()
    added = here not in sys.path and "" not in sys.path
    if added:
        sys.path.append(here)
    try:
        module = importlib.import_module(mod_name)
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - any failure of the user module
        raise ModelFileError(f"cannot import the model factory module {mod_name!r}: "
                             f"{type(exc).__name__}: {exc}") from None
    finally:
        if added and here in sys.path:
            sys.path.remove(here)
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise ModelFileError(f"model factory {spec!r}: {mod_name} has no callable {fn_name!r}")
    return fn


def save_model_file(path: str, model, arch: Optional[Mapping[str, Any]] = None) -> None:
    """Save ``{"state_dict", "arch"}`` with ``torch.save``, atomically (temporary file + rename).

    ``arch`` is a :func:`model_arch` record, or ``{"factory": "pkg.mod:fn"}``, or empty (then
    loading needs a model factory).
    """
    from .files import atomic_write_bytes
    atomic_write_bytes(path, model_file_bytes(model, arch))


def model_file_bytes(model, arch: Optional[Mapping[str, Any]] = None) -> bytes:
    """The bytes :func:`save_model_file` writes (to write them together with other files)."""
    import torch
    buf = io.BytesIO()
    torch.save({"state_dict": model.state_dict(), "arch": dict(arch or {})}, buf)
    return buf.getvalue()


def _load_failure(exc: BaseException) -> str:
    """What ``torch.load`` found wrong, in a few words: the unpickler's own reason (not torch's
    advice about ``weights_only``), or the first sentence of the message."""
    text = str(exc).strip()
    if "WeightsUnpickler error:" in text:
        reason = text.split("WeightsUnpickler error:", 1)[1].strip().split("\n\n")[0]
        return _shorten(" ".join(reason.split()), 160) or type(exc).__name__
    first = " ".join(text.split(". ")[0].split())
    return _shorten(first, 160) if first else type(exc).__name__


def load_model_file(path: str) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """Load a model file; returns ``(state_dict, arch)`` (``arch`` empty for a plain state dict).

    Raises:
        ModelFileError: the file is missing, unreadable or not a certunlearn model file.
    """
    import torch
    if os.path.isdir(path):
        raise ModelFileError(f"model file {path!r} is a directory")
    if not os.path.isfile(path):
        raise ModelFileError(f"model file {path!r} does not exist")
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise ModelFileError(f"cannot read model file {path!r}: {exc.strerror}") from None
    if not raw:
        raise ModelFileError(f"{path}: not a certunlearn model file (the file is empty)")
    try:
        with warnings.catch_warnings():  # torch warns about odd pickle protocols: one line only
            warnings.simplefilter("ignore")
            obj = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file
        raise ModelFileError(f"{path}: not a certunlearn model file ({_load_failure(exc)})"
                             ) from None
    if isinstance(obj, Mapping) and "state_dict" in obj:
        state, arch = obj["state_dict"], obj.get("arch") or {}
    else:
        state, arch = obj, {}
    if not isinstance(state, Mapping) or not isinstance(arch, Mapping) or not state \
            or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                       for k, v in state.items()):
        raise ModelFileError(f"{path}: not a certunlearn model file (it holds a "
                             f"{type(obj).__name__}, not a state dict of tensors)")
    return dict(state), dict(arch)


def load_model(path: str, factory: Optional[str] = None):
    """The model stored at ``path``, rebuilt and loaded; returns ``(model, arch)``.

    With ``factory`` (``"pkg.mod:fn"``) the module is built by ``fn()`` whatever the file records;
    otherwise the file's own record is used (a factory recorded by a previous run, or a bundled
    architecture).
    """
    from torch import nn
    state, arch = load_model_file(path)
    spec = factory or arch.get("factory")
    if spec:
        fn = import_factory(spec)
        try:
            model = fn()
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - the user factory failed
            raise ModelFileError(f"model factory {spec!r} failed: {type(exc).__name__}: "
                                 f"{exc}") from None
        if not isinstance(model, nn.Module):
            raise ModelFileError(f"model factory {spec!r} must return an nn.Module, got "
                                 f"{type(model).__name__}")
        _load_state(model, state, f"the module built by {spec!r}")
        return model, dict(arch, factory=spec)
    if not arch:
        raise ModelFileError(f"{path}: the file holds weights but no architecture record; give "
                             "a model factory (--model-factory pkg.module:function)")
    return model_from_arch(arch, state), arch
