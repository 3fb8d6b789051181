"""The malloc arena cap: applied on glibc (this project's Linux images), a no-op when off."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from embedder.malloc import limit_malloc_arenas


def test_zero_means_glibc_default() -> None:
    assert limit_malloc_arenas(0) is False


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt(M_ARENA_MAX) is glibc's")
def test_applied_on_glibc_in_a_fresh_process() -> None:
    # In a child: the cap is process-wide and must not change the test runner's allocator.
    code = "from embedder.malloc import limit_malloc_arenas as f; print(f(2))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "True"
