"""Can certified unlearning beat retraining here? Ask the accountant and one noisy phase, in seconds.

:func:`plan` looks at *your* model and retain set before any real unlearning run:

1. **The noise against the model.** For the knobs given (or, where none are given, the setting
   with the smallest noise against the part of the model the clipping keeps, found by a cheap
   search over C0, T and the clipping radius with the accountant), sigma from the accountant
   (exactly as :func:`~certunlearn_train.unlearn.unlearn` calibrates it, float32 slack included,
   and re-checked with the forward bound), the expected norm of all the noise the noisy phase
   adds to the private parameters, and its ratio to C0 and to the original private norm.
2. **A probe.** The noisy phase run once on a copy, by :func:`unlearn` itself with
   ``finetune_epochs=0`` (same seed, same weights), and the accuracy right after it (the loss for
   float targets) on held-out data, next to the original model's and chance; optionally over a
   grid of eps values, with the smallest eps at which the noisy model keeps a given fraction of
   the original accuracy.
3. **A verdict** in plain words, derived only from those numbers, and the bound that holds for
   every run (THEORY.md section 10.5): 0 is in the C0 ball, so the unlearned model reaches any
   accuracy at most e^eps times as often (plus delta) as the same pipeline started from zero.

A probe is evidence about one run, not a measurement of the saving: ``certunlearn experiment``
measures that.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .unlearn import METHODS, PrivateSpec

__all__ = ["plan", "PlanResult", "ProbePoint", "Knobs", "search_knobs", "certified_sigma",
           "expected_noise_norm", "verdict_for", "ceiling_text", "plot_plan", "AT_CHANCE",
           "HOLDOUT_FRACTION"]

#: A probe that keeps less than this share of the original's margin over chance is "at chance".
AT_CHANCE = 0.1
#: Without ``eval_data``, this share of the retain set (at most :data:`HOLDOUT_MAX` points, at
#: least one) is held out for the probe's accuracy; the noisy phase runs on the rest.
HOLDOUT_FRACTION = 0.2
HOLDOUT_MAX = 2000
_HOLDOUT_SEED = 0x9A7E
#: Knob search grids (multiples of the original private norm for C0; of the natural radius
#: C0 / (lr T) for C1, which is where the gradient-clipping bound is tightest; of the part of
#: the model C0 keeps for C2).
C0_FACTORS = (0.001, 0.01, 0.1, 0.3, 1.0)
STEP_GRID = {"gradient_clipping": (5, 10, 20, 50, 100), "model_clipping": (2, 5, 10, 20)}
C1_FACTORS = (1.0, 2.0, 4.0)
C2_FACTORS = (0.01, 0.1, 0.3, 1.0)
#: Settings whose noise ratio is within this factor of the best are ties: the largest C0 (the
#: least clipped model), then the fewest noisy steps win.
TIE = 1.01


@dataclass(frozen=True)
class Knobs:
    """The settings of one noisy phase, named as :func:`unlearn` names them."""

    method: str
    C0: float
    steps: int
    lr: float
    C1: float = math.inf
    C2: Optional[float] = None
    lam: float = 0.0
    sigma0: float = 0.0
    batch_size: int = 64
    clip: str = "batch"

    def unlearn_kwargs(self) -> Dict[str, Any]:
        kw: Dict[str, Any] = dict(method=self.method, C0=self.C0, steps=self.steps, lr=self.lr,
                                  C1=self.C1, lam=self.lam, batch_size=self.batch_size,
                                  clip=self.clip)
        if self.method == "model_clipping":
            kw.update(C2=self.C2, sigma0=self.sigma0)
        return kw


@dataclass(frozen=True)
class ProbePoint:
    """One eps of the probe: the knobs used, sigma, the noise ratio, and the result right after
    the noisy phase (accuracy for class labels, else ``None`` and the loss)."""

    eps: float
    knobs: Knobs
    sigma: float
    noise_to_model: float
    accuracy: Optional[float]
    loss: Optional[float]


@dataclass(frozen=True)
class PlanResult:
    """What :func:`plan` found. Accuracies are fractions; ``None`` where not measured.

    ``noise_to_model`` is the expected norm of all the noise the noisy phase adds over C0;
    ``noise_to_original`` over the original private norm; ``noise_to_kept`` over
    min(C0, C2, original norm), the part of the model the clipping keeps (what the knob search
    minimises). ``verdict`` is plain words derived from these numbers only; ``ceiling`` is e^eps
    (``inf`` beyond the float range), the factor of THEORY.md section 10.5.
    """

    eps: float
    delta: float
    knobs: Knobs
    searched: bool
    settings_tried: int
    d: int
    original_norm: float
    sigma: float
    noise_norm: float
    noise_to_model: float
    noise_to_original: float
    noise_to_kept: float
    noisy_epochs: float
    retain_size: int
    eval_size: int
    eval_source: str
    metric: str
    probe_accuracy: Optional[float]
    original_accuracy: Optional[float]
    chance_accuracy: Optional[float]
    probe_loss: Optional[float]
    original_loss: Optional[float]
    chance_loss: Optional[float]
    probes: Tuple[ProbePoint, ...]
    keep: float
    smallest_eps_keeping: Optional[float]
    ceiling: float
    verdict: str

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------------------------
# The accountant side: sigma, the noise it adds, the knob search
# ----------------------------------------------------------------------------------------------

def certified_sigma(knobs: Knobs, eps: float, delta: float, d: int) -> float:
    """sigma for ``knobs`` exactly as :func:`unlearn` calibrates it (float32 slack included),
    re-checked with the accountant's forward bound.

    Raises:
        ValueError: the accountant cannot certify (eps, delta) with these knobs (its own error).
    """
    import certunlearn_theory as ct
    from certunlearn_theory.float32 import calibrate_with_float32_slack

    from .certificates import PROJECTION_SLACK, split_tail_delta
    k = knobs
    if k.method == "gradient_clipping":
        sigma, slack, _ = calibrate_with_float32_slack(
            eps, delta, T=k.steps, d=d, C0=k.C0, C1=k.C1, gamma=k.lr, lam=k.lam,
            batch_size=k.batch_size)
        acct_delta, _ = split_tail_delta(delta)
        got = ct.epsilon_for(sigma, acct_delta, k.steps, k.C0, k.C1, k.lr, k.lam,
                             shift_slack=slack)
        ok = got <= eps
    else:
        assert k.C2 is not None  # model clipping knobs always carry C2
        c1 = k.C1 if math.isfinite(k.C1) else None
        slack = PROJECTION_SLACK * k.C2
        kw = dict(method=k.method, C2=k.C2, sigma0=k.sigma0, shift_slack=slack)
        sigma = float(ct.noise_for(eps, delta, k.steps, k.C0, c1, k.lr, k.lam, **kw))
        ok = ct.delta_for(sigma, eps, k.steps, k.C0, c1, k.lr, k.lam, **kw) <= delta
    if not ok:  # noise_for re-checks already; a second look costs one call
        raise ValueError(f"the accountant does not certify eps={eps!r}, delta={delta!r} at "
                         f"sigma={sigma!r} for {knobs}")
    return sigma


def expected_noise_norm(sigma: float, knobs: Knobs, d: int) -> float:
    """E||sum of the noise the noisy phase adds|| over ``d`` private coordinates.

    Step t's noise N(0, sigma^2 I) is shrunk by the weight decay of the later steps,
    (1 - lr lam) each; model clipping adds sigma0 at the start (the projections are ignored).
    The sum is N(0, s^2 I_d) and its expected norm s sqrt(2) Gamma((d+1)/2) / Gamma(d/2).
    """
    a = 1.0 - knobs.lr * knobs.lam
    T = knobs.steps
    decay = float(T) if a == 1.0 else (1.0 - a ** (2 * T)) / (1.0 - a * a)
    var = sigma ** 2 * decay + knobs.sigma0 ** 2 * a ** (2 * T)
    chi = math.sqrt(2.0) * math.exp(math.lgamma((d + 1) / 2.0) - math.lgamma(d / 2.0))
    return math.sqrt(var) * chi


def _kept(knobs: Knobs, original_norm: float) -> float:
    parts = [knobs.C0, original_norm if original_norm > 0 else math.inf]
    if knobs.C2 is not None:
        parts.append(knobs.C2)
    return min(parts)


def search_knobs(eps: float, delta: float, *, d: int, original_norm: float, n: int,
                 method: str = "gradient_clipping", lr: float = 0.05, lam: float = 0.0,
                 batch_size: int = 64, clip: str = "batch", C0: Optional[float] = None,
                 steps: Optional[int] = None, C1: Optional[float] = None,
                 C2: Optional[float] = None, sigma0: float = 0.0) -> Tuple[Knobs, int]:
    """The knobs with the smallest expected noise norm against min(C0, C2, original norm).

    Knobs given are kept; the others range over :data:`C0_FACTORS` (times ``original_norm``;
    model clipping, whose noise barely depends on C0: the original norm itself),
    :data:`STEP_GRID`, :data:`C1_FACTORS` and :data:`C2_FACTORS`. Candidates are ranked with the
    accountant's slack-free sigma (one call each, milliseconds); ties within :data:`TIE` go to
    the largest C0, then the fewest steps. The winner's sigma is recomputed as :func:`unlearn`
    would and re-checked with the forward bound (:func:`certified_sigma`); a candidate that fails
    is dropped. Returns ``(knobs, settings tried)``.

    Raises:
        ValueError: no candidate is certifiable (naming the last reason).
    """
    import certunlearn_theory as ct
    base = max(original_norm, 1e-12)
    if C0 is not None:
        c0s: Sequence[float] = (C0,)
    elif method == "model_clipping":
        c0s = (base,)
    else:
        c0s = tuple(f * base for f in C0_FACTORS)
    ts: Sequence[int] = (steps,) if steps is not None else STEP_GRID[method]
    scored: List[Tuple[float, Knobs]] = []
    reason = "no candidate"
    tried = 0
    for c0 in c0s:
        for T in ts:
            if method == "gradient_clipping":
                natural = c0 / (lr * T)
                radii: Sequence[float] = (C1,) if C1 is not None else tuple(
                    f * natural for f in C1_FACTORS)
                cands = [Knobs(method, c0, T, lr, C1=r, lam=lam, batch_size=batch_size,
                               clip=clip) for r in radii]
            else:
                keep = min(c0, base)
                radii = (C2,) if C2 is not None else tuple(f * keep for f in C2_FACTORS)
                cands = [Knobs(method, c0, T, lr, C1=C1 if C1 is not None else math.inf,
                               C2=r, lam=lam, sigma0=sigma0, batch_size=batch_size, clip=clip)
                         for r in radii]
            for k in cands:
                tried += 1
                try:
                    c1 = k.C1 if math.isfinite(k.C1) else None
                    sigma = float(ct.noise_for(eps, delta, k.steps, k.C0, c1, k.lr, k.lam,
                                               method=k.method, C2=k.C2, sigma0=k.sigma0))
                except ValueError as exc:
                    reason = str(exc).splitlines()[0]
                    continue
                ratio = expected_noise_norm(sigma, k, d) / _kept(k, original_norm)
                if math.isfinite(ratio):
                    scored.append((ratio, k))
    while scored:
        best = min(r for r, _ in scored)
        ties = [k for r, k in scored if r <= best * TIE]
        choice = max(ties, key=lambda k: (k.C0, -k.steps, -(k.C1 if math.isfinite(k.C1) else 0)))
        try:
            certified_sigma(choice, eps, delta, d)
            return choice, tried
        except ValueError as exc:
            reason = str(exc).splitlines()[0]
            scored = [(r, k) for r, k in scored if k is not choice]
    raise ValueError(f"no {method} setting in the search reaches eps={eps!r}, delta={delta!r} "
                     f"({reason}); give the knobs (C0, steps, C1 or C2) yourself")


# ----------------------------------------------------------------------------------------------
# The verdict
# ----------------------------------------------------------------------------------------------

def ceiling_text(eps: float, delta: float) -> str:
    """The bound of THEORY.md section 10.5 for this eps, in words."""
    if eps < 700:
        factor = f"e^{eps:g} = {math.exp(eps):.3g}"
    else:
        factor = f"e^{eps:g} (about 10^{eps / math.log(10):.0f}: no constraint at all)"
    return (f"for every run, whatever the original model: 0 is in the C0 ball, so the unlearned "
            f"model reaches any accuracy at most {factor} times as often (plus delta = "
            f"{delta:g}) as the same pipeline started from zero, i.e. retraining with the same "
            f"budget (THEORY.md 10.5)")


def _pct(v: float) -> str:
    return f"{100 * v:.0f}%"


def verdict_for(*, metric: str, probe: Optional[float], original: Optional[float],
                chance: Optional[float], keep: float, noise_to_kept: float,
                smallest_eps_keeping: Optional[float] = None,
                probed_eps: Sequence[float] = ()) -> str:
    """Plain words from the numbers alone (no promise: a probe is evidence, the suite measures).

    Classification: the noisy model "survives" when it keeps at least ``keep`` of the original
    accuracy, is "at chance" when it keeps less than :data:`AT_CHANCE` of the original's margin
    over chance, and keeps "part of the model" in between. Regression: the same on the loss
    (the margin is chance loss minus original loss). Without a probe: from the noise ratio.
    """
    if probe is None or original is None or chance is None:
        if noise_to_kept >= 10:
            text = (f"the noise the accountant requires is {noise_to_kept:.3g} times the part of "
                    "the model the clipping keeps: expect the model at chance after the noisy "
                    "phase, and fine-tuning to cost about as much as retraining (run the probe "
                    "to see)")
        elif noise_to_kept <= 0.1:
            text = (f"the noise is {noise_to_kept:.2g} times the part of the model the clipping "
                    "keeps: the model may survive the noisy phase (run the probe to see)")
        else:
            text = (f"the noise is {noise_to_kept:.2g} times the part of the model the clipping "
                    "keeps: run the probe to see what survives")
        return text
    if metric == "accuracy":
        margin = original - chance
        kept = (probe - chance) / margin if margin > 0 else math.nan
        frac = probe / original if original > 0 else math.nan
        numbers = f"{_pct(probe)} against {_pct(original)} before, chance {_pct(chance)}"
        survives = frac >= keep
        share = f"{_pct(frac)} of the original accuracy"
    else:
        margin = chance - original
        kept = (chance - probe) / margin if margin > 0 else math.nan
        numbers = f"loss {probe:.4g} against {original:.4g} before, {chance:.4g} at chance"
        survives = kept >= keep
        share = f"{_pct(kept)} of the original's loss reduction over chance"
    if survives:
        text = (f"the noisy phase keeps {share} ({numbers}): certified unlearning is likely to "
                "save compute; confirm with `certunlearn experiment`")
    elif not kept >= AT_CHANCE:
        text = (f"the noisy phase leaves the model at chance ({numbers}): fine-tuning will cost "
                "about as much as retraining from scratch; a larger eps, a smaller private part "
                "(`private=`), or retraining is the better choice")
    else:
        text = (f"the noisy phase keeps part of the model ({numbers}): fine-tuning may start "
                "ahead of retraining, or not; measure with `certunlearn experiment`")
    if len(probed_eps) > 1:
        if smallest_eps_keeping is not None:
            text += (f". Of the probed eps, the noisy model keeps {_pct(keep)} of the original "
                     f"from eps = {smallest_eps_keeping:g} on")
        else:
            text += (f". At no probed eps (up to {max(probed_eps):g}) does the noisy model keep "
                     f"{_pct(keep)} of the original")
    return text


# ----------------------------------------------------------------------------------------------
# plan()
# ----------------------------------------------------------------------------------------------

@torch.no_grad()
def _mean_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: Callable) -> float:
    from .evaluate import _predict
    out = _predict(model, x).to(y.device)
    return float(loss_fn(out.to(y.dtype) if y.is_floating_point() else out, y))


def _score(model: nn.Module, x, y, loss_fn, classify: bool) -> Tuple[Optional[float], float]:
    from .evaluate import accuracy
    acc = accuracy(model, x, y) if classify else None
    return acc, _mean_loss(model, x, y, loss_fn)


def _private_norm(model: nn.Module, names: List[str]) -> Tuple[float, int]:
    named = dict(model.named_parameters())
    sq = sum(float(named[n].detach().double().pow(2).sum()) for n in names)
    return math.sqrt(sq), sum(named[n].numel() for n in names)


def _holdout(n: int) -> Tuple[torch.Tensor, torch.Tensor]:
    k = min(HOLDOUT_MAX, max(1, int(round(HOLDOUT_FRACTION * n))))
    if k >= n:
        raise ValueError(f"the retain set ({n} points) is too small to hold out a split for the "
                         "probe; pass eval_data")
    gen = torch.Generator().manual_seed(_HOLDOUT_SEED)
    perm = torch.randperm(n, generator=gen)
    return perm[k:].sort().values, perm[:k].sort().values


def plan(model: nn.Module, retain_data, *, eps: float, delta: float,
         method: str = "gradient_clipping", steps: Optional[int] = None,
         epochs: Optional[float] = None, C0: Optional[float] = None,
         C1: Optional[float] = None, lr: float = 0.05, lam: float = 0.0,
         C2: Optional[float] = None, sigma0: float = 0.0, batch_size: int = 64,
         clip: str = "batch", loss_fn: Callable = F.cross_entropy, private: PrivateSpec = None,
         device=None, probe: bool = True, eval_data=None, seed: Optional[int] = None,
         eps_grid: Optional[Sequence[float]] = None, keep: float = 0.9,
         grad_buffer_bytes: int = 64 << 20, progress: bool = False) -> PlanResult:
    """Whether certified unlearning has a chance against retraining for this model and data.

    Takes :func:`~certunlearn_train.unlearn.unlearn`'s keywords for the noisy phase (no
    fine-tuning ones: the plan stops after the noisy phase). Knobs left out (``C0``, ``steps``
    or ``epochs``, ``C1`` for gradient clipping, ``C2`` for model clipping) are searched
    (:func:`search_knobs`); ``lr``, ``lam``, ``batch_size`` and ``clip`` are taken as given.

    Args:
        eval_data: where the probe measures accuracy (a test set). Default: a seeded
            :data:`HOLDOUT_FRACTION` of ``retain_data`` (at most :data:`HOLDOUT_MAX` points) is
            held out and the noisy phase runs on the rest; the original model trained on those
            points, so its accuracy there is a training accuracy.
        probe: run the noisy phase (only T steps, on a copy) and measure the result; False:
            the accountant's numbers only.
        seed: the probe's noise and batches (as in :func:`unlearn`; the probe then equals
            ``unlearn(..., finetune_epochs=0, seed=seed)`` weight for weight).
        eps_grid: more eps values to probe (``eps`` is always probed); knobs are searched per
            eps where they were not given.
        keep: the fraction of the original accuracy the verdict and ``smallest_eps_keeping``
            ask for.

    Raises:
        ValueError: what :func:`unlearn` refuses (an unsupported model, bad data, eps <= 0, ...),
            with the same message, or no certifiable setting in the search.
    """
    from .checks import check_choice, check_int, check_real
    from .unlearn import noisy_steps, prepare_run, unlearn
    check_choice("method", method, METHODS)
    eps = check_real("eps", eps, low=0.0)
    delta = check_real("delta", delta, low=0.0, high=1.0, high_open=True)
    keep = check_real("keep", keep, low=0.0, high=1.0)
    lr = check_real("lr", lr, low=0.0)
    lam = check_real("lam", lam, low=0.0, low_open=False)
    batch_size = check_int("batch_size", batch_size, low=1)
    grid = sorted({eps, *(check_real("eps_grid", e, low=0.0) for e in (eps_grid or ()))})
    for name, v in (("C0", C0), ("C1", C1), ("C2", C2)):
        if v is not None:
            check_real(name, v, low=0.0, allow_inf=name == "C1")
    if method == "gradient_clipping" and (C2 is not None or sigma0):
        raise ValueError("C2 and sigma0 belong to model_clipping; gradient_clipping got "
                         f"C2={C2!r}, sigma0={sigma0!r}")
    dev, x, y, priv, _ = prepare_run(model, retain_data, device=device, loss_fn=loss_fn,
                                     private=private)
    classify = not y.is_floating_point()
    if eval_data is None:
        keep_idx, held = _holdout(len(y))
        ex, ey = x[held], y[held]
        x, y = x[keep_idx], y[keep_idx]
        source = f"held out from the retain data ({len(ey)} points)"
    else:
        dtype = next(model.parameters()).dtype
        from .train import as_tensors
        ex, ey = as_tensors(eval_data, dev, dtype, loss_fn, "eval_data")
        if len(ey) == 0:
            raise ValueError("eval_data is empty: the probe needs samples")
        source = f"eval_data ({len(ey)} points)"
    n = len(y)
    norm, d = _private_norm(model, priv)
    fixed_steps = None
    if steps is not None or epochs is not None:
        fixed_steps = noisy_steps(method, lam, 1.0, 1.0, lr, n, batch_size, steps, epochs)

    def knobs_for(e: float) -> Tuple[Knobs, bool, int]:
        if method == "gradient_clipping" and None not in (C0, C1) and fixed_steps is None:
            assert C0 is not None and C1 is not None
            T = noisy_steps(method, lam, C0, C1, lr, n, batch_size, None, None)
            return Knobs(method, C0, T, lr, C1=C1, lam=lam, batch_size=batch_size,
                         clip=clip), False, 1
        given = C0 is not None and fixed_steps is not None and (
            C1 is not None if method == "gradient_clipping" else C2 is not None)
        if given:
            assert C0 is not None and fixed_steps is not None
            k = Knobs(method, C0, fixed_steps, lr, C1=C1 if C1 is not None else math.inf,
                      C2=C2, lam=lam, sigma0=sigma0, batch_size=batch_size, clip=clip)
            return k, False, 1
        k, tried = search_knobs(e, delta, d=d, original_norm=norm, n=n, method=method, lr=lr,
                                lam=lam, batch_size=batch_size, clip=clip, C0=C0,
                                steps=fixed_steps, C1=C1, C2=C2, sigma0=sigma0)
        return k, True, tried

    if classify:
        counts = torch.bincount(ey.reshape(-1).cpu())
        chance: Optional[float] = float(counts.max()) / len(ey)
        chance_loss = None
        original_acc, original_loss = _score(model, ex, ey, loss_fn, True)
    else:
        mean = y.double().mean(0, keepdim=True).to(ey.dtype)
        chance = None
        chance_loss = float(loss_fn(mean.expand_as(ey), ey))
        original_acc, original_loss = _score(model, ex, ey, loss_fn, False)

    points: List[ProbePoint] = []
    main: Optional[Tuple[Knobs, bool, int, float]] = None
    for e in grid:
        k, searched, tried = knobs_for(e)
        sigma = certified_sigma(k, e, delta, d)
        acc = loss = None
        if probe:
            noisy, cert = unlearn(model, (x, y), eps=e, delta=delta, finetune_epochs=0,
                                  loss_fn=loss_fn, private=private, seed=seed, device=device,
                                  progress=progress, grad_buffer_bytes=grad_buffer_bytes,
                                  **k.unlearn_kwargs())
            assert cert.sigma == sigma  # the same calibration as unlearn's
            acc, loss = _score(noisy, ex, ey, loss_fn, classify)
            del noisy
        ratio = expected_noise_norm(sigma, k, d) / k.C0
        points.append(ProbePoint(e, k, sigma, ratio, acc, loss if not classify else None))
        if e == eps:
            main = (k, searched, tried, sigma)
    assert main is not None  # eps is in the grid
    k, searched, tried, sigma = main
    noise = expected_noise_norm(sigma, k, d)
    here = next(p for p in points if p.eps == eps)
    probed = [p.eps for p in points] if probe else []

    def keeps(p: ProbePoint) -> bool:
        if classify:
            return p.accuracy is not None and original_acc is not None and original_acc > 0 \
                and p.accuracy / original_acc >= keep
        assert chance_loss is not None
        margin = chance_loss - original_loss
        return p.loss is not None and margin > 0 and (chance_loss - p.loss) / margin >= keep

    smallest = next((p.eps for p in points if keeps(p)), None) if probe else None
    probe_value = here.accuracy if classify else here.loss
    verdict = verdict_for(
        metric="accuracy" if classify else "loss", probe=probe_value if probe else None,
        original=original_acc if classify else original_loss,
        chance=chance if classify else chance_loss, keep=keep,
        noise_to_kept=noise / _kept(k, norm), smallest_eps_keeping=smallest, probed_eps=probed)
    return PlanResult(
        eps=eps, delta=delta, knobs=k, searched=searched, settings_tried=tried, d=d,
        original_norm=norm, sigma=sigma, noise_norm=noise, noise_to_model=noise / k.C0,
        noise_to_original=noise / norm if norm > 0 else math.inf,
        noise_to_kept=noise / _kept(k, norm),
        noisy_epochs=k.steps * min(k.batch_size, n) / n, retain_size=n, eval_size=len(ey),
        eval_source=source, metric="accuracy" if classify else "loss",
        probe_accuracy=here.accuracy if probe else None,
        original_accuracy=original_acc, chance_accuracy=chance,
        probe_loss=(here.loss if probe and not classify else None),
        original_loss=None if classify else original_loss, chance_loss=chance_loss,
        probes=tuple(points) if probe else tuple(replace(p, accuracy=None, loss=None)
                                                  for p in points),
        keep=keep, smallest_eps_keeping=smallest,
        ceiling=math.exp(eps) if eps < 700 else math.inf, verdict=verdict)


# ----------------------------------------------------------------------------------------------
# Text and figure
# ----------------------------------------------------------------------------------------------

def format_plan(r: PlanResult, what: str = "") -> str:
    """The plan as the command prints it."""
    k = r.knobs
    radius = (f"C1 = {k.C1:.4g}" if k.method == "gradient_clipping"
              else f"C2 = {k.C2:.4g}" + (f", C1 = {k.C1:.4g}" if math.isfinite(k.C1) else ""))
    how = (f"searched: the smallest noise against the kept model among {r.settings_tried} "
           "settings" if r.searched else "as given")
    lines = []
    if what:
        lines.append(what)
    lines += [
        f"private part: d = {r.d:,} parameters, norm {r.original_norm:.4g}; retain set "
        f"{r.retain_size:,} points; probe measured on {r.eval_source}",
        f"{k.method} at (eps, delta) = ({r.eps:g}, {r.delta:g}): C0 = {k.C0:.4g}, {radius}, "
        f"T = {k.steps}, lr = {k.lr:g}, lam = {k.lam:g}, batch {k.batch_size}, clip {k.clip} "
        f"({how})",
        "1. noise against the model",
        f"   sigma = {r.sigma:.6g} per coordinate and step (accountant, float32 slack included, "
        "rounded up)",
        f"   expected norm of all noise the noisy phase adds: {r.noise_norm:.4g} = "
        f"{r.noise_to_model:.4g} x C0 = {r.noise_to_original:.4g} x the original private norm "
        f"= {r.noise_to_kept:.4g} x what the clipping keeps",
        f"   noisy phase: {k.steps} steps = {r.noisy_epochs:.3g} epochs",
    ]
    if r.probe_accuracy is not None or r.probe_loss is not None:
        lines.append("2. probe (the noisy phase once, on a copy; no fine-tuning)")
        if r.metric == "accuracy":
            assert r.original_accuracy is not None and r.chance_accuracy is not None
            lines.append(f"   accuracy right after the noisy phase {r.probe_accuracy:.3f}; "
                         f"original {r.original_accuracy:.3f}; chance {r.chance_accuracy:.3f}")
        else:
            lines.append(f"   loss right after the noisy phase {r.probe_loss:.4g}; original "
                         f"{r.original_loss:.4g}; predicting the mean {r.chance_loss:.4g}")
        if len(r.probes) > 1:
            lines.append(f"   {'eps':>10}  {'accuracy' if r.metric == 'accuracy' else 'loss':>9}"
                         f"  {'sigma':>10}  {'noise/C0':>10}  {'C0':>8}  {'T':>4}")
            for p in r.probes:
                v = p.accuracy if r.metric == "accuracy" else p.loss
                lines.append(f"   {p.eps:>10g}  {v:>9.3f}  {p.sigma:>10.4g}  "
                             f"{p.noise_to_model:>10.4g}  {p.knobs.C0:>8.3g}  {p.knobs.steps:>4}")
    else:
        lines.append("2. probe: not run (--no-probe)")
    lines.append(f"3. verdict: {r.verdict}")
    lines.append(f"   bound: {ceiling_text(r.eps, r.delta)}")
    return "\n".join(lines)


def plot_plan(r: PlanResult, path: str) -> None:
    """Accuracy (or loss) right after the noisy phase against eps, with the original and chance."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    acc = r.metric == "accuracy"
    def num(v: Optional[float]) -> float:
        return math.nan if v is None else float(v)

    xs = [p.eps for p in r.probes]
    ys = [num(p.accuracy if acc else p.loss) for p in r.probes]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(xs, ys, "o-", label="right after the noisy phase")
    ax.axhline(num(r.original_accuracy if acc else r.original_loss), color="green", ls="--",
               label="original")
    ax.axhline(num(r.chance_accuracy if acc else r.chance_loss), color="grey", ls=":",
               label="chance")
    ax.set_xscale("log")
    ax.set_xlabel("eps")
    ax.set_ylabel("accuracy" if acc else "loss")
    ax.set_title(f"{r.knobs.method}, delta = {r.delta:g}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
