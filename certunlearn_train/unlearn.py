"""Certified unlearning by noisy fine-tuning on the retained data (Koloskova et al. 2025).

Phases (Koloskova, Allouah, Jha, Guerraoui, Koyejo, "Certified Unlearning for Neural Networks",
ICML 2025, Algorithms 1 and 2):

1. clip the trained model to the ball of radius C0 (global L2 norm over all parameters);
   with model clipping, optionally add N(0, sigma0^2 I);
2. T noisy steps on the retain set only, on a flat parameter buffer with the fused op
   :func:`certunlearn_train.ops.noisy_step_`:

   * gradient clipping: x <- x - lr (clip(g, C1) + lam x) + N(0, sigma^2 I);
   * model clipping:    x <- Proj_C2(x - lr (g + lam x)) + N(0, sigma^2 I);

   where g is the mean of the per-sample gradients each clipped to C1 (``clip="per_sample"``) or
   the clipped mini-batch gradient (``clip="batch"``, what the paper runs; much cheaper). Batches
   are drawn from the retain set by a generator that never sees the model or the forget set.
   sigma comes from :func:`certunlearn_theory.noise_for` (rounded up);
3. optional noise-free fine-tuning on the retain set (post-processing: the guarantee holds).

Only the final model may be released; the certificate (:class:`RunCertificate`) says which
guarantee the run has and lets anyone recompute it.
"""
from __future__ import annotations

import copy
import math
import secrets
from typing import Callable, Optional, Tuple

import torch
from torch import nn
import torch.nn.functional as F

from .certificates import RunCertificate, build_run_certificate, weights_sha256
from .models import check_unlearnable
from .train import as_tensors, check_model_fits_data, epoch_batches, train
from ._flat import FlatParameters, GradientSource

__all__ = ["unlearn", "noisy_phase", "clip_to_ball_", "METHODS", "CLIP_MODES",
           "batch_generator_seed"]

METHODS = ("gradient_clipping", "model_clipping")
CLIP_MODES = ("per_sample", "batch")
_BATCH_SEED_TAG = 0x5EED_BA7C


def _param(name, value, *, low=None, low_open=True, integer=False, allow_inf=False):
    ok = not isinstance(value, bool) and isinstance(value, (int, float))
    if integer:
        ok = ok and float(value).is_integer()
    if ok:
        v = float(value)
        ok = not math.isnan(v) and (allow_inf or math.isfinite(v))
        if ok and low is not None:
            ok = v > low if low_open else v >= low
    if not ok:
        kind = "an integer" if integer else "a real number"
        bound = "" if low is None else f" {'>' if low_open else '>='} {low}"
        raise ValueError(f"{name} must be {kind}{bound}, got {value!r}")
    return int(value) if integer else float(value)


def batch_generator_seed(seed: int) -> int:
    """Seed of the batch-sampling generator derived from the user's ``seed`` (documented for audits)."""
    return (int(seed) ^ _BATCH_SEED_TAG) & ((1 << 63) - 1)


def clip_to_ball_(flat: torch.Tensor, radius: float) -> float:
    """Scale ``flat`` in place onto the ball of ``radius`` if outside it; return the old norm."""
    norm = float(torch.linalg.vector_norm(flat.double()))
    if norm > radius:
        flat.mul_(radius / norm)
        # float32 rounding may leave the norm a hair above the radius: shrink until inside
        while float(torch.linalg.vector_norm(flat.double())) > radius:
            flat.mul_(1.0 - 2.0 ** -20)
    return norm


def check_finite_weights(model: nn.Module) -> None:
    """Refuse a model with a NaN or infinite weight, naming the parameter."""
    for name, p in model.named_parameters():
        if not bool(torch.isfinite(p.detach()).all()):
            raise ValueError(f"model weights must be finite: parameter {name} has NaN or inf")


def working_copy(model: nn.Module, inplace: bool, device) -> Tuple[nn.Module, FlatParameters, str]:
    """The model a run writes to, its flat parameter buffer and the SHA-256 of the weights given.

    The model is a deep copy unless ``inplace``, moved to ``device`` when one is given; its
    parameters become views into the returned :class:`FlatParameters`.
    """
    sha_before = weights_sha256(model)
    if not inplace:
        model = copy.deepcopy(model)
    if device is not None:
        model.to(device)
    return model, FlatParameters(model), sha_before


