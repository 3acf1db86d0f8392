"""Task registry: Gato observation/action specs, environments, experts and normalisation returns.

Each :class:`Task` ties a simulator (or a procedural data source) to the Gato layout of one
timestep (:class:`~gato_jax.spec.EpisodeSpec`), converts environment observations and actions
to and from the dicts that the tokenizer consumes, and carries an expert policy plus the mean
returns of a uniform random policy and of that expert, measured with
:mod:`gato_jax.datagen` and shipped in ``gato_jax/task_returns.json`` (spec section 9: score
``100 * (R - random) / (expert - random)``).

    >>> from gato_jax.tasks import get_task, list_tasks
    >>> list_tasks("control")
    ['acrobot', 'cartpole', 'mountaincar_continuous', 'pendulum']
    >>> task = get_task("pendulum")
    >>> env, obs = task.new_episode(seed=0)           # make_env(seed) + env.reset(seed=seed)
    >>> expert = task.expert(0); expert.reset(env, obs)
    >>> act = expert.act(obs, env)                    # an env action
    >>> task.from_env_action(act)                     # {"torque": float32 [1]}
    >>> obs, r, term, trunc, info = env.step(task.to_env_action(task.from_env_action(act)))
    >>> task.observation(obs, env)                    # {"state": float32 [3]}
    >>> task.normalized_score(-150.0)                 # ~ 100 for an expert-level return

Domains and tasks (``list_tasks()``; packages in parentheses are optional):

* ``control`` (gymnasium): ``cartpole``, ``acrobot``, ``pendulum``,
  ``mountaincar_continuous`` with scripted experts (linear balance controller, torque-follows-
  velocity pumping with a spring term, energy-shaping swing-up + PD balance, velocity-sign pumping).
* ``babyai`` (minigrid): ``babyai_goto_redball``, ``babyai_goto_local``,
  ``babyai_pickup_loc`` with minigrid's ``BabyAIBot``; observation = mission text +
  7x7 symbolic egocentric view, one discrete token per cell (:func:`babyai_cells`:
  ``object * 18 + colour * 3 + state``) + facing direction.
* ``metaworld`` (metaworld, mujoco): ``metaworld_reach``, ``metaworld_push``,
  ``metaworld_drawer_open`` with Meta-World's scripted policies; 39-d state, 4-d action.
* ``atari`` (ale-py): ``atari_pong`` (v5, frame skip 4, sticky actions) with a scripted paddle
  tracker that follows the ball's row in the frame; 80x80 RGB frames.
* ``vl``: ``vl_shapes``: procedurally drawn coloured shapes with template captions.
* ``text``: ``text_corpus``: sentences of the small corpus shipped in ``gato_jax/corpus``.

Episodes are reset with ``env.reset(seed=seed)`` after ``make_env(seed)``
(:meth:`Task.new_episode` does both), so a seed fixes the whole episode of a deterministic policy.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from gato_jax.configs.tokenizer import TokenizerConfig
from gato_jax.spec import EpisodeSpec, FieldSpec

DOMAINS = ("control", "babyai", "metaworld", "atari", "vl", "text")
RETURNS_FILE = os.path.join(os.path.dirname(__file__), "task_returns.json")


class UnknownTaskError(KeyError, ValueError):
    """An unknown task name (the message lists the known tasks)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class Expert(Protocol):
    """A scripted or pre-built policy acting on raw environment observations."""

    def reset(self, env: Any, obs: Any) -> None: ...

    def act(self, obs: Any, env: Any) -> Any: ...


