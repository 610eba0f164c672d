"""The ``certunlearn`` console script: accountant subcommands plus the training subcommands.

Accountant subcommands import no torch; training subcommands import it when they run.
"""
from __future__ import annotations

import argparse
import sys

from certunlearn_theory import cli as theory_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="certunlearn",
        description="Certified unlearning by noisy fine-tuning on the retained data.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    theory_cli.register(subparsers)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except ValueError as exc:
        print(f"certunlearn {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
