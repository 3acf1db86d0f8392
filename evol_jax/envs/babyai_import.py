"""Host side: minigrid envs and recorded transcript states -> device `World` (import path).

``world_from_minigrid(env)`` reads a live minigrid BabyAI env (grid, object identities, box
contents, carried object, the verifier tree with its progress) exactly.
``world_from_record(state)`` builds the same from a recorded ``state`` dict of
``babyai_transcripts.jsonl`` (grid encoding, agent, mission); the mission text is parsed into the
instruction tree and descriptions are matched against
the grid as minigrid's ``ObjDesc.find_matching_objs`` does at reset (the state must be a reset
state when the mission uses locations). Box contents are not in the recorded encoding: pass
``box_contents`` when a level hides objects in boxes.
``bank_from_minigrid(instances, goal_ids)`` stacks imported instances, with the reset image each
one's AgentGym text describes, into the `InstanceBank` that `BabyAI.reset` draws from.
"""

from __future__ import annotations

import re
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from evol_jax.envs import babyai_core as core
from evol_jax.envs import babyai_words as bw

_TYPE = {n: i for i, n in enumerate(bw.OBJECTS)}
_COLOR = {n: i for i, n in enumerate(bw.COLORS)}
_STATE = {n: i for i, n in enumerate(bw.STATES)}
_LEAF_KIND = {"goto": 1, "pickup": 2, "open": 3, "putnext": 4}
_OBJECT_TYPES = (core.DOOR, core.KEY, core.BALL, core.BOX, core.GOAL, core.LAVA)


def _empty_mission():
    return dict(
        op=np.int32(0),
        node_and=np.zeros((2,), bool),
        kind=np.zeros((4,), np.int32),
        strict=np.zeros((4,), bool),
        set_a=np.zeros((4, core.MAX_OBJ), bool),
        set_b=np.zeros((4, core.MAX_OBJ), bool),
        poss_a=np.zeros((4, core.MAXS, core.MAXS), bool),
        poss_b=np.zeros((4, core.MAXS, core.MAXS), bool),
        pre_carry=np.zeros((4,), np.int32),
        leaf_status=np.zeros((4,), np.int32),
        node_status=np.zeros((2,), np.int32),
    )


def _padded_grid(enc: np.ndarray) -> np.ndarray:
    w, h = enc.shape[:2]
    if w > core.MAXS or h > core.MAXS:
        raise ValueError(f"babyai: grid {w}x{h} exceeds the maximum {core.MAXS}x{core.MAXS}")
    grid = np.zeros((core.MAXS, core.MAXS, 3), np.int32)
    grid[...] = (core.WALL, core.GREY, 0)
    grid[:w, :h] = enc
    return grid


def _obj_cell(oid: np.ndarray) -> np.ndarray:
    """int16 [MAX_OBJ] cell of each object id on the grid (-1 elsewhere): the inverse of oid
    (`_world` adds the tracked walls)."""
    out = np.full((core.MAX_OBJ,), -1, np.int16)
    xs, ys = np.nonzero(oid)
    out[oid[xs, ys]] = core.cell_index(xs, ys)
    return out


