"""AgentEvol end to end on CPU in minutes: a tiny policy trained from scratch on the native envs.

1. scripted experts play a *small* set of instructions per environment (D_s, thoughts emptied: the
   device sampler writes ``Thought:\\n\\n\\nAction:\\n...`` turns);
2. a policy SentencePiece tokenizer is trained on the AgentGym prompts and environment texts;
3. a tiny Llama-style `core_jax` Transformer is cloned on D_s (BC_base, iteration 0);
4. M rounds of AgentEvol explore a broader, disjoint instruction pool on the device sampler, keep
   the successes and re-train; every iteration is evaluated greedily on held-out instructions
   (disjoint from both D_s and the exploration pool).

    python -m evol_jax.demo --workdir /tmp/evol_demo
    python -m evol_jax.main --config demo --workdir /tmp/evol_demo     # same, through the CLI

prints the results table (success / score per env, BC_base vs AgentEvol) and writes
``results.md``, ``results.json``, ``evolution.png`` and every explored episode (JSONL) under the
workdir. Re-running with the same workdir resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from core_jax.nn import Transformer, TransformerConfig
from evol_jax import agenttraj, envs, experts, prompts
from evol_jax.evol import EvolConfig, Evolver
from evol_jax.policy_tokenizer import PolicyTokenizer, train_policy_tokenizer
from evol_jax.sampler import PolicyCodec, strip_thoughts
from evol_jax.train import BCConfig


def expert_records(env, indices, seed: int = 0) -> list[dict]:
    """Expert episodes on ``indices`` as AgentTraj items with the thoughts emptied."""
    import jax

    batch = experts.rollout(env, np.asarray(indices), jax.random.key(seed))
    return [strip_thoughts(agenttraj.to_item(t)) for t in experts.trajectories(env, batch)]


def tokenizer_corpus(env_names, indices: Mapping[str, Any]) -> list[str]:
    """Texts the policy tokenizer is trained on: client prompts + expert episodes' texts."""
    texts = []
    for name in env_names:
        texts += [t["value"] for t in prompts.conversation_start(name)]
        env = envs.make(name)
        for item in expert_records(env, indices[name]):
            texts += [t["value"] for t in item["conversations"]]
        texts += [env.action_text(a) for a in range(env.num_actions)]
    return texts


def run(config: Mapping[str, Any], workdir: str) -> dict:
    """Runs the recipe in ``config`` (see ``evol_jax/configs``) in ``workdir``; returns results."""
    t0 = time.time()
    os.makedirs(workdir, exist_ok=True)
    names = list(config["envs"])
    splits = {
        n: {k: list(range(*config["splits"][n][k])) for k in ("expert", "explore", "eval")}
        for n in names
    }
    for n, s in splits.items():
        if set(s["eval"]) & (set(s["expert"]) | set(s["explore"])):
            raise ValueError(f"{n}: evaluation instructions overlap the training instructions")
    tok_path = os.path.join(workdir, "policy_tokenizer.model")
    if not os.path.exists(tok_path):
        corpus = tokenizer_corpus(names, {n: splits[n]["expert"] for n in names})
        train_policy_tokenizer(corpus, tok_path[: -len(".model")], config["vocab_size"])
    tok = PolicyTokenizer(tok_path)
    codec = PolicyCodec(tok)
    options = config.get("env_options", {})
    env_objs = {n: envs.make(n, codec=codec, **options.get(n, {})) for n in names}
    d_s = []
    for n in names:
        env = envs.make(n, **options.get(n, {}))
        d_s += expert_records(env, splits[n]["expert"], seed=config["seed"])
    model = Transformer(TransformerConfig(vocab_size=tok.vocab_size, **config["model"]))
    evolver = Evolver(
        workdir,
        model,
        tok,
        env_objs,
        d_s,
        explore={n: splits[n]["explore"] for n in names},
        evaluate={n: splits[n]["eval"] for n in names},
        bc=BCConfig(**config["bc"]),
        cfg=EvolConfig(**config["evol"]),
        bc_base=BCConfig(**{**config["bc"], **config.get("bc_base", {})}),
        max_cache_len=config.get("max_cache_len"),
    )
    results = evolver.run()
    table = evolver.write_summary(results)
    print(table)
    first, last = results[0]["mean_score"], results[max(results)]["mean_score"]
    print(
        json.dumps(
            {
                "bc_base_mean_score": first,
                "agentevol_mean_score": last,
                "improved": last > first,
                "seconds": round(time.time() - t0, 1),
            }
        )
    )
    return results


def main(argv=None) -> dict:
    from evol_jax.configs import get_config

    ap = argparse.ArgumentParser(description="AgentEvol demo (tiny policy, CPU, minutes).")
    ap.add_argument("--workdir", default="/tmp/evol_jax_demo")
    args = ap.parse_args(argv)
    return run(get_config("demo"), args.workdir)


if __name__ == "__main__":
    main()
