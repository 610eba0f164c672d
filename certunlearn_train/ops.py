"""The fused noisy-step op: typed wrappers, argument checks, fake (meta) kernels, noise stream.

``noisy_step_`` performs one step of noisy, clipped, projected SGD on a flat float32 parameter
vector in a single pass over the per-sample gradients (semantics: ``docs/kernel.md``; the
pure-PyTorch reference the op is tested against is ``tests/kernel/reference.py``). It is backed
by ``torch.ops.certunlearn.noisy_step_``, implemented in C++ (CPU) and CUDA by the
``certunlearn_train._C`` extension, which is required: without it (or on a device it has no
kernel for) the wrappers raise ``RuntimeError`` saying how to build it. There is deliberately no
pure-Python fallback: a silently hundred-times-slower step is worse than a clear error, and one
implementation of the noise is easier to keep right than two.

Noise comes from a counter-based generator (Philox4x32-10) keyed by a 64-bit seed; a
:class:`NoiseStream` owns the (seed, offset) pair and hands out disjoint counter ranges, so no
counter is ever used twice. The seed is drawn from the operating system's entropy source unless
the caller passes one. A predictable seed (a fixed number, a seed derived from a clock) lets
anyone regenerate the noise and subtract it, which voids the unlearning guarantee: pass a seed only
for tests and reproductions.

Under ``torch.compile`` the wrappers trace: ``seed`` and ``offset`` may be symbolic integers
(their range checks become ``torch._check`` assertions instead of guards on their values), so a
loop over steps with a new offset each step compiles at most twice (once with the first value,
once with the offset dynamic); see ``docs/kernel.md``.
"""
from __future__ import annotations

import math
import secrets
import threading

import torch

from certunlearn_train.build_check import extension_torch_mismatch

__all__ = [
    "noisy_step_", "gaussian_noise", "NoiseStream", "extension_available",
    "extension_unavailable_reason", "cuda_kernels_available", "SCHEMA", "NOISE_SCHEMA",
    "check_step_arguments", "blocks_for", "seed_to_int64", "seed_from_int64", "MAX_OFFSET",
    "PROJECTION_SLACK",
]

#: Schema of the step op (identical to the one ``csrc/noisy_step.cpp`` registers).
SCHEMA = ("noisy_step_(Tensor(a!) params, Tensor grads, Tensor? norms, float lr, "
          "float weight_decay, float clip, float noise_std, float radius, "
          "bool noise_after_projection, SymInt seed, SymInt offset) -> Tensor")
#: Schema of the noise fill op: ``out`` (float32/float64, contiguous) gets N(0, 1) draws.
NOISE_SCHEMA = "gaussian_noise_(Tensor(a!) out, SymInt seed, SymInt offset) -> ()"
#: Relative shrink of the projection radius that keeps the float32 result inside the ball.
PROJECTION_SLACK = 2.0 ** -20
#: Largest counter block index (exclusive) a draw may reach: offsets live in [0, 2^63).
MAX_OFFSET = 2 ** 63

_EXTENSION_ERROR: str | None = extension_torch_mismatch()
try:
    if _EXTENSION_ERROR is None:  # never load an extension built against another torch
        # importing registers the ops; a compiled module, so mypy cannot see it
        from certunlearn_train import _C  # type: ignore[attr-defined]  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised only without a build
    _EXTENSION_ERROR = (f"certunlearn_train._C could not be imported ({exc}); build it with "
                        f"`make setup` or `pip install --no-build-isolation -e .`")


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


if _EXTENSION_ERROR is None:
    @torch.library.register_fake("certunlearn::noisy_step_")
    def _noisy_step_fake(params, grads, norms, lr, weight_decay, clip, noise_std, radius,
                         noise_after_projection, seed, offset):
        torch._check(grads.dim() == 2, lambda: "grads must be 2-D (B, d)")
        return grads.new_empty((grads.shape[0],), dtype=torch.float64)

    @torch.library.register_fake("certunlearn::gaussian_noise_")
    def _gaussian_noise_fake(out, seed, offset):
        return None


def _require_kernel(device: torch.device, what: str) -> None:
    """Raise RuntimeError unless the compiled op has a kernel for ``device``."""
    if _EXTENSION_ERROR is not None:
        raise RuntimeError(f"{what}: the compiled op is required: {_EXTENSION_ERROR}")
    if device.type == "cuda" and not cuda_kernels_available():
        raise RuntimeError(f"{what}: the certunlearn_train._C extension was built without CUDA "
                           "kernels; rebuild with CERTUNLEARN_CUDA=1 on a machine with nvcc and a "
                           "CUDA build of torch, or run on the CPU")
    if device.type not in ("cpu", "cuda"):
        raise RuntimeError(f"{what}: no compiled kernel for device type {device.type!r}")