@dataclasses.dataclass(frozen=True)
class Task:
    """One task: spec, environment, observation/action conversions, expert, returns.

    Attributes:
      name: registry name (``"cartpole"``, ``"babyai_goto_redball"``, ...).
      domain: one of :data:`DOMAINS`.
      spec: Gato fields of one timestep (``spec.observation`` / ``spec.action``).
      make_env: ``seed -> gymnasium.Env`` (``None`` for ``vl`` / ``text`` tasks). The env is
        not reset; reset it with ``env.reset(seed=seed)`` (see :meth:`new_episode`). Episodes
        are truncated at ``max_steps``.
      observation: ``(env_obs, env) -> dict`` matching ``spec.observation`` (NumPy arrays of the
        field shapes; text fields as ``str``).
      to_env_action: ``dict`` matching ``spec.action`` (NumPy) ``-> env action``.
      expert: ``seed -> Expert`` (``reset(env, obs)``, ``act(obs, env) -> env action``);
        ``None`` for ``vl`` / ``text``.
      random_return: mean return of a uniform random policy (``nan`` if not measured or not
        applicable).
      expert_return: mean return of the expert (``nan`` likewise).
      max_steps: episode step limit (for ``vl`` / ``text``: steps per episode).
      from_env_action: ``env action -> dict`` matching ``spec.action`` (to record experts).
      instruction: the task's instruction text (episode metadata); BabyAI tasks take the
        mission of each episode instead (``observation["instruction"]``).
      env_id: the simulator's id (gymnasium id, Meta-World name, ROM), for reference.
      returns_info: how the returns were measured (episodes, seeds).
      sample_episode: ``seed -> {"observation": {field: [T, ...]}[, "action": {...}]}`` for
        tasks without an environment (``vl``, ``text``; text leaves are lists of ``T``
        strings). ``vl_shapes`` returns the image as observation and the caption as a text
        action (``image | caption``: the caption follows, and is conditioned on, its image).
      parse_caption: for captioning tasks with a caption grammar, ``caption -> [{attribute:
        value}, ...]`` (one dict per described object) or ``None`` for text outside the grammar;
        evaluation then scores each attribute separately.
    """

    name: str
    domain: str
    spec: EpisodeSpec
    make_env: Callable[[int], Any] | None
    observation: Callable[[Any, Any], dict]
    to_env_action: Callable[[dict], Any]
    expert: Callable[[int], Expert] | None
    random_return: float
    expert_return: float
    max_steps: int
    from_env_action: Callable[[Any], dict] | None = None
    instruction: str = ""
    env_id: str = ""
    returns_info: dict = dataclasses.field(default_factory=dict, compare=False)
    sample_episode: Callable[[int], dict] | None = None
    parse_caption: Callable[[str], list[dict[str, str]] | None] | None = None

    @property
    def has_env(self) -> bool:
        return self.make_env is not None

    def new_episode(self, seed: int) -> tuple[Any, Any]:
        """``env = make_env(seed)``; ``obs, _ = env.reset(seed=seed)``; returns ``(env, obs)``."""
        if self.make_env is None:
            raise ValueError(f"task {self.name!r} ({self.domain}) has no environment")
        env = self.make_env(int(seed))
        obs, _ = env.reset(seed=int(seed))
        return env, obs

    def normalized_score(self, episode_return: float) -> float:
        """Spec section 9: ``100 * (R - random_return) / (expert_return - random_return)``."""
        lo, hi = self.random_return, self.expert_return
        if not (math.isfinite(lo) and math.isfinite(hi)) or hi == lo:
            raise ValueError(
                f"task {self.name!r}: no usable random/expert returns ({lo}, {hi}); measure them "
                "with `python -m gato_jax.datagen --measure_returns`"
            )
        return 100.0 * (float(episode_return) - lo) / (hi - lo)


# --------------------------------------------------------------------------------------------
# Shared helpers.


def _action_value(a, key: str) -> np.ndarray:
    if not isinstance(a, dict) or key not in a:
        got = sorted(a) if isinstance(a, dict) else type(a).__name__
        raise ValueError(f"expected an action dict with key {key!r}, got {got}")
    return np.asarray(a[key])


def _discrete_action(n: int, key: str = "action"):
    spec = {key: FieldSpec("discrete", (), low=0, high=n - 1)}

    def to_env(a: dict) -> int:
        v = _action_value(a, key)
        if v.size != 1:
            raise ValueError(f"action/{key}: expected one value, got shape {v.shape}")
        v = int(v.reshape(()))
        if not 0 <= v < n:
            raise ValueError(f"action/{key}={v} outside [0, {n})")
        return v

    def from_env(a) -> dict:
        return {key: np.asarray(int(a), np.int32)}

    return spec, to_env, from_env


def _box_action(low, high, key: str):
    low = np.asarray(low, np.float32)
    high = np.asarray(high, np.float32)
    spec = {key: FieldSpec("continuous", low.shape, low=low, high=high)}

    def to_env(a: dict) -> np.ndarray:
        v = _action_value(a, key).astype(np.float32)
        if v.size != low.size:
            raise ValueError(f"action/{key}: expected shape {low.shape}, got {v.shape}")
        if not np.isfinite(v).all():
            raise ValueError(f"action/{key}: NaN or Inf in {v}")
        return np.clip(v.reshape(low.shape), low, high)

    def from_env(a) -> dict:
        return {key: np.asarray(a, np.float32).reshape(low.shape)}

    return spec, to_env, from_env


