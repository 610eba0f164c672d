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
    """Subcommands of the Gaussian primitives (gaussian-sigma, gaussian-delta, gaussian-epsilon)."""


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


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except ValueError as exc:  # invalid input: one line, no traceback
        print(f"certunlearn {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
