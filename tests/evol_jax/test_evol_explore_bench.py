"""benchmarks.evol_explore quick mode: all four paths run complete episodes, consistent counts."""

from __future__ import annotations

import json
import math

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")


def test_quick_mode_end_to_end():
    from benchmarks.evol_explore import QUICK, run, summary

    res = run(quick=True)
    shape, stats, budget = res["shape"], res["stats"], res["max_new_tokens"]
    assert shape == QUICK
    expected = {"device": shape["batch"], "host": shape["batch"], "host_kv": shape["batch"],
                "sequential": shape["seq_episodes"]}  # fmt: skip
    assert set(stats) == set(expected)
    for name, n in expected.items():
        st = stats[name]
        assert st["episodes"] == n == len(st["steps_per_episode"]), name
        # every episode ran: at least one turn, at most the round limit; totals add up
        assert all(1 <= k <= shape["rounds"] for k in st["steps_per_episode"]), name
        assert st["steps"] == sum(st["steps_per_episode"]), name
        # at least one generated token per turn (the device's shortest action is >= 2 tokens
        # with </s>), at most the shared per-turn budget
        assert st["steps"] <= st["tokens"] <= st["steps"] * budget, name
        rate = res["rates"][name]
        assert rate["episodes_per_s"] > 0 and math.isfinite(rate["tokens_per_s"])
    # same weights, same prompts, greedy: free generation in JAX (host) == transformers (baseline)
    assert res["host_equals_sequential"] == 1.0
    # keeping each episode's KV cache gives the re-encoding path's greedy actions, prefilling
    # fewer tokens (every call from an empty pool: turn 1 prefills the whole prompt)
    assert res["host_kv_equals_host"] == 1.0
    host, kv = stats["host"], stats["host_kv"]
    assert kv["prompt_tokens"] == host["prompt_tokens"] == host["prefilled_tokens"]
    assert 0 < kv["prefilled_tokens"] < kv["prompt_tokens"]
    assert set(res["ratios"]) == {
        "device/sequential", "host/sequential", "host_kv/sequential", "host_kv/host"
    }  # fmt: skip
    for ratio in res["ratios"].values():
        assert ratio["episodes_per_s"] > 0 and ratio["tokens_per_s"] > 0
    assert [r["path"].split(":")[0] for r in res["rows"]] == [
        "device", "host (re-encode)", "host (KV reuse)", "sequential"
    ]  # fmt: skip
    assert res["environment"]["loadavg_before"] is not None
    json.dumps(res, default=str)
    assert "sequential" in summary(res)
