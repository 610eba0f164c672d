"""nn.LayerNorm / nn.GroupNorm / nn.BatchNorm (eval mode) affine parameters: out = xhat * weight
+ bias elementwise.

Sample i's gradients are sum over its positions of g * xhat (weight) and of g (bias), formed
directly (as many numbers per sample as the parameter has); xhat is recomputed from the input
(LayerNorm: from the mean and reciprocal standard deviation its forward saved for autograd).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ._types import PerSample
from .registry import register


def _saved_layer_norm_stats(x, output, k):
    """(mean, rstd) that autograd saved for this LayerNorm call, shaped to broadcast over x, or
    None (no graph, another op, another shape)."""
    node = getattr(output, "grad_fn", None)
    if node is None or type(node).__name__ != "NativeLayerNormBackward0":
        return None
    mean, rstd = getattr(node, "_saved_result1", None), getattr(node, "_saved_result2", None)
    want = tuple(x.shape[:x.dim() - k]) + (1,) * k
    if not (isinstance(mean, torch.Tensor) and isinstance(rstd, torch.Tensor)
            and tuple(mean.shape) == want and tuple(rstd.shape) == want
            and mean.dtype == x.dtype and rstd.dtype == x.dtype):
        return None
    return mean, rstd


def layer_norm_rule(module: nn.LayerNorm, inputs, g, output=None):
    x = inputs[0]
    shape = tuple(module.normalized_shape)
    k = len(shape)
    stats = _saved_layer_norm_stats(x, output, k)
    # the statistics of the forward (one elementwise pass) instead of normalising again
    xhat = (x - stats[0]) * stats[1] if stats is not None else \
        F.layer_norm(x, shape, eps=module.eps)
    lead = tuple(range(1, x.dim() - k))
    out = {}
    if module.weight is not None:
        wg = g * xhat
        out["weight"] = PerSample(wg.sum(lead) if lead else wg)
    if getattr(module, "bias", None) is not None:
        out["bias"] = PerSample(g.sum(lead) if lead else g)
    return out


def _channel_affine(module, xhat, g):
    """Per-sample gradients of a per-channel affine map ``xhat * weight + bias`` (channels on
    dimension 1) given the output gradient ``g``."""
    b, c = xhat.shape[:2]
    out = {}
    if module.weight is not None:
        out["weight"] = PerSample((g * xhat).reshape(b, c, -1).sum(2))
    if module.bias is not None:
        out["bias"] = PerSample(g.reshape(b, c, -1).sum(2))
    return out


def group_norm_rule(module: nn.GroupNorm, inputs, g):
    x = inputs[0]
    return _channel_affine(module, F.group_norm(x, module.num_groups, eps=module.eps), g)


register(nn.LayerNorm, layer_norm_rule)
register(nn.GroupNorm, group_norm_rule)


def batch_norm_rule(module: nn.modules.batchnorm._BatchNorm, inputs, g):
    """BatchNorm in eval mode with running statistics is a per-channel affine map:
    xhat = (x - running_mean) / sqrt(running_var + eps), then xhat * weight + bias. In train
    mode it mixes the samples of a batch and no per-sample gradient exists: refused."""
    if module.training or module.running_mean is None or module.running_var is None:
        raise ValueError(f"{type(module).__name__}: per-sample gradients exist only in eval mode "
                         "with running statistics (in train mode it mixes the samples of a "
                         "batch)")
    x = inputs[0]
    shape = (1, -1) + (1,) * (x.dim() - 2)
    xhat = (x - module.running_mean.view(shape)) * torch.rsqrt(
        module.running_var.view(shape) + module.eps)
    return _channel_affine(module, xhat, g)


def batch_norm_check(module) -> Optional[str]:
    if not module.track_running_stats:
        return "tracks no running statistics (normalises with the batch's)"
    return None


for _bn in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d):
    register(_bn, batch_norm_rule, batch_norm_check)
