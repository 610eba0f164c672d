"""nn.LayerNorm / nn.GroupNorm affine parameters: out = xhat * weight + bias elementwise.

Sample i's gradients are sum over its positions of g * xhat (weight) and of g (bias), formed
directly (as many numbers per sample as the parameter has); xhat is recomputed from the input.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from ._types import PerSample
from .registry import register


def layer_norm_rule(module: nn.LayerNorm, inputs, g):
    x = inputs[0]
    shape = tuple(module.normalized_shape)
    xhat = F.layer_norm(x, shape, eps=module.eps)
    k = len(shape)
    lead = tuple(range(1, x.dim() - k))
    out = {}
    if module.weight is not None:
        wg = g * xhat
        out["weight"] = PerSample(wg.sum(lead) if lead else wg)
    if getattr(module, "bias", None) is not None:
        out["bias"] = PerSample(g.sum(lead) if lead else g)
    return out


def group_norm_rule(module: nn.GroupNorm, inputs, g):
    x = inputs[0]
    xhat = F.group_norm(x, module.num_groups, eps=module.eps)
    b, c = x.shape[:2]
    out = {}
    if module.weight is not None:
        out["weight"] = PerSample((g * xhat).reshape(b, c, -1).sum(2))
    if module.bias is not None:
        out["bias"] = PerSample(g.reshape(b, c, -1).sum(2))
    return out


register(nn.LayerNorm, layer_norm_rule)
register(nn.GroupNorm, group_norm_rule)