def blocks_for(numel) -> int:
    """Number of Philox counter blocks a draw of ``numel`` normals uses: ``ceil(numel / 2)``."""
    return (numel + 1) // 2


def seed_to_int64(seed: int) -> int:
    """Map a seed in [0, 2^64) to the signed int64 with the same bits (the op's ``int`` argument)."""
    return seed - 2 ** 64 if seed >= 2 ** 63 else seed


def seed_from_int64(seed: int) -> int:
    """Inverse of :func:`seed_to_int64`: a signed int64 to the unsigned 64-bit seed."""
    return seed + 2 ** 64 if seed < 0 else seed


def _is_symbolic(value) -> bool:
    return isinstance(value, torch.SymInt)


def _check_draw(numel, seed, offset):
    """Validate a draw's (numel, seed, offset); return them with the seed as unsigned 64-bit.

    Symbolic ints (under torch.compile) are checked with ``torch._check`` (runtime assertions,
    no guard on their value); plain ints raise ValueError naming the argument.
    """
    for name, value in (("numel", numel), ("seed", seed), ("offset", offset)):
        if _is_symbolic(value):
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if not _is_symbolic(numel) and numel < 0:
        raise ValueError(f"numel must be >= 0, got {numel}")
    if _is_symbolic(seed):
        torch._check(seed >= -2 ** 63)  # a SymInt is an int64: the signed form of a 64-bit seed
    else:
        if not -2 ** 63 <= seed < 2 ** 64:
            raise ValueError(f"seed must be in [0, 2^64) (or a signed int64), got {seed}")
        seed = seed_from_int64(seed)
    if _is_symbolic(offset) or _is_symbolic(numel):
        torch._check(offset >= 0, lambda: "offset must be >= 0")
        torch._check(offset + blocks_for(numel) <= MAX_OFFSET,
                     lambda: "offset + ceil(numel/2) must be <= 2^63")
    elif offset < 0 or offset + blocks_for(numel) > MAX_OFFSET:
        raise ValueError(
            f"offset must satisfy 0 <= offset and offset + ceil(numel/2) <= 2^63 (counter blocks "
            f"are never reused), got offset={offset}, numel={numel}")
    return numel, seed, offset


def _check_scalar(name: str, value, *, allow_inf: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"noisy_step_: {name} must be a real number, got {value!r}")
    value = float(value)
    if math.isnan(value) or value < 0 or (math.isinf(value) and not allow_inf):
        what = "a non-negative number (inf allowed)" if allow_inf else "a finite non-negative number"
        raise ValueError(f"noisy_step_: {name} must be {what}, got {value}")
    return value


def check_step_arguments(params, grads, norms, *, lr, weight_decay, clip, noise_std, radius,
                         seed, offset) -> None:
    """Validate everything that can be checked without reading the tensors' values.

    Raises:
        ValueError: naming the argument, the constraint and the value received.
    """
    if not isinstance(params, torch.Tensor) or not isinstance(grads, torch.Tensor):
        raise ValueError(f"noisy_step_: params and grads must be tensors, got "
                         f"{type(params).__name__} and {type(grads).__name__}")
    if params.dtype != torch.float32:
        raise ValueError(f"noisy_step_: params must be float32, got {params.dtype}")
    if grads.dtype != torch.float32:
        raise ValueError(f"noisy_step_: grads must be float32 (same dtype as params), got {grads.dtype}")
    if params.dim() != 1 or params.numel() == 0:
        raise ValueError(f"noisy_step_: params must be a non-empty 1-D tensor (d,), got shape "
                         f"{tuple(params.shape)}")
    d = params.numel()
    if grads.dim() != 2 or grads.shape[1] != d:
        raise ValueError(f"noisy_step_: grads must have shape (B, d) with d = params.numel() = {d}, "
                         f"got {tuple(grads.shape)}")
    if grads.shape[0] == 0:
        raise ValueError(f"noisy_step_: grads must have B >= 1 rows, got shape {tuple(grads.shape)}")
    if grads.device != params.device:
        raise ValueError(f"noisy_step_: grads must be on params' device {params.device}, got "
                         f"{grads.device}")
    if not params.is_contiguous():
        raise ValueError(f"noisy_step_: params must be contiguous, got strides {params.stride()}")
    if not grads.is_contiguous():
        raise ValueError(f"noisy_step_: grads must be contiguous, got strides {grads.stride()}")
    if norms is not None:
        if not isinstance(norms, torch.Tensor):
            raise ValueError(f"noisy_step_: norms must be a tensor or None, got {type(norms).__name__}")
        if norms.dtype not in (torch.float32, torch.float64):
            raise ValueError(f"noisy_step_: norms must be float32 or float64, got {norms.dtype}")
        if norms.shape != (grads.shape[0],):
            raise ValueError(f"noisy_step_: norms must have shape (B,) = ({grads.shape[0]},), got "
                             f"{tuple(norms.shape)}")
        if norms.device != params.device:
            raise ValueError(f"noisy_step_: norms must be on params' device {params.device}, got "
                             f"{norms.device}")
    _check_scalar("lr", lr, allow_inf=False)
    _check_scalar("weight_decay", weight_decay, allow_inf=False)
    _check_scalar("clip", clip, allow_inf=True)
    _check_scalar("noise_std", noise_std, allow_inf=False)
    _check_scalar("radius", radius, allow_inf=True)
    try:
        _check_draw(d, seed, offset)
    except ValueError as exc:
        raise ValueError(f"noisy_step_: {exc}") from None


