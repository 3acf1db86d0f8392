"""benchmarks/env_steps: the timed rollout does what it claims (random legal steps, auto-reset)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import env_steps


@pytest.mark.parametrize("name", ["maze", pytest.param("textcraft", marks=pytest.mark.slow)])
def test_rollout_equals_python_loop_with_auto_reset(name):
    """scan(vmap(step)) with random legal actions == a Python loop of single-env steps that puts a
    finished env back to its reset state; every action taken is legal. (TextCraft: its state
    carries the legal mask, which the step passes through and auto_reset skips.)"""
    chex.clear_trace_counter()  # the counter is per function name ("rollout"), across params
    env = env_steps.make_env(name)
    # > max_rounds (Maze 15, TextCraft 20): every row finishes and is reset at least twice
    batch, steps = 3, 2 * env.max_rounds + 10
    keys = jax.random.split(jax.random.key(0), batch)
    idx = env_steps._indices(name, batch)
    state0, ts0 = jax.vmap(env.reset)(keys, idx)
    key = jax.random.key(1)
    rollout = jax.jit(chex.assert_max_traces(env_steps.make_rollout(env, name, steps), n=1))
    n_prim, check, final = rollout(state0, ts0.legal_actions, key)
    assert int(n_prim) == 0  # primitive steps are counted for BabyAI only
    step = jax.jit(env.step)
    row = lambda tree, i: jax.tree.map(lambda a: a[i], tree)  # noqa: E731
    states = [row(state0, i) for i in range(batch)]
    legal = [np.asarray(ts0.legal_actions[i]) for i in range(batch)]
    resets = 0
    total = 0
    pick = jax.jit(env_steps.pick_legal)
    for k in jax.random.split(key, steps):
        u = jax.random.uniform(k, (batch,))
        for i in range(batch):
            a = pick(u[i], jnp.asarray(legal[i]))
            assert legal[i][int(a)]
            states[i], ts = step(states[i], a)
            total += int(np.sum(np.where(ts.obs_mask, ts.obs_tokens, 0)))
            if bool(ts.done):
                states[i], legal[i] = row(state0, i), np.asarray(ts0.legal_actions[i])
                resets += 1
            else:
                legal[i] = np.asarray(ts.legal_actions)
    assert resets >= 2 * batch
    assert int(check) == np.int32(total)  # every step's observation tokens were built
    for i in range(batch):
        chex.assert_trees_all_equal(states[i], row(final, i))
    rollout(state0, ts0.legal_actions, key)  # same shapes: no retrace


def test_pick_legal_is_the_floor_u_n_th_legal_id():
    """pick_legal(u, legal) == the floor(u * n)-th legal id (n legal ids), any mask width."""
    pick = jax.jit(env_steps.pick_legal)
    rng = np.random.default_rng(0)
    for width in (1, 31, 32, 33, 477):
        for t in range(8):
            legal = rng.random(width) < rng.random()
            legal[rng.integers(width)] = True
            u = np.float32(
                [0.0, np.nextafter(np.float32(1), np.float32(0))][t] if t < 2 else rng.random()
            )
            ids = np.flatnonzero(legal)
            want = ids[min(int(u * np.float32(len(ids))), len(ids) - 1)]
            assert int(pick(jnp.float32(u), jnp.asarray(legal))) == want, (width, t)


def test_primitive_rollout_equals_python_loop():
    """BabyAI primitive/image mode: scan(vmap(step)) with random primitives and auto-reset ==
    a Python loop; the checksum covers every step's image."""
    env = env_steps.make_env("babyai_primitive")
    batch, steps = 2, 12
    keys = jax.random.split(jax.random.key(0), batch)
    w0 = jax.vmap(lambda k, i: env.reset(k, i)[0])(keys, env_steps._indices("babyai", batch))
    w0 = w0.replace(max_steps=jnp.full((batch,), 5, jnp.int32))  # episodes end inside the scan
    key = jax.random.key(1)
    n, check, final = jax.jit(env_steps.make_primitive_rollout(env, steps))(w0, key)
    assert int(n) == batch * steps
    step = jax.jit(env.step)
    row = lambda tree, i: jax.tree.map(lambda a: a[i], tree)  # noqa: E731
    worlds = [row(w0, i) for i in range(batch)]
    total = resets = 0
    for k in jax.random.split(key, steps):
        acts = jax.random.randint(k, (batch,), 0, 6, dtype=jnp.int32)
        for i in range(batch):
            worlds[i], ts = step(worlds[i], acts[i])
            total += int(np.sum(np.asarray(ts.image, np.int64)))
            if bool(ts.done):
                worlds[i] = row(w0, i)
                resets += 1
    assert resets >= batch and int(check) == np.int32(total)
    for i in range(batch):
        chex.assert_trees_all_equal(worlds[i], row(final, i))


def test_envs_option_selects_a_subset_and_rejects_unknown_names():
    """--envs: a comma-separated subset, in ENVS order; unknown or repeated names are errors."""
    assert env_steps.parse_envs(None) == env_steps.ENVS
    assert env_steps.parse_envs("wordle, maze") == ("maze", "wordle")
    assert env_steps.parse_envs("textcraft") == ("textcraft",)
    with pytest.raises(ValueError, match="unknown env.*'mazes'"):
        env_steps.parse_envs("maze,mazes")
    with pytest.raises(ValueError, match="named twice"):
        env_steps.parse_envs("maze,maze")
    with pytest.raises(SystemExit):
        env_steps.main(["--envs", "nope"])