def _poss_cell(oid: np.ndarray, obj_cell: np.ndarray, mission: dict) -> np.ndarray:
    """`Mission.poss_cell` from per-leaf tracked-position masks (minigrid's ``obj_poss``).

    All leaves were last updated at the same time T (reset or the last drop), each tracking the
    positions of its objects then. An object still at its T position is where oid says; a
    tracked position with another (or no) object now belonged to an object that has left it
    since (the one picked up since T, or an opened box). A position is therefore given to the
    object tracked by exactly the same descriptions (the same "signature" over set_a / set_b of
    every leaf): first the object standing on it, then any object off the grid with that
    signature. A position no object can explain raises ``ValueError``.
    """
    sets = np.concatenate([mission["set_a"], mission["set_b"]])  # [8, MAX_OBJ]
    poss = np.concatenate([mission["poss_a"], mission["poss_b"]])  # [8, MAXS, MAXS]
    out = obj_cell.copy()  # untracked objects: where they stand (never read)
    tracked = sets.any(0)
    out[tracked] = -1
    pending = []
    for x, y in zip(*np.nonzero(poss.any(0)), strict=True):
        sig = poss[:, x, y]
        o = int(oid[x, y])
        if o > 0 and tracked[o] and out[o] < 0 and np.array_equal(sets[:, o], sig):
            out[o] = core.cell_index(x, y)
        else:
            pending.append((x, y, sig))
    for x, y, sig in pending:
        cand = [
            o
            for o in np.nonzero(tracked & (obj_cell < 0) & (out < 0))[0]
            if np.array_equal(sets[:, o], sig)
        ]
        if not cand:
            raise ValueError(
                f"babyai: tracked position ({x}, {y}) matches no object off the grid with the "
                "same descriptions"
            )
        out[cand[0]] = core.cell_index(x, y)
    return out


