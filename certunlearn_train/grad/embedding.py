"""nn.Embedding: sample i's gradient adds g_t to row ids_t, for every position t of the sample.

Its squared norm sums, over the distinct ids of the sample, the squared norm of the summed
g_t of that id (pairs of equal ids are the only cross terms). Positions at ``padding_idx``
get no gradient (the layer's own rule).
"""
from __future__ import annotations

from torch import nn

from ._types import Rows
from .registry import register


def embedding_rule(module: nn.Embedding, inputs, g):
    ids = inputs[0]
    b = ids.shape[0]
    ids = ids.reshape(b, -1)
    g = g.reshape(b, ids.shape[1], module.embedding_dim)
    if module.padding_idx is not None:
        g = g * (ids != module.padding_idx).unsqueeze(2).to(g.dtype)
    return {"weight": Rows(ids, g, module.num_embeddings)}


def _check(module: nn.Embedding):
    if module.max_norm is not None:
        return "max_norm renormalises the table in place during the forward"
    if module.scale_grad_by_freq:
        return "scale_grad_by_freq scales by counts over the whole batch"
    return None


register(nn.Embedding, embedding_rule, _check)