@functools.cache
def _returns_table(path: str = RETURNS_FILE) -> dict:
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def _returns(name: str) -> tuple[float, float, dict]:
    row = _returns_table().get(name)
    if row is None:
        return math.nan, math.nan, {}

    def num(x):
        return math.nan if x is None else float(x)

    return num(row.get("random_return")), num(row.get("expert_return")), row


# --------------------------------------------------------------------------------------------
# Classic control (gymnasium).


class _FnExpert:
    """A memoryless expert ``act(obs, env) = fn(obs)``."""

    def __init__(self, fn):
        self._fn = fn

    def reset(self, env, obs) -> None:
        del env, obs

    def act(self, obs, env):
        del env
        return self._fn(np.asarray(obs, np.float64))


def _cartpole_act(o):
    # Linear balance controller on (x, x_dot, theta, theta_dot): push towards the lean,
    # damped by the angular velocity, with a weak pull back to the centre.
    return int(o[2] + 0.5 * o[3] + 0.05 * o[0] + 0.2 * o[1] > 0)


def _acrobot_act(o):
    # Energy pumping: torque on the second joint in the direction of its angular velocity,
    # with a spring term pulling the second link back into line (steadier swings).
    theta2 = math.atan2(o[3], o[2])
    return 1 + int(np.sign(o[5] - 1.5 * theta2))


def _pendulum_act(o):
    # Energy-shaping swing-up, PD balance near the top. Pendulum-v1: m = l = 1, g = 10,
    # I = m l^2 / 3, E = I w^2 / 2 + (m g l / 2) cos(theta); upright at rest: E = 5.
    th, w = math.atan2(o[1], o[0]), o[2]
    if math.cos(th) > 0.85:
        u = -(12.0 * th + 2.5 * w)
    else:
        energy = w * w / 6.0 + 5.0 * math.cos(th)
        direction = math.copysign(1.0, w) if abs(w) > 1e-3 else 1.0
        u = 2.0 * direction * (1.0 if energy < 5.0 else -1.0)
    return np.asarray([np.clip(u, -2.0, 2.0)], np.float32)


def _mountaincar_act(o):
    # Pump energy: accelerate in the direction of motion (left first when at rest).
    return np.asarray([1.0 if o[1] > 0 else -1.0], np.float32)


_CONTROL = {
    # name: (gymnasium id, obs dim, action, max_steps, expert fn, instruction)
    "cartpole": (
        "CartPole-v1",
        4,
        ("discrete", 2),
        200,
        _cartpole_act,
        "balance the pole on the cart",
    ),
    "acrobot": (
        "Acrobot-v1",
        6,
        ("discrete", 3),
        200,
        _acrobot_act,
        "swing the end of the acrobot above the line",
    ),
    "pendulum": (
        "Pendulum-v1",
        3,
        ("box", -2.0, 2.0, "torque"),
        200,
        _pendulum_act,
        "swing the pendulum up and keep it upright",
    ),
    "mountaincar_continuous": (
        "MountainCarContinuous-v0",
        2,
        ("box", -1.0, 1.0, "force"),
        300,
        _mountaincar_act,
        "drive the car up to the flag on the right hill",
    ),
}


def _control_task(name: str, cfg: TokenizerConfig) -> Task:
    env_id, obs_dim, act, max_steps, fn, instruction = _CONTROL[name]
    if act[0] == "discrete":
        act_spec, to_env, from_env = _discrete_action(act[1])
    else:
        act_spec, to_env, from_env = _box_action([act[1]], [act[2]], act[3])
    spec = EpisodeSpec({"state": FieldSpec("continuous", (obs_dim,))}, act_spec, cfg)

    def make_env(seed: int):
        import gymnasium as gym

        env = gym.make(env_id, max_episode_steps=max_steps)
        env.action_space.seed(int(seed))
        return env

    def observation(obs, env):
        del env
        return {"state": np.asarray(obs, np.float32).reshape(obs_dim)}

    random_return, expert_return, info = _returns(name)
    return Task(
        name=name,
        domain="control",
        spec=spec,
        make_env=make_env,
        observation=observation,
        to_env_action=to_env,
        expert=lambda seed: _FnExpert(fn),
        random_return=random_return,
        expert_return=expert_return,
        max_steps=max_steps,
        from_env_action=from_env,
        instruction=instruction,
        env_id=env_id,
        returns_info=info,
    )


