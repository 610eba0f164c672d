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
   sigma comes from :func:`certunlearn_theory.noise_for` (rounded up) with a shift slack that
   covers float32 rounding (THEORY.md section 8.1;
   :func:`certunlearn_theory.calibrate_with_float32_slack`);
3. optional noise-free fine-tuning on the retain set (post-processing: the guarantee holds).

:func:`unlearn` reads as that algorithm: a short body that calls one function per stage, each
usable on its own: :func:`check_settings` (every scalar argument, before any work),
:func:`prepare_run` (model, data, device, private selection), :func:`plan_steps` (T),
:func:`calibrate_noise` (sigma), :func:`clip_to_c0`, :func:`noisy_phase`, :func:`fine_tune` and
:func:`certify`. The caller's model keeps its starting weights until the run succeeds
(:func:`restored_on_failure`), also with ``inplace=True``.

Only the final model may be released; the certificate (:class:`RunCertificate`) says which
guarantee the run has and lets anyone recompute it.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import secrets
import warnings
from typing import Callable, Iterable, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from certunlearn_theory.float32 import PROJECTION_SLACK, calibrate_with_float32_slack

from . import distributed
from ._flat import FlatParameters, GradientSource
from .batches import Batches, TensorBatches, as_batches, is_stream
from .buffers import BufferRun, BufferSpec, buffers_record, check_public_unchanged, plan_buffers
from .certificates import (
    RunCertificate,
    build_run_certificate,
    weights_sha256,
)
from .checks import MAX_STEPS, check_choice, check_device, check_int, check_real
from .models import check_buffers_constant, check_unlearnable
from .private import PUBLIC_ASSUMPTION, PrivateSpec, frozen, public_record, requires_grad_set, select_private
from .train import (
    check_data_device,
    check_finite_model,
    check_model_fits_data,
    restore_modes,
    save_modes,
    steps_for_epochs,
    train,
)

__all__ = ["unlearn", "noisy_phase", "clip_to_ball_", "METHODS", "CLIP_MODES",
           "batch_generator_seed", "select_private", "public_record", "PUBLIC_ASSUMPTION",
           "prepare_run", "Settings", "check_settings", "plan_steps", "NoiseCalibration",
           "calibrate_noise", "clip_to_c0", "fine_tune", "certify", "restored_on_failure",
           "prepare_batches"]

METHODS = ("gradient_clipping", "model_clipping")
CLIP_MODES = ("per_sample", "batch")
_BATCH_SEED_TAG = 0x5EED_BA7C
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


def prepare_run(model: nn.Module, data, *, device, loss_fn: Callable, private: PrivateSpec,
                name: str = "retain_data", allow_buffers: bool = False):
    """Everything a run checks before it touches a weight, in one place.

    Refuses (ValueError) an unsupported model, a device that does not exist, data on another
    device than the model (when ``device`` is None), complex or non-finite data, non-integer
    class labels, non-finite weights and a private selection that selects nothing. Returns
    ``(device, x, y, private_names, public_names)`` with the data on ``device``.
    ``allow_buffers``: leave norm modules and buffers to the caller (:func:`plan_buffers`).
    """
    if is_stream(data):
        raise ValueError(f"{name} must be in memory here (a pair (x, y), a TensorDataset or an "
                         f"ArrayDataset), got {type(data).__name__}; unlearn() and the baselines "
                         "read datasets and loaders batch by batch (prepare_batches)")
    check_unlearnable(model, buffers=not allow_buffers)
    dev = check_device(device)
    src_device = next(model.parameters()).device
    if dev is None:
        check_data_device(data, src_device)
        dev = src_device
    dtype = next(model.parameters()).dtype
    from .train import as_tensors
    x, y = as_tensors(data, dev, dtype, loss_fn, name)
    if len(y) == 0:
        raise ValueError(f"{name} is empty: the run needs samples")
    check_finite_weights(model)
    priv, pub = select_private(model, private)
    return dev, x, y, priv, pub


