"""gato_jax.evaluate: normalisation and summaries on known cases; the CLI end to end."""

from __future__ import annotations

import dataclasses
import json
import math

import flax.linen as nn
import jax
import numpy as np
import pytest

from core_jax import config as config_lib
from core_jax.checkpoint import Checkpointer
from core_jax.train_state import TrainState
from gato_jax import evaluate
from gato_jax.configs import get_config
from gato_jax.models import Gato, dummy_inputs
from gato_jax.tasks import get_task
from gato_jax.train import make_optimizer


def test_normalized_score_known_cases():
    # Pendulum-like returns: random -1200, expert -150.
    assert evaluate.normalized_score(-1200.0, -1200.0, -150.0) == 0.0
    assert evaluate.normalized_score(-150.0, -1200.0, -150.0) == 100.0
    assert evaluate.normalized_score(-675.0, -1200.0, -150.0) == pytest.approx(50.0)
    assert evaluate.normalized_score(-1725.0, -1200.0, -150.0) == pytest.approx(-50.0)
    # CartPole-like: random 22, expert 500; a return of 261 is exactly half way.
    assert evaluate.normalized_score(261.0, 22.0, 500.0) == pytest.approx(50.0)
    rng = np.random.default_rng(0)
    lo, hi, r = rng.normal(size=3) * 100
    want = 100 * (r - lo) / (hi - lo)
    assert evaluate.normalized_score(r, lo, hi) == pytest.approx(want, rel=1e-12)
    with pytest.raises(ValueError, match="expert_return == random_return"):
        evaluate.normalized_score(1.0, 2.0, 2.0)
    with pytest.raises(ValueError, match="non-finite"):
        evaluate.normalized_score(1.0, math.nan, 2.0)


def test_summarize_domain_means_and_fraction():
    rows = [
        {"task": "a", "domain": "control", "score": 100.0},
        {"task": "b", "domain": "control", "score": 20.0},
        {"task": "c", "domain": "babyai", "score": 50.0},
        {"task": "d", "domain": "text", "score": None, "perplexity": 12.0},
    ]
    s = evaluate.summarize(rows)
    assert s["domain_mean"] == {"babyai": 50.0, "control": 60.0}
    assert s["fraction_at_least"] == pytest.approx(2 / 3)
    assert s["mean"] == pytest.approx(170 / 3)
    assert s["scored_tasks"] == 3
    table = evaluate.markdown({"tasks": rows, "summary": s})
    assert "| control | 60.0 |" in table and "fraction of tasks >= 50: 67%" in table


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A random-init gato_tiny checkpoint in the layout gato_jax.main writes."""
    cfg = get_config("gato_tiny")
    params = nn.meta.unbox(
        Gato(cfg.model).init(jax.random.key(0), dummy_inputs(cfg.tokenizer))["params"]
    )
    workdir = tmp_path_factory.mktemp("run")
    state = TrainState.create(params=params, tx=make_optimizer(cfg.optim), rng=0)
    with Checkpointer(workdir / "checkpoints") as ckpt:
        ckpt.save(1, state, config=config_lib.to_dict(cfg), force=True)
    return workdir


def test_cli_end_to_end_on_cartpole(tiny_run, tmp_path):
    out = tmp_path / "eval"
    rc = evaluate.main(
        ["--workdir", str(tiny_run), "--tasks", "cartpole", "--episodes", "3", "--out", str(out)]
    )
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    (row,) = res["tasks"]
    task = get_task("cartpole")
    assert row["task"] == "cartpole" and row["domain"] == "control" and len(row["returns"]) == 3
    assert row["mean_return"] == pytest.approx(np.mean(row["returns"]))
    assert row["score"] == pytest.approx(
        evaluate.normalized_score(row["mean_return"], task.random_return, task.expert_return)
    )
    # The prompt is a successful expert demonstration.
    assert (
        evaluate.normalized_score(row["demo_return"], task.random_return, task.expert_return) >= 80
    )
    assert res["summary"]["domain_mean"] == {"control": pytest.approx(row["score"])}
    assert (out / "scores.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| cartpole | control | 3 |" in (out / "results.md").read_text()


def test_rollouts_start_from_held_out_seeds(tiny_run, monkeypatch):
    # datagen writes training episodes from seeds 0, 1, ...; returns and demonstrations use
    # their own ranges. Rollouts must start elsewhere, or the score is on training states.
    from gato_jax import datagen

    seen = []

    def fake_rollout(policy, task, seeds, max_steps):
        seen.append(list(seeds))
        return [0.0] * len(seeds)

    monkeypatch.setattr(evaluate, "rollout", fake_rollout)
    res = evaluate.evaluate(str(tiny_run), ["cartpole"], episodes=2, seed=3, log=lambda *a: None)
    assert seen == [[evaluate.EVAL_SEED + 3, evaluate.EVAL_SEED + 4]]
    assert res["env_seed"] == evaluate.EVAL_SEED and res["seed"] == 3
    demo_seed = res["tasks"][0]["demo_seed"]
    taken = {datagen.RETURNS_SEED, evaluate.SAMPLE_SEED, demo_seed}
    assert all(s >= 1_000_000 and s not in taken for s in seen[0])
    evaluate.evaluate(str(tiny_run), ["cartpole"], episodes=1, env_seed=7, log=lambda *a: None)
    assert seen[-1] == [7]


def test_cli_capped_episodes_are_not_normalised(tiny_run, tmp_path):
    out = tmp_path / "eval"
    argv = ["--workdir", str(tiny_run), "--tasks", "pendulum", "--episodes", "2", "--out", str(out)]
    assert evaluate.main([*argv, "--max_steps", "5"]) == 0
    (row,) = json.loads((out / "results.json").read_text())["tasks"]
    assert row["capped"] and row["score"] is None and len(row["returns"]) == 2


def test_cli_bad_input(tiny_run, tmp_path, capsys):
    argv = ["--episodes", "1", "--out", str(tmp_path)]
    assert evaluate.main(["--workdir", str(tiny_run), "--tasks", "no_such_task", *argv]) == 2
    assert "no_such_task" in capsys.readouterr().err
    assert evaluate.main(["--workdir", str(tmp_path / "none"), "--tasks", "cartpole", *argv]) == 2
    assert "checkpoints" in capsys.readouterr().err


def test_text_task_reports_perplexity(tiny_run, tmp_path):
    from gato_jax.datagen import train_tokenizer
    from gato_jax.tasks import corpus_sentences

    tok = train_tokenizer(corpus_sentences(), vocab_size=256)
    path = tmp_path / "tok.model"
    tok.save(str(path))
    res = evaluate.evaluate(
        str(tiny_run), ["text_corpus"], episodes=2, tokenizer_path=str(path), log=lambda s: None
    )
    (row,) = res["tasks"]
    assert row["score"] is None and row["text_tokens"] > 0
    # Random init: close to uniform over the 33k vocabulary (ln 33025 ~ 10.4).
    assert 8.0 < row["text_loss"] < 12.0
    assert row["perplexity"] == pytest.approx(math.exp(row["text_loss"]))


def test_caption_decoding_matches_uncached_argmax():
    """Greedy KV-cached captioning == a loop of full (non-cached) forwards, each taking the
    argmax of the last position's logits restricted to the text ids ``[0, vocab)``."""
    import jax.numpy as jnp

    cfg = get_config("gato_tiny")
    model = Gato(cfg.model)
    params = nn.meta.unbox(model.init(jax.random.key(1), dummy_inputs(cfg.tokenizer))["params"])
    task = get_task("vl_shapes", cfg.tokenizer)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 48, 48, 3)).astype(np.uint8)
    n, vocab = 6, 40
    ids = evaluate.decode_captions(cfg.model, params, task.spec, images, vocab=vocab, max_tokens=n)
    assert ids.shape == (3, n) and ids.dtype == np.int32
    assert ((ids >= 0) & (ids < vocab)).all()

    inputs, prefix_len, _ = evaluate.caption_inputs(task.spec, images, n)
    tokens = np.asarray(inputs.tokens).copy()
    want = np.zeros((3, n), np.int32)
    apply = jax.jit(lambda p, x: model.apply({"params": p}, x))
    for i in range(n):
        logits = np.asarray(apply(params, inputs.replace(tokens=jnp.asarray(tokens))))
        for b in range(3):
            pos = prefix_len[b] + i
            want[b, i] = np.argmax(logits[b, pos - 1, :vocab])
            tokens[b, pos] = want[b, i]
    np.testing.assert_array_equal(ids, want)
    # The restriction matters: unrestricted, the argmax would leave the text ids [0, 40).
    free = np.argmax(logits[np.arange(3), prefix_len - 1], axis=-1)
    assert (free >= vocab).any()


