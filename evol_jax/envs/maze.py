"""LMRL-Gym's double-T maze as served by AgentGym (``/maze/*``), pure JAX.

The maze is fixed (10 rows x 13 columns, goal at (8, 6)); an instance ``idx`` is a start position
(AgentGym's ``game`` field). Positions are ``(row, col)`` and the text calls them ``x, y``: "move
down" adds 1 to the row, "move right" adds 1 to the column. Observations are exactly the server's
strings::

    The goal is at position 8, 6. Your current position is at position 1, 4. There are walls above
    you, below you.

then ``"Success\\n"`` (reward 1.0, done) on reaching the goal, or ``"Failure\\n"`` (reward -1.0,
done) on the step after the env's own ``max_steps=50`` counted steps. Every step (an invalid text
included) counts towards ``max_steps``, except the step that reaches the goal. AgentGym gives the
agent 15 rounds (``max_rounds``); the round limit sets ``done`` and ``truncated``.

Actions (ids, in the order of the server's ``/maze/available_actions``): ``0 move left``,
``1 move right``, ``2 move up``, ``3 move down``; ``-1`` (`INVALID_ACTION`) is any other string:
the server appends ``"\\n"`` and matches exactly, so "Move up", "move up " or "move down\\n" leave
the position unchanged but still cost a step. `action_from_text` and `step_text` apply that rule.

``agentgym_compat`` switches what an instance index means:

* ``True``: ``idx`` is AgentGym's ``game`` (0..25). Game 25 starts on the goal, which upstream
  rejects with an empty ``AssertionError`` (HTTP ``{"error": ""}``); games >= 26 (and negative ones)
  give ``"The game N is not valid."``; upstream indexes a Python list, so games -26..-1 wrap
  around (-1 is the goal again) and games < -26 give ``"list index out of range"``. On device such
  an instance resets to an ended episode with ``state.error`` set and an empty observation;
  `reset_error_message` gives the server's text.
* ``False`` (default, corrected): the 25 real start positions; ``idx`` is taken modulo 25, so every
  index is a playable episode (index 25 is start 0 again).

Source: LMRL-Gym (MIT, Copyright (c) 2022 Charlie Snell) ``llm_rl_scripts/maze/env``; AgentGym
(MIT, Copyright (c) 2023 FudanNLP-Agent) ``agentenv-lmrlgym/agentenv_lmrlgym/maze``.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from evol_jax.envs.base import (
    INVALID_ACTION,  # noqa: F401  (re-exported: tests, users)
    Env,
    InvalidAction,
    TimeStep,
    register,
)
from evol_jax.text import TextCodec, expand_words

MAZE_ROWS = (
    "#############",
    "#.....#.....#",
    "###.#####.###",
    "###.#####.###",
    "###.#####.###",
    "###.......###",
    "######.######",
    "######.######",
    "######.######",
    "#############",
)
HEIGHT, WIDTH = len(MAZE_ROWS), len(MAZE_ROWS[0])
WALLS = np.array([[ch == "#" for ch in row] for row in MAZE_ROWS], bool)  # [10, 13]
GOAL = (8, 6)
# AgentGym's start positions, indexed by ``game``; the last one is the goal itself.
START_POSITIONS = (
    (1, 1), (1, 2), (1, 3), (1, 4), (1, 5), (1, 7), (1, 8), (1, 9), (1, 10), (1, 11),
    (2, 3), (3, 3), (4, 3), (5, 3), (5, 4), (5, 5), (5, 6), (6, 6), (7, 6), (5, 7),
    (5, 8), (5, 9), (4, 9), (3, 9), (2, 9), (8, 6),
)  # fmt: skip
NUM_GAMES = len(START_POSITIONS)  # 26, AgentGym's range of ``game``
NUM_PLAYABLE = NUM_GAMES - 1  # the goal cell is not a start
ACTIONS = ("move left", "move right", "move up", "move down")
DELTAS = np.array([(0, -1), (0, 1), (-1, 0), (1, 0)], np.int32)
MAX_STEPS = 50  # LMRL-Gym MazeEnv max_steps as set up by AgentGym
MAX_ROUNDS = 15  # AgentGym's maze client

# Rows of the observation table after the H*W cells.
_SUCCESS, _FAILURE, _EMPTY = HEIGHT * WIDTH, HEIGHT * WIDTH + 1, HEIGHT * WIDTH + 2
_WALL_PHRASES = (("to your right", (0, 1)), ("to your left", (0, -1)), ("above you", (-1, 0)),
                 ("below you", (1, 0)))  # fmt: skip


def describe(position: tuple[int, int], goal: tuple[int, int] = GOAL) -> str:
    """The server's observation for an agent at ``position`` (host reference renderer)."""
    r, c = position
    walls = [name for name, (dr, dc) in _WALL_PHRASES if WALLS[r + dr, c + dc]]
    if not walls:
        wall_text = "There are no walls near you."
    elif len(walls) == 1:
        wall_text = f"There is a wall {walls[0]}."
    else:
        wall_text = f"There are walls {', '.join(walls)}."
    return (
        f"The goal is at position {goal[0]}, {goal[1]}. "
        f"Your current position is at position {r}, {c}. " + wall_text
    )


