"""Process memory: resident-set figures from ``/proc/self/status`` and glibc's ``malloc_trim``.

XLA:CPU compiles and runs through the C heap. glibc keeps freed heap pages mapped (they still
count in the resident set) until the top of the heap is free, so after a large compilation or an
op-by-op initialisation the process can stay hundreds of MB above what it uses.
:func:`malloc_trim` hands those pages back to the kernel::

    from core_jax import memory
    compiled = step.lower(state, batch).compile()
    memory.malloc_trim()            # release the compiler's freed scratch
    print(memory.rss_mb(), memory.peak_rss_mb())

``malloc_trim`` does not lower the peak (``VmHWM``): it only helps the peak if it runs before
the next allocation burst (e.g. after compiling, before the first training step allocates).
On a platform without glibc (macOS, musl) it does nothing and returns ``False``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

__all__ = ["malloc_trim", "peak_rss_mb", "rss_mb", "status_kb"]


def status_kb(field: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` (e.g. ``VmRSS``, ``VmHWM``); ``None`` if absent
    (no procfs).

    Raises:
      ValueError: ``field`` is present but not a ``kB`` figure.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                name, _, rest = line.partition(":")
                if name == field:
                    parts = rest.split()
                    if len(parts) != 2 or parts[1] != "kB":
                        raise ValueError(f"/proc/self/status {field}: not a kB value: {rest!r}")
                    return int(parts[0])
    except OSError:
        return None
    return None


def rss_mb() -> float | None:
    """Current resident set size in MiB (``VmRSS``), ``None`` without procfs."""
    kb = status_kb("VmRSS")
    return None if kb is None else kb / 1024.0


def peak_rss_mb() -> float | None:
    """Peak resident set size of the process in MiB (``VmHWM``, as ``ru_maxrss``)."""
    kb = status_kb("VmHWM")
    return None if kb is None else kb / 1024.0


@functools.cache
def _libc():
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        lib = ctypes.CDLL(name)
        fn = lib.malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return lib


def malloc_trim(pad: int = 0) -> bool:
    """Return the C heap's free pages to the kernel (glibc ``malloc_trim(pad)``).

    Args:
      pad: bytes to leave untrimmed at the top of the heap (glibc's argument).

    Returns:
      ``True`` if glibc released memory, ``False`` if there was nothing to release or the C
      library has no ``malloc_trim``.

    Raises:
      ValueError: ``pad`` is negative.
    """
    if pad < 0:
        raise ValueError(f"pad={pad}: must be >= 0")
    lib = _libc()
    if lib is None:
        return False
    return bool(lib.malloc_trim(pad))
