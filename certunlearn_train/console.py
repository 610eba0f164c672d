"""Process entry of the ``certunlearn`` console script (standard library only until it runs).

Ctrl-C is handled from the first import of the command's modules to the exit
(:mod:`certunlearn_train.interrupts`).
"""
from __future__ import annotations

from typing import Optional, Sequence

from .interrupts import run_command

__all__ = ["run"]


def _load_main():
    from .cli import main
    return main


def run(argv: Optional[Sequence[str]] = None) -> None:
    """Run the command line and exit with its code."""
    run_command(_load_main, argv)


if __name__ == "__main__":
    run()
