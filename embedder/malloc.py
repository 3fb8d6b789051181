"""glibc's malloc arenas: how many the server's threads may spread their allocations over.

glibc gives a thread that finds the main arena busy an arena of its own, up to 8 per core, and memory a
thread frees stays in its arena for reuse there. After a burst of long texts tokenized and embedded on
several threads the process keeps that memory (issue 14: RSS 37% above its level before a 60 s flood;
`malloc_trim` did not bring it back). Capping the arenas (`M_ARENA_MAX`, what the `MALLOC_ARENA_MAX`
environment variable sets) makes threads share, and reuse, the same few.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

log = logging.getLogger(__name__)

M_ARENA_MAX = -8  # glibc's <malloc.h>


def limit_malloc_arenas(arenas: int) -> bool:
    """`mallopt(M_ARENA_MAX, arenas)` on glibc; True if applied. 0, another libc or another OS: no-op."""
    if arenas <= 0 or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
        gnu_get_libc_version = libc.gnu_get_libc_version  # glibc only: musl has mallopt as a stub
    except (OSError, AttributeError):
        return False
    gnu_get_libc_version.restype = ctypes.c_char_p
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    applied = bool(mallopt(M_ARENA_MAX, arenas) == 1)
    if applied:
        log.debug("malloc arenas capped at %d (glibc %s)", arenas, gnu_get_libc_version().decode())
    return applied
