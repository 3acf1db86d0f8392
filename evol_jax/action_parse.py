"""From a freely generated assistant turn to an environment action, on the host and on device.

AgentGym's clients cut the action out of the generated text before sending it to the server
(``agentenv/agentenv/envs/{lmrlgym,textcraft}.py``, commit ``f434743``):

* Maze, Wordle and BabyAI (``lmrlgym.py``; ``babyai.py`` has the same code): drop the last 5
  characters if the text ends with ``"</s>"``, then ``text.split("Action:")``: the part after
  the *first* ``"Action:"`` up to the next one, or the whole text when there is none;
  ``strip()``. The server then matches exactly (Maze:
  ``"move up"``, ...) or, Wordle, strips, removes the spaces and looks the 5 letters up in its
  vocabulary. Anything else is an invalid action the server still counts (Maze: the position is
  unchanged, Wordle: ``"invalid word"``): the environments' `INVALID_ACTION` id.
* TextCraft: ``text.split("Instruction:")[0].split("Action:")[-1]`` (after the *last*
  ``"Action:"``), every character outside ``[A-Za-z0-9, ]`` removed, whitespace runs collapsed
  (``" ".join(s.split())``).

`client_action` is that rule on the host (also the host path's,
`evol_jax.sampler.BatchedHTTPPolicy`). `DeviceActionParser` applies the same rule inside jit to
generated token ids: each id is expanded to its UTF-8 bytes (a static ``[vocab, max_bytes]``
table), the bytes of the turn are packed into one row, and every rule is a fixed-shape byte
operation (pattern matches, first/last index, masked compaction), ending in an exact comparison
with the byte strings of the action table. The result equals the host's
``env.action_from_text(client_action(env, tokenizer.decode(ids)))`` for

* **Maze, Wordle: exactly** (every text: matched id or `INVALID_ACTION`);
* **TextCraft: for texts equal to an action of the finite table** after sanitising. Everything
  else cannot be served on device: a failing text's reply echoes the text (``"Could not execute
  <text>"``, ``"Could not find <item>"``), which the env's word-table observations cannot
  render; other spellings upstream accepts (``"1 a,1 b"`` for ``"1 a, 1 b"``, reordered
  ingredients, counts beyond ``max_get``) have effects no table action has; and
  ``TextCraft.step`` has no invalid-action id that would advance the round counter. Such turns
  get status `UNSERVED` (the sampler ends the episode there and flags it; never a substituted
  action). Serving them needs an invalid-action id with a text slot in ``TextCraft.step``.
* BabyAI is not supported (its text -> high-level action mapping is not ported to bytes).

Byte-level caveat: the table holds each token's bytes (SentencePiece pieces with ``"▁"`` as a
space, byte-fallback pieces as their byte). Concatenating them equals ``tokenizer.decode`` for
`evol_jax.policy_tokenizer.PolicyTokenizer` (no dummy prefix; tested) except where byte-fallback
tokens form invalid UTF-8, which ``decode`` replaces; such text never matches an (ASCII) action
on either side, so the parse agrees.
"""

from __future__ import annotations

import re
import sys

import jax
import jax.numpy as jnp
import numpy as np

from evol_jax.envs.base import INVALID_ACTION, Env, InvalidAction

MATCHED, INVALID, UNSERVED = 0, 1, 2
RULES = {"maze": "lmrlgym", "wordle": "lmrlgym", "babyai": "lmrlgym", "textcraft": "textcraft"}
DEVICE_ENVS = ("maze", "wordle", "textcraft")  # `DeviceActionParser` (not BabyAI, see above)
# every character str.strip() / str.split() treat as whitespace, as UTF-8 byte strings
_WHITESPACE = [chr(c).encode() for c in range(sys.maxunicode + 1) if chr(c).isspace()]
_TEXTCRAFT_KEEP = re.compile(r"[^A-Za-z0-9, ]+")


