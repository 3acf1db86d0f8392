"""Known answers for masked cross-entropy, the optimizer schedule/masks and config overrides."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from core_jax import config as config_lib
from core_jax.demo import DemoConfig
from core_jax.losses import masked_cross_entropy
from core_jax.nn import TransformerConfig
from core_jax.optim import OptimizerConfig, decay_mask, make_optimizer, make_schedule


def test_masked_cross_entropy_matches_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 5, 7)).astype(np.float64)
    targets = rng.integers(0, 7, (3, 5))
    mask = (rng.random((3, 5)) > 0.4).astype(np.float64)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
    expected = (nll * mask).sum() / mask.sum()
    loss, metrics = masked_cross_entropy(
        jnp.asarray(logits, jnp.float32), jnp.asarray(targets), jnp.asarray(mask)
    )
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    acc = ((logits.argmax(-1) == targets) * mask).sum() / mask.sum()
    np.testing.assert_allclose(metrics["accuracy"], acc, rtol=1e-6)
    assert float(metrics["num_tokens"]) == mask.sum()


def test_masked_targets_get_no_gradient():
    logits = jax.random.normal(jax.random.key(0), (2, 6, 5))
    targets = jnp.zeros((2, 6), jnp.int32)
    mask = jnp.array([[1, 1, 0, 0, 1, 0]] * 2, jnp.float32)
    g = jax.grad(lambda x: masked_cross_entropy(x, targets, mask)[0])(logits)
    assert np.all(np.asarray(g)[:, [2, 3, 5]] == 0)
    assert np.all(np.abs(np.asarray(g)[:, [0, 1, 4]]).sum(-1) > 0)


def test_cross_entropy_shape_errors():
    with pytest.raises(ValueError, match="disagree"):
        masked_cross_entropy(jnp.zeros((2, 3, 4)), jnp.zeros((2, 4), jnp.int32))


def test_schedule_warmup_then_cosine():
    cfg = OptimizerConfig(peak_lr=1.0, init_lr=0.0, end_lr=0.1, warmup_steps=10, decay_steps=110)
    s = make_schedule(cfg)
    np.testing.assert_allclose([s(0), s(5), s(10)], [0.0, 0.5, 1.0], atol=1e-6)
    np.testing.assert_allclose(s(60), 0.1 + 0.9 * 0.5, atol=1e-6)  # half way through cosine
    np.testing.assert_allclose(s(110), 0.1, atol=1e-6)
    lin = make_schedule(dataclasses.replace(cfg, schedule="linear"))
    np.testing.assert_allclose(lin(60), 0.55, atol=1e-6)


def test_weight_decay_only_on_matrices():
    params = {"w": jnp.ones((3, 3)), "b": jnp.ones(3), "scale": jnp.ones(3)}
    assert decay_mask(params) == {"w": True, "b": False, "scale": False}
    cfg = OptimizerConfig(
        peak_lr=0.0, warmup_steps=0, schedule="constant", weight_decay=0.5, clip_norm=None
    )
    tx = make_optimizer(dataclasses.replace(cfg, peak_lr=1.0))
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zeros, tx.init(params), params)
    np.testing.assert_allclose(updates["w"], -0.5 * np.ones((3, 3)))  # -lr * wd * w
    np.testing.assert_allclose(updates["b"], 0.0)


def test_gradient_accumulation_equals_big_batch():
    cfg = OptimizerConfig(peak_lr=0.1, warmup_steps=0, schedule="constant", clip_norm=None)
    params = {"w": jnp.arange(4.0)}
    g1, g2 = {"w": jnp.array([1.0, 2, 3, 4])}, {"w": jnp.array([3.0, 2, 1, 0])}
    big = make_optimizer(cfg)
    u_big, _ = big.update({"w": (g1["w"] + g2["w"]) / 2}, big.init(params), params)
    acc = make_optimizer(dataclasses.replace(cfg, grad_accum_steps=2))
    st = acc.init(params)
    u1, st = acc.update(g1, st, params)
    np.testing.assert_allclose(u1["w"], 0.0)
    u2, st = acc.update(g2, st, params)
    np.testing.assert_allclose(u2["w"], u_big["w"], rtol=1e-6)


def test_optimizer_config_errors():
    with pytest.raises(ValueError, match="schedule"):
        OptimizerConfig(schedule="step")
    with pytest.raises(ValueError, match="grad_accum_steps"):
        OptimizerConfig(grad_accum_steps=0)


def test_config_overrides_and_roundtrip():
    cfg = DemoConfig()
    new = config_lib.apply_overrides(
        cfg,
        [
            "model.d_model=64",
            "optim.peak_lr=1e-4",
            "batch_size=8",
            "mesh.data=-1",
            "optim.clip_norm=None",
        ],
    )
    assert new.model.d_model == 64 and new.optim.peak_lr == 1e-4 and new.batch_size == 8
    assert new.optim.clip_norm is None
    assert isinstance(new.model, TransformerConfig)
    assert config_lib.from_dict(DemoConfig, config_lib.to_dict(new)) == new
    with pytest.raises(ValueError, match="unknown key 'nope'"):
        config_lib.apply_overrides(cfg, ["model.nope=1"])
    with pytest.raises(ValueError, match="model.d_model"):
        config_lib.apply_overrides(cfg, ["model.d_model=big"])
    with pytest.raises(ValueError, match="TransformerConfig.num_heads"):
        config_lib.apply_overrides(cfg, ["model.num_heads=3"])
    with pytest.raises(ValueError, match="key=value"):
        config_lib.apply_overrides(cfg, ["model.d_model"])


def test_optax_state_is_plain_pytree():
    tx = make_optimizer(OptimizerConfig())
    state = tx.init({"w": jnp.ones((2, 2))})
    assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(state))
    assert isinstance(tx, optax.GradientTransformation)


def test_split_update_step_equals_one_program():
    """Gradient and update compiled apart (update without YNN eltwise) == one jitted step."""
    from core_jax import cpu_flags
    from core_jax.optim import split_update_step

    rng = np.random.default_rng(7)
    params = {
        "w": jnp.asarray(rng.normal(size=(16, 8)), jnp.float32),
        "b": jnp.asarray(rng.normal(size=(8,)), jnp.float32),
    }
    x = jnp.asarray(rng.normal(size=(32, 16)), jnp.float32)
    y = jnp.asarray(rng.normal(size=(32, 8)), jnp.float32)
    tx = make_optimizer(OptimizerConfig(peak_lr=1e-2, warmup_steps=2, decay_steps=10))

    def loss_fn(p, x, y):
        return jnp.mean((jnp.tanh(x @ p["w"] + p["b"]) - y) ** 2)

    vg = jax.value_and_grad(loss_fn)

    @jax.jit
    def fused(p, s, x, y):
        loss, g = vg(p, x, y)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s, loss

    step = split_update_step(vg, tx, params, tx.init(params), x, y)
    assert len(step.compiled) == 2
    p1, s1 = params, tx.init(params)
    p2, s2 = jax.tree.map(jnp.copy, params), tx.init(params)
    for _ in range(4):
        p1, s1, l1 = fused(p1, s1, x, y)
        p2, s2, l2 = step(p2, s2, x, y)
        np.testing.assert_allclose(l2, l1, rtol=1e-6)
    for a, b in zip(jax.tree.leaves((p1, s1)), jax.tree.leaves((p2, s2)), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7)
    # On CPU the options name a fusion list without eltwise; elsewhere they are empty.
    opts = cpu_flags.optimizer_compiler_options("cpu")
    assert not opts or "ELTWISE" not in opts["xla_cpu_experimental_ynn_fusion_type"]
    assert cpu_flags.optimizer_compiler_options("gpu") == {}
