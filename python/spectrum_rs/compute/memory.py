"""Hands freed heap memory back to the operating system after each layer. glibc's malloc
raises its mmap threshold after the first large free, so later matrices of a few MiB
come from heap arenas that keep their pages when freed: peak resident memory of a CPU
scan of `small` varied from 380 to 450 MiB over runs, and grew with the number of
layers. ``malloc_trim(0)`` after each layer brought it to 305-347 MiB, with the 8x-layers
model at 344-347 MiB (benches/results). A no-op where the C library is not glibc."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from typing import Callable, Optional


def _find_trim() -> Optional[Callable[[int], int]]:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim  # glibc only (musl has none)
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_TRIM = _find_trim()


def release_freed() -> None:
    """Returns the heap's free pages to the OS (every malloc arena), where possible."""
    if _TRIM is not None:
        _TRIM(0)
