"""The environment contract shared by BabyAI, TextCraft, Maze and Wordle.

Every environment is a static Python object (configuration, static tables) with two pure functions
that jit and vmap:

    state, ts = env.reset(key, idx)        # key: PRNG key, idx: int32 instance index (data_idx)
    state, ts = env.step(state, action)    # action: int32 id into env's finite action set

``TimeStep`` carries the observation as token ids of the environment tokenizer (`evol_jax.text`),
fixed length ``env.max_obs_len`` plus a mask, the reward of this step, ``done`` (episode over:
success, failure or round limit), ``truncated`` (ended by the round limit) and the legal-action mask
over ``env.num_actions``. After ``done`` further steps leave the state unchanged and return
reward 0.

Experts: ``env.expert_action(state)`` (pure, jittable) and ``env.expert_thought(state, action)``
(host) drive AgentTraj export (`evol_jax.experts`).

Host side: ``env.render_text(state)`` (the exact AgentGym string), ``env.action_text(id)`` and
``env.action_from_text(text)`` (the original's sanitising; raises `InvalidAction` carrying the
original's error message), ``env.max_rounds``.

``agentgym_compat=True`` reproduces upstream quirks (see each env's docstring); the default is the
corrected behaviour, and every reported number names the one used.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

# Action id of a string the environment could not parse, for environments where upstream still
# counts it as a step (Maze, Wordle); `Env.step_text` sends it.
INVALID_ACTION = -1


def packed_mask(mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """bool [A] -> ``(words, cum)``: the mask packed into uint32 words [ceil(A / 32)] (bit ``j``
    of word ``k`` = entry ``32 k + j``) and the running count of set bits, int32 per word.

    With `select_packed` this ranks the entries of a mask without a cumsum over all A entries
    (XLA:CPU lowers long cumsums to costly reduce-windows).
    """
    a = mask.shape[0]
    w = -(-a // 32)
    bits = jnp.pad(mask, (0, w * 32 - a)).reshape(w, 32).astype(jnp.uint32)
    words = jnp.sum(bits << jnp.arange(32, dtype=jnp.uint32), axis=1, dtype=jnp.uint32)
    return words, jnp.cumsum(jax.lax.population_count(words).astype(jnp.int32))


def select_packed(words: jax.Array, cum: jax.Array, r: jax.Array) -> jax.Array:
    """Index of the ``(r + 1)``-th set entry of a `packed_mask` (meaningful for ``r < cum[-1]``)."""
    k = jnp.argmax(cum > r)
    rk = r - (cum[k] - jax.lax.population_count(words[k]).astype(jnp.int32))
    below = words[k] & ((jnp.uint32(2) << jnp.arange(32, dtype=jnp.uint32)) - 1)  # bits 0..j
    j = jnp.argmax(jax.lax.population_count(below).astype(jnp.int32) > rk)
    return (k * 32 + j).astype(jnp.int32)


# Reward above which an episode counts as a success (AgentEvol's filter and the expert reports):
# BabyAI pays 1 - 0.9 t/T on success and 0 otherwise, SciWorld scores 0-100, the others pay 1.
SUCCESS_THRESHOLDS = {"babyai": 0.0, "sciworld": 99.0}


def success_threshold(env_name: str) -> float:
    """Success means a final reward strictly above this (0.99 unless listed)."""
    return float(SUCCESS_THRESHOLDS.get(env_name, 0.99))


class InvalidAction(ValueError):
    """A text action the environment cannot parse; ``message`` is the original's reply text."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


@flax.struct.dataclass
class TimeStep:
    obs_tokens: jax.Array  # int32 [max_obs_len], PAD_ID past the text
    obs_mask: jax.Array  # bool [max_obs_len]
    reward: jax.Array  # float32 []
    done: jax.Array  # bool []
    truncated: jax.Array  # bool [], True when the round limit ended the episode
    legal_actions: jax.Array  # bool [num_actions]
    round: jax.Array  # int32 [], number of steps taken so far


class Env(abc.ABC):
    """Base class; subclasses set the attributes below in ``__init__``."""

    name: str
    num_actions: int
    max_obs_len: int
    max_rounds: int
    agentgym_compat: bool
    codec: Any  # evol_jax.text.TextCodec used for the observation tokens

    @abc.abstractmethod
    def reset(self, key: jax.Array, idx: jax.Array) -> tuple[Any, TimeStep]: ...

    @abc.abstractmethod
    def step(self, state: Any, action: jax.Array) -> tuple[Any, TimeStep]: ...

    @abc.abstractmethod
    def render_text(self, state: Any) -> str: ...

    @abc.abstractmethod
    def action_text(self, action: int, state: Any = None) -> str:
        """The text of action id ``action`` (BabyAI's object actions need the ``state``)."""

    @abc.abstractmethod
    def action_from_text(self, text: str) -> int: ...

    @abc.abstractmethod
    def expert_action(self, state: Any) -> jax.Array:
        """The scripted expert's action id for ``state`` (pure, jittable, vmappable)."""

    @abc.abstractmethod
    def expert_thought(self, state: Any, action: int) -> str:
        """Host: the ReAct ``Thought:`` text the expert writes before ``action``."""

    def step_text(self, state: Any, text: str) -> tuple[Any, TimeStep, str]:
        """Host: one step from the exact string an agent sent (invalid strings still count).

        Returns:
          ``(state, timestep, observation_text)`` (the server's reply text).
        """
        try:
            action = self.action_from_text(text)
        except InvalidAction:
            action = INVALID_ACTION
        state, ts = self._jitted_step(state, jnp.int32(action))
        return state, ts, self.render_text(state)

    @property
    def _jitted_step(self):
        if not hasattr(self, "_jitted_step_fn"):
            self._jitted_step_fn = jax.jit(self.step)
        return self._jitted_step_fn

    def observation_text(self, ts: TimeStep) -> str:
        """Decodes a timestep's observation tokens back to text (host)."""
        mask = jax.device_get(ts.obs_mask)
        return self.codec.decode(jax.device_get(ts.obs_tokens)[mask])


_REGISTRY: dict[str, Callable[..., Env]] = {}


def register(name: str):
    def deco(factory):
        _REGISTRY[name] = factory
        return factory

    return deco


def make(name: str, **options) -> Env:
    """``evol_jax.envs.make("maze", agentgym_compat=True)``; names: see `available()`."""
    key = name.lower()
    if key not in _REGISTRY:
        # Import on demand so that one environment's import cost is not paid by the others.
        import importlib

        try:
            importlib.import_module(f"evol_jax.envs.{key}")
        except ModuleNotFoundError:
            pass
    if key not in _REGISTRY:
        raise ValueError(f"unknown environment {name!r}; available: {available()}")
    return _REGISTRY[key](**options)


def available() -> list[str]:
    return ["babyai", "maze", "textcraft", "wordle"]


def legal_or_first(legal: jax.Array) -> jax.Array:
    """Index of the first legal action (0 if none): a safe default action for padding rows."""
    return jnp.argmax(legal).astype(jnp.int32)
