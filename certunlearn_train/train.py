"""Plain (noise-free) training, used for the original model, retraining and fine-tuning."""
from __future__ import annotations

import math
from typing import Callable, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from . import distributed
from .checks import MAX_STEPS, check_int, check_real, is_class_loss

__all__ = ["train", "as_tensors", "epoch_batches", "steps_for_epochs", "check_model_fits_data",
           "check_data_device", "save_modes", "restore_modes", "check_finite_model"]


def as_tensors(data, device=None, dtype: Optional[torch.dtype] = None,
               loss_fn: Callable = F.cross_entropy, name: str = "data"):
    """``(x, y)`` tensors from a pair of arrays/tensors, a ``TensorDataset`` or an ``ArrayDataset``.

    Floating inputs and targets are cast to ``dtype`` (the model's parameter dtype) when given;
    integer inputs (token ids) and integer targets (class labels, widened to int64) keep their
    kind, and every tensor keeps its shape. The data are checked by
    :func:`certunlearn_train.checks.check_data` (complex or non-finite values, non-integer class
    labels) and moved to ``device`` when one is given.
    """
    from .batches import convert_pair, tensor_pair
    raw_x, raw_y = tensor_pair(data, name)
    return convert_pair(raw_x, raw_y, device, dtype, loss_fn, name)


def _is_loader(data) -> bool:
    from torch.utils.data import DataLoader
    return isinstance(data, DataLoader)


def check_data_device(data, model_device: torch.device) -> None:
    """Refuse tensors on another device than the model's (when no ``device`` was given)."""
    from torch.utils.data import TensorDataset
    parts = data.tensors if isinstance(data, TensorDataset) else (
        data if isinstance(data, (tuple, list)) else ())
    for what, t in zip(("inputs", "targets"), parts):
        if isinstance(t, torch.Tensor) and t.device != model_device:
            raise ValueError(f"data {what} are on {t.device} but the model is on "
                             f"{model_device}; move them or pass device=")


def epoch_batches(n: int, batch_size: int, generator: torch.Generator):
    """Endless stream of index batches: a fresh random permutation each epoch, split in order.

    Each pass is ``ceil(n / batch_size)`` batches, the last one smaller when ``batch_size`` does
    not divide ``n``. The batches depend only on ``n``, ``batch_size`` and the generator, never on
    a model.
    """
    from .batches import index_batches
    return index_batches(n, batch_size, generator)


