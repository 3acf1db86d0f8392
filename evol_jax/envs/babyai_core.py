"""BabyAI on device: minigrid primitives, the 7x7 egocentric view, AgentGym's text and actions.

Pure functions over fixed-shape arrays (jit / vmap safe). Conventions follow minigrid: the grid is
indexed ``grid[x, y] = [object_idx, color_idx, state_idx]`` (`babyai_words.OBJECTS`), padded to
``MAXS x MAXS`` with walls (minigrid's ``Grid.slice`` also shows cells outside the grid as walls);
directions 0 east, 1 south, 2 west, 3 north.

AgentGym's high-level actions are compiled exactly as upstream's ``find_path``: a FIFO breadth-first
search over (position, direction) in the agent's frame, with duplicate queue entries and parent
pointers overwritten by every later push before a state's first pop. The search does not depend on
the target, so one exhaustive search per observation gives every object's plan: the target's plan is
the one of the goal state popped first. The search runs one BFS layer per iteration with dense ops
over the states (`_bfs`), reproducing the queue's pop order and parent overwrites exactly; the
sequential queue (`_bfs_sequential`, one pop per iteration) is kept as the reference.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from evol_jax.envs import babyai_words as bw

MAXS = 22  # largest BabyAI grid (BossLevel: 3x3 rooms of 8)
VIEW = 7
K = 48  # object slots: every cell of the view but the agent's
MAX_OBJ = 64  # object ids (doors, keys, balls, boxes, box contents); 0 = none
# Sequential reference search (`_bfs_sequential`, `BabyAI(bfs_queue=...)`): a ring buffer of the
# *live* entries (popped ones are overwritten). Upstream's FIFO
# keeps duplicate entries, so the total number of pushes reaches ~2,000 on cluttered windows
# (random and adversarial search; the 1,024-entry linear buffer of earlier versions overflowed on
# 12 recorded episodes); the live length stays far lower (< 256 on the tests' cluttered windows).
# Overflow is detected, never silent (`Analysis.overflow`).
QUEUE = 1024
PMAX = 64  # longest primitive plan
NS = 8 * 8 * 4  # BFS states: f in [-1, 6], r in [-3, 4], relative direction
MAX_LEAVES = 4
GOAL_WORDS = 64
WORDS_PER_ACTION = 8
ENTRY_WORDS = 20

# object / colour / state indices
EMPTY, WALL, DOOR, KEY, BALL, BOX, GOAL, LAVA = 1, 2, 4, 5, 6, 7, 8, 9
OPEN, CLOSED, LOCKED = 0, 1, 2
GREY = 5
LEFT, RIGHT, FORWARD, PICKUP, DROP, TOGGLE = range(6)

# action ids
A_LEFT, A_RIGHT, A_FORWARD, A_TOGGLE, A_DROP, A_CHECK, A_UNKNOWN, A_EMPTY = range(8)
N_FIXED = 8
V_PICKUP, V_GOTO, V_THROUGH, V_TOGGLE_THROUGH = range(4)
NUM_ACTIONS = N_FIXED + 4 * K

DIR_VEC = np.array([[1, 0], [0, 1], [-1, 0], [0, -1]], np.int32)
# relative-direction moves in the agent frame (front, right)
_REL_MOVE = np.array([[1, 0], [0, 1], [-1, 0], [0, -1]], np.int32)
_INIT = (1 * 8 + 3) * 4 + 0


def _in_range_table() -> np.ndarray:
    """Upstream's BFS window (``xrange``/``yrange`` in ``postprocess_obs``) in the agent frame."""
    out = np.zeros((4, 8, 8), bool)
    for d in range(4):
        f, r = DIR_VEC[d], DIR_VEC[(d + 1) % 4]
        tl = f * 6 - r * 3
        b = tl + 7 * (-f + r)
        rx = range(b[0], tl[0] + 1) if b[0] < tl[0] else range(tl[0], b[0])
        ry = range(b[1], tl[1] + 1) if b[1] < tl[1] else range(tl[1], b[1])
        for fi in range(8):
            for ri in range(8):
                dx, dy = (fi - 1) * f + (ri - 3) * r
                out[d, fi, ri] = dx in rx and dy in ry
    return out


def _neighbours() -> np.ndarray:
    """[NS, 3] successor of each BFS state under upstream's action order (forward, left, right)."""
    nb = np.full((NS, 3), -1, np.int32)
    for fi in range(8):
        for ri in range(8):
            for rd in range(4):
                s = (fi * 8 + ri) * 4 + rd
                mf, mr = _REL_MOVE[rd]
                nf, nr = fi + mf, ri + mr
                if 0 <= nf < 8 and 0 <= nr < 8:
                    nb[s, 0] = (nf * 8 + nr) * 4 + rd
                nb[s, 1] = (fi * 8 + ri) * 4 + (rd - 1) % 4
                nb[s, 2] = (fi * 8 + ri) * 4 + (rd + 1) % 4
    return nb


IN_RANGE = _in_range_table()
NEIGHBOURS = _neighbours()
_BFS_ACTIONS = np.array([FORWARD, LEFT, RIGHT], np.int32)


@flax.struct.dataclass
class Mission:
    """A BabyAI instruction as a fixed-size struct (up to 4 action clauses).

    Tree: ``op`` 0 = node A alone, 1 = A and B, 2 = A then B (BeforeInstr), 3 = A after B
    (AfterInstr). Node A is leaf 0 (with leaf 1 when ``node_and[0]``: AndInstr), node B leaf 2
    (with leaf 3). Leaf kinds: 0 none, 1 go to, 2 pick up, 3 open, 4 put next to.
    """

    op: jax.Array  # int32 []
    node_and: jax.Array  # bool [2]
    kind: jax.Array  # int32 [4]
    strict: jax.Array  # bool [4] strict leaves (debug levels): a wrong door / object fails
    set_a: jax.Array  # bool [4, MAX_OBJ] objects matching the (moved) description
    set_b: jax.Array  # bool [4, MAX_OBJ] fixed object of put-next
    # int16 [MAX_OBJ] cell (`cell_index`) of each object at the last position update (reset or
    # drop; -1 off the grid): minigrid's obj_poss of a leaf are the poss_cell of its set_a / set_b
    # objects (`poss_mask`). Every leaf is updated at the same time (minigrid's
    # update_objs_poss), so one table serves all leaves.
    poss_cell: jax.Array
    pre_carry: jax.Array  # int32 [4] object id carried at the leaf's last verify (0 none)
    leaf_status: jax.Array  # int32 [4] for AndInstr nodes: 0 continue, 1 success, 2 failure
    node_status: jax.Array  # int32 [2] a_done / b_done of the top sequence


@flax.struct.dataclass
class World:
    """The minigrid state."""

    grid: jax.Array  # uint8 [MAXS, MAXS, 3]
    oid: jax.Array  # int8 [MAXS, MAXS] object id of the cell (0 none / wall)
    obj_cell: jax.Array  # int16 [MAX_OBJ] cell (`cell_index`) of each object id (-1 off the grid)
    contents: jax.Array  # int32 [MAX_OBJ, 4] box contents per box id: type, colour, state, id
    agent_pos: jax.Array  # int32 [2]
    agent_dir: jax.Array  # int32 []
    carrying: jax.Array  # int32 [3] encoding of the carried object; [0, 0, 0] = nothing
    carrying_id: jax.Array  # int32 []
    step_count: jax.Array  # int32 []
    max_steps: jax.Array  # int32 []
    mission: Mission


