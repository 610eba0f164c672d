"""Plain (noise-free) training, used for the original model, retraining and fine-tuning."""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch
from torch import nn
import torch.nn.functional as F

__all__ = ["train", "as_tensors", "epoch_batches", "steps_for_epochs"]


def as_tensors(data, device=None):
    """``(x, y)`` tensors from a pair of arrays/tensors, a ``TensorDataset`` or an ``ArrayDataset``."""
    from torch.utils.data import TensorDataset
    from .data import ArrayDataset
    if isinstance(data, ArrayDataset):
        x, y = data.x, data.y
    elif isinstance(data, TensorDataset):
        if len(data.tensors) != 2:
            raise ValueError(f"a TensorDataset must hold (x, y), got {len(data.tensors)} tensors")
        x, y = data.tensors
    elif isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = data
    else:
        raise ValueError("data must be a pair (x, y), a TensorDataset or an ArrayDataset, got "
                         f"{type(data).__name__}")
    x = torch.as_tensor(x)
    y = torch.as_tensor(y)
    if x.shape[:1] != y.shape[:1]:
        raise ValueError(f"x and y must have the same length, got {len(x)} and {len(y)}")
    if not x.is_floating_point():
        x = x.float()
    return x.to(device=device, dtype=torch.float32), y.to(device=device, dtype=torch.int64)


def epoch_batches(n: int, batch_size: int, generator: torch.Generator):
    """Endless stream of index batches: a fresh random permutation each epoch, split in order.

    The batches depend only on ``n``, ``batch_size`` and the generator, never on a model.
    """
    while True:
        perm = torch.randperm(n, generator=generator)
        for i in range(0, n, batch_size):
            yield perm[i:i + batch_size]


def steps_for_epochs(epochs: float, n: int, batch_size: int) -> int:
    """Steps of ``epochs`` passes over ``n`` points in batches of ``batch_size``.

    Whole passes are ``ceil(n / batch_size)`` steps each (the last batch of a pass is smaller);
    a fractional part f runs the first ``ceil(f * ceil(n / batch_size))`` batches of one more pass.
    """
    per_pass = -(-int(n) // int(batch_size))
    whole = math.floor(epochs)
    return int(whole * per_pass + math.ceil((epochs - whole) * per_pass - 1e-9))


def check_model_fits_data(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                          loss_fn=F.cross_entropy) -> None:
    """Refuse, with a ValueError, data the model or the loss cannot take, before any work.

    Runs the model on two samples without gradients (parameters and the global RNG are not
    touched) and, for the
    cross-entropy loss, checks every label against the number of outputs, so that a wrong input
    shape or an out-of-range label is one clear error instead of a failure deep in a training loop.
    """
    try:  # the global RNG is left as it was (dropout in train mode draws from it)
        with torch.no_grad(), torch.random.fork_rng(
                devices=[x.device] if x.device.type == "cuda" else []):
            out = model(x[:2])
            loss = loss_fn(out, y[:2])
    except Exception as exc:  # any failure of user code on user data, reported with its cause
        raise ValueError(f"the model cannot run on these inputs of shape {tuple(x.shape[1:])} "
                         f"per sample: {type(exc).__name__}: {exc}") from exc
    if loss.dim() != 0:
        raise ValueError(f"the loss must return a scalar, got shape {tuple(loss.shape)}")
    if loss_fn is F.cross_entropy and out.dim() == 2 and len(y):
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= out.shape[1]:
            bad = lo if lo < 0 else hi
            raise ValueError(f"labels must lie in [0, {out.shape[1]}) for a model with "
                             f"{out.shape[1]} outputs, found {bad}")


def train(model: nn.Module, data, *, epochs: float, lr: float, batch_size: int = 128,
          momentum: float = 0.9, weight_decay: float = 0.0, seed: Optional[int] = None,
          epoch_callback: Optional[Callable[[int, nn.Module], None]] = None,
          progress: bool = True, desc: str = "train") -> nn.Module:
    """Train ``model`` in place with mini-batch SGD (cross-entropy) and return it.

    ``epochs`` counts passes over the data, each ``ceil(n / batch_size)`` steps on a fresh random
    permutation (the last batch of a pass is smaller); a fractional part runs that fraction of
    one more pass (:func:`steps_for_epochs`). The optimizer is created once for the whole run.
    ``epoch_callback(epoch_index, model)`` is called after every whole pass (indices
    0 .. floor(epochs) - 1); the global RNG and train mode are restored after it, so a run with
    a callback that only evaluates ends with the same weights as one without.
    """
    from tqdm.auto import tqdm
    device = next(model.parameters()).device
    x, y = as_tensors(data, device)
    n = len(y)
    if n == 0:
        raise ValueError("cannot train on an empty data set")
    check_model_fits_data(model, x, y)
    if not epochs >= 0:
        raise ValueError(f"epochs must be >= 0, got {epochs!r}")
    steps = steps_for_epochs(epochs, n, batch_size)
    per_pass = -(-n // batch_size)
    if steps == 0:
        return model
    gen = torch.Generator()
    gen.manual_seed(int(seed) if seed is not None else int(torch.seed()))
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    cuda = [device] if device.type == "cuda" else []
    model.train()
    batches = epoch_batches(n, batch_size, gen)
    for t in tqdm(range(steps), desc=desc, disable=not progress, leave=False, unit="step"):
        idx = next(batches).to(device)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
        if epoch_callback is not None and (t + 1) % per_pass == 0:
            with torch.random.fork_rng(devices=cuda):
                epoch_callback((t + 1) // per_pass - 1, model)
            model.train()
    return model
