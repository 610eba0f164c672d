"""keep_freed_memory: glibc's malloc keeps freed large blocks (no fresh mapping per step)."""
import ctypes
import subprocess
import sys

from certunlearn_train import allocator

PROBE = r"""
import ctypes, resource, sys
sys.path.insert(0, {root!r})
from certunlearn_train.allocator import keep_freed_memory
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
if {keep}:
    assert keep_freed_memory()
faults = []
for step in range(6):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    blocks = [libc.malloc(8 << 20) for _ in range(3)]   # a step's temporaries
    for p in blocks:
        ctypes.memset(p, 1, 8 << 20)                     # written page by page
    for p in blocks:
        libc.free(p)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(min(faults[2:]))
"""


def _faults_per_step(keep: bool) -> int:
    root = str(__import__("pathlib").Path(allocator.__file__).resolve().parents[1])
    out = subprocess.run([sys.executable, "-c", PROBE.format(root=root, keep=keep)],
                         capture_output=True, text=True, timeout=60, check=True)
    return int(out.stdout.strip())


def test_freed_blocks_are_reused_instead_of_mapped_again():
    # three 8 MiB blocks written per step are 6144 pages: with glibc's defaults the freed top
    # of the heap is trimmed and every step faults them in again; once freed memory is kept,
    # steps after the first reuse the same pages
    if allocator.platform.libc_ver()[0] != "glibc":
        import pytest
        pytest.skip("not glibc")
    assert _faults_per_step(False) >= 3000
    assert _faults_per_step(True) <= 100


def test_elsewhere_it_is_a_no_op(monkeypatch):
    monkeypatch.setattr(allocator, "_applied", False)
    monkeypatch.setattr(allocator.platform, "libc_ver", lambda: ("", ""))
    calls = []
    monkeypatch.setattr(ctypes, "CDLL", lambda *a, **k: calls.append(a))
    assert allocator.keep_freed_memory() is False
    assert calls == []


def test_the_command_line_keeps_freed_memory(monkeypatch):
    from certunlearn_train import cli
    seen = []
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda: seen.append(True) or True)
    code = cli.main(["verify", "/nonexistent/certificate.json"])
    assert code != 0 and seen == [True]