def _bfs_tables() -> tuple[np.ndarray, np.ndarray]:
    """Shortest-path distance to the goal and the first optimal action id, per cell."""
    dist = np.full((HEIGHT, WIDTH), -1, np.int32)
    dist[GOAL] = 0
    queue = deque([GOAL])
    while queue:
        r, c = queue.popleft()
        for dr, dc in DELTAS:
            nr, nc = r + dr, c + dc
            if not WALLS[nr, nc] and dist[nr, nc] < 0:
                dist[nr, nc] = dist[r, c] + 1
                queue.append((nr, nc))
    best = np.zeros((HEIGHT, WIDTH), np.int32)
    for r in range(HEIGHT):
        for c in range(WIDTH):
            if WALLS[r, c] or (r, c) == GOAL:
                continue
            for a, (dr, dc) in enumerate(DELTAS):
                if dist[r + dr, c + dc] == dist[r, c] - 1 and not WALLS[r + dr, c + dc]:
                    best[r, c] = a
                    break
    return dist, best


DISTANCE, BEST_ACTION = _bfs_tables()


@flax.struct.dataclass
class MazeState:
    pos: jax.Array  # int32 [2], (row, col)
    game: jax.Array  # int32 [], start index used (compat errors: the requested game)
    num_steps: jax.Array  # int32 [], LMRL-Gym's counter (the goal-reaching step is not counted)
    round: jax.Array  # int32 [], steps taken (AgentGym rounds)
    done: jax.Array  # bool []
    success: jax.Array  # bool []
    obs_id: jax.Array  # int32 [], row of the observation table (cell, Success, Failure, empty)
    error: jax.Array  # int32 [], compat only: 0 ok, 1 start on the goal, 2 game >= 26, 3 game < -26


