"""The malloc arena cap: applied on glibc (this project's Linux images), a no-op when off."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

from embedder.malloc import MallocTrimmer, heap_free_bytes, tune_malloc


def test_zero_means_glibc_default() -> None:
    assert tune_malloc(0) is False


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt(M_ARENA_MAX) is glibc's")
def test_applied_on_glibc_in_a_fresh_process() -> None:
    # In a child: the cap is process-wide and must not change the test runner's allocator.
    code = "from embedder.malloc import tune_malloc as f; print(f(2))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "True"


# In a child: allocate 64 MiB in 64-KiB blocks from the heap (below the fixed mmap threshold), each
# followed by a small block that stays live, free the big ones (free but resident: the heap cannot
# shrink past the small ones), then one trim check. Prints the free MiB, whether it trimmed, and RSS
# before and after the check (MiB).
_FRAGMENT = """
import ctypes, json
from embedder.malloc import MallocTrimmer, heap_free_bytes, tune_malloc
def rss():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS")) / 1024
tune_malloc(2)
trimmer = MallocTrimmer(trim_free_mb=float(%r))  # before the burst, as the server starts it
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
big, small = [], []
for _ in range(1024):
    big.append(libc.malloc(64 * 1024))
    ctypes.memset(big[-1], 1, 64 * 1024)
    small.append(libc.malloc(64))
for block in big:
    libc.free(block)
free_mib = heap_free_bytes() / 2**20
before = rss()
trimmed = trimmer.trim_if_needed()
print(json.dumps([free_mib, trimmed, before, rss()]))
"""


def _fragment(trim_free_mb: float) -> tuple[float, bool, float, float]:
    code = _FRAGMENT % trim_free_mb
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    free_mib, trimmed, before, after = json.loads(out)
    return free_mib, trimmed, before, after


@pytest.mark.skipif(heap_free_bytes() is None, reason="malloc_trim/mallinfo2: glibc 2.33+ only")
def test_trimmer_returns_free_heap_pages_after_a_burst() -> None:
    free_mib, trimmed, before, after = _fragment(trim_free_mb=32)
    assert free_mib >= 60  # the freed blocks stayed in the heap, resident
    assert trimmed
    assert before - after >= 48, (before, after)  # most of the 64 MiB went back to the OS


@pytest.mark.skipif(heap_free_bytes() is None, reason="malloc_trim/mallinfo2: glibc 2.33+ only")
def test_trimmer_leaves_the_heap_alone_below_its_threshold() -> None:
    free_mib, trimmed, before, after = _fragment(trim_free_mb=256)
    assert free_mib >= 60 and not trimmed
    assert after >= before - 4  # nothing returned


def test_trimmer_off_at_zero() -> None:
    trimmer = MallocTrimmer(trim_free_mb=0).start()
    assert not trimmer.active and not trimmer.trim_if_needed()
    trimmer.stop()


@pytest.mark.skipif(heap_free_bytes() is None, reason="malloc_trim/mallinfo2: glibc 2.33+ only")
def test_trimmer_does_not_trim_again_what_it_cannot_return() -> None:
    # Free bytes that stay free after a trim (chunks it cannot hand back) do not trigger a trim a second
    # later; only a new burst's growth past the threshold does.
    trimmer = MallocTrimmer(trim_free_mb=32)
    assert trimmer.active
    trimmer._floor = -(2**40)  # as if the heap had grown by far more than the threshold: trims
    assert trimmer.trim_if_needed()
    assert not trimmer.trim_if_needed()
    assert trimmer.trims == 1