def test_caption_bad_inputs():
    cfg = get_config("gato_tiny")
    images = np.zeros((1, 48, 48, 3), np.uint8)
    with pytest.raises(ValueError, match="text action field"):
        evaluate.caption_inputs(get_task("cartpole", cfg.tokenizer).spec, images)
    with pytest.raises(ValueError, match="max_tokens"):
        evaluate.caption_inputs(get_task("vl_shapes", cfg.tokenizer).spec, images, 99)
    short = dataclasses.replace(cfg.tokenizer, seq_len=16)
    with pytest.raises(ValueError, match="window of 16 tokens"):
        evaluate.caption_inputs(get_task("vl_shapes", short).spec, images)
    assert evaluate.cut_caption("a red square in the top . a blue") == "a red square in the top ."
    assert evaluate.cut_caption(" no end") == "no end"


def test_caption_attribute_scores_known_answer():
    from gato_jax.tasks import parse_shapes_caption

    ref = "a red circle in the top left and a blue cross in the centre ."
    assert parse_shapes_caption(ref) == [
        {"colour": "red", "shape": "circle", "place": "top left"},
        {"colour": "blue", "shape": "cross", "place": "centre"},
    ]
    for bad in ("a red circle in the top left", "a red blob in the top .", "the red circle ."):
        assert parse_shapes_caption(bad) is None
    gens = [
        "a red circle in the top and a blue cross in the centre .",  # one place wrong
        "a green square in the bottom .",  # first object right, second missing
        "nonsense",
    ]
    refs = [ref, "a green square in the bottom and a red cross in the right .", ref]
    s = evaluate.caption_attribute_scores(parse_shapes_caption, gens, refs)
    # 6 reference objects: colours right 2 + 1 + 0 = 3, shapes 3, places 1 + 1 + 0 = 2.
    assert s == pytest.approx(
        {"count": 1 / 3, "parsed": 2 / 3, "colour": 0.5, "shape": 0.5, "place": 2 / 6}
    )
    with pytest.raises(ValueError, match="outside the task's grammar"):
        evaluate.caption_attribute_scores(parse_shapes_caption, ["x"], ["not a caption"])
