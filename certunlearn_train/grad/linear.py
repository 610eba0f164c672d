"""nn.Linear: per-sample weight gradient sum_t g_t a_t^T over the positions t of the input."""
from __future__ import annotations

from typing import Dict, Union

from torch import nn

from ._types import Outer, PerSample
from .registry import register


def linear_rule(module: nn.Linear, inputs, g):
    a = inputs[0]
    b = a.shape[0]
    a = a.reshape(b, 1, -1, module.in_features)  # (B, G=1, T, in): T = 1 for 2-D inputs
    g = g.reshape(b, 1, -1, module.out_features)
    out: Dict[str, Union[Outer, PerSample]] = {"weight": Outer(g, a)}
    if module.bias is not None:
        # one position (2-D input): the output gradient itself
        out["bias"] = PerSample(g.view(b, module.out_features) if g.shape[2] == 1
                                else g.sum(2)[:, 0])
    return out


def _check(module: nn.Linear):
    return None


register(nn.Linear, linear_rule, _check)
