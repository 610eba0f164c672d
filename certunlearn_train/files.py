"""Writing result files safely: through a temporary file in the same folder and a rename."""
from __future__ import annotations

import os
import tempfile
from typing import List

__all__ = ["atomic_write_bytes", "write_together"]


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory and a rename."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_together(files: List[tuple]) -> None:
    """Write ``[(path, bytes), ...]`` so that either every file is new or none changed.

    Each file is first written in full to a temporary file next to it; then the temporary files
    are renamed over their targets, and if one rename fails the targets already replaced get
    their previous content back (hard links kept until the end).
    """
    temps, done = [], []
    try:
        for path, data in files:
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)),
                                       prefix=".tmp-", suffix=os.path.basename(path))
            temps.append(tmp)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        for (path, _), tmp in zip(files, temps):
            old = None
            if os.path.lexists(path):
                old = tmp + ".old"
                os.link(path, old)
            done.append((path, old))
            os.replace(tmp, path)
    except BaseException:
        for path, old in reversed(done):
            try:
                if old is not None:
                    os.replace(old, path)
                elif os.path.lexists(path):
                    os.unlink(path)
            except OSError:
                pass
        raise
    finally:
        for tmp in temps:
            for leftover in (tmp, tmp + ".old"):
                if os.path.lexists(leftover):
                    os.unlink(leftover)
