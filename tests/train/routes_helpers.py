"""Random small architectures and the explicit per-sample reference every gradient route must match.

Shared by every test of a route that turns a batch into the gradient of one noisy step
(``GradientSource`` in ``certunlearn_train._flat`` and any faster route added later):

* :func:`architectures` is a hypothesis strategy for :class:`Case` objects: a small model, a batch
  ``(x, y)`` and a loss, covering linear stacks, tied weights (two ``nn.Linear`` sharing one
  weight), a layer called twice, a weight reused outside its module, a convolution,
  convolutions with 8 input channels per group (one called twice; groups, dilation and padding
  modes), an embedding on integer token ids, and layer norm; with the cross-entropy loss, label
  smoothing, and MSE on float targets.
* :func:`explicit_clipped_mean` is the reference: a Python loop over the samples, autograd of
  ``loss_fn(model(x_i[None]), y_i[None])`` (a shared weight's gradient is therefore the sum over
  its uses), each gradient clipped to ``C1`` in float64, then averaged.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from torch import nn

__all__ = ["Case", "KINDS", "LOSSES", "architectures", "build_case", "explicit_clipped_mean",
           "explicit_per_sample_gradients", "norm_quantiles"]

KINDS = ("linear_stack", "tied", "called_twice", "weight_reused", "conv", "conv_wide",
         "embedding", "layer_norm")
LOSSES = ("cross_entropy", "label_smoothing", "mse")


@dataclass
class Case:
    kind: str
    loss: str
    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    loss_fn: Callable

    def __repr__(self):  # hypothesis prints this for a failing example
        return f"Case(kind={self.kind!r}, loss={self.loss!r}, x={tuple(self.x.shape)})"


class _Tied(nn.Module):
    """in -> Linear(in, h) -> tanh -> Linear(h, h) -> tanh -> Linear(h, h) [same weight] -> out."""

    def __init__(self, i, h, o):
        super().__init__()
        self.inp = nn.Linear(i, h)
        self.a = nn.Linear(h, h)
        self.b = nn.Linear(h, h)
        self.b.weight = self.a.weight  # one Parameter owned by two modules
        self.out = nn.Linear(h, o)

    def forward(self, x):
        h = torch.tanh(self.inp(x.flatten(1)))
        return self.out(torch.tanh(self.b(torch.tanh(self.a(h)))))


class _CalledTwice(nn.Module):
    def __init__(self, i, h, o):
        super().__init__()
        self.inp = nn.Linear(i, h)
        self.mid = nn.Linear(h, h)
        self.out = nn.Linear(h, o)

    def forward(self, x):
        h = torch.tanh(self.inp(x.flatten(1)))
        return self.out(torch.tanh(self.mid(torch.tanh(self.mid(h)))))


class _WeightReused(nn.Module):
    """A Linear layer's weight also used functionally: invisible to hooks on the module."""

    def __init__(self, i, h, o):
        super().__init__()
        self.inp = nn.Linear(i, h)
        self.mid = nn.Linear(h, h)
        self.out = nn.Linear(h, o)

    def forward(self, x):
        h = torch.tanh(self.inp(x.flatten(1)))
        h = torch.tanh(self.mid(h)) + 0.5 * torch.tanh(F.linear(h, self.mid.weight))
        return self.out(h)


class _Conv(nn.Module):
    def __init__(self, side, h, o):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.fc = nn.Linear(2 * side * side, o)

    def forward(self, x):
        return self.fc(torch.tanh(self.conv(x)).flatten(1))


