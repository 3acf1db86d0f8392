"""Loaders for the three public pickle layouts of MOSI / MOSEI / IEMOCAP into one batch pytree.

Layouts (spec section 4):

* ``"mult"`` — MulT ``{mosi,mosei_senti,iemocap}_data.pkl``: ``{split: {"text", "audio", "vision",
  "labels", "id"}}`` for ``split`` in ``train/valid/test``. Features ``(N, T, D)`` word-aligned (one
  ``T`` for all three). Labels ``(N, 1, 1)`` / ``(N, 1)`` / ``(N,)`` sentiment in ``[-3, 3]``, or
  IEMOCAP ``(N, 4, 2)`` one-hot (Neutral, Happy, Sad, Angry) x (no, yes).
* ``"mmsa"`` — MMSA ``aligned_50.pkl`` / ``unaligned_50.pkl``: ``{split: {"text" (N, 50, 768),
  "text_bert" (N, 3, 50) [ids, attention mask, segment ids], "audio" (N, T_a, D_a), "vision"
  (N, T_v, D_v), "audio_lengths" (N,), "vision_lengths" (N,), "regression_labels" (N,),
  "raw_text" (N,), "id" (N,)}}``.
* ``"magbert"`` — MAG-BERT ``mosi.pkl`` / ``mosei.pkl``: ``{"train"|"dev"|"test": [((words,
  visual (L, D_v), acoustic (L, D_a)), label, segment), ...]}`` with word-level alignment. ``dev``
  is exposed as ``valid``. Words are strings: they are mapped to ids through a vocabulary built from
  the ``train`` split (0 = padding, 1 = unknown); BERT word-piece tokenisation is not reproduced
  (no tokenizer can be downloaded here), so ``text`` features are absent and ``text_ids`` is set.

Cleaning, as the original loaders do: ``-inf`` -> 0 in ``audio`` (MulT and MMSA both do this; we
apply it to ``vision`` too, where it never occurs in the released files). Any other non-finite value
(NaN, +inf) raises :class:`DataError` naming the split, key and count, unless
``nan_to_zero=True``.

Every structural problem (not a pickle, missing split/key, wrong ndim, inconsistent N, lengths out
of range) raises :class:`DataError` (a ``ValueError``) naming the file, split, key and shape.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
from collections.abc import Iterator
from typing import Any

import numpy as np
from flax import struct

LAYOUTS = ("mult", "mmsa", "magbert")
SPLITS = ("train", "valid", "test")
MULT_KEYS = ("text", "audio", "vision", "labels", "id")
MMSA_KEYS = (
    "text",
    "text_bert",
    "audio",
    "vision",
    "audio_lengths",
    "vision_lengths",
    "regression_labels",
    "raw_text",
    "id",
)


class DataError(ValueError):
    """A data file is missing, corrupt or does not have the expected layout."""


@struct.dataclass
class MSABatch:
    """One batch (or a whole split) of multimodal sentiment data; a JAX pytree of arrays.

    Attributes:
      text: ``(N, T_t, D_t)`` float32 text features, or ``None`` (MAG-BERT layout).
      text_ids: ``(N, T_t)`` int32 word ids (MAG-BERT layout), or ``None``.
      text_bert: ``(N, 3, T_t)`` int32 BERT ids / attention mask / segments (MMSA), or ``None``.
      audio: ``(N, T_a, D_a)`` float32.
      vision: ``(N, T_v, D_v)`` float32.
      text_mask: ``(N, T_t)`` bool, True on real (non-padded) steps.
      audio_mask: ``(N, T_a)`` bool.
      vision_mask: ``(N, T_v)`` bool.
      labels: ``(N,)`` float32 sentiment in [-3, 3], or ``(N, 4)`` int32 IEMOCAP classes (0/1).
      valid: ``(N,)`` bool, False on rows that only pad the last batch to a fixed size.
    """

    text: np.ndarray | None
    text_ids: np.ndarray | None
    text_bert: np.ndarray | None
    audio: np.ndarray
    vision: np.ndarray
    text_mask: np.ndarray
    audio_mask: np.ndarray
    vision_mask: np.ndarray
    labels: np.ndarray
    valid: np.ndarray

    @property
    def size(self) -> int:
        """Number of rows N (including padding rows)."""
        return int(self.labels.shape[0])


@dataclasses.dataclass(frozen=True)
class Dataset:
    """One split of one file: the arrays plus host-only metadata.

    Attributes:
      batch: all rows as an :class:`MSABatch` (``valid`` all True).
      ids: ``(N, ...)`` sample ids as stored in the file.
      raw_text: ``(N,)`` sentences (MMSA), joined words (MAG-BERT) or ``None`` (MulT).
      layout: ``"mult"``, ``"mmsa"`` or ``"magbert"``.
      task: ``"regression"`` or ``"iemocap"``.
      vocab: MAG-BERT word -> id (built on ``train``; ``None`` for other layouts).
    """

    batch: MSABatch
    ids: np.ndarray
    raw_text: np.ndarray | None
    layout: str
    task: str
    vocab: dict[str, int] | None = None

    def __len__(self) -> int:
        return self.batch.size


# ----------------------------------------------------------------------------------------- helpers


def _read_pickle(path: str | os.PathLike) -> Any:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file")
    try:
        with open(path, "rb") as fh:
            return pickle.load(fh)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a corrupt file
        raise DataError(f"{path}: not a readable pickle ({type(e).__name__}: {e})") from e


def _split_dict(obj: Any, path: str, split: str, stored: str) -> Any:
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a dict of splits, got {type(obj).__name__}")
    if stored not in obj:
        raise DataError(f"{path}: missing split {stored!r} (has {sorted(map(str, obj))})")
    return obj[stored]


def _where(path: str, split: str, key: str) -> str:
    return f"{path} [{split}][{key!r}]"


def _features(d: dict, key: str, path: str, split: str, nan_to_zero: bool) -> np.ndarray:
    if key not in d:
        raise DataError(f"{path} [{split}]: missing key {key!r} (has {sorted(map(str, d))})")
    try:
        x = np.asarray(d[key], dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise DataError(f"{_where(path, split, key)}: not a numeric array ({e})") from e
    if x.ndim != 3:
        raise DataError(f"{_where(path, split, key)}: expected (N, T, D), got shape {x.shape}")
    return _clean(x, key, path, split, nan_to_zero)


def _clean(x: np.ndarray, key: str, path: str, split: str, nan_to_zero: bool) -> np.ndarray:
    x = x.copy()
    x[x == -np.inf] = 0.0  # as MulT / MMSA do for COVAREP audio
    bad = ~np.isfinite(x)
    if bad.any():
        if not nan_to_zero:
            raise DataError(
                f"{_where(path, split, key)}: {int(bad.sum())} NaN/+inf value(s) in shape "
                f"{x.shape} (pass nan_to_zero=True to replace them by 0)"
            )
        x[bad] = 0.0
    return x


def _check_n(path: str, split: str, arrays: dict[str, Any]) -> int:
    ns = {k: len(v) for k, v in arrays.items()}
    if len(set(ns.values())) != 1:
        raise DataError(f"{path} [{split}]: inconsistent number of samples per key {ns}")
    return next(iter(ns.values()))


def _length_mask(lengths: Any, t: int, key: str, path: str, split: str) -> np.ndarray:
    lengths = np.asarray(lengths)
    if lengths.ndim != 1:
        raise DataError(f"{_where(path, split, key)}: expected (N,), got shape {lengths.shape}")
    if lengths.size and (lengths.min() < 0 or lengths.max() > t):
        raise DataError(
            f"{_where(path, split, key)}: lengths must lie in [0, {t}], got "
            f"[{lengths.min()}, {lengths.max()}]"
        )
    return np.arange(t)[None, :] < lengths[:, None]


def _regression_labels(x: Any, key: str, path: str, split: str) -> np.ndarray:
    y = np.asarray(x, dtype=np.float32)
    if y.ndim > 1 and int(np.prod(y.shape[1:])) == 1:
        y = y.reshape(y.shape[0])
    if y.ndim != 1:
        raise DataError(f"{_where(path, split, key)}: expected (N,) or (N, 1, 1), got {y.shape}")
    if not np.all(np.isfinite(y)):
        raise DataError(f"{_where(path, split, key)}: labels contain NaN/inf")
    return y


# ----------------------------------------------------------------------------------------- loaders


def load_mult(path: str | os.PathLike, split: str, nan_to_zero: bool = False) -> Dataset:
    """Load one split of a MulT pickle.

    Args:
      path: ``{mosi,mosei_senti,iemocap}_data.pkl``.
      split: ``"train"``, ``"valid"`` or ``"test"``.
      nan_to_zero: replace NaN/+inf features by 0 instead of raising.

    Returns:
      A :class:`Dataset` with ``task="iemocap"`` for ``(N, 4, 2)`` labels, else ``"regression"``.
    """
    path = os.fspath(path)
    _check_split(split)
    d = _split_dict(_read_pickle(path), path, split, split)
    if not isinstance(d, dict):
        raise DataError(f"{path} [{split}]: expected a dict of arrays, got {type(d).__name__}")
    for k in MULT_KEYS:
        if k not in d:
            raise DataError(f"{path} [{split}]: missing key {k!r} (has {sorted(map(str, d))})")
    text, audio, vision = (_features(d, k, path, split, nan_to_zero) for k in MULT_KEYS[:3])
    raw_labels = np.asarray(d["labels"])
    n = _check_n(
        path, split, {"text": text, "audio": audio, "vision": vision, "labels": raw_labels,
                      "id": d["id"]}
    )  # fmt: skip
    if raw_labels.ndim == 3 and raw_labels.shape[1:] == (4, 2):
        if not np.all(np.isfinite(raw_labels.astype(np.float64))):
            raise DataError(f"{_where(path, split, 'labels')}: labels contain NaN/inf")
        labels, task = np.argmax(raw_labels, axis=-1).astype(np.int32), "iemocap"
    else:
        labels, task = _regression_labels(raw_labels, "labels", path, split), "regression"
    ones = lambda x: np.ones(x.shape[:2], bool)
    batch = MSABatch(
        text=text, text_ids=None, text_bert=None, audio=audio, vision=vision,
        text_mask=ones(text), audio_mask=ones(audio), vision_mask=ones(vision),
        labels=labels, valid=np.ones(n, bool),
    )  # fmt: skip
    return Dataset(batch, np.asarray(d["id"]), None, "mult", task)


def load_mmsa(path: str | os.PathLike, split: str, nan_to_zero: bool = False) -> Dataset:
    """Load one split of an MMSA ``aligned_50.pkl`` / ``unaligned_50.pkl``.

    Audio/vision masks come from ``audio_lengths`` / ``vision_lengths``; the text mask is
    ``text_bert[:, 1]`` (BERT attention mask).

    Args:
      path: the pickle.
      split: ``"train"``, ``"valid"`` or ``"test"``.
      nan_to_zero: replace NaN/+inf features by 0 instead of raising.

    Returns:
      A regression :class:`Dataset` (labels from ``regression_labels``).
    """
    path = os.fspath(path)
    _check_split(split)
    d = _split_dict(_read_pickle(path), path, split, split)
    if not isinstance(d, dict):
        raise DataError(f"{path} [{split}]: expected a dict of arrays, got {type(d).__name__}")
    for k in MMSA_KEYS:
        if k not in d:
            raise DataError(f"{path} [{split}]: missing key {k!r} (has {sorted(map(str, d))})")
    text = _features(d, "text", path, split, nan_to_zero)
    audio = _features(d, "audio", path, split, nan_to_zero)
    vision = _features(d, "vision", path, split, nan_to_zero)
    text_bert = np.asarray(d["text_bert"])
    if text_bert.ndim != 3 or text_bert.shape[1] != 3 or text_bert.shape[2] != text.shape[1]:
        raise DataError(
            f"{_where(path, split, 'text_bert')}: expected (N, 3, {text.shape[1]}), got "
            f"{text_bert.shape}"
        )
    n = _check_n(path, split, {k: d[k] for k in MMSA_KEYS})
    labels = _regression_labels(d["regression_labels"], "regression_labels", path, split)
    batch = MSABatch(
        text=text,
        text_ids=None,
        text_bert=text_bert.astype(np.int32),
        audio=audio,
        vision=vision,
        text_mask=text_bert[:, 1].astype(bool),
        audio_mask=_length_mask(d["audio_lengths"], audio.shape[1], "audio_lengths", path, split),
        vision_mask=_length_mask(
            d["vision_lengths"], vision.shape[1], "vision_lengths", path, split
        ),
        labels=labels,
        valid=np.ones(n, bool),
    )
    return Dataset(batch, np.asarray(d["id"]), np.asarray(d["raw_text"]), "mmsa", "regression")


def build_vocab(words_per_sample: list[list[str]]) -> dict[str, int]:
    """Word -> id in order of first appearance; 0 is padding and 1 unknown.

    Args:
      words_per_sample: the word lists of the training split.

    Returns:
      The vocabulary dict.
    """
    vocab = {"<pad>": 0, "<unk>": 1}
    for words in words_per_sample:
        for w in words:
            vocab.setdefault(str(w), len(vocab))
    return vocab


def _magbert_samples(obj: Any, path: str, split: str) -> list:
    stored = "dev" if split == "valid" else split
    samples = _split_dict(obj, path, split, stored)
    if not isinstance(samples, list | tuple) or not samples:
        raise DataError(f"{path} [{stored}]: expected a non-empty list of samples")
    for i, s in enumerate(samples):
        ok = (
            isinstance(s, list | tuple)
            and len(s) == 3
            and isinstance(s[0], list | tuple)
            and len(s[0]) == 3
        )
        if not ok:
            raise DataError(
                f"{path} [{stored}][{i}]: expected ((words, visual, acoustic), label, segment)"
            )
    return samples


def load_magbert(
    path: str | os.PathLike,
    split: str,
    max_seq_length: int = 50,
    vocab: dict[str, int] | None = None,
    nan_to_zero: bool = False,
) -> Dataset:
    """Load one split of a MAG-BERT ``mosi.pkl`` / ``mosei.pkl``.

    Sequences are truncated to ``max_seq_length`` words and zero-padded to it (masks mark real
    steps); the same mask serves all three modalities (word-level alignment).

    Args:
      path: the pickle.
      split: ``"train"``, ``"valid"`` (stored as ``dev``) or ``"test"``.
      max_seq_length: padded length T.
      vocab: word -> id; default builds one from this file's ``train`` split.
      nan_to_zero: replace NaN/+inf features by 0 instead of raising.

    Returns:
      A regression :class:`Dataset` with ``text_ids`` and ``vocab``.
    """
    path = os.fspath(path)
    _check_split(split)
    obj = _read_pickle(path)
    samples = _magbert_samples(obj, path, split)
    if vocab is None:
        vocab = build_vocab([s[0][0] for s in _magbert_samples(obj, path, "train")])
    stored = "dev" if split == "valid" else split
    n, t = len(samples), max_seq_length
    dims: dict[str, int] = {}
    feats = {"visual": [], "acoustic": []}
    ids = np.zeros((n, t), np.int32)
    mask = np.zeros((n, t), bool)
    labels = np.zeros(n, np.float32)
    segments, raw = [], []
    for i, ((words, visual, acoustic), label, segment) in enumerate(samples):
        length = len(words)
        for key, x in (("visual", visual), ("acoustic", acoustic)):
            x = np.asarray(x, np.float32)
            where = f"{path} [{stored}][{i}] {key}"
            if x.ndim != 2 or x.shape[0] != length:
                raise DataError(
                    f"{where}: expected ({length}, D) (one row per word), got {x.shape}"
                )
            if dims.setdefault(key, x.shape[1]) != x.shape[1]:
                raise DataError(f"{where}: feature dim {x.shape[1]} != {dims[key]} of sample 0")
            pad = np.zeros((t, x.shape[1]), np.float32)
            pad[: min(length, t)] = x[:t]
            feats[key].append(pad)
        k = min(length, t)
        ids[i, :k] = [vocab.get(str(w), 1) for w in list(words)[:t]]
        mask[i, :k] = True
        lab = np.asarray(label, np.float32).reshape(-1)
        if lab.size != 1:
            raise DataError(f"{path} [{stored}][{i}] label: expected one value, got {lab.shape}")
        labels[i] = lab[0]
        segments.append(segment)
        raw.append(" ".join(map(str, words)))
    vision = _clean(np.stack(feats["visual"]), "visual", path, stored, nan_to_zero)
    audio = _clean(np.stack(feats["acoustic"]), "acoustic", path, stored, nan_to_zero)
    if not np.all(np.isfinite(labels)):
        raise DataError(f"{path} [{stored}] label: labels contain NaN/inf")
    batch = MSABatch(
        text=None, text_ids=ids, text_bert=None, audio=audio, vision=vision,
        text_mask=mask, audio_mask=mask.copy(), vision_mask=mask.copy(),
        labels=labels, valid=np.ones(n, bool),
    )  # fmt: skip
    return Dataset(batch, np.asarray(segments), np.asarray(raw), "magbert", "regression", vocab)


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected one of {SPLITS}")


def load(path: str | os.PathLike, split: str, layout: str | None = None, **kw: Any) -> Dataset:
    """Load one split, detecting the layout from the file when ``layout`` is None.

    Detection: ``dev`` split -> magbert; a ``text_bert`` key -> mmsa; otherwise mult.

    Args:
      path: the pickle.
      split: ``"train"``, ``"valid"`` or ``"test"``.
      layout: ``"mult"``, ``"mmsa"``, ``"magbert"`` or None.
      **kw: passed to the layout's loader.

    Returns:
      The :class:`Dataset`.
    """
    if layout is None:
        obj = _read_pickle(path)
        if isinstance(obj, dict) and "dev" in obj:
            layout = "magbert"
        elif isinstance(obj, dict) and isinstance(obj.get("train"), dict):
            layout = "mmsa" if "text_bert" in obj["train"] else "mult"
        else:
            raise DataError(f"{os.fspath(path)}: cannot detect the layout; pass layout=")
    loaders = {"mult": load_mult, "mmsa": load_mmsa, "magbert": load_magbert}
    if layout not in loaders:
        raise DataError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
    return loaders[layout](path, split, **kw)


# ----------------------------------------------------------------------------------------- batching


def _take(x: np.ndarray | None, idx: np.ndarray, size: int) -> np.ndarray | None:
    if x is None:
        return None
    out = np.zeros((size,) + x.shape[1:], x.dtype)
    out[: len(idx)] = x[idx]
    return out


def iterate_batches(
    data: Dataset | MSABatch,
    batch_size: int,
    *,
    shuffle: bool = False,
    seed: int = 0,
    epoch: int = 0,
    drop_last: bool = False,
) -> Iterator[MSABatch]:
    """Fixed-shape batches over a split.

    Every batch has exactly ``batch_size`` rows, so a jitted step compiles once. With
    ``drop_last=False`` the final partial batch is zero-padded and its padding rows have
    ``valid=False`` (and all-False masks); with ``drop_last=True`` it is skipped (the official
    code's ``DataLoader(drop_last=True)``). The order is a permutation drawn from
    ``np.random.default_rng([seed, epoch])``: the same (seed, epoch) always gives the same order.

    Args:
      data: a :class:`Dataset` or a full :class:`MSABatch`.
      batch_size: rows per batch (> 0).
      shuffle: permute rows.
      seed: shuffling seed.
      epoch: mixed into the seed so each epoch has its own order.
      drop_last: skip the final partial batch.

    Yields:
      :class:`MSABatch` of NumPy arrays with leading dim ``batch_size``.
    """
    full = data.batch if isinstance(data, Dataset) else data
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    n = full.size
    order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        idx = order[start : start + batch_size]
        yield full.replace(**{
            f.name: _take(getattr(full, f.name), idx, batch_size)
            for f in dataclasses.fields(full)
        })  # fmt: skip


def num_batches(n: int, batch_size: int, drop_last: bool = False) -> int:
    """Number of batches :func:`iterate_batches` yields for ``n`` rows."""
    return n // batch_size if drop_last else -(-n // batch_size)