def client_action(env_name: str, text: str) -> str:
    """AgentGym client's action string for a generated turn (see the module docstring)."""
    rule = RULES.get(env_name)
    if rule is None:
        raise ValueError(f"client_action: no client rule for {env_name!r}; have {sorted(RULES)}")
    if rule == "lmrlgym":
        if text.endswith("</s>"):
            text = text[:-5]
        parts = text.split("Action:")
        return (parts[1] if len(parts) > 1 else parts[0]).strip()
    action = text.split("Instruction:")[0].split("Action:")[-1]
    action = _TEXTCRAFT_KEEP.sub("", action)
    return " ".join(action.split()).strip()


def host_parse(env: Env, text: str) -> tuple[int, int]:
    """Host reference of `DeviceActionParser`: ``(action id, status)`` for a generated turn.

    Maze / Wordle: ``env.action_from_text`` of the client's action, `INVALID_ACTION` with status
    `INVALID` when it raises. TextCraft: the table action whose text equals the sanitised action
    (status `MATCHED`), else ``(-2, UNSERVED)``.
    """
    action = client_action(env.name, text)
    if RULES[env.name] == "textcraft":
        texts = _action_texts(env)
        return (texts.index(action), MATCHED) if action in texts else (-2, UNSERVED)
    try:
        return int(env.action_from_text(action)), MATCHED
    except InvalidAction:
        return INVALID_ACTION, INVALID


_TEXTS_CACHE: dict[int, list[str]] = {}


def _action_texts(env: Env) -> list[str]:
    if id(env) not in _TEXTS_CACHE:
        _TEXTS_CACHE[id(env)] = [env.action_text(a) for a in range(env.num_actions)]
    return _TEXTS_CACHE[id(env)]


def token_bytes(tokenizer) -> tuple[np.ndarray, np.ndarray]:
    """UTF-8 bytes of every token id: ``(table uint8-valued int32 [V, Lb], lengths [V])``.

    SentencePiece tokenizers (``tokenizer.sp``): normal and user-defined pieces with ``"▁"`` as a
    space, byte-fallback pieces as their byte, other control / unknown ids as ``decode([id])``.
    Other tokenizers: ``decode([id])`` per id.
    """
    sp = getattr(tokenizer, "sp", None)
    seqs = []
    for i in range(tokenizer.vocab_size):
        if sp is not None and sp.is_byte(i):
            seqs.append(bytes([int(sp.id_to_piece(i)[3:5], 16)]))
        elif sp is not None and not (sp.is_control(i) or sp.is_unknown(i)):
            seqs.append(sp.id_to_piece(i).replace("\u2581", " ").encode())
        else:
            seqs.append(tokenizer.decode([i]).encode())
    width = max(1, max(len(s) for s in seqs))
    table = np.zeros((len(seqs), width), np.int32)
    for i, s in enumerate(seqs):
        table[i, : len(s)] = list(s)
    return table, np.array([len(s) for s in seqs], np.int32)