def prepare_batches(model: nn.Module, data, *, device, loss_fn: Callable, private: PrivateSpec,
                    batch_size: Optional[int], name: str = "retain_data",
                    allow_buffers: bool = False):
    """:func:`prepare_run` for data of any kind (:func:`certunlearn_train.batches.as_batches`):
    returns ``(device, batches, private_names, public_names)``.

    Tensors are checked whole, as by :func:`prepare_run`; a dataset or a loader has its first
    batch read and checked here (every later batch is checked as it arrives). Batches of a
    stream move to ``device`` (default: the model's) as they are used.
    """
    if not is_stream(data):
        dev, x, y, priv, pub = prepare_run(model, data, device=device, loss_fn=loss_fn,
                                           private=private, name=name,
                                           allow_buffers=allow_buffers)
        return dev, as_batches((x, y), batch_size=batch_size, loss_fn=loss_fn, name=name), \
            priv, pub
    check_unlearnable(model, buffers=not allow_buffers)
    dev = check_device(device)
    first = next(model.parameters())
    dev = first.device if dev is None else dev
    batches = as_batches(data, batch_size=batch_size, device=dev, dtype=first.dtype,
                         loss_fn=loss_fn, name=name)
    batches.first()
    check_finite_weights(model)
    priv, pub = select_private(model, private)
    return dev, batches, priv, pub


def working_copy(model: nn.Module, inplace: bool, device, private: Optional[List[str]] = None,
                 ) -> Tuple[nn.Module, FlatParameters, str]:
    """The model a run writes to, its flat (private) parameter buffer and the SHA-256 of the
    weights given.

    The model is a deep copy unless ``inplace``, moved to ``device`` when one is given; the
    parameters named in ``private`` (default: all) become views into the returned
    :class:`FlatParameters`, the others get ``requires_grad=False`` until ``release()``.
    """
    sha_before = weights_sha256(model)
    if not inplace:
        model = copy.deepcopy(model)
    if device is not None:
        model.to(device)
    params = None
    if private is not None:
        named = dict(model.named_parameters())
        params = [named[n] for n in private]
    return model, FlatParameters(model, params=params), sha_before


def noisy_phase(model: nn.Module, flat: FlatParameters, x: Union[torch.Tensor, Batches],
                y: Optional[torch.Tensor], *,
                steps: int, lr: float, lam: float, clip: str, C1: float, sigma: float,
                radius: float, batch_size: int, generator: torch.Generator, noise,
                loss_fn: Callable = F.cross_entropy, grad_buffer_bytes: int = 64 << 20,
                ghost_norms: bool = True, progress: bool = True) -> None:
    """Run the T noisy steps in place on ``flat`` (see the module docstring for the update).

    Args:
        noise: a :class:`certunlearn_train.ops.NoiseStream`; each step takes ``d`` values.
        x, y: the retain set as tensors, or ``x`` a :class:`~certunlearn_train.batches.Batches`
            (then ``y`` is None and ``batch_size`` is unused): its batches are the steps'.
        generator: draws the batches of tensors and map-style datasets (a fresh permutation of
            the retain set each epoch); a loader or an iterable keeps its own order.
        grad_buffer_bytes: per-sample gradients go to a reused (B, d) buffer that the fused op
            clips row by row when it fits in this many bytes; otherwise they are clipped and
            averaged chunk by chunk into one row.

    Raises:
        ValueError: the weights end non-finite (the run diverged; no certificate may be issued).
    """
    from tqdm.auto import tqdm

    from .ops import noisy_step_

    d = flat.numel
    if isinstance(x, Batches):
        data: Batches = x
    else:
        assert y is not None
        data = TensorBatches(x, y, batch_size, loss_fn=loss_fn)
    batches = data.stream(generator)
    local = GradientSource(model, flat, clip, C1, loss_fn, data.batch_size, grad_buffer_bytes,
                           ghost_norms)
    source = distributed.gradient_source(local, flat)  # data parallel inside a process group
    model.train()
    source.probe(*data.first())
    dp = source is not local
    for t in tqdm(range(steps), desc="noisy steps", disable=not progress, leave=False,
                  unit="step"):
        bx, by, b = next(batches)
        if dp:
            grads = source(bx, by, b)
        else:
            assert bx is not None and by is not None
            grads = source(bx, by)
        seed, offset = noise.take(d)
        try:
            noisy_step_(flat.flat, grads, lr=lr, weight_decay=lam, clip=C1, noise_std=sigma,
                        radius=radius, noise_after_projection=True, seed=seed, offset=offset,
                        norms=source.norms)
        except ValueError as exc:
            if "non-finite" not in str(exc):
                raise
            reason = str(exc).split(": ", 1)[-1].split(";")[0]
            raise ValueError(f"the noisy phase diverged at step {t} ({reason}): the loss or the "
                             "weights overflowed; lower C0 or lr") from None
    if not bool(torch.isfinite(flat.flat).all()):
        raise ValueError("the noisy phase produced non-finite weights; lower C0 or lr")