class _ConvWide(nn.Module):
    """Convolutions with 8 input channels per group (the grouped-convolution route of the conv
    rule): one called twice (shared weight; dilation, padding mode and groups from ``seed``),
    then a strided one, then a Linear head."""

    def __init__(self, side, o, seed):
        super().__init__()
        groups, dil = 1 + seed % 2, 1 + (seed // 2) % 2
        mode = ("zeros", "reflect", "circular")[(seed // 4) % 3]
        c = 8 * groups
        self.a = nn.Conv2d(c, c, 3, padding=dil, dilation=dil, groups=groups, padding_mode=mode,
                           bias=bool(seed % 5))
        self.b = nn.Conv2d(c, 2, 3, stride=2, padding=1, groups=1)
        self.fc = nn.Linear(2 * ((side + 1) // 2) ** 2, o)

    def forward(self, x):
        h = torch.tanh(self.a(torch.tanh(self.a(x))))
        return self.fc(torch.tanh(self.b(h)).flatten(1))


class _Tokens(nn.Module):
    """Embedding of integer token ids, mean over the sequence, then a Linear head."""

    def __init__(self, vocab, h, o):
        super().__init__()
        self.emb = nn.Embedding(vocab, h)
        self.head = nn.Linear(h, o)

    def forward(self, x):
        return self.head(self.emb(x).mean(1))


class _LayerNorm(nn.Module):
    def __init__(self, i, h, o):
        super().__init__()
        self.inp = nn.Linear(i, h)
        self.norm = nn.LayerNorm(h)
        self.out = nn.Linear(h, o)

    def forward(self, x):
        return self.out(torch.tanh(self.norm(self.inp(x.flatten(1)))))


def _loss_fn(loss: str) -> Callable:
    if loss == "cross_entropy":
        return F.cross_entropy
    if loss == "label_smoothing":
        return lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1)
    if loss == "mse":
        return F.mse_loss
    raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")


def build_case(kind: str, loss: str, *, batch: int = 5, width: int = 4, depth: int = 1,
               outputs: int = 3, seed: int = 0, dtype=torch.float64) -> Case:
    """One architecture ``kind`` with random weights, a batch of ``batch`` samples and a loss.

    Inputs are float ``dtype`` (1 x 3 x 3 images for ``conv``), integer token ids (sequences of
    length 4 from a vocabulary of 7) for ``embedding``. Targets are class indices for the
    cross-entropy losses and float ``dtype`` vectors of length ``outputs`` for ``mse``.
    """
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed + 1)
    i, h, o = 6, int(width), int(outputs)
    if kind == "linear_stack":
        layers, w = [], i
        for _ in range(int(depth)):
            layers += [nn.Linear(w, h), nn.Tanh()]
            w = h
        model = nn.Sequential(nn.Flatten(), *layers, nn.Linear(w, o))
    elif kind == "tied":
        model = _Tied(i, h, o)
    elif kind == "called_twice":
        model = _CalledTwice(i, h, o)
    elif kind == "weight_reused":
        model = _WeightReused(i, h, o)
    elif kind == "conv":
        model = _Conv(3, h, o)
    elif kind == "conv_wide":
        model = _ConvWide(5, o, seed)
    elif kind == "embedding":
        model = _Tokens(7, h, o)
    elif kind == "layer_norm":
        model = _LayerNorm(i, h, o)
    else:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    model = model.to(dtype)
    if kind == "embedding":
        x = torch.randint(0, 7, (batch, 4), generator=g)
    elif kind == "conv":
        x = torch.randn(batch, 1, 3, 3, generator=g, dtype=dtype)
    elif kind == "conv_wide":
        x = torch.randn(batch, model.a.in_channels, 5, 5, generator=g, dtype=dtype)
    else:
        x = torch.randn(batch, i, generator=g, dtype=dtype)
    if loss == "mse":
        y = torch.randn(batch, o, generator=g, dtype=dtype)
    else:
        y = torch.randint(0, o, (batch,), generator=g)
    return Case(kind, loss, model, x, y, _loss_fn(loss))


@st.composite
def architectures(draw, kinds=KINDS, losses=LOSSES, dtype=torch.float64) -> Case:
    """Hypothesis strategy for :class:`Case` (small: at most 8 samples, width at most 6)."""
    return build_case(draw(st.sampled_from(kinds)), draw(st.sampled_from(losses)),
                      batch=draw(st.integers(1, 8)), width=draw(st.integers(2, 6)),
                      depth=draw(st.integers(1, 3)), outputs=draw(st.integers(2, 4)),
                      seed=draw(st.integers(0, 2 ** 16)), dtype=dtype)


def explicit_per_sample_gradients(model: nn.Module, x, y, loss_fn) -> torch.Tensor:
    """(B, d) float64: row i is the gradient of ``loss_fn(model(x_i[None]), y_i[None])``.

    Columns follow ``model.named_parameters()`` (each shared parameter once, with the gradient
    summed over all its uses, which is what autograd computes).
    """
    params = [p for _, p in model.named_parameters()]
    rows = []
    for i in range(len(x)):
        loss = loss_fn(model(x[i:i + 1]), y[i:i + 1])
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        rows.append(torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1).double()
                               for g, p in zip(grads, params)]))
    return torch.stack(rows)


def explicit_clipped_mean(model: nn.Module, x, y, loss_fn, C1: float) -> torch.Tensor:
    """(d,) float64: (1/B) sum_i min(1, C1/||G_i||) G_i over the explicit per-sample gradients."""
    rows = explicit_per_sample_gradients(model, x, y, loss_fn)
    if math.isinf(C1):
        return rows.mean(0)
    norms = rows.norm(dim=1)
    scale = torch.where(norms > C1, C1 / norms.clamp_min(1e-300), torch.ones_like(norms))
    return (rows * scale[:, None]).mean(0)


def norm_quantiles(model: nn.Module, x, y, loss_fn) -> torch.Tensor:
    """Per-sample gradient norms of the reference, sorted (to pick clipping radii that bite)."""
    return explicit_per_sample_gradients(model, x, y, loss_fn).norm(dim=1).sort().values
