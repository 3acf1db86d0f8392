"""AgentEvol loop: success filter, reward weights, merges, resume without losing explored data."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest

from core_jax.nn import Transformer, TransformerConfig
from evol_jax import envs
from evol_jax import evol as evol_mod
from evol_jax.demo import expert_records, tokenizer_corpus
from evol_jax.evol import EvolConfig, Evolver, balance_envs, select_explored
from evol_jax.policy_tokenizer import PolicyTokenizer, train_policy_tokenizer
from evol_jax.sampler import PolicyCodec
from evol_jax.train import BCConfig


def _rec(env, idx, reward):
    return {"item_id": f"{env}_{idx}", "conversations": [], "reward": reward}


def test_select_filter_and_weights():
    recs = [_rec("maze", 1, 1.0), _rec("maze", 1, 1.0), _rec("maze", 2, 0.5),
            _rec("babyai", 3, 0.4), _rec("babyai", 4, 0.0), _rec("maze", 5, -1.0)]  # fmt: skip
    kept = select_explored(recs, EvolConfig())
    assert [r["item_id"] for r, _ in kept] == ["maze_1", "babyai_3"]  # one per instruction
    assert all(w == 1.0 for _, w in kept)
    kept = select_explored(recs, EvolConfig(reward_weighted=True))
    assert [(r["item_id"], w) for r, w in kept] == [
        ("maze_1", 1.0), ("maze_1", 1.0), ("maze_2", 0.5), ("babyai_3", 0.4)
    ]  # fmt: skip
    kept = select_explored(recs, EvolConfig(thresholds={"maze": 0.4}))
    assert [r["item_id"] for r, _ in kept] == ["maze_1", "maze_2", "babyai_3"]


def test_balance_envs_known_answer():
    pairs = [
        (_rec("maze", 0, 1.0), 1.0),
        (_rec("wordle", 0, 1.0), 0.5),
        (_rec("maze", 1, 1.0), 1.0),
    ] + [(_rec("wordle", i, 1.0), 1.0) for i in range(1, 5)]
    pairs.append((_rec("babyai", 7, 0.3), 0.3))  # fmt: skip
    out, repeats = balance_envs(pairs)
    assert repeats == {"maze": 2, "wordle": 1, "babyai": 5}  # floor(5 / n_env)
    ids = [(r["item_id"], w) for r, w in out]
    assert ids == (
        [("maze_0", 1.0), ("maze_1", 1.0)] * 2
        + [("wordle_0", 0.5)] + [(f"wordle_{i}", 1.0) for i in range(1, 5)]
        + [("babyai_7", 0.3)] * 5
    )  # fmt: skip
    assert balance_envs([]) == ([], {})


def test_named_configs():
    """demo keeps its recipe (the README's table); small balances its two envs; a name that is
    no recipe (the shared module) is refused."""
    from evol_jax.configs import get_config

    demo = get_config("demo")
    assert demo["envs"] == ["maze"] and demo["bc"]["updates"] == 120
    assert demo["model"]["d_model"] == 64 and demo["model"]["num_layers"] == 2
    assert demo["splits"]["maze"]["expert"] == [0, 9] and len(demo["splits"]["maze"]["eval"]) == 8
    assert not demo["evol"].get("balance_envs", False)
    small = get_config("small")
    assert small["envs"] == ["maze", "wordle"] and small["evol"]["balance_envs"]
    EvolConfig(**small["evol"])  # valid keys
    for name in ("common", "nope"):
        with pytest.raises(ValueError, match="unknown config"):
            get_config(name)


def test_bad_config():
    with pytest.raises(ValueError, match="init_from"):
        EvolConfig(init_from="scratch")
    with pytest.raises(ValueError, match="merge"):
        EvolConfig(merge="all")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("evol")
    tok = PolicyTokenizer(
        train_policy_tokenizer(tokenizer_corpus(["maze"], {"maze": range(3)}), str(d / "t"), 500)
    )
    cfg = TransformerConfig(vocab_size=tok.vocab_size, d_model=32, num_layers=1, num_heads=2,
                            mlp_dim=64, mlp="swiglu", norm="rmsnorm", max_len=8192)  # fmt: skip
    return tok, Transformer(cfg), expert_records(envs.make("maze"), [0, 1])


def _evolver(workdir, setup, merge="cumulative"):
    tok, model, d_s = setup
    env = envs.make("maze", codec=PolicyCodec(tok), max_rounds=3)
    return Evolver(
        str(workdir), model, tok, {"maze": env}, d_s, explore={"maze": [2, 3, 4, 5]},
        evaluate={"maze": [20, 21]},
        bc=BCConfig(peak_lr=1e-3, micro_batch=8, grad_accum=1, seq_len=2048, epochs=1),
        cfg=EvolConfig(iterations=2, merge=merge, temperature=1.0), log=lambda *_: None,
    )  # fmt: skip


@pytest.mark.slow
def test_resume_keeps_explored_data(tmp_path, setup, monkeypatch):
    ev = _evolver(tmp_path, setup)
    real_train = evol_mod.train_bc
    calls = {"n": 0}

    def crash_on_iter_1(model, examples, cfg, **kw):
        calls["n"] += 1
        if "iter_1" in kw["workdir"]:
            raise KeyboardInterrupt  # the run is stopped during the first learning phase
        return real_train(model, examples, cfg, **kw)

    monkeypatch.setattr(evol_mod, "train_bc", crash_on_iter_1)
    with pytest.raises(KeyboardInterrupt):
        ev.run()
    path = tmp_path / "iter_1" / "explored.jsonl"
    explored = evol_mod.read_jsonl(str(path))
    assert len(explored) == 4 and all("reward" in r for r in explored)
    before = path.read_bytes()
    monkeypatch.setattr(evol_mod, "train_bc", real_train)
    ev2 = _evolver(tmp_path, setup)
    sampled = []
    for s in ev2.samplers.values():
        orig = s.run
        s.run = lambda *a, _o=orig, **k: sampled.append(k.get("temperature")) or _o(*a, **k)
    results = ev2.run()
    assert path.read_bytes() == before  # iteration 1 was not explored again
    # Resumed: iteration 1's exploration is reused; only evaluations and iteration 2 sample.
    assert sampled.count(1.0) == 1
    assert set(results) == {0, 1, 2}
    for m in results:
        assert 0 <= results[m]["maze"]["success"] <= 100
    summary = json.load(open(tmp_path / "results.json"))
    assert set(summary["results"]) == {"0", "1", "2"}
    assert os.path.getsize(tmp_path / "evolution.png") > 0
    assert "BC_base" in (tmp_path / "results.md").read_text()
    state = json.load(open(tmp_path / "state.json"))
    assert state["done"][:3] == ["learn_0", "eval_0", "explore_1"]
    assert np.isfinite(results[2]["mean_score"])


def _rewards(path) -> dict[str, float]:
    return {r["item_id"]: r["reward"] for r in evol_mod.read_jsonl(str(path))}


def test_evolution_finds_and_learns_what_bc_misses(tmp_path, setup):
    """The mechanism AgentEvol relies on, on a toy where it must work: BC_base (a barely trained
    clone of one expert episode) fails, greedily, instructions near the maze goal; exploration (K
    samples at temperature 1) finds successes on instructions outside D_s; the success filter
    keeps them; fine-tuning on D_s + the kept successes makes those episodes more likely than
    the same training budget spent on D_s alone (the control) does."""
    from evol_jax.chat import LLAMA2
    from evol_jax.policy_data import PackedBatchIterator, tokenize_records
    from evol_jax.train import bc_loss, train_bc

    tok, model, _ = setup
    env = envs.make("maze", codec=PolicyCodec(tok), max_rounds=5)
    d_s = expert_records(envs.make("maze"), [14], prompt="compact")  # (5, 4): right x2, down x3
    pool = [15, 16, 17, 18]  # (5, 5), (5, 6), (6, 6), (7, 6): 4, 3, 2, 1 steps from the goal
    bc = BCConfig(peak_lr=1e-2, micro_batch=8, grad_accum=1, seq_len=512, updates=60,
                  log_every=10)  # fmt: skip
    ev = Evolver(
        str(tmp_path), model, tok, {"maze": env}, d_s, explore={"maze": pool},
        evaluate={"maze": pool}, bc=bc, bc_base=dataclasses.replace(bc, updates=4),
        cfg=EvolConfig(iterations=1, num_samples=16, temperature=1.0),
        log=lambda *_: None, prompt="compact",
    )  # fmt: skip
    ev.run()
    base = _rewards(tmp_path / "iter_0" / "eval_maze.jsonl")
    explored = evol_mod.read_jsonl(str(tmp_path / "iter_1" / "explored.jsonl"))
    kept = select_explored(explored, ev.cfg)
    # exploration found successes on instructions that BC_base fails greedily (none is in D_s)
    new = [r for r, _ in kept if base[r["item_id"]] < 1.0]
    assert new, (base, [r["item_id"] for r, _ in kept])
    assert all(r["reward"] == 1.0 for r in new)
    # ... and iteration 1 learned them: their loss is lower than after the same 60 updates on
    # D_s alone (same init, same seed; only the kept explored episodes differ)
    examples, _ = tokenize_records(new, tok, LLAMA2, max_len=512)
    batch = next(PackedBatchIterator(examples, batch_size=8, seq_len=512, shuffle=False))
    control, _ = train_bc(model, tokenize_records(d_s, tok, LLAMA2, max_len=512)[0], bc)
    loss_evol = float(bc_loss(model, ev.load_params(1), batch)[0])
    loss_control = float(bc_loss(model, control, batch)[0])
    assert loss_evol < loss_control, (loss_evol, loss_control)
    table = (tmp_path / "results.md").read_text()
    assert f"| {len(kept)} / {len(pool)} |" in table and "1 expert +" in table


def test_decode_option_reaches_the_samplers(tmp_path, setup):
    """``decode`` / ``max_new_tokens`` select the samplers' decoding (exploration and
    evaluation); expert records for a free-decoding policy keep the experts' thoughts."""
    tok, model, d_s = setup
    env = envs.make("maze", codec=PolicyCodec(tok), max_rounds=3)
    kw = dict(explore={"maze": [2]}, evaluate={"maze": [20]},
              bc=BCConfig(micro_batch=8, seq_len=2048, updates=1), cfg=EvolConfig(iterations=1),
              log=lambda *_: None)  # fmt: skip
    ev = Evolver(
        str(tmp_path), model, tok, {"maze": env}, d_s, decode="free", max_new_tokens=9, **kw
    )
    assert ev.samplers["maze"].decode == "free" and ev.samplers["maze"].max_new_tokens == 9
    assert (
        Evolver(str(tmp_path), model, tok, {"maze": env}, d_s, **kw).samplers["maze"].decode
        == "constrained"
    )
    with pytest.raises(ValueError, match="decode"):
        Evolver(str(tmp_path), model, tok, {"maze": env}, d_s, decode="greedy", **kw)
    with_thoughts = expert_records(envs.make("maze"), [0], thoughts=True)[0]["conversations"]
    stripped = expert_records(envs.make("maze"), [0])[0]["conversations"]
    assert with_thoughts[3]["value"].startswith("Thought:\nI am at position")
    assert stripped[3]["value"].startswith("Thought:\n\n\nAction:\n")