def _pad_table(strings: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    width = max(1, max(len(s) for s in strings))
    table = np.full((len(strings), width), -1, np.int32)
    for i, s in enumerate(strings):
        table[i, : len(s)] = list(s)
    return table, np.array([len(s) for s in strings], np.int32)


def _match_at(buf, m, pat: bytes):
    """bool [W]: ``pat`` occurs at position k (entirely inside ``buf[:m]``)."""
    w = buf.shape[0]
    padded = jnp.concatenate([buf, jnp.full((len(pat),), -1, buf.dtype)])
    hit = jnp.ones((w,), bool)
    for j, c in enumerate(pat):
        hit &= padded[j : j + w] == c
    return hit & (jnp.arange(w) + len(pat) <= m)


def _first(mask, default):
    return jnp.where(mask.any(), jnp.argmax(mask), default).astype(jnp.int32)


def _last(mask, default):
    w = mask.shape[0]
    return jnp.where(mask.any(), w - 1 - jnp.argmax(mask[::-1]), default).astype(jnp.int32)


def _compact(buf, keep):
    """Bytes of ``buf`` where ``keep``, packed to the front (-1 after); returns (bytes, count)."""
    w = buf.shape[0]
    pos = jnp.where(keep, jnp.cumsum(keep) - 1, w)
    out = jnp.full((w,), -1, buf.dtype).at[pos].set(buf, mode="drop")
    return out, keep.sum().astype(jnp.int32)


class DeviceActionParser:
    """Parses generated turns into action ids inside jit (see the module docstring).

    Args:
      env: Maze, Wordle or TextCraft.
      tokenizer: the policy tokenizer (``vocab_size``, ``eos_id``, ``decode``; SentencePiece
        ``sp`` when available).

    ``parse(tokens [B, T], count [B]) -> (action int32 [B], status int32 [B])``: ``count`` text
    tokens per row (the end-of-turn token excluded).
    """

    def __init__(self, env: Env, tokenizer):
        if env.name not in DEVICE_ENVS:
            raise ValueError(
                f"decode='free' parses text on device for {list(DEVICE_ENVS)}; {env.name!r} is not "
                "supported (use decode='constrained')"
            )
        self.env, self.rule = env, RULES[env.name]
        self.bytes, self.byte_len = token_bytes(tokenizer)
        self.byte_len[tokenizer.eos_id] = 0  # the end of turn is not text
        texts = _action_texts(env)
        if env.name == "wordle":  # the server removes spaces: compare the bare letters
            keys = [t.replace(" ", "") for t in texts]
        else:
            keys = texts
        # id the env gives a key text (duplicate words map where action_from_text maps them)
        if self.rule == "textcraft":
            self.resolve = np.arange(len(keys), dtype=np.int32)
            self.unreachable = [t for t in texts if client_action("textcraft", t) != t]
        else:
            self.resolve = np.array([env.action_from_text(k) for k in keys], np.int32)
            self.unreachable = []
        self.keys, self.key_len = _pad_table([k.encode() for k in keys])
        # whitespace characters by UTF-8 length: a 256-entry table for single bytes, integer
        # codes (b0 << 8 | b1, b0 << 16 | b1 << 8 | b2) for the 2- and 3-byte ones
        self.ws1 = np.zeros((256,), bool)
        self.ws_codes = {2: [], 3: []}
        for w in _WHITESPACE:
            if len(w) == 1:
                self.ws1[w[0]] = True
            else:
                self.ws_codes[len(w)].append(int.from_bytes(w, "big"))

    # ------------------------------------------------------------------------------ byte rows
    def text_bytes(self, tokens, count):
        """Bytes of each row's first ``count`` tokens: ``(int32 [B, T * Lb], lengths [B])``."""
        b, t = tokens.shape
        lb = self.bytes.shape[1]
        ids = jnp.clip(tokens, 0, self.bytes.shape[0] - 1)
        n = jnp.where(jnp.arange(t)[None, :] < count[:, None], jnp.asarray(self.byte_len)[ids], 0)
        start = jnp.cumsum(n, axis=1) - n
        pos = start[:, :, None] + jnp.arange(lb)[None, None, :]
        pos = jnp.where(jnp.arange(lb)[None, None, :] < n[:, :, None], pos, t * lb)
        out = jnp.full((b, t * lb), -1, jnp.int32)
        out = out.at[jnp.arange(b)[:, None, None], pos].set(
            jnp.asarray(self.bytes)[ids], mode="drop"
        )
        return out, n.sum(axis=1).astype(jnp.int32)

    def _whitespace(self, buf, m):
        """bool [W]: the byte belongs to a whitespace character (``str.isspace``)."""
        w = buf.shape[0]
        inside = jnp.arange(w) < m
        ws = jnp.asarray(self.ws1)[jnp.clip(buf, 0, 255)] & inside
        padded = jnp.concatenate([jnp.where(inside, buf, 0), jnp.zeros((2,), buf.dtype)])
        for n, codes in self.ws_codes.items():
            code = sum(padded[j : j + w] << (8 * (n - 1 - j)) for j in range(n))
            hit = (code[:, None] == jnp.asarray(codes)[None, :]).any(axis=1)
            hit &= jnp.arange(w) + n <= m
            for j in range(n):  # flag every byte of the character
                ws |= jnp.concatenate([jnp.zeros((j,), bool), hit[: w - j]])
        return ws

    def _lmrlgym(self, buf, m):
        w = buf.shape[0]
        k = jnp.arange(w)
        # text[:-5] when it ends with "</s>": drop "</s>" and the character before it
        ends = (m >= 4) & _match_at(buf, m, b"</s>")[jnp.maximum(m - 4, 0)]
        cont = (buf & 0xC0) == 0x80  # UTF-8 continuation bytes
        lead = _last((k <= m - 5) & ~cont, 0)
        m = jnp.where(ends, jnp.where(m >= 5, lead, 0), m)
        act = _match_at(buf, m, b"Action:")
        first = _first(act, -1)
        lo = jnp.where(first >= 0, first + 7, 0)
        hi = jnp.where(first >= 0, _first(act & (k >= lo), m), m)
        inside = (k >= lo) & (k < hi)
        solid = inside & ~self._whitespace(buf, m)
        a, z = _first(solid, 0), _last(solid, -1) + 1
        keep = (k >= a) & (k < z)
        if self.env.name == "wordle":
            keep &= buf != 0x20
        return _compact(buf, keep)

    def _textcraft(self, buf, m):
        w = buf.shape[0]
        k = jnp.arange(w)
        hi = _first(_match_at(buf, m, b"Instruction:"), m)
        act = _match_at(buf, hi, b"Action:")
        lo = jnp.where(act.any(), _last(act, 0) + 7, 0)
        alnum = (
            ((buf >= 0x41) & (buf <= 0x5A)) | ((buf >= 0x61) & (buf <= 0x7A))
            | ((buf >= 0x30) & (buf <= 0x39)) | (buf == 0x2C) | (buf == 0x20)
        )  # fmt: skip
        c, n = _compact(buf, alnum & (k >= lo) & (k < hi))
        space = c == 0x20
        solid = (k < n) & ~space
        prev_solid = jnp.concatenate([jnp.zeros((1,), bool), solid[:-1]])
        later_solid = jnp.flip(jnp.cumsum(jnp.flip(solid))) - solid.astype(jnp.int32) > 0
        return _compact(c, solid | (space & prev_solid & later_solid & (k < n)))

    def parse(self, tokens, count):
        """``(action int32 [B], status int32 [B])`` for generated rows (see the class doc)."""
        buf, m = self.text_bytes(tokens, count)
        rule = self._lmrlgym if self.rule == "lmrlgym" else self._textcraft
        cand, n = jax.vmap(rule)(buf, m)
        keys, klen = jnp.asarray(self.keys), jnp.asarray(self.key_len)
        lk = keys.shape[1]
        head = cand[:, :lk] if cand.shape[1] >= lk else jnp.pad(
            cand, ((0, 0), (0, lk - cand.shape[1])), constant_values=-1
        )  # fmt: skip
        same = (head[:, None, :] == keys[None, :, :]) | (keys[None, :, :] < 0)
        hit = same.all(axis=2) & (n[:, None] == klen[None, :])
        found = hit.any(axis=1)
        row = jnp.argmax(hit, axis=1)
        miss = UNSERVED if self.rule == "textcraft" else INVALID
        miss_id = -2 if self.rule == "textcraft" else INVALID_ACTION
        action = jnp.where(found, jnp.asarray(self.resolve)[row], miss_id).astype(jnp.int32)
        return action, jnp.where(found, MATCHED, miss).astype(jnp.int32)
