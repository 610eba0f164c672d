"""Subcommands of the unlearning bounds: noise-for, epsilon-for, delta-for, steps-for.

They take the same parameter names as the Python API (``--eps --delta --T --C0 --C1 --gamma
--lam --method --C2 --sigma0 --sigma``), print the result, and with ``--json`` print the full
certificate instead. Numbers are printed on the safe side (:func:`certunlearn_theory.format_up`
with ``digits=None``: the shortest decimal >= the float that reads back as it). No torch is
imported.
"""
from __future__ import annotations

import argparse

from ._numerics import precision
from .calibration import METHODS, delta_for, epsilon_for, noise_for, steps_for
from .certificate import issue_certificate
from .errors import InvalidParameterError
from .formatting import format_up


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def _optional_number(text: str):
    if text.lower() in ("none", ""):
        return None
    return _number(text)


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def _add_common(p: argparse.ArgumentParser, *, eps=False, delta=False, sigma=False, T=True):
    if eps:
        p.add_argument("--eps", type=_number, required=True, help="target epsilon")
    if delta:
        p.add_argument("--delta", type=_number, required=True, help="target delta")
    if sigma:
        p.add_argument("--sigma", type=_number, required=True, help="per-step noise std")
    if T:
        p.add_argument("--T", type=_integer, default=None,
                       help="number of noisy steps (not used by output_perturbation)")
    p.add_argument("--method", choices=METHODS, default="gradient_clipping")
    p.add_argument("--C0", type=_number, required=True, help="radius the model is clipped to")
    p.add_argument("--C1", type=_optional_number, default=None, help="gradient clipping radius")
    p.add_argument("--gamma", type=_optional_number, default=None, help="learning rate")
    p.add_argument("--lam", type=_number, default=0.0, help="L2 regularisation (default 0)")
    p.add_argument("--C2", type=_optional_number, default=None,
                   help="projection radius (model_clipping)")
    p.add_argument("--sigma0", type=_number, default=0.0,
                   help="std of the initial noise on the clipped model (default 0)")
    p.add_argument("--noise-before-projection", action="store_true",
                   help="model_clipping variant: gradient clipping, noise added before projecting")
    p.add_argument("--conversion", choices=("improved", "mironov"), default="improved",
                   help="Renyi-to-DP conversion for gradient clipping")
    p.add_argument("--shift-slack", type=_number, default=0.0,
                   help="extra mean distance per step, e.g. the float32 rounding bound of one "
                        "step (THEORY.md section 8.1; default 0)")
    p.add_argument("--digits", type=_integer, default=None,
                   help="working precision in significant digits (default 50)")
    p.add_argument("--json", action="store_true", help="print the certificate as JSON")


def _kw(args):
    return dict(method=args.method, C2=args.C2, sigma0=args.sigma0,
                noise_after_projection=not args.noise_before_projection,
                conversion=args.conversion, shift_slack=args.shift_slack)


def _need_T(args):
    if args.method != "output_perturbation" and args.T is None:
        raise InvalidParameterError(f"--T is required for method {args.method}")


def _certificate(args, sigma, T, eps=None, delta=None):
    kw = _kw(args)
    kw.pop("conversion")
    return issue_certificate(sigma, args.delta if delta is None else delta, T, args.C0, args.C1,
                             args.gamma, args.lam, eps=eps, conversion=args.conversion, **kw)


def _run(args, body):
    if args.digits is None:
        return body()
    with precision(args.digits):
        return body()


def _describe(args, T):
    parts = [args.method]
    if args.method != "output_perturbation":
        parts.append(f"T={T}")
    return ", ".join(parts)


def _noise_for(args) -> int:
    def body():
        _need_T(args)
        sigma = noise_for(args.eps, args.delta, args.T, args.C0, args.C1, args.gamma, args.lam,
                          **_kw(args))
        if args.json:
            print(_certificate(args, sigma, args.T, eps=args.eps).to_json())
        else:
            print(f"sigma = {format_up(sigma, None)}  ({_describe(args, args.T)}, "
                  f"eps={args.eps}, delta={args.delta}; rounded up)")
        return 0
    return _run(args, body)


def _epsilon_for(args) -> int:
    def body():
        _need_T(args)
        eps = epsilon_for(args.sigma, args.delta, args.T, args.C0, args.C1, args.gamma, args.lam,
                          **_kw(args))
        if args.json:
            print(_certificate(args, args.sigma, args.T, eps=eps).to_json())
        else:
            print(f"eps = {format_up(eps, None)}  ({_describe(args, args.T)}, "
                  f"sigma={args.sigma}, delta={args.delta}; rounded up)")
        return 0
    return _run(args, body)


def _delta_for(args) -> int:
    def body():
        _need_T(args)
        delta = delta_for(args.sigma, args.eps, args.T, args.C0, args.C1, args.gamma, args.lam,
                          **_kw(args))
        if args.json:
            if not 0 < delta < 1:
                raise InvalidParameterError(f"delta = {delta!r}: no certificate for a delta "
                                            f"outside (0, 1)")
            print(_certificate(args, args.sigma, args.T, eps=args.eps, delta=delta).to_json())
        else:
            print(f"delta = {format_up(delta, None)}  ({_describe(args, args.T)}, "
                  f"sigma={args.sigma}, eps={args.eps}; rounded up)")
        return 0
    return _run(args, body)


def _steps_for(args) -> int:
    def body():
        T = steps_for(args.sigma, args.eps, args.delta, args.C0, args.C1, args.gamma, args.lam,
                      **_kw(args))
        if args.json:
            print(_certificate(args, args.sigma, max(T, 1) if args.method != "output_perturbation"
                               else None, eps=args.eps).to_json())
        else:
            print(f"T = {T}  ({args.method}, sigma={args.sigma}, eps={args.eps}, "
                  f"delta={args.delta})")
        return 0
    return _run(args, body)


def register(subparsers) -> None:
    """Add the unlearning-bound subcommands (noise-for, epsilon-for, delta-for, steps-for)."""
    p = subparsers.add_parser(
        "noise-for", help="smallest per-step noise sigma for a target (eps, delta)",
        description="Smallest per-step noise std whose unlearning guarantee is (eps, delta).")
    _add_common(p, eps=True, delta=True)
    p.set_defaults(handler=_noise_for)

    p = subparsers.add_parser(
        "epsilon-for", help="epsilon of a setting at a given delta",
        description="Epsilon (rounded up) of a setting at a given delta.")
    _add_common(p, delta=True, sigma=True)
    p.set_defaults(handler=_epsilon_for)

    p = subparsers.add_parser(
        "delta-for", help="delta of a setting at a given epsilon",
        description="Delta (rounded up) of a setting at a given epsilon.")
    _add_common(p, eps=True, sigma=True)
    p.set_defaults(handler=_delta_for)

    p = subparsers.add_parser(
        "steps-for", help="fewest noisy steps reaching (eps, delta) at a given sigma",
        description="Fewest noisy steps whose guarantee is (eps, delta) at noise sigma.")
    _add_common(p, eps=True, delta=True, sigma=True, T=False)
    p.set_defaults(handler=_steps_for)
