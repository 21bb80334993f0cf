"""Freed memory kept in the process while a model runs forward passes (glibc's malloc).

A TransformerLens forward pass on the CPU allocates and frees its activations op by op. glibc hands
freed memory at the top of its heap back to the kernel once more of it is free than its trim
threshold (by its own heuristic, twice the largest block freed so far), so the next pass takes the
memory back a page at a time, each page a fault the kernel zero-fills: 60,000-450,000 faults and up to
1 s of kernel time per four 32-example batches of a GPT-2-small-shaped model through 12 blocks on
this 2-core VM, a tenth of the pass's CPU time (docs/benchmarks-log.md).

Within `forward_memory()` freed memory stays in the heap (M_TRIM_THRESHOLD 1 GiB; blocks up to
32 MiB, glibc's own ceiling, from the heap rather than a mapping of their own), so later passes
reuse it: the peak is the passes' own, it is only not given back between them. On the way out the
free memory is handed back (malloc_trim) and the trim threshold set to 64 MiB, what glibc's own
heuristic reaches after freeing a 32 MiB block (mallopt ends that heuristic for the process: the
process then keeps up to 64 MiB of free memory at the top of its heap).

Nothing is changed where malloc is not glibc's, where ACTSTORE_MALLOC is 0 / off / false / no, or where the environment
sets glibc's malloc itself (MALLOC_*_ variables, GLIBC_TUNABLES): the user's choice stands.

A process forked inside a block starts outside it: the child gets the setting after (the 64 MiB threshold), and a
block it leaves that its parent entered changes nothing there.
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameters (malloc.h)
MMAP_THRESHOLD = 32 << 20  # glibc's dynamic ceiling (DEFAULT_MMAP_THRESHOLD_MAX on 64-bit)
TRIM_DURING = 1 << 30
TRIM_AFTER = 2 * MMAP_THRESHOLD  # as glibc's heuristic sets it after freeing an MMAP_THRESHOLD block

OFF = ("0", "off", "false", "no")  # ACTSTORE_MALLOC values that leave malloc alone (any case)

_LOCK = threading.Lock()
_DEPTH = 0  # forward_memory blocks open in this process (threads may nest or overlap them)


def tunable() -> bool:
    """Whether forward_memory changes anything here: glibc's malloc, not set by the environment or turned off."""
    if os.environ.get("ACTSTORE_MALLOC", "").strip().lower() in OFF or "malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    if any(k.startswith("MALLOC_") and k.endswith("_") for k in os.environ):
        return False
    return _glibc() is not None


@functools.cache
def _glibc() -> Any:
    """The process's C library with mallopt and malloc_trim typed, or None where malloc is not glibc's."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        lib = ctypes.CDLL(None)
        lib.mallopt.argtypes, lib.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        lib.malloc_trim.argtypes, lib.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    except (OSError, AttributeError):
        return None
    return lib


@contextmanager
def forward_memory() -> Iterator[bool]:
    """Keep freed memory in the heap within this block (see the module docstring); yields whether it does.
    Usable as a decorator; nested or overlapping blocks (other threads) restore once, when the last ends."""
    global _DEPTH
    if not tunable():
        yield False
        return
    lib = _glibc()
    pid = os.getpid()
    with _LOCK:
        _DEPTH += 1
        if _DEPTH == 1:
            lib.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
            lib.mallopt(M_TRIM_THRESHOLD, TRIM_DURING)
    try:
        yield True
    finally:
        if os.getpid() == pid:  # else a forked child leaving its parent's block: _after_fork set it already
            with _LOCK:
                _DEPTH -= 1
                if _DEPTH == 0:
                    lib.mallopt(M_TRIM_THRESHOLD, TRIM_AFTER)
                    lib.malloc_trim(0)


def _after_fork() -> None:
    """In a child forked inside a block: no block open, the setting after it (and a fresh lock: another thread may
    have held it at the fork)."""
    global _DEPTH, _LOCK
    _LOCK = threading.Lock()
    if _DEPTH:
        _DEPTH = 0
        _glibc().mallopt(M_TRIM_THRESHOLD, TRIM_AFTER)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)
