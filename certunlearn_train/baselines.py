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
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, IterableDataset

from certunlearn_theory.float32 import PROJECTION_SLACK

from . import distributed
from ._flat import GradientSource
from .batches import is_stream
from .certificates import RunCertificate, build_run_certificate, weights_sha256
from .checks import MAX_STEPS, check_int, check_real
from .models import check_buffers_constant
from .train import (
    check_finite_model,
    check_model_fits_data,
    restore_modes,
    save_modes,
    steps_for_epochs,
    train,
)
from .unlearn import (
    PrivateSpec,
    clip_to_ball_,
    frozen,
    prepare_batches,
    public_record,
    working_copy,
)

__all__ = ["retrain", "output_perturbation", "dpsgd_train", "reinitialize_", "poisson_batch"]


def _checked(model: nn.Module) -> str:
    """SHA-256 of the final weights, after checking that every rank holds the same ones."""
    distributed.check_replicas(model, "the final weights")
    return weights_sha256(model)


def poisson_batch(n: int, q: float, generator: torch.Generator) -> torch.Tensor:
    """Indices of a Poisson-sampled batch: each of the n points independently with probability q."""
    return torch.nonzero(torch.rand(n, generator=generator, dtype=torch.float64) < q).flatten()


def reinitialize_(model: nn.Module, seed: Optional[int] = None, private=None) -> nn.Module:
    """Reset parameters with their modules' ``reset_parameters`` (seeded if ``seed`` is given).

    ``private``: names of the parameters to reset (default: all); the others keep their values
    bit for bit (a module holding both kinds is reset, then its public parameters are put back).
    """
    named = dict(model.named_parameters())
    keep = {} if private is None else {
        n: p.detach().clone() for n, p in named.items() if n not in set(private)}
    chosen = {id(p) for n, p in named.items() if n not in keep}
    modules = [(name, m) for name, m in model.named_modules()
               if any(id(p) in chosen for p in m.parameters(recurse=False))]
    missing = [name or type(m).__name__ for name, m in modules
               if not hasattr(m, "reset_parameters")]
    if missing:
        raise ValueError(f"cannot re-initialise: module(s) {', '.join(missing)} have parameters "
                         "but no reset_parameters()")
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        for _, m in modules:
            m.reset_parameters()
    with torch.no_grad():
        for n, v in keep.items():
            named[n].copy_(v)
    return model


def retrain(model: nn.Module, retain_data, *, epochs: float, lr: float,
            batch_size: Optional[int] = None,
            forget_size: Optional[int] = None, loss_fn: Callable = F.cross_entropy,
            private: PrivateSpec = None,
            epoch_callback: Optional[Callable[[int, nn.Module], None]] = None,
            seed: Optional[int] = None, device=None,
            progress: bool = True) -> Tuple[nn.Module, RunCertificate]:
    """Exact unlearning: ``model``'s private parameters re-initialised and trained on the retain
    set only (public ones, see :func:`certunlearn_train.unlearn`, are kept and stay frozen).

    ``retain_data``: anything :func:`certunlearn_train.unlearn` takes; ``batch_size`` defaults
    to 64, or a ``DataLoader``'s own."""
    lr = check_real("lr", lr, low=0.0)
    if batch_size is not None:
        batch_size = check_int("batch_size", batch_size, low=1)
    if forget_size is not None:
        forget_size = check_int("forget_size", forget_size, low=0)
    device, data, priv, pub = prepare_batches(model, retain_data, device=device,
                                              loss_fn=loss_fn, private=private,
                                              batch_size=batch_size)
    batch_size = data.batch_size if data.kind == "loader" else (batch_size or 64)
    steps_for_epochs(epochs, data.pass_length(), 1)
    sha_before = weights_sha256(model)
    fresh = copy.deepcopy(model).to(device)
    reinitialize_(fresh, seed, priv if pub else None)
    distributed.broadcast_parameters(fresh)  # one initialisation for every rank
    x, y = data.first()
    check_model_fits_data(fresh, x, y, loss_fn)
    check_buffers_constant(fresh, x, y)
    named = dict(fresh.named_parameters())
    with frozen([named[n] for n in pub]):
        train(fresh, data, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
              loss_fn=loss_fn, epoch_callback=epoch_callback,
              parameters=[named[n] for n in priv], progress=progress, desc="retrain")
    cert = build_run_certificate(
        method="retrain", sigma=None, eps=0.0, delta=0.0,
        parameters=dict(steps=None, epochs=float(epochs), lr=float(lr),
                        batch_size=int(batch_size), world_size=distributed.world_size()),
        retain_size=data.retain_size(), forget_size=forget_size, sha_before=sha_before,
        sha_after=_checked(fresh), seed_user_supplied=seed is not None,
        public_parameters=public_record(fresh, pub))
    return fresh, cert


