"""The general route: per-sample gradients with ``torch.func`` (vmap of grad), chunk by chunk.

Used for models with a layer no rule covers. Chunks of at most ``chunk_bytes`` of gradients are
computed at a time. On the CPU the default (16 MiB) keeps the temporary tensors below glibc's
largest mmap threshold (32 MiB), so the allocator recycles them instead of handing out fresh
pages that fault on first touch every step. On CUDA the caching allocator already recycles
memory and every chunk costs a round of kernel launches, so the default there is 1 GiB
(usually the whole batch in one call).

Each chunk's row norms are taken while the chunk is still in cache, so the fused step, handed
them as ``norms``, reads the (B, d) rows once instead of twice.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

__all__ = ["PerSampleGradients"]


class PerSampleGradients:
    """Per-sample gradients of ``loss_fn(model(x_i), y_i)`` with respect to ``flat.params``."""

    def __init__(self, model: nn.Module, flat, loss_fn: Callable, chunk_bytes: Optional[int] = None):
        from torch.func import functional_call, grad, vmap
        self.flat = flat
        names = flat.names
        private = {id(p) for p in flat.params}
        # parameters outside flat.params (public, frozen) enter as constants: no gradient work
        others = {n: p for n, p in model.named_parameters(remove_duplicate=False)
                  if id(p) not in private}
        buffers = dict(model.named_buffers())

        def one(params, x, y):
            out = functional_call(model, ({**others, **dict(zip(names, params)), **buffers}),
                                  (x.unsqueeze(0),), tie_weights=True)
            return loss_fn(out, y.unsqueeze(0))

        self._fn = vmap(grad(one), in_dims=(None, 0, 0), randomness="different")
        if chunk_bytes is None:
            chunk_bytes = (1 << 30) if flat.flat.device.type == "cuda" else (16 << 20)
        self.chunk = max(1, int(chunk_bytes) // (flat.flat.element_size() * flat.numel))
        # functional_call does not always restore a module registered under two names (a tied
        # layer used twice): keep the true Parameter objects and put them back after each call
        self._registered = [(m, k, v) for m in model.modules()
                            for k, v in m._parameters.items() if v is not None]
        self.norms: Optional[torch.Tensor] = None

    def _restore(self):
        for m, k, v in self._registered:
            if m._parameters.get(k) is not v:
                m._parameters[k] = v

    def _chunks(self, x, y):
        params = tuple(p.detach() for p in self.flat.params)
        for i in range(0, len(x), self.chunk):
            try:
                grads = self._fn(params, x[i:i + self.chunk], y[i:i + self.chunk])
            finally:
                self._restore()
            yield i, grads

    def fill(self, out: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Write the per-sample gradients as rows of ``out`` (B, d); return ``out[:B]``.

        Also sets :attr:`norms` to the (B,) float64 norms of the written rows (each chunk's
        norms taken while it is in cache), for the fused step's ``norms`` argument.
        """
        b = len(x)
        rows = out[:b]
        norms = torch.empty(b, dtype=torch.float64, device=out.device)
        for i, grads in self._chunks(x, y):
            c = grads[0].shape[0]
            chunk = rows[i:i + c]
            for g, (lo, hi) in zip(grads, self.flat.slices()):
                chunk[:, lo:hi].copy_(g.reshape(c, -1))
            torch.linalg.vector_norm(chunk, dim=1, dtype=torch.float64, out=norms[i:i + c])
        self.norms = norms
        return rows

    def clipped_mean(self, out: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                     clip: float) -> torch.Tensor:
        """``out`` (d,) <- (1/B) sum_i min(1, clip/||G_i||) G_i, one chunk at a time (no (B, d) buffer)."""
        b = len(x)
        out.zero_()
        for _, grads in self._chunks(x, y):
            c = grads[0].shape[0]
            flat_grads = [g.reshape(c, -1) for g in grads]
            sq = torch.zeros(c, dtype=torch.float64, device=out.device)
            for g in flat_grads:
                sq += g.square().sum(1, dtype=torch.float64)
            scale = (clip / sq.sqrt().clamp_min(1e-300)).clamp(max=1.0).to(out.dtype) / b
            for g, (lo, hi) in zip(flat_grads, self.flat.slices()):
                out[lo:hi].addmv_(g.t(), scale)
        return out
