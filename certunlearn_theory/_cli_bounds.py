"""Subcommands of the unlearning bounds (noise-for, epsilon-for, steps-for)."""


def register(subparsers) -> None:
    """Add the unlearning-bound subcommands."""
