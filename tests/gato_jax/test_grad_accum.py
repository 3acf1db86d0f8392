"""Gradient accumulation through gato_jax.train.train_step: k micro-steps == one big step.

The masked loss is a mean over target tokens, and the micro-batches hold different numbers of
targets, so the accumulation must weight by token counts
(:func:`gato_jax.train.token_weighted_multisteps`); a plain ``optax.MultiSteps`` mean of the
micro-batch losses is shown to differ.
"""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from core_jax import optim
from core_jax.optim import OptimizerConfig
from core_jax.train_state import TrainState
from gato_jax.configs import get_config
from gato_jax.models import Gato
from gato_jax.synthetic import SyntheticData
from gato_jax.train import (
    TokenWeightedState,
    gato_loss,
    make_optimizer,
    token_weighted_multisteps,
    train_step,
    update_count,
)

B = 4


@functools.lru_cache
def _setup():
    cfg = get_config("gato_tiny")
    t = dataclasses.replace(cfg.model.transformer, stochastic_depth=0.0)
    cfg = dataclasses.replace(
        cfg, model=dataclasses.replace(cfg.model, transformer=t), batch_size=B, seed=3
    )
    batch = jax.tree.map(jnp.asarray, next(SyntheticData(cfg, 0, 1)))
    # One-bin patch intervals: the train-time position sample is then the same in every split
    # of the batch (the only other randomness, stochastic depth, is off).
    one_bin = lambda iv: iv.at[..., 1].set(iv[..., 0] + 1)  # noqa: E731
    batch = batch.replace(
        patch_rows=one_bin(batch.patch_rows), patch_cols=one_bin(batch.patch_cols)
    )
    # Textured patches: the synthetic images are flat colours, for which gato_tiny's
    # one-channel GroupNorm groups have zero variance and the stem gradient is rounding noise
    # (see test_models.test_eight_device_fsdp_matches_one_device); that noise would make the
    # comparison test float reassociation rather than the accumulation.
    noise = 0.05 * jax.random.normal(jax.random.key(1), batch.patches.shape)
    batch = batch.replace(patches=batch.patches + noise)
    model = Gato(cfg.model)
    params = nn.meta.unbox(jax.jit(model.init)(jax.random.key(0), batch)["params"])
    return model, params, batch


# eps 0.1 makes the first AdamW update nearly linear in the gradient (with the usual 1e-8 it is
# ~lr * sign(g), blind to how the gradient is scaled); no clipping, for the same reason.
LINEAR = OptimizerConfig(
    peak_lr=1e-2, schedule="constant", eps=0.1, weight_decay=0.1, clip_norm=None
)
# Same, with global-norm clipping active (the tiny model's gradient norm at init is > 0.2):
# the accumulator must normalise by the token count before clipping. (Paper settings, eps 1e-8,
# turn rounding noise in near-zero gradients into +-lr steps in the second update, which no
# 1e-5 comparison survives.)
CLIPPED = dataclasses.replace(LINEAR, clip_norm=0.2)


@functools.lru_cache
def _tx(opt: OptimizerConfig, token_weighted: bool = True):
    """One optimizer object per config, so the jitted step is traced once per (tx, shape)."""
    return (make_optimizer if token_weighted else optim.make_optimizer)(opt)


@functools.lru_cache
def _step(model):
    return jax.jit(functools.partial(train_step, model=model, schedule=lambda s: 1.0))


def _run(model, params, tx, batches, metrics=None):
    state = TrainState.create(params=params, tx=tx, rng=0)
    for b in batches:
        state, m = _step(model)(state, b)
        if metrics is not None:
            metrics.append(m)
    return state


def _split(batch, k):
    return [
        jax.tree.map(lambda x, i=i: x[i * (B // k) : (i + 1) * (B // k)], batch) for i in range(k)
    ]


def _max_diff(a, b):
    return max(jax.tree.leaves(jax.tree.map(lambda x, y: float(jnp.abs(x - y).max()), a, b)))


@pytest.mark.parametrize(
    "opt,k,cycles",
    [(LINEAR, 2, 1), pytest.param(CLIPPED, 4, 2, marks=pytest.mark.slow)],
)
def test_k_micro_steps_equal_one_big_step(opt, k, cycles):
    model, params, batch = _setup()
    micro = _split(batch, k)
    counts = [float(np.asarray(m.loss_mask[:, 1:]).sum()) for m in micro]
    assert len(set(counts)) > 1, counts  # the interesting case: unequal target counts
    ref_metrics = []
    ref = _run(model, params, _tx(opt), [batch] * cycles, ref_metrics)
    if opt.clip_norm:
        assert float(ref_metrics[0]["grad_norm"]) > 2 * opt.clip_norm  # clipping is active
    tx = _tx(dataclasses.replace(opt, grad_accum_steps=k))
    # Mid-cycle: nothing applied yet.
    partial = _run(model, params, tx, micro[: k - 1])
    assert _max_diff(partial.params, params) == 0.0
    acc = _run(model, params, tx, micro * cycles)
    assert isinstance(acc.opt_state, TokenWeightedState)
    assert int(update_count(acc)) == int(update_count(ref)) == cycles
    assert int(acc.step) == k * cycles
    moved = _max_diff(ref.params, params)
    assert moved > 1e-4  # the step did something
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5), acc.params, ref.params
    )


def test_plain_multisteps_mean_of_means_differs():
    """Why the token weighting is needed: averaging micro-batch means is a different loss."""
    model, params, batch = _setup()
    ref = _run(model, params, _tx(LINEAR), [batch])
    plain_tx = _tx(dataclasses.replace(LINEAR, grad_accum_steps=2), token_weighted=False)
    plain = _run(model, params, plain_tx, _split(batch, 2))
    assert int(update_count(plain)) == 1
    assert _max_diff(plain.params, ref.params) > 1e-4


def test_token_weighting_equals_weighted_mean_of_micro_gradients():
    """Known answer: the accumulated gradient is sum_i n_i * g_i / sum_i n_i."""
    model, params, batch = _setup()
    micro = _split(batch, 2)

    def mean_grad(b):
        f = lambda p: gato_loss(model.apply({"params": p}, b, deterministic=True), b)[0]  # noqa: E731
        return jax.jit(jax.grad(f))(params)

    n = [float(np.asarray(m.loss_mask[:, 1:]).sum()) for m in micro]
    g = [mean_grad(m) for m in micro]
    expected = jax.tree.map(lambda a, b: (n[0] * a + n[1] * b) / (n[0] + n[1]), *g)
    full = mean_grad(batch)
    # The full-batch gradient is the token-weighted mean, not the plain mean, of the halves.
    assert _max_diff(full, expected) < 1e-6
    assert _max_diff(full, jax.tree.map(lambda a, b: (a + b) / 2, *g)) > 1e-5
    # The accumulator hands exactly that to the inner optimizer: with an identity inner
    # transformation the update *is* its input (optax.apply_updates adds it to the params).
    state = _run(model, params, token_weighted_multisteps(optax.identity(), 2), micro)
    got = jax.tree.map(lambda a, b: a - b, state.params, params)
    assert _max_diff(got, expected) < 1e-6
