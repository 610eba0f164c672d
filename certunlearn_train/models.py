"""Small models that work with ``torch.func.vmap`` and the check every unlearned model must pass.

The unlearning certificate covers the model's *parameters*: they are clipped, noised and fine-tuned.
Anything else that is part of the released model and was computed from the training data would
carry the forget set through untouched. Before any work is done, :func:`check_unlearnable`
therefore refuses:

* every BatchNorm (and SyncBatchNorm): with running statistics its buffers were estimated on the
  full training set; without them it normalises with the statistics of the current batch, which
  mixes the samples of a batch (per-sample gradients are not defined, and the noisy steps run in
  train mode). InstanceNorm is refused when it tracks running statistics;
* any other floating-point buffer (same leak);
* models with no parameters, non-float32 parameters, or parameters on several devices;

and :func:`check_buffers_constant` refuses a model whose forward pass in train mode changes any
buffer, integer ones included (a counter of batches seen, a running maximum of token ids):
such state depends on the data and would not be unlearned. Constant integer buffers (index
tables, position ids) are fine; they are recorded in the model hashes like everything else.

GroupNorm and LayerNorm (parameters only, per-sample statistics) are fine.
"""
from __future__ import annotations

import contextlib
import math
from typing import Sequence, Tuple

import torch
from torch import nn

__all__ = ["MLP", "SmallCNN", "build_model", "check_unlearnable", "check_buffers_constant",
           "kept_buffers", "UnsupportedModelError", "MODELS"]

MODELS = ("mlp", "cnn")


class UnsupportedModelError(ValueError):
    """The model contains something the certified unlearning procedure cannot cover."""


class MLP(nn.Module):
    """Flatten, then ``Linear -> ReLU`` for each hidden width, then a ``Linear`` to the classes."""

    def __init__(self, in_features: int, num_classes: int, hidden: Sequence[int] = (64,)):
        super().__init__()
        widths = [int(in_features), *[int(h) for h in hidden]]
        layers = []
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(widths[-1], int(num_classes)))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x.flatten(1))


class SmallCNN(nn.Module):
    """Two 3x3 convolutions (the second with stride 2), ReLU, then a linear classifier."""

    def __init__(self, in_channels: int, image_size: int, num_classes: int,
                 channels: Tuple[int, int] = (16, 32)):
        super().__init__()
        c1, c2 = int(channels[0]), int(channels[1])
        self.conv1 = nn.Conv2d(in_channels, c1, 3, padding=1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1, stride=2)
        side = math.ceil(image_size / 2)
        self.fc = nn.Linear(c2 * side * side, int(num_classes))

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        return self.fc(x.flatten(1))


def build_model(name: str, input_shape: Sequence[int], num_classes: int, **kwargs) -> nn.Module:
    """Build ``"mlp"`` or ``"cnn"`` for inputs of shape ``input_shape`` = (C, H, W)."""
    shape = tuple(int(s) for s in input_shape)
    if name == "mlp":
        return MLP(int(math.prod(shape)), num_classes, **kwargs)
    if name == "cnn":
        if len(shape) != 3 or shape[1] != shape[2]:
            raise UnsupportedModelError(
                f"model 'cnn' needs square image inputs (C, H, H), got input shape {shape}")
        return SmallCNN(shape[0], shape[1], num_classes, **kwargs)
    raise UnsupportedModelError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")


_RUNNING_STATS = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)


def check_unlearnable(model: nn.Module, *, buffers: bool = True) -> None:
    """Raise :class:`UnsupportedModelError` if the certificate could not cover ``model``.

    See the module docstring for what is refused and why. Non-finite weights are checked
    separately (by ``unlearn``), since they are a property of the weights, not of the architecture.
    ``buffers=False`` leaves norm modules and buffers to the caller (``unlearn`` sorts them with
    :func:`certunlearn_train.buffers.plan_buffers`, which needs the private selection).
    """
    if not isinstance(model, nn.Module):
        raise UnsupportedModelError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    problems = []
    for name, module in model.named_modules() if buffers else ():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) or (
                isinstance(module, _RUNNING_STATS) and module.track_running_stats):
            problems.append(
                f"{name or 'model'} ({type(module).__name__}) keeps running statistics estimated "
                "on the training data or mixes the samples of a batch; use GroupNorm or "
                "LayerNorm (unlearn() accepts it in eval mode: see certunlearn_train.buffers)")
    for name, buf in model.named_buffers() if buffers else ():
        if buf is not None and buf.is_floating_point() and not any(
                name.startswith(p) for p in _stat_prefixes(model)):
            problems.append(f"buffer {name} is floating-point state outside the parameters; the "
                            "certificate covers parameters only")
    params = list(model.parameters())
    if not params:
        problems.append("the model has no parameters")
    bad_dtype = sorted({str(p.dtype) for p in params if p.dtype != torch.float32})
    if bad_dtype:
        problems.append(f"parameters must be float32, found {', '.join(bad_dtype)}")
    devices = sorted({str(p.device) for p in params})
    if len(devices) > 1:
        problems.append(f"parameters must be on one device, found {', '.join(devices)}")
    if problems:
        raise UnsupportedModelError("model cannot be unlearned with a certificate: "
                                    + "; ".join(problems))


def _stat_prefixes(model):
    # buffers of the modules already reported as running-statistics modules
    return [f"{n}." if n else "" for n, m in model.named_modules()
            if isinstance(m, _RUNNING_STATS)]


@contextlib.contextmanager
def kept_buffers(model: nn.Module):
    """Run a block, then put every buffer of ``model`` and its train/eval flags back as they were
    (a check's forward pass must not leave state behind)."""
    buffers = [b for _, b in model.named_buffers() if b is not None]
    saved = [b.detach().clone() for b in buffers]
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, s in zip(buffers, saved):
                if b.shape == s.shape:
                    b.copy_(s)
        for m, mode in modes:
            m.training = mode


def check_buffers_constant(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    """Refuse a model whose forward in train mode changes a buffer (data-dependent state).

    Runs the model on two samples without gradients in train mode and compares every buffer
    with its value before; the buffers and the modules' train/eval flags are restored
    afterwards, so the model is left bit-identical either way.
    """
    buffers = [(n, b) for n, b in model.named_buffers() if b is not None]
    if not buffers:
        return
    saved = [b.detach().clone() for _, b in buffers]
    with kept_buffers(model), torch.random.fork_rng(
            devices=[x.device] if x.device.type == "cuda" else []):
        model.train()
        with torch.no_grad():
            model(x[:2])
        changed = [n for (n, b), s in zip(buffers, saved)
                   if b.shape != s.shape or not torch.equal(b, s)]
    if changed:
        raise UnsupportedModelError(
            f"model cannot be unlearned with a certificate: buffer(s) {', '.join(changed)} change "
            "during a forward pass, so they hold state computed from the data that the "
            "certificate (which covers parameters) would not unlearn; make them constant or "
            "parameters")