def noisy_steps(method: str, lam: float, C0: float, C1: float, lr: float, n: int,
                batch_size: int, steps, epochs) -> int:
    """The number T of noisy steps from ``steps``/``epochs`` or the default (see :func:`unlearn`)."""
    if steps is not None and epochs is not None:
        raise ValueError(f"give steps or epochs, not both (got steps={steps!r}, epochs={epochs!r})")
    if steps is not None:
        return check_int("steps", steps, low=1, high=MAX_STEPS)
    if epochs is not None:
        check_real("epochs", epochs, low=0.0)
        return max(1, steps_for_epochs(epochs, n, min(batch_size, n)))
    if method == "gradient_clipping" and lam == 0.0:
        T = C0 / (lr * C1)
        if not T <= MAX_STEPS:
            raise ValueError(f"the default number of steps C0 / (lr C1) = {T:.3g} exceeds "
                             f"{MAX_STEPS:.0e}; give steps= or larger lr, C1")
        return max(1, math.ceil(T))
    raise ValueError(f"{method} with lam={lam} needs steps or epochs")


@dataclasses.dataclass(frozen=True)
class Settings:
    """The checked scalar settings of a run (what :func:`check_settings` returns)."""

    eps: float
    delta: float
    method: str
    clip: str
    C0: float
    C1: float
    lr: float
    lam: float
    C2: Optional[float]
    sigma0: float
    batch_size: int
    steps: Optional[int]
    epochs: Optional[float]
    finetune_epochs: float
    finetune_lr: float
    finetune_batch_size: int
    forget_size: Optional[int]
    grad_buffer_bytes: int

    @property
    def radius(self) -> float:
        """The projection radius of every noisy step (C2 for model clipping, else none)."""
        return self.C2 if self.method == "model_clipping" and self.C2 is not None else math.inf


