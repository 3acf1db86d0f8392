"""LMRL-Gym's Wordle as served by AgentGym (``/wordle/*``), pure JAX.

The game keeps no fixed hidden word. It keeps a letter-knowledge state, for each letter and each
of the 5 positions one of NOT_HERE / POSSIBLE / HERE. At every valid guess it samples a hidden
word among the vocabulary words still consistent with that state (``rng.choice`` over them, in
vocabulary order), updates the state from (guess, sampled word), and answers from the *updated
state*: per guessed letter ``g`` if that letter is known HERE at that position, else ``b`` if the
letter is known absent everywhere, else ``y``. Consequently a letter guessed twice when the word
has it once gets ``y`` twice. The reply is ``"b y g b b\\n"`` (trailing newline). The game is
solved (reward 1, done) when exactly one consistent word is left and it has been guessed. A
string that is not 5 letters a-z of the vocabulary (after ``strip()`` and removing spaces, so
"p a n i c" and "panic" are the same guess) gets ``"invalid word"``, reward 0, leaves the
knowledge unchanged and does not draw from the rng. Six actions, invalid ones included, end the
game. The first observation is ``"Let's start Wordle!"``.

Actions: id ``i`` guesses ``vocab[i]`` (text ``"p a n i c"``); ``-1`` (`INVALID_ACTION`) is an
invalid string.

Randomness (``agentgym_compat``):

* ``True``: ``idx`` is AgentGym's ``seed`` and the draws are exactly Python's
  ``random.Random(seed).choice`` (MT19937 seeded by ``init_by_array``, ``_randbelow`` by rejection
  on ``getrandbits``), computed on device: `mt_outputs` produces the first 624 outputs at reset and
  each draw consumes them as CPython does. 624 outputs cover any game with overwhelming margin
  (each draw needs about 1.4 outputs); past them the draw repeats the last output.
* ``False`` (default): draws come from a JAX PRNG key, ``fold_in(key, idx)`` at reset.

The vocabulary is the built-in `BUILTIN_VOCAB` (477 common English words written for this
package) or a user file with one word a line (upstream's ``Vocabulary.from_file``: lines are
stripped and only 5-character ones kept; their order matters because draws index into it).

Source: LMRL-Gym (MIT, Copyright (c) 2022 Charlie Snell) ``llm_rl_scripts/wordle/env``; AgentGym
(MIT, Copyright (c) 2023 FudanNLP-Agent) ``agentenv-lmrlgym/agentenv_lmrlgym/wordle``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from evol_jax.envs.base import (
    INVALID_ACTION,  # noqa: F401  (re-exported: tests, users)
    Env,
    InvalidAction,
    TimeStep,
    packed_mask,
    register,
    select_packed,
)
from evol_jax.text import TextCodec, expand_words

N_CHARS = 5
N_TRIES = 6
ALPHABET = "abcdefghijklmnopqrstuvwxyz"
NOT_HERE, POSSIBLE, HERE = 0, 1, 2
INVALID_TEXT = "invalid word"
START_TEXT = "Let's start Wordle!"

BUILTIN_VOCAB = (
    "about",
    "above",
    "abuse",
    "actor",
    "acute",
    "admit",
    "adopt",
    "adult",
    "after",
    "again",
    "agent",
    "agree",
    "ahead",
    "alarm",
    "album",
    "alert",
    "alike",
    "alive",
    "allow",
    "alone",
    "along",
    "alter",
    "among",
    "anger",
    "angle",
    "angry",
    "apart",
    "apple",
    "apply",
    "arena",
    "argue",
    "arise",
    "array",
    "aside",
    "asset",
    "audio",
    "avoid",
    "award",
    "aware",
    "badly",
    "baker",
    "basic",
    "beach",
    "began",
    "begin",
    "being",
    "below",
    "bench",
    "birth",
    "black",
    "blade",
    "blame",
    "blank",
    "blind",
    "block",
    "blood",
    "board",
    "boost",
    "booth",
    "bound",
    "brain",
    "brand",
    "bread",
    "break",
    "breed",
    "brief",
    "bring",
    "broad",
    "broke",
    "brown",
    "build",
    "built",
    "buyer",
    "cable",
    "carry",
    "catch",
    "cause",
    "chain",
    "chair",
    "chart",
    "chase",
    "cheap",
    "check",
    "chest",
    "chief",
    "child",
    "china",
    "chose",
    "civil",
    "claim",
    "class",
    "clean",
    "clear",
    "climb",
    "clock",
    "close",
    "cloud",
    "coach",
    "coast",
    "could",
    "count",
    "court",
    "cover",
    "craft",
    "crash",
    "cream",
    "crime",
    "cross",
    "crowd",
    "crown",
    "curve",
    "cycle",
    "daily",
    "dance",
    "dated",
    "dealt",
    "death",
    "debut",
    "delay",
    "depth",
    "doing",
    "doubt",
    "dozen",
    "draft",
    "drama",
    "drawn",
    "dream",
    "dress",
    "drill",
    "drink",
    "drive",
    "drove",
    "dying",
    "eager",
    "early",
    "earth",
    "eight",
    "elite",
    "empty",
    "enemy",
    "enjoy",
    "enter",
    "entry",
    "equal",
    "error",
    "event",
    "every",
    "exact",
    "exist",
    "extra",
    "faith",
    "false",
    "fault",
    "field",
    "fifth",
    "fifty",
    "fight",
    "final",
    "first",
    "fixed",
    "flash",
    "fleet",
    "floor",
    "fluid",
    "focus",
    "force",
    "forth",
    "forty",
    "forum",
    "found",
    "frame",
    "frank",
    "fraud",
    "fresh",
    "front",
    "fruit",
    "fully",
    "funny",
    "giant",
    "given",
    "glass",
    "globe",
    "going",
    "grace",
    "grade",
    "grand",
    "grant",
    "grass",
    "great",
    "green",
    "gross",
    "group",
    "grown",
    "guard",
    "guess",
    "guest",
    "guide",
    "happy",
    "heart",
    "heavy",
    "hence",
    "horse",
    "hotel",
    "house",
    "human",
    "ideal",
    "image",
    "index",
    "inner",
    "input",
    "issue",
    "joint",
    "judge",
    "known",
    "label",
    "large",
    "laser",
    "later",
    "laugh",
    "layer",
    "learn",
    "lease",
    "least",
    "leave",
    "legal",
    "level",
    "light",
    "limit",
    "local",
    "logic",
    "loose",
    "lower",
    "lucky",
    "lunch",
    "major",
    "maker",
    "march",
    "match",
    "maybe",
    "mayor",
    "meant",
    "media",
    "metal",
    "might",
    "minor",
    "minus",
    "mixed",
    "model",
    "money",
    "month",
    "moral",
    "motor",
    "mount",
    "mouse",
    "mouth",
    "movie",
    "music",
    "needs",
    "never",
    "newly",
    "night",
    "noise",
    "north",
    "noted",
    "novel",
    "nurse",
    "occur",
    "ocean",
    "offer",
    "often",
    "order",
    "other",
    "ought",
    "paint",
    "panel",
    "paper",
    "party",
    "peace",
    "phase",
    "phone",
    "photo",
    "piece",
    "pilot",
    "pitch",
    "place",
    "plain",
    "plane",
    "plant",
    "plate",
    "point",
    "pound",
    "power",
    "press",
    "price",
    "pride",
    "prime",
    "print",
    "prior",
    "prize",
    "proof",
    "proud",
    "prove",
    "queen",
    "quick",
    "quiet",
    "quite",
    "radio",
    "raise",
    "range",
    "rapid",
    "ratio",
    "reach",
    "ready",
    "refer",
    "right",
    "rival",
    "river",
    "rough",
    "round",
    "route",
    "royal",
    "rural",
    "scale",
    "scene",
    "scope",
    "score",
    "sense",
    "serve",
    "seven",
    "shall",
    "shape",
    "share",
    "sharp",
    "sheet",
    "shelf",
    "shell",
    "shift",
    "shirt",
    "shock",
    "shoot",
    "short",
    "shown",
    "sight",
    "since",
    "sixth",
    "sixty",
    "sized",
    "skill",
    "sleep",
    "slide",
    "small",
    "smart",
    "smile",
    "smith",
    "smoke",
    "solid",
    "solve",
    "sorry",
    "sound",
    "south",
    "space",
    "spare",
    "speak",
    "speed",
    "spend",
    "spent",
    "split",
    "spoke",
    "sport",
    "staff",
    "stage",
    "stake",
    "stand",
    "start",
    "state",
    "steam",
    "steel",
    "stick",
    "still",
    "stock",
    "stone",
    "stood",
    "store",
    "storm",
    "story",
    "strip",
    "stuck",
    "study",
    "stuff",
    "style",
    "sugar",
    "suite",
    "super",
    "sweet",
    "table",
    "taken",
    "taste",
    "teach",
    "teeth",
    "thank",
    "theft",
    "their",
    "theme",
    "there",
    "these",
    "thick",
    "thing",
    "think",
    "third",
    "those",
    "three",
    "threw",
    "throw",
    "tight",
    "times",
    "tired",
    "title",
    "today",
    "topic",
    "total",
    "touch",
    "tough",
    "tower",
    "track",
    "trade",
    "train",
    "treat",
    "trend",
    "trial",
    "tried",
    "tries",
    "truck",
    "truly",
    "trust",
    "truth",
    "twice",
    "under",
    "union",
    "unity",
    "until",
    "upper",
    "upset",
    "urban",
    "usage",
    "usual",
    "valid",
    "value",
    "video",
    "virus",
    "visit",
    "vital",
    "voice",
    "waste",
    "watch",
    "water",
    "wheel",
    "where",
    "which",
    "while",
    "white",
    "whole",
    "whose",
    "woman",
    "women",
    "world",
    "worry",
    "worse",
    "worst",
    "worth",
    "would",
    "wound",
    "write",
    "wrong",
    "wrote",
    "yield",
    "young",
    "youth",
)

# --------------------------------------------------------------------------- MT19937 (CPython)
_N, _M = 624, 397
_MATRIX_A = np.uint32(0x9908B0DF)
_UPPER, _LOWER = np.uint32(0x80000000), np.uint32(0x7FFFFFFF)


def _init_genrand(s: int) -> np.ndarray:
    mt = np.zeros(_N, np.uint64)
    mt[0] = s
    for i in range(1, _N):
        mt[i] = (1812433253 * int(mt[i - 1] ^ (mt[i - 1] >> 30)) + i) & 0xFFFFFFFF
    return mt.astype(np.uint32)


_MT_BASE = _init_genrand(19650218)


def _mt_seed(seed: jax.Array) -> jax.Array:
    """CPython ``init_by_array([seed])`` for a 32-bit seed: the uint32 [624] state."""
    seed = jnp.asarray(seed, jnp.uint32)
    mul1, mul2 = jnp.uint32(1664525), jnp.uint32(1566083941)

    def wrap(mt, i):
        mt = mt.at[0].set(jnp.where(i >= _N, mt[_N - 1], mt[0]))
        return mt, jnp.where(i >= _N, 1, i)

    def first(_, carry):
        mt, i = carry
        prev = mt[i - 1]
        mt = mt.at[i].set((mt[i] ^ ((prev ^ (prev >> 30)) * mul1)) + seed)
        return wrap(mt, i + 1)

    def second(_, carry):
        mt, i = carry
        prev = mt[i - 1]
        mt = mt.at[i].set((mt[i] ^ ((prev ^ (prev >> 30)) * mul2)) - i.astype(jnp.uint32))
        return wrap(mt, i + 1)

    carry = (jnp.asarray(_MT_BASE), jnp.int32(1))
    carry = jax.lax.fori_loop(0, _N, first, carry)
    mt, _ = jax.lax.fori_loop(0, _N - 1, second, carry)
    return mt.at[0].set(jnp.uint32(0x80000000))


def _twist(mt: jax.Array) -> jax.Array:
    """One MT19937 generation, vectorised in the four chunks its data dependencies allow."""

    def f(cur, nxt, far):
        y = (cur & _UPPER) | (nxt & _LOWER)
        return far ^ (y >> 1) ^ jnp.where((y & 1) == 1, _MATRIX_A, jnp.uint32(0))

    a = f(mt[0:227], mt[1:228], mt[397:624])  # uses old words only
    b = f(mt[227:454], mt[228:455], a[0:227])  # mt[kk - 227] is already new
    c = f(mt[454:623], mt[455:624], b[0:169])
    last = f(mt[623:624], a[0:1], b[169:170])
    return jnp.concatenate([a, b, c, last])


def _temper(y: jax.Array) -> jax.Array:
    y = y ^ (y >> 11)
    y = y ^ ((y << 7) & jnp.uint32(0x9D2C5680))
    y = y ^ ((y << 15) & jnp.uint32(0xEFC60000))
    return y ^ (y >> 18)


def mt_outputs(seed: jax.Array) -> jax.Array:
    """The first 624 ``genrand_uint32`` outputs of ``random.Random(seed)`` (uint32 [624]).

    Args:
      seed: int32 [] (CPython seeds with ``abs(seed)``; seeds are below 2**31 here).
    """
    seed = jnp.abs(jnp.asarray(seed, jnp.int32))
    return _temper(_twist(_mt_seed(seed)))


def _bit_length(n: jax.Array) -> jax.Array:
    return 32 - jax.lax.clz(n.astype(jnp.uint32)).astype(jnp.int32)


def mt_randbelow(outputs: jax.Array, pos: jax.Array, n: jax.Array):
    """CPython ``_randbelow(n)`` (n >= 1) reading 32-bit outputs from ``outputs[pos:]``.

    Returns:
      ``(r, new_pos)``: the draw in ``[0, n)`` and the position after the outputs it consumed.
    """
    n = jnp.asarray(n, jnp.int32)
    shift = (32 - _bit_length(n)).astype(jnp.uint32)
    last = outputs.shape[0] - 1

    def draw(p):
        return (outputs[jnp.minimum(p, last)] >> shift).astype(jnp.int32)

    def cond(c):
        r, p = c
        return (r >= n) & (p <= last)

    def body(c):
        _, p = c
        return draw(p), p + 1

    r, p = jax.lax.while_loop(cond, body, (draw(pos), pos + 1))
    return jnp.minimum(r, n - 1), p


# ------------------------------------------------------------------------------- vocabulary
def load_vocab(vocab: str | os.PathLike | Sequence[str] | None) -> list[str]:
    """The word list: built-in (None), a file (one word a line), or a sequence of words."""
    if vocab is None:
        words = list(BUILTIN_VOCAB)
    elif isinstance(vocab, (str, os.PathLike)):
        if not os.path.exists(vocab):
            raise FileNotFoundError(f"wordle: vocabulary file not found: {vocab}")
        with open(vocab) as fh:
            words = [line.strip() for line in fh]
        words = [w for w in words if len(w) == N_CHARS]
    else:
        words = [str(w) for w in vocab]
    bad = [w for w in words if len(w) != N_CHARS or not all(ch in ALPHABET for ch in w)]
    if bad:
        raise ValueError(f"wordle: vocabulary words must be 5 letters a-z, got {bad[:5]}")
    if not words:
        raise ValueError(f"wordle: empty vocabulary ({vocab!r})")
    return words


def reference_feedback(knowledge: np.ndarray, guess: str) -> str:
    """Host reference: the server's reply for ``guess`` given the updated knowledge [26, 5]."""
    out = []
    for i, ch in enumerate(guess):
        row = knowledge[ALPHABET.index(ch)]
        if row[i] == HERE:
            out.append("g")
        elif (row == NOT_HERE).all():
            out.append("b")
        else:
            out.append("y")
    return " ".join(out) + "\n"


