"""One process of the two-process jax.distributed test (run by test_distributed.py).

Usage: python dist_worker.py PORT PROCESS_ID OUT_JSON
Each process owns 2 CPU devices and half of the global batch; together they run one sharded train
step on a (data=2, fsdp=2) mesh and process 0 writes the loss and parameter sums.
"""

import json
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import numpy as np  # noqa: E402

from core_jax.parallel import (  # noqa: E402
    MeshConfig,
    host_to_global,
    init_sharded,
    initialize_distributed,
    make_mesh,
    make_train_step,
)


def main():
    port, pid, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    initialize_distributed(f"127.0.0.1:{port}", num_processes=2, process_id=pid)
    assert jax.process_count() == 2 and len(jax.devices()) == 4, jax.devices()
    from tests.core_jax.test_parallel import create_state, make_batch, train_step

    mesh = make_mesh(MeshConfig(data=2, fsdp=2))
    state, sharding = init_sharded(create_state, mesh, jax.random.key(0))
    step = make_train_step(train_step, mesh=mesh, state_sharding=sharding)
    full = make_batch(0)
    local = jax.tree.map(lambda x: x[pid * 4 : (pid + 1) * 4], full)
    state, metrics = step(state, host_to_global(local, mesh))
    # Gather the sharded parameters to every host before reading them.
    from jax.experimental import multihost_utils

    params = multihost_utils.process_allgather(state.params, tiled=True)
    sums = {
        jax.tree_util.keystr(k): float(np.asarray(v, np.float64).sum())
        for k, v in jax.tree_util.tree_leaves_with_path(params)
    }
    if pid == 0:
        with open(out, "w") as f:
            json.dump({"loss": float(metrics["loss"]), "param_sums": sums}, f)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main()
