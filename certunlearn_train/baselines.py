"""Baselines with the same interface as :func:`certunlearn_train.unlearn` and honest certificates.

* :func:`retrain`: re-initialise and train from scratch on the retain set (exact unlearning,
  certificate (0, 0)).
* :func:`output_perturbation`: clip the model to C0 and add Gaussian noise calibrated to the
  sensitivity 2 C0 with the analytic Gaussian mechanism (Balle & Wang 2018, Thm 8), then optional
  noise-free fine-tuning (post-processing).
* :func:`dpsgd_train`: train from scratch with DP-SGD on the full training set (Abadi et al.
  2016) so that removing any group of ``group_size`` points is covered by group privacy; the
  "unlearning" is then the identity. Batches are Poisson-sampled (each point independently with
  probability q), which is what the RDP accountant for the subsampled Gaussian describes; steps
  run through the same fused op as unlearning.
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
from .train import as_tensors, check_model_fits_data, train
from .unlearn import _param, check_finite_weights, clip_to_ball_, working_copy
from ._flat import GradientSource

__all__ = ["retrain", "output_perturbation", "dpsgd_train", "reinitialize_", "poisson_batch"]


def poisson_batch(n: int, q: float, generator: torch.Generator) -> torch.Tensor:
    """Indices of a Poisson-sampled batch: each of the n points independently with probability q."""
    return torch.nonzero(torch.rand(n, generator=generator, dtype=torch.float64) < q).flatten()


def reinitialize_(model: nn.Module, seed: Optional[int] = None) -> nn.Module:
    """Reset every parameter with its module's ``reset_parameters`` (seeded if ``seed`` is given)."""
    missing = [name or type(m).__name__ for name, m in model.named_modules()
               if any(True for _ in m.parameters(recurse=False))
               and not hasattr(m, "reset_parameters")]
    if missing:
        raise ValueError(f"cannot re-initialise: module(s) {', '.join(missing)} have parameters "
                         "but no reset_parameters()")
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        for m in model.modules():
            if any(True for _ in m.parameters(recurse=False)):
                m.reset_parameters()
    return model


def retrain(model: nn.Module, retain_data, *, epochs: float, lr: float, batch_size: int = 64,
            forget_size: Optional[int] = None, seed: Optional[int] = None, device=None,
            progress: bool = True) -> Tuple[nn.Module, RunCertificate]:
    """Exact unlearning: a fresh copy of ``model``'s architecture trained on the retain set only."""
    x, y = as_tensors(retain_data)
    if len(y) == 0:
        raise ValueError("retain_data is empty: nothing to retrain on")
    sha_before = weights_sha256(model)
    fresh = reinitialize_(copy.deepcopy(model), seed)
    if device is not None:
        fresh.to(device)
    train(fresh, (x, y), epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
          progress=progress, desc="retrain")
    cert = build_run_certificate(
        method="retrain", sigma=None, eps=0.0, delta=0.0,
        parameters=dict(steps=None, epochs=float(epochs), lr=float(lr),
                        batch_size=int(batch_size)),
        retain_size=len(y), forget_size=forget_size, sha_before=sha_before,
        sha_after=weights_sha256(fresh), seed_user_supplied=seed is not None)
    return fresh, cert


def output_perturbation(model: nn.Module, retain_data, *, eps: float, delta: float, C0: float,
                        finetune_epochs: float = 0.0, finetune_lr: Optional[float] = None,
                        batch_size: int = 64, forget_size: Optional[int] = None,
                        seed: Optional[int] = None, device=None, inplace: bool = False,
                        progress: bool = True) -> Tuple[nn.Module, RunCertificate]:
    """Clip to C0, add N(0, sigma^2 I) with sigma = 2 C0 / r*, then optional fine-tuning.

    r* = sup{r : theta_eps(r) <= delta} is the analytic Gaussian calibration
    (``certunlearn_theory.noise_for(..., method="output_perturbation")``, sigma rounded up).
    """
    import certunlearn_theory as ct
    from .ops import NoiseStream, gaussian_noise
    C0 = _param("C0", C0, low=0.0)
    check_unlearnable(model)
    x, y = as_tensors(retain_data, device)
    if len(y) == 0:
        raise ValueError("retain_data is empty")
    if finetune_epochs > 0 and finetune_lr is None:
        raise ValueError("finetune_epochs > 0 needs finetune_lr")
    check_finite_weights(model)
    sigma = float(ct.noise_for(eps, delta, 0, C0, None, None, method="output_perturbation"))
    model, flat, sha_before = working_copy(model, inplace, device)
    try:
        if finetune_epochs > 0:  # fine-tuning must be able to run before the noise goes in
            check_model_fits_data(model, x, y)
        noise = NoiseStream(seed)
        clip_to_ball_(flat.flat, C0)
        s, o = noise.take(flat.numel)
        flat.flat.add_(gaussian_noise(flat.numel, s, o, device=flat.flat.device), alpha=sigma)
    finally:
        flat.release()
    if finetune_epochs > 0:
        train(model, (x, y), epochs=finetune_epochs, lr=finetune_lr, batch_size=batch_size,
              seed=None if seed is None else seed + 1, progress=progress, desc="fine-tune")
    cert = build_run_certificate(
        method="output_perturbation", sigma=sigma, eps=eps, delta=delta,
        parameters=dict(steps=0, C0=C0, C1=None, lr=None, lam=0.0, C2=None, sigma0=0.0,
                        batch_size=int(batch_size), finetune_epochs=float(finetune_epochs),
                        finetune_lr=finetune_lr),
        retain_size=len(y), forget_size=forget_size, sha_before=sha_before,
        sha_after=weights_sha256(model), seed_user_supplied=noise.seed_is_user_supplied)
    return model, cert


