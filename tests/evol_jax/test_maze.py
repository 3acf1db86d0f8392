"""evol_jax.envs.maze: parity with every recorded AgentGym maze exchange, jit/vmap, expert."""

import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from evol_jax.envs import make
from evol_jax.envs import maze as M
from tests.evol_jax import agentgym_data as data

FINISHED = re.compile(r"^The task with environment \d+ has finished\.$")


@pytest.fixture(scope="module")
def env():
    # The server itself has no round limit: the client stops after 15 (60 for two episodes).
    return make("maze", agentgym_compat=True, max_rounds=10**6)


@pytest.fixture(scope="module")
def fns(env):
    return jax.jit(env.reset), jax.jit(env.step)


def test_layout_matches_shared_file():
    layout = data.load_json("maze_layout.json")
    assert layout["rows"] == list(M.MAZE_ROWS)
    np.testing.assert_array_equal(np.array(layout["walls"], bool), M.WALLS)
    assert tuple(layout["goal"]) == M.GOAL
    assert [tuple(p) for p in layout["start_positions"]] == list(M.START_POSITIONS)
    assert {k: tuple(v) for k, v in layout["actions"].items()} == {
        a: tuple(d) for a, d in zip(M.ACTIONS, M.DELTAS.tolist(), strict=True)
    }
    assert layout["max_steps"] == M.MAX_STEPS


def test_expert_table_equals_lmrl_gym_optimal_directions():
    layout = data.load_json("maze_layout.json")
    for key, move in layout["optimal_directions"].items():
        r, c = map(int, key.split(","))
        assert M.ACTIONS[M.BEST_ACTION[r, c]] == move, key


def test_parity_every_transcript_record(env, fns):
    reset, step = fns
    records = data.load_jsonl("maze_transcripts.jsonl")
    checked = 0
    for episode in data.episodes(records):
        first = episode[0]
        assert first["step"] == 0
        state, ts = reset(jax.random.key(0), first["game"])
        if "error" in first["payload"]:
            assert env.reset_error_message(state) == first["payload"]["error"]
            assert bool(ts.done)
            checked += 1
            continue
        assert env.reset_error_message(state) is None
        expected = first["payload"]["observation"]
        assert env.observation_text(ts) == expected == env.render_text(state)
        assert list(np.asarray(ts.obs_tokens)[np.asarray(ts.obs_mask)]) == env.codec.encode(
            expected
        )
        checked += 1
        for rec in episode[1:]:
            payload = rec["payload"]
            if "error" in payload:
                # The server refuses steps after done; our state says the episode is over.
                assert FINISHED.match(payload["error"]) and bool(state.done)
                checked += 1
                continue
            try:
                action = env.action_from_text(rec["action"])
            except M.InvalidAction:
                action = M.INVALID_ACTION
            state, ts = step(state, jnp.int32(action))
            assert env.observation_text(ts) == payload["observation"], rec
            assert env.render_text(state) == payload["observation"]
            assert float(ts.reward) == payload["reward"]
            assert bool(ts.done) == payload["done"]
            assert not bool(ts.truncated)
            st = rec["state"]
            assert list(np.asarray(state.pos)) == st["position"]
            assert int(state.num_steps) == st["num_steps"]
            checked += 1
    assert checked == len(records) == 444


def test_step_text_matches_action_ids(env):
    state, _ = env.reset(jax.random.key(0), 3)
    step = jax.jit(env.step)
    for text in ["move right", "move right ", "Move right", "move\tright", "move right\n", ""]:
        s1, t1, obs = env.step_text(state, text)
        assert obs == env.render_text(s1)
        try:
            a = env.action_from_text(text)
        except M.InvalidAction:
            a = -1
        s2, t2 = step(state, jnp.int32(a))
        chex.assert_trees_all_equal((s1, t1), (s2, t2))
    assert env.action_from_text("move right") == 1
    with pytest.raises(M.InvalidAction, match="not a maze move"):
        env.action_from_text("move right ")


