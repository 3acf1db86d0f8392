"""Synthetic pickles in the exact MulT / MMSA / MAG-BERT layouts with a planted cross-modal signal.

The real datasets cannot be downloaded here; tests and the demo use these files instead.

Planted signal: every sample draws one latent score per modality, ``s_v, s_a, s_t ~ N(0, 1)``.
Each modality's features are Gaussian noise plus ``s_m * u_m`` on every (valid) step, where ``u_m``
is a fixed random unit direction of that modality's feature space (scaled by ``signal``). The label
needs all three modalities:

* regression: ``y = clip(round3(1.5 * (s_t + s_a * s_v)), -3, 3)`` where ``round3`` rounds to the
  nearest 1/3 (as MOSI annotations are averages of three raters), so exact zeros occur;
* IEMOCAP: emotion ``e`` is present iff ``W_e . (s_v, s_a, s_t) + s_a * s_v * c_e > 0`` for fixed
  random ``W_e``, ``c_e``.

No single modality predicts the regression label well (the product term needs audio *and*
vision), so a model that fuses the modalities beats each unimodal one.

Audio also gets a few ``-inf`` entries (as in COVAREP features), which the loaders map to 0.
"""

from __future__ import annotations

import os
import pickle
from typing import Any

import numpy as np

MULT_DIMS = {"iemocap": (300, 74, 35), "mosi": (300, 5, 20), "mosei": (300, 74, 35)}
MMSA_DIMS = {"mosi": (768, 5, 20), "mosei": (768, 74, 35)}
MAGBERT_DIMS = {"mosi": (47, 74), "mosei": (35, 74)}
_WORDS = ("the", "movie", "was", "a", "it", "and", "really", "i", "so", "very", "plot", "film")