# --------------------------------------------------------------------------------------------
# BabyAI (minigrid).

# minigrid's symbolic view gives each of the 7x7 cells an (object, colour, state) triple:
# object in [0, 11) (OBJECT_TO_IDX: unseen .. agent), colour in [0, 6) (COLOR_TO_IDX), state in
# [0, 3) (STATE_TO_IDX: open, closed, locked). The Gato observation folds each triple into ONE
# discrete token, ``object * 18 + colour * 3 + state`` (:func:`babyai_cells`), so the view is 49
# tokens instead of 147 and a step (instruction + view + direction + '|' + action) is at most
# 84 tokens (58 with a 6-token mission, vs 156 before): a training row of 200 tokens has ~2.3
# action targets instead of ~0.8, 76% of them with their whole step in the window (13% before).
BABYAI_OBJECTS, BABYAI_COLOURS, BABYAI_STATES = 11, 6, 3
BABYAI_CELL_HIGH = BABYAI_OBJECTS * BABYAI_COLOURS * BABYAI_STATES - 1  # 197
BABYAI_INSTRUCTION_TOKENS = 32  # a budget: only the mission's own tokens enter the sequence

_BABYAI = {
    "babyai_goto_redball": "BabyAI-GoToRedBall-v0",
    "babyai_goto_local": "BabyAI-GoToLocal-v0",
    "babyai_pickup_loc": "BabyAI-PickupLoc-v0",
}


class _BabyAIExpert:
    """minigrid's ``BabyAIBot`` (replans from the true environment state every step)."""

    def __init__(self):
        self._bot = None

    def reset(self, env, obs) -> None:
        from minigrid.utils.baby_ai_bot import BabyAIBot

        del obs
        self._bot = BabyAIBot(env.unwrapped)

    def act(self, obs, env):
        del obs, env
        if self._bot is None:
            raise RuntimeError("BabyAI expert: call reset(env, obs) first")
        return int(self._bot.replan())


def _quiet_env(env):
    """Silences minigrid's ``print`` of rejected level samples during ``reset``."""
    import contextlib
    import io

    import gymnasium as gym

    class Quiet(gym.Wrapper):
        def reset(self, **kwargs):
            with contextlib.redirect_stdout(io.StringIO()):
                return self.env.reset(**kwargs)

    return Quiet(env)


def babyai_cells(image: Any) -> np.ndarray:
    """minigrid's symbolic view ``[7, 7, 3]`` (object, colour, state) -> int32 cell ids ``[7, 7]``.

    ``cell = object * 18 + colour * 3 + state`` (in ``[0, BABYAI_CELL_HIGH]``); the cell order
    is minigrid's (``image[x, y]``, the agent at ``x = 3, y = 6`` facing ``y = 0``). Inverse:
    :func:`babyai_cells_to_image`.

    Raises:
      ValueError: a view that is not ``[7, 7, 3]`` integers, or a component outside its range
        (names the component and the value found).
    """
    a = np.asarray(image)
    if a.shape != (7, 7, 3) or not np.issubdtype(a.dtype, np.integer):
        raise ValueError(
            f"BabyAI view: expected integer [7, 7, 3] (object, colour, state), got {a.dtype} "
            f"{list(a.shape)}"
        )
    a = a.astype(np.int64)
    for i, (what, n) in enumerate(
        (("object", BABYAI_OBJECTS), ("colour", BABYAI_COLOURS), ("state", BABYAI_STATES))
    ):
        bad = (a[..., i] < 0) | (a[..., i] >= n)
        if bad.any():
            raise ValueError(
                f"BabyAI view: {what} index {int(a[..., i][bad][0])} outside [0, {n}) at cell "
                f"{tuple(int(v) for v in np.argwhere(bad)[0])}"
            )
    cells = (a[..., 0] * BABYAI_COLOURS + a[..., 1]) * BABYAI_STATES + a[..., 2]
    return cells.astype(np.int32)


def babyai_cells_to_image(cells: Any) -> np.ndarray:
    """Inverse of :func:`babyai_cells`: int cell ids ``[..., 7, 7]`` -> ``[..., 7, 7, 3]``."""
    c = np.asarray(cells)
    if not np.issubdtype(c.dtype, np.integer) or c.min(initial=0) < 0:
        raise ValueError(f"BabyAI cells: expected non-negative integers, got {c.dtype}")
    if c.max(initial=0) > BABYAI_CELL_HIGH:
        raise ValueError(f"BabyAI cells: id {int(c.max())} > {BABYAI_CELL_HIGH}")
    c = c.astype(np.int64)
    obj, rest = np.divmod(c, BABYAI_COLOURS * BABYAI_STATES)
    colour, state = np.divmod(rest, BABYAI_STATES)
    return np.stack([obj, colour, state], axis=-1).astype(np.int32)