def noisy_step_(params: torch.Tensor, grads: torch.Tensor, *, lr: float,
                weight_decay: float = 0.0, clip: float = math.inf, noise_std: float = 0.0,
                radius: float = math.inf, noise_after_projection: bool = True, seed: int,
                offset: int, norms: torch.Tensor | None = None) -> torch.Tensor:
    """One noisy, clipped, projected SGD step, in place on ``params``.

    ``u = (1 - lr*weight_decay) x - (lr/B) sum_i min(1, clip/||G_i||) G_i``; then
    ``x <- P(u) + noise_std*z`` (``noise_after_projection=True``) or ``x <- P(u + noise_std*z)``,
    with ``P`` the projection onto the ball of radius ``radius * (1 - 2^-20)`` (the slack keeps
    the float32 result inside the ``radius`` ball) and ``z ~ N(0, I)`` drawn from Philox4x32-10
    at ``(seed, offset)`` (counter layout in ``docs/kernel.md``). The noisy
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
        RuntimeError: the compiled extension is missing or has no kernel for the device.
    """
    check_step_arguments(params, grads, norms, lr=lr, weight_decay=weight_decay, clip=clip,
                         noise_std=noise_std, radius=radius, seed=seed, offset=offset)
    _require_kernel(params.device, "noisy_step_")
    if not _is_symbolic(seed):
        seed = seed_to_int64(seed)
    with torch.no_grad():
        return torch.ops.certunlearn.noisy_step_(
            params, grads, norms, float(lr), float(weight_decay), float(clip), float(noise_std),
            float(radius), bool(noise_after_projection), seed, offset)


def gaussian_noise(numel: int, seed: int, offset: int, *, device="cpu",
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The N(0, 1) draws that a step at ``(seed, offset)`` adds (before scaling by noise_std).

    Element ``i`` uses Philox counter block ``offset + i // 2`` (layout in ``docs/kernel.md``),
    generated by the compiled op.

    Args:
        numel: number of draws (>= 0).
        seed: 64-bit key in [0, 2^64).
        offset: first counter block, ``offset + ceil(numel/2) <= 2^63``.
        device: device of the result.
        dtype: torch.float32 or torch.float64 (the transform runs in float64 either way).

    Returns:
        A (numel,) tensor.
    """
    numel, seed, offset = _check_draw(numel, seed, offset)
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"gaussian_noise: dtype must be torch.float32 or torch.float64, got {dtype}")
    device = torch.device(device)
    _require_kernel(device, "gaussian_noise")
    out = torch.empty(numel, device=device, dtype=dtype)
    if numel:
        torch.ops.certunlearn.gaussian_noise_(out, seed if _is_symbolic(seed)
                                              else seed_to_int64(seed), offset)
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
                0 <= offset < MAX_OFFSET:
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
            if end > MAX_OFFSET:
                raise ValueError(f"NoiseStream.take: counter space exhausted (offset {start} + "
                                 f"{blocks_for(numel)} blocks > 2^63); start a new stream")
            self._offset = end
        return self._seed, start

    def __repr__(self) -> str:
        origin = "user-supplied (predictable)" if self._user_seed else "OS entropy"
        return f"NoiseStream(seed=<{origin}>, offset={self._offset})"
