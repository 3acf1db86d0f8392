"""save -> kill -> resume reproduces the uninterrupted run's losses bit for bit."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core_jax.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[2]
# A small, fast run: checkpoints every 3 steps, losses logged every step, a fixed schedule length
# so that the killed and the uninterrupted runs share one learning-rate schedule.
ARGS = [
    "--quiet",
    "--set",
    "log_every=1",
    "--set",
    "checkpoint_every=3",
    "--set",
    "num_eval=8",
    "--set",
    "model.d_model=32",
    "--set",
    "model.mlp_dim=64",
    "--set",
    "batch_size=16",
    "--set",
    "optim.decay_steps=400",
    "--set",
    "optim.warmup_steps=5",
]


def demo(workdir, num_steps, **kw):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "XLA_FLAGS": ""}
    cmd = [
        sys.executable,
        "-m",
        "core_jax.demo",
        "--workdir",
        str(workdir),
        "--set",
        f"num_steps={num_steps}",
        *ARGS,
    ]
    return subprocess.Popen(
        cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw
    )


def losses(workdir):
    return {r["step"]: r["loss"] for r in read_metrics(workdir / "metrics.jsonl") if "loss" in r}


def test_kill_and_resume_reproduces_losses_bit_for_bit(tmp_path):
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "run"
    ref = demo(ref_dir, 14)
    out = ref.communicate(timeout=300)[0]
    assert ref.returncode == 0, out
    expected = losses(ref_dir)
    assert sorted(expected) == list(range(1, 15))

    # Start a long run and SIGKILL it once it has logged step 8 (a checkpoint exists at 6).
    proc = demo(run_dir, 400)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if (run_dir / "metrics.jsonl").exists() and max(losses(run_dir), default=0) >= 8:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = max(losses(run_dir))
    assert killed_at >= 8

    resumed = demo(run_dir, 14)
    out = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, out
    got = losses(run_dir)
    assert sorted(got) == list(range(1, 15)), "metrics.jsonl has gaps or duplicate steps"
    for step in range(1, 15):
        assert got[step] == expected[step], (step, got[step], expected[step])
    # Steps after the last checkpoint were really recomputed, not just left over.
    lines = [r for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in lines] == list(range(1, 15))


@pytest.mark.parametrize("bad", ["model.num_heads=5", "nosuchkey=1", "model.mlp=relu"])
def test_demo_rejects_bad_config(tmp_path, bad):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "XLA_FLAGS": ""}
    res = subprocess.run(
        [sys.executable, "-m", "core_jax.demo", "--workdir", str(tmp_path), "--set", bad],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode != 0
    assert bad.split("=")[0].split(".")[-1] in res.stderr