def output_perturbation(model: nn.Module, retain_data, *, eps: float, delta: float, C0: float,
                        finetune_epochs: float = 0.0, finetune_lr: Optional[float] = None,
                        batch_size: Optional[int] = None,
                        finetune_batch_size: Optional[int] = None,
                        forget_size: Optional[int] = None, loss_fn: Callable = F.cross_entropy,
                        private: PrivateSpec = None,
                        epoch_callback: Optional[Callable[[int, nn.Module], None]] = None,
                        seed: Optional[int] = None, device=None, inplace: bool = False,
                        progress: bool = True) -> Tuple[nn.Module, RunCertificate]:
    """Clip the private parameters to C0, add N(0, sigma^2 I) to them with sigma = (2 C0 + s) / r*, then
    optional fine-tuning of the private parameters (batches of ``finetune_batch_size``, default
    ``batch_size``).

    r* = sup{r : theta_eps(r) <= delta} is the analytic Gaussian calibration
    (``certunlearn_theory.noise_for(..., method="output_perturbation")``, sigma rounded up), and
    s = 2^-19 C0 covers the float32 rounding of the clip (THEORY.md section 8.1; recorded as
    ``shift_slack``). ``retain_data``: anything :func:`certunlearn_train.unlearn` takes;
    ``batch_size`` defaults to 64, or a ``DataLoader``'s own.
    """
    import certunlearn_theory as ct

    from .ops import gaussian_noise
    C0 = check_real("C0", C0, low=0.0)
    finetune_epochs = check_real("finetune_epochs", finetune_epochs, low=0.0, low_open=False)
    given_batch = batch_size
    batch_size = check_int("batch_size", 64 if batch_size is None else batch_size, low=1)
    if finetune_batch_size is not None:
        finetune_batch_size = check_int("finetune_batch_size", finetune_batch_size, low=1)
    if finetune_epochs > 0 and finetune_lr is None:
        raise ValueError("finetune_epochs > 0 needs finetune_lr")
    if finetune_lr is not None:
        finetune_lr = check_real("finetune_lr", finetune_lr, low=0.0)
    if forget_size is not None:
        forget_size = check_int("forget_size", forget_size, low=0)
    device, data, priv, pub = prepare_batches(model, retain_data, device=device,
                                              loss_fn=loss_fn, private=private,
                                              batch_size=given_batch)
    if data.kind == "loader":
        batch_size = data.batch_size
    if finetune_batch_size is None:
        finetune_batch_size = batch_size
    if finetune_epochs > 0:
        ft = data.rebatched(finetune_batch_size, data.name)
        steps_for_epochs(finetune_epochs, ft.pass_length("finetune_epochs"), 1,
                         "finetune_epochs")
    x, y = data.first()
    slack = PROJECTION_SLACK * C0  # the clip to C0 runs in float32 (THEORY.md section 8.1)
    sigma = float(ct.noise_for(eps, delta, 0, C0, None, None, method="output_perturbation",
                               shift_slack=slack))
    modes = save_modes(model)
    model, flat, sha_before = working_copy(model, inplace, device, priv)
    modes = list(zip(model.modules(), [m for _, m in modes]))
    named = dict(model.named_parameters())
    try:
        if finetune_epochs > 0:  # fine-tuning must be able to run before the noise goes in
            check_model_fits_data(model, x, y, loss_fn)
            check_buffers_constant(model, x, y)
        public = public_record(model, pub)
        if data.kind == "tensors":
            distributed.check_same_data(x, y)
        noise = distributed.noise_stream(seed)  # same key on every rank (rank 0's secret)
        clip_to_ball_(flat.flat, C0)
        s, o = noise.take(flat.numel)
        flat.flat.add_(gaussian_noise(flat.numel, s, o, device=flat.flat.device,
                                      dtype=flat.flat.dtype), alpha=sigma)
    finally:
        flat.release()
        restore_modes(modes)
    if finetune_epochs > 0:
        assert finetune_lr is not None  # finetune_epochs > 0 without finetune_lr was refused above
        with frozen([named[n] for n in pub]):
            train(model, data, epochs=finetune_epochs, lr=finetune_lr,
                  batch_size=finetune_batch_size, seed=None if seed is None else seed + 1,
                  loss_fn=loss_fn, epoch_callback=epoch_callback,
                  parameters=[named[n] for n in priv], progress=progress, desc="fine-tune")
    distributed.check_replicas(model, "the final weights")  # before any per-rank decision
    check_finite_model(model, "output perturbation")
    params = dict(steps=0, C0=C0, C1=None, lr=None, lam=0.0, C2=None, sigma0=0.0,
                  batch_size=int(batch_size), finetune_epochs=float(finetune_epochs),
                  finetune_lr=finetune_lr, world_size=distributed.world_size(),
                  shift_slack=slack)
    if finetune_epochs > 0 and finetune_batch_size != batch_size:
        params["finetune_batch_size"] = finetune_batch_size
    cert = build_run_certificate(
        method="output_perturbation", sigma=sigma, eps=eps, delta=delta, parameters=params,
        retain_size=data.retain_size(), forget_size=forget_size, sha_before=sha_before,
        sha_after=weights_sha256(model), seed_user_supplied=noise.seed_is_user_supplied,
        public_parameters=public)
    return model, cert


