"""Native (on-device) generation of the single-room BabyAI levels (pure; jit / vmap safe).

``generate(key, level)`` draws a `babyai_core.World` and the goal words for one of `NATIVE_LEVELS`
with minigrid's rules for that level: the agent is placed first (uniform interior cell, uniform
direction), then the level's objects, each on a uniform empty interior cell; an instance in which
an object cannot be reached from the agent is rejected and redrawn (``check_objs_reachable``),
as are, for GoToRedBlueBall, red or blue ball distractors (sampled here from the allowed kinds,
which is the same conditional distribution). The mission is built as minigrid's
``ObjDesc.surface`` does ("the" for a unique match, "a" otherwise) and the verifier's object sets
are every object matching the description.

Native generation cannot reproduce minigrid's Python RNG stream: a native instance ``idx`` is a
draw from the same distribution as AgentGym's instance ``idx``, not the same instance. Use the
import path (`BabyAI.reset_from_minigrid`, instance banks) for exact AgentGym instances.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from evol_jax.envs import babyai_core as core
from evol_jax.envs import babyai_words as bw

# level -> (room size, objects placed, target rule, max_steps); target rules below
_GOTO_RED, _GOTO_RED_GREY, _GOTO_ONE, _GOTO_ANY, _GOTO_RED_BLUE, _PUT_NEXT = range(6)
NATIVE_LEVELS = {
    1: dict(size=8, n=8, rule=_GOTO_RED_GREY, max_steps=64),  # GoToRedBallGrey
    2: dict(size=8, n=8, rule=_GOTO_RED, max_steps=64),  # GoToRedBall
    3: dict(size=8, n=1, rule=_GOTO_RED, max_steps=64),  # GoToRedBallNoDists
    4: dict(size=4, n=1, rule=_GOTO_ONE, max_steps=16),  # GoToObjS6-v0 (room 4)
    5: dict(size=8, n=7, rule=_GOTO_ANY, max_steps=64),  # GoToLocalS8N7
    9: dict(size=8, n=8, rule=_GOTO_RED_BLUE, max_steps=64),  # GoToRedBlueBall
    22: dict(size=6, n=4, rule=_PUT_NEXT, max_steps=72),  # PutNextLocalS6N4
}
MAX_N = 8
RED, BLUE = 0, 2
_KINDS = np.array([core.KEY, core.BALL, core.BOX], np.int32)
MAX_TRIES = 64


def _pick(key, mask):
    """Uniform flat index among True entries of ``mask`` (any shape)."""
    flat = mask.reshape(-1)
    g = jax.random.gumbel(key, flat.shape)
    return jnp.argmax(jnp.where(flat, g, -jnp.inf)).astype(jnp.int32)


def _draw(key, size: int, n: int, rule: int):
    """One unchecked draw: agent cell and direction, object cells [MAX_N, 2] and encodings."""
    k_agent, k_dir, k_objs = jax.random.split(key, 3)
    xs = jnp.arange(core.MAXS)
    inside = ((xs >= 1) & (xs <= size - 2))[:, None] & ((xs >= 1) & (xs <= size - 2))[None, :]
    a = _pick(k_agent, inside)
    agent = jnp.stack([a // core.MAXS, a % core.MAXS])
    adir = jax.random.randint(k_dir, (), 0, 4)
    red_target = rule in (_GOTO_RED, _GOTO_RED_GREY, _GOTO_RED_BLUE)

    def body(i, c):
        free, cells, encs, used = c
        kc, kt, kk = jax.random.split(jax.random.fold_in(k_objs, i), 3)
        p = _pick(kc, free)
        cx, cy = p // core.MAXS, p % core.MAXS
        free = free.at[cx, cy].set(False)
        # allowed (type, colour) of object i ([3, 6] over _KINDS x colours)
        allowed = jnp.ones((3, 6), bool)
        if rule == _GOTO_RED_GREY:
            allowed = jnp.zeros((3, 6), bool).at[:, core.GREY].set(True)
        if rule == _GOTO_RED_BLUE:
            allowed = allowed.at[1, RED].set(False).at[1, BLUE].set(False)
        if rule == _PUT_NEXT:
            allowed = allowed & ~used
        if red_target:  # object 0 is the red (or, GoToRedBlueBall, red or blue) ball
            colour = jnp.where(
                (rule == _GOTO_RED_BLUE) & jax.random.bernoulli(kt), BLUE, RED
            ).astype(jnp.int32)
            allowed = jnp.where(i == 0, jnp.zeros((3, 6), bool).at[1, colour].set(True), allowed)
        tc = _pick(kk, allowed)
        t, col = tc // 6, tc % 6
        used = used.at[t, col].set(True)
        cells = cells.at[i].set(jnp.stack([cx, cy]))
        encs = encs.at[i].set(jnp.stack([jnp.asarray(_KINDS)[t], col, 0]))
        return free, cells, encs, used

    init = (
        inside.at[agent[0], agent[1]].set(False),
        jnp.zeros((MAX_N, 2), jnp.int32),
        jnp.zeros((MAX_N, 3), jnp.int32),
        jnp.zeros((3, 6), bool),
    )
    _, cells, encs, _ = jax.lax.fori_loop(0, n, body, init)
    return agent, adir, cells, encs


def _reachable(agent, cells, n: int, size: int):
    """minigrid ``check_objs_reachable`` for one room without doors."""
    xs = jnp.arange(core.MAXS)
    inside = ((xs >= 1) & (xs <= size - 2))[:, None] & ((xs >= 1) & (xs <= size - 2))[None, :]
    occ = jnp.zeros((core.MAXS, core.MAXS), bool).at[cells[:n, 0], cells[:n, 1]].set(True)
    open_ = inside & ~occ
    r0 = jnp.zeros((core.MAXS, core.MAXS), bool).at[agent[0], agent[1]].set(True)

    def body(c):
        r, _ = c
        p = jnp.pad(r, 1)
        nb = p[:-2, 1:-1] | p[2:, 1:-1] | p[1:-1, :-2] | p[1:-1, 2:]
        r2 = r | (nb & open_)
        return r2, jnp.any(r2 != r)

    r, _ = jax.lax.while_loop(lambda c: c[1], body, (r0, jnp.bool_(True)))
    p = jnp.pad(r, 1)
    touch = p[:-2, 1:-1] | p[2:, 1:-1] | p[1:-1, :-2] | p[1:-1, 2:]
    return jnp.all(touch[cells[:n, 0], cells[:n, 1]])


def _goal_words(art, enc):
    """["the"|"a", colour, type] word ids of an object description."""
    the_a = jnp.asarray([bw.wid("the"), bw.wid("a")], jnp.int32)[art]
    return jnp.stack([the_a, jnp.asarray(bw.COLOR_W)[enc[1]], jnp.asarray(bw.OBJECT_W)[enc[0]]])


def generate(key, level: int):
    """A native instance of ``level`` (a key of `NATIVE_LEVELS`).

    Returns:
      (world, goal_words [core.GOAL_WORDS] int32, goal_len int32 []).
    """
    if level not in NATIVE_LEVELS:
        raise ValueError(
            f"babyai: level {level} has no native generator; native: {sorted(NATIVE_LEVELS)}"
        )
    p = NATIVE_LEVELS[level]
    size, n, rule = p["size"], p["n"], p["rule"]

    def cond(c):
        return ~c[1] & (c[2] < MAX_TRIES)

    def body(c):
        k, _, tries, _ = c
        k, sub = jax.random.split(k)
        out = _draw(sub, size, n, rule)
        return k, _reachable(out[0], out[2], n, size), tries + 1, out

    k0, sub = jax.random.split(key)
    first = _draw(sub, size, n, rule)
    init = (k0, _reachable(first[0], first[2], n, size), jnp.int32(1), first)
    k, _, _, (agent, adir, cells, encs) = jax.lax.while_loop(cond, body, init)
    ids = jnp.arange(1, MAX_N + 1, dtype=jnp.int32)
    valid = jnp.arange(MAX_N) < n
    xs = jnp.arange(core.MAXS)
    in_room = (xs < size)[:, None] & (xs < size)[None, :]
    border = in_room & (
        (xs == 0)[:, None] | (xs == size - 1)[:, None] | (xs == 0)[None, :] | (xs == size - 1)
    )
    grid = jnp.where(in_room[..., None], jnp.array([core.EMPTY, 0, 0], jnp.int32), 0)
    grid = jnp.where(border[..., None], jnp.array([core.WALL, core.GREY, 0], jnp.int32), grid)
    grid = jnp.where(in_room[..., None], grid, jnp.array([core.WALL, core.GREY, 0], jnp.int32))
    cx = jnp.where(valid, cells[:, 0], core.MAXS)
    cy = jnp.where(valid, cells[:, 1], core.MAXS)
    grid = grid.at[cx, cy].set(encs, mode="drop")
    oid = jnp.zeros((core.MAXS, core.MAXS), jnp.int32).at[cx, cy].set(ids, mode="drop")
    # target objects
    k1, k2 = jax.random.split(k)
    if rule == _GOTO_ANY:
        t_move = jax.random.randint(k1, (), 0, n)
    else:
        t_move = jnp.int32(0)
    if rule == _PUT_NEXT:
        pair = jax.random.permutation(k2, n)[:2]
        t_move, t_fixed = pair[0], pair[1]
    else:
        t_fixed = t_move

    obj_cell = (
        jnp.full((core.MAX_OBJ,), -1, jnp.int16)
        .at[jnp.where(valid, ids, core.MAX_OBJ)]
        .set(core.cell_index(cells[:, 0], cells[:, 1]).astype(jnp.int16), mode="drop")
    )

    def matching(t):
        same = valid & jnp.all(encs == encs[t][None], -1)
        obj_set = jnp.zeros((core.MAX_OBJ,), bool).at[ids].set(same, mode="drop")
        return obj_set, (jnp.sum(same) > 1).astype(jnp.int32)

    set_a, art_a = matching(t_move)
    set_b, art_b = matching(t_fixed)
    put = rule == _PUT_NEXT
    z4 = jnp.zeros((4,), jnp.int32)
    mission = core.Mission(
        op=jnp.int32(0),
        node_and=jnp.zeros((2,), bool),
        kind=z4.at[0].set(4 if put else 1),
        strict=jnp.zeros((4,), bool),
        set_a=jnp.zeros((4, core.MAX_OBJ), bool).at[0].set(set_a),
        set_b=jnp.zeros((4, core.MAX_OBJ), bool).at[0].set(set_b if put else False),
        poss_cell=obj_cell,  # tracked positions: every object where it stands at reset
        pre_carry=z4,
        leaf_status=z4,
        node_status=jnp.zeros((2,), jnp.int32),
    )
    world = core.World(
        grid=grid.astype(jnp.uint8),
        oid=oid.astype(jnp.int8),
        obj_cell=obj_cell,
        contents=jnp.zeros((core.MAX_OBJ, 4), jnp.int32),
        agent_pos=agent.astype(jnp.int32),
        agent_dir=adir.astype(jnp.int32),
        carrying=jnp.zeros((3,), jnp.int32),
        carrying_id=jnp.int32(0),
        step_count=jnp.int32(0),
        max_steps=jnp.int32(p["max_steps"]),
        mission=mission,
    )
    desc_a = _goal_words(art_a, encs[t_move])
    if put:
        desc_b = _goal_words(art_b, encs[t_fixed])
        words = jnp.concatenate(
            [jnp.asarray(bw.ids("put"), jnp.int32), desc_a, jnp.asarray(bw.ids("next to")), desc_b]
        )
    else:
        words = jnp.concatenate([jnp.asarray(bw.ids("go to"), jnp.int32), desc_a])
    goal = jnp.zeros((core.GOAL_WORDS,), jnp.int32).at[: words.shape[0]].set(words)
    return world, goal, jnp.int32(words.shape[0])
