"""evol_jax.envs.babyai_primitive: primitive steps + image observation == minigrid's own env."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from evol_jax.envs import babyai_core as core
from evol_jax.envs.babyai import make_minigrid
from evol_jax.envs.babyai_import import world_from_minigrid
from evol_jax.envs.babyai_primitive import NUM_ACTIONS, BabyAIPrimitive


@pytest.fixture(scope="module")
def env():
    return BabyAIPrimitive()


@pytest.fixture(scope="module")
def step(env):
    return jax.jit(chex.assert_max_traces(env.step, n=1))


def _leaf_descs(instr):
    """minigrid's ObjDesc objects of a single-clause mission, as (device set field, desc)."""
    if hasattr(instr, "desc_move"):
        return [("set_a", instr.desc_move), ("set_b", instr.desc_fixed)]
    return [("set_a", instr.desc)] if hasattr(instr, "desc") else []


def _assert_tracking(w, u, where):
    """obj_cell is the inverse of oid (plus tracked walls); the tracked positions (poss_mask)
    are minigrid's obj_poss."""
    oid = np.asarray(w.oid).astype(np.int64)
    oc = np.asarray(w.obj_cell).astype(np.int64)
    xs, ys = np.nonzero(oid)
    assert np.array_equal(oc[oid[xs, ys]], xs * core.MAXS + ys), where
    others = np.setdiff1d(np.nonzero(oc >= 0)[0], oid[xs, ys])  # objects without an oid cell
    walls = np.asarray(w.grid)[oc[others] // core.MAXS, oc[others] % core.MAXS, 0]
    assert (walls == core.WALL).all(), where  # only walls a description tracks
    for field, desc in _leaf_descs(u.instrs):
        mask = np.asarray(core.poss_mask(w.mission, getattr(w.mission, field)[0]))
        assert set(zip(*np.nonzero(mask), strict=True)) == {tuple(p) for p in desc.obj_poss}, where


def _replay(env, step, level, seed, n_steps, rng, restart_seed):
    """Random primitives (all 7, ``done`` included) on minigrid and on device, side by side;
    returns (terminations, successes)."""
    menv = make_minigrid(level, seed)
    u = menv.unwrapped
    w, ts = env.reset_from_minigrid(menv)
    assert np.array_equal(np.asarray(ts.image), u.gen_obs()["image"])
    ends = wins = 0
    for t in range(n_steps):
        a = int(rng.choice(NUM_ACTIONS, p=[0.2, 0.2, 0.3, 0.1, 0.08, 0.1, 0.02]))
        obs, r, term, trunc, _ = menv.step(a)
        w, ts = step(w, jnp.int32(a))
        where = (level, seed, t, a)
        assert ts.image.dtype == jnp.uint8
        assert np.array_equal(np.asarray(ts.image), obs["image"]), where
        assert int(ts.direction) == obs["direction"], where
        # minigrid computes 1 - 0.9 t / T in float64, the device in float32
        assert abs(float(ts.reward) - r) < 1e-6, where
        assert (bool(ts.terminated), bool(ts.truncated)) == (term, trunc), where
        assert bool(ts.done) == (term or trunc), where
        assert np.array_equal(np.asarray(w.grid)[: u.width, : u.height], u.grid.encode()), where
        assert list(np.asarray(w.agent_pos)) == list(u.agent_pos), where
        assert int(w.agent_dir) == u.agent_dir and int(w.step_count) == u.step_count, where
        carrying = [0, 0, 0] if u.carrying is None else list(u.carrying.encode())
        assert list(np.asarray(w.carrying)) == carrying, where
        _assert_tracking(w, u, where)
        if term or trunc:
            ends += 1
            wins += r > 0
            menv.reset(seed=restart_seed + t)
            w, ts = env.reset_from_minigrid(menv)
    return ends, wins


def test_random_primitives_equal_minigrid(env, step):
    """Same world, image, direction, reward, terminated and truncated as minigrid's env.step on
    random primitive sequences: single-room go-to / put-next levels, doors and keys, boxes, a
    strict debug level (wrong pickups fail)."""
    rng = np.random.default_rng(0)
    ends = wins = 0
    for level, seed in ((1, 3), (4, 1), (20, 2), (22, 0), (26, 2)):
        e, w = _replay(env, step, level, seed, 35, rng, 1000 * level)
        ends, wins = ends + e, wins + w
    assert ends >= 3 and wins >= 1  # episode ends (success and failure) were exercised


@pytest.mark.slow
def test_random_primitives_equal_minigrid_many_levels(env, step):
    rng = np.random.default_rng(1)
    ends = wins = 0
    for level in (1, 2, 3, 4, 5, 9, 12, 16, 17, 20, 22, 24, 26, 28, 35, 38):
        for seed in (0, 1):
            e, w = _replay(env, step, level, seed, 200, rng, 1000 * level + 100 * seed)
            ends, wins = ends + e, wins + w
    assert ends >= 20 and 1 <= wins < ends


def test_vis_mask_equals_sequential_and_minigrid():
    """Table vis_mask == bit-parallel rows == the sequential loops == minigrid's
    Grid.process_vis."""
    from minigrid.core.grid import Grid
    from minigrid.core.world_object import Door, Key, Wall

    rng = np.random.default_rng(0)
    n = 400
    kinds = rng.choice([core.EMPTY, core.WALL, core.DOOR, core.KEY], size=(n, 7, 7))
    kinds = np.where(rng.random((n, 7, 7)) < rng.random((n, 1, 1)), kinds, core.EMPTY)
    states = rng.integers(0, 3, (n, 7, 7))
    enc = np.stack([kinds, np.zeros_like(kinds), states], -1).astype(np.int32)
    fast = np.asarray(jax.jit(jax.vmap(core.vis_mask))(jnp.asarray(enc)))
    slow = np.asarray(jax.jit(jax.vmap(core.vis_mask_sequential))(jnp.asarray(enc)))
    np.testing.assert_array_equal(fast, slow)
    bits = np.asarray(jax.jit(jax.vmap(core.vis_mask_bitwise))(jnp.asarray(enc)))
    np.testing.assert_array_equal(bits, slow)
    for k in range(60):  # minigrid itself on a subset
        g = Grid(7, 7)
        for i in range(7):
            for j in range(7):
                t, s = enc[k, i, j, 0], enc[k, i, j, 2]
                if t == core.WALL:
                    g.set(i, j, Wall())
                elif t == core.DOOR:
                    g.set(i, j, Door("red", is_open=s == core.OPEN, is_locked=s == core.LOCKED))
                elif t == core.KEY:
                    g.set(i, j, Key("red"))
        np.testing.assert_array_equal(fast[k], g.process_vis((3, 6)))
    assert 0.2 < fast.mean() < 0.9  # both visible and hidden cells exercised


def test_reset_of_a_level_without_generator_or_bank_raises(env):
    with pytest.raises(ValueError, match="level 6 .* has no native generator"):
        env.reset(jax.random.key(0), jnp.int32(5))


@pytest.mark.slow  # compiles the native reset twice (~40 s each on the loaded 2-core CPU)
def test_reset_vmap_native_level(env):
    keys = jax.random.split(jax.random.key(0), 8)
    idx = jnp.arange(8, dtype=jnp.int32) * 40  # level 1
    w, ts = jax.jit(jax.vmap(env.reset))(keys, idx)
    assert ts.image.shape == (8, 7, 7, 3) and not bool(jnp.any(ts.done))
    view = jax.jit(jax.vmap(core.view_image))
    np.testing.assert_array_equal(np.asarray(ts.image), np.asarray(view(w)))
    w1, ts1 = env.reset(keys[3], idx[3])
    chex.assert_trees_all_equal(w1, jax.tree.map(lambda a: a[3], w))


def test_import_equals_world_from_minigrid(env):
    menv = make_minigrid(12, 0)
    w, _ = env.reset_from_minigrid(menv)
    ref, _ = world_from_minigrid(menv)
    chex.assert_trees_all_equal(w, ref)


def test_import_mid_episode_keeps_stale_tracked_positions(env, step):
    """minigrid re-reads the tracked objects' positions only on drop: after a pickup its GoTo
    still succeeds in front of the object's old cell. The import reconstructs that table
    (`Mission.poss_cell`) and the device keeps it until the next drop, as minigrid does."""
    menv = make_minigrid(1, 3)  # go to the red ball
    u = menv.unwrapped
    x, y = map(int, u.instrs.desc.obj_poss[0])
    ball = u.grid.get(x, y)
    u.grid.set(x, y, None)  # the ball picked up (no drop since): its position stays tracked
    u.carrying = ball
    ball.cur_pos = np.array([-1, -1])
    w, _ = env.reset_from_minigrid(menv)
    assert int(w.obj_cell[int(w.carrying_id)]) == -1
    _assert_tracking(w, u, "import")
    # a drop re-reads the positions: the carried ball is no longer tracked anywhere
    for a in (4, 0, 4, 1, 1, 4):  # drop attempts (failing or not) with turns in between
        menv.step(a)
        w, _ = step(w, jnp.int32(a))
        _assert_tracking(w, u, a)


def test_import_raises_on_unexplained_tracked_position():
    from evol_jax.envs.babyai_import import _poss_cell

    oid = np.zeros((core.MAXS, core.MAXS), np.int32)
    oid[2, 3] = 1
    mission = {
        "set_a": np.zeros((4, core.MAX_OBJ), bool),
        "set_b": np.zeros((4, core.MAX_OBJ), bool),
        "poss_a": np.zeros((4, core.MAXS, core.MAXS), bool),
        "poss_b": np.zeros((4, core.MAXS, core.MAXS), bool),
    }
    mission["set_a"][0, 1] = True
    mission["poss_a"][0, 2, 3] = True
    cells = np.full((core.MAX_OBJ,), -1, np.int16)
    cells[1] = 2 * core.MAXS + 3
    assert _poss_cell(oid, cells, mission)[1] == 2 * core.MAXS + 3
    mission["poss_a"][0, 5, 5] = True  # a second position, no object left to explain it
    with pytest.raises(ValueError, match=r"tracked position \(5, 5\)"):
        _poss_cell(oid, cells, mission)
