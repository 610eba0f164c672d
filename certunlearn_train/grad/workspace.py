"""Reused CPU buffers for the large temporaries of a per-sample step (patches of a convolution).

A fresh multi-megabyte CPU tensor is usually a fresh mapping from the operating system, so
each step would pay a page fault for every 4 KiB it writes (measured: unfolding a (256, 576,
64) patch tensor took 43 ms instead of 8). The engine keeps one :class:`Workspace` and makes
it current while the layer rules run; :func:`scratch` hands a rule a buffer that lives as long
as the engine and is reused step after step. Each buffer is named by the rule's call (a layer
called twice in one forward gets two), so buffers alive in the same step never alias. Off
the CPU (CUDA has a caching allocator) and with no workspace current, it is ``torch.empty``.
"""
from __future__ import annotations

import contextlib
import math
import threading
from typing import Dict, Hashable, Tuple

import torch

__all__ = ["Workspace", "scratch"]

#: Temporaries smaller than this are allocated as usual (the allocator serves them from memory
#: it already holds).
MIN_BYTES = 1 << 20

_current = threading.local()


class Workspace:
    def __init__(self):
        self._buffers: Dict[Tuple[Hashable, ...], torch.Tensor] = {}

    @contextlib.contextmanager
    def active(self, call: Hashable):
        """Make this workspace current for the rule of ``call`` (a key unique within a step)."""
        previous = getattr(_current, "value", None)
        _current.value = (self, call)
        try:
            yield
        finally:
            _current.value = previous

    def empty(self, key: Tuple[Hashable, ...], shape, dtype: torch.dtype,
              device: torch.device) -> torch.Tensor:
        numel = math.prod(shape)
        buf = self._buffers.get(key)
        if buf is None or buf.dtype != dtype or buf.device != device or buf.numel() < numel:
            buf = torch.empty(numel, dtype=dtype, device=device)
            self._buffers[key] = buf
        return buf[:numel].view(shape)


def scratch(name: str, shape, like: torch.Tensor) -> torch.Tensor:
    """An uninitialised tensor of ``shape`` with ``like``'s dtype and device; from the current
    workspace when there is one, the device is the CPU and it is at least ``MIN_BYTES``."""
    current = getattr(_current, "value", None)
    if (current is None or like.device.type != "cpu"
            or math.prod(shape) * like.element_size() < MIN_BYTES):
        return like.new_empty(shape)
    workspace, call = current
    return workspace.empty((call, name), shape, like.dtype, like.device)
