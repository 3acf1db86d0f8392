"""Tests for core_jax.metrics."""

import json
import logging
import math
import os
import struct
import time

import jax.numpy as jnp
import numpy as np
import pytest

from core_jax import metrics as metrics_lib
from core_jax.metrics import (
    MetricWriter,
    Throughput,
    peak_flops_per_device,
    plot_metrics,
    read_metrics,
)


def test_write_converts_scalars_and_flushes_each_line(tmp_path):
    writer = MetricWriter(tmp_path, tensorboard=False)
    record = writer.write(
        1,
        {
            "loss": jnp.float32(0.5),
            "acc": np.float64(0.25),
            "n": np.int32(3),
            "ok": True,
            "lr": 1e-3,
        },
    )
    assert record == {"step": 1, "loss": 0.5, "acc": 0.25, "n": 3, "ok": 1, "lr": 1e-3}
    assert isinstance(record["loss"], float) and isinstance(record["n"], int)
    # Flushed without close: another reader sees the line now (a killed run keeps it).
    assert read_metrics(tmp_path / "metrics.jsonl") == [record]
    writer.write(jnp.int32(2), {"loss": jnp.array([0.25])})  # size-1 array, jax step
    writer.close()
    writer.close()  # idempotent
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]


def test_non_finite_values_become_null_with_warning(tmp_path, caplog):
    with MetricWriter(tmp_path, tensorboard=False) as writer:
        with caplog.at_level(logging.WARNING, logger="core_jax.metrics"):
            writer.write(3, {"loss": float("nan"), "grad": jnp.inf, "ok": 1.0})
    assert "loss" in caplog.text and "grad" in caplog.text
    line = (tmp_path / "metrics.jsonl").read_text()
    assert "NaN" not in line and "Infinity" not in line
    assert json.loads(line) == {"step": 3, "loss": None, "grad": None, "ok": 1.0}


def test_bad_metric_values_raise(tmp_path):
    with MetricWriter(tmp_path, tensorboard=False) as writer:
        with pytest.raises(ValueError, match=r"'loss' must be a scalar.*\(2,\)"):
            writer.write(0, {"loss": jnp.zeros(2)})
        with pytest.raises(TypeError, match="'name' must be numeric"):
            writer.write(0, {"name": np.array("x")})
        with pytest.raises(ValueError, match="'step' is reserved"):
            writer.write(0, {"step": 1})
    with pytest.raises(ValueError, match="closed"):
        writer.write(0, {"loss": 1.0})


def test_append_mode_and_truncate_after_for_resume(tmp_path):
    with MetricWriter(tmp_path, tensorboard=False) as writer:
        for step in range(0, 50, 10):
            writer.write(step, {"loss": float(step)})
    # Simulate a run killed mid-write, then resumed from the checkpoint at step 20.
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 50, "lo')
    with MetricWriter(tmp_path, tensorboard=False) as writer:
        assert writer.truncate_after(20) == 3  # steps 30, 40 and the broken line
        assert [r["step"] for r in read_metrics(tmp_path)] == [0, 10, 20]
        writer.write(30, {"loss": -1.0})
        assert writer.truncate_after(100) == 0
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == [0, 10, 20, 30]
    assert records[-1]["loss"] == -1.0
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_killed_run_half_line_is_terminated_on_reopen(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "lo')
    with MetricWriter(tmp_path, tensorboard=False) as writer:
        writer.write(3, {"loss": 3.0})
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 3]


def test_read_metrics_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        read_metrics(tmp_path / "missing.jsonl")
    path = tmp_path / "bad.jsonl"
    path.write_text('{"step": 1}\n[1, 2]\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2 is not a metrics record"):
        read_metrics(path)


def test_tensorboard_events_written(tmp_path):
    with MetricWriter(tmp_path) as writer:
        writer.write(1, {"loss": 1.0, "nan": float("nan")})
        writer.write(2, {"loss": 0.5})
    event_files = os.listdir(tmp_path / "tensorboard")
    assert any(name.startswith("events.out.tfevents") for name in event_files)
    scalars = _read_tb_scalars(os.path.join(tmp_path, "tensorboard", event_files[0]))
    assert scalars == [("loss", 1, 1.0), ("loss", 2, 0.5)]  # NaN skipped


def _read_tb_scalars(path):
    """Parses a TFRecord event file with tensorboardX's protos (no TensorFlow/TensorBoard)."""
    from tensorboardX.proto import event_pb2

    out = []
    with open(path, "rb") as f:
        data = f.read()
    pos = 0
    while pos < len(data):
        (length,) = struct.unpack("<Q", data[pos : pos + 8])
        event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length])
        pos += 12 + length + 4  # length, length crc, payload, payload crc
        for value in event.summary.value:
            out.append((value.tag, event.step, value.simple_value))
    return out


