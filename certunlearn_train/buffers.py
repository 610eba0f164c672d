"""Buffers (BatchNorm statistics and other state outside the parameters) in an unlearning run.

The noisy phase may depend on the starting model only through the clipped private parameters
(THEORY.md section 10.4). :func:`plan_buffers` sorts every buffer of the model, before any work:

* **public**: a buffer of a module whose parameters are all public (a frozen pretrained
  backbone), a constant integer buffer (index tables, position ids), or one the caller declares
  public (``public_buffers=``: a sinusoidal positional encoding, a fixed mask). It is kept
  bit-identical: a BatchNorm or InstanceNorm holding one must be in eval mode and stays in eval
  mode for the whole run. Names and SHA-256 go into the certificate with the assumption;
* **private**: the running statistics of a BatchNorm (or an InstanceNorm tracking them) with a
  private parameter or with no parameters. During the noisy phase the module runs in eval mode
  with mean 0 and variance 1 (an affine layer, per sample), a constant that does not depend on
  the starting model; afterwards its statistics are re-estimated from the retain set through
  the noisy model (post-processing), and fine-tuning, if any, updates them as usual;
* anything else (floating-point state of a private module, a BatchNorm that tracks no running
  statistics and so always mixes the samples of a batch) is refused, naming the buffer and why.

:class:`BufferRun` applies the plan to the working copy for the length of a run, and
:func:`buffers_record` is what the certificate's ``buffers`` field holds.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Dict, Iterable, List, Optional, Union

import torch
from torch import nn

from .certificates.hashing import public_parameters_record
from .certificates.schema import BUFFERS_AFTERWARDS, NOISY_PHASE_STATISTICS
from .models import UnsupportedModelError

__all__ = ["plan_buffers", "BufferPlan", "BufferRun", "buffers_record", "check_public_unchanged",
           "PUBLIC_BUFFER_ASSUMPTION", "NOISY_PHASE_STATISTICS", "REESTIMATED",
           "REESTIMATED_THEN_FINETUNED", "BufferSpec"]

PUBLIC_BUFFER_ASSUMPTION = ("public buffers were fixed independently of the data being "
                            "forgotten (their modules never updated them on private data)")
REESTIMATED, REESTIMATED_THEN_FINETUNED = BUFFERS_AFTERWARDS

BufferSpec = Union[None, Callable[[str, torch.Tensor], bool], Iterable]
_NORMS = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)


@dataclasses.dataclass(frozen=True)
class BufferPlan:
    """What a run does with each buffer (module and buffer names as in ``named_buffers``)."""

    public: List[str]  # kept bit-identical, recorded by hash
    public_norms: List[str]  # modules holding public running statistics: kept in eval mode
    private_norms: List[str]  # modules whose statistics are constants, then re-estimated
    private: List[str]  # the buffers of private_norms

    def __bool__(self) -> bool:
        return bool(self.public or self.private)


def _declared(model: nn.Module, spec: BufferSpec) -> set:
    """The names of the buffers ``public_buffers=`` declares public."""
    named = {n: b for n, b in model.named_buffers() if b is not None}
    if spec is None:
        return set()
    if callable(spec) and not isinstance(spec, nn.Module):
        return {n for n, b in named.items() if spec(n, b)}
    items = [spec] if isinstance(spec, (str, nn.Module)) else spec
    try:
        items = list(items)
    except TypeError:
        raise ValueError("public_buffers must be None, a predicate (name, buffer) -> bool, or a "
                         f"list of buffer names and modules, got {spec!r}") from None
    out = set()
    modules = dict(model.named_modules())
    for it in items:
        if isinstance(it, str):
            if it not in named:
                raise ValueError(f"public_buffers names a buffer {it!r} that the model does not "
                                 f"have; its buffers are {', '.join(named) or 'none'}")
            out.add(it)
        elif isinstance(it, nn.Module):
            prefix = next((f"{n}." if n else "" for n, m in modules.items() if m is it), None)
            if prefix is None:
                raise ValueError(f"public_buffers lists a module ({type(it).__name__}) that is "
                                 "not part of the model")
            out.update(n for n in named if n.startswith(prefix))
        else:
            raise ValueError("public_buffers must list buffer names or modules, got an item of "
                             f"type {type(it).__name__}")
    return out


def plan_buffers(model: nn.Module, private: List[str], public_buffers: BufferSpec = None
                 ) -> BufferPlan:
    """Sort every buffer of ``model`` (see the module docstring); refuse what cannot be covered.

    ``private`` are the private parameter names (:func:`certunlearn_train.unlearn.select_private`).

    Raises:
        UnsupportedModelError: one line naming every buffer that cannot be covered and why.
    """
    declared = _declared(model, public_buffers)
    private_ids = {id(p) for n, p in model.named_parameters() if n in set(private)}
    public, public_norms, private_norms, private_bufs, problems = [], [], [], [], []
    for mname, module in model.named_modules():
        own = [(k, b) for k, b in module._buffers.items() if b is not None]
        is_norm = isinstance(module, _NORMS)
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not module.track_running_stats:
            problems.append(f"{mname or 'model'} ({type(module).__name__}) tracks no running "
                            "statistics, so it normalises with the statistics of the batch and "
                            "mixes its samples (per-sample gradients are not defined); use "
                            "GroupNorm or LayerNorm, or track_running_stats=True")
            continue
        if not own:
            continue
        names = [f"{mname}.{k}" if mname else k for k, _ in own]
        params = list(module.parameters(recurse=False))
        has_private = any(id(p) in private_ids for p in params)
        if is_norm and getattr(module, "running_mean", None) is not None:
            if all(n in declared for n in names) or (params and not has_private):
                if module.training:
                    problems.append(
                        f"{mname or 'model'} ({type(module).__name__}) is public (its "
                        "parameters are not private) but in train mode, where every forward "
                        "pass would update its running statistics; call .eval() on it if its "
                        "statistics are public, or make its parameters private")
                    continue
                public += names
                public_norms.append(mname)
            else:
                private_norms.append(mname)
                private_bufs += names
            continue
        for (_, buf), name in zip(own, names):
            if name in declared or not buf.is_floating_point() or (params and not has_private):
                public.append(name)  # constancy under a forward pass is checked separately
            else:
                problems.append(
                    f"buffer {name} ({type(module).__name__}) is floating-point state outside "
                    "the parameters that the noisy phase would read unchanged from the starting "
                    "model; if training never changes it (a positional encoding, a fixed mask), "
                    f"declare it public: unlearn(..., public_buffers=[{name!r}])")
    if problems:
        raise UnsupportedModelError("model cannot be unlearned with a certificate: "
                                    + "; ".join(problems))
    order = [n for n, b in model.named_buffers() if b is not None]
    return BufferPlan(public=[n for n in order if n in set(public)], public_norms=public_norms,
                      private_norms=private_norms,
                      private=[n for n in order if n in set(private_bufs)])


def _force_eval(module: nn.Module, args) -> None:
    module.training = False


class BufferRun:
    """Apply a :class:`BufferPlan` to the working copy of a run (a context manager).

    On entry the private statistics are replaced (new tensors: the caller's are left alone) by
    mean 0, variance 1 and a zero count, and a forward pre-hook keeps every public and private
    norm module in eval mode whatever ``train()`` does. :meth:`end_noisy_phase` re-estimates the
    private statistics on the retain set and lets the private modules train again (fine-tuning
    then updates their statistics as usual); public ones stay in eval mode until exit.
    """

    def __init__(self, model: nn.Module, plan: BufferPlan):
        self.model, self.plan = model, plan
        modules = dict(model.named_modules())
        self.public_modules = [modules[n] for n in plan.public_norms]
        self.private_modules = [modules[n] for n in plan.private_norms]
        self.handles: list = []
        self.private_handles: list = []

    def __enter__(self) -> "BufferRun":
        with torch.no_grad():
            for m in self.private_modules:
                for key, fill in (("running_mean", 0), ("running_var", 1),
                                  ("num_batches_tracked", 0)):
                    b = m._buffers.get(key)
                    if b is not None:
                        m._buffers[key] = torch.full_like(b, fill)
        self.handles = [m.register_forward_pre_hook(_force_eval) for m in self.public_modules]
        self.private_handles = [m.register_forward_pre_hook(_force_eval)
                                for m in self.private_modules]
        return self

    def end_noisy_phase(self, x: torch.Tensor, batch_size: int) -> None:
        """Re-estimate the private statistics on the retain set ``x`` through the noisy model
        (a cumulative average over batches of ``batch_size``, every other module in eval mode)."""
        for h in self.private_handles:
            h.remove()
        self.private_handles = []
        if not self.private_modules:
            return
        modes = [(m, m.training) for m in self.model.modules()]
        momenta = [m.momentum for m in self.private_modules]
        n = len(x)
        starts = list(range(0, n, batch_size))
        if len(starts) > 1 and n - starts[-1] < 2:
            starts.pop()  # a last batch of one sample joins the one before
        try:
            self.model.eval()
            for m in self.private_modules:
                m.reset_running_stats()
                m.momentum = None  # cumulative average
                m.train()
            with torch.no_grad(), torch.random.fork_rng(
                    devices=[x.device] if x.device.type == "cuda" else []):
                for i, s in enumerate(starts):
                    end = starts[i + 1] if i + 1 < len(starts) else n
                    self.model(x[s:end])
        except Exception as exc:
            raise ValueError(f"re-estimating the BatchNorm statistics on the retain set failed: "
                             f"{type(exc).__name__}: {exc}") from exc
        finally:
            for m, mom in zip(self.private_modules, momenta):
                m.momentum = mom
            for m, mode in modes:
                m.training = mode

    def __exit__(self, *exc) -> None:
        for h in self.handles + self.private_handles:
            h.remove()
        self.handles, self.private_handles = [], []


def _public_buffers_record(model: nn.Module, names: List[str]) -> Dict:
    return dict(public_parameters_record(model, names), assumption=PUBLIC_BUFFER_ASSUMPTION)


def buffers_record(model: nn.Module, plan: BufferPlan, *, finetuned: bool) -> Optional[Dict]:
    """The certificate's ``buffers`` field: the public buffers by name, SHA-256 and assumption;
    the private ones by name, the constant of the noisy phase and what followed. None when the
    model has no buffer."""
    if not plan:
        return None
    out: Dict = {}
    if plan.public:
        out["public"] = _public_buffers_record(model, plan.public)
    if plan.private:
        out["private"] = {"names": list(plan.private), "noisy_phase": NOISY_PHASE_STATISTICS,
                          "afterwards": REESTIMATED_THEN_FINETUNED if finetuned
                          else REESTIMATED}
    return out


def check_public_unchanged(model: nn.Module, plan: BufferPlan, before: Optional[Dict]) -> None:
    """Internal invariant: the public buffers are bit-identical at the end of the run."""
    if before is None or "public" not in before:
        return
    if _public_buffers_record(model, plan.public)["sha256"] != before["public"]["sha256"]:
        raise RuntimeError("public buffers changed during the run")
