"""A model's parameters as views into one flat float32 buffer, and per-sample gradients into reused buffers.

Both keep the noisy phase free of per-step copies of the model: the fused step updates the flat
buffer in place and the model sees the result through its parameter views; gradients land in a
flat gradient buffer (``p.grad`` are views into it) or, per sample, in a (B, d) buffer allocated
once and refilled chunk by chunk.
"""
from __future__ import annotations

from typing import Callable, List, Optional

import torch
from torch import nn

from .grad import GhostClipping, NotCovered, PerSampleGradients

__all__ = ["FlatParameters", "PerSampleGradients", "GradientSource"]


class FlatParameters:
    """Rebind (distinct) parameters of ``model`` to views of one contiguous buffer.

    ``params`` selects the parameters that take part (default: all); only they become views of
    the buffer and get gradients. The others get ``requires_grad=False`` until :meth:`release`,
    so a ``backward()`` leaves them alone and they stay bit-identical.

    Attributes:
        flat: the (d,) parameter buffer; writing into it changes the model.
        grad: the (d,) gradient buffer; ``p.grad`` of every selected parameter is a view into
            it, so a plain ``backward()`` accumulates their full gradient there.
        names, params, offsets, numels: the layout, in ``named_parameters()`` order.
        others: the parameters left out.
    """

    def __init__(self, model: nn.Module, params=None):
        named = list(model.named_parameters())  # shared parameters are listed once
        if params is not None:
            wanted = {id(p) for p in params}
            known = {id(p) for _, p in named}
            if not wanted <= known:
                raise ValueError("params must be parameters of the model")
            self.others = [p for _, p in named if id(p) not in wanted]
            named = [(n, p) for n, p in named if id(p) in wanted]
        else:
            self.others = []
        if not named:
            raise ValueError("FlatParameters needs at least one parameter")
        self.names: List[str] = [n for n, _ in named]
        self.params: List[nn.Parameter] = [p for _, p in named]
        self.numels = [p.numel() for p in self.params]
        self.offsets = [0]
        for n in self.numels[:-1]:
            self.offsets.append(self.offsets[-1] + n)
        self.numel = sum(self.numels)
        first = self.params[0]
        self.flat = torch.empty(self.numel, dtype=first.dtype, device=first.device)
        self.grad = torch.zeros_like(self.flat)
        self._requires_grad = [p.requires_grad for p in self.params]
        self._others_requires_grad = [p.requires_grad for p in self.others]
        for p in self.others:
            p.requires_grad_(False)
        for p, o, n in zip(self.params, self.offsets, self.numels):
            self.flat[o:o + n].copy_(p.detach().reshape(-1))
            p.data = self.flat[o:o + n].view_as(p)
            p.requires_grad_(True)
            p.grad = self.grad[o:o + n].view_as(p)

    def slices(self):
        return [(o, o + n) for o, n in zip(self.offsets, self.numels)]

    def release(self) -> None:
        """Give every parameter its own storage again, drop the gradient views, restore the
        ``requires_grad`` flags."""
        for p, rg in zip(self.params, self._requires_grad):
            p.data = p.data.clone()
            p.grad = None
            p.requires_grad_(rg)
        for p, rg in zip(self.others, self._others_requires_grad):
            p.requires_grad_(rg)


