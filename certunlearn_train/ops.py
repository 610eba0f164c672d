"""The fused noisy-step op: typed wrappers, fake (meta) kernels and the noise stream.

``noisy_step_`` performs one step of noisy, clipped, projected SGD on a flat float32 parameter
vector in a single pass over the per-sample gradients (semantics in
:mod:`certunlearn_train._reference`). It is backed by ``torch.ops.certunlearn.noisy_step_``,
implemented in C++ (CPU) and CUDA by the ``certunlearn_train._C`` extension. If the extension
cannot be loaded, the same op is registered from the pure-PyTorch reference and a
``RuntimeWarning`` says so once: the results are the same, only slower.

Noise comes from a counter-based generator (Philox4x32-10) keyed by a 64-bit seed; a
:class:`NoiseStream` owns the (seed, offset) pair and hands out disjoint counter ranges, so no
counter is ever used twice. The seed is drawn from the operating system's entropy source unless
the caller passes one. A predictable seed (a fixed number, a seed derived from a clock) lets
anyone regenerate the noise and subtract it, which voids the unlearning guarantee: pass a seed only
for tests and reproductions.
"""
from __future__ import annotations

import math
import secrets
import threading
import warnings

import torch

from certunlearn_train import _reference
from certunlearn_train.build_check import extension_torch_mismatch
from certunlearn_train._reference import blocks_for, seed_to_int64

__all__ = [
    "noisy_step_", "gaussian_noise", "NoiseStream", "extension_available",
    "extension_unavailable_reason", "cuda_kernels_available", "SCHEMA", "NOISE_SCHEMA",
]

#: Schema of the step op (identical to the one ``csrc/noisy_step.cpp`` registers).
SCHEMA = ("noisy_step_(Tensor(a!) params, Tensor grads, Tensor? norms, float lr, "
          "float weight_decay, float clip, float noise_std, float radius, "
          "bool noise_after_projection, int seed, int offset) -> Tensor")
#: Schema of the noise fill op: ``out`` (float32/float64, contiguous) gets N(0, 1) draws.
NOISE_SCHEMA = "gaussian_noise_(Tensor(a!) out, int seed, int offset) -> ()"

_EXTENSION_ERROR: str | None = extension_torch_mismatch()
try:
    if _EXTENSION_ERROR is None:  # never load an extension built against another torch
        from certunlearn_train import _C  # noqa: F401  (importing registers the ops)
except ImportError as exc:  # pragma: no cover - exercised only without a build
    _EXTENSION_ERROR = (f"certunlearn_train._C could not be imported ({exc}); build it with "
                        f"`make setup` or `python setup.py build_ext --inplace`")

_fallback_warned = False
_fallback_lock = threading.Lock()


def extension_available() -> bool:
    """Whether the compiled extension (``certunlearn_train._C``) was loaded."""
    return _EXTENSION_ERROR is None


def extension_unavailable_reason() -> str | None:
    """Why the compiled extension is not in use, or None when it is."""
    return _EXTENSION_ERROR


def cuda_kernels_available() -> bool:
    """Whether the loaded extension was built with its CUDA kernels."""
    return extension_available() and torch._C._dispatch_has_kernel_for_dispatch_key(
        "certunlearn::noisy_step_", "CUDA")


def _warn_fallback(reason: str) -> None:
    global _fallback_warned
    with _fallback_lock:
        if _fallback_warned:
            return
        _fallback_warned = True
    warnings.warn(f"certunlearn: using the slow pure-PyTorch noisy step: {reason}",
                  RuntimeWarning, stacklevel=3)


def _reference_step_impl(params, grads, norms, lr, weight_decay, clip, noise_std, radius,
                         noise_after_projection, seed, offset):
    return _reference.noisy_step_reference(
        params, grads, lr=lr, weight_decay=weight_decay, clip=clip, noise_std=noise_std,
        radius=radius, noise_after_projection=noise_after_projection, seed=seed, offset=offset,
        norms=norms)


def _reference_noise_impl(out, seed, offset):
    out.copy_(_reference.gaussian_noise_reference(out.numel(), seed, offset, device=out.device,
                                                  dtype=out.dtype).view_as(out))


