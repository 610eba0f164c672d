"""Per-sample gradient norms and clipped means, by layer rule (ghost norms) or by vmap.

* :class:`GhostClipping` computes the mean of per-sample-clipped gradients from each layer's
  inputs and output gradients, never forming the (B, d) per-sample gradients, for models whose
  parameterised layers all have a rule: ``nn.Linear`` (any number of leading dimensions),
  ``nn.Conv1d``/``nn.Conv2d`` (any stride, padding, dilation, groups), ``nn.Embedding``,
  ``nn.LayerNorm``/``nn.GroupNorm``; shared parameters exactly (the norm includes the cross
  terms between uses).
* :func:`register` adds a rule for another layer type (see :mod:`.registry`).
* :class:`PerSampleGradients` is the general route (``torch.func.vmap`` of ``grad``), used for
  anything else.
"""
from . import conv, embedding, linear, norm  # noqa: F401  (register the built-in rules)
from ._types import Outer, PerSample, Rows
from .engine import GhostClipping, NotCovered, per_sample_losses, uncovered_reason
from .registry import register, rule_for
from .vmap import PerSampleGradients

__all__ = ["GhostClipping", "NotCovered", "PerSampleGradients", "register", "rule_for",
           "PerSample", "Outer", "Rows", "per_sample_losses", "uncovered_reason"]