def dpsgd_train(model: nn.Module, train_data, *, eps: float, delta: float, group_size: int,
                epochs: float, lr: float, clip: float, expected_batch_size: int = 64,
                loss_fn: Callable = F.cross_entropy, seed: Optional[int] = None, device=None,
                inplace: bool = False, progress: bool = True,
                grad_buffer_bytes: int = 64 << 20) -> Tuple[nn.Module, RunCertificate]:
    """Train ``model`` from its current weights with DP-SGD, (eps, delta)-private for groups of k.

    Each step samples every training point independently with probability
    q = expected_batch_size / n, and applies
    x <- x - (lr / (q n)) (sum_i clip(g_i, C) + N(0, (z C)^2 I)), where the noise multiplier z is
    ``certunlearn_theory.dpsgd_noise_multiplier(eps, delta, q, steps, group_size=k)`` (group
    privacy, THEORY.md section 7). Removing any k training points afterwards is then
    (eps, delta)-unlearning with no further work.

    Returns:
        ``(model, certificate)`` with ``method="dpsgd"``.
    """
    import certunlearn_theory as ct
    from tqdm.auto import tqdm
    from .ops import NoiseStream, noisy_step_
    clip = _param("clip", clip, low=0.0)
    lr = _param("lr", lr, low=0.0)
    group_size = _param("group_size", group_size, low=1, low_open=False, integer=True)
    expected_batch_size = _param("expected_batch_size", expected_batch_size, low=1,
                                 low_open=False, integer=True)
    check_unlearnable(model)
    x, y = as_tensors(train_data, device)
    n = len(y)
    if n == 0:
        raise ValueError("train_data is empty")
    if expected_batch_size > n:
        raise ValueError(f"expected_batch_size must be <= the {n} training points, got "
                         f"{expected_batch_size}")
    q = expected_batch_size / n
    steps = max(1, math.ceil(_param("epochs", epochs, low=0.0) / q))
    z = float(ct.dpsgd_noise_multiplier(eps, delta, q, steps, group_size=group_size))
    model, flat, sha_before = working_copy(model, inplace, device)
    noise = NoiseStream(seed)
    gen = torch.Generator()
    gen.manual_seed(seed if seed is not None else secrets.randbits(63))
    source = GradientSource(model, flat, "per_sample", clip, loss_fn,
                            int(expected_batch_size * 1.5) + 8, grad_buffer_bytes)
    zero_row = torch.zeros(1, flat.numel, dtype=flat.flat.dtype, device=flat.flat.device)
    denom = q * n
    try:
        check_model_fits_data(model, x, y, loss_fn)
        model.train()
        for _ in tqdm(range(steps), desc="DP-SGD", disable=not progress, leave=False,
                      unit="step"):
            idx = poisson_batch(n, q, gen).to(x.device)
            s, o = noise.take(flat.numel)
            b = len(idx)
            grads = source(x[idx], y[idx]) if b else zero_row
            # the op averages over the batch (B rows, or one row holding the mean): lr B/(q n)
            # times that average is lr/(q n) times the clipped sum, as DP-SGD prescribes
            lr_eff = lr * b / denom
            noisy_step_(flat.flat, grads, lr=lr_eff, clip=clip, noise_std=lr * z * clip / denom,
                        seed=s, offset=o, norms=source.norms if b else None)
    finally:
        flat.release()
    cert = build_run_certificate(
        method="dpsgd", sigma=z, eps=eps, delta=delta,
        parameters=dict(steps=steps, noise_multiplier=z, sampling_rate=q, group_size=group_size,
                        clip=clip, lr=lr, expected_batch_size=expected_batch_size,
                        train_size=n),
        retain_size=n - group_size, forget_size=group_size, sha_before=sha_before,
        sha_after=weights_sha256(model), seed_user_supplied=noise.seed_is_user_supplied)
    return model, cert