def _babyai_task(name: str, cfg: TokenizerConfig) -> Task:
    env_id = _BABYAI[name]
    act_spec, to_env, from_env = _discrete_action(7)
    spec = EpisodeSpec(
        {
            # The episode's mission; stored once per episode as episode_metadata/instruction
            # (gato_jax.input_pipeline.Source.instruction_key puts it back into every step).
            "instruction": FieldSpec("text", (BABYAI_INSTRUCTION_TOKENS,)),
            # Egocentric 7x7 view, one token per cell (babyai_cells: object, colour, state).
            "view": FieldSpec("discrete", (7, 7), low=0, high=BABYAI_CELL_HIGH),
            "direction": FieldSpec("discrete", (), low=0, high=3),
        },
        act_spec,
        cfg,
    )

    def make_env(seed: int):
        import gymnasium as gym
        import minigrid  # noqa: F401  (registers the BabyAI levels)

        env = _quiet_env(gym.make(env_id))
        env.action_space.seed(int(seed))
        return env

    def observation(obs, env):
        del env
        return {
            "instruction": str(obs["mission"]),
            "view": babyai_cells(obs["image"]),
            "direction": np.asarray(int(obs["direction"]), np.int32),
        }

    random_return, expert_return, info = _returns(name)
    return Task(
        name=name,
        domain="babyai",
        spec=spec,
        make_env=make_env,
        observation=observation,
        to_env_action=to_env,
        expert=lambda seed: _BabyAIExpert(),
        random_return=random_return,
        expert_return=expert_return,
        max_steps=64,  # the levels' own limit (env.unwrapped.max_steps)
        from_env_action=from_env,
        instruction="",  # per episode: the mission
        env_id=env_id,
        returns_info=info,
    )


# --------------------------------------------------------------------------------------------
# Meta-World (metaworld + mujoco).

_METAWORLD = {
    # name: (Meta-World env, scripted policy class, instruction)
    "metaworld_reach": ("reach-v3", "SawyerReachV3Policy", "reach the goal position"),
    "metaworld_push": ("push-v3", "SawyerPushV3Policy", "push the puck to the goal"),
    "metaworld_drawer_open": (
        "drawer-open-v3",
        "SawyerDrawerOpenV3Policy",
        "open the drawer",
    ),
}


class _MetaWorldExpert:
    def __init__(self, policy_class: str):
        import metaworld.policies

        self._policy = getattr(metaworld.policies, policy_class)()

    def reset(self, env, obs) -> None:
        del env, obs

    def act(self, obs, env):
        del env
        return np.clip(np.asarray(self._policy.get_action(obs), np.float32), -1.0, 1.0)


@functools.cache
def _metaworld_layouts(env_name: str):
    import metaworld

    benchmark = metaworld.MT1(env_name, seed=0)
    return benchmark.train_classes[env_name], tuple(benchmark.train_tasks)


def _metaworld_task(name: str, cfg: TokenizerConfig) -> Task:
    env_name, policy_class, instruction = _METAWORLD[name]
    max_steps = 150
    act_spec, to_env, from_env = _box_action(np.full(4, -1.0), np.full(4, 1.0), "action")
    spec = EpisodeSpec({"state": FieldSpec("continuous", (39,))}, act_spec, cfg)

    def make_env(seed: int):
        import gymnasium as gym

        # A fresh simulator per episode, set to one of the task's 50 fixed goal/object layouts
        # (Meta-World's MT1 benchmark, built once per process with seed 0): seed -> layout.
        env_class, layouts = _metaworld_layouts(env_name)
        env = env_class()
        env.set_task(layouts[int(seed) % len(layouts)])
        env = gym.wrappers.TimeLimit(env, max_steps)
        env.action_space.seed(int(seed))
        return env

    def observation(obs, env):
        del env
        return {"state": np.asarray(obs, np.float32).reshape(39)}

    random_return, expert_return, info = _returns(name)
    return Task(
        name=name,
        domain="metaworld",
        spec=spec,
        make_env=make_env,
        observation=observation,
        to_env_action=to_env,
        expert=lambda seed: _MetaWorldExpert(policy_class),
        random_return=random_return,
        expert_return=expert_return,
        max_steps=max_steps,
        from_env_action=from_env,
        instruction=instruction,
        env_id=f"metaworld MT1 {env_name}",
        returns_info=info,
    )


