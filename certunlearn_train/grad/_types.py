"""What a layer rule returns: one sample-indexed form of each parameter's per-sample gradient.

A rule never has to form the (B, numel) per-sample gradients; it returns one of three forms,
and this module computes from any of them the two things a clipped step needs:

* ``sq_norms(rep)``: the (B,) squared norms ||G_i||^2, float64;
* ``weighted_sum(rep, s)``: sum_i s_i G_i, the clipped sum once ``s_i = min(1, C/||G_i||)``;

and, for a parameter used several times (shared), ``combine`` turns the uses into one form whose
per-sample gradient is the sum over uses, so the cross terms between uses are in the norm.

Forms:

* :class:`PerSample`: the per-sample gradients themselves, (B, *shape) (cheap layers: biases,
  norm affine parameters);
* :class:`Outer`: ``G_i = sum_t left[i, :, t]^T right[i, :, t]`` per group, the parameter laid
  out as (groups, m, n) (Linear, convolutions after unfolding). Its squared norm is
  ``sum_{t,s} (l_t . l_s)(r_t . r_s)`` (the Gram-matrix "ghost norm"), or, when forming the
  (m, n) per-sample matrices is cheaper, their squared norms;
* :class:`Rows`: ``G_i = sum_t e_{index[i, t]} values[i, t]^T`` for a (num_rows, n) table
  (Embedding): the norm sums, per sample, each distinct row's summed values.

Rounding: the Gram route never forms G_i, so its rounded products are not the norm of any
rounded G_i; it adds a bound on their rounding error (sum_t ||l_t|| ||r_t||)^2 * (gamma_m +
gamma_n + 3u) (u the unit roundoff of the tensors' dtype, gamma_k = ku/(1-ku)), so that its
squared norm is never below the exact one. The other forms sum the squares of the formed
gradients (:func:`row_sq_sums`): in float32 over runs of up to 1024 numbers, then the runs in
float64, rounded up by the bound of that summation order (relative 2 gamma_1024, about
1.2e-4), so again never below the exact squared norm, at a third of the memory traffic of
converting every number to float64 first.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, cast

import torch

__all__ = ["NotCovered", "PerSample", "Outer", "Rows", "sq_norms", "weighted_sum", "combine", "materialise"]

def unit_roundoff(dtype: torch.dtype) -> float:
    """2^-24 for float32, 2^-53 for float64."""
    return torch.finfo(dtype).eps / 2


def _gamma(k: int, u: float) -> float:
    """k u / (1 - k u): the relative error bound of k roundings (meaningful for k u < 1)."""
    if k * u >= 0.5:
        raise NotCovered(f"a rounding bound over {k} terms at unit roundoff {u:.3g} is too "
                         "loose to certify (a narrow float type or reduced-precision products)")
    return k * u / (1.0 - k * u)


def _matmul_roundoff(t: torch.Tensor) -> float:
    """The unit roundoff of a matrix product of float32 tensors as torch will compute it: TF32
    or bfloat16 internally when the float32 matmul precision is lowered (or CUDA's TF32 switch
    is on), else float32's."""
    u = unit_roundoff(t.dtype)
    if t.dtype == torch.float32 and (
            torch.get_float32_matmul_precision() != "highest"
            or (t.is_cuda and bool(torch.backends.cuda.matmul.allow_tf32))):
        u = 2.0 ** -8   # bfloat16's, which also covers TF32 (2^-11)
    return u


@dataclass
class PerSample:
    """Per-sample gradients, ``grads[i]`` = sample i's gradient (any shape after the batch dim)."""
    grads: torch.Tensor

    def flat(self) -> torch.Tensor:
        return self.grads.reshape(self.grads.shape[0], -1)


@dataclass
class Outer:
    """``G_i[g] = sum_t left[i, g, t]^T right[i, g, t]``; left (B, G, T, m), right (B, G, T, n)."""
    left: torch.Tensor
    right: torch.Tensor
    #: optional faster ``s -> sum_i s_i G_i`` (shaped like the parameter), e.g. the layer's own
    #: weight-gradient kernel fed with the scaled output gradient
    weighted: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
    _formed: Optional[torch.Tensor] = None  # (B, G, m, n) when the norm route formed them

    def __post_init__(self):
        if self.left.dim() != 4 or self.right.dim() != 4 or \
                self.left.shape[:3] != self.right.shape[:3]:
            raise ValueError(f"Outer: left (B, G, T, m) and right (B, G, T, n) must agree on "
                             f"(B, G, T), got {tuple(self.left.shape)} and "
                             f"{tuple(self.right.shape)}")

    @property
    def dims(self):
        b, g, t, m = self.left.shape
        return b, g, t, m, self.right.shape[3]


