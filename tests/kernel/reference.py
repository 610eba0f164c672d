"""Pure-PyTorch reference of the fused noisy step and of its noise generator.

This module defines the semantics that the C++/CUDA op in ``csrc/`` implements; the op is tested
against it. It lives with the tests: the package itself needs the compiled extension (argument
checks and the counter helpers are shared with :mod:`certunlearn_train.ops`).

One step, in place on the flat float32 parameter vector ``x`` (d,), from per-sample gradients
``G`` (B, d)::

    s_i = min(1, clip / ||G_i||)              (s_i = 1 when ||G_i|| <= clip, including G_i = 0)
    u   = (1 - lr * weight_decay) * x - (lr / B) * sum_i s_i G_i
    x'  = P(u) + noise_std * z                (noise_after_projection=True)
    x'  = P(u + noise_std * z)                (noise_after_projection=False)

with ``z ~ N(0, I_d)`` from :func:`gaussian_noise_reference` and ``P`` the Euclidean projection
onto the ball of radius ``radius * (1 - PROJECTION_SLACK)``. The slack (2^-20, relative) absorbs
float32 rounding of the scaled vector, so that ``||x'|| <= radius`` holds for the float32 result,
not only in exact arithmetic; a projection onto a slightly smaller ball is still a projection onto
a convex subset of the radius-``radius`` ball, which is all the certificate needs (Koloskova et al.
2025, model clipping). Row norms and the projection norm are accumulated in float64.

The noise generator is Philox4x32-10 (Salmon, Moraes, Dror, Shaw 2011, "Parallel random numbers:
as easy as 1, 2, 3") followed by the Box-Muller transform with 53-bit uniforms, evaluated in
float64. Counter layout: a draw of ``n`` normals at ``offset`` with a 64-bit ``seed`` uses the
Philox key ``(seed mod 2^32, seed >> 32)`` and the counter blocks ``offset + j`` for
``j = 0 .. ceil(n/2) - 1`` (block index in words 0 (low 32 bits) and 1 (high 32 bits), words 2 and
3 zero). Block ``j`` yields the output words ``w0..w3``; with ``a = (w0 << 21) ^ (w1 >> 11)`` and
``b = (w2 << 21) ^ (w3 >> 11)`` taken modulo 2^53,

    u1 = (a + 1) / 2^53 in (0, 1],  u2 = b / 2^53 in [0, 1),
    z[2j]   = sqrt(-2 ln u1) * cos(2 pi u2),
    z[2j+1] = sqrt(-2 ln u1) * sin(2 pi u2).

53-bit uniforms keep the tail faithful to |z| = sqrt(2 * 53 ln 2) = 8.57, where the Gaussian
tail mass is about 1e-17 per coordinate (32-bit uniforms would cut it at 6.66, mass 3e-11, which
over 1e7 coordinates and 100 steps already exceeds a typical delta).
"""
from __future__ import annotations

import math

import torch

from certunlearn_train.ops import (  # noqa: F401
    MAX_OFFSET,
    PROJECTION_SLACK,
    _check_draw,
    blocks_for,
    check_step_arguments,
    seed_from_int64,
    seed_to_int64,
)

__all__ = [
    "PHILOX_M0", "PHILOX_M1", "PHILOX_W0", "PHILOX_W1", "PROJECTION_SLACK", "MAX_OFFSET",
    "philox4x32", "box_muller", "gaussian_noise_reference", "noisy_step_reference", "check_step_arguments",
    "blocks_for", "seed_to_int64", "seed_from_int64",
]

PHILOX_M0 = 0xD2511F53
PHILOX_M1 = 0xCD9E8D57
PHILOX_W0 = 0x9E3779B9
PHILOX_W1 = 0xBB67AE85
_MASK32 = 0xFFFFFFFF

def _mulhilo(a: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) 32-bit halves of the 64-bit product ``a * m`` for uint32 values held in int64.

    Split ``m`` into 16-bit halves so that no intermediate exceeds 2^49 (int64 never overflows).
    """
    m_lo, m_hi = m & 0xFFFF, m >> 16
    p_lo = a * m_lo                     # < 2^48
    p_hi = a * m_hi                     # < 2^48, weight 2^16
    s = p_lo + ((p_hi & 0xFFFF) << 16)  # < 2^49
    return (p_hi >> 16) + (s >> 32), s & _MASK32


def philox4x32(counter: tuple[torch.Tensor, ...], key: tuple[int, int],
               rounds: int = 10) -> tuple[torch.Tensor, ...]:
    """Philox4x32-R block function on int64 tensors holding uint32 words.

    Args:
        counter: four int64 tensors (same shape), each word in [0, 2^32).
        key: two ints in [0, 2^32).
        rounds: number of rounds (10 for Philox4x32-10).

    Returns:
        Four int64 tensors with the output words, in [0, 2^32).

    Source: Salmon et al. 2011 (SC'11), Philox-4x32 with multipliers 0xD2511F53, 0xCD9E8D57 and
    Weyl key increments 0x9E3779B9, 0xBB67AE85; checked against Random123's known-answer vectors.
    """
    c0, c1, c2, c3 = counter
    k0, k1 = int(key[0]) & _MASK32, int(key[1]) & _MASK32
    for r in range(rounds):
        if r:
            k0 = (k0 + PHILOX_W0) & _MASK32
            k1 = (k1 + PHILOX_W1) & _MASK32
        hi0, lo0 = _mulhilo(c0, PHILOX_M0)
        hi1, lo1 = _mulhilo(c2, PHILOX_M1)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


def gaussian_noise_reference(numel: int, seed: int, offset: int, *, device="cpu",
                             dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard normal noise for ``(seed, offset)``, exactly as the op draws it (module docstring).

    Args:
        numel: number of normals (>= 0).
        seed: 64-bit key in [0, 2^64) (a signed int64 is also accepted and read as its bits).
        offset: first counter block, in [0, 2^63 - ceil(numel/2)].
        device: where to compute and return the noise.
        dtype: float32 or float64; the transform runs in float64 and is rounded to nearest.

    Returns:
        A (numel,) tensor of N(0, 1) draws.
    """
    numel, seed, offset = _check_draw(numel, seed, offset)
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"gaussian_noise: dtype must be torch.float32 or torch.float64, got {dtype}")
    nblocks = blocks_for(numel)
    block = offset + torch.arange(nblocks, dtype=torch.int64, device=device)
    zero = torch.zeros_like(block)
    words = philox4x32((block & _MASK32, block >> 32, zero, zero), (seed & _MASK32, seed >> 32))
    z = torch.stack(box_muller(*words), dim=1).reshape(-1)
    return z[:numel].to(dtype)


