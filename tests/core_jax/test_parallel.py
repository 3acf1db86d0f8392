"""Meshes, logical sharding rules, sharded init and the train-step builder on 8 CPU devices."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from core_jax.losses import masked_cross_entropy
from core_jax.nn import Transformer, TransformerConfig
from core_jax.optim import OptimizerConfig, make_optimizer
from core_jax.parallel import (
    MeshConfig,
    _fit_spec,
    host_to_global,
    init_sharded,
    make_mesh,
    make_train_step,
)
from core_jax.train_state import TrainState

needs8 = pytest.mark.skipif(len(jax.devices()) < 8, reason="needs 8 (simulated) devices")

CFG = TransformerConfig(
    vocab_size=64,
    d_model=32,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    mlp_dim=64,
    positions="rope",
    max_len=16,
)


def loss_fn(params, batch, model):
    logits = model.apply({"params": params}, batch["inputs"])
    return masked_cross_entropy(logits, batch["targets"], batch["mask"])[0]


MODEL = Transformer(CFG)


def train_step(state, batch):
    loss, grads = jax.value_and_grad(loss_fn)(state.params, batch, MODEL)
    return state.apply_gradients(grads), {"loss": loss, "grads": grads}


def make_batch(seed=0, b=8, length=16):
    rng = np.random.default_rng(seed)
    toks = rng.integers(0, CFG.vocab_size, (b, length + 1)).astype(np.int32)
    return {
        "inputs": toks[:, :-1],
        "targets": toks[:, 1:],
        "mask": (rng.random((b, length)) > 0.2).astype(np.float32),
    }


def create_state(key):
    model = Transformer(CFG)
    params = model.init(key, jnp.zeros((1, CFG.max_len), jnp.int32))["params"]
    return TrainState.create(
        params=params,
        tx=make_optimizer(OptimizerConfig(peak_lr=1e-2)),
        rng=jax.random.fold_in(key, 1),
    )


def run(mesh_cfg, devices, steps=2):
    mesh = make_mesh(mesh_cfg, devices)
    state, sharding = init_sharded(create_state, mesh, jax.random.key(0))
    step = make_train_step(train_step, mesh=mesh, state_sharding=sharding)
    losses, grads = [], None
    for i in range(steps):
        state, metrics = step(state, host_to_global(make_batch(i), mesh))
        losses.append(float(metrics["loss"]))
        grads = grads or jax.device_get(metrics["grads"])
    return losses, grads, jax.device_get(state.params), state, mesh


def test_mesh_config_resolution_and_errors():
    assert MeshConfig(data=-1, fsdp=2, model=2).resolve(8) == (2, 2, 2)
    assert MeshConfig().resolve(8) == (8, 1, 1)
    with pytest.raises(ValueError, match="only one axis"):
        MeshConfig(data=-1, fsdp=-1).resolve(8)
    with pytest.raises(ValueError, match="MeshConfig.data"):
        MeshConfig(data=-1, fsdp=3).resolve(8)
    with pytest.raises(ValueError, match="8 devices"):
        MeshConfig(data=2, fsdp=2, model=1).resolve(8)
    with pytest.raises(ValueError, match="MeshConfig.model"):
        MeshConfig(model=0).resolve(8)


@needs8
def test_fit_spec_replicates_indivisible_dims():
    mesh = make_mesh(MeshConfig(data=2, fsdp=2, model=2))
    assert _fit_spec(PartitionSpec("fsdp", "model"), (6, 3), mesh) == PartitionSpec("fsdp", None)
    spec = _fit_spec(PartitionSpec(("data", "fsdp")), (2,), mesh)
    assert spec == PartitionSpec("data")


@needs8
def test_8_devices_match_1_device():
    ref_losses, ref_grads, ref_params, _, _ = run(MeshConfig(), jax.devices()[:1])
    losses, grads, params, state, mesh = run(MeshConfig(data=2, fsdp=2, model=2), jax.devices())
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_close(grads, ref_grads, rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_close(params, ref_params, rtol=1e-5, atol=1e-5)
    # Parameters really are sharded: the query kernel [embed, heads, head_dim] is split over
    # fsdp (embed) and model (heads); AdamW moments follow their parameters.
    q = state.params["layer_0"]["attn"]["query"]["kernel"]
    assert q.sharding.spec == PartitionSpec("fsdp", "model", None)
    mu = state.opt_state[1][0].mu["layer_0"]["attn"]["query"]["kernel"]
    assert mu.sharding.spec == PartitionSpec("fsdp", "model", None)
    assert len(q.addressable_shards) == 8 and q.addressable_shards[0].data.shape == (16, 2, 8)


@needs8
def test_train_step_does_not_retrace():
    mesh = make_mesh(MeshConfig(data=4, fsdp=2))
    state, sharding = init_sharded(create_state, mesh, jax.random.key(0))
    chex.clear_trace_counter()
    step = make_train_step(
        chex.assert_max_traces(train_step, n=1), mesh=mesh, state_sharding=sharding
    )
    for i in range(3):
        state, _ = step(state, host_to_global(make_batch(i), mesh))
    assert int(state.step) == 3


@needs8
def test_host_to_global_checks_divisibility():
    mesh = make_mesh(MeshConfig(data=4, fsdp=2))
    out = host_to_global({"x": np.zeros((8, 3), np.float32)}, mesh)
    assert out["x"].shape == (8, 3) and len(out["x"].addressable_shards) == 8
    with pytest.raises(ValueError, match="not divisible"):
        host_to_global({"x": np.zeros((6, 3), np.float32)}, mesh)
    with pytest.raises(ValueError, match="leading batch axis"):
        host_to_global({"x": np.float32(1.0)}, mesh)
