"""Tests for core_jax.checkpoint.Checkpointer."""

import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.training import train_state
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from core_jax.checkpoint import Checkpointer, Restored


def _state(seed=0):
    k1, k2 = jax.random.split(jax.random.key(seed))
    return {
        "w": jax.random.normal(k1, (4, 8), jnp.float32),
        "b": jax.random.normal(k2, (8,), jnp.bfloat16),
        "step": jnp.int32(7),
        "ids": jnp.arange(5, dtype=jnp.int8),
        "rng": jax.random.key(seed + 1),  # typed key
        "raw_rng": jax.random.PRNGKey(seed + 2),  # legacy uint32 key
        "rbg_rng": jax.random.key(seed + 3, impl="rbg"),  # typed key with a (4,) key shape
    }


def _assert_identical(a, b):
    leaves_a, tree_a = jax.tree.flatten(a)
    leaves_b, tree_b = jax.tree.flatten(b)
    assert tree_a == tree_b
    for x, y in zip(leaves_a, leaves_b, strict=True):
        assert x.dtype == y.dtype
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_roundtrip_bit_identical_with_config_and_data(tmp_path):
    state = _state()
    config = {"lr": 1e-3, "model": {"layers": 2, "names": ["a", "b"]}, "seq": (1, 2)}
    data_state = {"epoch": 1, "index": 123}
    with Checkpointer(tmp_path / "ckpt") as ckpt:
        assert ckpt.latest_step() is None
        assert ckpt.save(10, state, config=config, data_state=data_state)
        ckpt.wait_until_finished()
        assert ckpt.latest_step() == 10
        restored = ckpt.restore(jax.eval_shape(lambda: state))
    assert isinstance(restored, Restored)
    assert restored.step == 10
    _assert_identical(restored.state, state)
    assert restored.config == {
        "lr": 1e-3,
        "model": {"layers": 2, "names": ["a", "b"]},
        "seq": [1, 2],
    }
    assert restored.data_state == data_state
    # A typed key still works as a key after restore and gives the same stream.
    np.testing.assert_array_equal(
        jax.random.normal(restored.state["rng"], (3,)), jax.random.normal(state["rng"], (3,))
    )


def test_restore_with_concrete_arrays_as_template_and_no_optional_items(tmp_path):
    state = _state()
    with Checkpointer(tmp_path, async_save=False) as ckpt:
        ckpt.save(0, state)
        restored = ckpt.restore(_state(seed=5))  # concrete arrays of the same layout
    _assert_identical(restored.state, state)
    assert restored.config is None and restored.data_state is None


def test_flax_train_state_roundtrip(tmp_path):
    params = {"dense": {"kernel": jnp.ones((3, 4)), "bias": jnp.zeros(4)}}
    ts = train_state.TrainState.create(apply_fn=None, params=params, tx=optax.adam(1e-3))
    grads = jax.tree.map(jnp.ones_like, params)
    ts = ts.apply_gradients(grads=grads)
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, {"train": ts, "rng": jax.random.key(3)})
        ckpt.wait_until_finished()
        fresh = train_state.TrainState.create(apply_fn=None, params=params, tx=optax.adam(1e-3))
        restored = ckpt.restore({"train": fresh, "rng": jax.random.key(0)}).state
    assert isinstance(restored["train"], train_state.TrainState)
    assert int(restored["train"].step) == 1
    jax.tree.map(
        lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
        restored["train"].opt_state,
        ts.opt_state,
    )


def test_async_save_survives_buffer_donation(tmp_path):
    x = jnp.arange(100_000, dtype=jnp.float32)
    expected = np.asarray(x)
    step_fn = jax.jit(lambda a: a + 1, donate_argnums=0)
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(0, {"x": x})
        y = step_fn(x)
        x.delete()  # what donation does on accelerators: the buffer is gone after save returns
        ckpt.wait_until_finished()
        restored = ckpt.restore({"x": y}).state["x"]
    np.testing.assert_array_equal(np.asarray(restored), expected)


def test_max_to_keep_and_save_interval(tmp_path):
    state = {"x": jnp.arange(3.0)}
    with Checkpointer(tmp_path, max_to_keep=2, save_interval_steps=2) as ckpt:
        written = [ckpt.save(s, {"x": state["x"] + s}) for s in range(6)]
        assert written == [True, False, True, False, True, False]
        assert ckpt.save(7, {"x": state["x"] + 7}, force=True)
        ckpt.wait_until_finished()
        assert ckpt.all_steps() == [4, 7]
        assert ckpt.latest_step() == 7
        assert sorted(p for p in os.listdir(tmp_path)) == ["4", "7"]
        np.testing.assert_array_equal(ckpt.restore(state, step=4).state["x"], state["x"] + 4)
        np.testing.assert_array_equal(ckpt.restore(state).state["x"], state["x"] + 7)