if _EXTENSION_ERROR is not None:  # pragma: no cover - exercised only without a build
    # Same op names and schemas, backed by the reference, so torch.ops callers and torch.compile
    # behave the same with or without the build.
    _fallback_lib = torch.library.Library("certunlearn", "DEF")
    _fallback_lib.define(SCHEMA)
    _fallback_lib.define(NOISE_SCHEMA)
    _fallback_lib.impl("noisy_step_", _reference_step_impl, "CompositeExplicitAutograd")
    _fallback_lib.impl("gaussian_noise_", _reference_noise_impl, "CompositeExplicitAutograd")


@torch.library.register_fake("certunlearn::noisy_step_")
def _noisy_step_fake(params, grads, norms, lr, weight_decay, clip, noise_std, radius,
                     noise_after_projection, seed, offset):
    torch._check(grads.dim() == 2, lambda: "grads must be 2-D (B, d)")
    return grads.new_empty((grads.shape[0],), dtype=torch.float64)


@torch.library.register_fake("certunlearn::gaussian_noise_")
def _gaussian_noise_fake(out, seed, offset):
    return None


def _use_reference(device: torch.device) -> str | None:
    """Reason to run the reference on ``device`` instead of the compiled op, or None."""
    if _EXTENSION_ERROR is not None:
        return _EXTENSION_ERROR
    if device.type == "cuda" and not cuda_kernels_available():
        return ("the certunlearn_train._C extension was built without CUDA kernels; rebuild "
                "with CERTUNLEARN_CUDA=1 on a machine with nvcc and a CUDA build of torch")
    if device.type not in ("cpu", "cuda"):
        return f"no compiled kernel for device type {device.type!r}"
    return None


def noisy_step_(params: torch.Tensor, grads: torch.Tensor, *, lr: float,
                weight_decay: float = 0.0, clip: float = math.inf, noise_std: float = 0.0,
                radius: float = math.inf, noise_after_projection: bool = True, seed: int,
                offset: int, norms: torch.Tensor | None = None) -> torch.Tensor:
    """One noisy, clipped, projected SGD step, in place on ``params``.

    ``u = (1 - lr*weight_decay) x - (lr/B) sum_i min(1, clip/||G_i||) G_i``; then
    ``x <- P(u) + noise_std*z`` (``noise_after_projection=True``) or ``x <- P(u + noise_std*z)``,
    with ``P`` the projection onto the ball of radius ``radius * (1 - 2^-20)`` (the slack keeps
    the float32 result inside the ``radius`` ball) and ``z ~ N(0, I)`` drawn from Philox4x32-10
    at ``(seed, offset)`` (counter layout in :mod:`certunlearn_train._reference`). The noisy
    gradient step of Koloskova et al. 2025 (Alg. 1, gradient or model clipping).

    Args:
        params: (d,) float32 contiguous flat parameters, updated in place.
        grads: (B, d) float32 contiguous per-sample gradients, or (1, d) for a batch gradient
            (clipping the mini-batch gradient, as the paper does). Zero rows are fine.
        lr: learning rate (finite, >= 0).
        weight_decay: L2 coefficient (finite, >= 0).
        clip: per-row clipping radius C1 (>= 0, inf disables clipping).
        noise_std: standard deviation of the Gaussian noise per coordinate (finite, >= 0).
        radius: projection radius C2 (>= 0, inf disables the projection).
        noise_after_projection: order of noise and projection (see above).
        seed: 64-bit noise key in [0, 2^64), usually from :meth:`NoiseStream.take`.
        offset: first Philox counter block of this step; the step uses ``ceil(d/2)`` blocks.
        norms: optional precomputed row norms ||G_i|| (B,), float32 or float64, so that
            ``grads`` is read only once. They are trusted: pass the norms of ``grads``.

    Returns:
        The (B,) float64 row norms used for clipping (accumulated in float64; a float64 copy of
        ``norms`` when given).

    Raises:
        ValueError: B = 0, shape/dtype/device mismatch, non-contiguous input, a negative or NaN
            scalar, or non-finite values in params, grads or norms. Params are left unchanged.
    """
    _reference.check_step_arguments(params, grads, norms, lr=lr, weight_decay=weight_decay,
                                    clip=clip, noise_std=noise_std, radius=radius, seed=seed,
                                    offset=offset)
    reason = _use_reference(params.device)
    with torch.no_grad():
        if reason is not None:
            _warn_fallback(reason)
            return _reference_step_impl(params, grads, norms, float(lr), float(weight_decay),
                                        float(clip), float(noise_std), float(radius),
                                        bool(noise_after_projection), int(seed), int(offset))
        return torch.ops.certunlearn.noisy_step_(
            params, grads, norms, float(lr), float(weight_decay), float(clip), float(noise_std),
            float(radius), bool(noise_after_projection), seed_to_int64(int(seed)), int(offset))


