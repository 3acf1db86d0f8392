"""Scripted-expert rollouts for any `evol_jax.envs.Env` and AgentTraj export.

The expert runs on device for many instances in one compiled call (``vmap`` over instances,
``lax.scan`` over rounds, ``env.expert_action`` picks every action); texts are rendered on the
host afterwards (``env.render_text``, ``env.action_text``, ``env.expert_thought``).

    python -m evol_jax.experts --env maze --num 25 --out maze_expert.json
    python -m evol_jax.experts --env wordle --num 200 --out wordle_expert.json --compat

prints a success report (success = last reward above `envs.base.success_threshold`: 1 for
Maze/Wordle/TextCraft, > 0 for BabyAI; score = mean last reward x 100, as in the
AgentEvol paper) and writes AgentTraj JSON (`evol_jax.agenttraj`).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from evol_jax import agenttraj
from evol_jax.envs import Env, make
from evol_jax.envs.base import success_threshold


@dataclass
class ExpertBatch:
    """Device rollout of the expert, stacked: leading axes [rounds + 1, N] for states."""

    indices: np.ndarray  # int32 [N]
    states: Any  # pytree, leaves [T + 1, N, ...]: the reset state, then the state after each step
    actions: np.ndarray  # int32 [T, N]
    rewards: np.ndarray  # float32 [T, N]
    active: np.ndarray  # bool [T, N], the step was taken before the episode ended
    last_reward: np.ndarray  # float32 [N], reward of each episode's last taken step
    threshold: float = 0.99  # success: last_reward > threshold (`envs.base.success_threshold`)

    @property
    def num_steps(self) -> np.ndarray:
        return self.active.sum(axis=0)

    @property
    def success(self) -> np.ndarray:
        return self.last_reward > self.threshold


@partial(jax.jit, static_argnums=(0, 3))
def _rollout(env: Env, keys: jax.Array, indices: jax.Array, rounds: int):
    state0, ts0 = jax.vmap(env.reset)(keys, indices)

    def body(carry, _):
        state, done, last = carry
        action = jax.vmap(env.expert_action)(state)
        new, ts = jax.vmap(env.step)(state, action)
        active = ~done
        last = jnp.where(active, ts.reward, last)
        return (new, done | ts.done, last), (new, action, ts.reward, active)

    init = (state0, ts0.done, jnp.zeros(indices.shape, jnp.float32))
    (_, _, last), (states, actions, rewards, active) = jax.lax.scan(body, init, None, length=rounds)
    states = jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), state0, states)
    return states, actions, rewards, active, last


def rollout(env: Env, indices, key: jax.Array | None = None, rounds: int | None = None):
    """Runs the expert on every instance of ``indices`` at once (one jit, fixed shapes).

    Args:
      env: any registered environment.
      indices: int [N] instance indices.
      key: PRNG key (split per instance); default ``key(0)``.
      rounds: steps to run (default ``env.max_rounds``).

    Returns:
      `ExpertBatch` (host NumPy arrays).
    """
    indices = jnp.asarray(np.asarray(indices, np.int32))
    if indices.ndim != 1 or indices.shape[0] == 0:
        raise ValueError(f"rollout: indices must be a non-empty 1-D list, got {indices.shape}")
    rounds = int(rounds or env.max_rounds)
    if rounds < 1:
        raise ValueError(f"rollout: rounds={rounds} must be >= 1")
    keys = jax.random.split(key if key is not None else jax.random.key(0), indices.shape[0])
    out = jax.device_get(_rollout(env, keys, indices, rounds))
    states, actions, rewards, active, last = out
    return ExpertBatch(
        indices=np.asarray(indices),
        states=states,
        actions=np.asarray(actions),
        rewards=np.asarray(rewards),
        active=np.asarray(active),
        last_reward=np.asarray(last),
        threshold=success_threshold(env.name),
    )


def _first_observation(env: Env, state) -> str:
    text = env.render_text(state)
    vocab = env.filtered_words(state) if hasattr(env, "filtered_words") else None
    return agenttraj.client_first_observation(env.name, text, vocab=vocab)


def trajectories(env: Env, batch: ExpertBatch) -> list[agenttraj.Trajectory]:
    """Host: renders each episode of ``batch`` to texts (thought, action, observation)."""
    out = []
    for i, idx in enumerate(batch.indices.tolist()):

        def at(t, i=i):
            return jax.tree.map(lambda x: x[t, i], batch.states)

        traj = agenttraj.Trajectory(
            env=env.name, idx=int(idx), first_observation=_first_observation(env, at(0))
        )
        for t in range(int(batch.num_steps[i])):
            state = at(t)
            action = int(batch.actions[t, i])
            traj.thoughts.append(env.expert_thought(state, action))
            traj.actions.append(env.action_text(action, state))
            traj.observations.append(env.render_text(at(t + 1)))
        traj.reward = float(batch.last_reward[i])
        traj.success = bool(batch.success[i])
        out.append(traj)
    return out


def report(env: Env, batch: ExpertBatch) -> dict:
    """Success rate (last reward above the threshold), score (mean last reward x 100), lengths."""
    n = len(batch.indices)
    return {
        "env": env.name,
        "agentgym_compat": bool(env.agentgym_compat),
        "episodes": n,
        "success_rate": float(batch.success.mean()),
        "score": float(batch.last_reward.mean() * 100.0),
        "mean_steps": float(batch.num_steps.mean()),
        "max_steps": int(batch.num_steps.max()),
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description="Expert AgentTraj export for an evol_jax env.")
    ap.add_argument("--env", required=True)
    ap.add_argument("--num", type=int, required=True, help="episodes: indices start..start+num-1")
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--out", required=True, help="AgentTraj JSON file to write")
    ap.add_argument("--compat", action="store_true", help="agentgym_compat=True")
    ap.add_argument("--vocab", default=None, help="wordle vocabulary file")
    ap.add_argument("--seed", type=int, default=0, help="PRNG seed (default-mode randomness)")
    ap.add_argument("--rounds", type=int, default=None, help="default: env.max_rounds")
    args = ap.parse_args(argv)
    if args.num < 1:
        ap.error("--num must be >= 1")
    options = {"agentgym_compat": args.compat}
    if args.vocab:
        options["vocab"] = args.vocab
    env = make(args.env, **options)
    batch = rollout(
        env, np.arange(args.start, args.start + args.num), jax.random.key(args.seed), args.rounds
    )
    agenttraj.write_agenttraj(args.out, trajectories(env, batch))
    summary = report(env, batch)
    summary["out"] = args.out
    print(json.dumps(summary), file=sys.stdout)
    return summary


if __name__ == "__main__":
    main()
