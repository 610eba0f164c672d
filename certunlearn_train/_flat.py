"""A model's parameters as views into one flat float32 buffer, and per-sample gradients into reused buffers.

Both keep the noisy phase free of per-step copies of the model: the fused step updates the flat
buffer in place and the model sees the result through its parameter views; gradients land in a
flat gradient buffer (``p.grad`` are views into it) or, per sample, in a (B, d) buffer allocated
once and refilled chunk by chunk.
"""
from __future__ import annotations

from typing import Callable, List

import torch
from torch import nn

__all__ = ["FlatParameters", "PerSampleGradients", "LinearPerSampleClipping", "GradientSource"]


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


class PerSampleGradients:
    """Per-sample gradients of ``loss_fn(model(x_i), y_i)`` with ``torch.func`` (vmap of grad).

    Chunks of at most ``chunk_bytes`` of gradients are computed at a time. On the CPU the default
    (16 MiB) keeps the temporary tensors below glibc's largest mmap threshold (32 MiB), so the
    allocator recycles them instead of handing out fresh pages that fault on first touch every
    step. On CUDA the caching allocator already recycles memory and every chunk costs a round of
    kernel launches, so the default there is 1 GiB (usually the whole batch in one call).
    """

    def __init__(self, model: nn.Module, flat: FlatParameters, loss_fn: Callable,
                 chunk_bytes: int = None):
        from torch.func import functional_call, grad, vmap
        self.flat = flat
        names = flat.names
        buffers = dict(model.named_buffers())

        def one(params, x, y):
            out = functional_call(model, ({**dict(zip(names, params)), **buffers}),
                                  (x.unsqueeze(0),))
            return loss_fn(out, y.unsqueeze(0))

        self._fn = vmap(grad(one), in_dims=(None, 0, 0), randomness="different")
        if chunk_bytes is None:
            chunk_bytes = (1 << 30) if flat.flat.device.type == "cuda" else (16 << 20)
        self.chunk = max(1, int(chunk_bytes) // (flat.flat.element_size() * flat.numel))
        # functional_call does not always restore a module registered under two names (a tied
        # layer used twice): keep the true Parameter objects and put them back after each call
        self._registered = [(m, k, v) for m in model.modules()
                            for k, v in m._parameters.items() if v is not None]

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
        """Write the per-sample gradients of the batch as rows of ``out`` (B, d); return ``out[:B]``."""
        b = len(x)
        rows = out[:b]
        for i, grads in self._chunks(x, y):
            c = grads[0].shape[0]
            for g, (lo, hi) in zip(grads, self.flat.slices()):
                rows[i:i + c, lo:hi].copy_(g.reshape(c, -1))
        return rows

    def clipped_mean(self, out: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                     clip: float) -> torch.Tensor:
        """``out`` (d,) <- (1/B) sum_i min(1, clip/||G_i||) G_i, one chunk at a time (no (B, d) buffer)."""
        b = len(x)
        out.zero_()
        for _, grads in self._chunks(x, y):
            c = grads[0].shape[0]
            flat_grads = [g.reshape(c, -1) for g in grads]
            sq = torch.zeros(c, dtype=out.dtype, device=out.device)
            for g in flat_grads:
                sq += g.square().sum(1)
            scale = (clip / sq.sqrt().clamp_min(torch.finfo(out.dtype).tiny)).clamp(max=1.0) / b
            for g, (lo, hi) in zip(flat_grads, self.flat.slices()):
                out[lo:hi].addmv_(g.t(), scale)
        return out


class LinearPerSampleClipping:
    """Mean of per-sample-clipped gradients for models whose parameters all sit in ``nn.Linear``.

    For a linear layer applied once to a (B, in) input ``a`` with output gradient ``g`` (B, out)
    (the gradient of the *summed* loss, so row i is sample i's own), sample i's weight gradient is
    g_i a_i^T and its squared norm is ||g_i||^2 ||a_i||^2 (plus ||g_i||^2 for the bias). The
    per-sample norms therefore cost one pass over the activations, and the clipped mean
    (1/B) sum_i s_i g_i a_i^T = (s * g)^T a / B is one matrix product per layer, written straight
    into the flat gradient buffer; no (B, d) tensor is ever formed (the "ghost clipping" identity
    of Goodfellow 2015, "Efficient per-example gradient computations"). Exactly the same quantity
    as the torch.func route, only cheaper. Used only with the cross-entropy loss and only when
    each parameter belongs to one ``nn.Linear`` called once per forward: shared (tied) weights
    are refused by :meth:`applies`; a layer called twice, inputs that are not 2-D, or a weight
    also used outside its module's call (checked on the first batch against autograd's
    parameter gradients) raise ``NotCovered`` and the caller falls back to torch.func.
    """

    class NotCovered(Exception):
        pass

    @staticmethod
    def applies(model: nn.Module, flat: FlatParameters, loss_fn: Callable) -> bool:
        """Whether every parameter of ``flat`` sits in exactly one ``nn.Linear`` registered once.

        Parameters outside ``flat`` (public ones) may sit anywhere. A parameter shared by two
        modules (tied weights) or a module registered under two names is refused here: its
        per-sample gradient is the sum over its uses, which the per-layer identity does not
        see. A layer called twice, or a weight used outside its module, is caught on the first
        batch (``NotCovered``).
        """
        import torch.nn.functional as F
        if loss_fn is not F.cross_entropy:
            return False
        mine = {id(p) for p in flat.params}
        seen = {}
        for _, m in model.named_modules(remove_duplicate=False):
            for _, p in m.named_parameters(recurse=False, remove_duplicate=False):
                if id(p) not in mine:
                    continue
                if type(m) is not nn.Linear:
                    return False
                seen[id(p)] = seen.get(id(p), 0) + 1
        return set(seen) == mine and all(c == 1 for c in seen.values())

    def __init__(self, model: nn.Module, flat: FlatParameters):
        self.model, self.flat = model, flat
        where = {id(p): (lo, hi) for p, (lo, hi) in zip(flat.params, flat.slices())}
        self.layers = [m for m in model.modules() if type(m) is nn.Linear and (
            id(m.weight) in where or (m.bias is not None and id(m.bias) in where))]
        # (weight slot, bias slot), None for a public (or absent) part
        self.slots = [(where.get(id(m.weight)),
                       where.get(id(m.bias)) if m.bias is not None else None)
                      for m in self.layers]
        self._inputs, self._outputs = {}, {}
        self._calls = {}
        self._checked = False

    def _hook(self, module, inputs, output):
        key = id(module)
        self._calls[key] = self._calls.get(key, 0) + 1
        self._inputs[key] = inputs[0].detach()
        self._outputs[key] = output

    def clipped_mean(self, out: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                     clip: float) -> torch.Tensor:
        import torch.nn.functional as F
        self._inputs.clear(); self._outputs.clear(); self._calls.clear()
        handles = [m.register_forward_hook(self._hook) for m in self.layers]
        try:
            logits = self.model(x)
        finally:
            for h in handles:
                h.remove()
        b = len(x)
        keys = [id(m) for m in self.layers]
        if any(self._calls.get(k) != 1 for k in keys) or any(
                self._inputs[k].dim() != 2 or self._inputs[k].shape[0] != b for k in keys):
            raise self.NotCovered()
        outs = [self._outputs[k] for k in keys]
        loss = F.cross_entropy(logits, y, reduction="sum")
        if not self._checked:
            # once: the per-layer sums g^T a must be the parameters' whole gradient; a weight
            # also used outside its module's call (functionally, or by another module) is not
            params = [p for m, slots in zip(self.layers, self.slots)
                      for p, slot in zip((m.weight, m.bias), slots) if slot is not None]
            both = torch.autograd.grad(loss, outs + params, retain_graph=False,
                                       allow_unused=True)
            grads = both[:len(outs)]
            if any(g is None for g in grads):  # a layer whose output the loss does not use
                self._inputs.clear(); self._outputs.clear()
                raise self.NotCovered()
            whole = iter(both[len(outs):])
            for k, g, (w_slot, b_slot) in zip(keys, grads, self.slots):
                parts = []
                if w_slot is not None:
                    parts.append((g.t() @ self._inputs[k], next(whole)))
                if b_slot is not None:
                    parts.append((g.sum(0), next(whole)))
                for mine, true in parts:
                    true = torch.zeros_like(mine) if true is None else true
                    tol = 1e-4 * float(true.double().norm()) + 1e-30
                    if float((mine.double() - true.double()).norm()) > tol:
                        self._inputs.clear(); self._outputs.clear()
                        raise self.NotCovered()
            self._checked = True
        else:
            grads = torch.autograd.grad(loss, outs)
        sq = torch.zeros(b, dtype=torch.float64, device=out.device)
        for k, g, (w_slot, b_slot) in zip(keys, grads, self.slots):
            a = self._inputs[k]
            gg = g.double().square().sum(1)
            sq += gg * ((a.double().square().sum(1) if w_slot is not None else 0.0)
                        + (1.0 if b_slot is not None else 0.0))
        scale = ((clip / sq.sqrt().clamp_min(1e-300)).clamp(max=1.0) / b).to(out.dtype)
        for m, k, g, (w_slot, b_slot) in zip(self.layers, keys, grads, self.slots):
            sg = g * scale[:, None]
            if w_slot is not None:
                lo, hi = w_slot
                torch.mm(sg.t(), self._inputs[k],
                         out=out[lo:hi].view(m.out_features, m.in_features))
            if b_slot is not None:
                torch.sum(sg, 0, out=out[b_slot[0]:b_slot[1]])
        self._inputs.clear(); self._outputs.clear()
        return out


class GradientSource:
    """The gradient rows one noisy step hands to the fused op, from a batch ``(x, y)``.

    * ``clip="batch"``: one row, the mini-batch gradient (plain ``backward`` into ``flat.grad``);
    * ``clip="per_sample"`` on a model of ``nn.Linear`` layers with the cross-entropy loss: one
      row, the clipped mean computed by :class:`LinearPerSampleClipping` (no per-sample tensors);
    * ``clip="per_sample"`` otherwise: B rows of per-sample gradients in a reused buffer (the op clips each
      to C1) when B x d floats fit in ``grad_buffer_bytes``; otherwise one row, the mean of the
      per-sample gradients each clipped to C1, accumulated chunk by chunk (the op's clip to C1 of
      that row is then a no-op up to rounding: the mean of vectors of norm <= C1 has norm <= C1).
    """

    def __init__(self, model: nn.Module, flat: FlatParameters, clip: str, C1: float,
                 loss_fn: Callable, batch_size: int, grad_buffer_bytes: int = 64 << 20,
                 linear_fast_path: bool = True):
        self.model, self.flat, self.clip, self.C1, self.loss_fn = model, flat, clip, C1, loss_fn
        self.linear = LinearPerSampleClipping(model, flat) if (
            clip == "per_sample" and linear_fast_path
            and LinearPerSampleClipping.applies(model, flat, loss_fn)) else None
        self.per_sample = PerSampleGradients(model, flat, loss_fn) if clip == "per_sample" \
            else None
        self.grad_buffer_bytes = int(grad_buffer_bytes)
        self.batch_size = int(batch_size)
        self.rows = None  # allocated on first use (never, on the nn.Linear route)

    def probe(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Compute per-sample gradients of two samples; turn a torch.func failure into a clear error.

        Called before the first step, so a model whose forward does not work under ``vmap``
        (data-dependent Python control flow, ``.item()``, in-place updates of captured state,
        ops without batching rules) is refused before any work is done.
        """
        from .models import UnsupportedModelError
        if self.per_sample is None or self.linear is not None:
            return
        try:
            self.per_sample.fill(torch.empty(2, self.flat.numel, dtype=self.flat.flat.dtype,
                                             device=self.flat.flat.device), x[:2], y[:2])
        except Exception as exc:  # noqa: BLE001 - any failure here means "not vmap-compatible"
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise UnsupportedModelError(
                f"clip='per_sample' needs a forward that works under torch.func.vmap, and this "
                f"model's does not ({type(exc).__name__}: {first[:200]}); use clip='batch' or "
                "make the forward vmap-compatible") from None

    def _fits(self, b: int) -> bool:
        return b * self.flat.numel * self.flat.flat.element_size() <= self.grad_buffer_bytes

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        d = self.flat.numel
        if self.per_sample is None:
            self.flat.grad.zero_()
            self.loss_fn(self.model(x), y).backward()
            return self.flat.grad.view(1, d)
        if self.linear is not None:
            try:
                return self.linear.clipped_mean(self.flat.grad, x, y, self.C1).view(1, d)
            except LinearPerSampleClipping.NotCovered:
                self.linear = None  # this model's call pattern needs torch.func from now on
        if (self.rows is None or len(x) > self.rows.shape[0]) and self._fits(len(x)):
            rows = max(len(x), self.batch_size) if self.rows is None else len(x) + len(x) // 2
            rows = rows if self._fits(rows) else len(x)
            self.rows = torch.empty(rows, d, dtype=self.flat.flat.dtype,
                                    device=self.flat.flat.device)
        if self.rows is not None and len(x) <= self.rows.shape[0]:
            return self.per_sample.fill(self.rows, x, y)
        return self.per_sample.clipped_mean(self.flat.grad, x, y, self.C1).view(1, d)
