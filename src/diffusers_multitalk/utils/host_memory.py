"""Giving freed host memory back to the OS between chunks, so a long video's resident size stays flat."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    # glibc keeps freed heap pages of the many mid-sized CPU tensors of a chunk (VAE frames, colour matching) in its
    # arenas; without a trim the resident size creeps up chunk after chunk. Other C libraries have no such call.
    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:
        return None


def release_host_memory() -> None:
    """Returns the C heap's free pages to the OS (glibc's `malloc_trim`); a no-op where there is none."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
