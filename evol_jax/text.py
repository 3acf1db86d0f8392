"""Text on device: observations as token ids built inside jit from pre-tokenised words.

The environments' tokenizer is a SentencePiece model trained with ``split_by_whitespace`` (the
default), ``identity`` normalisation and ``remove_extra_whitespaces=False``. Under those settings
SentencePiece never builds a piece across a space, so the encoding of a text equals the
concatenation of the
encodings of its space-separated words (an empty word, i.e. a double space, encodes as one ``"▁"``).
Environments therefore describe an observation as a fixed-length vector of *word ids* into a static
word list (templates and slot values: "There", "is", "a", "red", "ball", "3", ...), and
`expand_words` turns word ids into token ids on device with one gather and one scatter. The host
string is ``" ".join(words)``, so ``codec.decode(tokens) == text`` and
``codec.encode(text) == tokens`` hold exactly (tested).

>>> codec = TextCodec()                                   # the shipped environment tokenizer
>>> table = codec.word_table(["You", "are", "at", "3,", "4."])
>>> tokens, mask, overflow = expand_words(jnp.array([0, 1, 2, 3, 4]), 5, table, max_len=32)
>>> codec.decode(tokens[mask]) == "You are at 3, 4."
True
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

_ASSET = os.path.join(os.path.dirname(__file__), "assets", "envtext.model")
PAD_ID = 0

TRAINER_OPTIONS = dict(
    model_type="unigram",
    byte_fallback=True,  # every character is encodable, even ones never seen in training
    normalization_rule_name="identity",  # keep text byte-exact (AgentGym strings round-trip)
    remove_extra_whitespaces=False,
    split_digits=True,
    character_coverage=1.0,
    user_defined_symbols=["\n"],
    pad_id=0,
    unk_id=1,
    bos_id=-1,
    eos_id=-1,
    hard_vocab_limit=False,
    minloglevel=2,
)


def default_model_path() -> str:
    """Path of the SentencePiece model shipped in ``evol_jax/assets``."""
    return _ASSET


# SentencePiece skips longer training sentences (default limit 4192 bytes); Wordle's first prompt
# lists the whole vocabulary in one text.
_MAX_SENTENCE_BYTES = 1 << 16


def train_tokenizer(texts: Sequence[str], model_prefix: str, vocab_size: int = 2000) -> str:
    """Trains an environment tokenizer on ``texts``; returns the ``.model`` path.

    Newlines inside a text are kept (a user-defined symbol); one text per training sentence.
    Deterministic: every sentence is used in the given order (no sampling or shuffling), one
    training thread and a fixed random seed, so the same texts give a byte-identical model
    (`evol_jax.envtext_corpus` builds the shipped one).

    Raises:
      ValueError: no texts, a non-string text, ``vocab_size`` too small for the byte pieces and
        the texts' characters, or a text longer than
        SentencePiece's sentence limit (it would be skipped silently; split it at newlines).
    """
    import sentencepiece as spm

    if not texts:
        raise ValueError("train_tokenizer: no texts given")
    bad = [type(t).__name__ for t in texts if not isinstance(t, str)]
    if bad:
        raise ValueError(f"train_tokenizer: texts must be strings, got {bad[:3]}")
    # every byte piece, <pad>, <unk>, "\n", "▁" and every character seen (character_coverage=1.0)
    required = 256 + 4 + len(set("".join(texts)) - {"\n", " "})
    if int(vocab_size) < required:
        raise ValueError(
            f"train_tokenizer: vocab_size={vocab_size} is below the {required} pieces the "
            "byte fallback, the special pieces and the texts' characters need"
        )
    sentences = [t.replace("\n", " \n ") for t in texts]
    too_long = [s for s in sentences if len(s.encode("utf-8")) > _MAX_SENTENCE_BYTES]
    if too_long:
        raise ValueError(
            f"train_tokenizer: {len(too_long)} texts longer than {_MAX_SENTENCE_BYTES} bytes "
            f"(SentencePiece would skip them), e.g. {too_long[0][:60]!r}...; split them at newlines"
        )
    spm.set_random_generator_seed(0)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_prefix=model_prefix,
        vocab_size=int(vocab_size),
        num_threads=1,
        input_sentence_size=0,  # every sentence, no sampling
        shuffle_input_sentence=False,
        max_sentence_length=_MAX_SENTENCE_BYTES,
        **TRAINER_OPTIONS,
    )
    # The model records its output prefix; keep only the file name so that the bytes do not
    # depend on the directory it was trained in.
    from sentencepiece import sentencepiece_model_pb2

    path = model_prefix + ".model"
    proto = sentencepiece_model_pb2.ModelProto()
    with open(path, "rb") as f:
        proto.ParseFromString(f.read())
    proto.trainer_spec.model_prefix = os.path.basename(model_prefix)
    with open(path, "wb") as f:
        f.write(proto.SerializeToString())
    return path


@flax.struct.dataclass
class WordTable:
    """Token ids of a static word list, padded: ``pieces[w, :lengths[w]]`` encodes word ``w``."""

    pieces: jax.Array  # int32 [num_words, max_pieces]
    lengths: jax.Array  # int32 [num_words]

    @property
    def num_words(self) -> int:
        return self.pieces.shape[0]


class TextCodec:
    """Host side of the environment tokenizer (SentencePiece)."""

    def __init__(self, model_file: str | None = None):
        import sentencepiece as spm

        path = model_file or _ASSET
        if not os.path.exists(path):
            raise FileNotFoundError(f"TextCodec: tokenizer model not found: {path}")
        self.model_file = path
        self.sp = spm.SentencePieceProcessor(model_file=path)
        self._space = self.sp.encode(" ")[-1:]  # the lone "▁" an empty word stands for

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        return list(self.sp.encode(text))

    def decode(self, ids) -> str:
        return self.sp.decode([int(i) for i in np.asarray(ids).reshape(-1)])

    def encode_word(self, word: str) -> list[int]:
        if " " in word:
            raise ValueError(f"TextCodec.encode_word: {word!r} contains a space; split it first")
        return list(self.sp.encode(word)) if word else list(self._space)

    def word_table(self, words: Sequence[str], max_pieces: int | None = None) -> WordTable:
        """Pre-tokenises ``words`` (no spaces inside any word) into a device table."""
        enc = [self.encode_word(w) for w in words]
        width = max(1, max(len(e) for e in enc)) if enc else 1
        if max_pieces is not None:
            too_long = [w for w, e in zip(words, enc, strict=True) if len(e) > max_pieces]
            if too_long:
                raise ValueError(
                    f"word_table: words longer than {max_pieces} pieces: {too_long[:5]}"
                )
            width = max_pieces
        pieces = np.full((len(enc), width), PAD_ID, np.int32)
        for i, e in enumerate(enc):
            pieces[i, : len(e)] = e
        lengths = np.array([len(e) for e in enc], np.int32)
        return WordTable(pieces=jnp.asarray(pieces), lengths=jnp.asarray(lengths))


def expand_words(
    word_ids: jax.Array, num_words: jax.Array | int, table: WordTable, max_len: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Word ids -> token ids, on device, fixed shapes.

    Args:
      word_ids: int32 [N] ids into ``table``; entries at or after ``num_words`` are ignored.
      num_words: number of valid words (scalar, may be traced).
      table: the pre-tokenised word list.
      max_len: length of the returned token buffer.

    Returns:
      ``(tokens int32 [max_len], mask bool [max_len], overflow bool [])``; tokens past the text are
      ``PAD_ID`` and ``overflow`` says the text did not fit (it is then cut at ``max_len``).
    """
    n = word_ids.shape[0]
    valid = jnp.arange(n) < num_words
    lengths = jnp.where(valid, table.lengths[word_ids], 0)
    ends = jnp.cumsum(lengths)
    starts = ends - lengths
    total = ends[-1] if n else jnp.int32(0)
    p = table.pieces.shape[1]
    pos = starts[:, None] + jnp.arange(p)[None, :]
    keep = jnp.arange(p)[None, :] < lengths[:, None]
    pos = jnp.where(keep, pos, max_len)  # out of range -> dropped
    tokens = jnp.full((max_len,), PAD_ID, jnp.int32)
    tokens = tokens.at[pos.reshape(-1)].set(table.pieces[word_ids].reshape(-1), mode="drop")
    mask = jnp.arange(max_len) < total
    return tokens, mask, total > max_len


def concat_segments(segments: Sequence[tuple[jax.Array, jax.Array | int]], max_words: int):
    """Concatenates variable-length word-id segments into one fixed buffer, on device.

    Args:
      segments: ``(ids [Pi], n_i)`` pairs; only the first ``n_i`` ids of each are used.
      max_words: length of the returned buffer.

    Returns:
      ``(word_ids int32 [max_words], num_words int32 [], overflow bool [])``.
    """
    out = jnp.zeros((max_words,), jnp.int32)
    offset = jnp.int32(0)
    for ids, n in segments:
        ids = jnp.asarray(ids, jnp.int32)
        k = ids.shape[0]
        idx = offset + jnp.arange(k)
        idx = jnp.where(jnp.arange(k) < n, idx, max_words)
        out = out.at[idx].set(ids, mode="drop")
        offset = offset + jnp.asarray(n, jnp.int32)
    return out, jnp.minimum(offset, max_words), offset > max_words


def words_to_text(words: Sequence[str], word_ids, num_words) -> str:
    """Host renderer for a word-id vector: the exact string `expand_words` tokenises."""
    ids = np.asarray(word_ids)[: int(num_words)]
    return " ".join(words[int(i)] for i in ids)
