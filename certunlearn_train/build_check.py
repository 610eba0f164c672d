"""Does the compiled extension match the torch that is running?

``setup.py`` writes ``certunlearn_train/_build_info.py`` with the torch version the extension
``certunlearn_train._C`` was compiled against. Loading that extension under another torch fails
with undefined symbols or, worse, crashes; :func:`extension_torch_mismatch` tells before the
import is tried, so the op can fall back to its pure-PyTorch implementation with a message that
says what to do.
"""
from __future__ import annotations

from typing import Optional

__all__ = ["built_against", "extension_torch_mismatch"]


def built_against() -> Optional[str]:
    """The torch version the extension was built against, or None if no build recorded one."""
    try:
        from ._build_info import TORCH_VERSION
    except ImportError:
        return None
    return str(TORCH_VERSION)


def extension_torch_mismatch(running: Optional[str] = None) -> Optional[str]:
    """A message when the extension was built against another torch than ``running``, else None.

    ``running`` defaults to the installed ``torch.__version__``.
    """
    built = built_against()
    if running is None:
        import torch
        running = torch.__version__
    if built is None or built == running:
        return None
    return (f"certunlearn_train._C was built against torch {built} but torch {running} is "
            "installed; rebuild it against this torch with `pip install --no-build-isolation "
            "--force-reinstall --no-deps certunlearn` (or `make setup` in a checkout)")
