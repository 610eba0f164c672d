"""The table of per-sample gradient rules, keyed by the exact module type.

A rule is a callable ``rule(module, inputs, grad_output) -> {name: form}``:

* ``inputs``: the tuple of positional inputs of one call of ``module`` (detached);
* ``grad_output``: the gradient of the *sum* of the per-sample losses with respect to that
  call's output, so its row i belongs to sample i alone (samples never mix in a forward);
* the result maps the name of every direct parameter of ``module`` (``"weight"``, ``"bias"``)
  to one form of :mod:`certunlearn_train.grad._types` (``PerSample``, ``Outer``, ``Rows``).

A rule that also takes a keyword argument ``output`` gets the call's output tensor (as the
forward returned it, still attached to the graph, so ``output.grad_fn`` holds what autograd
saved, e.g. the statistics of a normalisation layer).

An optional ``check(module) -> str | None`` returns why a particular instance is not covered
(for example an Embedding with ``max_norm``), and the model then takes the vmap route.
Lookup is by exact type: a subclass may change ``forward``, so it needs its own entry.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, NamedTuple, Optional, Type, TypeVar

from torch import nn

__all__ = ["register", "rule_for", "Rule"]


class Rule(NamedTuple):
    compute: Callable
    # called only with instances of the exact type the rule was registered for
    check: Optional[Callable[[Any], Optional[str]]]
    # compute takes the call's output as the keyword ``output``
    takes_output: bool = False


def _takes_output(rule: Callable) -> bool:
    try:
        params = inspect.signature(rule).parameters
    except (TypeError, ValueError):
        return False
    p = params.get("output")
    return p is not None and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)


_RULES: Dict[type, Rule] = {}
_M = TypeVar("_M", bound=nn.Module)


def register(module_type: Type[_M], rule: Callable,
             check: Optional[Callable[[_M], Optional[str]]] = None) -> None:
    """Register (or replace) the per-sample gradient rule of ``module_type``.

    Example, a layer ``y = x * scale`` with a (features,) parameter ``scale``::

        from certunlearn_train import grad
        def scale_rule(module, inputs, g):
            x = inputs[0]
            return {"scale": grad.PerSample((g * x).reshape(len(x), -1, x.shape[-1]).sum(1))}
        grad.register(Scale, scale_rule)
    """
    if not (isinstance(module_type, type) and issubclass(module_type, nn.Module)):
        raise ValueError(f"register: module_type must be a subclass of torch.nn.Module, got "
                         f"{module_type!r}")
    if not callable(rule):
        raise ValueError(f"register: rule must be callable, got {type(rule).__name__}")
    if check is not None and not callable(check):
        raise ValueError(f"register: check must be callable or None, got {type(check).__name__}")
    _RULES[module_type] = Rule(rule, check, _takes_output(rule))


def rule_for(module: nn.Module) -> Optional[Rule]:
    """The rule registered for ``type(module)``, or None."""
    return _RULES.get(type(module))