# --------------------------------------------------------------------------------------------
# Atari (ale-py; ROMs ship with the wheel).

ATARI_FRAME = 80  # 160x160 play field, 2x2 mean-pooled -> 80x80 RGB (5x5 patches of 16)
_PONG_TOP, _PONG_BOTTOM = 34, 194  # play-field rows of the 210x160 frame (score cropped)
_PONG_PADDLE_G, _PONG_BALL_R = 186, 236  # green channel of our paddle, red channel of the ball


def atari_frame(obs: np.ndarray) -> np.ndarray:
    """Pong frame uint8 ``[210, 160, 3]`` -> play field, 2x2 mean-pooled, ``[80, 80, 3]``."""
    f = np.asarray(obs, np.float32)[_PONG_TOP:_PONG_BOTTOM]
    f = f.reshape(ATARI_FRAME, 2, ATARI_FRAME, 2, 3).mean(axis=(1, 3))
    return np.round(f).astype(np.uint8)


class _PongTracker:
    """Moves our (right, green) paddle towards the ball's row, both read from the frame.

    (Predicting the ball's crossing row or aiming off-centre measured no better over 20
    episodes under sticky actions, so the simplest tracker stays.)
    """

    DEAD_BAND = 2.0

    def reset(self, env, obs) -> None:
        del env, obs

    def act(self, obs, env):
        del env
        field = np.asarray(obs)[_PONG_TOP:_PONG_BOTTOM]
        paddle = np.nonzero((field[:, 140:144, 1] == _PONG_PADDLE_G).any(axis=1))[0]
        ball = np.nonzero((field[:, :140, 0] == _PONG_BALL_R).any(axis=1))[0]
        if paddle.size == 0 or ball.size == 0:
            return 0  # NOOP (between points)
        d = paddle.mean() - ball.mean()
        return 2 if d > self.DEAD_BAND else 3 if d < -self.DEAD_BAND else 0  # RIGHT=up, LEFT=down


def _atari_pong(name: str, cfg: TokenizerConfig) -> Task:
    max_steps = 500
    act_spec, to_env, from_env = _discrete_action(6)
    spec = EpisodeSpec({"frame": FieldSpec("image", (ATARI_FRAME, ATARI_FRAME, 3))}, act_spec, cfg)

    def make_env(seed: int):
        import ale_py
        import gymnasium as gym

        gym.register_envs(ale_py)
        env = gym.make(
            "ALE/Pong-v5",
            frameskip=4,
            repeat_action_probability=0.25,  # v5 default; without it every seed plays alike
            full_action_space=False,
            max_episode_steps=max_steps,
        )
        env.action_space.seed(int(seed))
        return env

    def observation(obs, env):
        del env
        return {"frame": atari_frame(obs)}

    random_return, expert_return, info = _returns(name)
    return Task(
        name=name,
        domain="atari",
        spec=spec,
        make_env=make_env,
        observation=observation,
        to_env_action=to_env,
        expert=lambda seed: _PongTracker(),
        random_return=random_return,
        expert_return=expert_return,
        max_steps=max_steps,
        from_env_action=from_env,
        instruction="win at pong by returning the ball past the other paddle",
        env_id="ALE/Pong-v5",
        returns_info=info,
    )


# --------------------------------------------------------------------------------------------
# Vision-language and text (no environment: episodes are sampled directly).

VL_IMAGE = 48  # 3x3 grid of 16x16 cells, one patch each
VL_PAIRS = 5  # (image, caption) pairs per example (spec section 2)
VL_CAPTION_TOKENS = 32
CAPTION_END = " ."  # every caption ends with it: the decoder stops at the first "."
TEXT_TOKENS = 64
TEXT_SENTENCES = 4
CORPUS_FILE = os.path.join(os.path.dirname(__file__), "corpus", "agents.txt")

_COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 80, 230),
    "yellow": (235, 220, 40),
    "purple": (150, 50, 200),
    "white": (240, 240, 240),
    "orange": (245, 140, 20),
    "cyan": (40, 210, 220),
}
_SHAPES = ("square", "circle", "triangle", "cross")
_PLACES = (
    "top left",
    "top",
    "top right",
    "left",
    "centre",
    "right",
    "bottom left",
    "bottom",
    "bottom right",
)


