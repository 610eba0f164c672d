"""Clipped mean of per-sample gradients without forming them: ghost norms plus one weighted sum.

One call of :meth:`GhostClipping.clipped_mean` on a batch (x, y):

1. forward ``model(x)`` once, recording the input and output of every call of a covered layer;
2. per-sample losses ``l_i = loss_fn(out[i:i+1], y[i:i+1])`` (vmap over the loss only, so any
   loss works; ``F.cross_entropy`` is taken with ``reduction="none"`` directly);
3. one backward of ``sum_i l_i`` to the recorded layer outputs (no parameter gradients);
4. each layer's rule turns (input, output gradient) into a per-sample form of its parameters'
   gradients (:mod:`._types`); uses of one parameter (shared weights, a layer called twice) are
   combined first, so the norm includes their cross terms;
5. ``s_i = min(1, C / ||g_i||)`` from the summed squared norms, then ``(1/B) sum_i s_i g_i``
   parameter by parameter straight from the forms (one matrix product per Linear/conv use),
   written into the flat gradient buffer. No second backward.

Parameters that are not in ``flat.params`` (public, frozen) get no work and add nothing to the
norms. Exactly the quantity of the vmap route, up to float rounding; what is not covered raises
:class:`NotCovered` before any output is written.
"""
from __future__ import annotations

import warnings
from typing import Callable, Dict, List, Optional, Set, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from . import _types
from ._types import NotCovered
from .registry import rule_for
from .workspace import Workspace

__all__ = ["GhostClipping", "NotCovered", "per_sample_losses", "uncovered_reason"]


_warned: Set[str] = set()


def warn_once(message: str) -> None:
    if message in _warned:
        return
    _warned.add(message)
    warnings.warn(message, RuntimeWarning, stacklevel=3)


