"""nn.Conv1d / nn.Conv2d: unfold the input into patches, then the Linear form per group.

Output position t of group g uses the patch p_t (C_in/groups * prod(kernel) values, channel
slowest, the weight's own layout), so sample i's gradient of group g's weight block
(C_out/groups, C_in/groups * prod(kernel)) is sum_t g_t p_t^T. Any stride, padding (numbers,
"same", "valid", and the non-zero padding modes, applied as the layer does before convolving),
dilation and groups.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from ._types import Outer, PerSample
from .registry import register


def _patches(module, x):
    """(B, C_in * prod(kernel), L) patches of x as the layer convolves them (2-D layout)."""
    one_d = isinstance(module, nn.Conv1d)
    if one_d:
        x = x.unsqueeze(2)
        kernel, stride = (1, module.kernel_size[0]), (1, module.stride[0])
        dilation = (1, module.dilation[0])
    else:
        kernel, stride, dilation = module.kernel_size, module.stride, module.dilation
    if module.padding_mode != "zeros" or isinstance(module.padding, str):
        pad = module._reversed_padding_repeated_twice
        if any(pad):
            mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
            if one_d:
                x = F.pad(x.squeeze(2), pad, mode=mode).unsqueeze(2)
            else:
                x = F.pad(x, pad, mode=mode)
        padding = (0, 0)
    else:
        padding = (0, module.padding[0]) if one_d else module.padding
    return F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)


def conv_rule(module, inputs, g):
    x = inputs[0]
    b, groups = x.shape[0], module.groups
    p = _patches(module, x)  # (B, C_in*k, L)
    length = p.shape[2]
    right = p.view(b, groups, -1, length).transpose(2, 3)                      # (B, G, L, n)
    left = g.reshape(b, groups, module.out_channels // groups, length).transpose(2, 3)  # (B, G, L, m)
    out = {"weight": Outer(left, right)}
    if module.bias is not None:
        out["bias"] = PerSample(g.reshape(b, module.out_channels, -1).sum(2))
    return out


def _check(module):
    return None


register(nn.Conv1d, conv_rule, _check)
register(nn.Conv2d, conv_rule, _check)
