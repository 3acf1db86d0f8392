"""The AgentEvol loop: behavioural cloning, then M rounds of explore -> filter/weight -> learn.

Iteration 0 is plain BC on the expert set ``D_s``. Iteration ``m = 1..M``:

* *explore*: the policy of iteration ``m - 1`` runs ``num_samples`` episodes per instruction of the
  exploration pool of every environment on the device sampler (`evol_jax.sampler`); every episode
  is written to ``iter_m/explored.jsonl`` (AgentTraj item + reward) *before* anything is learned;
* *learn*: supervised fine-tuning on ``D_s`` merged with the explored data:
  ``merge="paper"`` uses ``D_s ∪ D_m``, ``merge="cumulative"`` (official scripts) ``D_s ∪ D_1 ∪ ...
  ∪ D_m``. With ``reward_weighted=False`` only successes are kept (reward above the env's
  threshold: 0.99, 0 for BabyAI, 99 for SciWorld's 0-100 score; at most one per instruction per
  iteration); with ``reward_weighted=True`` every episode is kept with weight ``max(reward, 0)``
  (``max E[r log pi(tau)]``). Training starts from the base parameters (``init_from="base"``, the
  official code) or from the previous iteration's (``"previous"``);
* *evaluate*: greedy episodes on the held-out instructions; success (reward == 1) and score
  (mean reward x 100) are reported separately.

Every phase writes its output atomically and records itself in ``state.json``; a run stopped at any
point resumes at the first missing phase without losing explored data (an interrupted training
phase resumes from its checkpoint). ``results.json``, ``results.md`` and ``evolution.png`` summarise
the run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import serialization

from core_jax.nn.transformer import Transformer
from evol_jax.chat import LLAMA2
from evol_jax.envs.base import SUCCESS_THRESHOLDS, Env, success_threshold
from evol_jax.policy_data import tokenize_records
from evol_jax.sampler import DeviceSampler
from evol_jax.train import BCConfig, train_bc

DEFAULT_THRESHOLDS = SUCCESS_THRESHOLDS
INIT_FROM = ("base", "previous")
MERGE = ("paper", "cumulative")


@dataclasses.dataclass(frozen=True)
class EvolConfig:
    """AgentEvol options (see the module docstring).

    Attributes:
      iterations: M evolution rounds after BC (paper: 4).
      init_from: ``base`` (official: every iteration restarts from the base model) or
        ``previous``.
      merge: ``paper`` (D_s ∪ D_m) or ``cumulative`` (D_s ∪ D_1 ∪ ... ∪ D_m).
      reward_weighted: keep every explored episode with weight max(reward, 0) instead of
        filtering successes.
      num_samples: K episodes per instruction during exploration.
      temperature, top_p: exploration sampling (0 = greedy); evaluation is always greedy.
      thresholds: per-env success threshold for the filter (default 0.99).
      seed: key derivation of exploration.
      balance_envs: before every learning phase, repeat each environment's episodes (expert and
        kept explored, whole copies) ``floor(n_max / n_env)`` times, ``n_max`` the largest
        environment's count, so that one policy trained on several environments for a fixed
        number of updates sees each about equally often (`balance_envs`). Off (default): every
        episode once, as the official code.
    """

    iterations: int = 4
    init_from: str = "base"
    merge: str = "cumulative"
    reward_weighted: bool = False
    num_samples: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    thresholds: Mapping[str, float] = dataclasses.field(default_factory=dict)
    seed: int = 0
    balance_envs: bool = False

    def __post_init__(self):
        if self.init_from not in INIT_FROM:
            raise ValueError(f"EvolConfig.init_from={self.init_from!r}; choose one of {INIT_FROM}")
        if self.merge not in MERGE:
            raise ValueError(f"EvolConfig.merge={self.merge!r}; choose one of {MERGE}")
        if self.iterations < 0 or self.num_samples < 1:
            raise ValueError("EvolConfig: iterations must be >= 0 and num_samples >= 1")

    def threshold(self, env: str) -> float:
        return float(self.thresholds.get(env, success_threshold(env)))


def select_explored(records: Sequence[dict], cfg: EvolConfig) -> list[tuple[dict, float]]:
    """Explored items -> ``(item, weight)`` training pairs (filter or reward weights)."""
    if cfg.reward_weighted:
        return [(r, max(float(r["reward"]), 0.0)) for r in records if float(r["reward"]) > 0]
    kept, seen = [], set()
    for r in records:
        env = env_of(r)
        if float(r["reward"]) > cfg.threshold(env) and r["item_id"] not in seen:
            seen.add(r["item_id"])
            kept.append((r, 1.0))
    return kept


def env_of(item: Mapping) -> str:
    """Environment name of an AgentTraj item (``item_id`` is ``"{env}_{idx}"``)."""
    return item["item_id"].rsplit("_", 1)[0]


def balance_envs(pairs: Sequence[tuple[dict, float]]) -> tuple[list[tuple[dict, float]], dict]:
    """Repeats each environment's ``(item, weight)`` pairs ``floor(n_max / n_env)`` times.

    Returns the repeated pairs (each environment's block in its original order, environments in
    order of first appearance) and ``{env: repeats}``. Weights are kept: repetition changes how
    often an episode is drawn, not its loss weight.
    """
    groups: dict[str, list[tuple[dict, float]]] = {}
    for p in pairs:
        groups.setdefault(env_of(p[0]), []).append(p)
    if not groups:
        return [], {}
    n_max = max(len(g) for g in groups.values())
    repeats = {e: n_max // len(g) for e, g in groups.items()}
    return [p for e, g in groups.items() for p in g * repeats[e]], repeats


def _free_note(out) -> str:
    """Log text: invalid / unserved turns of a free-decoding sampler output."""
    if out.decode != "free":
        return ""
    return (
        f", {int(out.invalid_turns.sum())} invalid turns, "
        f"{int(out.unserved.sum())} episodes ended on an unserved turn"
    )


def _write_json(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(obj, fh, indent=1)
    os.replace(tmp, path)


def _write_jsonl(path: str, records: Sequence[dict]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        for r in records:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def read_jsonl(path: str) -> list[dict]:
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


class Evolver:
    """Runs (and resumes) AgentEvol in ``workdir``.

    Args:
      workdir: run directory.
      model: the policy transformer.
      tokenizer: the policy tokenizer (the envs' ``codec`` wraps it).
      envs: name -> env (built with ``codec=PolicyCodec(tokenizer)``).
      expert_records: D_s, AgentTraj items (in the sampler's assistant-turn form).
      explore: name -> instance indices of the exploration pool.
      evaluate: name -> held-out instance indices.
      bc: trainer hyper-parameters (one call of `train_bc` per iteration).
      cfg: evolution options.
      base_params: the base model (None: a fresh init from ``bc.seed``).
      log: print-like callable for progress lines.
      bc_base: trainer settings of iteration 0 (BC_base) when they differ from ``bc`` (e.g. more
        epochs for a policy trained from scratch).
      max_cache_len: KV-cache cap of the samplers (see `DeviceSampler`).
      prompt: prompt style of the samplers (``"agentgym"`` or ``"compact"``, see
        `evol_jax.sampler.conversation_start`); ``expert_records`` must be in the same style
        (`evol_jax.sampler.restyle_item`).
      decode: how the samplers decode, for exploration and evaluation alike:
        ``"constrained"`` (actions decoded under the legal-action mask after an empty thought)
        or ``"free"`` (the policy writes the whole turn, parsed on device with AgentGym's
        client rules; see `evol_jax.sampler.DeviceSampler`). ``expert_records`` must be in the
        matching assistant-turn form (thoughts emptied for ``"constrained"``).
      max_new_tokens: generation budget per turn for ``decode="free"``.
    """

    def __init__(
        self,
        workdir: str,
        model: Transformer,
        tokenizer,
        envs: Mapping[str, Env],
        expert_records: Sequence[dict],
        explore: Mapping[str, Sequence[int]],
        evaluate: Mapping[str, Sequence[int]],
        bc: BCConfig,
        cfg: EvolConfig,
        base_params: Any = None,
        log=print,
        bc_base: BCConfig | None = None,
        max_cache_len: int | None = None,
        prompt: str = "agentgym",
        decode: str = "constrained",
        max_new_tokens: int = 64,
    ):
        self.workdir, self.model, self.tokenizer = workdir, model, tokenizer
        self.envs, self.expert_records = dict(envs), list(expert_records)
        self.explore, self.evaluate = dict(explore), dict(evaluate)
        self.bc, self.cfg, self.base_params, self.log = bc, cfg, base_params, log
        self.bc_base = bc_base or bc
        self.samplers = {
            n: DeviceSampler(
                e, model, tokenizer, max_cache_len=max_cache_len, prompt=prompt, decode=decode,
                max_new_tokens=max_new_tokens,
            )
            for n, e in self.envs.items()
        }  # fmt: skip
        os.makedirs(workdir, exist_ok=True)
        self.state_path = os.path.join(workdir, "state.json")
        self.state = (
            json.load(open(self.state_path)) if os.path.exists(self.state_path) else {"done": []}
        )

    # ------------------------------------------------------------------------------ bookkeeping
    def _dir(self, m: int) -> str:
        d = os.path.join(self.workdir, f"iter_{m}")
        os.makedirs(d, exist_ok=True)
        return d

    def _done(self, phase: str) -> bool:
        return phase in self.state["done"]

    def _mark(self, phase: str) -> None:
        self.state["done"].append(phase)
        _write_json(self.state_path, self.state)

    def _params_template(self):
        import flax.linen as nn

        dummy = np.zeros((1, 8), np.int32)
        return nn.meta.unbox(
            jax.eval_shape(lambda k: self.model.init(k, dummy)["params"], jax.random.key(0))
        )

    def _save_params(self, m: int, params) -> None:
        path = os.path.join(self._dir(m), "params.msgpack")
        with open(path + ".tmp", "wb") as fh:
            fh.write(serialization.to_bytes(jax.device_get(params)))
        os.replace(path + ".tmp", path)

    def load_params(self, m: int):
        """Parameters after iteration ``m``."""
        template = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), self._params_template())
        with open(os.path.join(self._dir(m), "params.msgpack"), "rb") as fh:
            return serialization.from_bytes(template, fh.read())

    # ----------------------------------------------------------------------------------- phases
    def explore_phase(self, m: int, params) -> list[dict]:
        path = os.path.join(self._dir(m), "explored.jsonl")
        if self._done(f"explore_{m}"):
            return read_jsonl(path)
        records = []
        for name, sampler in self.samplers.items():
            t0 = time.perf_counter()
            out = sampler.run(
                params, self.explore[name], seed=self.cfg.seed, iteration=m,
                num_samples=self.cfg.num_samples, temperature=self.cfg.temperature,
                top_p=self.cfg.top_p,
            )  # fmt: skip
            recs = sampler.to_records(out)
            for r, ov in zip(recs, out.overflow, strict=True):
                r["iteration"], r["cache_overflow"] = m, bool(ov)
            records += recs
            solved = len({int(i) for i, s in zip(out.indices, out.success, strict=True) if s})
            self.log(
                f"[iter {m}] explore {name}: {len(recs)} episodes, "
                f"success {out.success.mean():.3f}, score {100 * out.last_reward.mean():.1f}, "
                f"{solved}/{len(set(out.indices.tolist()))} instructions solved at least once"
                + _free_note(out)
                + f" ({time.perf_counter() - t0:.0f}s)"
            )
        _write_jsonl(path, records)
        self._mark(f"explore_{m}")
        return records

    def learn_phase(self, m: int, explored_by_iter: Mapping[int, list[dict]]):
        if self._done(f"learn_{m}"):
            return self.load_params(m)
        pairs = [(r, 1.0) for r in self.expert_records]
        if m > 0:
            iters = [m] if self.cfg.merge == "paper" else list(range(1, m + 1))
            for i in iters:
                pairs += select_explored(explored_by_iter[i], self.cfg)
        self.log(f"[iter {m}] learn on {len(pairs)} episodes ({len(self.expert_records)} expert)")
        if self.cfg.balance_envs:
            pairs, repeats = balance_envs(pairs)
            self.log(f"[iter {m}] balanced: repeats {repeats}, {len(pairs)} episodes")
        examples, stats = tokenize_records(
            [p[0] for p in pairs], self.tokenizer, LLAMA2,
            max_len=min(self.bc.seq_len, self.bc_base.seq_len),
            truncation="left", weights=[p[1] for p in pairs],
        )  # fmt: skip
        if stats.num_truncated:
            self.log(f"[iter {m}] {stats.num_truncated} episodes truncated to {self.bc.seq_len}")
        init = self.base_params
        if m > 0 and self.cfg.init_from == "previous":
            init = self.load_params(m - 1)
        t0 = time.perf_counter()
        params, lines = train_bc(
            self.model, examples, self.bc_base if m == 0 else self.bc, init_params=init,
            workdir=os.path.join(self._dir(m), "bc"),
        )  # fmt: skip
        self.log(
            f"[iter {m}] trained {lines[-1]['update']} updates, last loss "
            f"{lines[-1]['loss']:.3f} ({time.perf_counter() - t0:.0f}s)"
        )
        self._save_params(m, params)
        self._mark(f"learn_{m}")
        return params

    def eval_phase(self, m: int, params) -> dict:
        path = os.path.join(self._dir(m), "eval.json")
        if self._done(f"eval_{m}"):
            return json.load(open(path))
        res = {}
        t0 = time.perf_counter()
        for name, sampler in self.samplers.items():
            out = sampler.run(params, self.evaluate[name], seed=self.cfg.seed, temperature=0.0)
            res[name] = {
                "success": float(out.success.mean() * 100),
                "score": float(out.last_reward.mean() * 100),
                "episodes": int(len(out.indices)),
            }
            if out.decode == "free":
                res[name]["invalid_turns"] = int(out.invalid_turns.sum())
                res[name]["unserved_episodes"] = int(out.unserved.sum())
            _write_jsonl(os.path.join(self._dir(m), f"eval_{name}.jsonl"), sampler.to_records(out))
        res["mean_score"] = float(np.mean([res[n]["score"] for n in self.samplers]))
        res["mean_success"] = float(np.mean([res[n]["success"] for n in self.samplers]))
        _write_json(path, res)
        self._mark(f"eval_{m}")
        self.log(f"[iter {m}] eval " + json.dumps(res) + f" ({time.perf_counter() - t0:.0f}s)")
        return res

    def run(self) -> dict:
        """Runs every missing phase; returns ``{iteration: eval results}``."""
        explored: dict[int, list[dict]] = {}
        results = {}
        params = self.learn_phase(0, explored)
        results[0] = self.eval_phase(0, params)
        for m in range(1, self.cfg.iterations + 1):
            explored[m] = self.explore_phase(m, params)
            params = self.learn_phase(m, explored)
            results[m] = self.eval_phase(m, params)
        self.write_summary(results)
        return results

    # --------------------------------------------------------------------------------- summary
    def data_summary(self, m: int) -> tuple[str, str]:
        """Table cells of iteration ``m``: explored instructions with a kept episode / pool size,
        and the episodes learned on (expert + kept explored)."""
        n_expert = len(self.expert_records)
        if m == 0:
            return "-", f"{n_expert} expert"
        kept_total = 0
        iters = [m] if self.cfg.merge == "paper" else list(range(1, m + 1))
        for i in iters:
            path = os.path.join(self.workdir, f"iter_{i}", "explored.jsonl")
            if not os.path.exists(path):
                return "?", "?"
            kept = select_explored(read_jsonl(path), self.cfg)
            kept_total += len(kept)
            if i == m:
                solved = len({r["item_id"] for r, _ in kept})
                pool = sum(len(v) for v in self.explore.values())
        return f"{solved} / {pool}", f"{n_expert} expert + {kept_total} explored"

    def write_summary(self, results: Mapping[int, dict]) -> str:
        names = list(self.samplers)
        lines = [
            "| iteration | "
            + " | ".join(f"{n} success / score" for n in names)
            + " | mean score | explored: instructions solved / pool | learned on |",
            "|---" * (len(names) + 4) + "|",
        ]
        for m, r in sorted(results.items()):
            label = "BC_base" if m == 0 else f"AgentEvol M={m}"
            cells = [f"{r[n]['success']:.1f} / {r[n]['score']:.1f}" for n in names]
            explored, learned = self.data_summary(m)
            lines.append(
                f"| {label} | " + " | ".join(cells) + f" | {r['mean_score']:.1f} | {explored} | "
                f"{learned} |"
            )
        table = "\n".join(lines) + "\n"
        with open(os.path.join(self.workdir, "results.md"), "w") as fh:
            fh.write(table)
        _write_json(
            os.path.join(self.workdir, "results.json"),
            {
                "config": dataclasses.asdict(self.cfg),
                "results": {str(k): v for k, v in results.items()},
            },
        )
        plot_evolution(results, names, os.path.join(self.workdir, "evolution.png"))
        return table


def plot_evolution(results: Mapping[int, dict], names: Sequence[str], path: str) -> None:
    """Score vs iteration, one line per environment (matplotlib PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    its = sorted(results)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for n in names:
        ax.plot(its, [results[m][n]["score"] for m in its], marker="o", label=n)
    ax.plot(its, [results[m]["mean_score"] for m in its], "k--", label="mean")
    ax.set_xlabel("iteration (0 = BC)")
    ax.set_ylabel("score (mean reward x 100)")
    ax.set_xticks(its)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