def test_partial_temp_checkpoint_is_ignored(tmp_path):
    state = {"x": jnp.arange(4.0)}
    with Checkpointer(tmp_path, async_save=False) as ckpt:
        ckpt.save(3, state)
    # A save killed mid-write leaves orbax's temp directory behind...
    tmp_dir = tmp_path / "9.orbax-checkpoint-tmp-1700000000"
    shutil.copytree(tmp_path / "3", tmp_dir)
    os.remove(tmp_dir / "state" / "_METADATA")
    # ...and a half-copied step directory (non-atomic copy) lacks the state metadata.
    os.makedirs(tmp_path / "12" / "state")
    with Checkpointer(tmp_path) as ckpt:
        assert ckpt.latest_step() == 3
        assert ckpt.all_steps() == [3]
        restored = ckpt.restore(jax.eval_shape(lambda: state))
        assert restored.step == 3
        with pytest.raises(ValueError, match=r"12 is incomplete or corrupt"):
            ckpt.restore(state, step=12)


def test_missing_directory_and_missing_step(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="nope"):
        Checkpointer(missing, create=False)
    with Checkpointer(tmp_path / "empty") as ckpt:
        with pytest.raises(FileNotFoundError, match="No complete checkpoint.*empty"):
            ckpt.restore({"x": jnp.zeros(2)})
        ckpt.save(1, {"x": jnp.zeros(2)})
        ckpt.wait_until_finished()
        with pytest.raises(FileNotFoundError, match=r"step 2 .*available steps: \[1\]"):
            ckpt.restore({"x": jnp.zeros(2)}, step=2)


def test_directory_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with Checkpointer("rel/ckpt") as ckpt:
        assert os.path.isabs(str(ckpt.directory))
        ckpt.save(0, {"x": jnp.zeros(2)})
    assert (tmp_path / "rel" / "ckpt" / "0").is_dir()


def test_shape_dtype_and_structure_mismatch_errors(tmp_path):
    state = {"x": jnp.zeros((2, 3)), "k": jax.random.key(0)}
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(0, state)
        ckpt.wait_until_finished()
        with pytest.raises(ValueError, match=r"Shape mismatch for 'x'.*\(2, 3\).*\(3, 2\)"):
            ckpt.restore({"x": jnp.zeros((3, 2)), "k": state["k"]})
        with pytest.raises(ValueError, match=r"Dtype mismatch for 'x'.*float32.*bfloat16"):
            ckpt.restore({"x": jnp.zeros((2, 3), jnp.bfloat16), "k": state["k"]})
        cast = ckpt.restore(
            {"x": jnp.ones((2, 3), jnp.bfloat16), "k": state["k"]}, allow_dtype_cast=True
        )
        assert cast.state["x"].dtype == jnp.bfloat16
        with pytest.raises(ValueError, match=r"structure does not match.*\['y'\]"):
            ckpt.restore({"x": state["x"], "k": state["k"], "y": jnp.zeros(1)})
        with pytest.raises(ValueError, match=r"structure does not match.*\['k'\]"):
            ckpt.restore({"x": state["x"]})


def test_corrupt_checkpoint_raises_value_error_naming_path(tmp_path):
    state = {"x": jnp.arange(16.0)}
    with Checkpointer(tmp_path, async_save=False) as ckpt:
        ckpt.save(0, state)
    with open(tmp_path / "0" / "state" / "_METADATA", "w") as f:
        f.write("{not json")
    with Checkpointer(tmp_path) as ckpt:
        with pytest.raises(ValueError, match=str(tmp_path / "0")):
            ckpt.restore(state)


def test_corrupt_array_data_raises_value_error(tmp_path):
    state = {"x": jnp.arange(16.0)}
    with Checkpointer(tmp_path, async_save=False) as ckpt:
        ckpt.save(0, state)
    # Truncate every data file of the OCDBT store.
    for root, _, files in os.walk(tmp_path / "0" / "state"):
        for name in files:
            if os.path.basename(root) == "d":
                with open(os.path.join(root, name), "wb") as f:
                    f.write(b"\0")
    with Checkpointer(tmp_path) as ckpt:
        with pytest.raises(ValueError, match=str(tmp_path / "0")) as info:
            ckpt.restore(state)
    assert len(str(info.value)) < 1000  # tensorstore's spec dump is cut


def test_non_json_config_names_offending_key(tmp_path):
    with Checkpointer(tmp_path) as ckpt:
        with pytest.raises(TypeError, match=r"config\['model'\]\['act'\].*of type set"):
            ckpt.save(0, {"x": jnp.zeros(1)}, config={"model": {"act": {"relu"}}})
        with pytest.raises(TypeError, match=r"data_state\['pos'\].*ndarray"):
            ckpt.save(0, {"x": jnp.zeros(1)}, data_state={"pos": np.arange(2)})
        with pytest.raises(TypeError, match=r"config\['lr'\].*nan"):
            ckpt.save(0, {"x": jnp.zeros(1)}, config={"lr": float("nan")})
        with pytest.raises(TypeError, match="non-string key 1"):
            ckpt.save(0, {"x": jnp.zeros(1)}, config={1: 2})
        assert ckpt.all_steps() == []