def gaussian_noise(numel: int, seed: int, offset: int, *, device="cpu",
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The N(0, 1) draws that a step at ``(seed, offset)`` adds (before scaling by noise_std).

    Element ``i`` uses Philox counter block ``offset + i // 2`` (layout in
    :mod:`certunlearn_train._reference`); generated by the compiled op when available, by the
    reference otherwise (they agree to float rounding).

    Args:
        numel: number of draws (>= 0).
        seed: 64-bit key in [0, 2^64).
        offset: first counter block, ``offset + ceil(numel/2) <= 2^63``.
        device: device of the result.
        dtype: torch.float32 or torch.float64 (the transform runs in float64 either way).

    Returns:
        A (numel,) tensor.
    """
    numel, seed, offset = _reference._check_draw(numel, seed, offset)
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"gaussian_noise: dtype must be torch.float32 or torch.float64, got {dtype}")
    device = torch.device(device)
    reason = _use_reference(device)
    if reason is not None:
        _warn_fallback(reason)
        return _reference.gaussian_noise_reference(numel, seed, offset, device=device, dtype=dtype)
    out = torch.empty(numel, device=device, dtype=dtype)
    if numel:
        torch.ops.certunlearn.gaussian_noise_(out, seed_to_int64(seed), offset)
    return out


class NoiseStream:
    """Owner of the noise key and counter: hands out disjoint Philox counter ranges.

    Each :meth:`take` of ``n`` normals reserves the counter blocks ``[offset, offset +
    ceil(n/2))`` and advances the offset past them, so no counter block is used twice under
    one seed (thread-safe). Keep one stream per unlearning run.

    Args:
        seed: 64-bit key in [0, 2^64). None (the default) draws it from the OS entropy source
            (:mod:`secrets`); anything else is predictable and voids the guarantee, since whoever
            knows the seed can regenerate and remove the noise. Use it for tests only.
        offset: first counter block to hand out (default 0), e.g. to resume a stream.

    Example:
        >>> stream = NoiseStream(seed=7)
        >>> stream.take(5)
        (7, 0)
        >>> stream.take(5)
        (7, 3)
    """

    def __init__(self, seed: int | None = None, offset: int = 0):
        if seed is None:
            seed = secrets.randbits(64)
            self._user_seed = False
        else:
            if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 64:
                raise ValueError(f"NoiseStream: seed must be an int in [0, 2^64) or None, got "
                                 f"{seed!r}")
            self._user_seed = True
        if isinstance(offset, bool) or not isinstance(offset, int) or not \
                0 <= offset < _reference.MAX_OFFSET:
            raise ValueError(f"NoiseStream: offset must be an int in [0, 2^63), got {offset!r}")
        self._seed = int(seed)
        self._offset = int(offset)
        self._lock = threading.Lock()

    @property
    def seed(self) -> int:
        """The 64-bit key (keep it secret unless the run is a test)."""
        return self._seed

    @property
    def offset(self) -> int:
        """The next counter block that :meth:`take` will hand out."""
        return self._offset

    @property
    def seed_is_user_supplied(self) -> bool:
        """True when the caller chose the seed (predictable: the guarantee does not hold)."""
        return self._user_seed

    def take(self, numel: int) -> tuple[int, int]:
        """Reserve the counter blocks for ``numel`` normals; return ``(seed, offset)`` for the op.

        Raises:
            ValueError: ``numel`` negative, or the 2^63 counter blocks of this seed exhausted.
        """
        if isinstance(numel, bool) or not isinstance(numel, int) or numel < 0:
            raise ValueError(f"NoiseStream.take: numel must be an int >= 0, got {numel!r}")
        with self._lock:
            start = self._offset
            end = start + blocks_for(numel)
            if end > _reference.MAX_OFFSET:
                raise ValueError(f"NoiseStream.take: counter space exhausted (offset {start} + "
                                 f"{blocks_for(numel)} blocks > 2^63); start a new stream")
            self._offset = end
        return self._seed, start

    def __repr__(self) -> str:
        origin = "user-supplied (predictable)" if self._user_seed else "OS entropy"
        return f"NoiseStream(seed=<{origin}>, offset={self._offset})"
