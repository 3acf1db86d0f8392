"""AgentEvol end to end on CPU in minutes: a tiny policy trained from scratch on the native envs.

1. scripted experts play a *small, partial* set of instructions (D_s, thoughts emptied: the device
   sampler writes ``Thought:\\n\\n\\nAction:\\n...`` turns), restyled to the config's prompt style
   (the demo uses ``"compact"`` prompts, `evol_jax.sampler.conversation_start`);
2. a policy SentencePiece tokenizer is trained on the prompts and the experts' texts;
3. a tiny Llama-style `core_jax` Transformer is cloned on D_s (BC_base, iteration 0);
4. M rounds of AgentEvol explore a broader, disjoint instruction pool on the device sampler (K
   samples per instruction at temperature 1), keep the successes and re-train (from the same
   initialisation, for the same number of updates as BC_base: only the data differs); every
   iteration is evaluated greedily on held-out instructions (disjoint from both D_s and the
   exploration pool).

    python -m evol_jax.demo --workdir /tmp/evol_demo
    python -m evol_jax.main --config demo --workdir /tmp/evol_demo     # same, through the CLI

prints the results table (success / score per env, BC_base vs AgentEvol, how many pool
instructions exploration solved, what each iteration learned on) and writes ``results.md``,
``results.json``, ``evolution.png`` and every explored episode (JSONL) under the workdir.
Re-running with the same workdir resumes (and reuses the XLA compilation cache in
``DIR/xla_cache``).
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
from evol_jax.sampler import PolicyCodec, conversation_start, restyle_item, strip_thoughts
from evol_jax.train import BCConfig


def expert_records(
    env, indices, seed: int = 0, prompt: str = "agentgym", thoughts: bool = False
) -> list[dict]:
    """Expert episodes on ``indices`` as AgentTraj items in prompt style ``prompt`` (see
    `evol_jax.sampler.conversation_start`), with the thoughts emptied (the constrained
    sampler's turn form) unless ``thoughts`` (for policies that write their turns,
    ``decode="free"``)."""
    import jax

    batch = experts.rollout(env, np.asarray(indices), jax.random.key(seed))
    items = [agenttraj.to_item(t) for t in experts.trajectories(env, batch)]
    if not thoughts:
        items = [strip_thoughts(it) for it in items]
    return [restyle_item(it, prompt) for it in items]


def tokenizer_corpus(env_names, indices: Mapping[str, Any], options=None) -> list[str]:
    """Texts the policy tokenizer is trained on: client prompts + expert episodes' texts."""
    texts = []
    options = options or {}
    for name in env_names:
        texts += [t["value"] for t in prompts.conversation_start(name)]
        texts += [t["value"] for t in conversation_start(name, "compact")]
        env = envs.make(name, **options.get(name, {}))
        for item in expert_records(env, indices[name]):
            texts += [t["value"] for t in item["conversations"]]
        texts += [env.action_text(a) for a in range(env.num_actions)]
    return texts


def split_indices(spec) -> list[int]:
    """Instance indices of a split: a ``(start, stop)`` tuple is a range, a list is explicit."""
    if isinstance(spec, tuple):
        if len(spec) != 2:
            raise ValueError(f"a split tuple is (start, stop), got {spec!r}")
        return list(range(*spec))
    return [int(i) for i in spec]


def run(config: Mapping[str, Any], workdir: str) -> dict:
    """Runs the recipe in ``config`` (see ``evol_jax/configs``) in ``workdir``; returns results."""
    t0 = time.time()
    os.makedirs(workdir, exist_ok=True)
    names = list(config["envs"])
    splits = {
        n: {k: split_indices(config["splits"][n][k]) for k in ("expert", "explore", "eval")}
        for n in names
    }
    for n, s in splits.items():
        if set(s["eval"]) & (set(s["expert"]) | set(s["explore"])):
            raise ValueError(f"{n}: evaluation instructions overlap the training instructions")
    tok_path = os.path.join(workdir, "policy_tokenizer.model")
    options = config.get("env_options", {})
    prompt = config.get("prompt", "agentgym")
    # "constrained" (default) or "free" decoding for exploration and evaluation; a free-decoding
    # policy is cloned on the experts' thoughts too ("expert_thoughts" overrides)
    decode = config.get("decode", "constrained")
    thoughts = config.get("expert_thoughts", decode == "free")
    if not os.path.exists(tok_path):
        corpus = tokenizer_corpus(names, {n: splits[n]["expert"] for n in names}, options)
        train_policy_tokenizer(
            corpus, tok_path[: -len(".model")], config["vocab_size"],
            extra_symbols=config.get("tokenizer_symbols", ()),
        )  # fmt: skip
    tok = PolicyTokenizer(tok_path)
    codec = PolicyCodec(tok)
    env_objs = {n: envs.make(n, codec=codec, **options.get(n, {})) for n in names}
    d_s = []
    for n in names:
        env = envs.make(n, **options.get(n, {}))
        d_s += expert_records(
            env, splits[n]["expert"], seed=config["seed"], prompt=prompt, thoughts=thoughts
        )
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
        prompt=prompt,
        decode=decode,
        max_new_tokens=config.get("max_new_tokens", 64),
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
    enable_compile_cache(args.workdir)
    return run(get_config("demo"), args.workdir)


def enable_compile_cache(workdir: str) -> None:
    """Persistent XLA compilation cache under ``workdir``: every AgentEvol iteration compiles the
    same train step and the same sampler shapes again (a new ``train_bc`` call, same HLO); on a
    small CPU that is a large share of the run, and a resumed run skips it altogether."""
    import jax

    jax.config.update("jax_compilation_cache_dir", os.path.join(workdir, "xla_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


if __name__ == "__main__":
    main()
