"""Timing harness shared by the benchmarks.

Conventions (see ARCHITECTURE.md, "Benchmarks"):

* compile time is measured and reported separately from step time;
* every timed call ends with ``jax.block_until_ready`` (JAX) or is synchronous (PyTorch eager);
* ``warmup`` untimed calls, then ``repeats`` timed calls; we report median, min and max;
* competing implementations are timed *interleaved* (A, B, A, B, ...) in the same process, so
  that a noisy machine (other jobs on the same cores) slows both sides alike and the ratio stays
  meaningful;
* each benchmark returns a JSON-able dict that ``benchmarks.run`` writes to ``<out>/<name>.json``
  and renders as a markdown table.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax


@dataclasses.dataclass
class Timing:
    """Wall-clock seconds of the timed repeats of one implementation."""

    times: list[float]
    compile_s: float | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def min(self) -> float:
        return min(self.times)

    @property
    def max(self) -> float:
        return max(self.times)

    def to_dict(self) -> dict[str, Any]:
        return {
            "times_s": self.times,
            "median_s": self.median,
            "min_s": self.min,
            "max_s": self.max,
            "compile_s": self.compile_s,
        }


def block(x: Any) -> Any:
    """``jax.block_until_ready`` on any pytree (no-op for non-JAX leaves)."""
    return jax.block_until_ready(x)


def time_call(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    block(fn())
    return time.perf_counter() - t0


def time_interleaved(
    fns: dict[str, Callable[[], Any]], *, warmup: int = 1, repeats: int = 5
) -> dict[str, Timing]:
    """Times several zero-argument callables round-robin.

    Args:
      fns: name -> callable; each call must do one complete unit of work (its result is passed
        to ``jax.block_until_ready``).
      warmup: untimed calls of each callable first.
      repeats: timed calls of each callable.

    Returns:
      name -> :class:`Timing`.
    """
    for _ in range(warmup):
        for fn in fns.values():
            block(fn())
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(time_call(fn))
    return {name: Timing(ts) for name, ts in times.items()}


def compile_jitted(jitted: Any, *args: Any) -> tuple[Any, float]:
    """``jitted.lower(*args).compile()`` and its wall time (trace + lower + compile)."""
    t0 = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    return compiled, time.perf_counter() - t0


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _cpu_busy_fraction(seconds: float = 0.5) -> float | None:
    """Fraction of all CPUs busy (any process, any container) over a short window."""

    def read():
        with open("/proc/stat") as f:
            vals = [int(v) for v in f.readline().split()[1:]]
        idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
        return sum(vals), idle

    try:
        t0, i0 = read()
        time.sleep(seconds)
        t1, i1 = read()
    except OSError:
        return None
    return 1.0 - (i1 - i0) / max(t1 - t0, 1)


def environment(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Versions, devices, thread counts and flags that affect the numbers."""
    import jaxlib

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "jax_backend": jax.default_backend(),
        "jax_devices": [str(d) for d in jax.devices()],
        "jax_device_kind": jax.devices()[0].device_kind,
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
        "env_threads": {
            k: os.environ.get(k)
            for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "TF_NUM_INTRAOP_THREADS")
        },
        "jax_default_matmul_precision": str(jax.config.jax_default_matmul_precision),
        "loadavg_before": _loadavg(),
        "cpu_busy_fraction_before": _cpu_busy_fraction(),
    }
    try:
        import torch

        env["torch"] = torch.__version__
        env["torch_num_threads"] = torch.get_num_threads()
        env["torch_num_interop_threads"] = torch.get_num_interop_threads()
        env["torch_mkldnn"] = bool(torch.backends.mkldnn.is_available())
    except ImportError:
        env["torch"] = None
    if extra:
        env.update(extra)
    return env


def _loadavg() -> list[float] | None:
    try:
        return [float(v) for v in os.getloadavg()]
    except OSError:
        return None


def fmt(v: Any) -> str:
    if isinstance(v, float):
        if v == 0 or 1e-3 <= abs(v) < 1e5:
            return f"{v:.4g}" if abs(v) < 10 else f"{v:,.1f}"
        return f"{v:.3e}"
    return str(v)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """Rows of dicts -> a GitHub markdown table (columns default to the first row's keys)."""
    if not rows:
        return ""
    columns = list(columns or rows[0].keys())
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(fmt(row.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)


def write_json(path: str, result: dict[str, Any]) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=2, sort_keys=False, default=str)
        f.write("\n")
