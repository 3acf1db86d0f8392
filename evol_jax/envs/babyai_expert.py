"""A scripted BabyAI expert over AgentGym's high-level action ids (pure, jit / vmap safe).

The expert reads the device mission tree (`babyai_core.Mission`), takes its current subgoal (the
first unfinished leaf in the order the verifier checks them) and turns it into a target:

* go to / pick up / open: the cells of the objects matching the leaf's description;
* put next to: first pick up an object to move, then face an empty cell 4-adjacent to a fixed
  object and drop;
* a locked door on every route (or the door to open is locked) and no matching key carried: pick
  up a key of a locked door's colour first (anything else carried is dropped first).

It is privileged (it reads the whole grid): a cell distance field to the cells from which a target
can be faced is relaxed over the grid (walls, objects and locked doors without the key block;
closed doors are passable and opened on the way). It then prefers one high-level action:
``go to`` / ``pickup`` / ``toggle and go through`` on a listed target, else ``go through`` /
``toggle and go through`` on a listed door that is nearer the target, else a primitive
(``turn left``/``turn right``/``move forward``/``toggle``) down the distance field. Boxes are
never opened, so targets hidden in boxes (KeyInBox) are not found.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from evol_jax.envs import babyai_core as core

BIG = 1 << 20
# subgoal verbs
G_GOTO, G_PICKUP, G_OPEN, G_DROP = range(4)


def active_leaf(ms: core.Mission):
    """Index (0..3) of the leaf the verifier currently waits for."""
    ns, ls = ms.node_status, ms.leaf_status
    node = jnp.where(
        ms.op == 3,
        jnp.where(ns[1] != 1, 1, 0),
        jnp.where((ms.op == 0) | (ns[0] != 1), 0, 1),
    )
    first = 2 * node
    second_needed = ms.node_and[node] & (ls[first] == 1)
    return (first + second_needed.astype(jnp.int32)).astype(jnp.int32)


def _shift(a, dx, dy, fill):
    """out[x, y] = a[x + dx, y + dy] (``fill`` outside)."""
    p = jnp.pad(a, ((1, 1), (1, 1)), constant_values=fill)
    return jax.lax.dynamic_slice(p, (1 + dx, 1 + dy), a.shape)


def _neigh4(a):
    return [_shift(a, dx, dy, False) for dx, dy in core.DIR_VEC]


def _distance(passable, sources):
    """Cell BFS distance to ``sources`` through ``passable`` cells ([MAXS, MAXS] int32)."""
    d0 = jnp.where(sources & passable, 0, BIG).astype(jnp.int32)

    def body(c):
        d, _ = c
        nb = jnp.min(jnp.stack([_shift(d, dx, dy, BIG) for dx, dy in core.DIR_VEC]), 0)
        d2 = jnp.where(passable, jnp.minimum(d, nb + 1), BIG)
        return d2, jnp.any(d2 != d)

    d, _ = jax.lax.while_loop(lambda c: c[1], body, (d0, jnp.bool_(True)))
    return d


def _slot_ids(w: core.World, an: core.Analysis):
    """Object id and absolute cell of each listed slot ([K], [K, 2])."""
    xy = core.view_coords(w.agent_pos, w.agent_dir)  # [7(vi), 7(vj), 2]
    flat = jnp.transpose(xy, (1, 0, 2)).reshape(-1, 2)  # index vj * 7 + vi
    cells = flat[an.slot_cell]
    cx = jnp.clip(cells[:, 0], 0, core.MAXS - 1)
    cy = jnp.clip(cells[:, 1], 0, core.MAXS - 1)
    ok = jnp.arange(core.K) < an.n_slots
    return jnp.where(ok, w.oid[cx, cy], 0), cells


def subgoal(w: core.World):
    """The expert's target: (verb, target cell mask [MAXS, MAXS], locked-door key needed)."""
    ms = w.mission
    leaf = active_leaf(ms)
    kind = ms.kind[leaf]
    t = w.grid[..., 0]
    cid = w.carrying_id
    carrying = cid > 0
    set_a = ms.set_a[leaf]
    obj_a = set_a[w.oid] & (w.oid > 0)
    carrying_a = carrying & set_a[cid]
    # put next to: the cells next to a fixed object where the moved object may be dropped
    fixed = core.poss_mask(ms, ms.set_b[leaf])
    next_to = (t == core.EMPTY) & jnp.any(jnp.stack(_neigh4(fixed)), 0)
    verb = jnp.select(
        [kind == 1, kind == 2, kind == 3, (kind == 4) & carrying_a],
        [G_GOTO, G_PICKUP, G_OPEN, G_DROP],
        G_PICKUP,
    )
    target = jnp.select(
        [kind == 1, (kind == 4) & carrying_a], [core.poss_mask(ms, ms.set_a[leaf]), next_to], obj_a
    )
    return verb.astype(jnp.int32), target, leaf