def test_only_process_zero_writes(tmp_path, monkeypatch):
    monkeypatch.setattr(metrics_lib.jax, "process_index", lambda: 1)
    writer = MetricWriter(tmp_path / "run")
    assert writer.write(1, {"loss": 1.0}) is None
    assert writer.truncate_after(0) == 0
    writer.close()
    assert not (tmp_path / "run").exists()


def test_throughput_rates_and_mfu(monkeypatch):
    clock = iter([100.0, 102.0, 103.0, 103.0])
    monkeypatch.setattr(metrics_lib.time, "perf_counter", lambda: next(clock))
    meter = Throughput(
        tokens_per_step=1000, flops_per_token=6e9, peak_flops_per_device=1e15, num_devices=4
    )
    assert meter.update(0) == {}  # starts the clock
    out = meter.update(10)  # 10 steps in 2 s
    assert out["steps_per_sec"] == pytest.approx(5.0, rel=1e-12)
    assert out["tokens_per_sec"] == pytest.approx(5000.0, rel=1e-12)
    # 5000 tok/s * 6e9 FLOP/tok / 4 devices = 7.5e12 FLOP/s per device.
    assert out["tflops_per_sec_per_device"] == pytest.approx(7.5, rel=1e-12)
    assert out["mfu"] == pytest.approx(7.5e12 / 1e15, rel=1e-12)
    out = meter.update(20)  # 10 steps in 1 s
    assert out["steps_per_sec"] == pytest.approx(10.0, rel=1e-12)
    assert meter.update(20) == {}  # no time and no steps elapsed


def test_throughput_without_peak_has_no_mfu(monkeypatch):
    monkeypatch.delenv("CORE_JAX_PEAK_FLOPS", raising=False)
    meter = Throughput(tokens_per_step=8, flops_per_token=1.0)  # CPU: peak unknown
    assert meter.peak_flops_per_device is None
    assert meter.num_devices >= 1
    meter.update(0)
    time.sleep(0.01)
    out = meter.update(1)
    assert set(out) == {"steps_per_sec", "tokens_per_sec", "tflops_per_sec_per_device"}
    with pytest.raises(ValueError, match="tokens_per_step"):
        Throughput(tokens_per_step=0, flops_per_token=1.0)


class _FakeDevice:
    def __init__(self, kind):
        self.device_kind = kind


@pytest.mark.parametrize(
    "kind,dtype,expected",
    [
        ("NVIDIA H100 80GB HBM3", "bfloat16", 989e12),
        ("NVIDIA H100 80GB HBM3", "tf32", 494e12),
        ("NVIDIA H100 PCIe", "bfloat16", 756e12),
        ("NVIDIA H200", "bfloat16", 989e12),
        ("NVIDIA A100-SXM4-40GB", "bfloat16", 312e12),
        ("TPU v4", "bfloat16", 275e12),
        ("TPU v5 lite", "bfloat16", 197e12),
        ("TPU v5p", "bfloat16", 459e12),
        ("TPU v3", "bfloat16", 123e12),
        ("TPU v4", "float32", None),
        ("cpu", "bfloat16", None),
    ],
)
def test_peak_flops_table(monkeypatch, kind, dtype, expected):
    monkeypatch.delenv("CORE_JAX_PEAK_FLOPS", raising=False)
    assert peak_flops_per_device(_FakeDevice(kind), dtype) == expected


def test_peak_flops_env_override(monkeypatch):
    monkeypatch.setenv("CORE_JAX_PEAK_FLOPS", "1.5e12")
    assert peak_flops_per_device() == 1.5e12
    assert Throughput(tokens_per_step=1, flops_per_token=1).peak_flops_per_device == 1.5e12
    monkeypatch.setenv("CORE_JAX_PEAK_FLOPS", "fast")
    with pytest.raises(ValueError, match="CORE_JAX_PEAK_FLOPS='fast'"):
        peak_flops_per_device()


def test_plot_metrics(tmp_path):
    with MetricWriter(tmp_path, tensorboard=False) as writer:
        for step in range(20):
            writer.write(step, {"loss": math.exp(-step / 5), "acc": step / 20})
        writer.write(20, {"loss": float("nan")})
    out = plot_metrics(
        tmp_path / "metrics.jsonl", tmp_path / "plots" / "loss.png", keys=("loss", "acc")
    )
    assert os.path.getsize(out) > 1000
    with open(out, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(
        ValueError, match=r"None of the metrics \['bleu'\].*available: \['acc', 'loss'\]"
    ):
        plot_metrics(tmp_path, tmp_path / "x.png", keys=("bleu",))