def _world(grid, oid, contents, pos, d, carrying, carrying_id, step_count, max_steps, mission):
    import jax.numpy as jnp

    # fixed dtypes (a Python int assigned into the dict would become a weak-typed array and make
    # every jitted function retrace for instances whose mission sets it)
    dtypes = {k: v.dtype for k, v in _empty_mission().items()}
    mission = {k: np.asarray(v, dtypes[k]) for k, v in mission.items()}
    oid = np.asarray(oid, np.int32)
    obj_cell = _obj_cell(oid)
    poss_cell = _poss_cell(oid, obj_cell, mission)
    # walls a colour-only grey description tracks ("pick up a grey object": minigrid's obj_set
    # holds the walls too) have ids but no oid; they never move, so they keep their cell (and
    # stay tracked across drops, as in minigrid)
    pc = np.maximum(poss_cell, 0)
    walls = (
        (poss_cell >= 0) & (obj_cell < 0) & (grid[pc // core.MAXS, pc % core.MAXS, 0] == core.WALL)
    )
    obj_cell[walls] = poss_cell[walls]
    mission["poss_cell"] = poss_cell
    del mission["poss_a"], mission["poss_b"]
    m = core.Mission(**{k: jnp.asarray(v) for k, v in mission.items()})
    return core.World(
        grid=jnp.asarray(grid, jnp.uint8),
        oid=jnp.asarray(oid, jnp.int8),
        obj_cell=jnp.asarray(obj_cell),
        contents=jnp.asarray(contents, jnp.int32),
        agent_pos=jnp.asarray(pos, jnp.int32),
        agent_dir=jnp.asarray(d, jnp.int32),
        carrying=jnp.asarray(carrying, jnp.int32),
        carrying_id=jnp.asarray(carrying_id, jnp.int32),
        step_count=jnp.asarray(step_count, jnp.int32),
        max_steps=jnp.asarray(max_steps, jnp.int32),
        mission=m,
    )


def goal_text(mission: str) -> str:
    """AgentGym's goal: the minigrid mission with "then" and "after you" replaced by "and"."""
    goal = mission
    if "then" in goal:
        goal = goal.replace("then", "and")
    if "after you" in goal:
        goal = goal.replace("after you", "and")
    return goal


# ----------------------------------------------------------------------------- from minigrid


def world_from_minigrid(env):
    """Device `World` and goal text of a live minigrid BabyAI env (any point of an episode)."""
    from minigrid.envs.babyai.core.verifier import (
        ActionInstr,
        AfterInstr,
        AndInstr,
        BeforeInstr,
        GoToInstr,
        OpenInstr,
        PickupInstr,
        PutNextInstr,
    )

    u = env.unwrapped
    if u.agent_view_size != core.VIEW or u.see_through_walls:
        raise ValueError("babyai: only the 7x7 view without see-through walls is supported")
    enc = u.grid.encode()
    grid = _padded_grid(enc)
    oid = np.zeros((core.MAXS, core.MAXS), np.int32)
    contents = np.zeros((core.MAX_OBJ, 4), np.int32)
    ids: dict[int, int] = {}

    def new_id(obj) -> int:
        if id(obj) in ids:
            return ids[id(obj)]
        n = len(ids) + 1
        if n >= core.MAX_OBJ:
            raise ValueError(f"babyai: more than {core.MAX_OBJ - 1} objects")
        ids[id(obj)] = n
        if obj.type == "box" and obj.contains is not None:
            c = obj.contains
            contents[n] = (*c.encode(), new_id(c))
        return n

    for x in range(u.grid.width):
        for y in range(u.grid.height):
            obj = u.grid.get(x, y)
            if obj is not None and obj.type != "wall":
                oid[x, y] = new_id(obj)
    carrying = np.zeros(3, np.int32)
    carrying_id = 0
    if u.carrying is not None:
        carrying = np.array(u.carrying.encode(), np.int32)
        carrying_id = new_id(u.carrying)
    mission = _empty_mission()

    def fill_leaf(leaf: int, instr):
        kinds = {
            GoToInstr: "goto",
            PickupInstr: "pickup",
            OpenInstr: "open",
            PutNextInstr: "putnext",
        }
        kind = kinds[type(instr)]
        mission["kind"][leaf] = _LEAF_KIND[kind]
        da = instr.desc_move if kind == "putnext" else instr.desc
        for obj in da.obj_set:
            mission["set_a"][leaf, new_id(obj)] = True
        for x, y in da.obj_poss:
            mission["poss_a"][leaf, x, y] = True
        if kind == "putnext":
            for obj in instr.desc_fixed.obj_set:
                mission["set_b"][leaf, new_id(obj)] = True
            for x, y in instr.desc_fixed.obj_poss:
                mission["poss_b"][leaf, x, y] = True
        pre = getattr(instr, "preCarrying", None)
        mission["pre_carry"][leaf] = new_id(pre) if pre is not None else 0
        mission["strict"][leaf] = bool(getattr(instr, "strict", False))

    status = {"success": 1, "failure": 2}
    if (
        getattr(ins := u.instrs, "strict", False)
        and not hasattr(ins, "desc")
        and not hasattr(ins, "desc_move")
    ):
        raise ValueError("babyai: strict sequence instructions are not supported")

    def fill_node(node: int, instr):
        if isinstance(instr, AndInstr):
            mission["node_and"][node] = True
            fill_leaf(2 * node, instr.instr_a)
            fill_leaf(2 * node + 1, instr.instr_b)
            mission["leaf_status"][2 * node] = status.get(getattr(instr, "a_done", None), 0)
            mission["leaf_status"][2 * node + 1] = status.get(getattr(instr, "b_done", None), 0)
        else:
            assert isinstance(instr, ActionInstr), instr
            fill_leaf(2 * node, instr)

    ins = u.instrs
    if isinstance(ins, (BeforeInstr, AfterInstr)) or (
        isinstance(ins, AndInstr) and not isinstance(ins.instr_a, ActionInstr)
    ):
        mission["op"] = 2 if isinstance(ins, BeforeInstr) else 3
        fill_node(0, ins.instr_a)
        fill_node(1, ins.instr_b)
        mission["node_status"][:] = [
            status.get(getattr(ins, "a_done", None), 0),
            status.get(getattr(ins, "b_done", None), 0),
        ]
    elif isinstance(ins, AndInstr):
        mission["op"] = 1
        fill_leaf(0, ins.instr_a)
        fill_leaf(2, ins.instr_b)
        mission["node_status"][:] = [
            status.get(getattr(ins, "a_done", None), 0),
            status.get(getattr(ins, "b_done", None), 0),
        ]
    else:
        fill_node(0, ins)
    world = _world(
        grid,
        oid,
        contents,
        u.agent_pos,
        u.agent_dir,
        carrying,
        carrying_id,
        u.step_count,
        u.max_steps,
        mission,
    )
    return world, goal_text(u.mission)


def reset_image(env):
    """The observation image AgentGym's reset text was built from ([7, 7, 3] int32).

    For most levels this is the current view (minigrid's ``gen_obs``).

    minigrid's ``PutNext`` levels with ``start_carrying`` (level 23, PutNextS7N4Carrying) render
    the reset observation first and only then lift the object into the agent's hands: upstream's
    reset text lists the carried object on the floor (and a "go to" for it) while also saying
    "You are carrying" it. This returns that stale [7, 7, 3] image for a freshly reset ``env``.
    """
    u = env.unwrapped
    obj = getattr(u, "obj_a", None)
    stale = (
        getattr(u, "start_carrying", False)
        and u.carrying is not None
        and obj is u.carrying
        and obj.init_pos is not None
        and u.step_count == 0
        and u.grid.get(*obj.init_pos) is None
    )
    if not stale:
        return np.asarray(u.gen_obs()["image"], np.int32)
    pos = tuple(int(v) for v in obj.init_pos)
    u.grid.set(*pos, obj)
    u.carrying = None
    try:
        image = np.asarray(u.gen_obs()["image"], np.int32)
    finally:
        u.grid.set(*pos, None)
        u.carrying = obj
    return image


# ----------------------------------------------------------------------------- from a record

_DESC = re.compile(
    r"^(?:a|the) (?:(red|green|blue|purple|yellow|grey) )?(box|ball|key|door|object)"
    r"(?: (in front of you|behind you|on your left|on your right))?$"
)


def _parse_desc(text: str):
    m = _DESC.match(text)
    if not m:
        raise ValueError(f"babyai: cannot parse object description {text!r}")
    color, typ, loc = m.groups()
    loc = {None: None, "in front of you": "front", "behind you": "behind"}.get(loc, loc)
    if loc and loc.startswith("on your "):
        loc = loc[len("on your ") :]
    return (None if typ == "object" else typ, color, loc)


def _parse_action(text: str):
    for prefix, kind in (("go to ", "goto"), ("pick up ", "pickup"), ("open ", "open")):
        if text.startswith(prefix):
            return kind, _parse_desc(text[len(prefix) :]), None
    if text.startswith("put ") and " next to " in text:
        a, b = text[len("put ") :].split(" next to ", 1)
        return "putnext", _parse_desc(a), _parse_desc(b)
    raise ValueError(f"babyai: cannot parse instruction {text!r}")


def parse_mission(mission: str):
    """Raw minigrid mission -> (op, [node A leaves], [node B leaves])."""
    if ", then " in mission:
        a, b = mission.split(", then ", 1)
        op = 2
    elif " after you " in mission:
        a, b = mission.split(" after you ", 1)
        op = 3
    else:
        a, b, op = mission, None, 0
    na = [_parse_action(p) for p in a.split(" and ")]
    nb = [_parse_action(p) for p in b.split(" and ")] if b is not None else []
    if op == 0 and len(na) == 2:
        return 1, [na[0]], [na[1]]
    return op, na, nb


def _agent_room(enc: np.ndarray, pos):
    """Bounds of the room the agent stands in: walls/doors enclose a rectangle (minigrid Room)."""
    w, h = enc.shape[:2]
    seen = np.zeros((w, h), bool)
    stack = [tuple(pos)]
    while stack:
        x, y = stack.pop()
        if not (0 <= x < w and 0 <= y < h) or seen[x, y]:
            continue
        if enc[x, y, 0] in (core.WALL, core.DOOR):
            continue
        seen[x, y] = True
        stack += [(x + 1, y), (x - 1, y), (x, y + 1), (x, y - 1)]
    xs, ys = np.nonzero(seen)
    return xs.min() - 1, ys.min() - 1, xs.max() + 1, ys.max() + 1


def world_from_record(state: dict, box_contents: dict | None = None):
    """Device `World` and goal text from a recorded transcript ``state`` dict.

    Args:
      state: a record's ``state`` (``grid``, ``agent_pos``, ``agent_dir``, ``mission``,
        ``carrying``, ``step_count``, ``max_steps``).
      box_contents: optional ``{(x, y): (type_idx, color_idx, state_idx)}`` of closed boxes.
    """
    for key in ("grid", "agent_pos", "agent_dir", "mission", "step_count", "max_steps"):
        if key not in state:
            raise ValueError(f"babyai: recorded state has no {key!r}")
    enc = np.asarray(state["grid"], np.int32)
    if enc.ndim != 3 or enc.shape[2] != 3:
        raise ValueError(f"babyai: recorded grid must be [W, H, 3], got {enc.shape}")
    grid = _padded_grid(enc)
    oid = np.zeros((core.MAXS, core.MAXS), np.int32)
    contents = np.zeros((core.MAX_OBJ, 4), np.int32)
    n = 0
    for x in range(enc.shape[0]):
        for y in range(enc.shape[1]):
            if enc[x, y, 0] in _OBJECT_TYPES:
                n += 1
                oid[x, y] = n
    for (x, y), c in (box_contents or {}).items():
        n += 1
        contents[oid[x, y]] = (*c, n)
    if n >= core.MAX_OBJ:
        raise ValueError(f"babyai: more than {core.MAX_OBJ - 1} objects")
    carrying = np.zeros(3, np.int32)
    carrying_id = 0
    if state.get("carrying"):
        c = state["carrying"]
        carrying = np.array([_TYPE[c["type"]], _COLOR[c["color"]], 0], np.int32)
        n += 1
        carrying_id = n
    pos = tuple(int(v) for v in state["agent_pos"])
    d = int(state["agent_dir"])
    op, na, nb = parse_mission(state["mission"])
    mission = _empty_mission()
    mission["op"] = op
    room = None

    def match(desc):
        nonlocal room
        typ, color, loc = desc
        mask = np.zeros(core.MAX_OBJ, bool)
        poss = np.zeros((core.MAXS, core.MAXS), bool)
        for x in range(enc.shape[0]):
            for y in range(enc.shape[1]):
                if oid[x, y] == 0:
                    continue
                t, c, _ = enc[x, y]
                if typ is not None and t != _TYPE[typ]:
                    continue
                if color is not None and c != _COLOR[color]:
                    continue
                if loc is not None:
                    if room is None:
                        room = _agent_room(enc, pos)
                    if not (room[0] <= x <= room[2] and room[1] <= y <= room[3]):
                        continue
                    v = (x - pos[0], y - pos[1])
                    d1 = core.DIR_VEC[d]
                    d2 = (-d1[1], d1[0])
                    dot1 = v[0] * d1[0] + v[1] * d1[1]
                    dot2 = v[0] * d2[0] + v[1] * d2[1]
                    ok = {
                        "left": dot2 < 0,
                        "right": dot2 > 0,
                        "front": dot1 > 0,
                        "behind": dot1 < 0,
                    }
                    if not ok[loc]:
                        continue
                mask[oid[x, y]] = True
                poss[x, y] = True
        if not mask.any():
            raise ValueError(f"babyai: no object matches {desc} in the recorded grid")
        return mask, poss

    def fill(leaf, action):
        kind, da, db = action
        mission["kind"][leaf] = _LEAF_KIND[kind]
        mission["set_a"][leaf], mission["poss_a"][leaf] = match(da)
        if db is not None:
            mission["set_b"][leaf], mission["poss_b"][leaf] = match(db)

    for node, leaves in enumerate((na, nb)):
        if len(leaves) == 2:
            mission["node_and"][node] = True
        for i, action in enumerate(leaves):
            fill(2 * node + i, action)
    world = _world(
        grid,
        oid,
        contents,
        pos,
        d,
        carrying,
        carrying_id,
        state["step_count"],
        state["max_steps"],
        mission,
    )
    return world, goal_text(state["mission"])


# ----------------------------------------------------------------------------- instance banks


class InstanceBank(NamedTuple):
    """Imported instances stacked for `BabyAI.reset` (row ``i`` = ``instances[i]``).

    ``images`` is each row's reset image (`reset_image`): the live view for every level except the
    start-carrying ones (level 23), whose AgentGym reset text describes the view rendered before
    the object was picked up. ``agentgym_compat`` resets use it, the default mode the live view.
    """

    worlds: core.World  # leaves [B, ...]
    goals: jax.Array  # int32 [B, GOAL_WORDS] goal word ids
    goal_lens: jax.Array  # int32 [B]
    images: jax.Array  # int32 [B, 7, 7, 3] the reset image upstream's text is built from


def bank_from_minigrid(instances, goal_ids) -> InstanceBank:
    """Imports minigrid instances ``[(level, seed), ...]`` (AgentGym's ``seed * 40 + level - 1``).

    Args:
      instances: non-empty sequence of ``(level, seed)`` pairs, level in 1..40.
      goal_ids: ``goal text -> (int32 [GOAL_WORDS] word ids, length)`` (`BabyAI._goal_ids`).

    Returns:
      The stacked `InstanceBank` (device arrays).
    """
    from evol_jax.envs.babyai import make_minigrid

    instances = list(instances)
    if not instances:
        raise ValueError("bank_from_minigrid: no instances given")
    worlds, goals, lens, images = [], [], [], []
    for level, seed in instances:
        env = make_minigrid(level, seed)
        world, goal = world_from_minigrid(env)
        g, n = goal_ids(goal)
        worlds.append(world)
        goals.append(g)
        lens.append(n)
        images.append(reset_image(env))
    return InstanceBank(
        worlds=jax.tree.map(lambda *a: jnp.stack(a), *worlds),
        goals=jnp.stack([jnp.asarray(g, jnp.int32) for g in goals]),
        goal_lens=jnp.asarray(lens, jnp.int32),
        images=jnp.asarray(np.stack(images), jnp.int32),
    )


def bank_instance(bank: InstanceBank, idx, agentgym_compat: bool):
    """Row ``idx % bank size`` of ``bank`` as `BabyAI.init_state` takes it (pure; jit/vmap).

    Returns:
      ``(world, goal_words, goal_len, image)``: ``image`` is the stored reset image under
      ``agentgym_compat`` (upstream's text, stale for level 23), else the live view of the world,
      so that ``env.init_state(*bank_instance(bank, i, env.agentgym_compat))`` equals
      ``env.reset_from_minigrid(level, seed)`` of row ``i`` in both modes.
    """
    i = jnp.asarray(idx, jnp.int32) % bank.goal_lens.shape[0]
    world = jax.tree.map(lambda a: a[i], bank.worlds)
    image = bank.images[i] if agentgym_compat else core.view_image(world)
    return world, bank.goals[i], bank.goal_lens[i], image


def bank_reset_image(bank: InstanceBank, idx, world):
    """The ``agentgym_compat`` reset image of instance ``idx`` in `BabyAI.reset` (pure; jit/vmap).

    Levels with a native generator (`babyai_gen.NATIVE_LEVELS`) are not drawn from the bank: their
    image is the live view of ``world``; other levels take row ``idx % bank size``'s stored image.
    """
    from evol_jax.envs import babyai_gen

    idx = jnp.asarray(idx, jnp.int32)
    native = jnp.any(jnp.asarray(sorted(babyai_gen.NATIVE_LEVELS)) == idx % 40 + 1)
    stored = bank.images[idx % bank.goal_lens.shape[0]]
    return jnp.where(native, core.view_image(world), stored)
