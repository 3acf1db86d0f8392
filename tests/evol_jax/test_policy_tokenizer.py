"""Policy SentencePiece tokenizer: chat specials are single tokens, exact round trips."""

from __future__ import annotations

import numpy as np
import pytest

from evol_jax.chat import LLAMA2, render_conversation, render_text
from evol_jax.policy_data import tokenize_conversation
from evol_jax.policy_tokenizer import CHAT_SYMBOLS, PolicyTokenizer, train_policy_tokenizer
from evol_jax.text import default_model_path


def _conversation(rng, n_turns=3):
    moves = ["up", "down", "left", "right"]
    conv = [
        {"from": "human", "loss": None, "value": "You are in a maze.\nReply Ok."},
        {"from": "gpt", "loss": False, "value": "Ok."},
    ]
    for _ in range(n_turns):
        x, y = rng.integers(0, 13, 2)
        conv.append(
            {
                "from": "human",
                "loss": None,
                "value": f"Your current position is at position {x}, {y}. There are walls above.",
            }
        )
        move = rng.choice(moves)
        conv.append(
            {
                "from": "gpt",
                "loss": None,
                "value": f"Thought:\nI go {move}.\n\nAction:\nmove {move}",
            }
        )
    return conv


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    rng = np.random.default_rng(0)
    texts = [render_text(_conversation(rng), LLAMA2) for _ in range(60)]
    path = train_policy_tokenizer(texts, str(tmp_path_factory.mktemp("tok") / "policy"), 400)
    return PolicyTokenizer(path)


def test_chat_symbols_are_single_tokens(tok):
    ids = {s: tok.encode(s) for s in CHAT_SYMBOLS}
    assert all(len(v) == 1 for v in ids.values())
    assert len({v[0] for v in ids.values()}) == 4
    assert tok.bos_id == ids["<s>"][0] and tok.eos_id == ids["</s>"][0]
    assert tok.pad_id == 0 and tok.bos_id != 0
    text = "<s>[INST] Go. [/INST] Ok.</s>"
    enc = tok.encode(text)
    assert enc[0] == tok.bos_id and enc[1] == ids["[INST]"][0] and enc[-1] == tok.eos_id
    assert enc.count(ids["[/INST]"][0]) == 1
    # Near-misses are ordinary text, not the symbols.
    for near in ("INST", "[INST", "/INST]", "<s", "s>"):
        assert not set(tok.encode(near)) & {v[0] for v in ids.values()}


def test_round_trip_chat_text(tok):
    rng = np.random.default_rng(1)
    for _ in range(5):
        text = render_text(_conversation(rng, 4), LLAMA2)
        assert tok.decode(tok.encode(text)) == text
    odd = "<s>[INST] Café  日本\n\n  x [/INST]  Thought:\n\tmove 12345</s>"
    assert tok.decode(tok.encode(odd)) == odd  # byte fallback, double spaces, tabs, newlines


def test_segments_tokenise_like_the_whole_text(tok):
    rng = np.random.default_rng(2)
    conv = _conversation(rng, 3)
    tokens, mask = tokenize_conversation(conv, tok, LLAMA2)
    assert tokens.tolist() == tok.encode(render_text(conv, LLAMA2))
    loss_text = "".join(s for s, _, loss in render_conversation(conv, LLAMA2) if loss)
    assert tok.decode(tokens[mask]) == loss_text
    assert (tokens[mask] == tok.eos_id).sum() == 3


def test_encode_word_concatenates(tok):
    words = "There are walls above you at 12, 7.".split(" ")
    pieces = sum((tok.encode_word(w) for w in words), [])
    assert pieces == tok.encode(" " + " ".join(words))
    assert pieces == tok.encode("[INST] " + " ".join(words))[1:]
    with pytest.raises(ValueError, match="contains a space"):
        tok.encode_word("a b")


def test_errors(tmp_path):
    with pytest.raises(ValueError, match="no texts"):
        train_policy_tokenizer([], str(tmp_path / "x"))
    with pytest.raises(ValueError, match="vocab_size=100"):
        train_policy_tokenizer(["a b c"], str(tmp_path / "x"), vocab_size=100)
    with pytest.raises(FileNotFoundError):
        PolicyTokenizer(str(tmp_path / "missing.model"))
    # The environment tokenizer has no chat symbols: rejected with a clear message.
    with pytest.raises(ValueError, match="not a single user-defined token"):
        PolicyTokenizer(default_model_path())
