"""Behavioural-cloning data: AgentTraj records -> (tokens, loss mask) -> packed fixed-shape batches.

Pipeline::

    examples, stats = tokenize_records(records, tokenizer, LLAMA2, max_len=4096)
    it = PackedBatchIterator(examples, batch_size=8, seq_len=4096, seed=0)
    batch = next(it)            # dict of numpy arrays, each [B, L]
    targets, weights = next_token_targets(batch)
    logits = model.apply({"params": p}, batch["tokens"], segment_ids=batch["segment_ids"],
                         positions=batch["positions"])
    # loss = sum(weights * xent(logits, targets)) / sum(weights)

Conventions:
  * ``loss_mask[t]`` is True when token ``t`` is a training target (it is predicted from the
    tokens before it). Assistant turns with loss carry it on every token of the turn, including
    the end-of-turn ``</s>``; human turns, the canned ``"Ok."`` (``loss: false``) and padding do
    not.
  * Each turn (segment of :func:`evol_jax.chat.render_conversation`) is tokenised on its own, as
    the official trainer does, so a token never straddles two turns and the mask is exact.
  * Truncation at ``max_len`` (official cap 4096) is explicit: ``truncation="right"`` keeps the
    first ``max_len`` tokens (what a plain ``ids[:max_len]`` cap does), ``"left"`` keeps the last
    ones (the most recent turns), ``"drop"`` skips the example, ``"error"`` raises; every truncated
    or dropped example is counted in :class:`TokenizeStats`.
  * Packed rows hold whole examples; ``segment_ids`` number them 1, 2, ... per row (0 = padding)
    and ``positions`` restart at 0 in each, which is what :class:`core_jax.nn.Transformer` takes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from evol_jax.chat import LLAMA2, JinjaTemplate, Llama2Format, render_conversation

TRUNCATION = ("right", "left", "drop", "error")
OFFICIAL_MAX_LEN = 4096


class Tokenizer(Protocol):
    """What this module needs from a tokenizer (``HFTokenizer``, ``PolicyTokenizer``)."""

    def encode(self, text: str) -> list[int]: ...


@dataclasses.dataclass(frozen=True)
class Example:
    """One tokenised conversation.

    Attributes:
      item_id: the AgentTraj ``item_id``.
      tokens: int32 ``[n]``.
      loss_mask: bool ``[n]``, True on training targets.
      weight: per-example loss weight (e.g. the reward in reward-weighted regression).
      truncated: whether ``max_len`` cut it.
    """

    item_id: str
    tokens: np.ndarray
    loss_mask: np.ndarray
    weight: float = 1.0
    truncated: bool = False

    def __len__(self) -> int:
        return int(self.tokens.shape[0])


@dataclasses.dataclass
class TokenizeStats:
    """Counts from :func:`tokenize_records` (log them: truncation is never silent)."""

    num_records: int = 0
    num_examples: int = 0
    num_truncated: int = 0
    num_dropped: int = 0
    num_tokens: int = 0
    num_loss_tokens: int = 0
    num_tokens_cut: int = 0
    max_untruncated_len: int = 0

    def to_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


def tokenize_conversation(
    conversations: Sequence[Mapping[str, Any]],
    tokenizer: Tokenizer,
    template: Llama2Format | JinjaTemplate = LLAMA2,
    *,
    null_loss: str = "role",
) -> tuple[np.ndarray, np.ndarray]:
    """Tokenises one conversation segment by segment.

    Args:
      conversations: AgentTraj turns ``{"from", "loss", "value"}``.
      tokenizer: anything with ``encode(text) -> list[int]`` that adds no special tokens of its
        own and recognises the template's special strings (``<s>``, ``</s>``, ...).
      template: chat format (:data:`evol_jax.chat.LLAMA2` or a Jinja template).
      null_loss: meaning of ``loss: null`` (see :mod:`evol_jax.chat`).

    Returns:
      ``(tokens int32 [n], loss_mask bool [n])``.
    """
    tokens: list[int] = []
    mask: list[bool] = []
    for text, _, loss in render_conversation(conversations, template, null_loss=null_loss):
        ids = tokenizer.encode(text)
        tokens += ids
        mask += [loss] * len(ids)
    return np.asarray(tokens, np.int32), np.asarray(mask, bool)


def tokenize_records(
    records: Sequence[Mapping[str, Any]],
    tokenizer: Tokenizer,
    template: Llama2Format | JinjaTemplate = LLAMA2,
    *,
    max_len: int = OFFICIAL_MAX_LEN,
    truncation: str = "right",
    null_loss: str = "role",
    weights: Sequence[float] | None = None,
    vocab_size: int | None = None,
) -> tuple[list[Example], TokenizeStats]:
    """Tokenises AgentTraj records (``[{"item_id", "conversations"}, ...]``).

    Args:
      records: AgentTraj records.
      tokenizer: see :func:`tokenize_conversation`.
      template: chat format.
      max_len: longest kept example, in tokens.
      truncation: ``right`` | ``left`` | ``drop`` | ``error`` (see the module docstring).
      null_loss: meaning of ``loss: null``.
      weights: optional per-record loss weights (rewards); default 1.
      vocab_size: when given, ids outside ``[0, vocab_size)`` are an error naming the record.

    Returns:
      ``(examples, stats)``; examples keep the order of ``records`` (dropped ones removed).
    """
    if truncation not in TRUNCATION:
        raise ValueError(f"truncation={truncation!r}; choose one of {TRUNCATION}")
    if not isinstance(max_len, int) or max_len <= 0:
        raise ValueError(f"max_len must be a positive int, got {max_len!r}")
    if weights is not None and len(weights) != len(records):
        raise ValueError(f"{len(weights)} weights for {len(records)} records")
    stats = TokenizeStats()
    out = []
    for i, rec in enumerate(records):
        if not isinstance(rec, Mapping) or "conversations" not in rec:
            raise ValueError(f"record {i} has no 'conversations': {str(rec)[:80]!r}")
        item_id = str(rec.get("item_id", i))
        try:
            tokens, mask = tokenize_conversation(
                rec["conversations"], tokenizer, template, null_loss=null_loss
            )
        except ValueError as e:
            raise ValueError(f"record {i} (item_id={item_id!r}): {e}") from e
        if vocab_size is not None and tokens.size and (tokens.max() >= vocab_size):
            raise ValueError(
                f"record {i} (item_id={item_id!r}): token id {tokens.max()} >= vocab {vocab_size}"
            )
        weight = 1.0 if weights is None else float(weights[i])
        if not np.isfinite(weight):
            raise ValueError(f"record {i} (item_id={item_id!r}): weight {weight} is not finite")
        stats.num_records += 1
        n = len(tokens)
        cut = n > max_len
        if cut:
            stats.max_untruncated_len = max(stats.max_untruncated_len, n)
            if truncation == "error":
                raise ValueError(
                    f"record {i} (item_id={item_id!r}) has {n} tokens > max_len={max_len}"
                )
            if truncation == "drop":
                stats.num_dropped += 1
                continue
            keep = slice(0, max_len) if truncation == "right" else slice(n - max_len, n)
            tokens, mask = tokens[keep], mask[keep]
            stats.num_truncated += 1
            stats.num_tokens_cut += n - max_len
        stats.num_examples += 1
        stats.num_tokens += len(tokens)
        stats.num_loss_tokens += int(mask.sum())
        out.append(Example(item_id, tokens, mask, weight, cut))
    return out, stats


# ------------------------------------------------------------------------------------------------
# Packing
# ------------------------------------------------------------------------------------------------

BATCH_KEYS = ("tokens", "loss_mask", "weights", "segment_ids", "positions")


def pack_rows(
    rows: Sequence[Sequence[Example]], seq_len: int, pad_id: int = 0
) -> dict[str, np.ndarray]:
    """Lays out ``rows`` (lists of examples) into one fixed-shape batch.

    Returns:
      ``tokens`` int32, ``loss_mask`` bool, ``weights`` float32 (example weight on loss tokens,
      0 elsewhere), ``segment_ids`` int32 (1.. per row, 0 = padding), ``positions`` int32; each
      ``[len(rows), seq_len]``.
    """
    b = len(rows)
    batch = {
        "tokens": np.full((b, seq_len), pad_id, np.int32),
        "loss_mask": np.zeros((b, seq_len), bool),
        "weights": np.zeros((b, seq_len), np.float32),
        "segment_ids": np.zeros((b, seq_len), np.int32),
        "positions": np.zeros((b, seq_len), np.int32),
    }
    for r, row in enumerate(rows):
        start = 0
        for s, ex in enumerate(row):
            n = len(ex)
            if start + n > seq_len:
                raise ValueError(f"row {r} needs more than seq_len={seq_len} tokens")
            sl = slice(start, start + n)
            batch["tokens"][r, sl] = ex.tokens
            batch["loss_mask"][r, sl] = ex.loss_mask
            batch["weights"][r, sl] = ex.loss_mask * np.float32(ex.weight)
            batch["segment_ids"][r, sl] = s + 1
            batch["positions"][r, sl] = np.arange(n)
            start += n
    return batch


def unpack(batch: Mapping[str, np.ndarray]) -> list[list[tuple[np.ndarray, np.ndarray]]]:
    """Inverse of :func:`pack_rows`: per row, the ``(tokens, loss_mask)`` of each segment."""
    out = []
    for r in range(batch["tokens"].shape[0]):
        seg = batch["segment_ids"][r]
        row = []
        for s in range(1, int(seg.max(initial=0)) + 1):
            idx = np.nonzero(seg == s)[0]
            row.append((batch["tokens"][r, idx], batch["loss_mask"][r, idx]))
        out.append(row)
    return out


def next_token_targets(batch: Mapping[str, Any]) -> tuple[Any, Any]:
    """Targets and weights for next-token loss on a packed batch, same ``[B, L]`` shape.

    ``targets[:, t] = tokens[:, t + 1]``; ``weights[:, t]`` is the loss weight of that target, and
    zero where ``t + 1`` starts another segment or is padding, or ``t`` is the last column. Works
    on NumPy and JAX arrays (jit-safe).

    Returns:
      ``(targets int32 [B, L], weights float32 [B, L])``.
    """
    xp = np if isinstance(batch["tokens"], np.ndarray) else _jnp()
    tokens, seg = batch["tokens"], batch["segment_ids"]
    w = batch["weights"] if "weights" in batch else batch["loss_mask"]
    zeros = xp.zeros_like(tokens[:, :1])
    targets = xp.concatenate([tokens[:, 1:], zeros], axis=1)
    same = (seg[:, 1:] == seg[:, :-1]) & (seg[:, 1:] > 0)
    weights = xp.where(same, w[:, 1:].astype(xp.float32), 0.0)
    weights = xp.concatenate([weights, xp.zeros_like(weights[:, :1])], axis=1)
    return targets.astype(xp.int32), weights.astype(xp.float32)


def _jnp():
    import jax.numpy as jnp

    return jnp


class PackedBatchIterator:
    """Deterministic, resumable iterator of packed ``[B, L]`` batches over tokenised examples.

    Epoch ``e`` visits the examples in the order of ``np.random.default_rng([seed, e])``'s
    permutation (or in order with ``shuffle=False``). Examples are placed greedily in that order:
    each goes to the current row if it fits, otherwise to the next row; when no row is left, the
    batch is emitted and the example opens the next batch. Examples are never split, so the
    iterator state is just ``(epoch, cursor)``: :meth:`state` / :meth:`restore` resume exactly.

    Args:
      examples: from :func:`tokenize_records`; none longer than ``seq_len``.
      batch_size: rows per batch ``B``.
      seq_len: row length ``L``.
      seed: shuffling seed.
      shuffle: shuffle per epoch.
      pack: several examples per row (False: one per row).
      num_epochs: stop after this many epochs (None: forever). The last batch of a finite run is
        padded with empty rows unless ``drop_remainder``.
      drop_remainder: drop a final incomplete batch instead.
      pad_id: token id of padding.
    """

    def __init__(
        self,
        examples: Sequence[Example],
        *,
        batch_size: int,
        seq_len: int,
        seed: int = 0,
        shuffle: bool = True,
        pack: bool = True,
        num_epochs: int | None = None,
        drop_remainder: bool = False,
        pad_id: int = 0,
    ):
        if not examples:
            raise ValueError("PackedBatchIterator: no examples")
        if batch_size <= 0 or seq_len <= 0:
            raise ValueError(f"batch_size={batch_size} and seq_len={seq_len} must be positive")
        too_long = [(e.item_id, len(e)) for e in examples if len(e) > seq_len]
        if too_long:
            raise ValueError(
                f"{len(too_long)} examples longer than seq_len={seq_len} (truncate them with "
                f"tokenize_records(max_len=...)): {too_long[:3]}"
            )
        empty = [e.item_id for e in examples if len(e) == 0]
        if empty:
            raise ValueError(f"empty examples: {empty[:3]}")
        self.examples = list(examples)
        self.batch_size, self.seq_len = batch_size, seq_len
        self.seed, self.shuffle, self.pack = seed, shuffle, pack
        self.num_epochs, self.drop_remainder, self.pad_id = num_epochs, drop_remainder, pad_id
        self._epoch, self._cursor = 0, 0
        self._order_epoch, self._order = -1, None

    def _order_of(self, epoch: int) -> np.ndarray:
        if self._order_epoch != epoch:
            n = len(self.examples)
            self._order = (
                np.random.default_rng([self.seed, epoch]).permutation(n)
                if self.shuffle
                else np.arange(n)
            )
            self._order_epoch = epoch
        return self._order

    def state(self) -> dict[str, int]:
        """Position of the next batch (JSON-able)."""
        return {
            "epoch": self._epoch,
            "cursor": self._cursor,
            "seed": self.seed,
            "num_examples": len(self.examples),
        }

    def restore(self, state: Mapping[str, int]) -> None:
        """Continues from a :meth:`state` of an iterator over the same examples and seed."""
        if state["seed"] != self.seed or state["num_examples"] != len(self.examples):
            raise ValueError(
                f"state is for seed={state['seed']}, {state['num_examples']} examples; this "
                f"iterator has seed={self.seed}, {len(self.examples)} examples"
            )
        if not 0 <= state["cursor"] <= len(self.examples) or state["epoch"] < 0:
            raise ValueError(f"invalid iterator state {dict(state)}")
        self._epoch, self._cursor = int(state["epoch"]), int(state["cursor"])

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self

    def _finished(self, epoch: int) -> bool:
        return self.num_epochs is not None and epoch >= self.num_epochs

    def __next__(self) -> dict[str, np.ndarray]:
        epoch, cursor = self._epoch, self._cursor
        if cursor >= len(self.examples):
            epoch, cursor = epoch + 1, 0
        if self._finished(epoch):
            raise StopIteration
        rows: list[list[Example]] = [[]]
        fill = 0
        while True:
            if cursor >= len(self.examples):
                if self._finished(epoch + 1):
                    break
                epoch, cursor = epoch + 1, 0
            ex = self.examples[self._order_of(epoch)[cursor]]
            fits = fill + len(ex) <= self.seq_len and (self.pack or not rows[-1])
            if not fits:
                if len(rows) == self.batch_size:
                    break
                rows.append([])
                fill = 0
            rows[-1].append(ex)
            fill += len(ex)
            cursor += 1
        self._epoch, self._cursor = epoch, cursor
        full = len(rows) == self.batch_size
        if not full and self.drop_remainder:
            raise StopIteration
        rows += [[] for _ in range(self.batch_size - len(rows))]
        return pack_rows(rows, self.seq_len, self.pad_id)
