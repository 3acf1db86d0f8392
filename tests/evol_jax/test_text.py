"""evol_jax.text: word-level expansion on device equals SentencePiece on the whole string."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from evol_jax.text import TextCodec, concat_segments, expand_words, words_to_text


@pytest.fixture(scope="module")
def codec():
    return TextCodec()


def _random_text(rng):
    vocab = [
        "There",
        "is",
        "a",
        "red",
        "ball",
        "3,",
        "6.\nYour",
        "",
        "wall",
        "é",
        "g\n",
        "x:y",
        "12",
    ]
    n = rng.integers(1, 25)
    return " ".join(vocab[i] for i in rng.integers(0, len(vocab), n))


def test_expand_equals_full_encode(codec):
    rng = np.random.default_rng(0)
    expand = jax.jit(expand_words, static_argnums=3)
    for _ in range(50):
        text = _random_text(rng)
        words = text.split(" ")
        vocab = sorted(set(words))
        table = codec.word_table(vocab, max_pieces=8)
        index = {w: i for i, w in enumerate(vocab)}
        ids = jnp.array([index[w] for w in words] + [0] * (30 - len(words)))
        tokens, mask, overflow = expand(ids, len(words), table, 256)
        assert not bool(overflow)
        assert list(np.asarray(tokens)[np.asarray(mask)]) == codec.encode(text)
        assert codec.decode(np.asarray(tokens)[np.asarray(mask)]) == text
        assert words_to_text(vocab, ids, len(words)) == text


def test_overflow_flag(codec):
    words = ["alpha", "beta", "gamma"]
    table = codec.word_table(words)
    tokens, mask, overflow = expand_words(jnp.array([0, 1, 2]), 3, table, 2)
    assert bool(overflow) and bool(mask.all())


def test_concat_segments():
    out, n, over = concat_segments([(jnp.array([5, 6, 7]), 2), (jnp.array([8, 9]), 1)], 5)
    assert list(np.asarray(out)[: int(n)]) == [5, 6, 8] and not bool(over)
    out, n, over = concat_segments([(jnp.array([5, 6, 7]), 3), (jnp.array([8, 9]), 2)], 4)
    assert int(n) == 4 and bool(over)


def test_word_with_space_rejected(codec):
    with pytest.raises(ValueError, match="contains a space"):
        codec.word_table(["two words"])


def test_missing_model_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer model not found"):
        TextCodec(str(tmp_path / "nope.model"))