def _latents(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.normal(size=(n, 3)).astype(np.float32)  # columns: vision, audio, text


def regression_target(s: np.ndarray) -> np.ndarray:
    """The planted regression label from latents ``s`` (N, 3) (vision, audio, text) -> (N,)."""
    y = 1.5 * (s[:, 2] + s[:, 1] * s[:, 0])
    return np.clip(np.round(y * 3.0) / 3.0, -3.0, 3.0).astype(np.float32)


def iemocap_target(s: np.ndarray, seed: int = 0) -> np.ndarray:
    """The planted IEMOCAP classes from latents ``(N, 3)`` -> ``(N, 4)`` int (0/1)."""
    rng = np.random.default_rng([seed, 99])
    w = rng.normal(size=(3, 4))
    c = rng.normal(size=(4,))
    score = s @ w + (s[:, 1] * s[:, 0])[:, None] * c[None]
    return (score > 0).astype(np.int32)


def _modality(
    rng: np.random.Generator, s: np.ndarray, t: int, d: int, signal: float, seed: int, m: int
) -> np.ndarray:
    u = np.random.default_rng([seed, 7, m]).normal(size=(d,))
    u = u / np.linalg.norm(u)
    x = rng.normal(size=(s.shape[0], t, d)).astype(np.float32)
    return x + (signal * s[:, None, None] * u[None, None, :]).astype(np.float32)


def _insert_neg_inf(rng: np.random.Generator, audio: np.ndarray, frac: float = 0.001) -> None:
    hit = rng.random(audio.shape) < frac
    hit.flat[0] = True  # at least one
    audio[hit] = -np.inf


def _split_sizes(n: int) -> dict[str, int]:
    return {"train": n, "valid": max(2, n // 4), "test": max(2, n // 4)}


def write_mult(
    path: str | os.PathLike,
    dataset: str = "iemocap",
    n_train: int = 64,
    seq_len: int = 20,
    dims: tuple[int, int, int] | None = None,
    signal: float = 2.0,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Write a MulT-layout pickle (``{split: {text, audio, vision, labels, id}}``).

    Args:
      path: output file.
      dataset: ``"iemocap"`` (labels ``(N, 4, 2)`` one-hot), ``"mosi"`` or ``"mosei"`` (labels
        ``(N, 1, 1)``).
      n_train: training samples (valid and test get ``n_train // 4``, at least 2).
      seq_len: aligned length T.
      dims: (text, audio, vision) feature dims; default the real ones (:data:`MULT_DIMS`).
      signal: strength of the planted signal relative to unit noise.
      seed: RNG seed (same seed -> identical file).

    Returns:
      The latents per split ``{split: (N, 3)}`` for checking learnability.
    """
    dt, da, dv = dims or MULT_DIMS[dataset]
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {}
    latents = {}
    for split, n in _split_sizes(n_train).items():
        s = _latents(rng, n)
        latents[split] = s
        audio = _modality(rng, s[:, 1], seq_len, da, signal, seed, 1)
        _insert_neg_inf(rng, audio)
        if dataset == "iemocap":
            labels = np.eye(2, dtype=np.float32)[iemocap_target(s, seed)]
        else:
            labels = regression_target(s)[:, None, None]
        out[split] = {
            "text": _modality(rng, s[:, 2], seq_len, dt, signal, seed, 2),
            "audio": audio,
            "vision": _modality(rng, s[:, 0], seq_len, dv, signal, seed, 0),
            "labels": labels,
            "id": np.array([[f"{split}_{i:05d}", str(i)] for i in range(n)]),
        }
    with open(path, "wb") as fh:
        pickle.dump(out, fh)
    return latents


def write_mmsa(
    path: str | os.PathLike,
    dataset: str = "mosi",
    aligned: bool = True,
    n_train: int = 64,
    dims: tuple[int, int, int] | None = None,
    lengths: tuple[int, int, int] | None = None,
    signal: float = 2.0,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Write an MMSA ``aligned_50`` / ``unaligned_50`` layout pickle.

    Args:
      path: output file.
      dataset: ``"mosi"`` or ``"mosei"`` (default dims :data:`MMSA_DIMS`).
      aligned: aligned (all lengths 50) or unaligned (audio/vision longer and ragged).
      n_train: training samples (valid/test get ``n_train // 4``, at least 2).
      dims: (text, audio, vision) feature dims.
      lengths: padded (T_t, T_a, T_v); default (50, 50, 50) aligned, (50, 375, 500) unaligned.
      signal: planted signal strength.
      seed: RNG seed.

    Returns:
      The latents per split.
    """
    dt, da, dv = dims or MMSA_DIMS[dataset]
    tt, ta, tv = lengths or ((50, 50, 50) if aligned else (50, 375, 500))
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {}
    latents = {}
    for split, n in _split_sizes(n_train).items():
        s = _latents(rng, n)
        latents[split] = s
        len_t = rng.integers(max(2, tt // 4), tt + 1, size=n)
        if aligned:
            len_a = len_v = np.full(n, tt)
        else:
            len_a = rng.integers(max(2, ta // 4), ta + 1, size=n)
            len_v = rng.integers(max(2, tv // 4), tv + 1, size=n)
        text = _modality(rng, s[:, 2], tt, dt, signal, seed, 2)
        audio = _modality(rng, s[:, 1], ta, da, signal, seed, 1)
        vision = _modality(rng, s[:, 0], tv, dv, signal, seed, 0)
        bert = np.zeros((n, 3, tt), np.int64)
        for i in range(n):
            text[i, len_t[i] :] = 0.0
            audio[i, len_a[i] :] = 0.0
            vision[i, len_v[i] :] = 0.0
            bert[i, 0, : len_t[i]] = rng.integers(1000, 30000, size=len_t[i])
            bert[i, 0, 0] = 101  # [CLS]
            bert[i, 1, : len_t[i]] = 1
        _insert_neg_inf(rng, audio)
        out[split] = {
            "raw_text": np.array([f"synthetic sentence {split} {i}" for i in range(n)]),
            "audio": audio,
            "vision": vision,
            "id": np.array([f"{split}_{i:05d}" for i in range(n)]),
            "text": text,
            "text_bert": bert,
            "audio_lengths": len_a,
            "vision_lengths": len_v,
            "annotations": np.array(["Neutral"] * n),
            "classification_labels": np.sign(regression_target(s)).astype(np.float32) + 1,
            "regression_labels": regression_target(s),
        }
    with open(path, "wb") as fh:
        pickle.dump(out, fh)
    return latents


def write_magbert(
    path: str | os.PathLike,
    dataset: str = "mosi",
    n_train: int = 64,
    max_words: int = 30,
    signal: float = 2.0,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Write a MAG-BERT layout pickle (``{train, dev, test}`` lists of samples).

    Each sample is ``((words, visual (L, D_v), acoustic (L, 74)), np.array([[label]]), segment)``.
    The text latent is planted in the words: the sentiment word ``"good"`` / ``"bad"`` is repeated
    ``round(|s_t| * 2)`` times depending on the sign of ``s_t``.

    Args:
      path: output file.
      dataset: ``"mosi"`` (visual 47) or ``"mosei"`` (visual 35).
      n_train: training samples (dev/test get ``n_train // 4``, at least 2).
      max_words: maximum words per sample.
      signal: planted signal strength (audio/vision).
      seed: RNG seed.

    Returns:
      The latents per split (keys ``train``, ``valid``, ``test``).
    """
    dv, da = MAGBERT_DIMS[dataset]
    rng = np.random.default_rng(seed)
    out: dict[str, list] = {}
    latents = {}
    for split, n in _split_sizes(n_train).items():
        s = _latents(rng, n)
        latents[split] = s
        y = regression_target(s)
        samples = []
        for i in range(n):
            k = int(round(abs(s[i, 2]) * 2))
            sentiment = ["good" if s[i, 2] > 0 else "bad"] * k
            filler = list(rng.choice(_WORDS, size=rng.integers(2, max_words - k + 1)))
            words = (filler[:1] + sentiment + filler[1:])[:max_words]
            length = len(words)
            visual = _modality(rng, s[i : i + 1, 0], length, dv, signal, seed, 0)[0]
            acoustic = _modality(rng, s[i : i + 1, 1], length, da, signal, seed, 1)[0]
            samples.append(((words, visual, acoustic), np.array([[y[i]]]), f"{split}_{i:05d}"))
        out["dev" if split == "valid" else split] = samples
    with open(path, "wb") as fh:
        pickle.dump(out, fh)
    return latents