@dataclass
class Rows:
    """``G_i = sum_t e_{index[i, t]} values[i, t]^T`` in a (num_rows, n) table.

    index (B, T) int64 with entries in [0, num_rows); values (B, T, n).
    """
    index: torch.Tensor
    values: torch.Tensor
    num_rows: int


def materialise(rep) -> torch.Tensor:
    """The (B, numel) per-sample gradients of any form."""
    if isinstance(rep, PerSample):
        return rep.flat()
    if isinstance(rep, Outer):
        if rep._formed is None:
            b, g, t, m, n = rep.dims
            _check_size(b * g * m * n, rep.left.element_size(), "forming per-sample gradients")
            rep._formed = torch.matmul(rep.left.transpose(2, 3), rep.right)
        return rep._formed.reshape(rep._formed.shape[0], -1)
    if isinstance(rep, Rows):
        b, t, n = rep.values.shape
        _check_size(b * rep.num_rows * n, rep.values.element_size(),
                    "forming per-sample embedding gradients")
        out = rep.values.new_zeros(b * rep.num_rows, n)
        rows = (torch.arange(b, device=rep.index.device)[:, None] * rep.num_rows
                + rep.index).reshape(-1)
        out.index_add_(0, rows, rep.values.reshape(-1, n))
        return out.view(b, rep.num_rows * n)
    raise TypeError(f"unknown per-sample gradient form {type(rep).__name__}")


class NotCovered(Exception):
    """The ghost route cannot compute this model's per-sample norms exactly (message says why)."""


def _gram_is_cheaper(rep: Outer) -> bool:
    b, g, t, m, n = rep.dims
    return t * t * (m + n) < t * m * n


#: Bytes of temporaries (Gram matrices, formed per-sample blocks) one norm computation may hold
#: at a time; larger batches are processed in chunks of samples.
WORK_BYTES = 256 << 20


def _check_size(numel: int, element_size: int, what: str) -> None:
    if numel * element_size > 4 * WORK_BYTES:
        raise NotCovered(f"{what} would need {numel * element_size / 2 ** 30:.1f} GiB")


#: Numbers summed in the tensors' own dtype before a partial sum goes to float64.
SUM_RUN = 1024


class NormSum:
    """Per-sample squared norms summed over a model's parameters, never below the exact ones.

    Each term comes with its own rounding bound: :meth:`add` takes computed sums of nonnegative
    terms within relative ``eps`` of the exact sums (and an absolute ``tiny`` for squares that
    underflowed) and rounds them up by 1 / (1 - eps)^2; :meth:`add_bounded` takes values already
    at or above the exact ones with the bound they may exceed them by. The bounds themselves
    are summed only with ``track_margin`` (the probe compares routes with them); a step needs
    only the norms. ``exact64`` makes the row sums convert every number to float64 first (the
    fallback when a square overflowed the dtype).
    """

    def __init__(self, b: int, device, track_margin: bool = False, exact64: bool = False):
        self.sq = torch.zeros(b, dtype=torch.float64, device=device)
        self.margin = torch.zeros_like(self.sq) if track_margin else None
        self.tiny = 0.0
        self.exact64 = exact64

    def add(self, raw: torch.Tensor, eps: float, tiny: float = 0.0,
            where: slice = slice(None)) -> None:
        """``raw`` for the samples ``where`` (all by default)."""
        factor = 1.0 / (1.0 - eps) ** 2
        self.sq[where].add_(raw, alpha=factor)
        if self.margin is not None:
            self.margin[where].add_(raw, alpha=3.0 * eps * factor)
        self.tiny += tiny  # (for every sample: a few smallest normal numbers too many)

    def add_bounded(self, value: torch.Tensor, bound: torch.Tensor,
                    where: slice = slice(None)) -> None:
        self.sq[where].add_(value)
        if self.margin is not None:
            self.margin[where].add_(bound)

    def result(self):
        """(squared norms, margin or None), both (B,) float64."""
        sq = self.sq + self.tiny if self.tiny else self.sq
        # (a square that underflowed may also have been rounded up by up to tiny)
        margin = None if self.margin is None else self.margin + 2 * self.tiny
        return sq, margin