def noisy_phase(model: nn.Module, flat: FlatParameters, x: torch.Tensor, y: torch.Tensor, *,
                steps: int, lr: float, lam: float, clip: str, C1: float, sigma: float,
                radius: float, batch_size: int, generator: torch.Generator, noise,
                loss_fn: Callable = F.cross_entropy, grad_buffer_bytes: int = 64 << 20,
                linear_fast_path: bool = True, progress: bool = True) -> None:
    """Run the T noisy steps in place on ``flat`` (see the module docstring for the update).

    Args:
        noise: a :class:`certunlearn_train.ops.NoiseStream`; each step takes ``d`` values.
        generator: draws the batches (a fresh permutation of the retain set each epoch).
        grad_buffer_bytes: per-sample gradients go to a reused (B, d) buffer that the fused op
            clips row by row when it fits in this many bytes; otherwise they are clipped and
            averaged chunk by chunk into one row.
    """
    from tqdm.auto import tqdm
    from .ops import noisy_step_

    d = flat.numel
    batches = epoch_batches(len(y), batch_size, generator)
    source = GradientSource(model, flat, clip, C1, loss_fn, batch_size, grad_buffer_bytes,
                            linear_fast_path)
    model.train()
    source.probe(x, y)
    for _ in tqdm(range(steps), desc="noisy steps", disable=not progress, leave=False,
                  unit="step"):
        idx = next(batches).to(flat.flat.device)
        grads = source(x[idx], y[idx])
        seed, offset = noise.take(d)
        noisy_step_(flat.flat, grads, lr=lr, weight_decay=lam, clip=C1, noise_std=sigma,
                    radius=radius, noise_after_projection=True, seed=seed, offset=offset,
                    norms=source.norms)
    if not bool(torch.isfinite(flat.flat).all()):
        raise ValueError("the noisy phase produced non-finite weights; lower lr")


