"""The environment tokenizer's training corpus, collected from the environments themselves.

    python -m evol_jax.envtext_corpus --out evol_jax/assets/envtext --vocab_size 1536

runs BabyAI, TextCraft (the shipped recipe set), Maze and Wordle on the host in both modes
(default and ``agentgym_compat``): their scripted experts and episodes of random actions over many
instances. It collects every text the environments and AgentGym's client produce: observations
(``env.render_text``, which includes BabyAI's ``Available actions`` list and every error reply an
illegal action gets), the action strings, the expert's ``Thought:``/``Action:`` turns, the client's
first-turn prompts (`evol_jax.prompts`), the error replies of a few fixed bad texts and of the
expert's TextCraft crafts resent with wrong counts (served by ``step_text``), plus every word of
every environment's word table. It then trains the tokenizer with `evol_jax.text.train_tokenizer`
(`TRAINER_OPTIONS`) and writes ``<out>.model``.

Reproducible: fixed PRNG seeds and instance indices, the corpus is split into lines (``"\\n"`` is a
user-defined piece, so no piece crosses a line anyway) and sorted, and SentencePiece trains on
one thread (`train_tokenizer`), so two runs write byte-identical models (tested). The defaults
reproduce the shipped model (1,482 pieces, sha256 ``93fdced6...``; 344,261 corpus lines; about
15 minutes on a loaded 2-core CPU, mostly compiling BabyAI's batched rollouts). The vocabulary size
was picked by measuring tokens per recorded AgentGym observation (README, "Text on device").
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from evol_jax import agenttraj, experts, prompts
from evol_jax.envs import make
from evol_jax.envs.base import INVALID_ACTION, Env, InvalidAction
from evol_jax.text import TextCodec, train_tokenizer

ENVS = ("babyai", "textcraft", "maze", "wordle")

# Texts the environments answer with an error whatever the state (TextCraft's parser errors,
# BabyAI's unrecognised action, an invalid Wordle word); their replies go into the corpus.
BAD_TEXTS = (
    "jump",
    "get 1 planks",
    "get 2 stick",
    "craft 1 stick using 1 dirt",
    "craft 4 planks using 1 nothing",
    "look around",
    "",
)


@dataclass(frozen=True)
class CorpusConfig:
    """How much of each environment to run (instances per mode; both modes are run).

    Attributes:
      envs: environment names (subset of `ENVS`).
      expert_instances: instances run with the scripted expert, per env and mode.
      random_instances: instances run with random actions, per env and mode.
      random_rounds: steps of each random episode (default: the env's ``max_rounds``).
      illegal_rate: probability that a random step draws from all action ids (or the invalid
        string for Maze/Wordle) instead of the legal ones, so error replies appear.
      seed: PRNG seed of resets and random actions.
      start: first instance index.
    """

    envs: tuple[str, ...] = ENVS
    expert_instances: int = 200
    random_instances: int = 200
    random_rounds: int | None = None
    illegal_rate: float = 0.2
    seed: int = 0
    start: int = 0

    def __post_init__(self):
        bad = [e for e in self.envs if e not in ENVS]
        if bad or not self.envs:
            raise ValueError(f"CorpusConfig: envs {list(self.envs)}: must be a subset of {ENVS}")
        if self.expert_instances < 0 or self.random_instances < 0:
            raise ValueError("CorpusConfig: instance counts must be >= 0")
        if not 0.0 <= self.illegal_rate <= 1.0:
            raise ValueError(f"CorpusConfig: illegal_rate={self.illegal_rate} not in [0, 1]")
        if self.random_rounds is not None and self.random_rounds < 1:
            raise ValueError(f"CorpusConfig: random_rounds={self.random_rounds} must be >= 1")


def make_env(name: str, agentgym_compat: bool, codec: TextCodec | None = None) -> Env:
    """The environment the corpus (and the tokenizer tests) use; BabyAI gets an instance bank.

    Every BabyAI level has instances: levels without a native generator come from a bank of
    minigrid imports (row ``i`` = AgentGym instance ``i``), so `reset(key, idx)` serves any idx.
    """
    env = make(name, agentgym_compat=agentgym_compat, codec=codec)
    if name == "babyai":
        rows = [(i % 40 + 1, i // 40) for i in range(_BABYAI_BANK)]
        with contextlib.redirect_stdout(io.StringIO()):  # minigrid prints its rejected samples
            env.use_bank(env.bank_from_minigrid(rows))
    return env


# BabyAI bank rows: 3 seeds of every level; instance idx uses row idx % _BABYAI_BANK (level and
# row agree because the bank's length is a multiple of 40).
_BABYAI_BANK = 120


@partial(jax.jit, static_argnums=(0, 3, 4))
def _random_rollout(env: Env, keys, indices, rounds: int, illegal_rate: float):
    """Random episodes: each step a legal action, or with ``illegal_rate`` any id / invalid text.

    Args:
      keys: [N, rounds + 1] PRNG keys (reset, then one per step); indices: int32 [N].

    Returns:
      ``(states [rounds + 1, N], actions [rounds, N], active [rounds, N], obs_tokens
      [rounds + 1, N, L], obs_mask [rounds + 1, N, L])``; ``active``: the step was taken before
      the episode ended.
    """
    state0, ts0 = jax.vmap(env.reset)(keys[:, 0], indices)
    invalid_id = env.name in ("maze", "wordle")

    def one_action(key, legal):
        k1, k2, k3 = jax.random.split(key, 3)
        legal_pick = jax.random.categorical(k1, jnp.where(legal, 0.0, -jnp.inf))
        any_pick = jax.random.randint(k2, (), 0, env.num_actions)
        if invalid_id:  # half of the illegal draws: a string the env cannot parse
            any_pick = jnp.where(jax.random.bernoulli(k3), INVALID_ACTION, any_pick)
        use_any = jax.random.bernoulli(k3, illegal_rate) | ~jnp.any(legal)
        return jnp.where(use_any, any_pick, legal_pick).astype(jnp.int32)

    def body(carry, key_t):
        state, legal, done = carry
        action = jax.vmap(one_action)(key_t, legal)
        new, ts = jax.vmap(env.step)(state, action)
        out = (new, action, ~done, ts.obs_tokens, ts.obs_mask)
        return (new, ts.legal_actions, done | ts.done), out

    step_keys = jnp.swapaxes(keys[:, 1 : rounds + 1], 0, 1)
    init = (state0, ts0.legal_actions, ts0.done)
    _, (states, actions, active, tokens, masks) = jax.lax.scan(body, init, step_keys)
    cat = partial(jax.tree.map, lambda a, b: jnp.concatenate([a[None], b]))
    states, tokens, masks = cat((state0, ts0.obs_tokens, ts0.obs_mask), (states, tokens, masks))
    return states, actions, active, tokens, masks


def _at(states, t: int, i: int):
    return jax.tree.map(lambda x: x[t, i], states)


def _action_text(env: Env, action: int, state) -> str | None:
    if action == INVALID_ACTION:
        return None
    if env.name == "babyai":
        text = env.action_text(action, state)
        return None if text.startswith("<") else text
    return env.action_text(action)


def _expert_trajectories(env: Env, batch: experts.ExpertBatch) -> list[agenttraj.Trajectory]:
    """`experts.trajectories`, with BabyAI's object actions named from the state they act in."""
    if env.name != "babyai":
        return experts.trajectories(env, batch)
    out = []
    for i, idx in enumerate(batch.indices.tolist()):
        first = env.render_text(_at(batch.states, 0, i))
        traj = agenttraj.Trajectory(env=env.name, idx=int(idx), first_observation=first)
        for t in range(int(batch.num_steps[i])):
            state, action = _at(batch.states, t, i), int(batch.actions[t, i])
            traj.thoughts.append(env.expert_thought(state, action))
            traj.actions.append(env.action_text(action, state))
            traj.observations.append(env.render_text(_at(batch.states, t + 1, i)))
        out.append(traj)
    return out


def _render(env: Env, state) -> str | None:
    try:
        return env.render_text(state)
    except ValueError:  # TextCraft's reset_error / an out-of-table observation: no text
        return None


def _textcraft_off_table(env: Env, batch: experts.ExpertBatch) -> list[str]:
    """Each expert craft sent again with a wrong output or first-ingredient count, and the reply.

    From the state before the craft (the ingredients are there), upstream answers ``Could not
    find a valid recipe for ...`` (compat: ``ItemTagWithCount(...)``); no table action has these
    texts, ``env.step_text`` serves them.
    """
    out = []
    for i in range(len(batch.indices)):
        for t in range(int(batch.num_steps[i])):
            line = env.action_text(int(batch.actions[t, i]))
            if not line.startswith("craft ") or " using " not in line:
                continue
            head, ingredients = line.split(" using ", 1)
            n_out, item = head[len("craft ") :].split(" ", 1)
            n_in, rest = ingredients.split(" ", 1)
            state = _at(batch.states, t, i)
            texts = [f"craft {int(n_out) + 1} {item} using {ingredients}"]
            if int(n_in) > 1:  # fewer than the recipe's count: held, but no recipe matches
                texts.append(f"craft {n_out} {item} using {int(n_in) - 1} {rest}")
            for text in texts:
                out.append(text)
                out.append(env.step_text(state, text)[2])
    return out


def env_texts(env: Env, cfg: CorpusConfig) -> list[str]:
    """Every text of one environment (one mode): expert episodes, random episodes, bad texts."""
    out: list[str] = [turn["value"] for turn in prompts.conversation_start(env.name)]
    key = jax.random.key(cfg.seed)
    k_expert, k_random = jax.random.split(key)
    if cfg.expert_instances:
        idx = np.arange(cfg.start, cfg.start + cfg.expert_instances)
        batch = experts.rollout(env, idx, k_expert)
        for traj in _expert_trajectories(env, batch):
            item = agenttraj.to_item(traj)
            out.extend(turn["value"] for turn in item["conversations"])
        if env.name == "textcraft":
            out.extend(_textcraft_off_table(env, batch))
    if cfg.random_instances:
        rounds = int(cfg.random_rounds or env.max_rounds)
        n = cfg.random_instances
        idx = jnp.arange(cfg.start, cfg.start + n, dtype=jnp.int32)
        keys = jax.random.split(k_random, n * (rounds + 1)).reshape(n, rounds + 1)
        states, actions, active, _, _ = jax.device_get(
            _random_rollout(env, keys, idx, rounds, float(cfg.illegal_rate))
        )
        for i in range(n):
            first = _render(env, _at(states, 0, i))
            if first is not None:
                out.append(first)
            for t in range(rounds):
                if not active[t, i]:
                    break
                prev = _at(states, t, i)
                a = _action_text(env, int(actions[t, i]), prev)
                if a is not None:
                    out.append(a)
                obs = _render(env, _at(states, t + 1, i))
                if obs is not None:
                    out.append(obs)
    # error replies to texts no table action has
    for text in BAD_TEXTS:
        try:
            env.action_from_text(text)
        except InvalidAction as e:
            out.append(e.message)
    return out


def word_tables(names: Sequence[str]) -> list[str]:
    """Every word of every environment's static word table (no env instance needed for BabyAI)."""
    words: set[str] = set()
    for name in names:
        if name == "babyai":
            from evol_jax.envs import babyai_words

            words.update(babyai_words.WORDS)
        else:
            words.update(make(name).words)
    return sorted(w for w in words if w)


def collect(cfg: CorpusConfig) -> list[str]:
    """The corpus: sorted lines of every text (duplicates kept: frequency is what unigram fits)."""
    texts: list[str] = []
    for name in cfg.envs:
        for compat in (False, True):
            texts.extend(env_texts(make_env(name, compat), cfg))
    texts.extend(word_tables(cfg.envs))
    return corpus_lines(texts)


def corpus_lines(texts: Sequence[str]) -> list[str]:
    """Texts -> sorted non-blank lines (``"\\n"`` is a user-defined piece: no piece crosses it)."""
    lines = [line for t in texts for line in t.split("\n")]
    return sorted(line for line in lines if line.strip())


def train(lines: Sequence[str], out_prefix: str, vocab_size: int) -> str:
    """Trains on ``lines`` in a scratch dir and writes only ``<out_prefix>.model``; its path."""
    with tempfile.TemporaryDirectory() as tmp:
        model = train_tokenizer(list(lines), os.path.join(tmp, "envtext"), vocab_size)
        dst = out_prefix + ".model"
        os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
        shutil.copyfile(model, dst)
    return dst


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description="Train the environment tokenizer on env text.")
    ap.add_argument("--out", required=True, help="model prefix: writes <out>.model")
    ap.add_argument("--vocab_size", type=int, default=1536, help="requested; the shipped: 1536")
    ap.add_argument("--envs", default=",".join(ENVS))
    ap.add_argument("--expert_instances", type=int, default=CorpusConfig.expert_instances)
    ap.add_argument("--random_instances", type=int, default=CorpusConfig.random_instances)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--corpus_out", default=None, help="also write the corpus lines here")
    args = ap.parse_args(argv)
    cfg = CorpusConfig(
        envs=tuple(e for e in args.envs.split(",") if e),
        expert_instances=args.expert_instances,
        random_instances=args.random_instances,
        seed=args.seed,
    )
    lines = collect(cfg)
    if args.corpus_out:
        with open(args.corpus_out, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
    path = train(lines, args.out, args.vocab_size)
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    summary = {
        "model": path,
        "sha256": digest,
        "vocab_size": TextCodec(path).vocab_size,
        "corpus_lines": len(lines),
        "corpus_unique_lines": len(set(lines)),
    }
    print(json.dumps(summary), file=sys.stdout)
    return summary


if __name__ == "__main__":
    main()
