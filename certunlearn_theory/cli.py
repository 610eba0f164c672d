"""Command-line interface of the accountant. Imports no torch.

``register(subparsers)`` adds the accountant's subcommands to an ``argparse`` parser; the
``certunlearn`` console script (certunlearn_train.cli) adds the training subcommands beside them.
Every handler returns a process exit code.
"""
from __future__ import annotations

import argparse
import sys

from ._cli_bounds import register as _register_bounds


def _register_primitives(subparsers) -> None:
    """Subcommands of the Gaussian primitives (gaussian-sigma, gaussian-delta, gaussian-epsilon).

    Each prints the safely rounded value (the shortest decimal that is on the safe side of the
    float and reads back as it, :func:`certunlearn_theory.format_up` with ``digits=None``) or,
    with ``--json``, one JSON object with the inputs, the result and the working precision.
    """
    import json

    from . import divergences
    from ._numerics import DEFAULT_DIGITS, precision
    from .formatting import format_up

    def add_common(parser):
        parser.add_argument("--json", action="store_true", help="print one JSON object")
        parser.add_argument("--digits", type=int, default=DEFAULT_DIGITS,
                            help=f"working precision in decimal digits (default {DEFAULT_DIGITS})")

    def emit(args, record, lines):
        if args.json:
            print(json.dumps(record))
        else:
            for line in lines:
                print(line)
        return 0

    def run_sigma(args):
        with precision(args.digits):
            sigma = divergences.gaussian_sigma(args.eps, args.delta, args.sensitivity)
            classical = None
            if 0 < args.eps < 1:
                classical = divergences.classical_gaussian_sigma(args.eps, args.delta,
                                                                 args.sensitivity)
        record = {"eps": args.eps, "delta": args.delta, "sensitivity": args.sensitivity,
                  "sigma": sigma, "classical_sigma": classical, "digits": args.digits}
        lines = [f"sigma = {format_up(sigma, None)}  (analytic Gaussian mechanism, "
                 f"Balle & Wang 2018; rounded up)"]
        if classical is not None:
            lines.append(f"classical sigma = {format_up(classical, None)}  (Dwork & Roth 2014, "
                         f"eps < 1 only; {classical / sigma:.4f}x the analytic value)")
        return emit(args, record, lines)

    def run_delta(args):
        with precision(args.digits):
            delta = divergences.gaussian_delta(args.eps, args.sensitivity, args.sigma)
        record = {"eps": args.eps, "sensitivity": args.sensitivity, "sigma": args.sigma,
                  "delta": delta, "digits": args.digits}
        return emit(args, record,
                    [f"delta = {format_up(delta, None)}  (exact Gaussian profile; rounded up)"])

    def run_epsilon(args):
        with precision(args.digits):
            eps = divergences.gaussian_epsilon(args.delta, args.sensitivity, args.sigma)
        record = {"delta": args.delta, "sensitivity": args.sensitivity, "sigma": args.sigma,
                  "eps": eps, "digits": args.digits}
        return emit(args, record,
                    [f"eps = {format_up(eps, None)}  (exact Gaussian profile; rounded up)"])

    p = subparsers.add_parser(
        "gaussian-sigma", help="noise std of an (eps, delta)-DP Gaussian mechanism",
        description="Smallest sigma with theta_eps(sensitivity/sigma) <= delta (analytic "
                    "Gaussian mechanism), rounded up; the classical sqrt(2 ln(1.25/delta)) "
                    "value is shown beside it when eps < 1.")
    p.add_argument("--eps", type=float, required=True, help="epsilon >= 0")
    p.add_argument("--delta", type=float, required=True, help="delta in (0, 1)")
    p.add_argument("--sensitivity", type=float, required=True, help="L2 sensitivity > 0")
    add_common(p)
    p.set_defaults(handler=run_sigma)

    p = subparsers.add_parser(
        "gaussian-delta", help="delta of a Gaussian mechanism at a given eps",
        description="Exact privacy profile theta_eps(sensitivity/sigma), rounded up.")
    p.add_argument("--eps", type=float, required=True, help="epsilon >= 0")
    p.add_argument("--sensitivity", type=float, required=True, help="L2 sensitivity >= 0")
    p.add_argument("--sigma", type=float, required=True, help="noise standard deviation > 0")
    add_common(p)
    p.set_defaults(handler=run_delta)

    p = subparsers.add_parser(
        "gaussian-epsilon", help="smallest eps of a Gaussian mechanism at a given delta",
        description="Smallest eps >= 0 with theta_eps(sensitivity/sigma) <= delta, rounded up.")
    p.add_argument("--delta", type=float, required=True, help="delta in (0, 1)")
    p.add_argument("--sensitivity", type=float, required=True, help="L2 sensitivity >= 0")
    p.add_argument("--sigma", type=float, required=True, help="noise standard deviation > 0")
    add_common(p)
    p.set_defaults(handler=run_epsilon)


def register(subparsers) -> None:
    _register_primitives(subparsers)
    _register_bounds(subparsers)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="certunlearn", description="Accountant for certified unlearning (no torch needed).")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    register(subparsers)
    return parser


def run(parser: argparse.ArgumentParser, argv=None) -> int:
    """Parse ``argv`` and run the chosen subcommand.

    Invalid input is one line on stderr and exit code 2; a file that cannot be read or written
    (missing folder, no permission, full disk) is one line and exit code 1. No traceback.
    """
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except ValueError as exc:
        print(f"certunlearn {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"certunlearn {args.command}: error: {exc}", file=sys.stderr)
        return 1


def main(argv=None) -> int:
    return run(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