def _shape_mask(shape: str, size: int = 16) -> np.ndarray:
    """bool ``[size, size]`` mask of a shape centred in a ``size`` x ``size`` cell."""
    yy, xx = np.mgrid[:size, :size].astype(np.float32) + 0.5
    c, r = size / 2.0, size * 0.38
    if shape == "square":
        return (np.abs(yy - c) <= r) & (np.abs(xx - c) <= r)
    if shape == "circle":
        return (yy - c) ** 2 + (xx - c) ** 2 <= r * r
    if shape == "triangle":  # apex up
        top, bottom = c - r, c + r
        half = (yy - top) / (bottom - top) * r
        return (yy >= top) & (yy <= bottom) & (np.abs(xx - c) <= half)
    if shape == "cross":
        w = size * 0.12
        return ((np.abs(yy - c) <= w) | (np.abs(xx - c) <= w)) & (
            (np.abs(yy - c) <= r) & (np.abs(xx - c) <= r)
        )
    raise ValueError(f"unknown shape {shape!r}; known: {_SHAPES}")


def render_shapes(items, rng: np.random.Generator) -> np.ndarray:
    """Draws ``[(colour, shape, place index), ...]`` on a dark noisy 48x48 canvas (uint8 RGB)."""
    img = rng.integers(0, 40, (VL_IMAGE, VL_IMAGE, 3)).astype(np.uint8)
    cell = VL_IMAGE // 3
    for colour, shape, place in items:
        r, c = divmod(place, 3)
        view = img[r * cell : (r + 1) * cell, c * cell : (c + 1) * cell]
        view[_shape_mask(shape, cell)] = _COLOURS[colour]
    return img


