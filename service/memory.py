"""Give freed memory back to the system: large buffers are mapped and unmapped, not pooled.

glibc's malloc serves allocations above a threshold (128 KiB) with their own memory maps,
returned to the system when freed, but it raises that threshold each time such a map is freed
(up to 32 MiB), after which decoded images and batches come from its heaps and their memory
stays with the process: one request of large images left the server 3.5 GB larger after it
had finished. Setting the threshold explicitly turns that adjustment off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

__all__ = ["MMAP_THRESHOLD", "return_large_buffers"]

log = logging.getLogger(__name__)
MMAP_THRESHOLD = 128 * 1024
_M_MMAP_THRESHOLD = -3  # mallopt's parameter number, from glibc's malloc.h


def return_large_buffers() -> bool:
    """Fix glibc's mmap threshold (idempotent); False where malloc is not glibc's."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = getattr(libc, "mallopt", None)
    except OSError:
        mallopt = None
    if mallopt is None:
        log.debug("no mallopt (not glibc): freed memory is returned as the allocator decides")
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))
