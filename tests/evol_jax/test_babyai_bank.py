"""BabyAI instance banks: a bank row resets to the same first observation as the minigrid import."""

import contextlib
import io

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("minigrid")

from evol_jax.envs import babyai_import as bi  # noqa: E402
from evol_jax.envs.babyai import BabyAI  # noqa: E402

# Level 23 (PutNextS7N4Carrying) starts carrying: AgentGym's reset text describes the image rendered
# before the pickup. 6, 10 and 30 are other import-only levels (no native generator).
INSTANCES = [(23, 0), (23, 1), (6, 0), (10, 1), (30, 0)]


@pytest.fixture(scope="module")
def bank():
    env = BabyAI()
    with contextlib.redirect_stdout(io.StringIO()):  # minigrid prints rejected samples
        return bi.bank_from_minigrid(INSTANCES, env._goal_ids)


def _minigrid(level, seed):
    from evol_jax.envs.babyai import make_minigrid

    with contextlib.redirect_stdout(io.StringIO()):
        return make_minigrid(level, seed)


def test_bank_shapes_and_images(bank):
    b = len(INSTANCES)
    assert bank.goals.shape[0] == bank.goal_lens.shape[0] == bank.images.shape[0] == b
    assert bank.images.shape[1:] == (7, 7, 3) and bank.images.dtype == jnp.int32
    views = jax.device_get(jax.jit(jax.vmap(bi.core.view_image))(bank.worlds))
    for i, (level, seed) in enumerate(INSTANCES):
        live = views[i]
        stored = np.asarray(bank.images[i])
        np.testing.assert_array_equal(stored, bi.reset_image(_minigrid(level, seed)))
        # only the start-carrying level's reset image differs from the live view
        assert (level == 23) == (not np.array_equal(stored, live)), (level, seed)


@pytest.mark.slow  # compiles BabyAI's reset observation (init_state) twice per mode
@pytest.mark.parametrize("compat", [False, True])
def test_bank_row_resets_like_minigrid_import(bank, compat):
    env = BabyAI(agentgym_compat=compat)
    init = jax.jit(lambda i: env.init_state(*bi.bank_instance(bank, i, compat)))
    for i, (level, seed) in enumerate(INSTANCES):
        state, ts = init(jnp.int32(i))
        with contextlib.redirect_stdout(io.StringIO()):
            ref, ref_ts = env.reset_from_minigrid(level=level, seed=seed)
        assert env.render_text(state) == env.render_text(ref), (level, seed, compat)
        chex.assert_trees_all_equal(ts, ref_ts)
        chex.assert_trees_all_equal(state, ref)
    # the stale image matters: the live view of level 23 gives another compat text
    if compat:
        world, goal, glen, _ = bi.bank_instance(bank, 0, False)
        live, _ = env.init_state(world, goal, glen)
        assert env.render_text(live) != env.render_text(init(jnp.int32(0))[0])


def test_bank_instance_wraps_and_vmaps(bank):
    rows = jax.vmap(lambda i: bi.bank_instance(bank, i, True))(jnp.arange(2 * len(INSTANCES)))
    b = len(INSTANCES)
    chex.assert_trees_all_equal(
        jax.tree.map(lambda a: a[:b], rows), jax.tree.map(lambda a: a[b:], rows)
    )
    np.testing.assert_array_equal(rows[3], bank.images[np.arange(2 * b) % b])


def test_bank_errors():
    env = BabyAI()
    with pytest.raises(ValueError, match="no instances"):
        bi.bank_from_minigrid([], env._goal_ids)
    with pytest.raises(ValueError, match="level must be in 1..40"):
        bi.bank_from_minigrid([(41, 0)], env._goal_ids)


def test_bank_reset_image_native_levels_use_the_live_view(bank):
    f = jax.jit(lambda i, w: (bi.bank_reset_image(bank, i, w), bi.core.view_image(w)))
    world = jax.tree.map(lambda a: a[0], bank.worlds)
    # idx 22 = level 23, import-only: row 22 % 5's stored image; idx 0 = level 1, native: live view
    got, _ = f(jnp.int32(22), world)
    np.testing.assert_array_equal(got, bank.images[22 % len(INSTANCES)])
    got, live = f(jnp.int32(0), world)
    np.testing.assert_array_equal(got, live)
    # vmapped over indices == per index
    idx = jnp.arange(45)
    worlds = jax.tree.map(lambda a: a[idx % len(INSTANCES)], bank.worlds)
    many, _ = jax.jit(jax.vmap(f))(idx, worlds)
    for i in (0, 5, 22, 44):
        w = jax.tree.map(lambda a, i=i: a[i % len(INSTANCES)], bank.worlds)
        np.testing.assert_array_equal(many[i], f(jnp.int32(i), w)[0])


@pytest.mark.slow  # compiles BabyAI.reset per mode
@pytest.mark.parametrize("compat", [False, True])
def test_env_reset_from_a_bank_equals_the_minigrid_import(compat):
    # BabyAI.reset of an import-only level draws row idx % bank size; with one row (level 23,
    # seed 0) idx 22 (level 23) and idx 62 (level 23 again) both are that instance, and the
    # compat first observation is upstream's stale reset text.
    env = BabyAI(agentgym_compat=compat)
    with contextlib.redirect_stdout(io.StringIO()):
        env.use_bank(env.bank_from_minigrid([(23, 0)]))
        ref, ref_ts = env.reset_from_minigrid(level=23, seed=0)
    reset = jax.jit(env.reset)
    for idx in (22, 62):
        state, ts = reset(jax.random.key(idx), jnp.int32(idx))
        assert env.render_text(state) == env.render_text(ref), (idx, compat)
        chex.assert_trees_all_equal(ts, ref_ts)