def _door_masks(w: core.World):
    t, col, st = w.grid[..., 0], w.grid[..., 1], w.grid[..., 2]
    door = t == core.DOOR
    key_col = jnp.where((w.carrying_id > 0) & (w.carrying[0] == core.KEY), w.carrying[1], -1)
    locked = door & (st == core.LOCKED)
    locked_blocking = locked & (col != key_col)
    return door, locked, locked_blocking


def _passable(w: core.World):
    t = w.grid[..., 0]
    _, _, locked_blocking = _door_masks(w)
    return ((t == core.EMPTY) | (t == core.DOOR) | (t == core.GOAL)) & ~locked_blocking


def expert_action(w: core.World, an: core.Analysis):
    """The expert's action id (int32 []) for world ``w`` with analysis ``an``."""
    verb, target, _ = subgoal(w)
    t, col = w.grid[..., 0], w.grid[..., 1]
    carrying = w.carrying_id > 0
    door, locked, locked_blocking = _door_masks(w)
    ax, ay = w.agent_pos[0], w.agent_pos[1]
    passable0 = _passable(w)
    # closed doors are opened only when there is no way around them (strict levels fail on
    # a toggled wrong door)
    shut = door & (w.grid[..., 2] != core.OPEN)

    def field(target):
        stand = jnp.any(jnp.stack(_neigh4(target)), 0)
        d_open = _distance(passable0 & ~shut, stand)
        use_open = d_open[ax, ay] < BIG
        d_any = _distance(passable0, stand)
        return jnp.where(use_open, d_open, d_any), jnp.where(use_open, passable0 & ~shut, passable0)

    dist, passable = field(target)
    # a locked door on the way (or to be opened) without its key: fetch a key first
    target_locked = jnp.any(target & locked_blocking) & (verb == G_OPEN)
    unreachable = dist[ax, ay] >= BIG
    need_key = (unreachable | target_locked) & jnp.any(locked_blocking)
    locked_cols = (
        jnp.zeros((6,), bool).at[col.reshape(-1)].max(locked_blocking.reshape(-1), mode="drop")
    )
    key_cells = (t == core.KEY) & locked_cols[jnp.clip(col, 0, 5)]
    carrying_other = carrying & need_key
    verb = jnp.where(need_key, G_PICKUP, verb)
    target = jnp.where(need_key, key_cells, target)
    dist_k, passable_k = field(key_cells)
    dist = jnp.where(need_key, dist_k, dist)
    passable = jnp.where(need_key, passable_k, passable)
    d_here = dist[ax, ay]
    # picking up with full hands: drop next to the target (a carried key still opens doors on
    # the way), or at once when a key is needed
    must_drop = ((verb == G_PICKUP) & carrying & (d_here == 0)) | carrying_other
    # the front cell and the neighbour to step to
    fwd = core.front_pos(w)
    fx, fy = jnp.clip(fwd[0], 0, core.MAXS - 1), jnp.clip(fwd[1], 0, core.MAXS - 1)
    front_target = target[fx, fy]
    nd = jnp.stack(
        [
            jnp.where(
                passable[jnp.clip(ax + dx, 0, core.MAXS - 1), jnp.clip(ay + dy, 0, core.MAXS - 1)],
                dist[jnp.clip(ax + dx, 0, core.MAXS - 1), jnp.clip(ay + dy, 0, core.MAXS - 1)],
                BIG,
            )
            for dx, dy in core.DIR_VEC
        ]
    )
    tgt_dir = jnp.stack(
        [
            target[jnp.clip(ax + dx, 0, core.MAXS - 1), jnp.clip(ay + dy, 0, core.MAXS - 1)]
            for dx, dy in core.DIR_VEC
        ]
    )
    at_stand = d_here == 0
    want_dir = jnp.where(at_stand, jnp.argmax(tgt_dir), jnp.argmin(nd)).astype(jnp.int32)
    rel = (want_dir - w.agent_dir) % 4
    turn = jnp.where(rel == 1, core.A_RIGHT, core.A_LEFT)
    front_door_shut = door[fx, fy] & (w.grid[fx, fy, 2] != core.OPEN)
    step_prim = jnp.where(
        rel == 0,
        jnp.where(front_door_shut, core.A_TOGGLE, core.A_FORWARD),
        turn,
    )
    # verb at the target (facing it)
    k_front = jnp.argmax(
        (an.slot_fr[:, 0] == 1) & (an.slot_fr[:, 1] == 0) & (jnp.arange(core.K) < an.n_slots)
    )
    verb_act = jnp.select(
        [verb == G_PICKUP, verb == G_OPEN, verb == G_DROP],
        [core.N_FIXED + core.V_PICKUP * core.K + k_front, core.A_TOGGLE, core.A_DROP],
        # go to an object already faced (only at reset): any executed step verifies
        jnp.where(an.legal[core.A_FORWARD], core.A_FORWARD, core.A_LEFT),
    )
    at_target = front_target & (at_stand | (rel == 0))
    prim = jnp.where(at_target, verb_act, step_prim)
    # high-level shortcuts over listed objects
    sid, cells = _slot_ids(w, an)
    cx = jnp.clip(cells[:, 0], 0, core.MAXS - 1)
    cy = jnp.clip(cells[:, 1], 0, core.MAXS - 1)
    slot_target = target[cx, cy] & (sid > 0)
    legal = an.legal

    def first_legal(ok, base):
        k = jnp.argmax(ok & legal[base : base + core.K])
        return jnp.any(ok & legal[base : base + core.K]), base + k

    base = {v: core.N_FIXED + v * core.K for v in range(4)}
    has_pick, a_pick = first_legal(slot_target, base[core.V_PICKUP])
    has_goto, a_goto = first_legal(slot_target, base[core.V_GOTO])
    has_tg, a_tg = first_legal(slot_target, base[core.V_TOGGLE_THROUGH])
    # a listed door nearer to the target than the agent
    door_d = jnp.where(door[cx, cy], dist[cx, cy], BIG)
    nearer = door_d < d_here
    ok_through = nearer & legal[base[core.V_THROUGH] : base[core.V_THROUGH] + core.K]
    ok_tgt = nearer & legal[base[core.V_TOGGLE_THROUGH] : base[core.V_TOGGLE_THROUGH] + core.K]
    door_score = jnp.where(ok_through | ok_tgt, door_d, BIG)
    kd = jnp.argmin(door_score)
    has_door = door_score[kd] < BIG
    a_door = jnp.where(ok_through[kd], base[core.V_THROUGH] + kd, base[core.V_TOGGLE_THROUGH] + kd)
    high = jnp.select(
        [
            (verb == G_PICKUP) & has_pick,
            ((verb == G_GOTO) | ((verb == G_PICKUP) & carrying)) & has_goto,
            (verb == G_OPEN) & has_tg,
            has_door & ~at_stand,
        ],
        [a_pick, a_goto, a_tg, a_door],
        -1,
    )
    act = jnp.where(high >= 0, high, prim)
    # facing a go-to target (possible at reset): "go to" would be an empty plan ("No change")
    act = jnp.where((verb == G_GOTO) & front_target, prim, act)
    # drop what is in the way of a pickup (or turn to find a free cell to drop it)
    drop = jnp.where(legal[core.A_DROP] & ~front_target, core.A_DROP, core.A_LEFT)
    act = jnp.where(must_drop, drop, act)
    # nothing reachable at all: turn
    act = jnp.where(~must_drop & (high < 0) & (dist[ax, ay] >= BIG), core.A_LEFT, act)
    return act.astype(jnp.int32)


VERB_TEXT = ("go to", "pick up", "open", "put down")