class GradientSource:
    """The gradient rows one noisy step hands to the fused op, from a batch ``(x, y)``.

    * ``clip="batch"``: one row, the mini-batch gradient (plain ``backward`` into ``flat.grad``);
    * ``clip="per_sample"`` on a model whose parameterised layers all have a per-sample rule
      (:mod:`certunlearn_train.grad`: Linear, Conv1d/2d, Embedding, LayerNorm, GroupNorm, or
      registered by the user), any ``loss_fn``: one row, the mean of the per-sample gradients
      each clipped to C1, from ghost norms (:class:`~certunlearn_train.grad.GhostClipping`; no
      per-sample tensors);
    * ``clip="per_sample"`` otherwise: B rows of per-sample gradients (vmap) in a reused buffer
      (the op clips each to C1; their norms, taken while each chunk was in cache, are in
      :attr:`norms` for the op's ``norms`` argument) when B x d floats fit in
      ``grad_buffer_bytes``; otherwise one row, the clipped mean accumulated chunk by chunk.

    On the one-row routes the op's clip to C1 of that row is a no-op up to rounding (the mean of
    vectors of norm <= C1 has norm <= C1). ``ghost_norms=False`` forces the vmap route (the
    tests compare the routes).

    Attributes:
        route: "batch", "ghost", "rows" or "chunked": the route of the last call.
        norms: (B,) float64 norms of the rows returned by the last call on the "rows" route,
            else None; pass them to ``noisy_step_(..., norms=source.norms)``.
    """

    def __init__(self, model: nn.Module, flat: FlatParameters, clip: str, C1: float,
                 loss_fn: Callable, batch_size: int, grad_buffer_bytes: int = 64 << 20,
                 ghost_norms: bool = True):
        self.model, self.flat, self.clip, self.C1, self.loss_fn = model, flat, clip, C1, loss_fn
        self.ghost = GhostClipping.for_model(model, flat, loss_fn) if (
            clip == "per_sample" and ghost_norms) else None
        self.per_sample = PerSampleGradients(model, flat, loss_fn) if clip == "per_sample" \
            else None
        self.grad_buffer_bytes = int(grad_buffer_bytes)
        self.batch_size = int(batch_size)
        # allocated on first use (never, on the ghost route)
        self.rows: Optional[torch.Tensor] = None
        self.norms: Optional[torch.Tensor] = None  # row norms of the last fill, when it took them
        self.route = "batch" if clip != "per_sample" else "ghost" if self.ghost else "rows"

    def probe(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Run the per-sample route on three samples; turn a failure into a clear error.

        Called before the first step. On the ghost route a model it turns out not to cover
        (a parameter used outside its layer, a layer that mixes the batch dimension) moves to
        the vmap route here; on the vmap route a model whose forward does not work under
        ``vmap`` (data-dependent Python control flow, ``.item()``, in-place updates of captured
        state, ops without batching rules) is refused before any work is done.
        """
        if self.per_sample is None:
            return
        # compared in eval mode, so that dropout draws do not differ between the two routes
        modes = [(m, m.training) for m in self.model.modules()]
        self.model.eval()
        try:
            self._probe(x, y)
        finally:
            for m, mode in modes:
                m.training = mode

    def _probe(self, x, y):
        from .models import UnsupportedModelError
        n = min(3, len(x))
        ghost_sq = ghost_margin = None
        if self.ghost is not None:
            try:
                self.ghost.clipped_mean(torch.empty_like(self.flat.grad), x[:n], y[:n], self.C1,
                                        track_margin=True)
                ghost_sq = self.ghost.last_sq_norms
                ghost_margin = self.ghost.last_sq_margin
            except NotCovered as exc:
                self._leave_ghost(exc)
        try:
            rows = self.per_sample.fill(torch.empty(n, self.flat.numel, dtype=self.flat.flat.dtype,
                                                    device=self.flat.flat.device), x[:n], y[:n])
        except Exception as exc:  # noqa: BLE001 - any failure here means "not vmap-compatible"
            if ghost_sq is not None:
                return  # the ghost route works; vmap is not needed
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise UnsupportedModelError(
                f"clip='per_sample' needs a forward that works under torch.func.vmap, and this "
                f"model's does not ({type(exc).__name__}: {first[:200]}); use clip='batch' or "
                "make the forward vmap-compatible") from None
        if ghost_sq is not None:
            if ghost_margin is None:
                ghost_margin = torch.zeros_like(ghost_sq)
            # the rules assume row i of every layer's input and output belongs to sample i; a
            # layer that mixes samples or keeps the batch elsewhere shows up as a disagreement.
            # The ghost norms may sit above the exact ones by their routes' own
            # rounding bound (the safe side, reported in ``last_sq_margin``): that much excess
            # is expected, beyond it (or any shortfall past float rounding) is not.
            want = rows.double().square().sum(1)
            tol = 1e-3 * want + 1e-12 * float(want.max())
            if bool(((ghost_sq < want - tol) | (ghost_sq > want + tol + ghost_margin)).any()):
                self._leave_ghost("the per-layer norms disagree with the vmap per-sample "
                                  "gradients on the first samples (a layer mixes samples or "
                                  "does not keep the batch as its first dimension)")

    def _leave_ghost(self, exc) -> None:
        from .grad.engine import warn_once
        warn_once(f"certunlearn: per-sample clipping takes the slower vmap route (per-sample "
                  f"gradients formed): {exc}")
        self.ghost = None
        self.route = "rows"

    def _fits(self, b: int) -> bool:
        return b * self.flat.numel * self.flat.flat.element_size() <= self.grad_buffer_bytes

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        d = self.flat.numel
        self.norms = None
        if self.per_sample is None:
            self.flat.grad.zero_()
            self.loss_fn(self.model(x), y).backward()
            return self.flat.grad.view(1, d)
        if self.ghost is not None:
            try:
                return self.ghost.clipped_mean(self.flat.grad, x, y, self.C1).view(1, d)
            except NotCovered as exc:
                self._leave_ghost(exc)  # this model's call pattern needs vmap from now on
        if (self.rows is None or len(x) > self.rows.shape[0]) and self._fits(len(x)):
            rows = max(len(x), self.batch_size) if self.rows is None else len(x) + len(x) // 2
            rows = rows if self._fits(rows) else len(x)
            self.rows = torch.empty(rows, d, dtype=self.flat.flat.dtype,
                                    device=self.flat.flat.device)
        if self.rows is not None and len(x) <= self.rows.shape[0]:
            self.route = "rows"
            out = self.per_sample.fill(self.rows, x, y)
            self.norms = self.per_sample.norms
            return out
        self.route = "chunked"
        return self.per_sample.clipped_mean(self.flat.grad, x, y, self.C1).view(1, d)
