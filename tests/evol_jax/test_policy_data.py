"""BC data: loss masks (hand-written goldens), truncation counting, packing, resumable iteration."""

from __future__ import annotations

import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from core_jax.nn import Transformer, TransformerConfig
from evol_jax.chat import LLAMA2, Llama2Format, render_conversation
from evol_jax.hf_import import HFTokenizer
from evol_jax.policy_data import (
    Example,
    PackedBatchIterator,
    next_token_targets,
    pack_rows,
    tokenize_conversation,
    tokenize_records,
    unpack,
)
from tests.evol_jax.hf_testutil import make_tokenizer


class CharTokenizer:
    """One id per character; ``<s>`` = 1 and ``</s>`` = 2 are recognised as special tokens."""

    SPECIAL = {"<s>": 1, "</s>": 2}

    def encode(self, text: str) -> list[int]:
        ids = []
        for part in re.split(r"(<s>|</s>)", text):
            if part in self.SPECIAL:
                ids.append(self.SPECIAL[part])
            else:
                ids += [ord(c) for c in part]
        return ids


def _turn(role, value, loss=None):
    return {"from": role, "loss": loss, "value": value}


CONV = [
    _turn("human", "hi"),
    _turn("gpt", "Ok.", False),
    _turn("human", "go"),
    _turn("gpt", "up"),
]


def test_loss_mask_golden_llama2():
    tokens, mask = tokenize_conversation(CONV, CharTokenizer(), LLAMA2)
    # Written by hand: <s>[INST] hi [/INST] Ok.</s><s>[INST] go [/INST] up</s>
    text = "[INST] hi [/INST] Ok."
    expected = [1] + [ord(c) for c in text] + [2] + [1] + [ord(c) for c in "[INST] go [/INST] up"]
    expected += [2]
    assert tokens.tolist() == expected
    assert tokens.dtype == np.int32 and mask.dtype == bool
    # Loss exactly on " up</s>": the last 4 tokens (space, u, p, eos); "Ok." has loss false.
    assert np.nonzero(mask)[0].tolist() == list(range(len(expected) - 4, len(expected)))
    # Official null semantics: no loss at all here (the only loss-bearing turn has loss=null).
    _, mask_official = tokenize_conversation(CONV, CharTokenizer(), LLAMA2, null_loss="none")
    assert not mask_official.any()
    # loss=true on the "Ok." turn puts " Ok.</s>" (5 tokens) under loss too.
    conv = [CONV[0], dict(CONV[1], loss=True)] + CONV[2:]
    _, mask2 = tokenize_conversation(conv, CharTokenizer(), LLAMA2)
    ok_start = 1 + len("[INST] hi [/INST]")
    assert np.nonzero(mask2)[0].tolist()[:5] == list(range(ok_start, ok_start + 5))


def test_loss_mask_with_bpe_tokenizer(tmp_path):
    make_tokenizer(str(tmp_path))
    tok = HFTokenizer.from_dir(str(tmp_path))
    conv = [
        _turn("human", "Your goal: go to the red ball."),
        _turn("gpt", "Ok.", False),
        _turn("human", "There is a red ball 1 3 steps in front of you."),
        _turn("gpt", "Thought:\nI should move forward.\n\nAction:\nmove forward", True),
        _turn("human", "You are facing a wall 2 steps away."),
        _turn("gpt", "Thought:\nThe door is locked.\n\nAction:\nturn left"),
    ]
    tokens, mask = tokenize_conversation(conv, tok, LLAMA2)
    assert tok.decode(tokens) == "".join(s for s, _, _ in render_conversation(conv, LLAMA2))
    loss_text = "".join(" " + t["value"] + "</s>" for t in conv[3::2])
    assert tok.decode(tokens[mask]) == loss_text
    # Every assistant turn with loss ends in EOS under loss; BOS is never a target.
    assert (tokens[mask] == tok.eos_id).sum() == 2
    assert not mask[tokens == tok.bos_id].any()
    assert mask[-1] and tokens[-1] == tok.eos_id


def _records(lengths_words, seed=0):
    rng = np.random.default_rng(seed)
    recs = []
    for i, n in enumerate(lengths_words):
        words = " ".join(rng.choice(["left", "right", "up", "down"], n))
        recs.append(
            {
                "item_id": f"maze_{i}",
                "conversations": [_turn("human", f"obs {i}"), _turn("gpt", words)],
            }
        )
    return recs