def per_sample_losses(loss_fn: Callable, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B,) ``loss_fn(out[i:i+1], y[i:i+1])`` for every i, differentiable with respect to ``out``."""
    if loss_fn is F.cross_entropy:
        return F.cross_entropy(out, y, reduction="none")
    return torch.vmap(lambda o, t: loss_fn(o.unsqueeze(0), t.unsqueeze(0)))(out, y)


def _param_owners(model: nn.Module, wanted: Dict[int, int]):
    """[(qualified name, module, {attr: flat index})] for modules owning parameters in ``wanted``."""
    owners = []
    for name, m in model.named_modules(remove_duplicate=True):
        own = {k: wanted[id(p)] for k, p in m._parameters.items()
               if p is not None and id(p) in wanted}
        if own:
            owners.append((name or type(model).__name__, m, own))
    return owners


def uncovered_reason(model: nn.Module, flat) -> str | None:
    """Why the ghost route cannot take ``model`` (a layer without a rule), or None."""
    wanted = {id(p): i for i, p in enumerate(flat.params)}
    for name, m, _own in _param_owners(model, wanted):
        rule = rule_for(m)
        if rule is None:
            return (f"layer '{name}' ({type(m).__name__}) has parameters and no per-sample "
                    f"gradient rule (certunlearn_train.grad.register adds one)")
        why = rule.check(m) if rule.check is not None else None
        if why:
            return f"layer '{name}' ({type(m).__name__}): {why}"
    return None


class _Call:
    __slots__ = ("module", "inputs", "output", "version", "input_nodes", "out_node")

    def __init__(self, module, inputs, output):
        self.module = module
        self.inputs = tuple(t.detach() if isinstance(t, torch.Tensor) else t for t in inputs)
        self.input_nodes = [t.grad_fn for t in inputs
                            if isinstance(t, torch.Tensor) and t.grad_fn is not None]
        self.output = output
        self.version = output._version
        self.out_node = output.grad_fn


class GhostClipping:
    """Per-sample clipping for models whose parameterised layers all have a rule.

    Build with :meth:`for_model`, which returns None (and warns once, naming the layer and the
    reason) when the model is not covered.
    """

    def __init__(self, model: nn.Module, flat, loss_fn: Callable):
        self.model, self.flat, self.loss_fn = model, flat, loss_fn
        wanted = {id(p): i for i, p in enumerate(flat.params)}
        self._owners = _param_owners(model, wanted)
        self._modules = {id(m): (m, own) for _, m, own in self._owners}
        self._calls: List[_Call] = []
        self._clone = False          # layer outputs modified in place later: hook returns a copy
        # call pattern whose graph was checked
        self._checked_pattern: Optional[Tuple[int, ...]] = None
        #: (B,) float64 squared norms of the last call (never below the exact ones), and how
        #: far above the exact ones the routes' rounding bounds may put them
        self.last_sq_norms: Optional[torch.Tensor] = None
        self.last_sq_margin: Optional[torch.Tensor] = None
        # buffers of the rules' large temporaries, reused step after step (CPU)
        self._workspace = Workspace()

    @classmethod
    def for_model(cls, model: nn.Module, flat, loss_fn: Callable):
        why = uncovered_reason(model, flat)
        if why is not None:
            warn_once(f"certunlearn: per-sample clipping takes the slower vmap route (per-sample "
                      f"gradients formed): {why}")
            return None
        return cls(model, flat, loss_fn)

    def _hook(self, module, inputs, output):
        if not isinstance(output, torch.Tensor):
            raise NotCovered(f"{type(module).__name__} returned {type(output).__name__}, not a "
                             "tensor")
        if self._clone:
            kept = output
            output = output.clone()
            self._calls.append(_Call(module, inputs, kept))
            return output
        self._calls.append(_Call(module, inputs, output))
        return None

    def _forward(self, x):
        self._calls = []
        handles = [m.register_forward_hook(self._hook) for m, _ in self._modules.values()]
        try:
            out = self.model(x)
        finally:
            for h in handles:
                h.remove()
        return out

    def _check_graph(self, calls, losses):
        """Every path from the loss to a private parameter passes through a recorded call."""
        boundary = {}
        for c in calls:
            if c.out_node is None:
                continue
            boundary.setdefault(c.out_node, []).extend(c.input_nodes)
        wanted = {id(p) for p in self.flat.params}
        seen, stack = set(), [losses.grad_fn]
        while stack:
            node = stack.pop()
            if node is None or node in seen:
                continue
            seen.add(node)
            if node in boundary:
                stack.extend(boundary[node])
                continue
            var = getattr(node, "variable", None)
            if var is not None and id(var) in wanted:
                raise NotCovered("a parameter is used outside the forward of its layer (e.g. "
                                 "a weight read directly by another module)")
            stack.extend(n for n, _ in node.next_functions)

    def clipped_mean(self, out: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                     clip: float, track_margin: bool = False) -> torch.Tensor:
        """``out`` (d,) <- (1/B) sum_i min(1, clip/||g_i||) g_i; raises NotCovered untouched.

        With ``track_margin``, :attr:`last_sq_margin` says how far above the exact squared
        norms the rounding bounds may have put :attr:`last_sq_norms` (the probe reads it)."""
        b = len(x)
        with torch.enable_grad():
            logits = self._forward(x)
            if any(c.output._version != c.version for c in self._calls) and not self._clone:
                self._clone = True  # a later in-place op (ReLU(inplace=True)) changed an output
                logits = self._forward(x)
            calls = self._calls
            self._calls = []
            if not isinstance(logits, torch.Tensor) or logits.shape[0] != b:
                raise NotCovered("the model output is not a tensor with one row per sample")
            for c in calls:
                if c.output.dim() == 0 or c.output.shape[0] != b:
                    raise NotCovered(f"a {type(c.module).__name__} call's output does not have "
                                     "the batch as its first dimension")
            try:
                losses = per_sample_losses(self.loss_fn, logits, y)
            except Exception as exc:  # noqa: BLE001 - a loss that does not work under vmap
                raise NotCovered(f"loss_fn does not work one sample at a time under vmap "
                                 f"({type(exc).__name__}: {str(exc)[:200]})") from None
            if losses.numel() != b:
                raise NotCovered(f"loss_fn gave per-sample losses of shape {tuple(losses.shape)}")
            losses = losses.reshape(b)
            pattern = tuple(id(c.module) for c in calls)
            if pattern != self._checked_pattern:
                self._check_graph(calls, losses)
                self._checked_pattern = pattern
            used = [c for c in calls if c.output.requires_grad]
            # rules that read what autograd saved for a call need the graph kept until then
            keep = any(getattr(rule_for(c.module), "takes_output", False) for c in used)
            grads = torch.autograd.grad(losses.sum(), [c.output for c in used],
                                        allow_unused=True, retain_graph=keep) if used else []
            # what the rules need is held by the calls; the rest of a kept graph can go now
            del logits, losses
        with torch.no_grad():
            uses: Dict[int, list] = {}
            for k, (c, g) in enumerate(zip(used, grads)):
                if g is None:
                    continue
                _, own = self._modules[id(c.module)]
                rule = rule_for(c.module)
                assert rule is not None  # for_model admits only models whose layers all have rules
                try:
                    with self._workspace.active(k):
                        forms = (rule.compute(c.module, c.inputs, g, output=c.output)
                                 if rule.takes_output else rule.compute(c.module, c.inputs, g))
                except NotCovered:
                    raise
                except (RuntimeError, ValueError, IndexError, TypeError) as exc:
                    raise NotCovered(f"the {type(c.module).__name__} rule failed on this call "
                                     f"({type(exc).__name__}: {str(exc)[:200]})") from None
                for attr, idx in own.items():
                    if attr not in forms:
                        raise NotCovered(f"the {type(c.module).__name__} rule gave no gradient "
                                         f"for '{attr}'")
                    uses.setdefault(idx, []).append(forms[attr])
            del calls, used, grads
            combined = {i: _types.combine(r, self.flat.numels[i]) for i, r in uses.items()}
            sq, margin = _types.norms_of(combined.values(), b, out.device, track_margin)
            # squares are rounded to the gradients' dtype: never under-estimate a norm
            inflate = 1.0 + 4 * _types.unit_roundoff(out.dtype)
            sq *= inflate
            self.last_sq_norms = sq
            # how far above the exact squared norms the routes' rounding bounds may put sq
            self.last_sq_margin = None if margin is None else \
                margin * inflate + sq * (1.0 - 1.0 / inflate)
            scale = ((clip / sq.sqrt().clamp_min(1e-300)).clamp(max=1.0) / b).to(out.dtype)
            for i, (lo, hi) in enumerate(self.flat.slices()):
                if i in combined:
                    _types.weighted_sum(combined[i], scale, out[lo:hi])
                else:  # a parameter this batch did not reach
                    out[lo:hi].zero_()
        return out
