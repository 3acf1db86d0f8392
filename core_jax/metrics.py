"""Metric logging (JSON lines + TensorBoard), throughput/MFU accounting, and loss-curve plots.

``MetricWriter`` writes one JSON object per line to ``<workdir>/metrics.jsonl``
(``{"step": 100, "loss": 2.31, ...}``) and the same scalars to TensorBoard event files in
``<workdir>/tensorboard/`` (via tensorboardX, no TensorFlow needed). Only JAX process 0 writes.

Example::

    writer = MetricWriter(workdir)
    writer.truncate_after(start)  # when resuming from a checkpoint at `start`
    meter = Throughput(tokens_per_step=batch * seq_len, flops_per_token=6 * n_params)
    for step in range(start + 1, steps + 1):
        state, metrics = train_step(state, batch)
        if step % log_every == 0:
            jax.block_until_ready(metrics)
            writer.write(step, {**metrics, **meter.update(step)})
    writer.close()
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import os
import tempfile
import time
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import numpy as np

__all__ = [
    "MetricWriter",
    "Throughput",
    "peak_flops_per_device",
    "plot_metrics",
    "read_metrics",
]

log = logging.getLogger(__name__)

PEAK_FLOPS_ENV = "CORE_JAX_PEAK_FLOPS"


def _to_scalar(name: str, value: Any) -> float | int | None:
    """Converts a Python/numpy/JAX scalar to a Python number; non-finite floats become None."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        out = float(value)
    else:
        array = np.asarray(value)  # jax.Array or numpy scalar/0-d array: one device->host copy
        if array.size != 1:
            raise ValueError(
                f"Metric '{name}' must be a scalar, got an array of shape {array.shape}."
            )
        if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
            raise TypeError(f"Metric '{name}' must be numeric, got dtype {array.dtype}.")
        item = array.reshape(()).item()
        if isinstance(item, (bool, int)):
            return int(item)
        if isinstance(item, complex):
            raise TypeError(f"Metric '{name}' must be real, got complex value {item}.")
        out = float(item)
    if not math.isfinite(out):
        return None
    return out


