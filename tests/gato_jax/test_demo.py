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