def test_truncation_sides_and_counting():
    recs = _records([1, 30, 2, 50])
    tok = CharTokenizer()
    full, stats = tokenize_records(recs, tok, max_len=10_000)
    assert stats.num_truncated == 0 and stats.num_examples == 4
    lengths = [len(e) for e in full]
    max_len = 60
    n_long = sum(n > max_len for n in lengths)
    assert n_long == 2

    right, st = tokenize_records(recs, tok, max_len=max_len, truncation="right")
    assert st.num_truncated == n_long and st.num_dropped == 0
    assert st.num_tokens_cut == sum(max(0, n - max_len) for n in lengths)
    assert st.max_untruncated_len == max(lengths)
    for f, r in zip(full, right, strict=True):
        np.testing.assert_array_equal(r.tokens, f.tokens[:max_len])
        np.testing.assert_array_equal(r.loss_mask, f.loss_mask[:max_len])
        assert r.truncated == (len(f) > max_len)

    left, st = tokenize_records(recs, tok, max_len=max_len, truncation="left")
    assert st.num_truncated == n_long
    for f, r in zip(full, left, strict=True):
        np.testing.assert_array_equal(r.tokens, f.tokens[-max_len:])
        assert r.tokens[-1] == 2 and r.loss_mask[-1]  # the final EOS survives a left cut

    dropped, st = tokenize_records(recs, tok, max_len=max_len, truncation="drop")
    assert st.num_dropped == n_long and st.num_examples == 4 - n_long
    assert [e.item_id for e in dropped] == [e.item_id for e in full if len(e) <= max_len]

    with pytest.raises(ValueError, match="maze_1.*> max_len=60"):
        tokenize_records(recs, tok, max_len=max_len, truncation="error")
    with pytest.raises(ValueError, match="truncation"):
        tokenize_records(recs, tok, truncation="middle")


def test_record_errors_name_the_record():
    bad = _records([1, 2])
    bad[1]["conversations"][1]["from"] = "robot"
    with pytest.raises(ValueError, match=r"record 1 \(item_id='maze_1'\).*'robot'"):
        tokenize_records(bad, CharTokenizer())
    with pytest.raises(ValueError, match="no 'conversations'"):
        tokenize_records([{"item_id": "x"}], CharTokenizer())
    with pytest.raises(ValueError, match="vocab 50"):
        tokenize_records(_records([1]), CharTokenizer(), vocab_size=50)
    with pytest.raises(ValueError, match="2 weights for 1 records"):
        tokenize_records(_records([1]), CharTokenizer(), weights=[1.0, 2.0])


def _examples(n, seed=0, max_len=40):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        k = int(rng.integers(3, max_len + 1))
        out.append(
            Example(
                f"ex{i}",
                rng.integers(3, 100, k).astype(np.int32),
                rng.random(k) < 0.5,
                weight=float(i + 1),
            )
        )
    return out


def test_packing_round_trip_and_layout():
    examples = _examples(23)
    it = PackedBatchIterator(examples, batch_size=3, seq_len=64, shuffle=False, num_epochs=1)
    batches = list(it)
    seen = []
    for batch in batches:
        assert all(batch[k].shape == (3, 64) for k in batch)
        for r, row in enumerate(unpack(batch)):
            seg = batch["segment_ids"][r]
            for s, (tokens, mask) in enumerate(row, start=1):
                idx = np.nonzero(seg == s)[0]
                assert idx.tolist() == list(range(idx[0], idx[0] + len(idx)))  # contiguous
                assert batch["positions"][r, idx].tolist() == list(range(len(idx)))
                seen.append((tokens, mask))
            pad = seg == 0
            assert (batch["tokens"][r, pad] == 0).all() and not batch["loss_mask"][r, pad].any()
            assert np.nonzero(~pad)[0].max(initial=-1) < np.nonzero(pad)[0].min(initial=64)
    assert len(seen) == len(examples)
    for ex, (tokens, mask) in zip(examples, seen, strict=True):
        np.testing.assert_array_equal(tokens, ex.tokens)
        np.testing.assert_array_equal(mask, ex.loss_mask)
    # Weights: the example weight on its loss tokens.
    b0 = batches[0]
    first = examples[0]
    np.testing.assert_array_equal(b0["weights"][0, : len(first)], first.loss_mask * first.weight)
    # Packing fills rows: more than one example per row on average.
    assert len(batches) * 3 < len(examples)
    unpacked = list(
        PackedBatchIterator(examples, batch_size=3, seq_len=64, pack=False, num_epochs=1)
    )
    assert len(unpacked) == 8  # ceil(23 / 3)
    assert all(int(b["segment_ids"].max()) == 1 for b in unpacked)