def steps_for_epochs(epochs: float, n: int, batch_size: int, name: str = "epochs") -> int:
    """Steps of ``epochs`` passes over ``n`` points in batches of ``batch_size``.

    Whole passes are ``ceil(n / batch_size)`` steps each; a fractional part f runs the first
    ``ceil(f * ceil(n / batch_size))`` batches of one more pass. Refuses (ValueError) a count above
    :data:`certunlearn_train.checks.MAX_STEPS`.
    """
    epochs = check_real(name, epochs, low=0.0, low_open=False)
    per_pass = -(-int(n) // int(batch_size))
    whole = math.floor(epochs)
    frac = epochs - whole
    if whole * per_pass > MAX_STEPS:
        raise ValueError(f"{name} must give at most {MAX_STEPS:.0e} steps, got {epochs!r} "
                         f"passes of {per_pass} steps")
    steps = whole * per_pass + math.ceil(frac * per_pass - 1e-9)
    if steps > MAX_STEPS:
        raise ValueError(f"{name} must give at most {MAX_STEPS:.0e} steps, got {epochs!r} "
                         f"passes of {per_pass} steps")
    return int(steps)


def save_modes(model: nn.Module) -> List[Tuple[nn.Module, bool]]:
    """The train/eval flag of every submodule (restored by :func:`restore_modes`)."""
    return [(m, m.training) for m in model.modules()]


def restore_modes(saved: List[Tuple[nn.Module, bool]]) -> None:
    for m, mode in saved:
        m.training = mode


def check_finite_model(model: nn.Module, what: str) -> None:
    """Raise if a parameter of ``model`` is NaN or infinite after ``what``."""
    for name, p in model.named_parameters():
        if not bool(torch.isfinite(p.detach()).all()):
            raise ValueError(f"{what} produced non-finite weights (parameter {name}); lower the "
                             "learning rate")


def check_model_fits_data(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                          loss_fn=F.cross_entropy) -> Optional[int]:
    """Refuse, with a ValueError, data the model or the loss cannot take, before any work.

    Runs the model on two samples without gradients (parameters, buffers, the train/eval modes
    and the global RNG are left as they were) and, for a class loss (cross-entropy, NLL) with integer
    targets, checks every label against the number of outputs, so that a wrong input shape or an
    out-of-range label is one clear error instead of a failure deep in a training loop.

    Returns the number of classes labels must stay below (a class loss on 2-D outputs), else
    None; data read batch by batch check every later batch against it.
    """
    from .models import kept_buffers
    try:  # the global RNG and the buffers are left as they were (dropout, a counter buffer)
        with torch.no_grad(), kept_buffers(model), torch.random.fork_rng(
                devices=[x.device] if x.device.type == "cuda" else []):
            out = model(x[:2])
            loss = loss_fn(out, y[:2])
    except Exception as exc:  # any failure of user code on user data, reported with its cause
        raise ValueError(f"the model cannot run on these inputs of shape {tuple(x.shape[1:])} "
                         f"per sample: {type(exc).__name__}: {exc}") from exc
    if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
        raise ValueError(f"the loss must return a scalar tensor, got "
                         f"{tuple(loss.shape) if isinstance(loss, torch.Tensor) else loss!r}")
    if is_class_loss(loss_fn) and not y.is_floating_point() and out.dim() == 2 and len(y):
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= out.shape[1]:
            bad = lo if lo < 0 else hi
            raise ValueError(f"labels must lie in [0, {out.shape[1]}) for a model with "
                             f"{out.shape[1]} outputs, found {bad}")
    if is_class_loss(loss_fn) and out.dim() == 2:
        return int(out.shape[1])
    return None


def train(model: nn.Module, data, *, epochs: float, lr: float, batch_size: int = 128,
          momentum: float = 0.9, weight_decay: float = 0.0, seed: Optional[int] = None,
          loss_fn: Callable = F.cross_entropy,
          epoch_callback: Optional[Callable[[int, nn.Module], None]] = None,
          parameters=None, progress: bool = True, desc: str = "train") -> nn.Module:
    """Train ``model`` in place with mini-batch SGD on ``loss_fn`` and return it.

    Args:
        epochs: passes over the data, each ``ceil(n / batch_size)`` steps on a fresh random
            permutation (the last batch of a pass is smaller); a fractional part runs that
            fraction of one more pass (:func:`steps_for_epochs`).
        loss_fn: ``loss_fn(outputs, targets)``, a scalar mean over the batch.
        epoch_callback: called as ``epoch_callback(epoch_index, model)`` after every whole pass
            (indices 0 .. floor(epochs) - 1). It may evaluate the model (switch it to eval mode,
            draw random numbers): the modules' train/eval flags and the global RNG are restored
            afterwards, so the run is the same with or without it. It must not change weights.
        parameters: the parameters to train (default: all with ``requires_grad``).

    The optimizer (SGD with ``momentum``) is created once for the whole run. The model's
    train/eval flags are restored at the end. A non-finite loss or weight stops the run with a
    ValueError.
    """
    from tqdm.auto import tqdm
    lr = check_real("lr", lr, low=0.0)
    batch_size = check_int("batch_size", batch_size, low=1)
    momentum = check_real("momentum", momentum, low=0.0, low_open=False)
    weight_decay = check_real("weight_decay", weight_decay, low=0.0, low_open=False)
    from .batches import as_batches, is_stream
    first = next(model.parameters())
    if not is_stream(data):
        check_data_device(data, first.device)
    source = as_batches(data, batch_size=None if _is_loader(data) else batch_size,
                        device=first.device, dtype=first.dtype, loss_fn=loss_fn)
    x, y = source.first()
    if source.kind == "tensors":
        distributed.check_same_data(x, y)
    steps = steps_for_epochs(epochs, source.pass_length(), 1)
    per_pass = source.pass_length()
    saved = save_modes(model)
    try:
        source.label_bound = check_model_fits_data(model, x, y, loss_fn)
    finally:
        restore_modes(saved)
    if steps == 0:
        return model
    params = [p for p in model.parameters() if p.requires_grad] if parameters is None \
        else list(parameters)
    gen = torch.Generator()
    gen.manual_seed(int(seed) if seed is not None else distributed.from_rank0(int(torch.seed())))
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    cuda = [first.device] if first.device.type == "cuda" else []
    batches = source.stream(gen)
    dp = distributed.active()
    try:
        model.train()
        for t in tqdm(range(steps), desc=desc, disable=not progress, leave=False, unit="step"):
            bx, by, b = next(batches)
            opt.zero_grad(set_to_none=True)
            if dp:  # each rank its slice; gradients and loss averaged over the global batch
                loss = distributed.backward_share(model, loss_fn, bx, by, b, params)
            else:
                loss = loss_fn(model(bx), by)
            if not bool(torch.isfinite(loss.detach())):
                raise ValueError(f"{desc} diverged: non-finite loss at step {t}; lower lr")
            if not dp:
                loss.backward()
            opt.step()
            if epoch_callback is not None and (t + 1) % per_pass == 0:
                with torch.random.fork_rng(devices=cuda):
                    epoch_callback((t + 1) // per_pass - 1, model)
                model.train()
        check_finite_model(model, desc)
    finally:
        restore_modes(saved)
        opt.zero_grad(set_to_none=True)
    return model
