"""core_jax.memory: procfs figures and glibc malloc_trim (known-answer: pinned freed heap)."""

import ctypes
import ctypes.util
import os

import pytest

from core_jax import memory

linux = pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs procfs")


@linux
def test_rss_figures_are_consistent():
    rss, peak = memory.rss_mb(), memory.peak_rss_mb()
    assert 1.0 < rss <= peak
    assert memory.status_kb("VmRSS") is not None
    assert memory.status_kb("NoSuchField") is None


@linux
def test_status_kb_rejects_non_kb_field():
    with pytest.raises(ValueError, match="Threads"):
        memory.status_kb("Threads")


def test_negative_pad_is_an_error():
    with pytest.raises(ValueError, match="pad"):
        memory.malloc_trim(-1)


@linux
@pytest.mark.skipif(memory._libc() is None, reason="needs glibc malloc_trim")
def test_malloc_trim_returns_freed_heap_pages():
    # 96 MiB of 64 KiB blocks (below glibc's mmap threshold: they come from the heap), each
    # followed by a small block that stays allocated, so the freed blocks cannot merge into the
    # heap top and free() alone cannot hand their pages back.
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    block, n = 64 * 1024, 96 * 16
    ptrs, pins = [], []
    for _ in range(n):
        ptrs.append(libc.malloc(block))
        pins.append(libc.malloc(2000))
    for p in ptrs:
        ctypes.memset(p, 1, block)  # touch: make the pages resident
    touched = memory.rss_mb()
    for p in ptrs:
        libc.free(p)
    freed = memory.rss_mb()
    assert memory.malloc_trim() is True
    trimmed = memory.rss_mb()
    for p in pins:
        libc.free(p)
    assert freed > touched - 16  # free() kept (almost) all of it resident
    assert trimmed < freed - 64  # malloc_trim gave at least 64 of the 96 MiB back