def vl_shapes_pair(rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """One (image uint8 ``[48, 48, 3]``, caption) pair: one or two shapes at distinct places.

    The shapes are named in raster order of their cells (top left first), so the caption is a
    function of the image: with the drawing order as the naming order, half of the two-shape
    captions could not be predicted from the image, which capped exact match near 50% and
    taught the model to guess the first shape. The caption ends with :data:`CAPTION_END`
    (``" ."``), so a decoded caption has a learned end (captions are variable-length text and
    the model sees no padding).
    """
    n = int(rng.integers(1, 3))
    places = rng.choice(9, size=n, replace=False)
    colours = rng.choice(list(_COLOURS), size=n, replace=False)
    shapes = rng.choice(_SHAPES, size=n)
    items = sorted(
        ((str(c), str(s), int(p)) for c, s, p in zip(colours, shapes, places, strict=True)),
        key=lambda item: item[2],
    )
    parts = [f"a {c} {s} in the {_PLACES[p]}" for c, s, p in items]
    return render_shapes(items, rng), " and ".join(parts) + CAPTION_END


def parse_shapes_caption(text: str) -> list[dict[str, str]] | None:
    """``"a red circle in the top left and a blue cross in the centre ."`` ->
    ``[{"colour": "red", "shape": "circle", "place": "top left"}, {...}]``; ``None`` when the
    text does not follow the :func:`vl_shapes_pair` grammar."""
    text = text.strip()
    if not text.endswith(CAPTION_END.strip()):
        return None
    body = text[: -len(CAPTION_END.strip())].strip()
    objects = []
    for part in body.split(" and "):
        words = part.split()
        if len(words) < 6 or words[0] != "a" or words[3:5] != ["in", "the"]:
            return None
        place = " ".join(words[5:])
        if words[1] not in _COLOURS or words[2] not in _SHAPES or place not in _PLACES:
            return None
        objects.append({"colour": words[1], "shape": words[2], "place": place})
    return objects


def _vl_episode(seed: int) -> dict:
    rng = np.random.default_rng([7, int(seed)])
    pairs = [vl_shapes_pair(rng) for _ in range(VL_PAIRS)]
    return {
        "observation": {"image": np.stack([p[0] for p in pairs])},
        "action": {"caption": [p[1] for p in pairs]},
    }


@functools.cache
def corpus_sentences(path: str = CORPUS_FILE) -> tuple[str, ...]:
    """The shipped text corpus, one sentence per non-empty line."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"text corpus missing: {path!r}")
    with open(path, encoding="utf-8") as f:
        lines = tuple(line.strip() for line in f if line.strip())
    if not lines:
        raise ValueError(f"text corpus {path!r} is empty")
    return lines


def _text_episode(seed: int) -> dict:
    lines = corpus_sentences()
    rng = np.random.default_rng([11, int(seed)])
    start = int(rng.integers(0, len(lines)))
    return {
        "observation": {"text": [lines[(start + i) % len(lines)] for i in range(TEXT_SENTENCES)]}
    }


def _no_action(a):
    raise ValueError("this task has no actions (vision-language / text data)")


def _identity_observation(obs, env):
    del env
    return obs


def _vl_task(name: str, cfg: TokenizerConfig) -> Task:
    # Captioning as Gato lays it out (spec section 2/5): the image tokens, then the caption's
    # text tokens, with the loss on the text. Within a timestep text observations come before
    # images, so the caption is the step's (text) *action*: ``image | caption``; the caption is
    # then conditioned on its image and carries the loss (action tokens are targets).
    spec = EpisodeSpec(
        {"image": FieldSpec("image", (VL_IMAGE, VL_IMAGE, 3))},
        {"caption": FieldSpec("text", (VL_CAPTION_TOKENS,))},
        cfg,
    )
    return Task(
        name=name,
        domain="vl",
        spec=spec,
        make_env=None,
        observation=_identity_observation,
        to_env_action=_no_action,
        expert=None,
        random_return=math.nan,
        expert_return=math.nan,
        max_steps=VL_PAIRS,
        instruction="describe the picture",
        sample_episode=_vl_episode,
        parse_caption=parse_shapes_caption,
    )


def _text_task(name: str, cfg: TokenizerConfig) -> Task:
    spec = EpisodeSpec({"text": FieldSpec("text", (TEXT_TOKENS,))}, {}, cfg)
    return Task(
        name=name,
        domain="text",
        spec=spec,
        make_env=None,
        observation=_identity_observation,
        to_env_action=_no_action,
        expert=None,
        random_return=math.nan,
        expert_return=math.nan,
        max_steps=TEXT_SENTENCES,
        instruction="",
        sample_episode=_text_episode,
    )


# --------------------------------------------------------------------------------------------
# Registry.

_BUILDERS: dict[str, tuple[str, Callable[[str, TokenizerConfig], Task]]] = {
    **{n: ("control", _control_task) for n in _CONTROL},
    **{n: ("babyai", _babyai_task) for n in _BABYAI},
    **{n: ("metaworld", _metaworld_task) for n in _METAWORLD},
    "atari_pong": ("atari", _atari_pong),
    "vl_shapes": ("vl", _vl_task),
    "text_corpus": ("text", _text_task),
}

# Python packages each domain needs beyond this library's own dependencies.
DOMAIN_PACKAGES = {
    "control": ("gymnasium",),
    "babyai": ("gymnasium", "minigrid"),
    "metaworld": ("gymnasium", "metaworld", "mujoco"),
    "atari": ("gymnasium", "ale_py"),
    "vl": (),
    "text": (),
}


def missing_packages(name: str) -> list[str]:
    """Packages task ``name`` needs that are not importable here (empty: it can run)."""
    import importlib.util

    domain = _domain(name)
    return [p for p in DOMAIN_PACKAGES[domain] if importlib.util.find_spec(p) is None]


def _domain(name: str) -> str:
    if name not in _BUILDERS:
        raise UnknownTaskError(f"unknown task {name!r}; known tasks: {', '.join(list_tasks())}")
    return _BUILDERS[name][0]


def list_tasks(domain: str | None = None) -> list[str]:
    """Sorted names of the registered tasks (of one domain if given)."""
    if domain is not None and domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; known domains: {', '.join(DOMAINS)}")
    return sorted(n for n, (d, _) in _BUILDERS.items() if domain is None or d == domain)


def get_task(name: str, cfg: TokenizerConfig | None = None) -> Task:
    """The task ``name`` with its spec built for ``cfg`` (default ``TokenizerConfig()``).

    Raises:
      UnknownTaskError: (a ``KeyError`` and ``ValueError``) unknown name; the message lists
        the known tasks.
    """
    _domain(name)
    return _BUILDERS[name][1](name, cfg or TokenizerConfig())


__all__ = [
    "DOMAINS",
    "DOMAIN_PACKAGES",
    "Expert",
    "Task",
    "UnknownTaskError",
    "babyai_cells",
    "babyai_cells_to_image",
    "get_task",
    "list_tasks",
    "missing_packages",
]