def check_settings(*, eps, delta, method="gradient_clipping", steps=None, epochs=None, C0,
                   C1=math.inf, lr, lam=0.0, C2=None, sigma0=0.0, batch_size=64, clip="batch",
                   finetune_epochs=0.0, finetune_lr=None, finetune_batch_size=None,
                   forget_size=None, grad_buffer_bytes=64 << 20) -> Settings:
    """Stage 0: every scalar argument of :func:`unlearn` checked, before any data or weight.

    Raises one ``ValueError`` that names the argument, the allowed range and the value. What
    needs the data (the number of steps that ``epochs`` gives) is checked by :func:`noisy_steps`.
    """
    eps = check_real("eps", eps, low=0.0)
    delta = check_real("delta", delta, low=0.0, high=1.0, high_open=True)
    check_choice("method", method, METHODS)
    check_choice("clip", clip, CLIP_MODES)
    C0 = check_real("C0", C0, low=0.0)
    lr = check_real("lr", lr, low=0.0)
    lam = check_real("lam", lam, low=0.0, low_open=False)
    C1 = check_real("C1", C1, low=0.0, allow_inf=method == "model_clipping")
    if method == "model_clipping":
        if C2 is None:
            raise ValueError("model_clipping needs the model clipping radius C2, got None")
        C2 = check_real("C2", C2, low=0.0)
        sigma0 = check_real("sigma0", sigma0, low=0.0, low_open=False)
    elif C2 is not None or sigma0:
        raise ValueError("C2 and sigma0 belong to model_clipping; gradient_clipping got "
                         f"C2={C2!r}, sigma0={sigma0!r}")
    if steps is not None and epochs is not None:
        raise ValueError(f"give steps or epochs, not both (got steps={steps!r}, epochs={epochs!r})")
    if steps is not None:
        steps = check_int("steps", steps, low=1, high=MAX_STEPS)
    if epochs is not None:
        epochs = check_real("epochs", epochs, low=0.0)
    batch_size = check_int("batch_size", batch_size, low=1)
    finetune_batch_size = batch_size if finetune_batch_size is None else check_int(
        "finetune_batch_size", finetune_batch_size, low=1)
    finetune_epochs = check_real("finetune_epochs", finetune_epochs, low=0.0, low_open=False)
    finetune_lr = lr if finetune_lr is None else check_real("finetune_lr", finetune_lr, low=0.0)
    grad_buffer_bytes = check_int("grad_buffer_bytes", grad_buffer_bytes, low=0)
    if forget_size is not None:
        forget_size = check_int("forget_size", forget_size, low=0)
    return Settings(eps=eps, delta=delta, method=method, clip=clip, C0=C0, C1=C1, lr=lr,
                    lam=lam, C2=C2, sigma0=float(sigma0), batch_size=batch_size, steps=steps,
                    epochs=epochs, finetune_epochs=finetune_epochs, finetune_lr=finetune_lr,
                    finetune_batch_size=finetune_batch_size, forget_size=forget_size,
                    grad_buffer_bytes=grad_buffer_bytes)


def plan_steps(s: Settings, n: Optional[int], batches: Optional[Batches] = None) -> int:
    """Stage 1 (needs the retain-set size ``n``): the number T of noisy steps.

    With ``batches`` read from a dataset or a loader, ``epochs`` counts its passes (a
    ``DataLoader``'s ``len``); an iterable without ``len`` needs ``steps``. Also refuses
    fine-tuning of more than ``MAX_STEPS`` steps and warns when T is past the point where the
    bound stops improving (gradient clipping without weight decay).
    """
    if batches is not None and batches.kind != "tensors":
        per_pass = batches.pass_length() if s.epochs is not None else 1
        T = noisy_steps(s.method, s.lam, s.C0, s.C1, s.lr, per_pass, 1, s.steps, s.epochs)
        if s.finetune_epochs > 0:
            ft = batches.rebatched(s.finetune_batch_size, batches.name)
            steps_for_epochs(s.finetune_epochs, ft.pass_length("finetune_epochs"), 1,
                             "finetune_epochs")
    else:
        assert n is not None
        T = noisy_steps(s.method, s.lam, s.C0, s.C1, s.lr, n, s.batch_size, s.steps, s.epochs)
        if s.finetune_epochs > 0:
            steps_for_epochs(s.finetune_epochs, n, s.finetune_batch_size, "finetune_epochs")
    flat_from = s.C0 / (s.lr * s.C1) if s.method == "gradient_clipping" and s.lam == 0.0 \
        else math.inf
    if T > max(1.0, flat_from * (1 + 1e-9)):
        warnings.warn(f"steps={T} is more than C0 / (lr C1) = {s.C0 / (s.lr * s.C1):.4g}: for "
                      "gradient clipping without weight decay the bound does not improve beyond "
                      "that point, so the extra noisy steps cannot lower the noise", UserWarning,
                      stacklevel=3)
    return T