def _raw_row_sums(rows: torch.Tensor, exact64: bool):
    """(computed sums of squares of the rows of ``rows`` (B, N) in float64, eps, tiny).

    float64 rows, rows of narrower floats than float32 (float16, bfloat16), and every row under
    ``exact64``, are summed in float64 (the square of a float32 or narrower float is exact
    there; only the sum rounds). float32 numbers are squared and summed in float32 over runs
    of ``SUM_RUN`` consecutive numbers (the whole row when it is shorter), and the runs' sums
    in float64. With u the unit roundoff of float32 and
    k = SUM_RUN, each run's computed sum c satisfies |c - e| <= gamma_k e for its exact sum of
    squares e (nonnegative terms, any order), and the float64 sum of R runs adds
    gamma_R(float64); each square that underflows loses at most the smallest normal number
    (``tiny`` = N times it). A square that overflows makes the sum infinite (the caller then
    sums in float64).
    """
    b = rows.shape[0]
    rows = rows.reshape(b, -1)
    n = rows.shape[1]
    f64 = torch.float64
    u64 = unit_roundoff(f64)
    if exact64 or rows.dtype != torch.float32:
        # float64, and narrower floats whose squares float64 holds exactly
        return rows.to(f64).square().sum(1), _gamma(n + 1, u64), n * torch.finfo(f64).tiny
    u, tiny = unit_roundoff(rows.dtype), n * torch.finfo(rows.dtype).tiny
    if n <= SUM_RUN:
        return torch.linalg.vecdot(rows, rows).to(f64), _gamma(n, u), tiny
    if not rows.is_contiguous():
        rows = rows.contiguous()
    k = SUM_RUN
    full = n // k * k
    runs = rows.as_strided((b, full // k, k), (n, k, 1))
    out = torch.linalg.vecdot(runs, runs).sum(1, dtype=f64)
    if full < n:
        out += rows[:, full:].to(f64).square().sum(1)
    return out, _gamma(k, u) + _gamma(full // k + 1, u64), tiny


def row_sq_sums(rows: torch.Tensor, margin: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(B,) float64 upper bounds of the squared norms of the rows of ``rows`` (B, N).

    The sums of :func:`_raw_row_sums` times 1 / ((1 - gamma_k)(1 - gamma_R))^2, plus N times
    the smallest normal number: never below the exact squared norm. ``margin`` gets what it may
    exceed it by.
    """
    return sq_norms(PerSample(rows), margin)


def _gram_sq_norms(left, right, m, n):
    """(squared norms (B,) never below the exact ones, the bound added to reach that)."""
    f64 = torch.float64
    gl = torch.matmul(left, left.transpose(2, 3))
    gr = torch.matmul(right, right.transpose(2, 3))
    sq = (gl * gr).sum((1, 2, 3), dtype=f64)
    # ||l_t||^2 and ||r_t||^2 are the Gram diagonals (each within gamma of the truth)
    u = _matmul_roundoff(left)
    nl = gl.diagonal(dim1=2, dim2=3).to(f64).clamp_min(0.0) * (1.0 + _gamma(m, u))
    nr = gr.diagonal(dim1=2, dim2=3).to(f64).clamp_min(0.0) * (1.0 + _gamma(n, u))
    s = (nl * nr).sqrt().sum(2)  # (B, G): sum_t ||l_t|| ||r_t||
    bound = (_gamma(m, u) + _gamma(n, u) + 3 * u) * 1.01 * s.square().sum(1)
    # the computed sum may itself sit up to ``bound`` above the exact one
    return sq.clamp_min(0.0) + bound, 2 * bound


def accumulate(rep, acc: NormSum) -> None:
    """Add the (B,) squared norms of one parameter's per-sample gradients to ``acc``."""
    if isinstance(rep, PerSample):
        acc.add(*_raw_row_sums(rep.flat(), acc.exact64))
        return
    if isinstance(rep, Outer):
        b, g, t, m, n = rep.dims
        if t == 1:
            # ||G_i||^2 = sum_g ||l_g||^2 ||r_g||^2: each factor rounded up to at least its
            # exact value (tiny included), the product adds one float64 rounding
            cl, el, tl = _raw_row_sums(rep.left.reshape(b * g, m), acc.exact64)
            cr, er, tr = _raw_row_sums(rep.right.reshape(b * g, n), acc.exact64)
            prod = (cl + tl) * (cr + tr)
            if acc.margin is not None and (tl or tr):
                # the underflow allowances are absolute: what they may add beyond the exact
                # product (each factor may also have been rounded up by its own allowance)
                extra = 2 * tl * (cr + tr) + 2 * tr * (cl + tl)
                acc.margin += extra.view(b, g).sum(1) if g > 1 else extra
            if g > 1:
                prod = prod.view(b, g).sum(1)
            acc.add(prod, el + er + _gamma(g + 1, unit_roundoff(torch.float64)))
            return
        # the (T, T) Gram matrices or the (m, n) blocks of a chunk of samples at a time, so
        # the temporaries stay within WORK_BYTES; the blocks are kept for the weighted sum only
        # when the whole batch fits at once
        gram = _gram_is_cheaper(rep)
        per_sample = g * (2 * t * t if gram else m * n) * rep.left.element_size()
        chunk = max(1, WORK_BYTES // max(per_sample, 1))
        if not gram and chunk >= b:
            acc.add(*_raw_row_sums(materialise(rep), acc.exact64))
            return
        for i in range(0, b, chunk):
            left, right = rep.left[i:i + chunk], rep.right[i:i + chunk]
            where = slice(i, i + len(left))
            if gram:
                value, bound = _gram_sq_norms(left, right, m, n)
                acc.add_bounded(value, bound, where=where)
            else:
                raw, eps, tiny = _raw_row_sums(torch.matmul(left.transpose(2, 3), right),
                                               acc.exact64)
                acc.add(raw, eps, tiny, where=where)
        return
    if isinstance(rep, Rows):
        # a sample's gradient has one row per distinct id, the sum of that id's values: sort
        # each sample's ids, number the runs of equal ids, and add every position's values into
        # its run's slot (B * T slots, unused ones stay zero)
        b, t, n = rep.values.shape
        if t == 0 or n == 0:
            return  # no position: a zero gradient
        sorted_ids, order = torch.sort(rep.index, dim=1)
        starts = torch.ones_like(sorted_ids, dtype=torch.bool)
        starts[:, 1:] = sorted_ids[:, 1:] != sorted_ids[:, :-1]
        run = torch.empty_like(order).scatter_(1, order, starts.cumsum(1) - 1)
        slot = run + torch.arange(0, b * t, t, device=run.device)[:, None]
        values = rep.values.reshape(-1, n)
        f64 = torch.float64
        u64 = unit_roundoff(f64)
        # the values of a run are added in float64, which can still lose bits when they cancel:
        # each run's sum is within gamma_t (float64) * sum_t |v_t| of the exact one, elementwise,
        # so (Cauchy-Schwarz) ||G_i|| <= ||computed|| + D with D = gamma_t sqrt(t sum_t ||v_t||^2)
        summed = torch.zeros(b * t, n, dtype=f64, device=values.device).index_add_(
            0, slot.reshape(-1), values.to(f64))
        computed = summed.square().sum(1).view(b, t).sum(1)
        eps = _gamma(n + t + 1, u64)
        v_raw, v_eps, v_tiny = _raw_row_sums(values, acc.exact64)
        v_sq = v_raw.view(b, t).sum(1) / (1.0 - v_eps - _gamma(t + 1, u64)) ** 2 + t * v_tiny
        d = _gamma(t, u64) * (t * v_sq).sqrt()
        root = (computed / (1.0 - eps) ** 2).sqrt() * (1.0 + 2 * u64)
        bound = (root + d).square() * (1.0 + 4 * u64)
        low = (computed.sqrt() * (1.0 - eps) - d).clamp_min(0.0).square()
        acc.add_bounded(bound, bound - low)
        return
    raise TypeError(f"unknown per-sample gradient form {type(rep).__name__}")


def norms_of(reps, b: int, device, track_margin: bool = False):
    """(squared norms (B,), margin or None) summed over the forms ``reps``, never below the
    exact ones (:class:`NormSum`). A square that overflows float32 in a row sum (or a gradient
    that is not finite) makes the sum infinite: then again, every number in float64."""
    reps = list(reps)
    for exact64 in (False, True):
        acc = NormSum(b, device, track_margin, exact64)
        for rep in reps:
            accumulate(rep, acc)
        sq, margin = acc.result()
        if bool(torch.isfinite(sq).all()):
            break
    return sq, margin


def sq_norms(rep, margin: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(B,) float64 squared norms of the per-sample gradients of one form, never below the
    exact ones (see the module docstring and :class:`NormSum`).

    ``margin`` (B,) float64, when given, gets the rounding bounds added on top of the computed
    squares: the returned value may exceed the exact squared norm by up to that much.
    """
    data = _data(rep)
    sq, extra = norms_of([rep], data.shape[0], data.device, margin is not None)
    if margin is not None and extra is not None:
        margin += extra
    return sq


def weighted_sum(rep, s: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``out`` (numel,) <- sum_i s_i G_i, with ``s`` (B,) in ``out``'s dtype."""
    if isinstance(rep, PerSample):
        return torch.matmul(s.unsqueeze(0), rep.flat(), out=out.unsqueeze(0))
    if isinstance(rep, Outer):
        if rep._formed is not None:  # the norms formed G_i already: B x numel products
            return torch.matmul(s.unsqueeze(0), materialise(rep), out=out.unsqueeze(0))
        if rep.weighted is not None:
            return out.copy_(rep.weighted(s).reshape(-1))
        b, g, t, m, n = rep.dims
        if g == 1:
            # scale the narrower side by s (fewer products), then one (m, B T) x (B T, n) product
            left, right = rep.left.reshape(b, t * m), rep.right.reshape(b, t * n)
            if m <= n:
                left = left * s.view(b, 1)
            else:
                right = right * s.view(b, 1)
            torch.mm(left.reshape(b * t, m).t(), right.reshape(b * t, n), out=out.view(m, n))
            return out
        sl = rep.left * s.view(b, 1, 1, 1)
        torch.bmm(sl.permute(1, 3, 0, 2).reshape(g, m, b * t),
                  rep.right.permute(1, 0, 2, 3).reshape(g, b * t, n), out=out.view(g, m, n))
        return out
    if isinstance(rep, Rows):
        b, t, n = rep.values.shape
        out.zero_()
        out.view(rep.num_rows, n).index_add_(
            0, rep.index.reshape(-1), (rep.values * s[:, None, None]).reshape(-1, n))
        return out
    raise TypeError(f"unknown per-sample gradient form {type(rep).__name__}")


def _data(rep) -> torch.Tensor:
    """The sample-indexed tensor of a form (its batch size and device)."""
    return (rep.grads if isinstance(rep, PerSample) else
            rep.left if isinstance(rep, Outer) else rep.values)


def _rows_as_outer(rep: Rows) -> Outer:
    _check_size(rep.index.numel() * rep.num_rows, rep.values.element_size(),
                "one-hot rows of a shared embedding table")
    onehot = torch.nn.functional.one_hot(rep.index, rep.num_rows).to(rep.values.dtype)
    return Outer(onehot[:, None], rep.values[:, None])


def combine(reps: List, numel: int):
    """One form whose per-sample gradient is the sum over ``reps`` (the uses of one parameter)."""
    if len(reps) == 1:
        return reps[0]
    if all(isinstance(r, Rows) for r in reps) and len({r.num_rows for r in reps}) == 1:
        return Rows(torch.cat([r.index for r in reps], 1), torch.cat([r.values for r in reps], 1),
                    reps[0].num_rows)
    if all(isinstance(r, (Outer, Rows)) for r in reps):
        outer = [_rows_as_outer(r) if isinstance(r, Rows) else r for r in reps]
        if len({o.dims[:2] + o.dims[3:] for o in outer}) == 1:
            # sum over uses of sum over t = one sum over the concatenated positions
            fast = [o.weighted for o in outer if o.weighted is not None]
            # a fast weighted sum when every use has one (a sum of tensors is a tensor)
            weighted = ((lambda s: cast(torch.Tensor, sum(f(s) for f in fast)))
                        if len(fast) == len(outer) else None)
            return Outer(torch.cat([o.left for o in outer], 2),
                         torch.cat([o.right for o in outer], 2), weighted)
    b = _data(reps[0]).shape[0]
    _check_size(b * numel, 4, "forming a shared parameter's per-sample gradients")
    total = materialise(reps[0]).clone()
    for r in reps[1:]:
        total += materialise(r)
    return PerSample(total)