@flax.struct.dataclass
class WordleState:
    knowledge: jax.Array  # int32 [26, 5]: NOT_HERE 0 / POSSIBLE 1 / HERE 2 per letter and position
    filtered: jax.Array  # bool [V], words consistent with ``knowledge``
    guessed: jax.Array  # bool [V], words guessed so far (every copy of a repeated word)
    round: jax.Array  # int32 [], actions taken, invalid ones included (upstream n_actions)
    done: jax.Array  # bool []
    success: jax.Array  # bool []
    obs_kind: jax.Array  # int32 [], 0 start, 1 feedback, 2 invalid word
    feedback: jax.Array  # int32 [5], 0 b / 1 y / 2 g of the last valid guess
    target: jax.Array  # int32 [], hidden word sampled at the last valid guess (-1 before)
    draw_n: jax.Array  # int32 [], candidate count of the last draw (0 if the step drew nothing)
    draw_index: jax.Array  # int32 [], index drawn among the candidates
    key: jax.Array  # PRNG key (default mode)
    mt: jax.Array  # uint32 [624] CPython rng outputs (compat) or [1] unused
    mt_pos: jax.Array  # int32 [], outputs consumed
    seed: jax.Array  # int32 [], the instance index


class WordleEnv(Env):
    """Wordle with re-sampled hidden words; see the module docstring.

    Args:
      vocab: None (built-in list), a vocabulary file path, or a sequence of 5-letter words.
      agentgym_compat: draws reproduce ``random.Random(idx).choice`` (True) or use JAX PRNG keys.
      codec: the environment tokenizer (default: the shipped model).
    """

    name = "wordle"

    def __init__(
        self,
        vocab: str | os.PathLike | Sequence[str] | None = None,
        agentgym_compat: bool = False,
        max_rounds: int = N_TRIES,
        codec: TextCodec | None = None,
    ):
        self.vocab = load_vocab(vocab)
        self.agentgym_compat = bool(agentgym_compat)
        if max_rounds < 1:
            raise ValueError(f"wordle: max_rounds={max_rounds} must be >= 1")
        self.max_rounds = int(max_rounds)
        self.num_actions = len(self.vocab)
        first = {}
        for i, w in enumerate(self.vocab):
            first.setdefault(w, i)
        self._index = first
        self._letters = np.array([[ALPHABET.index(c) for c in w] for w in self.vocab], np.int32)
        self._canon = np.array([first[w] for w in self.vocab], np.int32)
        present = np.zeros((len(self.vocab), 26), np.float32)
        for i, w in enumerate(self.vocab):
            present[i, [ALPHABET.index(c) for c in set(w)]] = 1.0
        self._present = present
        # letter bit sets for `consistent`: [5, V] the word's letter at each position, [V] all
        self._word_bits = (np.uint32(1) << self._letters.T.astype(np.uint32)).astype(np.uint32)
        self._word_set = np.bitwise_or.reduce(self._word_bits, axis=0).astype(np.uint32)
        self.codec = codec or TextCodec()
        self.words = [*START_TEXT.split(" "), *INVALID_TEXT.split(" "), "b", "y", "g"]
        self.words += ["b\n", "y\n", "g\n"]
        self._table = self.codec.word_table(self.words)
        texts = [START_TEXT, INVALID_TEXT, "b y g b b\n", "g g g g g\n", "y y y y y\n"]
        longest = max(len(self.codec.encode(t)) for t in texts)
        self.max_obs_len = int(-(-longest // 8) * 8)

    # ------------------------------------------------------------------------------- device
    def consistent(self, knowledge: jax.Array) -> jax.Array:
        """bool [V]: upstream ``WordleState.word_in_state`` for every vocabulary word.

        For each letter c: all POSSIBLE -> no constraint; all NOT_HERE -> c absent; otherwise c
        present, at every HERE position and at no NOT_HERE position.

        Computed on 26-bit letter sets (bit c = letter c) rather than by gathering the knowledge
        at each word's letters: per position p, the set of letters NOT_HERE at p and the set HERE
        at p; a word (one letter bit per position, a constant) is consistent iff no letter of it
        is NOT_HERE at its position, each HERE set equals the word's letter there (a HERE set of
        two letters fails every word, as upstream), and the letters with mixed knowledge are a
        subset of the word's letters. Only elementwise integer ops over [5, V], no gathers.
        """
        bit = jnp.uint32(1) << jnp.arange(26, dtype=jnp.uint32)  # [26]

        def letter_set(flags):  # bool [26, ...] -> uint32 [...], bits are disjoint
            return jnp.sum(
                jnp.where(flags, bit.reshape((26,) + (1,) * (flags.ndim - 1)), 0),
                axis=0,
                dtype=jnp.uint32,
            )

        all_p = jnp.all(knowledge == POSSIBLE, axis=1)
        all_n = jnp.all(knowledge == NOT_HERE, axis=1)
        mixed = letter_set(~all_p & ~all_n)  # []
        not_here = letter_set(knowledge == NOT_HERE)[:, None]  # [5, 1]
        here = letter_set(knowledge == HERE)[:, None]  # [5, 1]
        word_bits = jnp.asarray(self._word_bits)  # [5, V]
        ok_pos = ((word_bits & not_here) == 0) & ((word_bits & here) == here)
        ok_present = (mixed & ~jnp.asarray(self._word_set)) == 0  # [V]
        return jnp.all(ok_pos, axis=0) & ok_present

    def _timestep(self, s: WordleState, reward, truncated=False) -> TimeStep:
        fb = s.feedback
        fb_words = jnp.concatenate([5 + fb[:4], 8 + fb[4:]])
        rows = jnp.stack(
            [
                jnp.array([0, 1, 2, 0, 0], jnp.int32),
                fb_words.astype(jnp.int32),
                jnp.array([3, 4, 0, 0, 0], jnp.int32),
            ]
        )
        row = jnp.where(s.obs_kind == 1, 1, jnp.where(s.obs_kind == 2, 2, 0))
        lengths = jnp.array([3, 5, 2], jnp.int32)
        tokens, mask, _ = expand_words(rows[row], lengths[row], self._table, self.max_obs_len)
        return TimeStep(
            obs_tokens=tokens,
            obs_mask=mask,
            reward=jnp.asarray(reward, jnp.float32),
            done=s.done,
            truncated=jnp.asarray(truncated, bool),
            legal_actions=jnp.ones((self.num_actions,), bool),
            round=s.round,
        )

    def reset(self, key: jax.Array, idx: jax.Array) -> tuple[WordleState, TimeStep]:
        """New game ``idx`` (compat: Python's seed; default: folded into ``key``)."""
        idx = jnp.asarray(idx, jnp.int32)
        v = self.num_actions
        mt = mt_outputs(idx) if self.agentgym_compat else jnp.zeros((1,), jnp.uint32)
        state = WordleState(
            knowledge=jnp.full((26, N_CHARS), POSSIBLE, jnp.int32),
            filtered=jnp.ones((v,), bool),
            guessed=jnp.zeros((v,), bool),
            round=jnp.int32(0),
            done=jnp.bool_(False),
            success=jnp.bool_(False),
            obs_kind=jnp.int32(0),
            feedback=jnp.zeros((N_CHARS,), jnp.int32),
            target=jnp.int32(-1),
            draw_n=jnp.int32(0),
            draw_index=jnp.int32(0),
            key=jax.random.fold_in(key, idx),
            mt=mt,
            mt_pos=jnp.int32(0),
            seed=idx,
        )
        return state, self._timestep(state, 0.0)

    def _draw(self, state: WordleState, n: jax.Array):
        if self.agentgym_compat:
            r, pos = mt_randbelow(state.mt, state.mt_pos, n)
            return r, state.key, pos
        key, sub = jax.random.split(state.key)
        r = jax.random.randint(sub, (), 0, jnp.maximum(n, 1))
        return r, key, state.mt_pos

    @staticmethod
    def _transition(knowledge: jax.Array, guess: jax.Array, target: jax.Array) -> jax.Array:
        """Upstream ``transition_state``: letters in order, each updating its own row.

        Rows are read and written with one-hot selects over the 26 letters (a dynamic row
        update under vmap would be a scatter).
        """
        letters = jnp.arange(26)[:, None]
        for i in range(N_CHARS):
            c = guess[i]
            sel = letters == c  # [26, 1]
            row = jnp.sum(jnp.where(sel, knowledge, 0), axis=0)  # knowledge[c]
            in_target = jnp.any(target == c)
            new_row = jnp.where(
                c == target[i],
                row.at[i].set(HERE),
                jnp.where(in_target, row.at[i].set(NOT_HERE), jnp.zeros_like(row)),
            )
            knowledge = jnp.where(sel, new_row[None, :], knowledge)
        return knowledge

    @staticmethod
    def _nth_true(mask: jax.Array, r: jax.Array) -> jax.Array:
        """``argmax(cumsum(mask) > r)``: the (r+1)-th True of ``mask`` (0 if there is none).

        Ranked on the mask packed into 32-bit words (popcounts, a cumsum over the words, a
        select inside one word): XLA:CPU lowers a cumsum over all V entries to costly
        reduce-windows.
        """
        words, cum = packed_mask(mask)
        return jnp.where(cum[-1] > r, select_packed(words, cum, r), 0).astype(jnp.int32)

    def step(self, state: WordleState, action: jax.Array) -> tuple[WordleState, TimeStep]:
        """One guess; ``action`` int32 [] in ``[0, V)``, any other id is an invalid string."""
        action = jnp.asarray(action, jnp.int32)
        valid = (action >= 0) & (action < self.num_actions)
        letters = jnp.asarray(self._letters)
        guess = letters[jnp.clip(action, 0, self.num_actions - 1)]
        n = jnp.sum(state.filtered).astype(jnp.int32)
        r, key, mt_pos = self._draw(state, n)
        target = self._nth_true(state.filtered, r)
        knowledge = self._transition(state.knowledge, guess, letters[target])
        filtered = self.consistent(knowledge)
        canon = jnp.asarray(self._canon)
        guessed = state.guessed | (canon == canon[jnp.clip(action, 0, self.num_actions - 1)])
        solved = (jnp.sum(filtered) == 1) & jnp.any(filtered & guessed)
        k_rows = knowledge[guess]  # [5, 5]
        pos = jnp.arange(N_CHARS)
        at = k_rows[pos, pos]
        all_n = jnp.all(k_rows == NOT_HERE, axis=1)
        feedback = jnp.where(at == HERE, 2, jnp.where(all_n, 0, 1)).astype(jnp.int32)
        rounds = state.round + 1
        valid_state = WordleState(
            knowledge=knowledge,
            filtered=filtered,
            guessed=guessed,
            round=rounds,
            done=solved | (rounds >= N_TRIES),
            success=solved,
            obs_kind=jnp.int32(1),
            feedback=feedback,
            target=target,
            draw_n=n,
            draw_index=r,
            key=key,
            mt=state.mt,
            mt_pos=mt_pos,
            seed=state.seed,
        )
        invalid_state = state.replace(
            round=rounds,
            done=rounds >= N_TRIES,
            obs_kind=jnp.int32(2),
            draw_n=jnp.int32(0),
            draw_index=jnp.int32(0),
        )
        new = jax.tree.map(lambda a, b: jnp.where(valid, a, b), valid_state, invalid_state)
        truncated = ~new.done & (rounds >= self.max_rounds)
        new = new.replace(done=new.done | truncated)
        reward = jnp.where(valid & solved, 1.0, 0.0)
        new = jax.tree.map(lambda a, b: jnp.where(state.done, a, b), state, new)
        reward = jnp.where(state.done, 0.0, reward)
        truncated = truncated & ~state.done
        return new, self._timestep(new, reward, truncated)

    def expert_action(self, state: WordleState) -> jax.Array:
        """A consistent word whose distinct letters are the most common among consistent words.

        Always guessing a consistent word solves the game as soon as the sampled word equals it;
        the letter-frequency score picks the guess that splits the candidates most, cheaply
        (O(V x 26), jittable).
        """
        present = jnp.asarray(self._present)  # [V, 26]
        freq = state.filtered.astype(jnp.float32) @ present  # [26]
        score = present @ freq
        score = jnp.where(state.filtered, score, -1.0)
        return jnp.argmax(score).astype(jnp.int32)

    # --------------------------------------------------------------------------------- host
    def render_text(self, state: WordleState) -> str:
        kind = int(state.obs_kind)
        if kind == 0:
            return START_TEXT
        if kind == 2:
            return INVALID_TEXT
        return " ".join("byg"[int(f)] for f in jax.device_get(state.feedback)) + "\n"

    def action_text(self, action: int, state: Any = None) -> str:
        if not 0 <= int(action) < self.num_actions:
            raise ValueError(f"wordle: action id {action} outside [0, {self.num_actions})")
        return " ".join(self.vocab[int(action)])

    def action_from_text(self, text: str) -> int:
        """Upstream parsing: ``strip()``, drop spaces, then 5 letters a-z in the vocabulary.

        Raises:
          InvalidAction: with the server's reply ``"invalid word"`` (the server counts the try).
        """
        if not isinstance(text, str):
            raise InvalidAction(INVALID_TEXT)
        word = text.strip().replace(" ", "")
        if len(word) != N_CHARS or not all(c in ALPHABET for c in word) or word not in self._index:
            raise InvalidAction(INVALID_TEXT)
        return self._index[word]

    def filtered_words(self, state: WordleState) -> list[str]:
        """``GET /wordle/filtered_vocab``: consistent words in vocabulary order."""
        mask = np.asarray(jax.device_get(state.filtered))
        return [w for w, m in zip(self.vocab, mask, strict=True) if m]

    def expert_thought(self, state: WordleState, action: int) -> str:
        words = self.filtered_words(state)
        guess = self.action_text(action)
        if int(state.round) == 0 or len(words) == len(self.vocab):
            return (
                f'I have no feedback yet. "{guess}" uses common letters, so its feedback will '
                "rule out many words."
            )
        shown = ", ".join(words[:8]) + (", ..." if len(words) > 8 else "")
        if len(words) == 1:
            return f'Only one word is consistent with all the feedback so far: "{guess}".'
        return (
            f"{len(words)} words are still consistent with the feedback so far ({shown}). "
            f'"{guess}" is one of them and its letters are the most common among them, so it '
            "either solves the game or narrows the candidates the most."
        )


@register("wordle")
def make_wordle(**options) -> WordleEnv:
    return WordleEnv(**options)