@dataclasses.dataclass(frozen=True)
class NoiseCalibration:
    """What :func:`calibrate_noise` returns: the noise of every step and what it covers."""

    sigma: float
    shift_slack: float
    tail_delta: Optional[float]  # gradient clipping: the float32 iterate-norm tail, else None


def calibrate_noise(s: Settings, *, T: int, d: int) -> NoiseCalibration:
    """Stage 2: the noise sigma for (eps, delta) after T steps in d private dimensions.

    Runs before any weight is touched, so eps, delta or a target the accountant cannot reach
    fail before any work.
    """
    import certunlearn_theory as ct
    if s.method == "gradient_clipping":
        sigma, slack, tail = calibrate_with_float32_slack(
            s.eps, s.delta, T=T, d=d, C0=s.C0, C1=s.C1, gamma=s.lr, lam=s.lam,
            batch_size=s.batch_size)
        return NoiseCalibration(sigma, slack, tail)
    assert s.C2 is not None  # model_clipping without C2 was refused by check_settings
    slack = PROJECTION_SLACK * s.C2
    sigma = float(ct.noise_for(s.eps, s.delta, T, s.C0, s.C1 if math.isfinite(s.C1) else None,
                               s.lr, s.lam, method=s.method, C2=s.C2, sigma0=s.sigma0,
                               shift_slack=slack))
    return NoiseCalibration(sigma, slack, None)


def clip_to_c0(flat: FlatParameters, s: Settings, noise, device=None) -> float:
    """Stage 3: clip the private parameters onto the ball of radius C0 (model clipping: then
    add N(0, sigma0^2 I)); return the norm they had."""
    from .ops import gaussian_noise
    norm = clip_to_ball_(flat.flat, s.C0)
    if s.method == "model_clipping" and s.sigma0 > 0:
        seed, offset = noise.take(flat.numel)
        flat.flat.add_(gaussian_noise(flat.numel, seed, offset, device=flat.flat.device,
                                      dtype=flat.flat.dtype), alpha=s.sigma0)
    return norm


def fine_tune(model: nn.Module, x: Union[torch.Tensor, Batches], y: Optional[torch.Tensor],
              s: Settings, *,
              private: List[str], public: List[str], seed: Optional[int] = None,
              loss_fn: Callable = F.cross_entropy, progress: bool = True,
              epoch_callback: Optional[Callable[[int, nn.Module], None]] = None) -> None:
    """Stage 5: noise-free fine-tuning of the private parameters (post-processing).

    The private parameters are trained whatever their ``requires_grad`` flag (``private=``
    decides), the public ones are frozen; the flags are restored afterwards. ``x`` may be a
    :class:`~certunlearn_train.batches.Batches` (then ``y`` is None).
    """
    if s.finetune_epochs <= 0:
        return
    named = dict(model.named_parameters())
    priv = [named[n] for n in private]
    with frozen([named[n] for n in public]), trainable(priv):
        train(model, x if isinstance(x, Batches) else (x, y), epochs=s.finetune_epochs,
              lr=s.finetune_lr,
              batch_size=s.finetune_batch_size, seed=None if seed is None else seed + 1,
              loss_fn=loss_fn, epoch_callback=epoch_callback, parameters=priv,
              progress=progress, desc="fine-tune")


