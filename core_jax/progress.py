"""Progress bars that keep CI and multi-host logs clean.

On an interactive terminal of JAX process 0 this is a plain ``tqdm`` bar. Elsewhere:

* processes other than 0 print nothing;
* when stderr is not a TTY (CI, ``nohup``, log files) and ``CORE_JAX_PROGRESS`` is not "1",
  the bar is replaced by one plain line per ~10% of progress (with the postfix), e.g.
  ``train: 300/1000 (30%) 12.1 it/s loss=2.31``.

Example::

    for step in progress(range(start, steps), desc="train", initial=start):
        ...
    bar = progress(total_steps, desc="eval")  # a bare total: advance with bar.update(n)
    bar.set_postfix({"loss": 2.3})
    bar.update(1)
    bar.close()
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import jax
from tqdm import tqdm

__all__ = ["progress", "PlainProgress"]

PROGRESS_ENV = "CORE_JAX_PROGRESS"


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    try:
        if getattr(value, "size", None) == 1:  # numpy / jax scalar
            return f"{float(value):.4g}"
    except (TypeError, ValueError):
        pass
    return str(value)


class PlainProgress:
    """Line-per-~10% progress reporter with the parts of the tqdm API used here.

    Args:
        iterable: Iterable to wrap, or None when driven by :meth:`update`.
        total: Total number of steps (inferred from ``len(iterable)`` when possible).
        desc: Prefix of each line.
        initial: Steps already done (e.g. when resuming).
        file: Stream to print to (default stderr).
        enabled: If False, prints nothing (processes other than 0).
    """

    def __init__(
        self,
        iterable: Iterable | None = None,
        *,
        total: int | None = None,
        desc: str = "",
        initial: int = 0,
        file=None,
        enabled: bool = True,
    ):
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable) + initial
        self.iterable = iterable
        self.total = total
        self.desc = desc
        self.n = initial
        self.file = file
        self.enabled = enabled
        self.postfix: dict[str, Any] = {}
        self._start = time.perf_counter()
        self._start_n = initial
        self._next_report = self._next_threshold(initial)
        self._last_printed = initial
        self._closed = False

    def _next_threshold(self, n: int) -> int | None:
        if not self.total:
            return None
        tenth = max(1, self.total // 10)
        return (n // tenth + 1) * tenth

    def _print(self) -> None:
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self._start
        rate = (self.n - self._start_n) / elapsed if elapsed > 0 else 0.0
        done = (
            f"{self.n}/{self.total} ({100 * self.n / self.total:.0f}%)"
            if self.total
            else str(self.n)
        )
        parts = [f"{self.desc}: {done}", f"{rate:.3g} it/s"]
        parts += [f"{k}={_format_value(v)}" for k, v in self.postfix.items()]
        print(" ".join(parts), file=self.file or sys.stderr, flush=True)
        self._last_printed = self.n

    def update(self, n: int = 1) -> None:
        """Advances by ``n`` steps, printing a line each time another ~10% is reached."""
        self.n += n
        if self._next_report is not None and self.n >= self._next_report:
            self._print()
            self._next_report = self._next_threshold(self.n)

    def set_postfix(self, ordered_dict: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        """Sets the ``key=value`` pairs shown on the next line (like ``tqdm.set_postfix``)."""
        self.postfix = {**(ordered_dict or {}), **kwargs}

    def set_description(self, desc: str) -> None:
        self.desc = desc

    def close(self) -> None:
        """Prints a final line unless the last one already showed the current count. Idempotent."""
        if not self._closed and self.n != self._last_printed:
            self._print()
        self._closed = True

    def __iter__(self) -> Iterator:
        if self.iterable is None:
            raise TypeError("This progress reporter wraps no iterable; call update() instead.")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __len__(self) -> int:
        if self.total is None:
            raise TypeError("Progress total is unknown.")
        return self.total

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _interactive(file) -> bool:
    if os.environ.get(PROGRESS_ENV) == "1":
        return True
    try:
        return (file or sys.stderr).isatty()
    except (AttributeError, ValueError):  # replaced or closed stream
        return False


def progress(
    iterable_or_total: Iterable | int,
    *,
    desc: str,
    initial: int = 0,
    disable: bool | None = None,
    total: int | None = None,
    file=None,
) -> tqdm | PlainProgress:
    """Returns a progress bar over an iterable, or over ``range``-like step counting for an int.

    Args:
        iterable_or_total: Iterable to wrap, or the total number of steps (then advance the bar
            with ``.update(n)``).
        desc: Label shown before the bar.
        initial: Steps already completed (resumed runs); the bar starts there. For an iterable,
            the iterable should yield only the remaining items.
        disable: True hides all output; False forces a bar even on processes other than 0;
            None (default) decides automatically (see the module docstring).
        total: Total steps when wrapping an iterable without ``len`` (or to override it).
        file: Output stream (default stderr).

    Returns:
        A ``tqdm`` bar on an interactive terminal (or with ``CORE_JAX_PROGRESS=1``), otherwise a
        :class:`PlainProgress`. Both support iteration, ``update``, ``set_postfix``, ``close`` and
        use as a context manager.
    """
    if isinstance(iterable_or_total, bool) or (
        isinstance(iterable_or_total, int) and iterable_or_total < 0
    ):
        raise ValueError(f"progress() total must be a non-negative int, got {iterable_or_total!r}.")
    if isinstance(iterable_or_total, int):
        iterable, total = None, iterable_or_total
    else:
        iterable = iterable_or_total
        if total is None and hasattr(iterable, "__len__"):
            total = len(iterable) + initial
    if disable is None:
        disable = jax.process_index() != 0
    if disable:
        return PlainProgress(iterable, total=total, desc=desc, initial=initial, enabled=False)
    if _interactive(file):
        return tqdm(
            iterable, total=total, desc=desc, initial=initial, file=file, dynamic_ncols=True
        )
    return PlainProgress(iterable, total=total, desc=desc, initial=initial, file=file)
