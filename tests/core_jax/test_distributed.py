"""Two JAX processes on 127.0.0.1 run a sharded train step and agree with one process."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from core_jax.parallel import MeshConfig, host_to_global, init_sharded, make_mesh, make_train_step
from tests.core_jax.test_parallel import create_state, make_batch, train_step

ROOT = Path(__file__).resolve().parents[2]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.multiprocess
def test_two_process_train_step_matches_single_process(tmp_path):
    port, out = free_port(), tmp_path / "result.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("XLA_FLAGS", None)
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "tests/core_jax/dist_worker.py"),
                str(port),
                str(i),
                str(out),
            ],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    logs = []
    for p in procs:
        try:
            logs.append(p.communicate(timeout=240)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    assert all(p.returncode == 0 for p in procs), "\n".join(logs)
    result = json.loads(out.read_text())

    mesh = make_mesh(MeshConfig(), jax.devices()[:1])
    state, sharding = init_sharded(create_state, mesh, jax.random.key(0))
    state, metrics = make_train_step(train_step, mesh=mesh, state_sharding=sharding)(
        state, host_to_global(make_batch(0), mesh)
    )
    np.testing.assert_allclose(result["loss"], float(metrics["loss"]), rtol=1e-5)
    ref = {
        jax.tree_util.keystr(k): float(np.asarray(v, np.float64).sum())
        for k, v in jax.tree_util.tree_leaves_with_path(jax.device_get(state.params))
    }
    assert ref.keys() == result["param_sums"].keys()
    for k in ref:
        np.testing.assert_allclose(result["param_sums"][k], ref[k], rtol=1e-4, atol=1e-4, err_msg=k)