def box_muller(w0: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor,
               w3: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The two float64 standard normals of Philox output words ``w0..w3`` (int64 tensors).

    ``u1 = (a + 1) 2^-53`` with ``a = ((w0 << 21) ^ (w1 >> 11)) mod 2^53`` and ``u2 = b 2^-53``
    likewise from ``w2, w3``; returns ``sqrt(-2 ln u1) * (cos 2 pi u2, sin 2 pi u2)``. The largest
    possible radius is ``sqrt(2 * 53 ln 2) = 8.57`` (at ``a = 0``).
    """
    a = ((w0 << 21) ^ (w1 >> 11)) & ((1 << 53) - 1)
    b = ((w2 << 21) ^ (w3 >> 11)) & ((1 << 53) - 1)
    u1 = (a + 1).to(torch.float64) * 2.0 ** -53
    u2 = b.to(torch.float64) * 2.0 ** -53
    r = torch.sqrt(-2.0 * torch.log(u1))
    theta = (2.0 * math.pi) * u2
    return r * torch.cos(theta), r * torch.sin(theta)


@torch.no_grad()
def noisy_step_reference(params: torch.Tensor, grads: torch.Tensor, *, lr: float,
                         weight_decay: float = 0.0, clip: float = math.inf,
                         noise_std: float = 0.0, radius: float = math.inf,
                         noise_after_projection: bool = True, seed: int, offset: int,
                         norms: torch.Tensor | None = None,
                         accumulate_dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """One noisy (projected, clipped) SGD step in place on ``params``; semantics in the module doc.

    Args:
        params: (d,) float32 contiguous, updated in place.
        grads: (B, d) float32 per-sample gradients (B = 1 for a clipped batch gradient).
        lr, weight_decay, clip, noise_std, radius: as in the formula (clip/radius may be inf).
        noise_after_projection: add the noise after the projection (True) or before it.
        seed, offset: the noise key and first counter block (see :class:`ops.NoiseStream`).
        norms: optional precomputed row norms (B,); must be finite and non-negative.
        accumulate_dtype: float64 (default, the exact reference) or float32 (a faster eager
            variant used by the benchmark; row norms are still accumulated in float64).

    Returns:
        The (B,) float64 row norms used for clipping.

    Raises:
        ValueError: bad arguments or non-finite values in params/grads/norms; params untouched.
    """
    check_step_arguments(params, grads, norms, lr=lr, weight_decay=weight_decay, clip=clip,
                         noise_std=noise_std, radius=radius, seed=seed, offset=offset)
    B, d = grads.shape
    if not bool(torch.isfinite(params).all()):
        raise ValueError("noisy_step_: params contain non-finite values (params left unchanged)")
    if norms is None:
        row_norms = torch.linalg.vector_norm(grads, dim=1, dtype=torch.float64)
        if not bool(torch.isfinite(row_norms).all()):
            raise ValueError("noisy_step_: grads contain non-finite values (params left unchanged)")
    else:
        row_norms = norms.to(torch.float64)
        if not bool((torch.isfinite(row_norms) & (row_norms >= 0)).all()):
            raise ValueError("noisy_step_: norms must be finite and non-negative "
                             "(params left unchanged)")
    scale = torch.where(row_norms > clip, clip / row_norms, torch.ones_like(row_norms))
    coef = (scale * (float(lr) / B)).to(accumulate_dtype)
    u = params.to(accumulate_dtype) * (1.0 - float(lr) * float(weight_decay))
    u = u - coef @ grads.to(accumulate_dtype)
    if not bool(torch.isfinite(u).all()):
        raise ValueError("noisy_step_: grads contain non-finite values or the update overflowed "
                         "(params left unchanged)")
    if noise_std > 0 and not noise_after_projection:
        u = u + float(noise_std) * gaussian_noise_reference(
            d, seed, offset, device=params.device, dtype=accumulate_dtype)
    if math.isfinite(radius):
        target = float(radius) * (1.0 - PROJECTION_SLACK)
        norm = torch.linalg.vector_norm(u, dtype=torch.float64)
        if norm > target:
            u = u * (target / norm).to(accumulate_dtype)
    if noise_std > 0 and noise_after_projection:
        u = u + float(noise_std) * gaussian_noise_reference(
            d, seed, offset, device=params.device, dtype=accumulate_dtype)
    params.copy_(u)
    return row_norms
