"""Keep freed CPU memory in the process, so that large per-step tensors do not page-fault.

glibc's malloc serves a large request (from 128 KiB, a threshold it raises as it sees larger
blocks freed) by a fresh mapping from the operating system and gives it back when freed; it
also trims the free top of its heap. A training step that allocates and frees the same
multi-megabyte tensors every step then pays a page fault per 4 KiB it writes, every step. On
the CIFAR-shaped CNN at batch 256 (one thread) that was 100 ms of a 410 ms plain step and 210
ms of a 614 ms per-sample step (docs/kernel.md). :func:`keep_freed_memory` sets, for this
process, the mapping threshold to 32 MiB (glibc's largest) and turns trimming off, so freed
blocks are reused; the process's resident memory then stays at its peak instead of shrinking
between steps. The ``certunlearn`` command does this at start; Python callers can call it
(once; it is a process-wide setting). Nothing happens on other C libraries (macOS, Windows,
musl), where it returns False.
"""
from __future__ import annotations

import ctypes
import platform

__all__ = ["keep_freed_memory"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20   # glibc refuses larger values on 64-bit systems
TRIM_THRESHOLD = 2 ** 31 - 1

_applied = False


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse (see the module docstring).

    Returns True when the setting is in force (glibc), False where it does not apply.
    """
    global _applied
    if _applied:
        return True
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")  # glibc's soname on Linux (no ldconfig lookup)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    _applied = (mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
                and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1)
    return _applied