def test_duplicate_step_and_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="max_to_keep"):
        Checkpointer(tmp_path, max_to_keep=0)
    with pytest.raises(ValueError, match="save_interval_steps"):
        Checkpointer(tmp_path, save_interval_steps=0)
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(4, {"x": jnp.zeros(1)})
        ckpt.wait_until_finished()
        # Re-saving the latest step (a final forced save after the loop) is a no-op.
        assert not ckpt.save(4, {"x": jnp.ones(1)})
        assert not ckpt.save(4, {"x": jnp.ones(1)}, force=True)
        np.testing.assert_array_equal(ckpt.restore({"x": jnp.zeros(1)}).state["x"], [0.0])
        # Orbax would silently skip an older step (e.g. after restoring an earlier checkpoint).
        with pytest.raises(ValueError, match="step 3 .*older than the latest checkpoint step 4"):
            ckpt.save(3, {"x": jnp.zeros(1)})
        assert ckpt.save(5, {"x": jnp.zeros(1)})
        with pytest.raises(ValueError, match=">= 0"):
            ckpt.save(-1, {"x": jnp.zeros(1)})


def test_sharded_restore_on_8_devices(tmp_path):
    if len(jax.devices()) < 8:
        pytest.skip("needs 8 devices (XLA_FLAGS=--xla_force_host_platform_device_count=8)")
    mesh = Mesh(np.array(jax.devices()[:8]).reshape(2, 4), ("a", "b"))
    shard_w = NamedSharding(mesh, P("a", "b"))
    shard_v = NamedSharding(mesh, P("b"))
    replicated = NamedSharding(mesh, P())
    w = jax.device_put(jnp.arange(64, dtype=jnp.float32).reshape(8, 8), shard_w)
    v = jax.device_put(jnp.arange(8, dtype=jnp.bfloat16), shard_v)
    key = jax.device_put(jax.random.key(0), replicated)
    state = {"w": w, "v": v, "key": key}
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(2, state)
        ckpt.wait_until_finished()
        # Restore into a different layout: w sharded on columns only, v replicated.
        new_w = NamedSharding(mesh, P(None, ("a", "b")))
        abstract = {
            "w": jax.ShapeDtypeStruct((8, 8), jnp.float32, sharding=new_w),
            "v": jax.ShapeDtypeStruct((8,), jnp.bfloat16, sharding=replicated),
            "key": jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=replicated),
        }
        restored = ckpt.restore(abstract).state
    assert restored["w"].sharding == new_w
    assert restored["v"].sharding == replicated
    assert restored["key"].sharding == replicated
    _assert_identical(restored, state)
    # Each device holds exactly its 8x1 column shard.
    assert {s.data.shape for s in restored["w"].addressable_shards} == {(8, 1)}


_MULTIPROCESS_WORKER = """
import os, sys
process_id, port, directory = int(sys.argv[1]), sys.argv[2], sys.argv[3]
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=process_id)
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from core_jax.checkpoint import Checkpointer

mesh = Mesh(np.array(jax.devices()).reshape(2, 4), ("a", "b"))
full = np.arange(64, dtype=np.float32).reshape(8, 8)
x = jax.make_array_from_callback((8, 8), NamedSharding(mesh, P("a", "b")), lambda i: full[i])
# Every jax.Array leaf must be a global array in multi-process runs (not host-local).
key = jax.jit(lambda: jax.random.key(0), out_shardings=NamedSharding(mesh, P()))()
with Checkpointer(directory) as ckpt:
    ckpt.save(1, {"x": x, "key": key}, config={"lr": 0.1})
    ckpt.wait_until_finished()
    abstract = {
        "x": jax.ShapeDtypeStruct((8, 8), jnp.float32, sharding=NamedSharding(mesh, P(None, "b"))),
        "key": jax.ShapeDtypeStruct((), key.dtype, sharding=NamedSharding(mesh, P())),
    }
    restored = ckpt.restore(abstract)
    for shard in restored.state["x"].addressable_shards:
        np.testing.assert_array_equal(np.asarray(shard.data), full[shard.index])
    assert restored.config == {"lr": 0.1} and ckpt.all_steps() == [1]
print("OK", process_id, flush=True)
"""


@pytest.mark.multiprocess
def test_two_process_save_and_resharded_restore(tmp_path):
    import socket
    import subprocess
    import sys

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    script = tmp_path / "worker.py"
    script.write_text(_MULTIPROCESS_WORKER)
    repo_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, "PYTHONPATH": repo_root, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(i), str(port), str(tmp_path / "ckpt")],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outputs = []
    for proc in procs:
        try:
            outputs.append(proc.communicate(timeout=120)[0])
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
    for i, (proc, out) in enumerate(zip(procs, outputs, strict=True)):
        assert proc.returncode == 0 and f"OK {i}" in out, out[-3000:]
