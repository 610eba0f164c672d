"""nn.Conv1d / nn.Conv2d: the per-sample weight gradients, formed or as Gram matrices.

Output position t of group g uses the patch p_t (C_in/groups * prod(kernel) values, channel
slowest, the weight's own layout), so sample i's gradient of group g's weight block
(C_out/groups, C_in/groups * prod(kernel)) is sum_t g_t p_t^T. Any stride, padding (numbers,
"same", "valid", and the non-zero padding modes, applied as the layer does before convolving),
dilation and groups.

Two routes, chosen per call from the layer's shape:

* per-sample gradients formed by one grouped convolution over the batch (the batch folded into
  the channels, B * groups groups: the layer's own weight-gradient kernel then gives every
  sample's gradient at once, with no patches), returned as :class:`PerSample` so the norms and the
  clipped sum (``s @ G``) read the same formed numbers; taken on the CPU where the Gram route is
  not cheaper, the whole batch's gradients fit in ``WORK_BYTES``, and the patches would be a real
  expansion of the input (``C_in/groups >= 8`` and a kernel larger than 1), the shapes where it
  measured faster than unfolding (docs/kernel.md);
* otherwise the input is unfolded into patches and the Linear form per group (:class:`Outer`:
  Gram norms or formed blocks, whichever is cheaper, see :mod:`._types`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._types import WORK_BYTES, Outer, PerSample
from .registry import register
from .workspace import scratch


def _as_2d(module, x):
    """(x, kernel, stride, dilation, padding) of the layer as a 2-D convolution.

    Padding that is not a plain zero border (a string, or a non-zero padding mode) is applied
    to x here, as the layer itself does before convolving, and the convolution then has none.
    """
    one_d = isinstance(module, nn.Conv1d)
    if module.padding_mode != "zeros" or isinstance(module.padding, str):
        pad = module._reversed_padding_repeated_twice
        if any(pad):
            mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
            x = F.pad(x, pad, mode=mode)
        padding = (0,) * (1 if one_d else 2)
    else:
        padding = module.padding
    if one_d:
        return (x.unsqueeze(2), (1, module.kernel_size[0]), (1, module.stride[0]),
                (1, module.dilation[0]), (0, padding[0]))
    return x, module.kernel_size, module.stride, module.dilation, padding


def _valid(k_off: int, pad: int, stride: int, size: int, out_size: int):
    """Output positions o whose input position o * stride + k_off - pad lies in [0, size)."""
    lo = max(0, -((k_off - pad) // stride))            # ceil((pad - k_off) / stride)
    hi = min(out_size, (size - 1 + pad - k_off) // stride + 1)
    return lo, max(lo, hi)


def _patches(x, kernel, stride, dilation, padding):
    """F.unfold(x, ...) as (B, C*kh*kw, T), built by kh*kw strided slice copies.

    Same values and layout as F.unfold (channel slowest, then kernel row and column), which on
    the CPU loops over the batch and is up to ten times slower for few-channel inputs. The zero
    border is written into the patches directly (no padded copy of the input).
    """
    b, c, h, w = x.shape
    ho = (h + 2 * padding[0] - dilation[0] * (kernel[0] - 1) - 1) // stride[0] + 1
    wo = (w + 2 * padding[1] - dilation[1] * (kernel[1] - 1) - 1) // stride[1] + 1
    out = scratch("patches", (b, c, kernel[0], kernel[1], ho, wo), x)
    for i in range(kernel[0]):
        r_lo, r_hi = _valid(i * dilation[0], padding[0], stride[0], h, ho)
        for j in range(kernel[1]):
            c_lo, c_hi = _valid(j * dilation[1], padding[1], stride[1], w, wo)
            dst = out[:, :, i, j]
            # the border strips that read the zero padding
            dst[:, :, :r_lo].zero_()
            dst[:, :, r_hi:].zero_()
            dst[:, :, r_lo:r_hi, :c_lo].zero_()
            dst[:, :, r_lo:r_hi, c_hi:].zero_()
            if r_lo < r_hi and c_lo < c_hi:
                r0 = r_lo * stride[0] + i * dilation[0] - padding[0]
                c0 = c_lo * stride[1] + j * dilation[1] - padding[1]
                dst[:, :, r_lo:r_hi, c_lo:c_hi].copy_(
                    x[:, :, r0:r0 + stride[0] * (r_hi - r_lo - 1) + 1:stride[0],
                      c0:c0 + stride[1] * (c_hi - c_lo - 1) + 1:stride[1]])
    return out.view(b, c * kernel[0] * kernel[1], ho * wo)


#: Smallest C_in/groups for which the grouped-convolution route is taken (below it the patches
#: are small and unfolding measured faster).
GROUPED_MIN_CHANNELS = 8


def _grouped_route(module, x, g) -> bool:
    """Form the per-sample gradients by a grouped convolution (see the module docstring)?"""
    b, groups = x.shape[0], module.groups
    m = module.out_channels // groups
    kernel = 1
    for k in module.kernel_size:
        kernel *= k
    n = module.in_channels // groups * kernel
    t = g.numel() // max(b * module.out_channels, 1)
    return (x.device.type == "cpu" and kernel > 1 and module.in_channels // groups >=
            GROUPED_MIN_CHANNELS and t * t * (m + n) >= t * m * n
            and b * groups * m * n * x.element_size() <= WORK_BYTES)


def per_sample_weight_grads(module, x2, g4, stride, dilation, padding):
    """(B, *weight.shape) per-sample weight gradients by one grouped convolution over the batch.

    x2 (B, C_in, H, W) and g4 (B, C_out, H', W') as 2-D; sample i's channels become groups
    i * groups ... (i + 1) * groups - 1 of a single-image convolution, so its weight gradient
    (B * C_out, C_in/groups, kh, kw) is the per-sample gradients stacked sample by sample.
    """
    b, groups = x2.shape[0], module.groups
    w2 = module.weight.detach()
    if w2.dim() == 3:  # Conv1d as a 2-D convolution of height 1
        w2 = w2.unsqueeze(2)
    # only the weight's shape is read (its gradient does not depend on its values)
    shape = w2.new_empty(()).expand(b * w2.shape[0], *w2.shape[1:])
    gw = torch.ops.aten.convolution_backward(
        g4.reshape(1, -1, *g4.shape[2:]), x2.reshape(1, -1, *x2.shape[2:]), shape, None,
        list(stride), list(padding), list(dilation), False, [0, 0], b * groups,
        [False, True, False])[1]
    return gw.view(b, *module.weight.shape)


def conv_rule(module, inputs, g):
    x = inputs[0]
    if x.dim() != (3 if isinstance(module, nn.Conv1d) else 4):
        raise ValueError(f"input without a batch dimension (shape {tuple(x.shape)})")
    b, groups = x.shape[0], module.groups
    x2, kernel, stride, dilation, padding = _as_2d(module, x)
    if _grouped_route(module, x, g):
        g4 = g.reshape(b, module.out_channels, -1, g.shape[-1])  # Conv1d: height 1
        out = {"weight": PerSample(per_sample_weight_grads(module, x2, g4, stride, dilation,
                                                            padding))}
        if module.bias is not None:
            out["bias"] = PerSample(g4.sum((2, 3)))
        return out
    p = _patches(x2, kernel, stride, dilation, padding)  # (B, n*G, T)
    length = p.shape[2]
    right = p.view(b, groups, -1, length).transpose(2, 3)                              # (B, G, T, n)
    g2 = g.reshape(b, module.out_channels, length)
    left = g2.view(b, groups, module.out_channels // groups, length).transpose(2, 3)  # (B, G, T, m)
    weight = module.weight.detach()
    g4 = g2.view(b, module.out_channels, 1 if isinstance(module, nn.Conv1d) else -1,
                 g.shape[-1])

    def weighted(s):
        # the layer's own weight-gradient kernel, fed the scaled output gradient
        w2 = weight.unsqueeze(2) if isinstance(module, nn.Conv1d) else weight
        return torch.ops.aten.convolution_backward(
            g4 * s.view(-1, 1, 1, 1), x2, w2, None, list(stride), list(padding),
            list(dilation), False, [0, 0], groups, [False, True, False])[1]

    out = {"weight": Outer(left, right, weighted)}
    if module.bias is not None:
        out["bias"] = PerSample(g2.sum(2))
    return out


def _check(module):
    return None


register(nn.Conv1d, conv_rule, _check)
register(nn.Conv2d, conv_rule, _check)