@pytest.mark.slow
def test_free_decoding_run(tmp_path, setup):
    """A whole (tiny) AgentEvol run exploring and evaluating with free generation: explored
    records hold the generated turns and their parse counts, evaluation reports invalid turns."""
    tok, model, _ = setup
    env = envs.make("maze", codec=PolicyCodec(tok), max_rounds=2)
    d_s = expert_records(envs.make("maze"), [0, 1], thoughts=True)
    ev = Evolver(
        str(tmp_path), model, tok, {"maze": env}, d_s, explore={"maze": [2, 3]},
        evaluate={"maze": [20, 21]},
        bc=BCConfig(peak_lr=1e-3, micro_batch=8, grad_accum=1, seq_len=2048, updates=2),
        cfg=EvolConfig(iterations=1, num_samples=2, temperature=1.0), log=lambda *_: None,
        decode="free", max_new_tokens=8,
    )  # fmt: skip
    results = ev.run()
    explored = evol_mod.read_jsonl(str(tmp_path / "iter_1" / "explored.jsonl"))
    assert len(explored) == 4
    for r in explored:
        assert {"invalid_turns", "unserved", "reward"} <= set(r) and not r["unserved"]
        gpt = [t["value"] for t in r["conversations"][3::2]]
        assert 1 <= len(gpt) <= 2 and r["invalid_turns"] <= len(gpt)
    assert set(results) == {0, 1} and "invalid_turns" in results[1]["maze"]