@flax.struct.dataclass
class Analysis:
    """AgentGym's ``postprocess_obs`` of one state: objects, barrier, search, action table."""

    image: jax.Array  # int32 [7, 7, 3] minigrid's obs["image"] (vis_i, vis_j)
    slot_cell: jax.Array  # int32 [K] view cell (vis_j * 7 + vis_i) of each listed object
    n_slots: jax.Array  # int32 []
    any_obj: jax.Array  # bool [] upstream's all_objs (walls included) is non-empty
    slot_enc: jax.Array  # int32 [K, 3]
    slot_fr: jax.Array  # int32 [K, 2] (steps in front, steps to the right)
    desc_cnt: jax.Array  # int32 [K] number in the description ("grey key 2")
    has_barrier: jax.Array  # bool []
    barrier_dis: jax.Array  # int32 []
    barrier_type: jax.Array  # int32 []
    parent: jax.Array  # int32 [NS] BFS parent pointers
    pact: jax.Array  # int32 [NS] primitive leading to the state
    first: jax.Array  # int32 [NS] first-pop layer (big if never popped); sequential: pop order
    first_key: jax.Array  # int32 [NS] order of the first pops within a layer (sequential: 0)
    goal_front: jax.Array  # int32 [K] BFS goal state facing the object (-1 none)
    goal_arrive: jax.Array  # int32 [K] BFS goal state on the object (-1 none)
    legal: jax.Array  # bool [NUM_ACTIONS]
    num: jax.Array  # int32 [NUM_ACTIONS] the number in each action's text
    order: jax.Array  # int32 [NUM_ACTIONS] upstream's listing order key
    front_occupied: jax.Array  # bool []
    overflow: jax.Array  # bool [] the search is not upstream's: a straddle (layered `_bfs`) or
    # more queue entries live than the ring buffer holds (sequential reference)


# ----------------------------------------------------------------------------- view


def _cell(grid, x, y):
    inside = (x >= 0) & (y >= 0) & (x < MAXS) & (y < MAXS)
    enc = grid[jnp.clip(x, 0, MAXS - 1), jnp.clip(y, 0, MAXS - 1)]
    return jnp.where(inside[..., None], enc, jnp.array([WALL, GREY, 0], grid.dtype))


def dir_vec(d):
    """``DIR_VEC[d]`` ([2] int32) by selects (no gather: cheaper vmapped on CPU)."""
    dx = jnp.where(d == 0, 1, jnp.where(d == 2, -1, 0))
    dy = jnp.where(d == 1, 1, jnp.where(d == 3, -1, 0))
    return jnp.stack([dx, dy]).astype(jnp.int32)


