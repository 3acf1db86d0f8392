"""SentencePiece tokenizer for policies trained from scratch, with the Llama-2 chat specials.

The trainer settings are those of the environment tokenizer (:data:`evol_jax.text.TRAINER_OPTIONS`:
unigram, byte fallback so every character is encodable, identity normalisation, whitespace kept
byte-exact, digits split), with two changes for chat text:

* ``<s>``, ``</s>``, ``[INST]`` and ``[/INST]`` are user-defined symbols: each is always exactly
  one token wherever it appears in the text (never split, never merged with neighbours), and
  ``<s>`` / ``</s>`` are the BOS / EOS ids.
* no dummy prefix: ``encode`` does not prepend ``"▁"``, so ``decode(encode(t)) == t`` and the
  segments of :func:`evol_jax.chat.render_conversation` tokenise to the same ids separately as
  together (every segment boundary of the Llama-2 format falls on a special symbol or before a
  space, where SentencePiece pieces always break).

A word that follows a space (every word of an observation inside ``[INST] ... [/INST]``) encodes
as :meth:`PolicyTokenizer.encode_word`, i.e. ``encode(" " + word)``; word tables for on-device text
built from it concatenate to the tokenisation of the whole text.

>>> path = train_policy_tokenizer(texts, "/tmp/policy", vocab_size=1000)   # doctest: +SKIP
>>> tok = PolicyTokenizer(path)                                            # doctest: +SKIP
>>> tok.decode(tok.encode("<s>[INST] Go. [/INST] Ok.</s>"))                # doctest: +SKIP
'<s>[INST] Go. [/INST] Ok.</s>'
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from evol_jax.text import TRAINER_OPTIONS

CHAT_SYMBOLS = ("<s>", "</s>", "[INST]", "[/INST]")
PAD_ID = 0


def trainer_options(extra_symbols: Sequence[str] = ()) -> dict:
    """SentencePiece trainer options of the policy tokenizer (see the module docstring)."""
    symbols = list(CHAT_SYMBOLS) + ["\n"] + [s for s in extra_symbols if s not in CHAT_SYMBOLS]
    opts = dict(TRAINER_OPTIONS)
    opts.update(user_defined_symbols=symbols, add_dummy_prefix=False)
    return opts


def train_policy_tokenizer(
    texts: Sequence[str],
    model_prefix: str,
    vocab_size: int = 4000,
    extra_symbols: Sequence[str] = (),
) -> str:
    """Trains the policy tokenizer on ``texts`` (e.g. chat-formatted AgentTraj conversations).

    Args:
      texts: training texts; newlines are kept (a user-defined symbol).
      model_prefix: output path without extension.
      vocab_size: target size (a soft limit; byte-fallback pieces take 256 ids).
      extra_symbols: more strings to keep as single tokens (e.g. ``"Thought:"``).

    Returns:
      Path of the ``.model`` file.
    """
    import sentencepiece as spm

    if not texts:
        raise ValueError("train_policy_tokenizer: no texts given")
    if any(not isinstance(t, str) for t in texts):
        raise ValueError("train_policy_tokenizer: texts must be strings")
    min_size = 256 + len(CHAT_SYMBOLS) + 3 + len(extra_symbols)
    if vocab_size <= min_size:
        raise ValueError(f"vocab_size={vocab_size} must exceed {min_size} (256 byte pieces etc.)")
    d = os.path.dirname(model_prefix)
    if d:
        os.makedirs(d, exist_ok=True)
    # One sentence per line for the trainer; newlines inside texts survive as the "\n" symbol.
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter([t.replace("\n", " \n ") for t in texts]),
        model_prefix=model_prefix,
        vocab_size=vocab_size,
        **trainer_options(extra_symbols),
    )
    return model_prefix + ".model"


class PolicyTokenizer:
    """Host side of the policy tokenizer; same interface as :class:`evol_jax.hf_import.HFTokenizer`.

    Args:
      model_file: a ``.model`` from :func:`train_policy_tokenizer`.
    """

    bos_token, eos_token, pad_token, unk_token = "<s>", "</s>", None, None
    chat_template = None

    def __init__(self, model_file: str):
        import sentencepiece as spm

        if not os.path.exists(model_file):
            raise FileNotFoundError(f"PolicyTokenizer: model not found: {model_file}")
        self.model_file = model_file
        self.sp = spm.SentencePieceProcessor(model_file=model_file)
        for sym in CHAT_SYMBOLS:
            pid = self.sp.piece_to_id(sym)
            if pid == self.sp.unk_id() or self.sp.encode(sym) != [pid]:
                raise ValueError(
                    f"{model_file}: {sym!r} is not a single user-defined token; train the model "
                    "with train_policy_tokenizer"
                )
        if self.sp.id_to_piece(self.sp.encode("a")[0]).startswith("▁"):
            raise ValueError(f"{model_file}: trained with a dummy prefix (add_dummy_prefix=False)")

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    @property
    def bos_id(self) -> int:
        return self.sp.piece_to_id("<s>")

    @property
    def eos_id(self) -> int:
        return self.sp.piece_to_id("</s>")

    @property
    def pad_id(self) -> int:
        return PAD_ID

    @property
    def special_tokens_map(self) -> dict[str, str]:
        return {"bos_token": self.bos_token, "eos_token": self.eos_token}

    def token_to_id(self, token: str) -> int | None:
        pid = self.sp.piece_to_id(token)
        return None if pid == self.sp.unk_id() and token != self.sp.id_to_piece(pid) else pid

    def encode(self, text: str) -> list[int]:
        """Text -> ids; chat symbols in the text become their single ids, nothing is added."""
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}")
        return list(self.sp.encode(text))

    def encode_word(self, word: str) -> list[int]:
        """Ids of ``word`` as it appears after a space (for on-device word tables)."""
        if " " in word:
            raise ValueError(f"encode_word: {word!r} contains a space")
        return list(self.sp.encode(" " + word))

    def decode(self, ids) -> str:
        ids = [int(i) for i in np.asarray(ids).reshape(-1)]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"decode: ids outside [0, {self.vocab_size}): {bad[:5]}")
        return self.sp.decode(ids)
