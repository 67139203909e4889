"""Give freed memory back to the system (glibc's malloc; elsewhere these do nothing).

``return_large_buffers``: large buffers are mapped and unmapped, not pooled.
glibc's malloc serves allocations above a threshold (128 KiB) with their own memory maps,
returned to the system when freed, but it raises that threshold each time such a map is freed
(up to 32 MiB), after which decoded images (Pillow allocates them in blocks of up to 16 MiB)
and batches come from its heaps and their memory stays with the process: one request of large
images left the server 3.5 GB larger after it had finished. Setting the threshold explicitly
turns that adjustment off. It is set at 4 MiB, not glibc's 128 KiB: every buffer of an
ordinary request (a 224 x 224 photo and its tensor are under 1 MiB) is then reused from the
heap, where mapping and unmapping each of them had cost MobileNetV2 7 % of its throughput
(``python -m benchmarks.ab``, one core, concurrency 32), while a large image's blocks and a
large batch still go back to the system when freed.

``trim_heap``: the heaps' free pages back to the system, after a model is released (freeing a
MobileNetV2 copy left 70 MB with the process without it).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from typing import Any

__all__ = ["MMAP_THRESHOLD", "return_large_buffers", "trim_heap"]

log = logging.getLogger(__name__)
MMAP_THRESHOLD = 4 * 1024 * 1024
_M_MMAP_THRESHOLD = -3  # mallopt's parameter number, from glibc's malloc.h


def _libc_function(name: str) -> Any:
    library = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(library), name, None) if library else None
    except OSError:
        return None


def return_large_buffers() -> bool:
    """Fix glibc's mmap threshold (idempotent); False where malloc is not glibc's."""
    mallopt = _libc_function("mallopt")
    if mallopt is None:
        log.debug("no mallopt (not glibc): freed memory is returned as the allocator decides")
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))


def trim_heap() -> None:
    """Give the C heaps' free pages back to the system."""
    malloc_trim = _libc_function("malloc_trim")
    if malloc_trim is not None:
        malloc_trim(0)