def certify(model: nn.Module, s: Settings, cal: NoiseCalibration, *, T: int, d: int, n: int,
            sha_before: str, public_names: List[str], public: Optional[dict],
            seed_user_supplied: bool, buffers: Optional[dict] = None) -> RunCertificate:
    """Stage 6: check the final weights (same on every rank, finite, public part unchanged) and
    issue the certificate."""
    distributed.check_replicas(model, "the unlearned weights")  # before any per-rank decision
    check_finite_model(model, "unlearning")
    if public is not None:
        after = public_record(model, public_names)
        assert after is not None  # the same non-empty list of public names
        if after["sha256"] != public["sha256"]:
            raise RuntimeError("public parameters changed during the run")  # internal invariant
    params = dict(steps=T, C0=s.C0, C1=s.C1 if math.isfinite(s.C1) else None, lr=s.lr,
                  lam=s.lam, C2=s.C2, sigma0=s.sigma0, batch_size=s.batch_size, clip=s.clip,
                  finetune_epochs=s.finetune_epochs,
                  finetune_lr=s.finetune_lr if s.finetune_epochs > 0 else None,
                  world_size=distributed.world_size(), shift_slack=cal.shift_slack)
    if cal.tail_delta is not None:
        params.update(float32_tail_delta=cal.tail_delta, d=d)
    if s.finetune_epochs > 0 and s.finetune_batch_size != s.batch_size:
        params["finetune_batch_size"] = s.finetune_batch_size
    return build_run_certificate(
        method=s.method, sigma=cal.sigma, eps=s.eps, delta=s.delta, parameters=params,
        retain_size=n, forget_size=s.forget_size, sha_before=sha_before,
        sha_after=weights_sha256(model), seed_user_supplied=seed_user_supplied,
        public_parameters=public, buffers=buffers)


def trainable(params: Iterable[nn.Parameter]):
    """``requires_grad=True`` on ``params`` for the block (private ones are fine-tuned whatever
    their flag); the flags are restored afterwards."""
    return requires_grad_set(params, True)


@contextlib.contextmanager
def restored_on_failure(model: nn.Module):
    """Keep ``model``'s starting weights until the block succeeds.

    On any exception (KeyboardInterrupt included) every parameter gets back the tensor it held
    (same values, device and storage), its gradient and ``requires_grad`` flag, every buffer its
    tensor, every module its train/eval flag. A run only ever rebinds parameters to new storage
    (the flat buffer, a device move), so this costs no copy.
    """
    params = [(p, p.data, p.grad, p.requires_grad)
              for _, p in model.named_parameters(remove_duplicate=False)]
    buffers = [(m, name, b) for m in model.modules() for name, b in m._buffers.items()]
    modes = save_modes(model)
    try:
        yield
    except BaseException:
        for p, data, grad, rg in params:
            p.data = data
            p.grad = grad
            p.requires_grad_(rg)
        for m, name, b in buffers:
            m._buffers[name] = b
        restore_modes(modes)
        raise