def unlearn(model: nn.Module, retain_data, *, eps: float, delta: float,
            method: str = "gradient_clipping", steps: Optional[int] = None,
            epochs: Optional[float] = None, C0: float, C1: float = math.inf, lr: float,
            lam: float = 0.0, C2: Optional[float] = None, sigma0: float = 0.0,
            batch_size: int = 64, clip: str = "batch", finetune_epochs: float = 0.0,
            finetune_lr: Optional[float] = None, forget_size: Optional[int] = None,
            loss_fn: Callable = F.cross_entropy, seed: Optional[int] = None, device=None,
            inplace: bool = False, progress: bool = True,
            grad_buffer_bytes: int = 64 << 20,
            after_noisy_phase: Optional[Callable[[nn.Module], None]] = None,
            ) -> Tuple[nn.Module, RunCertificate]:
    """Unlearn the forget set from ``model`` by noisy fine-tuning on ``retain_data``.

    Args:
        model: the trained model (float32 parameters; see :func:`check_unlearnable`).
        retain_data: the retain set D \\ D_f as ``(x, y)``, a ``TensorDataset`` or an ``ArrayDataset``.
        eps, delta: the target (eps, delta)-unlearning guarantee.
        method: ``"gradient_clipping"`` (needs a finite ``C1``) or ``"model_clipping"`` (needs
            ``C2``; ``C1`` optional, ``sigma0`` optional initial noise).
        steps, epochs: the number T of noisy steps, directly or in passes over the retain set.
            For gradient clipping with ``lam == 0`` the default is T = ceil(C0 / (lr C1)), where the
            bound is tightest (THEORY.md section 5).
        C0: radius the model is clipped to first. C1: gradient clipping radius. C2: model clipping
            radius. lr: step size gamma. lam: weight decay lambda.
        batch_size: retain samples per noisy step. clip: ``"batch"`` or ``"per_sample"``.
        finetune_epochs, finetune_lr: noise-free fine-tuning afterwards (SGD, momentum 0.9).
        forget_size: number of forgotten points, recorded in the certificate.
        seed: makes the noise and batches reproducible (tests, audits). Leave None in production:
            anyone who knows the seed can subtract the noise. The seed is never written out.
        inplace: modify ``model`` itself; by default a copy is unlearned and ``model`` is untouched.
        after_noisy_phase: called with the model after the noisy phase, before fine-tuning (to
            evaluate it; it must not modify the model).

    Returns:
        ``(unlearned_model, certificate)``; the certificate's (eps, delta) is the accountant's,
        recomputed from sigma (rounded up) and the parameters actually used.

    Raises:
        ValueError: invalid parameters (naming the parameter, the constraint and the value),
            an unsupported model, non-finite weights or an empty retain set, before any work.
    """
    import certunlearn_theory as ct
    from .ops import NoiseStream, gaussian_noise

    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if clip not in CLIP_MODES:
        raise ValueError(f"clip must be one of {', '.join(CLIP_MODES)}, got {clip!r}")
    C0 = _param("C0", C0, low=0.0)
    lr = _param("lr", lr, low=0.0)
    lam = _param("lam", lam, low=0.0, low_open=False)
    C1 = _param("C1", C1, low=0.0, allow_inf=method == "model_clipping")
    if method == "model_clipping":
        if C2 is None:
            raise ValueError("model_clipping needs the model clipping radius C2, got None")
        C2 = _param("C2", C2, low=0.0)
        sigma0 = _param("sigma0", sigma0, low=0.0, low_open=False)
    elif C2 is not None or sigma0:
        raise ValueError("C2 and sigma0 belong to model_clipping; gradient_clipping got "
                         f"C2={C2!r}, sigma0={sigma0!r}")
    batch_size = _param("batch_size", batch_size, low=1, low_open=False, integer=True)
    finetune_epochs = _param("finetune_epochs", finetune_epochs, low=0.0, low_open=False)
    finetune_lr = lr if finetune_lr is None else _param("finetune_lr", finetune_lr, low=0.0)
    check_unlearnable(model)
    src_device = next(model.parameters()).device
    device = torch.device(device) if device is not None else src_device
    x, y = as_tensors(retain_data, device)
    n = len(y)
    if n == 0:
        raise ValueError("retain_data is empty: the noisy steps need retained samples")
    if forget_size is not None:
        forget_size = _param("forget_size", forget_size, low=0, low_open=False, integer=True)
    if steps is not None and epochs is not None:
        raise ValueError(f"give steps or epochs, not both (got steps={steps!r}, epochs={epochs!r})")
    if steps is not None:
        T = _param("steps", steps, low=1, low_open=False, integer=True)
    elif epochs is not None:
        T = max(1, math.ceil(_param("epochs", epochs, low=0.0) * n / min(batch_size, n)))
    elif method == "gradient_clipping" and lam == 0.0:
        T = max(1, math.ceil(C0 / (lr * C1)))
    else:
        raise ValueError(f"{method} with lam={lam} needs steps or epochs")
    check_finite_weights(model)

    # The guarantee first: invalid eps/delta or an unreachable target fail before any work.
    acct_c1 = C1 if math.isfinite(C1) else None
    sigma = float(ct.noise_for(eps, delta, T, C0, acct_c1, lr, lam, method=method, C2=C2,
                               sigma0=sigma0))
    model, flat, sha_before = working_copy(model, inplace, device)
    try:
        check_model_fits_data(model, x, y, loss_fn)  # on `device`, before touching the weights
        if clip == "per_sample":  # refuse a non-vmap-able forward before touching the weights
            GradientSource(model, flat, clip, C1, loss_fn, 2, grad_buffer_bytes).probe(x, y)
        noise = NoiseStream(seed)
        gen = torch.Generator()
        gen.manual_seed(batch_generator_seed(seed) if seed is not None
                        else secrets.randbits(63))
        clip_to_ball_(flat.flat, C0)
        if method == "model_clipping" and sigma0 > 0:
            s, o = noise.take(flat.numel)
            flat.flat.add_(gaussian_noise(flat.numel, s, o, device=device, dtype=flat.flat.dtype),
                           alpha=sigma0)
        radius = C2 if method == "model_clipping" else math.inf
        noisy_phase(model, flat, x, y, steps=T, lr=lr, lam=lam, clip=clip, C1=C1, sigma=sigma,
                    radius=radius, batch_size=min(batch_size, n), generator=gen, noise=noise,
                    loss_fn=loss_fn, grad_buffer_bytes=grad_buffer_bytes, progress=progress)
    finally:
        flat.release()
    if after_noisy_phase is not None:
        after_noisy_phase(model)
    if finetune_epochs > 0:
        train(model, (x, y), epochs=finetune_epochs, lr=finetune_lr, batch_size=batch_size,
              seed=None if seed is None else seed + 1, progress=progress, desc="fine-tune")
    params = dict(steps=T, C0=C0, C1=acct_c1, lr=lr, lam=lam, C2=C2, sigma0=sigma0,
                  batch_size=batch_size, clip=clip, finetune_epochs=finetune_epochs,
                  finetune_lr=finetune_lr if finetune_epochs > 0 else None)
    cert = build_run_certificate(
        method=method, sigma=sigma, eps=eps, delta=delta, parameters=params,
        retain_size=n, forget_size=forget_size, sha_before=sha_before,
        sha_after=weights_sha256(model), seed_user_supplied=noise.seed_is_user_supplied)
    return model, cert
