"""gato_jax.demo end to end on a tiny budget (slow: datagen + training + evaluation)."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path, capsys):
    pytest.importorskip("gymnasium")
    pytest.importorskip("tensorflow_datasets")
    from gato_jax import demo

    argv = ["--workdir", str(tmp_path), "--data_episodes", "3", "--train_steps", "8"]
    assert demo.main([*argv, "--eval_episodes", "2"]) == 0
    out = capsys.readouterr().out
    assert "| cartpole | control | 2 |" in out and "| control |" in out
    assert "sample captions of held-out images" in out and "reference:" in out
    res = json.loads((tmp_path / "eval" / "results.json").read_text())
    rows = {r["task"]: r for r in res["tasks"]}
    assert set(rows) == set(demo.RECIPES["demo"].tasks.split(","))
    assert {"control", "vl", "text"} <= {r["domain"] for r in rows.values()}
    assert rows["vl_shapes"]["captions"] == 2 * 5 and 0 <= rows["vl_shapes"]["caption_exact"] <= 1
    assert (tmp_path / "run" / "tokenizer.model").is_file()
    timing = json.loads((tmp_path / "timing.json").read_text())
    assert set(timing) == {"data", "training", "evaluation", "total"}
    assert timing["total"]["cpu_s"] > 0 and "process CPU" in out


def test_stage_timing_known_answer():
    from gato_jax import demo

    marks = [
        ("start", 10.0, 1.0, (0.5, 0.5, 0.5)),
        ("data", 15.0, 4.0, (1.0, 0.7, 0.6)),
        ("training", 45.0, 50.0, (2.0, 1.0, 0.7)),
    ]
    t = demo.stage_timing(marks)
    assert t["data"] == {"wall_s": 5.0, "cpu_s": 3.0, "loadavg": [1.0, 0.7, 0.6]}
    assert t["training"] == {"wall_s": 30.0, "cpu_s": 46.0, "loadavg": [2.0, 1.0, 0.7]}
    assert t["total"] == {"wall_s": 35.0, "cpu_s": 49.0}
    with pytest.raises(ValueError, match="at least one stage"):
        demo.stage_timing(marks[:1])


def test_long_recipe_is_consistent():
    """Every domain is in ``long``, its weights / episode counts name its tasks, and its window
    holds the evaluation prompt plus one BabyAI step (the policy refuses a smaller one)."""
    from gato_jax import demo
    from gato_jax.configs.tokenizer import TokenizerConfig
    from gato_jax.tasks import _domain, get_task

    r = demo.RECIPES["long"]
    names = r.tasks.split(",")
    assert {_domain(n) for n in names} == {
        "control", "babyai", "metaworld", "atari", "vl", "text"
    }  # fmt: skip
    assert set(r.weights) <= set(names) and set(r.episodes_per_task) <= set(names)
    sets = dict(o.split("=", 1) for o in r.overrides)
    seq_len = int(sets["tokenizer.seq_len"])
    assert int(sets["model.transformer.max_len"]) == seq_len
    prompt = 16  # gato_tiny's prompt_tokens
    steps = [get_task(n, TokenizerConfig()).spec.tokens_per_step for n in names[:11]]
    assert max(steps) == 84 and prompt + max(steps) <= seq_len  # a BabyAI step (49 view cells)
    assert r.time_budget is not None and r.train_steps > 0