def unlearn(model: nn.Module, retain_data, *, eps: float, delta: float,
            method: str = "gradient_clipping", steps: Optional[int] = None,
            epochs: Optional[float] = None, C0: float, C1: float = math.inf, lr: float,
            lam: float = 0.0, C2: Optional[float] = None, sigma0: float = 0.0,
            batch_size: Optional[int] = None, clip: str = "batch", finetune_epochs: float = 0.0,
            finetune_lr: Optional[float] = None, finetune_batch_size: Optional[int] = None,
            forget_size: Optional[int] = None, loss_fn: Callable = F.cross_entropy,
            private: PrivateSpec = None, seed: Optional[int] = None, device=None,
            inplace: bool = False, progress: bool = True,
            grad_buffer_bytes: int = 64 << 20,
            after_noisy_phase: Optional[Callable[[nn.Module], None]] = None,
            epoch_callback: Optional[Callable[[int, nn.Module], None]] = None,
            public_buffers: BufferSpec = None,
            ) -> Tuple[nn.Module, RunCertificate]:
    """Unlearn the forget set from ``model`` by noisy fine-tuning on ``retain_data``.

    Args:
        model: the trained model (float32 parameters; see :func:`check_unlearnable`).
        retain_data: the retain set D \\ D_f as ``(x, y)``, a ``TensorDataset``, an
            ``ArrayDataset``, a map-style ``Dataset`` of ``(x, y)`` samples, an
            ``IterableDataset`` or a ``DataLoader`` (whose batches are the steps'; see
            :mod:`certunlearn_train.batches`). Floating inputs/targets are cast to the
            parameters' dtype; integer inputs (token ids) and targets (class labels) stay
            integer; shapes are kept. A dataset or loader is read batch by batch, each batch
            checked as it arrives; a bad one stops the run (no certificate, model untouched).
        eps, delta: the target (eps, delta)-unlearning guarantee (eps > 0, 0 < delta < 1).
        method: ``"gradient_clipping"`` (needs a finite ``C1``) or ``"model_clipping"`` (needs
            ``C2``; ``C1`` optional, ``sigma0`` optional initial noise).
        steps, epochs: the number T of noisy steps, directly or in passes over the retain set
            (each pass ``ceil(n / batch_size)`` steps; a fractional part runs that fraction of
            one more pass). For gradient clipping with ``lam == 0`` the default is
            T = ceil(C0 / (lr C1)), where the bound is tightest (THEORY.md section 5); more steps
            than that cannot lower the noise and give a warning. At most 1e8 steps.
        C0: radius the private parameters are clipped to first. C1: gradient clipping radius.
            C2: model clipping radius. lr: step size gamma. lam: weight decay lambda.
        batch_size: retain samples per noisy step (default 64). For a ``DataLoader`` leave it
            out: its own batch size is used (with a ``batch_sampler``, give the largest batch
            it yields; every batch is checked against it). The certificate records the largest
            batch a step can see. clip: ``"batch"`` or ``"per_sample"``.
        finetune_epochs, finetune_lr, finetune_batch_size: noise-free fine-tuning afterwards
            (SGD, momentum 0.9, one optimizer for the whole run; the batch size defaults to
            ``batch_size``).
        forget_size: number of forgotten points, recorded in the certificate.
        loss_fn: ``loss_fn(outputs, targets)`` -> scalar mean over the batch, used by the noisy
            steps and the fine-tuning (per-sample gradients call it on one sample at a time).
        private: the parameters that depend on the private data: None (those with
            ``requires_grad=True``), a predicate ``(name, param) -> bool``, or a list of
            parameter names, modules and parameters. Only they are clipped, noised, stepped and
            fine-tuned (whatever their ``requires_grad`` flag); the others stay bit-identical
            and are recorded in the certificate as public (their names and SHA-256), under the
            assumption that they were fixed independently of the forgotten data (THEORY.md
            section 10).
        seed: makes the noise and batches reproducible (tests, audits). Leave None in production:
            anyone who knows the seed can subtract the noise. The seed is never written out.
        device: where to run (the model is moved there); None: the model's device, and the data
            must be there too.
        inplace: modify ``model`` itself; by default a copy is unlearned and ``model`` is untouched.
            Either way, a run that fails (any exception, Ctrl-C included) leaves ``model`` as it
            was: its starting weights are kept until the run succeeds.
        after_noisy_phase: called with the model after the noisy phase, before fine-tuning (to
            evaluate it; it must not modify the model).
        epoch_callback: called as ``epoch_callback(epoch_index, model)`` after every whole pass
            of the fine-tuning (see :func:`certunlearn_train.train.train`).
        public_buffers: buffers to keep bit-identical and record as public besides those of
            modules whose parameters are all public (names, modules or a predicate
            ``(name, buffer) -> bool``): state training never changes, such as a positional
            encoding. BatchNorm: a public one must be in eval mode; a private one runs the noisy
            phase with mean 0 and variance 1 and has its statistics re-estimated on the retain
            set afterwards (see :mod:`certunlearn_train.buffers`, THEORY.md section 10.4).

    Returns:
        ``(unlearned_model, certificate)``; the certificate's (eps, delta) is the accountant's,
        recomputed from sigma (rounded up) and the parameters actually used. The returned
        model's modules keep the train/eval flags of the model given.

    Raises:
        ValueError: invalid parameters (naming the parameter, the constraint and the value),
            an unsupported model or data (see :func:`prepare_run`), before any weight is touched;
            a run that diverges (non-finite loss or weights), with no certificate.
    """
    s = check_settings(eps=eps, delta=delta, method=method, steps=steps, epochs=epochs, C0=C0,
                       C1=C1, lr=lr, lam=lam, C2=C2, sigma0=sigma0,
                       batch_size=64 if batch_size is None else batch_size,
                       clip=clip, finetune_epochs=finetune_epochs, finetune_lr=finetune_lr,
                       finetune_batch_size=finetune_batch_size, forget_size=forget_size,
                       grad_buffer_bytes=grad_buffer_bytes)
    device, data, priv, pub = prepare_batches(model, retain_data, device=device,
                                              loss_fn=loss_fn, private=private,
                                              batch_size=batch_size, allow_buffers=True)
    bufplan = plan_buffers(model, priv, public_buffers)
    if data.kind == "loader":  # the loader's batches are the steps': calibrate for the largest
        s = dataclasses.replace(s, batch_size=data.batch_size,
                                finetune_batch_size=data.batch_size if finetune_batch_size is None
                                else s.finetune_batch_size)
    T = plan_steps(s, data.n, data)
    named = dict(model.named_parameters())
    d = sum(named[name].numel() for name in priv)
    cal = calibrate_noise(s, T=T, d=d)
    with restored_on_failure(model), contextlib.ExitStack() as stack:
        modes = save_modes(model)
        work, flat, sha_before = working_copy(model, inplace, device, priv)
        modes = list(zip(work.modules(), [m for _, m in modes]))
        bufrun = stack.enter_context(BufferRun(work, bufplan))  # noisy phase: constant stats
        try:
            x, y = data.first()  # the first batch (tensors: all of them), checked
            # on `device`, before touching weights
            data.label_bound = check_model_fits_data(work, x, y, loss_fn)
            check_buffers_constant(work, x, y)
            if s.clip == "per_sample":  # refuse a non-vmap-able forward before touching weights
                GradientSource(work, flat, s.clip, s.C1, loss_fn, 2, s.grad_buffer_bytes
                               ).probe(x, y)
            restore_modes(modes)
            public = public_record(work, pub)
            buffers = buffers_record(work, bufplan, finetuned=s.finetune_epochs > 0)
            if data.kind == "tensors":
                distributed.check_same_data(x, y)
            noise = distributed.noise_stream(seed)  # same key on every rank (rank 0's secret)
            gen = torch.Generator()
            gen.manual_seed(batch_generator_seed(seed) if seed is not None
                            else distributed.from_rank0(secrets.randbits(63)))
            clip_to_c0(flat, s, noise)
            noisy_phase(work, flat, data, None, steps=T, lr=s.lr, lam=s.lam, clip=s.clip,
                        C1=s.C1, sigma=cal.sigma, radius=s.radius, batch_size=data.batch_size,
                        generator=gen, noise=noise, loss_fn=loss_fn,
                        grad_buffer_bytes=s.grad_buffer_bytes, progress=progress)
        finally:
            flat.release()
            restore_modes(modes)
        # post-processing on the retain set (a stream: on its first batch)
        bufrun.end_noisy_phase(x, min(s.batch_size, len(x)))
        if after_noisy_phase is not None:
            after_noisy_phase(work)
            restore_modes(modes)
        fine_tune(work, data, None, s, private=priv, public=pub, seed=seed, loss_fn=loss_fn,
                  progress=progress, epoch_callback=epoch_callback)
        check_public_unchanged(work, bufplan, buffers)
        n = data.retain_size()
        cert = certify(work, s, cal, T=T, d=d, n=n, sha_before=sha_before, public_names=pub,
                       public=public, seed_user_supplied=noise.seed_is_user_supplied,
                       buffers=buffers)
    return work, cert
