"""Returning freed memory to the system between the calibrated path's phases.

glibc keeps freed blocks below its (adaptive, up to 32 MiB) mmap threshold in its heaps, so a
big model's forward leaves gigabytes of freed activations counted in the process's RSS; the
next phase (the H of every layer, the sensitivity replay's graph) then adds to that instead of
reusing it. malloc_trim hands the free pages back. Elsewhere (no glibc) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from functools import cache
from typing import Any


@cache
def _libc() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def release_freed() -> None:
    """Give the heap's free pages back to the system (glibc's malloc_trim)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
