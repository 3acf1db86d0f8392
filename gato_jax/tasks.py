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
  velocity pumping, energy-shaping swing-up + PD balance, velocity-sign pumping).
* ``babyai`` (minigrid): ``babyai_goto_redball``, ``babyai_goto_local``,
  ``babyai_pickup_loc`` with minigrid's ``BabyAIBot``; observation = mission text +
  7x7x3 symbolic egocentric view (discrete) + facing direction.
* ``metaworld`` (metaworld, mujoco): ``metaworld_reach``, ``metaworld_push``,
  ``metaworld_drawer_open`` with Meta-World's scripted policies; 39-d state, 4-d action.
* ``atari`` (ale-py): ``atari_pong`` with a RAM-reading paddle tracker; 64x64 RGB frames.
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


def _discrete_action(n: int, key: str = "action"):
    spec = {key: FieldSpec("discrete", (), low=0, high=n - 1)}

    def to_env(a: dict) -> int:
        v = int(np.asarray(a[key]).reshape(()))
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
        v = np.asarray(a[key], np.float32).reshape(low.shape)
        return np.clip(v, low, high)

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
    # Energy pumping: torque on the second joint in the direction of its angular velocity.
    return 1 + int(np.sign(o[5]))


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
# Registry.

_BUILDERS: dict[str, tuple[str, Callable[[str, TokenizerConfig], Task]]] = {
    **{n: ("control", _control_task) for n in _CONTROL},
}


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
    if name not in _BUILDERS:
        raise UnknownTaskError(f"unknown task {name!r}; known tasks: {', '.join(list_tasks())}")
    return _BUILDERS[name][1](name, cfg or TokenizerConfig())


__all__ = ["DOMAINS", "Expert", "Task", "UnknownTaskError", "get_task", "list_tasks"]