def test_compat_reset_errors(env):
    for game, message in [(25, ""), (26, "The game 26 is not valid."), (-1, ""),
                          (-27, "list index out of range")]:  # fmt: skip
        state, ts = env.reset(jax.random.key(0), game)
        assert env.reset_error_message(state) == message
        assert bool(ts.done) and env.observation_text(ts) == ""
    state, ts = env.reset(jax.random.key(0), -2)  # Python indexing wraps: start 24
    assert list(np.asarray(state.pos)) == list(M.START_POSITIONS[24])
    # A finished (error) state does not move.
    s2, t2 = env.step(state.replace(done=jnp.bool_(True)), jnp.int32(3))
    assert float(t2.reward) == 0.0 and list(np.asarray(s2.pos)) == list(M.START_POSITIONS[24])


def test_default_mode_every_index_playable():
    env = make("maze")
    assert env.max_rounds == 15 and not env.agentgym_compat
    for idx in [0, 24, 25, 26, 49, -1]:
        state, ts = env.reset(jax.random.key(0), idx)
        assert not bool(ts.done)
        assert list(np.asarray(state.pos)) == list(M.START_POSITIONS[idx % 25])


def test_round_limit_truncates():
    env = make("maze", max_rounds=3)
    state, _ = env.reset(jax.random.key(0), 0)
    for t in range(3):
        state, ts = env.step(state, jnp.int32(0))  # into the wall: never terminal
        assert bool(ts.done) == (t == 2) and bool(ts.truncated) == (t == 2)
    state2, ts2 = env.step(state, jnp.int32(1))
    chex.assert_trees_all_equal(state2, state)
    assert float(ts2.reward) == 0.0 and not bool(ts2.truncated)


def test_failure_after_max_steps():
    env = make("maze", agentgym_compat=True, max_rounds=100, max_steps=4)
    state, _ = env.reset(jax.random.key(0), 0)
    for _ in range(4):
        state, ts = env.step(state, jnp.int32(-1))
    assert not bool(ts.done) and int(state.num_steps) == 4
    state, ts = env.step(state, jnp.int32(1))
    assert env.observation_text(ts) == "Failure\n" and float(ts.reward) == -1.0
    assert bool(ts.done) and list(np.asarray(state.pos)) == [1, 1]  # Failure before moving


def _expert_rollout(env, step, idx, steps):
    state, ts = env.reset(jax.random.key(0), idx)
    for _ in range(steps):
        state, ts = step(state)
    return state, ts


def test_expert_solves_every_start_in_shortest_steps():
    env = make("maze")
    step = jax.jit(lambda s: env.step(s, env.expert_action(s)))
    for idx in range(M.NUM_PLAYABLE):
        r, c = M.START_POSITIONS[idx]
        d = int(M.DISTANCE[r, c])
        state, ts = _expert_rollout(env, step, idx, d)
        assert bool(state.success) and float(ts.reward) == 1.0, idx
        assert int(state.round) == d
        assert "shortest path" in env.expert_thought(env.reset(jax.random.key(0), idx)[0], 1)


def test_jit_vmap_no_retrace_and_vmap_equals_loop():
    env = make("maze")
    n = 64
    idx = jnp.arange(n, dtype=jnp.int32)
    keys = jax.random.split(jax.random.key(1), n)
    rng = np.random.default_rng(0)
    actions = jnp.asarray(rng.integers(-1, 4, size=(12, n)), jnp.int32)

    reset_b = jax.jit(jax.vmap(chex.assert_max_traces(env.reset, n=1)))
    step_b = jax.jit(jax.vmap(chex.assert_max_traces(env.step, n=1)))
    state, ts = reset_b(keys, idx)
    batched = []
    for t in range(actions.shape[0]):
        state, ts = step_b(state, actions[t])
        batched.append(ts)
    # A second batch of the same shape must not retrace.
    reset_b(keys, idx + 1)

    for i in [0, 7, 25, 63]:
        s, _ = env.reset(keys[i], idx[i])
        for t in range(actions.shape[0]):
            s, tsi = env.step(s, actions[t, i])
            chex.assert_trees_all_equal(tsi, jax.tree.map(lambda x, i=i: x[i], batched[t]))
        chex.assert_trees_all_equal(s, jax.tree.map(lambda x, i=i: x[i], state))


def test_bad_inputs():
    env = make("maze")
    with pytest.raises(ValueError, match="outside"):
        env.action_text(4)
    with pytest.raises(ValueError, match="max_rounds"):
        make("maze", max_rounds=0)
    with pytest.raises(M.InvalidAction):
        env.action_from_text(3)
