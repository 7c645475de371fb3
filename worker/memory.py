"""glibc's malloc, set for a process that runs the models: keep freed memory for the next batch.

A forward allocates and frees activations of megabytes hundreds of times. By default glibc gives the
top of its heap back to the kernel once more than 128 KiB is free there (and adapts its thresholds as
it goes), so the next batch faults the same pages in again. In a Celery worker on 2 cores of a Xeon
with AMX, the engine's batches ran about 10% slower than the same batches in a fresh process; with
freed memory kept (the settings below, tried as MALLOC_*_ environment variables), end to end went
from 0.87-0.93x to 0.96-0.99x an engine pass (bench/RESULTS.md). The cost: a worker's memory stays at
its peak instead of shrinking between batches, which a worker reaches again with the next batch.
"""

from __future__ import annotations

import ctypes
import logging
import platform
from functools import lru_cache

log = logging.getLogger(__name__)

# mallopt's parameters (malloc.h) and values: never trim the heap's top below 2 GiB free, grow it by
# 512 MiB at a time (address space; pages are only used when touched), serve blocks under 32 MiB
# (glibc's largest allowed) from the heap rather than fresh mappings.
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
SETTINGS = ((M_TRIM_THRESHOLD, 2**31 - 1), (M_TOP_PAD, 512 << 20), (M_MMAP_THRESHOLD, 32 << 20))


@lru_cache(maxsize=1)
def keep_freed_memory() -> bool:
    """Apply SETTINGS where the C library is glibc (once per process); False elsewhere (musl, macOS,
    Windows), where nothing changes."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    applied = all(mallopt(param, value) == 1 for param, value in SETTINGS)
    if not applied:
        log.warning("glibc refused a malloc setting; freed memory may go back to the OS between batches")
    return applied
