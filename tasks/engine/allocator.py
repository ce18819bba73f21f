"""Keep freed memory inside the process, so that a training step's large tensors do not page-fault.

On CPU, PyTorch takes tensors from the C library's ``malloc``. glibc serves blocks over its
mmap threshold with fresh ``mmap`` pages and gives the top of its heap back to the kernel
whenever more than the trim threshold is free; a training step that frees and reallocates the
same few megabytes of activations every step then touches brand-new pages each time, and the
kernel zero-fills every one of them (measured on the 64 px VQ autoencoder: 1.4-2.4 million
minor page faults in 240 steps; with the thresholds raised, 0.1 million and 8% less CPU time;
``benchmarks/allocator_speed.py``, figures in BENCHMARKS.md). The cost is that the process keeps its peak heap
until it exits,
which is what a training or sampling run wants.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

from core import UserError

MMAP_THRESHOLD = 32 * 1024 * 1024
"""Blocks up to this size come from the heap: glibc's largest allowed mmap threshold on 64-bit."""
TRIM_THRESHOLD = 2**31 - 1
"""Free heap memory up to this size is kept (the largest value ``mallopt`` accepts)."""

OPT_OUT = "LDM_KEEP_FREED_MEMORY"
"""Set to ``0`` (or ``false``, ``no``, ``off``) to leave the C library's defaults (e.g. where memory is tight)."""

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
_YES, _NO = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process; returns whether they were set.

    Does nothing (returns False) off Linux, with another C library, with ``LDM_KEEP_FREED_MEMORY=0``,
    or when the user chose thresholds through glibc's own ``MALLOC_MMAP_THRESHOLD_`` /
    ``MALLOC_TRIM_THRESHOLD_`` environment variables. Affects only allocations made after the call.
    Raises :class:`UserError` if ``LDM_KEEP_FREED_MEMORY`` is set to something else than a yes or no.
    """
    choice = os.environ.get(OPT_OUT, "1").strip().lower()
    if choice not in _YES + _NO:
        raise UserError(
            f"{OPT_OUT}={os.environ[OPT_OUT]!r} is not understood; set it to 1 (keep freed memory, "
            "the default) or 0 (leave the C library's defaults)"
        )
    if choice in _NO or not sys.platform.startswith("linux") or any(name in os.environ for name in _USER_SETTINGS):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    if not hasattr(libc, "gnu_get_libc_version"):  # musl and others have no such thresholds
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