def dpsgd_train(model: nn.Module, train_data, *, eps: float, delta: float, group_size: int,
                epochs: float, lr: float, clip: float, expected_batch_size: int = 64,
                loss_fn: Callable = F.cross_entropy, private: PrivateSpec = None,
                epoch_callback: Optional[Callable[[int, nn.Module], None]] = None,
                seed: Optional[int] = None, device=None, inplace: bool = False,
                progress: bool = True,
                grad_buffer_bytes: int = 64 << 20) -> Tuple[nn.Module, RunCertificate]:
    """Train ``model``'s architecture from scratch with DP-SGD, (eps, delta)-private for groups of k.

    The private parameters are first re-initialised (:func:`reinitialize_`, from ``seed``), so
    the result does not depend on the weights given (which may have seen the data); public ones
    are kept and frozen. Each step samples every training point independently with probability
    q = expected_batch_size / n, and applies
    x <- x - (lr / (q n)) (sum_i clip(g_i, C) + N(0, (z C)^2 I)), where the noise multiplier z is
    ``certunlearn_theory.dpsgd_noise_multiplier(eps, delta, q, steps, group_size=k)`` (group
    privacy, THEORY.md section 7), with steps = ceil(epochs / q). Removing any k training points
    afterwards is then (eps, delta)-unlearning with no further work. ``epoch_callback(i, model)``
    runs after every ``round(1 / q)`` steps (one pass in expectation).

    Returns:
        ``(model, certificate)`` with ``method="dpsgd"``.
    """
    from tqdm.auto import tqdm

    import certunlearn_theory as ct

    from .ops import noisy_step_
    clip = check_real("clip", clip, low=0.0)
    lr = check_real("lr", lr, low=0.0)
    group_size = check_int("group_size", group_size, low=1)
    expected_batch_size = check_int("expected_batch_size", expected_batch_size, low=1)
    epochs = check_real("epochs", epochs, low=0.0)
    if is_stream(train_data) and not isinstance(train_data, Dataset) \
            or isinstance(train_data, IterableDataset):
        raise ValueError(
            "train_data for dpsgd_train must be tensors or a map-style Dataset, got "
            f"{type(train_data).__name__}: the DP-SGD accountant assumes Poisson sampling (each "
            "point in each batch independently with probability q), which the run draws itself "
            "by index; a DataLoader's or an IterableDataset's batches cannot provide it")
    device, data, priv, pub = prepare_batches(model, train_data, device=device, loss_fn=loss_fn,
                                              private=private, batch_size=None,
                                              name="train_data")
    x, y = data.first()
    assert data.n is not None
    n = data.n
    if expected_batch_size > n:
        raise ValueError(f"expected_batch_size must be <= the {n} training points, got "
                         f"{expected_batch_size}")
    q = expected_batch_size / n
    if epochs / q > MAX_STEPS:
        raise ValueError(f"epochs must give at most {MAX_STEPS:.0e} steps, got {epochs!r} "
                         f"epochs at sampling rate {q:.3g}")
    steps = max(1, math.ceil(epochs / q))
    z = float(ct.dpsgd_noise_multiplier(eps, delta, q, steps, group_size=group_size))
    modes = save_modes(model)
    sha_before = weights_sha256(model)
    if not inplace:
        model = copy.deepcopy(model)
    modes = list(zip(model.modules(), [m for _, m in modes]))
    model.to(device)
    fresh = reinitialize_(copy.deepcopy(model), seed, priv if pub else None)
    label_bound = check_model_fits_data(fresh, x, y, loss_fn)
    check_buffers_constant(fresh, x, y)
    model.load_state_dict(fresh.state_dict())
    distributed.broadcast_parameters(model)  # one initialisation for every rank
    model, flat, _ = working_copy(model, True, None, priv)
    public = public_record(model, pub)
    if data.kind == "tensors":
        distributed.check_same_data(x, y)
    data.label_bound = label_bound
    noise = distributed.noise_stream(seed)  # same key on every rank (rank 0's secret)
    gen = torch.Generator()
    gen.manual_seed(seed if seed is not None else distributed.from_rank0(secrets.randbits(63)))
    source = distributed.gradient_source(GradientSource(
        model, flat, "per_sample", clip, loss_fn, int(expected_batch_size * 1.5) + 8,
        grad_buffer_bytes), flat)
    zero_row = torch.zeros(1, flat.numel, dtype=flat.flat.dtype, device=flat.flat.device)
    denom = q * n
    per_pass = max(1, round(1 / q))
    cuda = [flat.flat.device] if flat.flat.device.type == "cuda" else []
    dp = distributed.active()
    try:
        model.train()
        for t in tqdm(range(steps), desc="DP-SGD", disable=not progress, leave=False,
                      unit="step"):
            idx = poisson_batch(n, q, gen)
            s, o = noise.take(flat.numel)
            b = len(idx)
            if not b:
                grads = zero_row
            elif dp:  # each rank reads only its slice of the global batch
                lo, hi = distributed.local_range(b)
                bx, by = data.batch_at(idx[lo:hi], t) if hi > lo else (None, None)
                grads = source(bx, by, b)
            else:
                grads = source(*data.batch_at(idx, t))
            # the op averages over the batch (B rows, or one row holding the mean): lr B/(q n)
            # times that average is lr/(q n) times the clipped sum, as DP-SGD prescribes
            lr_eff = lr * b / denom
            noisy_step_(flat.flat, grads, lr=lr_eff, clip=clip, noise_std=lr * z * clip / denom,
                        seed=s, offset=o, norms=source.norms if b else None)
            if epoch_callback is not None and (t + 1) % per_pass == 0:
                restore_modes(modes)
                with torch.random.fork_rng(devices=cuda):
                    epoch_callback((t + 1) // per_pass - 1, model)
                model.train()
        if not bool(torch.isfinite(flat.flat).all()):
            raise ValueError("DP-SGD produced non-finite weights; lower lr")
    finally:
        flat.release()
        restore_modes(modes)
    cert = build_run_certificate(
        method="dpsgd", sigma=z, eps=eps, delta=delta,
        parameters=dict(steps=steps, noise_multiplier=z, sampling_rate=q, group_size=group_size,
                        clip=clip, lr=lr, expected_batch_size=expected_batch_size,
                        train_size=n, world_size=distributed.world_size()),
        retain_size=n - group_size, forget_size=group_size, sha_before=sha_before,
        sha_after=_checked(model), seed_user_supplied=noise.seed_is_user_supplied,
        public_parameters=public)
    return model, cert