class MetricWriter:
    """Writes scalar metrics to ``<workdir>/metrics.jsonl`` and TensorBoard, from process 0 only.

    Each :meth:`write` appends one line and flushes it, so a killed run keeps every line it logged.
    Non-finite values (NaN/inf) are written as JSON ``null`` (strict JSON has no NaN) with a
    warning, and are skipped in TensorBoard.

    Args:
        workdir: Run directory; created if missing (on process 0).
        tensorboard: Also write TensorBoard event files to ``<workdir>/tensorboard/``.
        jsonl_name: File name of the JSON-lines log inside ``workdir``.
    """

    def __init__(
        self,
        workdir: str | os.PathLike,
        *,
        tensorboard: bool = True,
        jsonl_name: str = "metrics.jsonl",
    ):
        self.workdir = os.path.abspath(os.fspath(workdir))
        self.jsonl_path = os.path.join(self.workdir, jsonl_name)
        self.is_writer = jax.process_index() == 0
        self._file = None
        self._tb = None
        if not self.is_writer:
            return
        os.makedirs(self.workdir, exist_ok=True)
        self._file = self._open_for_append()
        if tensorboard:
            from tensorboardX import SummaryWriter  # import lazily: pulls in protobuf

            self._tb = SummaryWriter(logdir=os.path.join(self.workdir, "tensorboard"))

    def write(self, step: int, metrics: Mapping[str, Any]) -> dict[str, Any] | None:
        """Logs scalar ``metrics`` for ``step``.

        Args:
            step: Training step (x axis). Converted with ``int()``.
            metrics: Name -> scalar (Python, numpy or 0-d/size-1 ``jax.Array``). Call after the
                values are ready (``jax.block_until_ready``) to avoid stalling inside this call.

        Returns:
            The record written (``{"step": ..., **scalars}``), or None on processes other than 0.

        Raises:
            ValueError: A value is not a scalar, or a metric is named "step".
            TypeError: A value is not numeric.
        """
        if "step" in metrics:
            raise ValueError("Metric name 'step' is reserved for the step number.")
        if not self.is_writer:
            return None
        if self._file is None:
            raise ValueError(f"MetricWriter for {self.jsonl_path} is closed.")
        step = int(step)
        record: dict[str, Any] = {"step": step}
        non_finite = []
        for name, value in metrics.items():
            scalar = _to_scalar(str(name), value)
            if scalar is None:
                non_finite.append(str(name))
            record[str(name)] = scalar
        if non_finite:
            log.warning("Non-finite metrics at step %d (written as null): %s", step, non_finite)
        self._file.write(json.dumps(record, allow_nan=False) + "\n")
        self._file.flush()
        if self._tb is not None:
            for name, value in record.items():
                if name != "step" and value is not None:
                    self._tb.add_scalar(name, value, global_step=step)
            self._tb.flush()
        return record

    def truncate_after(self, step: int) -> int:
        """Drops JSON lines with ``step`` > the given step (call when resuming from ``step``).

        The file is rewritten to a temporary file in the same directory and swapped in with
        ``os.replace``, so a crash leaves either the old or the new file, never half of one.
        TensorBoard handles duplicates itself (the newest event for a step wins in the UI).

        Args:
            step: Last step to keep.

        Returns:
            Number of lines dropped (0 on processes other than 0).
        """
        if not self.is_writer:
            return 0
        reopen = self._file is not None
        if reopen:
            self._file.close()
            self._file = None
        dropped = 0
        try:
            if os.path.exists(self.jsonl_path):
                kept = []
                with open(self.jsonl_path, encoding="utf-8") as f:
                    for line in f:
                        try:
                            line_step = json.loads(line)["step"]
                        except (json.JSONDecodeError, KeyError, TypeError):
                            dropped += 1  # half-written last line of a killed run
                            continue
                        if line_step > step:
                            dropped += 1
                        else:
                            kept.append(line if line.endswith("\n") else line + "\n")
                if dropped:
                    fd, tmp = tempfile.mkstemp(
                        dir=self.workdir, prefix=".metrics-", suffix=".tmp", text=True
                    )
                    try:
                        with os.fdopen(fd, "w", encoding="utf-8") as f:
                            f.writelines(kept)
                            f.flush()
                            os.fsync(f.fileno())
                        os.replace(tmp, self.jsonl_path)
                    except BaseException:
                        if os.path.exists(tmp):
                            os.remove(tmp)
                        raise
        finally:
            if reopen:
                self._file = self._open_for_append()
        return dropped

    def _open_for_append(self):
        """Opens the log for appending, ending a half-written last line first (killed run)."""
        if os.path.exists(self.jsonl_path) and os.path.getsize(self.jsonl_path) > 0:
            with open(self.jsonl_path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                needs_newline = f.read(1) != b"\n"
            if needs_newline:
                with open(self.jsonl_path, "a", encoding="utf-8") as f:
                    f.write("\n")
        return open(self.jsonl_path, "a", encoding="utf-8")

    def flush(self) -> None:
        """Flushes pending TensorBoard events (JSON lines are flushed on every write)."""
        if self._file is not None:
            self._file.flush()
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        """Closes the files. Idempotent."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self) -> MetricWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Reads a JSON-lines metrics file written by :class:`MetricWriter`.

    Lines that are not valid JSON (a write cut short by a killed run) are skipped with a warning.

    Args:
        path: Path to ``metrics.jsonl`` (or a workdir containing it).

    Returns:
        The records in file order; non-finite values are None.

    Raises:
        FileNotFoundError: No such file.
        ValueError: A line is valid JSON but not an object with a "step".
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "metrics.jsonl")
    if not os.path.exists(path):
        raise FileNotFoundError(f"Metrics file {path} does not exist.")
    with open(path, encoding="utf-8") as f:
        lines = [line for line in f if line.strip()]
    records = []
    for i, line in enumerate(lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            # Only a write cut short by a killed run produces this; the line carries nothing.
            log.warning("Skipping malformed (truncated?) line %d of %s: %r", i + 1, path, line[:80])
            continue
        if not isinstance(record, dict) or "step" not in record:
            raise ValueError(
                f"{path}:{i + 1} is not a metrics record (JSON object with a 'step'): "
                f"{line[:200]!r}"
            )
        records.append(record)
    return records


# Dense peak FLOP/s per chip from vendor spec sheets (no sparsity).
#   NVIDIA H100 SXM: 989.4 TFLOP/s bf16/fp16, 494.7 TF32, 66.9 fp32
#     (https://www.nvidia.com/en-us/data-center/h100/, datasheet footnote: sparsity numbers are 2x).
#   NVIDIA H100 PCIe: 756 bf16, 378 TF32, 51 fp32 (same datasheet).
#   NVIDIA H200 SXM: same tensor cores as H100 SXM (https://www.nvidia.com/en-us/data-center/h200/).
#   NVIDIA A100 SXM/PCIe: 312 TFLOP/s bf16/fp16, 156 TF32, 19.5 fp32
#     (https://www.nvidia.com/en-us/data-center/a100/).
#   Google TPU v3: 123 TFLOP/s bf16 per chip; v4: 275; v5e: 197; v5p: 459
#   v6e (Trillium): 918 (https://cloud.google.com/tpu/docs/v6e).
#     (https://cloud.google.com/tpu/docs/system-architecture-tpu-vm and per-version pages).
# Keys are matched as lowercase substrings of `device.device_kind`, most specific first.
_PEAK_FLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    ("h100 pcie", {"bfloat16": 756e12, "float16": 756e12, "tf32": 378e12, "float32": 51e12}),
    ("h100", {"bfloat16": 989e12, "float16": 989e12, "tf32": 494e12, "float32": 67e12}),
    ("h200", {"bfloat16": 989e12, "float16": 989e12, "tf32": 494e12, "float32": 67e12}),
    ("a100", {"bfloat16": 312e12, "float16": 312e12, "tf32": 156e12, "float32": 19.5e12}),
    ("tpu v5 lite", {"bfloat16": 197e12}),  # v5e reports device_kind "TPU v5 lite"
    ("tpu v5e", {"bfloat16": 197e12}),
    ("tpu v5p", {"bfloat16": 459e12}),
    ("tpu v5", {"bfloat16": 459e12}),  # plain "TPU v5" is v5p
    ("tpu v6 lite", {"bfloat16": 918e12}),  # Trillium (v6e)
    ("tpu v4", {"bfloat16": 275e12}),
    ("tpu v3", {"bfloat16": 123e12}),
)


def peak_flops_per_device(device: Any = None, dtype: str = "bfloat16") -> float | None:
    """Returns the dense peak FLOP/s of one device for ``dtype``, or None if unknown.

    The environment variable ``CORE_JAX_PEAK_FLOPS`` (a float, FLOP/s per device) overrides the
    table; use it for CPUs or unlisted accelerators.

    Args:
        device: A ``jax.Device``; defaults to ``jax.devices()[0]``.
        dtype: "bfloat16", "float16", "tf32" or "float32" (TPUs only list bfloat16).

    Returns:
        Peak FLOP/s, or None (CPU and unknown devices, unless the env var is set).

    Raises:
        ValueError: ``CORE_JAX_PEAK_FLOPS`` is set but not a positive number.
    """
    override = os.environ.get(PEAK_FLOPS_ENV)
    if override:
        try:
            value = float(override)
        except ValueError:
            value = -1.0
        if not value > 0 or not math.isfinite(value):
            raise ValueError(f"{PEAK_FLOPS_ENV}={override!r} is not a positive number of FLOP/s.")
        return value
    device = device if device is not None else jax.devices()[0]
    kind = str(getattr(device, "device_kind", "")).lower()
    for pattern, table in _PEAK_FLOPS:
        if pattern in kind:
            return table.get(str(dtype))
    return None


_default_peak_flops = peak_flops_per_device  # the name is shadowed by Throughput's argument


class Throughput:
    """Steps/s, tokens/s, achieved TFLOP/s per device and MFU from wall time between updates.

    Call :meth:`update` at log steps, after ``jax.block_until_ready`` on the step's outputs, so the
    interval measures finished work. The first call only starts the clock (returns ``{}``).

    Args:
        tokens_per_step: Tokens processed per step over all devices (global batch x sequence).
        flops_per_token: Training FLOPs per token (e.g. ``6 * n_params`` + attention term).
        peak_flops_per_device: Peak FLOP/s of one device; default from
            :func:`peak_flops_per_device` (None on CPU: then no "mfu" key).
        num_devices: Devices sharing the work; default ``jax.device_count()``.
    """

    def __init__(
        self,
        *,
        tokens_per_step: float,
        flops_per_token: float,
        peak_flops_per_device: float | None = None,
        num_devices: int | None = None,
    ):
        if tokens_per_step <= 0:
            raise ValueError(f"tokens_per_step must be > 0, got {tokens_per_step}.")
        if flops_per_token < 0:
            raise ValueError(f"flops_per_token must be >= 0, got {flops_per_token}.")
        self.tokens_per_step = float(tokens_per_step)
        self.flops_per_token = float(flops_per_token)
        self.num_devices = int(num_devices) if num_devices is not None else jax.device_count()
        if self.num_devices < 1:
            raise ValueError(f"num_devices must be >= 1, got {num_devices}.")
        if peak_flops_per_device is None:
            peak_flops_per_device = _default_peak_flops()
        self.peak_flops_per_device = peak_flops_per_device
        self._last: tuple[int, float] | None = None

    def reset(self, step: int | None = None) -> None:
        """Restarts the clock (e.g. after evaluation or checkpointing pauses)."""
        self._last = None if step is None else (int(step), time.perf_counter())

    def update(self, step: int) -> dict[str, float]:
        """Returns rates over the interval since the previous call.

        Args:
            step: Current step (number of completed steps).

        Returns:
            ``{"steps_per_sec", "tokens_per_sec", "tflops_per_sec_per_device"}`` plus ``"mfu"``
            (fraction of peak, 0-1) when the peak is known; ``{}`` on the first call or if no
            step or no time elapsed.
        """
        now = time.perf_counter()
        step = int(step)
        last, self._last = self._last, (step, now)
        if last is None:
            return {}
        steps, seconds = step - last[0], now - last[1]
        if steps <= 0 or seconds <= 0:
            return {}
        steps_per_sec = steps / seconds
        tokens_per_sec = steps_per_sec * self.tokens_per_step
        flops_per_device = tokens_per_sec * self.flops_per_token / self.num_devices
        out = {
            "steps_per_sec": steps_per_sec,
            "tokens_per_sec": tokens_per_sec,
            "tflops_per_sec_per_device": flops_per_device / 1e12,
        }
        if self.peak_flops_per_device:
            out["mfu"] = flops_per_device / self.peak_flops_per_device
        return out


def plot_metrics(
    jsonl_path: str | os.PathLike,
    out_png: str | os.PathLike,
    keys: Iterable[str] = ("loss",),
    *,
    title: str | None = None,
) -> str:
    """Plots metrics against step from a ``metrics.jsonl`` file into a PNG (one panel per key).

    Args:
        jsonl_path: Metrics file (or workdir) written by :class:`MetricWriter`.
        out_png: Output image path; parent directories are created.
        keys: Metric names to plot; records without a key (or with null) are skipped.
        title: Figure title; defaults to the file path.

    Returns:
        The absolute path of the written PNG.

    Raises:
        ValueError: None of ``keys`` occurs in the file (lists the available names).
    """
    import matplotlib

    matplotlib.use("Agg")  # headless; safe to call repeatedly
    import matplotlib.pyplot as plt

    keys = list(keys)
    records = read_metrics(jsonl_path)
    available = sorted({k for r in records for k in r if k != "step"})
    missing = [k for k in keys if k not in available]
    if not keys or len(missing) == len(keys):
        raise ValueError(f"None of the metrics {keys} are in {jsonl_path}; available: {available}.")
    if missing:
        log.warning("Metrics %s not in %s; plotting the others.", missing, jsonl_path)
    keys = [k for k in keys if k not in missing]
    fig, axes = plt.subplots(len(keys), 1, figsize=(7, 2.8 * len(keys)), squeeze=False)
    for ax, key in zip(axes[:, 0], keys, strict=True):
        points = [(r["step"], r[key]) for r in records if r.get(key) is not None]
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, linewidth=1.2)
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("step")
    fig.suptitle(title if title is not None else os.fspath(jsonl_path), fontsize=9)
    fig.tight_layout()
    out_png = os.path.abspath(os.fspath(out_png))
    os.makedirs(os.path.dirname(out_png), exist_ok=True)
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png