def test_next_token_targets_respect_segments():
    a = Example("a", np.array([5, 6, 7], np.int32), np.array([False, True, True]))
    b = Example("b", np.array([8, 9], np.int32), np.array([True, True]))
    batch = pack_rows([[a, b]], seq_len=7)
    targets, weights = next_token_targets(batch)
    assert targets.tolist() == [[6, 7, 8, 9, 0, 0, 0]]
    # Position 2 (last of a) must not learn b's first token; b's first token is no target.
    assert weights.tolist() == [[1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0]]
    fn = jax.jit(chex.assert_max_traces(next_token_targets, n=1))
    jt, jw = fn({k: jnp.asarray(v) for k, v in batch.items()})
    np.testing.assert_array_equal(np.asarray(jt), targets)
    np.testing.assert_array_equal(np.asarray(jw), weights)
    other = pack_rows([[b, a]], seq_len=7)
    jt, jw = fn({k: jnp.asarray(v) for k, v in other.items()})  # same shapes: no retrace
    assert np.asarray(jw).tolist() == [[1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0]]


def test_packed_logits_equal_unpacked():
    """Transformer with segment_ids + positions on a packed row == each example alone."""
    cfg = TransformerConfig(
        vocab_size=100, d_model=32, num_layers=1, num_heads=4, mlp_dim=64, mlp="swiglu"
    )
    model = Transformer(cfg)
    examples = _examples(6, seed=1, max_len=20)
    batch = next(PackedBatchIterator(examples, batch_size=2, seq_len=48, shuffle=False))
    params = model.init(jax.random.key(0), jnp.asarray(batch["tokens"]))["params"]
    apply = jax.jit(model.apply)
    logits = apply(
        {"params": params},
        jnp.asarray(batch["tokens"]),
        segment_ids=jnp.asarray(batch["segment_ids"]),
        positions=jnp.asarray(batch["positions"]),
    )
    # Each example alone, right-padded into one batch (causal: padding never affects the prefix).
    rows = [(r, np.nonzero(batch["segment_ids"][r] == s)[0]) for r, s in _segments(batch)]
    alone = np.zeros((len(rows), 20), np.int32)
    for i, (r, idx) in enumerate(rows):
        alone[i, : len(idx)] = batch["tokens"][r, idx]
    ref = apply({"params": params}, jnp.asarray(alone))
    assert len(rows) >= 3
    for i, (r, idx) in enumerate(rows):
        np.testing.assert_allclose(logits[r, idx], ref[i, : len(idx)], atol=1e-5)


def _segments(batch):
    for r in range(batch["segment_ids"].shape[0]):
        for s in range(1, int(batch["segment_ids"][r].max()) + 1):
            yield r, s


def test_iterator_is_deterministic_and_resumable():
    examples = _examples(17, seed=2)

    def make():
        return PackedBatchIterator(examples, batch_size=2, seq_len=50, seed=7)

    it = make()
    run = [next(it) for _ in range(12)]  # crosses several epochs
    it = make()
    for _ in range(5):
        next(it)
    state = it.state()
    resumed = make()
    resumed.restore(state)
    for expected in run[5:]:
        got = next(resumed)
        for k in expected:
            np.testing.assert_array_equal(got[k], expected[k])
    # Epochs are shuffled differently, and another seed gives another order.
    e0 = [ex.item_id for ex in examples]
    other = PackedBatchIterator(examples, batch_size=2, seq_len=50, seed=8)
    assert not np.array_equal(next(other)["tokens"], run[0]["tokens"])
    assert len(e0) == 17
    with pytest.raises(ValueError, match="seed=7"):
        other.restore(state)


def test_finite_epochs_cover_everything_once():
    examples = _examples(11, seed=3)
    it = PackedBatchIterator(examples, batch_size=2, seq_len=45, seed=0, num_epochs=2)
    batches = list(it)
    n = sum(int(b["segment_ids"].max(axis=1).sum()) for b in batches)
    assert n == 22
    with pytest.raises(StopIteration):
        next(it)
    it = PackedBatchIterator(examples, batch_size=2, seq_len=45, num_epochs=1, drop_remainder=True)
    assert all((b["segment_ids"].max(axis=1) > 0).all() for b in it)


def test_iterator_errors():
    ex = _examples(3, max_len=40)
    with pytest.raises(ValueError, match="longer than seq_len=10"):
        PackedBatchIterator(ex, batch_size=1, seq_len=10)
    with pytest.raises(ValueError, match="no examples"):
        PackedBatchIterator([], batch_size=1, seq_len=10)


def test_official_spacing_option():
    fmt = Llama2Format(assistant_space=False)
    tokens, mask = tokenize_conversation(CONV[:2], CharTokenizer(), fmt)
    assert tokens[mask].tolist() == []  # "Ok." has loss false
    tokens, mask = tokenize_conversation(CONV, CharTokenizer(), fmt)
    assert tokens[mask].tolist() == [ord("u"), ord("p"), 2]
