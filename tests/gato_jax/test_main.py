"""gato_jax.main CLI: ahead-of-time dry run and kill-and-resume bit-exactness (data order too)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from core_jax.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[2]
# Small gato_tiny run: checkpoint every 3 steps, log every step; the schedule is fixed by the
# config (decay_steps=200), so runs of different lengths share it.
ARGS = ["--quiet", "--set", "log_every=1", "--set", "checkpoint_every=3", "--set", "batch_size=4"]


def _env(devices=1):
    flags = f"--xla_force_host_platform_device_count={devices}" if devices > 1 else ""
    return {**os.environ, "PYTHONPATH": str(ROOT), "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"}


def run_main(workdir, num_steps):
    cmd = [sys.executable, "-m", "gato_jax.main", "--config", "gato_tiny", "--data", "synthetic"]
    cmd += ["--workdir", str(workdir), "--num_steps", str(num_steps), *ARGS]
    return subprocess.Popen(
        cmd, env=_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def rows(workdir):
    return {r["step"]: r for r in read_metrics(workdir / "metrics.jsonl") if "loss" in r}


def test_dry_run_gato_364m_on_8_device_mesh():
    cmd = [sys.executable, "-m", "gato_jax.main", "--config", "gato_364m", "--dry_run"]
    cmd += ["--set", "mesh.data=1", "--set", "mesh.fsdp=8", "--set", "batch_size=8"]
    res = subprocess.run(cmd, env=_env(8), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout
    assert "366,859,136 parameters" in out and "'fsdp': 8" in out
    for what in ("parameters", "optimizer state", "activations"):
        assert what in out
    # fp32 params sharded 8 ways: 366.9M * 4 B / 8 = 175 MiB per device; Adam moments twice it.
    assert "176.2 MiB" in out and "352.4 MiB" in out
    assert "no step was run" in out


def test_cli_rejects_unknown_config(tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "gato_jax.main", "--config", "gato_9b", "--workdir", str(tmp_path)],
        env=_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode != 0 and "gato_tiny" in res.stderr


@pytest.mark.slow
def test_kill_and_resume_reproduces_losses_bit_for_bit(tmp_path):
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "run"
    ref = run_main(ref_dir, 10)
    out = ref.communicate(timeout=300)[0]
    assert ref.returncode == 0, out
    expected = rows(ref_dir)
    assert sorted(expected) == list(range(1, 11))
    assert all(k in expected[10] for k in ("loss", "action_loss", "tokens_per_sec"))

    proc = run_main(run_dir, 200)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if (run_dir / "metrics.jsonl").exists() and max(rows(run_dir), default=0) >= 5:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert max(rows(run_dir)) >= 5

    resumed = run_main(run_dir, 10)
    out = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, out
    got = rows(run_dir)
    assert sorted(got) == list(range(1, 11))
    for step in range(1, 11):
        # loss and the number of target tokens: same parameters and same data, in order.
        for key in ("loss", "num_tokens", "grad_norm"):
            assert got[step][key] == expected[step][key], (step, key)


def test_parse_gen_spec():
    from gato_jax.datagen import parse_gen_spec

    assert parse_gen_spec("gen:/d/x") == ("/d/x", None, {})
    assert parse_gen_spec("gen:/d/x:cartpole*3,vl_shapes") == (
        "/d/x",
        ["cartpole", "vl_shapes"],
        {"cartpole": 3.0},
    )
    assert parse_gen_spec("gen:c:/d:x/y") == ("c:/d:x/y", None, {})  # ':' inside the path
    with pytest.raises(ValueError, match="not a number"):
        parse_gen_spec("gen:/d:cartpole*x")
    with pytest.raises(ValueError, match="empty task name"):
        parse_gen_spec("gen:/d:cartpole,")
    with pytest.raises(ValueError, match="empty directory"):
        parse_gen_spec("gen:")


def test_trains_on_generated_dir_with_text_tasks(tmp_path):
    """`--data gen:DIR:...` reads the tasks' own specs and DIR's tokenizer: captions (text
    actions) and corpus text (text observations) are loss targets of the same run."""
    pytest.importorskip("tensorflow_datasets")
    from gato_jax import datagen
    from gato_jax import main as train_main

    data = tmp_path / "data"
    datagen.generate(["vl_shapes", "text_corpus"], 2, str(data), quiet=True)
    run = tmp_path / "run"
    argv = ["--config", "gato_tiny", "--workdir", str(run), "--num_steps", "2", "--quiet"]
    argv += ["--data", f"gen:{data}:vl_shapes*2,text_corpus", "--set", "data_threads=0"]
    argv += ["--set", "batch_size=8", "--set", "log_every=1"]
    # A time budget that the first step exceeds: stop there, checkpointed; the rerun resumes.
    assert train_main.main([*argv, "--time_budget", "1e-6"]) == 0
    assert sorted(rows(run)) == [1]
    assert (run / "checkpoints" / "1").is_dir()
    assert train_main.main(argv) == 0
    assert sorted(rows(run)) == [1, 2]
    last = rows(run)[2]
    assert last["action_tokens"] > 0 and last["text_tokens"] > 0  # captions, corpus text
    assert np.isfinite(last["loss"])
    assert (run / "tokenizer.model").read_bytes() == (data / "tokenizer.model").read_bytes()
    with pytest.raises(SystemExit):
        train_main.main(["--config", "gato_tiny", "--data", "gen:", "--workdir", str(run)])
    with pytest.raises(SystemExit):
        train_main.main([*argv, "--time_budget", "0"])