class MazeEnv(Env):
    """Double-T maze; see the module docstring for semantics.

    Args:
      agentgym_compat: ``idx`` = AgentGym ``game`` with its failing games 25 and >= 26 (True), or
        the 25 playable starts, ``idx`` modulo 25 (False, default).
      max_rounds: AgentGym's round limit (15).
      max_steps: the env's own step budget before ``"Failure\\n"`` (50).
      codec: the environment tokenizer (default: the shipped model).
    """

    name = "maze"

    def __init__(
        self,
        agentgym_compat: bool = False,
        max_rounds: int = MAX_ROUNDS,
        max_steps: int = MAX_STEPS,
        codec: TextCodec | None = None,
    ):
        if max_rounds < 1 or max_steps < 0:
            raise ValueError(f"maze: max_rounds={max_rounds} must be >= 1, max_steps >= 0")
        self.agentgym_compat = bool(agentgym_compat)
        self.max_rounds = int(max_rounds)
        self.max_steps = int(max_steps)
        self.num_actions = len(ACTIONS)
        self.codec = codec or TextCodec()
        texts = [describe((r, c)) if not WALLS[r, c] else "" for r in range(HEIGHT)
                 for c in range(WIDTH)]  # fmt: skip
        texts += ["Success\n", "Failure\n", ""]
        self._texts = texts
        split = [t.split(" ") if t else [] for t in texts]
        self.words = sorted({w for ws in split for w in ws})
        index = {w: i for i, w in enumerate(self.words)}
        width = max(len(ws) for ws in split)
        ids = np.zeros((len(split), width), np.int32)
        for i, ws in enumerate(split):
            ids[i, : len(ws)] = [index[w] for w in ws]
        self._obs_words = ids
        self._obs_len = np.array([len(ws) for ws in split], np.int32)
        self._table = self.codec.word_table(self.words)
        longest = max(len(self.codec.encode(t)) for t in texts)
        self.max_obs_len = int(-(-longest // 8) * 8)

    # ----------------------------------------------------------------------------------- device
    def _timestep(self, s: MazeState, reward, truncated) -> TimeStep:
        tokens, mask, _ = expand_words(
            jnp.asarray(self._obs_words)[s.obs_id],
            jnp.asarray(self._obs_len)[s.obs_id],
            self._table,
            self.max_obs_len,
        )
        return TimeStep(
            obs_tokens=tokens,
            obs_mask=mask,
            reward=jnp.asarray(reward, jnp.float32),
            done=s.done,
            truncated=jnp.asarray(truncated, bool),
            legal_actions=jnp.ones((self.num_actions,), bool),
            round=s.round,
        )

    def reset(self, key: jax.Array, idx: jax.Array) -> tuple[MazeState, TimeStep]:
        """Starts instance ``idx`` (``key`` is unused: the maze is deterministic).

        Args:
          key: PRNG key (ignored; kept for the common signature).
          idx: int32 [] instance index (see the module docstring for its meaning).
        """
        del key
        idx = jnp.asarray(idx, jnp.int32)
        starts = jnp.asarray(START_POSITIONS, jnp.int32)
        if self.agentgym_compat:
            # Upstream indexes a Python list: negative games wrap around, >= 26 is rejected.
            wrapped = jnp.where(idx < 0, idx + NUM_GAMES, idx)
            error = jnp.where(
                idx >= NUM_GAMES,
                2,
                jnp.where(wrapped < 0, 3, jnp.where(wrapped == NUM_GAMES - 1, 1, 0)),
            ).astype(jnp.int32)
            game = jnp.where(error >= 2, idx, wrapped)
            pos = starts[jnp.clip(wrapped, 0, NUM_GAMES - 1)]
        else:
            error = jnp.int32(0)
            game = jnp.mod(idx, NUM_PLAYABLE)
            pos = starts[game]
        failed = error != 0
        state = MazeState(
            pos=pos,
            game=game,
            num_steps=jnp.int32(0),
            round=jnp.int32(0),
            done=failed,
            success=jnp.bool_(False),
            obs_id=jnp.where(failed, _EMPTY, pos[0] * WIDTH + pos[1]).astype(jnp.int32),
            error=error,
        )
        return state, self._timestep(state, 0.0, False)

    def step(self, state: MazeState, action: jax.Array) -> tuple[MazeState, TimeStep]:
        """One move; ``action`` int32 [] in ``[0, 4)``; any other id is an invalid string."""
        action = jnp.asarray(action, jnp.int32)
        valid = (action >= 0) & (action < self.num_actions)
        fail = state.num_steps >= self.max_steps
        delta = jnp.asarray(DELTAS)[jnp.clip(action, 0, self.num_actions - 1)] * valid
        cand = state.pos + delta
        blocked = jnp.asarray(WALLS)[cand[0], cand[1]]
        pos = jnp.where(blocked | fail, state.pos, cand)
        success = ~fail & jnp.all(pos == jnp.asarray(GOAL, jnp.int32))
        terminal = fail | success
        rounds = state.round + 1
        truncated = ~terminal & (rounds >= self.max_rounds)
        obs_id = jnp.where(
            success, _SUCCESS, jnp.where(fail, _FAILURE, pos[0] * WIDTH + pos[1])
        ).astype(jnp.int32)
        new = MazeState(
            pos=pos,
            game=state.game,
            num_steps=state.num_steps + (~terminal).astype(jnp.int32),
            round=rounds,
            done=terminal | truncated,
            success=success,
            obs_id=obs_id,
            error=state.error,
        )
        reward = jnp.where(success, 1.0, jnp.where(fail, -1.0, 0.0))
        # A finished episode stays as it is and pays nothing.
        new = jax.tree.map(lambda a, b: jnp.where(state.done, a, b), state, new)
        reward = jnp.where(state.done, 0.0, reward)
        truncated = jnp.where(state.done, False, truncated)
        return new, self._timestep(new, reward, truncated)

    def expert_action(self, state: MazeState) -> jax.Array:
        """The first move of a shortest path to the goal (BFS table lookup)."""
        return jnp.asarray(BEST_ACTION)[state.pos[0], state.pos[1]]

    # ------------------------------------------------------------------------------------- host
    def render_text(self, state: MazeState) -> str:
        return self._texts[int(state.obs_id)]

    def action_text(self, action: int, state: Any = None) -> str:
        if not 0 <= int(action) < self.num_actions:
            raise ValueError(f"maze: action id {action} outside [0, {self.num_actions})")
        return ACTIONS[int(action)]

    def action_from_text(self, text: str) -> int:
        """The server's exact match (``text + "\\n"`` against ``"move <dir>\\n"``).

        Raises:
          InvalidAction: ``text`` is not one of the four moves exactly. The server does not reject
            such a string: it is a step that leaves the position unchanged (see `step_text`).
        """
        if not isinstance(text, str):
            raise InvalidAction(f"maze: action must be a string, got {type(text).__name__}")
        try:
            return ACTIONS.index(text)
        except ValueError:
            raise InvalidAction(f"not a maze move: {text!r}") from None

    def expert_thought(self, state: MazeState, action: int) -> str:
        r, c = (int(v) for v in jax.device_get(state.pos))
        d = int(DISTANCE[r, c])
        move = self.action_text(action)
        steps = "step" if d == 1 else "steps"
        return (
            f"I am at position {r}, {c} and the goal is at position {GOAL[0]}, {GOAL[1]}. "
            f"The shortest path around the walls reaches the goal in {d} {steps}, and it starts "
            f"with {move}."
        )

    def reset_error_message(self, state: MazeState) -> str | None:
        """The server's reset error for a compat instance (None if the reset succeeded)."""
        err = int(state.error)
        if err == 1:
            return ""
        if err == 2:
            return f"The game {int(state.game)} is not valid."
        if err == 3:
            return "list index out of range"
        return None


@register("maze")
def make_maze(**options) -> MazeEnv:
    return MazeEnv(**options)