def view_coords(pos, d):
    """Absolute (x, y) of every view cell, [7, 7, 2] indexed (vis_i, vis_j)."""
    fv = dir_vec(d)
    rv = dir_vec((d + 1) % 4)
    vi = jnp.arange(VIEW)[:, None]
    vj = jnp.arange(VIEW)[None, :]
    f = (VIEW - 1 - vj)[..., None]
    r = (vi - VIEW // 2)[..., None]
    return pos + f * fv + r * rv


def _see_behind(enc):
    return ~((enc[..., 0] == WALL) | ((enc[..., 0] == DOOR) & (enc[..., 2] != OPEN)))


def _vis_row(up, s):
    """One view row of `vis_mask` (numpy or jax integers): the row's visible bits ``r`` and the
    bits it passes to the next row (``up``), from the bits passed to it and its see-behind
    bits ``s`` (bit ``i`` = cell ``i``).

    minigrid's left-to-right pass sets ``row[i + 1] |= row[i] & see_behind[i]`` in order: a carry
    chain, computed as an occluded fill (``q``: the cells that pass the view on, seeds
    ``row & see_behind`` spreading through ``see_behind`` by shifts of 1, 2 and 4); the
    right-to-left pass likewise with right shifts. Every cell that passes the view on when
    visited also marks ``(i, j - 1)`` and its neighbour in the pass direction.
    """
    full = (1 << VIEW) - 1

    def fill(gen, pro, shift):  # cells reached from gen moving through pro (Kogge-Stone)
        for k in (1, 2, 4):
            gen = gen | (pro & shift(gen, k))
            pro = pro & shift(pro, k)
        return gen

    def left(x, k):
        return (x << k) & full

    def right(x, k):
        return x >> k

    q = fill(up & s, s, left)  # cells passing the view to the right
    r = up | left(q, 1)
    go_left = q & (full >> 1)  # i in 0..5
    q = fill(r & s, s, right)  # then to the left, from the updated row
    r = r | right(q, 1)
    go_right = q & (full - 1)  # i in 1..6
    up = (go_left | left(go_left, 1) | go_right | right(go_right, 1)) & full
    return r, up


def _vis_table() -> np.ndarray:
    """`_vis_row` for every (see-behind bits, incoming bits): entry ``s << 7 | up`` holds
    ``r | up_next << 7`` (int16 [2 ** 14])."""
    k = np.arange(1 << (2 * VIEW), dtype=np.int32)
    r, up = _vis_row(k & ((1 << VIEW) - 1), k >> VIEW)
    return (r | (up << VIEW)).astype(np.int16)


VIS_TABLE = _vis_table()


def vis_mask(enc):
    """minigrid ``Grid.process_vis`` on the rotated view ([7, 7] indexed (i, j), agent (3, 6)).

    Each view row ``j`` (processed far from the agent last, as minigrid does) is a 7-bit
    integer, bit ``i`` = cell ``(i, j)``; a row's visible bits and the bits it passes on depend
    only on its see-behind bits and the bits passed to it (`_vis_row`, bit-parallel), so each
    row is one lookup in the precomputed `VIS_TABLE` (16,384 entries): 7 lookups instead of
    minigrid's per-cell loops. Same mask as `vis_mask_sequential` and minigrid (tested).
    """
    sb = _see_behind(enc).astype(jnp.int32)  # [7(i), 7(j)]
    sb_rows = jnp.sum(sb << jnp.arange(VIEW)[:, None], axis=0)  # [7(j)] bit i = see_behind
    table = jnp.asarray(VIS_TABLE)
    rows = [None] * VIEW
    up = jnp.int32(1 << (VIEW // 2))
    mask7 = (1 << VIEW) - 1
    for j in range(VIEW - 1, -1, -1):  # far rows last, each from the one nearer the agent
        e = table[(sb_rows[j] << VIEW) | up].astype(jnp.int32)
        rows[j] = e & mask7
        up = e >> VIEW
    rows = jnp.stack(rows)
    return ((rows[None, :] >> jnp.arange(VIEW)[:, None]) & 1).astype(bool)


def vis_mask_bitwise(enc):
    """`vis_mask` computing each row with `_vis_row`'s bit operations (no table; the table's
    reference in the tests)."""
    sb = _see_behind(enc).astype(jnp.int32)
    sb_rows = jnp.sum(sb << jnp.arange(VIEW)[:, None], axis=0)
    rows = [None] * VIEW
    up = jnp.int32(1 << (VIEW // 2))
    for j in range(VIEW - 1, -1, -1):
        rows[j], up = _vis_row(up, sb_rows[j])
    rows = jnp.stack(rows)
    return ((rows[None, :] >> jnp.arange(VIEW)[:, None]) & 1).astype(bool)


def vis_mask_sequential(enc):
    """`vis_mask` as minigrid's sequential loops (the reference the bit-parallel one is tested
    against)."""
    sb = _see_behind(enc)

    def row_pass(j, mask):
        sbr = sb[:, j]
        has_up = j > 0

        def left(i, c):
            row, up = c
            go = row[i] & sbr[i]
            row = row.at[i + 1].set(row[i + 1] | go)
            up = up.at[i + 1].set(up[i + 1] | go).at[i].set(up[i] | go)
            return row, up

        def right(t, c):
            row, up = c
            i = VIEW - 1 - t
            go = row[i] & sbr[i]
            row = row.at[i - 1].set(row[i - 1] | go)
            up = up.at[i - 1].set(up[i - 1] | go).at[i].set(up[i] | go)
            return row, up

        up0 = mask[:, jnp.maximum(j - 1, 0)]
        c = jax.lax.fori_loop(0, VIEW - 1, left, (mask[:, j], up0))
        row, up = jax.lax.fori_loop(0, VIEW - 1, right, c)
        mask = mask.at[:, j].set(row)
        return mask.at[:, jnp.maximum(j - 1, 0)].set(jnp.where(has_up, up, mask[:, 0]))

    mask = jnp.zeros((VIEW, VIEW), bool).at[VIEW // 2, VIEW - 1].set(True)
    return jax.lax.fori_loop(0, VIEW, lambda t, m: row_pass(VIEW - 1 - t, m), mask)


def view_image(w: World):
    """minigrid's ``obs["image"]``: [7, 7, 3] with unseen cells 0 and the carried object shown
    at the agent's cell."""
    xy = view_coords(w.agent_pos, w.agent_dir)
    enc = _cell(w.grid, xy[..., 0], xy[..., 1])
    mask = vis_mask(enc)
    carried = jnp.where(w.carrying_id > 0, w.carrying, jnp.array([EMPTY, 0, 0], jnp.int32))
    agent = (jnp.arange(VIEW)[:, None] == VIEW // 2) & (jnp.arange(VIEW)[None, :] == VIEW - 1)
    enc = jnp.where(agent[..., None], carried.astype(enc.dtype), enc)
    return jnp.where(mask[..., None], enc, jnp.zeros((), enc.dtype))


# ----------------------------------------------------------------------------- dynamics


def cell_index(x, y):
    """Flat cell index ``x * MAXS + y`` of `World.obj_cell` / `Mission.poss_cell`."""
    return x * MAXS + y


def poss_mask(ms: Mission, obj_set):
    """minigrid's ``obj_poss`` of one description as a bool [MAXS, MAXS] mask: the
    `Mission.poss_cell` of the objects in ``obj_set`` (bool [MAX_OBJ], e.g. ``ms.set_a[leaf]``)."""
    pc = ms.poss_cell.astype(jnp.int32)
    cells = jnp.where(obj_set & (pc >= 0), pc, MAXS * MAXS)
    return jnp.zeros((MAXS * MAXS + 1,), bool).at[cells].set(True)[:-1].reshape(MAXS, MAXS)


def front_pos(w: World):
    return w.agent_pos + dir_vec(w.agent_dir)


def _leaf_ok(ms: Mission, w: World, action):
    """``verify_action`` success of every leaf ([4] bool), from the leaves' current state."""
    fx, fy = front_pos(w)
    fxc, fyc = jnp.clip(fx, 0, MAXS - 1), jnp.clip(fy, 0, MAXS - 1)
    pre = ms.pre_carry
    cid = w.carrying_id
    # the tracked positions (`poss_mask`) tested through the per-object table (no grid masks)
    pc = ms.poss_cell.astype(jnp.int32)
    goto_ok = jnp.any(ms.set_a & (pc == cell_index(fxc, fyc))[None], axis=-1)
    ids = jnp.arange(MAX_OBJ)

    def in_set_a(i):  # ms.set_a[:, i] by a one-hot compare (no vmapped gather)
        return jnp.any(ms.set_a & (ids == i)[None], axis=-1)

    pick_ok = (action == PICKUP) & (pre == 0) & (cid > 0) & in_set_a(cid)
    front_id = w.oid[fxc, fyc]
    front = w.grid[fxc, fyc]
    door_open = (front_id > 0) & (front[0] == DOOR) & (front[2] == OPEN)
    open_ok = (action == TOGGLE) & door_open & in_set_a(front_id)

    # put next: the object carried at the last verify was dropped in front, next to a fixed one
    # (a tracked position of set_b at Manhattan distance 1 from the front cell)
    px, py = pc // MAXS, pc % MAXS
    near_obj = (pc >= 0) & (jnp.abs(px - fxc) + jnp.abs(py - fyc) == 1)
    near = jnp.any(ms.set_b & near_obj[None], axis=-1)
    put_ok = (
        (action == DROP)
        & (pre > 0)
        & jnp.any(ms.set_a & (ids[None] == pre[:, None]), axis=-1)  # set_a[leaf, pre[leaf]]
        & (cid == 0)
        & near
    )
    kind = ms.kind
    ok = jnp.select(
        [kind == 1, kind == 2, kind == 3, kind == 4], [goto_ok, pick_ok, open_ok, put_ok]
    )
    # strict mode (debug levels): opening another door / picking up another object fails
    front_door = (front_id > 0) & (front[0] == DOOR)
    fail = (
        ms.strict
        & ~ok
        & (
            ((kind == 3) & (action == TOGGLE) & front_door)
            | ((kind == 2) & (action == PICKUP) & (cid > 0))
        )
    )
    return jnp.where(ok, 1, jnp.where(fail, 2, 0)).astype(jnp.int32)


def verify(ms: Mission, w: World, action):
    """``instrs.verify(action)``: returns (mission, status) with 0 continue, 1 success.

    Every leaf is verified at most once per call; ``called`` records which were (their
    ``preCarrying`` moves on), as in minigrid's tree of Before/After/And instructions. The
    four leaves and two nodes are handled as Python lists of scalars (no scatters or gathers:
    each is a separate loop kernel when vmapped on CPU).
    """
    okv = _leaf_ok(ms, w, action)
    ok = [okv[i] for i in range(MAX_LEAVES)]
    ls = [ms.leaf_status[i] for i in range(MAX_LEAVES)]
    called = [jnp.bool_(False)] * MAX_LEAVES

    def node(n, do, ls, called):
        ls, called = list(ls), list(called)
        l0, l1 = 2 * n, 2 * n + 1
        is_and = ms.node_and[n]
        c0 = do & jnp.where(is_and, ls[l0] != 1, True)
        c1 = do & is_and & (ls[l1] != 1)
        new0 = jnp.where(c0, ok[l0], ls[l0])
        new1 = jnp.where(c1, ok[l1], ls[l1])
        ls[l0] = jnp.where(is_and, new0, ls[l0])
        ls[l1] = jnp.where(is_and, new1, ls[l1])
        called[l0] = called[l0] | c0
        called[l1] = called[l1] | c1
        st = jnp.where(is_and, ((ls[l0] == 1) & (ls[l1] == 1)).astype(jnp.int32), ok[l0])
        return st, ls, called

    op = ms.op
    ns0, ns1 = ms.node_status[0], ms.node_status[1]
    # op 0: node A alone; op 1: AndInstr(A, B) (memoised); op 2/3: first then second node
    first = jnp.where(op == 3, 1, 0)
    second = 1 - first
    ns_first = jnp.where(first == 0, ns0, ns1)
    ns_second = jnp.where(second == 0, ns0, ns1)
    seq = (op == 2) | (op == 3)
    do_a = (op == 0) | ((op == 1) & (ns0 != 1)) | (seq & (ns_first != 1) & (first == 0))
    do_b_and = (op == 1) & (ns1 != 1)
    # sequence: the first node is verified until it succeeds, then the second
    do_first = seq & (ns_first != 1)
    st_a, ls, called = node(0, jnp.where(seq, do_first & (first == 0), do_a), ls, called)
    st_b1, ls, called = node(1, do_b_and | (do_first & (first == 1)), ls, called)
    st_first = jnp.where(first == 0, st_a, st_b1)
    first_now = (ns_first == 1) | (do_first & (st_first == 1))
    do_second = seq & first_now
    st_s0, ls, called = node(0, do_second & (second == 0), ls, called)
    st_s1, ls, called = node(1, do_second & (second == 1), ls, called)
    st_second = jnp.where(second == 0, st_s0, st_s1)
    and0 = jnp.where(do_a, st_a, ns0).astype(jnp.int32)
    and1 = jnp.where(do_b_and, st_b1, ns1).astype(jnp.int32)
    new_first = jnp.where(do_first, st_first, ns_first).astype(jnp.int32)
    new_second = jnp.where(do_second, st_second, ns_second).astype(jnp.int32)
    seq0 = jnp.where(first == 0, new_first, new_second)
    seq1 = jnp.where(first == 0, new_second, new_first)
    new_ns = jnp.stack(
        [
            jnp.select([op == 1, seq], [and0, seq0], ns0),
            jnp.select([op == 1, seq], [and1, seq1], ns1),
        ]
    ).astype(jnp.int32)
    st_seq = jnp.where(do_first & (st_first == 2), 2, jnp.where(do_second, st_second, 0))
    status = jnp.select(
        [op == 0, op == 1], [st_a, ((and0 == 1) & (and1 == 1)).astype(jnp.int32)], st_seq
    )
    pre_kind = (ms.kind == 2) | (ms.kind == 4)
    pre = jnp.where(jnp.stack(called) & pre_kind, w.carrying_id, ms.pre_carry)
    ms = ms.replace(leaf_status=jnp.stack(ls).astype(jnp.int32), node_status=new_ns, pre_carry=pre)
    return ms, status.astype(jnp.int32)


def prim_step(w: World, action):
    """One minigrid ``RoomGridLevel.step``; returns (world, reward, terminated)."""
    w = w.replace(step_count=w.step_count + 1)
    fp = front_pos(w)
    fx, fy = jnp.clip(fp[0], 0, MAXS - 1), jnp.clip(fp[1], 0, MAXS - 1)
    cell = w.grid[fx, fy]
    cid = w.oid[fx, fy]
    t = cell[0]
    is_none = t == EMPTY
    d = jnp.where(
        action == LEFT,
        (w.agent_dir + 3) % 4,
        jnp.where(action == RIGHT, (w.agent_dir + 1) % 4, w.agent_dir),
    )
    can_overlap = is_none | ((t == DOOR) & (cell[2] == OPEN)) | (t == GOAL) | (t == LAVA)
    move = (action == FORWARD) & can_overlap
    pos = jnp.where(move, fp, w.agent_pos)
    carrying_none = w.carrying_id == 0
    pick = (action == PICKUP) & ((t == KEY) | (t == BALL) | (t == BOX)) & carrying_none
    drop = (action == DROP) & is_none & ~carrying_none
    toggle = action == TOGGLE
    # door toggle
    is_door = t == DOOR
    locked = cell[2] == LOCKED
    key_ok = (w.carrying[0] == KEY) & (w.carrying[1] == cell[1]) & ~carrying_none
    door_state = jnp.where(
        locked, jnp.where(key_ok, OPEN, LOCKED), jnp.where(cell[2] == OPEN, CLOSED, OPEN)
    )
    new_cell = cell
    new_id = cid
    door_cell = jnp.stack([cell[0], cell[1], door_state.astype(cell.dtype)])
    new_cell = jnp.where(toggle & is_door, door_cell, new_cell)
    # box toggle: the box is replaced by its contents
    cont = w.contents[cid]
    box_open = toggle & (t == BOX)
    cont_enc = jnp.where(cont[3] > 0, cont[:3], jnp.array([EMPTY, 0, 0], jnp.int32))
    new_cell = jnp.where(box_open, cont_enc, new_cell)
    new_id = jnp.where(box_open, cont[3], new_id)
    new_cell = jnp.where(pick, jnp.array([EMPTY, 0, 0], jnp.int32), new_cell)
    new_id = jnp.where(pick, 0, new_id)
    new_cell = jnp.where(drop, w.carrying, new_cell)
    new_id = jnp.where(drop, w.carrying_id, new_id)
    carrying = jnp.where(pick, cell, jnp.where(drop, 0, w.carrying))
    carrying_id = jnp.where(pick, cid, jnp.where(drop, 0, w.carrying_id))
    # one cell written (the front one; a front outside the grid writes its clipped cell back)
    inside = (fp[0] >= 0) & (fp[1] >= 0) & (fp[0] < MAXS) & (fp[1] < MAXS)
    grid = w.grid.at[fx, fy].set(jnp.where(inside, new_cell, cell).astype(w.grid.dtype))
    oid = w.oid.at[fx, fy].set(jnp.where(inside, new_id, cid).astype(w.oid.dtype))
    # object positions: the picked-up object and an opened box leave the grid, the dropped object
    # and a box's contents appear in front
    fc = cell_index(fx, fy)
    ids = jnp.arange(MAX_OBJ)
    gone = jnp.where(pick | box_open, cid, 0)
    came = jnp.where(drop, w.carrying_id, jnp.where(box_open, cont[3], 0))
    oc = w.obj_cell
    oc = jnp.where(inside & (ids == gone) & (gone > 0), -1, oc)
    oc = jnp.where(inside & (ids == came) & (came > 0), fc, oc).astype(oc.dtype)
    w = w.replace(
        grid=grid,
        oid=oid,
        obj_cell=oc,
        agent_pos=pos,
        agent_dir=d,
        carrying=carrying,
        carrying_id=carrying_id,
    )
    reward = jnp.float32(0.0)
    term = move & ((t == GOAL) | (t == LAVA))
    success_reward = 1.0 - 0.9 * (
        w.step_count.astype(jnp.float32) / w.max_steps.astype(jnp.float32)
    )
    reward = jnp.where(move & (t == GOAL), success_reward, reward)
    ms = w.mission
    # minigrid's update_objs_poss on every drop action (successful or not)
    ms = ms.replace(poss_cell=jnp.where(action == DROP, w.obj_cell, ms.poss_cell))
    ms, status = verify(ms, w, action)
    w = w.replace(mission=ms)
    reward = jnp.where(status == 1, success_reward, reward)
    term = term | (status != 0)
    return w, reward.astype(jnp.float32), term


# ----------------------------------------------------------------------------- analysis


def _predecessors() -> np.ndarray:
    """[NS, 3] the state whose action (forward, left, right) leads to each state (-1 none)."""
    pred = np.full((NS, 3), -1, np.int32)
    for s in range(NS):
        for a in range(3):
            if NEIGHBOURS[s, a] >= 0:
                pred[NEIGHBOURS[s, a], a] = s
    return pred


PREDECESSORS = _predecessors()
# Entry keys: a rank (< 2 NS) with base-3 action digits appended, re-ranked every KEY_BLOCK layers
# (2 NS * 3**13 < 2**31).
KEY_BLOCK = 13
_NO_KEY = np.int32(2**31 - 1)


def _pred_take(x, fill=0):
    """``x[PREDECESSORS]`` ([NS] -> [NS, 3], ``fill`` where there is no predecessor) by static
    shifts and rolls of the (fi, ri, rd) layout instead of a gather: action forward moves one
    cell along the relative direction ``rd``, left / right rotate ``rd``."""
    x3 = x.reshape(8, 8, 4)
    pad = jnp.full((1, 8), fill, x.dtype)
    fwd = [
        jnp.concatenate([pad, x3[:-1, :, 0]], 0),  # rd 0 (front): from fi - 1
        jnp.concatenate([pad.T, x3[:, :-1, 1]], 1),  # rd 1 (right): from ri - 1
        jnp.concatenate([x3[1:, :, 2], pad], 0),  # rd 2 (back): from fi + 1
        jnp.concatenate([x3[:, 1:, 3], pad.T], 1),  # rd 3 (left): from ri + 1
    ]
    fwd = jnp.stack(fwd, -1).reshape(NS)
    left = jnp.roll(x3, -1, axis=2).reshape(NS)  # turning left: from rd + 1
    right = jnp.roll(x3, 1, axis=2).reshape(NS)  # turning right: from rd - 1
    return jnp.stack([fwd, left, right], -1)


def _bfs(obst, in_range):
    """Upstream's ``find_path`` search run to exhaustion (all targets at once), layer by layer.

    Upstream's FIFO keeps duplicate entries and overwrites a state's parent at every push before
    its first pop. The entries pushed while popping the entries of depth ``d`` are those of depth
    ``d + 1``, in pop order, so an entry's position in its layer is the lexicographic order of its
    action string (forward < left < right). An entry of state ``s`` pushes the successor ``t`` iff
    ``t`` is free and not popped yet: not popped in an earlier layer and not first entered in this
    layer before that entry. A state's entries of one layer all lie on the same side of the first
    entry of each of its successors (checked: a straddle sets ``over``), so a state is summarised
    per layer by the positions of its first and last entries (integer keys: a rank with the action
    digits of the last layers appended, re-ranked every `KEY_BLOCK` layers):

    * first pops: the first entries of not-yet-popped states, in (layer, key) order;
    * the first / last entry of ``t`` in the next layer: the first / last entry of its lowest /
      highest pushing predecessor with the action appended;
    * parent (and action): the pusher of the last push, i.e. the pushing predecessor with the
      highest last entry in the last layer that pushes ``t`` (all pushes precede its first pop).

    Each layer is a few dense ops over the ``NS`` states: one iteration per layer (<= ~40 on
    BabyAI windows) instead of one per pop (~700). Equal to `_bfs_sequential` and to a Python
    deque copy of upstream's search (tests).

    Args:
      obst: bool [8, 8] obstacles in the agent frame (fi = front + 1, ri = right + 3).
      in_range: bool [8, 8] upstream's search window in the same frame.

    Returns:
      parent int32 [NS], pact int32 [NS] (primitive into the state), first int32 [NS] (layer of
      the first pop, ``1 << 20`` if never popped), first_key int32 [NS] (order of the first pops
      within a layer), over bool [] (a straddle: the result is then not upstream's and must not
      be used).
    """
    pc = jnp.maximum(jnp.asarray(PREDECESSORS), 0)  # [NS, 3]
    acts = _BFS_ACTIONS
    free = jnp.repeat((in_range & ~obst).reshape(-1), 4)  # [NS]
    a3 = jnp.arange(3, dtype=jnp.int32)[None, :]

    def layer(c):
        in_l, fk, lk, popped, first, first_key, parent, pact, depth, over, j = c
        new = in_l & ~popped
        first = jnp.where(new, depth, first)
        first_key = jnp.where(new, fk, first_key)
        # pushes into t from its predecessor s = pred[t, a], by the entries of s in this layer
        s_in = _pred_take(in_l, False)  # False where there is no predecessor
        fs, ls = _pred_take(fk), _pred_take(lk)  # [NS, 3]
        ft = fk[:, None]
        t_in = in_l[:, None]
        before = ls < ft  # every entry of s precedes t's first entry
        straddle = s_in & t_in & ~popped[:, None] & (fs < ft) & ~before
        ok = s_in & (free & ~popped)[:, None] & (~t_in | before)  # [NS, 3]
        anyp = jnp.any(ok, 1)
        kl = jnp.where(ok, ls * 3 + a3, -1)
        hi = jnp.argmax(kl, 1)
        parent = jnp.where(
            anyp, jnp.select([hi == 0, hi == 1], [pc[:, 0], pc[:, 1]], pc[:, 2]), parent
        )
        pact = jnp.where(anyp, jnp.select([hi == 0, hi == 1], [acts[0], acts[1]], acts[2]), pact)
        fk = jnp.where(anyp, jnp.min(jnp.where(ok, fs * 3 + a3, _NO_KEY), 1), 0)
        lk = jnp.where(anyp, jnp.max(kl, 1), 0)
        over = over | jnp.any(straddle)
        return anyp, fk, lk, popped | in_l, first, first_key, parent, pact, depth + 1, over, j + 1

    def block(c):
        c = jax.lax.while_loop(lambda c: jnp.any(c[0]) & (c[10] < KEY_BLOCK), layer, c)
        in_l, fk, lk = c[:3]
        # re-rank the keys (order kept, < 2 NS)
        keys = jnp.sort(jnp.where(jnp.tile(in_l, 2), jnp.concatenate([fk, lk]), _NO_KEY))
        fk = jnp.where(in_l, jnp.searchsorted(keys, fk).astype(jnp.int32), 0)
        lk = jnp.where(in_l, jnp.searchsorted(keys, lk).astype(jnp.int32), 0)
        return (in_l, fk, lk) + c[3:10] + (jnp.int32(0),)

    init = (
        jnp.zeros((NS,), bool).at[_INIT].set(True),
        jnp.zeros((NS,), jnp.int32),
        jnp.zeros((NS,), jnp.int32),
        jnp.zeros((NS,), bool),
        jnp.full((NS,), 1 << 20, jnp.int32),
        jnp.zeros((NS,), jnp.int32),
        jnp.full((NS,), -1, jnp.int32),
        jnp.zeros((NS,), jnp.int32),
        jnp.int32(0),
        jnp.bool_(False),
        jnp.int32(0),
    )
    out = jax.lax.while_loop(lambda c: jnp.any(c[0]), block, init)
    return out[6], out[7], out[4], out[5], out[9]


def _bfs_sequential(obst, in_range, queue_size: int = QUEUE):
    """Upstream's ``find_path`` search popped one entry at a time (the reference for `_bfs`).

    The FIFO queue is a ring buffer of ``queue_size`` entries; ``over`` is set when more than
    ``queue_size`` entries are live at once (the result is then wrong and flagged).
    """
    nb = jnp.asarray(NEIGHBOURS)
    acts = jnp.asarray(_BFS_ACTIONS)
    free = (in_range & ~obst).reshape(-1)  # [64] over (fi, ri)
    big = jnp.int32(1 << 20)

    def cond(c):
        return c[1] < c[2]

    def body(c):
        queue, head, tail, popped, first, parent, pact, counter, over = c
        s = queue[head % queue_size]
        head = head + 1
        new = ~popped[s]
        first = first.at[s].set(jnp.where(new, counter, first[s]))
        counter = counter + new.astype(jnp.int32)
        popped = popped.at[s].set(True)
        for a in range(3):
            ns = nb[s, a]
            ok = (ns >= 0) & free[jnp.maximum(ns, 0) // 4] & ~popped[jnp.maximum(ns, 0)]
            nsc = jnp.maximum(ns, 0)
            full = tail - head >= queue_size
            slot = jnp.where(ok & ~full, tail % queue_size, queue_size)
            queue = queue.at[slot].set(nsc, mode="drop")
            parent = parent.at[nsc].set(jnp.where(ok, s, parent[nsc]))
            pact = pact.at[nsc].set(jnp.where(ok, acts[a], pact[nsc]))
            over = over | (ok & full)
            tail = tail + (ok & ~full).astype(jnp.int32)
        return queue, head, tail, popped, first, parent, pact, counter, over

    init = (
        jnp.zeros((queue_size,), jnp.int32).at[0].set(_INIT),
        jnp.int32(0),
        jnp.int32(1),
        jnp.zeros((NS,), bool),
        jnp.full((NS,), big),
        jnp.full((NS,), -1, jnp.int32),
        jnp.zeros((NS,), jnp.int32),
        jnp.int32(0),
        jnp.bool_(False),
    )
    out = jax.lax.while_loop(cond, body, init)
    return out[5], out[6], out[4], out[8]


def _goal_state(first, first_key, fr, arrive):
    """The first-popped goal state for a target at (front, right) in the agent frame.

    ``first`` / ``first_key``: the first pop's layer and its order within the layer (`_bfs`).
    """
    tf, tr = fr[0] + 1, fr[1] + 3
    rel = jnp.asarray(_REL_MOVE)
    rd = jnp.arange(4)
    pf = jnp.where(arrive, tf, tf - rel[:, 0])
    pr = jnp.where(arrive, tr, tr - rel[:, 1])
    ok = (pf >= 0) & (pf < 8) & (pr >= 0) & (pr < 8)
    s = (jnp.clip(pf, 0, 7) * 8 + jnp.clip(pr, 0, 7)) * 4 + rd
    lay = jnp.where(ok, first[s], 1 << 20)
    best_layer = jnp.min(lay)
    best = jnp.argmin(jnp.where(lay == best_layer, first_key[s], _NO_KEY))
    return jnp.where(best_layer < (1 << 20), s[best], -1)


def analyse(w: World, image: jax.Array | None = None, queue_size: int | None = None) -> Analysis:
    """AgentGym's ``postprocess_obs`` on device.

    Args:
      w: the world (agent, carried object, grid for the search window).
      image: [7, 7, 3] the observation image upstream post-processes; default
        ``view_image(w)``. Upstream's reset of the ``start_carrying`` levels (PutNext...Carrying)
        post-processes the image minigrid rendered *before* the carried object was lifted from
        the grid, while the carried object (``You are carrying ...``, ``drop``) is the current one.
      queue_size: None (default): the layer-by-layer search `_bfs`; an int (static): upstream's
        sequential queue `_bfs_sequential` with a ring buffer of that length (the reference).
    """
    img = jnp.asarray(view_image(w) if image is None else image, jnp.int32)
    xy = view_coords(w.agent_pos, w.agent_dir)
    vi = jnp.arange(VIEW)[:, None] * jnp.ones((1, VIEW), jnp.int32)
    vj = jnp.ones((VIEW, 1), jnp.int32) * jnp.arange(VIEW)[None, :]
    f = VIEW - 1 - vj
    r = vi - VIEW // 2
    dis = f + jnp.abs(r)
    t = img[..., 0]
    valid = (xy[..., 0] >= 0) & (xy[..., 1] >= 0) & (dis > 0)
    interesting = valid & (
        (t == DOOR) | (t == KEY) | (t == BALL) | (t == BOX) | (t == GOAL) | (t == LAVA)
    )
    any_obj = jnp.any(interesting | (valid & (t == WALL)))
    # stable sort by distance, ties in upstream's loop order (vis_j outer, vis_i inner)
    cell = vj * VIEW + vi
    key = jnp.where(interesting, dis * 64 + cell, 1 << 20).T.reshape(-1)  # flat index vj*7+vi
    order = jnp.argsort(key, stable=True)
    order = jnp.concatenate([order[:K], jnp.zeros((0,), order.dtype)])
    n_slots = jnp.sum(interesting).astype(jnp.int32)
    slot_ok = jnp.arange(K) < n_slots
    flat_img = jnp.transpose(img, (1, 0, 2)).reshape(-1, 3)  # index vj*7+vi
    slot_cell = order[:K].astype(jnp.int32)
    slot_enc = jnp.where(slot_ok[:, None], flat_img[slot_cell], 0)
    slot_fr = jnp.stack([VIEW - 1 - slot_cell // VIEW, slot_cell % VIEW - VIEW // 2], -1)
    same = (
        jnp.all(slot_enc[:, None, :] == slot_enc[None, :, :], -1)
        & slot_ok[:, None]
        & slot_ok[None, :]
    )
    tri = jnp.arange(K)[None, :] <= jnp.arange(K)[:, None]  # j <= k
    desc_cnt = jnp.sum(same & tri, 1).astype(jnp.int32)
    # barrier straight ahead: boxes and walls
    col = img[VIEW // 2, :, 0]  # over vis_j
    fcol = VIEW - 1 - jnp.arange(VIEW)
    vcol = valid[VIEW // 2, :]
    bar = vcol & ((col == BOX) | (col == WALL)) & (fcol > 0)
    bdis = jnp.where(bar, fcol, 99)
    bj = jnp.argmin(bdis)
    has_barrier = jnp.any(bar)
    barrier_dis = jnp.where(has_barrier, bdis[bj], 0).astype(jnp.int32)
    barrier_type = col[bj]
    # search obstacles in the frame (fi = f + 1, ri = r + 3)
    obst_v = valid & ((t == WALL) | (t == BOX) | (t == LAVA) | (t == BALL) | (t == KEY))
    obst = jnp.zeros((8, 8), bool).at[1:8, 0:7].set(obst_v[:, ::-1].T)
    # obst_v is [vis_i, vis_j]; frame [fi, ri]: fi = 7 - vis_j, ri = vis_i
    in_range = jnp.asarray(IN_RANGE)[w.agent_dir]
    if queue_size is None:
        parent, pact, first, first_key, overflow = _bfs(obst, in_range)
    else:
        parent, pact, first, overflow = _bfs_sequential(obst, in_range, queue_size)
        first_key = jnp.zeros_like(first)  # the pop counter alone orders the first pops
    goal_front = jax.vmap(lambda fr: _goal_state(first, first_key, fr, False))(slot_fr)
    goal_arrive = jax.vmap(lambda fr: _goal_state(first, first_key, fr, True))(slot_fr)
    goal_front = jnp.where(slot_ok, goal_front, -1)
    goal_arrive = jnp.where(slot_ok, goal_arrive, -1)
    # action table
    st = slot_enc[:, 0]
    carrying = w.carrying_id > 0
    reach = goal_front >= 0
    can_pick = (
        slot_ok & ~carrying & ((st == KEY) | (st == BALL) | (st == BOX) | (st == LAVA)) & reach
    )
    can_goto = (
        slot_ok & ((st == DOOR) | (st == KEY) | (st == BALL) | (st == BOX) | (st == LAVA)) & reach
    )
    door = slot_ok & (st == DOOR)
    dstate = slot_enc[:, 2]
    key_match = carrying & (w.carrying[0] == KEY) & (w.carrying[1] == slot_enc[:, 1])
    can_through = door & (dstate == OPEN) & (goal_arrive >= 0)
    tg_door = door & ((dstate == CLOSED) | ((dstate == LOCKED) & key_match))
    can_tg = tg_door & reach
    at_door = can_tg & (goal_front == _INIT)
    has_toggle = jnp.any(at_door)
    first_toggle = jnp.argmax(at_door)
    front_cell = img[VIEW // 2, VIEW - 2]
    front_valid = valid[VIEW // 2, VIEW - 2]
    ft = front_cell[0]
    front_occupied = front_valid & (
        (ft == WALL) | (ft == BOX) | (ft == LAVA) | (ft == BALL) | (ft == KEY)
    )
    can_forward = ~has_barrier | (barrier_dis > 1)
    fixed_legal = jnp.array([True, True, False, False, False, True, False, False])
    fixed_legal = fixed_legal.at[A_FORWARD].set(can_forward)
    fixed_legal = fixed_legal.at[A_TOGGLE].set(has_toggle)
    fixed_legal = fixed_legal.at[A_DROP].set(carrying & ~front_occupied)
    legal = jnp.concatenate([fixed_legal, can_pick, can_goto, can_through, can_tg])

    def rank(ok):
        return (
            jnp.sum(same & ok[None, :] & (jnp.arange(K)[None, :] < jnp.arange(K)[:, None]), 1) + 1
        )

    num = jnp.concatenate(
        [jnp.zeros((N_FIXED,), jnp.int32), rank(can_pick), rank(can_goto), desc_cnt, desc_cnt]
    ).astype(jnp.int32)
    ks = jnp.arange(K)
    order_key = jnp.concatenate(
        [
            jnp.array([0, 1, 2, 0, 51, 1000, 2000, 2000])
            .at[A_TOGGLE]
            .set(52 + 2 * first_toggle + 1),
            3 + ks,
            200 + ks,
            52 + 2 * ks,
            52 + 2 * ks,
        ]
    ).astype(jnp.int32)
    return Analysis(
        image=img,
        slot_cell=slot_cell,
        n_slots=n_slots,
        any_obj=any_obj,
        slot_enc=slot_enc,
        slot_fr=slot_fr.astype(jnp.int32),
        desc_cnt=desc_cnt,
        has_barrier=has_barrier,
        barrier_dis=barrier_dis,
        barrier_type=barrier_type.astype(jnp.int32),
        parent=parent,
        pact=pact,
        first=first,
        first_key=first_key,
        goal_front=goal_front.astype(jnp.int32),
        goal_arrive=goal_arrive.astype(jnp.int32),
        legal=legal,
        num=num,
        order=order_key,
        front_occupied=front_occupied,
        overflow=overflow,
    )


def _path(an: Analysis, goal):
    """Primitive plan from the initial state to BFS state ``goal`` ([PMAX], length)."""

    def cond(c):
        s, n, _ = c
        return (s != _INIT) & (s >= 0) & (n < PMAX)

    def body(c):
        s, n, buf = c
        return an.parent[s], n + 1, buf.at[n].set(an.pact[s])

    _, n, buf = jax.lax.while_loop(cond, body, (goal, jnp.int32(0), jnp.zeros((PMAX,), jnp.int32)))
    idx = jnp.clip(n - 1 - jnp.arange(PMAX), 0, PMAX - 1)
    plan = jnp.where(jnp.arange(PMAX) < n, buf[idx], 0)
    return plan, n


def plan_for(an: Analysis, action):
    """The compiled primitive plan of action id ``action`` ([PMAX] int32, length)."""
    is_slot = action >= N_FIXED
    verb = (action - N_FIXED) // K
    k = jnp.clip((action - N_FIXED) % K, 0, K - 1)
    goal = jnp.where(verb == V_THROUGH, an.goal_arrive[k], an.goal_front[k])
    plan, n = _path(an, jnp.where(is_slot, goal, _INIT))
    extra = jnp.select(
        [verb == V_PICKUP, verb == V_TOGGLE_THROUGH],
        [jnp.array([PICKUP, 0]), jnp.array([TOGGLE, FORWARD])],
        jnp.array([0, 0]),
    )
    n_extra = jnp.select([verb == V_PICKUP, verb == V_TOGGLE_THROUGH], [1, 2], 0)
    idx = jnp.arange(PMAX)
    plan = jnp.where((idx >= n) & (idx < n + n_extra), extra[jnp.clip(idx - n, 0, 1)], plan)
    n_slot = n + n_extra
    fixed_plan = jnp.array([LEFT, RIGHT, FORWARD, TOGGLE, DROP, 0, 0, 0])[jnp.clip(action, 0, 7)]
    fixed_n = jnp.array([1, 1, 1, 1, 1, 0, 0, 0])[jnp.clip(action, 0, 7)]
    plan = jnp.where(is_slot, plan, jnp.zeros((PMAX,), jnp.int32).at[0].set(fixed_plan))
    return plan.astype(jnp.int32), jnp.where(is_slot, n_slot, fixed_n).astype(jnp.int32)


# ----------------------------------------------------------------------------- text


def _w(text: str):
    return jnp.asarray(bw.ids(text), jnp.int32)


def ragged(words, lens, max_words: int):
    """Flattens rows ``words[i, :lens[i]]`` into one buffer ([max_words], total)."""
    n, width = words.shape
    starts = jnp.cumsum(lens) - lens
    pos = starts[:, None] + jnp.arange(width)[None, :]
    pos = jnp.where(jnp.arange(width)[None, :] < lens[:, None], pos, max_words)
    out = jnp.zeros((max_words,), jnp.int32).at[pos.reshape(-1)].set(words.reshape(-1), mode="drop")
    return out, jnp.sum(lens).astype(jnp.int32)


def _pad(ws, width):
    ws = jnp.asarray(ws, jnp.int32)
    return jnp.zeros((width,), jnp.int32).at[: ws.shape[0]].set(ws), ws.shape[0]


def name_words(enc):
    """[3] words of an object's name (colour, [state], type) and their count."""
    c = jnp.asarray(bw.COLOR_W)[enc[1]]
    s = jnp.asarray(bw.STATE_W)[jnp.clip(enc[2], 0, 2)]
    o = jnp.asarray(bw.OBJECT_W)[enc[0]]
    is_door = enc[0] == DOOR
    return jnp.where(is_door, jnp.stack([c, s, o]), jnp.stack([c, o, 0])), jnp.where(is_door, 3, 2)


def _cat(parts, width):
    """Concatenates (words, n) parts into a [width] row."""
    out = jnp.zeros((width,), jnp.int32)
    off = jnp.int32(0)
    for ws, n in parts:
        ws = jnp.asarray(ws, jnp.int32)
        m = ws.shape[0]
        idx = jnp.where(jnp.arange(m) < n, off + jnp.arange(m), width)
        out = out.at[idx].set(ws, mode="drop")
        off = off + n
    return out, off


def entry_words(enc, fr, cnt):
    """One "There is a grey key 1 1 steps in front of you and 1 steps to your left.  " entry."""
    nums = jnp.asarray(bw.NUM)
    name, nn = name_words(enc)
    f, r = fr[0], fr[1]
    ahead = jnp.stack([_w("right"), _w("in"), _w("front"), _w("of"), _w("you")]).reshape(-1)
    ahead = jnp.concatenate([ahead, jnp.stack([nums[f]]), _w("steps away."), _w("")])
    side_word = jnp.where(r > 0, bw.wid("right."), bw.wid("left."))
    side = jnp.concatenate(
        [
            jnp.stack([nums[f]]),
            _w("steps in front of you and"),
            jnp.stack([nums[jnp.abs(r)]]),
            _w("steps to your"),
            jnp.stack([side_word]),
            _w(""),
        ]
    )
    pos_w = jnp.where(
        r == 0, jnp.concatenate([ahead, jnp.zeros((13 - ahead.shape[0],), jnp.int32)]), side
    )
    pos_n = jnp.where(r == 0, ahead.shape[0], side.shape[0])
    return _cat(
        [(_w("There is a"), 3), (name, nn), (jnp.stack([nums[cnt]]), 1), (pos_w, pos_n)],
        ENTRY_WORDS,
    )


def description(an: Analysis, w: World, max_words: int):
    """Upstream's description: objects, barrier, carried item ([max_words], n)."""
    nums = jnp.asarray(bw.NUM)
    entries = jax.vmap(entry_words)(an.slot_enc, an.slot_fr, an.desc_cnt)
    lens = jnp.where(jnp.arange(K) < an.n_slots, entries[1], 0)
    ent, ent_n = ragged(entries[0], lens, K * ENTRY_WORDS)
    head_some = _w("In front of you in this room, you can see several objects:")
    intro = _w("The room has walls around you.")
    head_none = _w("You cannot see any objects within sight.The room has walls around you.")
    bar = jnp.concatenate(
        [
            _w("You are facing a"),
            jnp.stack([jnp.where(an.barrier_type == BOX, bw.wid("box"), bw.wid("wall"))]),
        ]
    )
    bar = jnp.concatenate([bar, jnp.stack([nums[an.barrier_dis]]), _w("steps away.")])
    carry_name = jnp.stack(
        [jnp.asarray(bw.COLOR_W)[w.carrying[1]], jnp.asarray(bw.OBJECT_DOT_W)[w.carrying[0]]]
    )
    carry_yes = jnp.concatenate([_w("You are carrying a"), carry_name])
    carry_no = _w("You are not carrying anything.")
    carrying = w.carrying_id > 0
    parts = [
        (head_some, jnp.where(an.any_obj, head_some.shape[0], 0)),
        (ent, jnp.where(an.any_obj, ent_n, 0)),
        (intro, jnp.where(an.any_obj, intro.shape[0], 0)),
        (head_none, jnp.where(an.any_obj, 0, head_none.shape[0])),
        (bar, jnp.where(an.has_barrier, bar.shape[0], 0)),
        (carry_yes, jnp.where(carrying, carry_yes.shape[0], 0)),
        (carry_no, jnp.where(carrying, 0, carry_no.shape[0])),
    ]
    return _cat(parts, max_words)


def action_words(an: Analysis):
    """Words of every action's text ([NUM_ACTIONS, 8], lengths)."""
    fixed = [
        "turn left",
        "turn right",
        "move forward",
        "toggle",
        "drop",
        "check available actions",
        "",
        "",
    ]
    rows = []
    lens = []
    for t in fixed:
        ids = bw.ids(t) if t else []
        rows.append(ids + [0] * (WORDS_PER_ACTION - len(ids)))
        lens.append(len(ids))
    fixed_rows = jnp.asarray(np.array(rows, np.int32))
    nums = jnp.asarray(bw.NUM)
    verbs = [_w("pickup"), _w("go to"), _w("go through"), _w("toggle and go through")]

    def slot_rows(enc, n_pick, n_goto, n_door):
        name, nn = name_words(enc)
        out = []
        for v, num in zip(verbs, (n_pick, n_goto, n_door, n_door), strict=True):
            out.append(
                _cat([(v, v.shape[0]), (name, nn), (jnp.stack([nums[num]]), 1)], WORDS_PER_ACTION)
            )
        return jnp.stack([o[0] for o in out]), jnp.stack([o[1] for o in out])

    n = an.num
    sw, sl = jax.vmap(slot_rows)(
        an.slot_enc,
        n[N_FIXED : N_FIXED + K],
        n[N_FIXED + K : N_FIXED + 2 * K],
        n[N_FIXED + 2 * K : N_FIXED + 3 * K],
    )
    # [K, 4, 8] -> verb-major [4 * K, 8]
    sw = jnp.transpose(sw, (1, 0, 2)).reshape(4 * K, WORDS_PER_ACTION)
    sl = jnp.transpose(sl, (1, 0)).reshape(4 * K)
    return jnp.concatenate([fixed_rows, sw]), jnp.concatenate(
        [jnp.asarray(lens, jnp.int32), sl]
    ).astype(jnp.int32)


def action_list(an: Analysis, style: int, max_words: int):
    """The legal actions in upstream's order; style 0: ``["a", "b"]``, 1: ``a, b`` (check)."""
    words, lens = action_words(an)
    key = jnp.where(an.legal, an.order, 1 << 20)
    perm = jnp.argsort(key, stable=True)
    n_legal = jnp.sum(an.legal)
    words, lens = words[perm], jnp.where(jnp.arange(NUM_ACTIONS) < n_legal, lens[perm], 0)
    idx = jnp.arange(NUM_ACTIONS)
    first_last = n_legal - 1
    var = jnp.asarray(bw.VARIANT)
    if style == 0:
        pre = jnp.where(idx == 0, 2, 1)
        suf = jnp.where(idx == first_last, 2, 1)
    else:
        pre = jnp.zeros_like(idx)
        suf = jnp.where(idx == first_last, 0, 3)
    last = jnp.clip(lens - 1, 0, WORDS_PER_ACTION - 1)
    first_w = words[:, 0]
    last_w = words[idx, last]
    single = lens == 1
    w0 = jnp.where(single, var[first_w, pre, suf], var[first_w, pre, 0])
    words = words.at[:, 0].set(w0)
    lw = var[last_w, 0, suf]
    words = words.at[idx, last].set(jnp.where(single, w0, lw))
    return ragged(words, lens, max_words)


def glue(ws, n, kind):
    """Joins the last word of ``ws[:n]`` with a newline-kind (`babyai_words.GLUE_KINDS`)."""
    last = jnp.clip(n - 1, 0, ws.shape[0] - 1)
    return ws.at[last].set(jnp.asarray(bw.GLUE)[ws[last], kind])


def _door_dict(an: Analysis, k):
    """Upstream's ``str(cnt_door)`` printed in the no-path error for a door slot ``k``."""
    nums = jnp.asarray(bw.NUM)
    ks = jnp.arange(K)
    door = (an.slot_enc[:, 0] == DOOR) & (ks < an.n_slots)
    same = jnp.all(an.slot_enc[:, None, :] == an.slot_enc[None, :, :], -1)
    upto = ks <= k
    first_occ = door & (an.desc_cnt == 1) & upto
    count = jnp.sum(same & (door & upto)[None, :], 1)
    n_entries = jnp.sum(first_occ)
    rank = jnp.cumsum(first_occ) - 1
    col = jnp.asarray(bw.COLOR_W)[an.slot_enc[:, 1]]
    col_first = jnp.asarray([bw.wid("{'" + c) for c in bw.COLORS])[an.slot_enc[:, 1]]
    col_other = jnp.asarray([bw.wid("'" + c) for c in bw.COLORS])[an.slot_enc[:, 1]]
    del col
    state = jnp.asarray(bw.STATE_W)[jnp.clip(an.slot_enc[:, 2], 0, 2)]
    is_last = rank == n_entries - 1
    num_w = jnp.where(
        is_last,
        jnp.asarray([bw.wid(f"{i}}},") for i in range(bw.MAX_NUMBER + 1)])[count],
        jnp.asarray([bw.wid(f"{i},") for i in range(bw.MAX_NUMBER + 1)])[count],
    )
    del nums
    rows = jnp.stack(
        [
            jnp.where(rank == 0, col_first, col_other),
            state,
            jnp.full((K,), bw.wid("door':")),
            num_w,
        ],
        1,
    )
    # entries in order of first occurrence == slot order
    return ragged(rows, jnp.where(first_occ, 4, 0), 4 * K)


def error_words(an: Analysis, w: World, action, compat: bool, max_words: int = 48):
    """Upstream's error message for an action that is not available ([max_words], n)."""
    verb = (action - N_FIXED) // K
    k = jnp.clip((action - N_FIXED) % K, 0, K - 1)
    enc = an.slot_enc[k]
    in_slot = (action >= N_FIXED) & (k < an.n_slots)
    st = enc[0]
    name, nn = name_words(enc)
    nums = jnp.asarray(bw.NUM)
    del nums
    num_comma = jnp.asarray([bw.wid(f"{i},") for i in range(bw.MAX_NUMBER + 1)])
    num = jnp.stack(
        [num_comma[an.num[jnp.clip(action, 0, NUM_ACTIONS - 1)]]]
    )  # "1," of "door 1, as"
    no_path = _w("as there is no path leading to it.")
    carrying = w.carrying_id > 0
    pickable = (st == KEY) | (st == BALL) | (st == BOX) | (st == LAVA)
    gotoable = pickable | (st == DOOR)
    unknown = _w("The action is not recognized. Please check valid actions.")
    msgs = []
    conds = []
    conds.append(action == A_FORWARD)
    msgs.append((_w("There is a barrier in front of you, you can't move forward."), 12))
    conds.append((action == A_DROP) & ~carrying)
    msgs.append((_w("You cannot drop the object, as you are not carrying anything."), 11))
    conds.append((action == A_DROP) & carrying)
    msgs.append(
        (_w("You cannot drop the object, as there is already an object in front of you."), 14)
    )
    conds.append(action == A_EMPTY)
    msgs.append((_w("No change in state."), 4))
    conds.append(in_slot & (verb == V_PICKUP) & ~carrying & pickable)
    msgs.append(
        _cat(
            [(_w("You cannot pickup"), 3), (name, nn), (num, 1), (no_path, no_path.shape[0])],
            max_words,
        )
    )
    conds.append(in_slot & (verb == V_GOTO) & gotoable)
    msgs.append(
        _cat(
            [(_w("You cannot go to"), 4), (name, nn), (num, 1), (no_path, no_path.shape[0])],
            max_words,
        )
    )
    door_open = enc[2] == OPEN
    door_closed = enc[2] == CLOSED
    door_locked = enc[2] == LOCKED
    conds.append(in_slot & (verb == V_THROUGH) & (st == DOOR) & door_open)
    msgs.append(
        _cat(
            [(_w("You cannot go through"), 4), (name, nn), (num, 1), (no_path, no_path.shape[0])],
            max_words,
        )
    )
    conds.append(in_slot & (verb == V_THROUGH) & (st == DOOR) & door_closed)
    closed = _w("as it is closed. You should toggle it first.")
    msgs.append(
        _cat(
            [(_w("You cannot go through"), 4), (name, nn), (num, 1), (closed, closed.shape[0])],
            max_words,
        )
    )
    tg = _w("You cannot toggle and go through")
    key_ok = carrying & (w.carrying[0] == KEY)
    colour_ok = key_ok & (w.carrying[1] == enc[1])
    conds.append(in_slot & (verb == V_TOGGLE_THROUGH) & (st == DOOR) & door_locked & ~key_ok)
    nokey = _w("as you are not carrying a key.")
    msgs.append(_cat([(tg, 6), (name, nn), (num, 1), (nokey, nokey.shape[0])], max_words))
    conds.append(
        in_slot & (verb == V_TOGGLE_THROUGH) & (st == DOOR) & door_locked & key_ok & ~colour_ok
    )
    wrong = _w("as the color of the key you are carrying does not match the color of door.")
    msgs.append(_cat([(tg, 6), (name, nn), (num, 1), (wrong, wrong.shape[0])], max_words))
    conds.append(
        in_slot
        & (verb == V_TOGGLE_THROUGH)
        & (st == DOOR)
        & (door_closed | (door_locked & colour_ok))
    )
    if compat:
        dct, dn = _door_dict(an, k)
        msgs.append(_cat([(tg, 6), (name, nn), (dct, dn), (no_path, no_path.shape[0])], max_words))
    else:
        msgs.append(_cat([(tg, 6), (name, nn), (num, 1), (no_path, no_path.shape[0])], max_words))
    out = _pad(unknown, max_words)
    for c, (ws, n) in reversed(list(zip(conds, msgs, strict=True))):
        if ws.shape[0] != max_words:
            ws, n = _pad(ws, max_words)
        out = (jnp.where(c, ws, out[0]), jnp.where(c, n, out[1]))
    return out
