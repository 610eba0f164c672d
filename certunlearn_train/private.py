"""The private part of a model: the parameters a run unlearns, and the record of the others.

Only parameters trained on private data need unlearning (THEORY.md section 10.2): ``private=``
selects them (names, modules, parameters or a predicate; default: those with
``requires_grad=True``); the rest are public, stay bit-identical, and their SHA-256 goes into
the certificate with the assumption it rests on.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterable, List, Optional, Tuple, Union

from torch import nn

from .certificates import public_parameters_record

__all__ = ["PrivateSpec", "PUBLIC_ASSUMPTION", "select_private", "public_record", "frozen",
           "requires_grad_set"]

PUBLIC_ASSUMPTION = "public parameters were fixed independently of the data being forgotten"

PrivateSpec = Union[None, Callable[[str, nn.Parameter], bool], Iterable]


def select_private(model: nn.Module, private: PrivateSpec = None) -> Tuple[List[str], List[str]]:
    """``(private_names, public_names)`` among ``model.named_parameters()``.

    ``private`` is None (the parameters with ``requires_grad=True``), a predicate
    ``(name, param) -> bool``, or an iterable of parameter names, submodules of ``model`` and
    parameters (a module stands for all its parameters). A tied parameter may be named by any of
    its names. At least one parameter must be private.
    """
    named = list(model.named_parameters())
    if private is None:
        chosen = {id(p) for _, p in named if p.requires_grad}
        if not chosen:
            raise ValueError("private=None selects the parameters with requires_grad=True, and "
                             "this model has none; pass private= (names, modules or a predicate)")
    elif callable(private) and not isinstance(private, nn.Module):
        chosen = {id(p) for n, p in named if private(n, p)}
    else:
        items = [private] if isinstance(private, (str, nn.Module, nn.Parameter)) else private
        try:
            items = list(items)
        except TypeError:
            raise ValueError("private must be None, a predicate (name, param) -> bool, or a list "
                             f"of parameter names, modules or parameters, got {private!r}"
                             ) from None
        aliases = dict(model.named_parameters(remove_duplicate=False))
        ids_in_model = {id(p) for _, p in named}
        chosen = set()
        for it in items:
            if isinstance(it, str):
                if it not in aliases:
                    raise ValueError(f"private names a parameter {it!r} that the model does not "
                                     f"have; its parameters are {', '.join(n for n, _ in named)}")
                chosen.add(id(aliases[it]))
            elif isinstance(it, nn.Parameter):
                if id(it) not in ids_in_model:
                    raise ValueError("private lists a parameter that is not part of the model")
                chosen.add(id(it))
            elif isinstance(it, nn.Module):
                if not any(m is it for m in model.modules()):
                    raise ValueError(f"private lists a module ({type(it).__name__}) that is not "
                                     "part of the model")
                chosen.update(id(p) for p in it.parameters())
            else:
                raise ValueError("private must list parameter names, modules or parameters, got "
                                 f"an item of type {type(it).__name__}")
    priv = [n for n, p in named if id(p) in chosen]
    if not priv:
        raise ValueError(f"private selects no parameter of the model (private={private!r})")
    return priv, [n for n, p in named if id(p) not in chosen]


def public_record(model: nn.Module, public: List[str]) -> Optional[dict]:
    """The certificate's record of the public parameters: names, SHA-256 and the assumption."""
    if not public:
        return None
    params = dict(model.named_parameters())
    record = public_parameters_record({n: params[n].detach() for n in public}, public)
    return dict(record, assumption=PUBLIC_ASSUMPTION)


@contextlib.contextmanager
def requires_grad_set(params: Iterable[nn.Parameter], value: bool):
    """Set ``requires_grad=value`` on ``params`` for the block; restore the flags afterwards."""
    saved = [(p, p.requires_grad) for p in params]
    for p, _ in saved:
        p.requires_grad_(value)
    try:
        yield
    finally:
        for p, rg in saved:
            p.requires_grad_(rg)


def frozen(params: Iterable[nn.Parameter]):
    """``requires_grad=False`` on ``params`` for the block (public parameters stay fixed)."""
    return requires_grad_set(params, False)
