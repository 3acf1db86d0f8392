"""Multimodal sentiment metrics under three named conventions, plus IEMOCAP's per-emotion scores.

Everything here is host-side NumPy (float64): metrics run once per evaluation on gathered
predictions, never inside ``jit``. The numbers differ between the public code bases, so every result
is tied to a named convention and :func:`format_table` always prints it.

Conventions of :func:`msa_metrics` (``preds`` and ``labels`` are flattened to ``(N,)``):

``"mmsa"`` (default; MMSA ``metricsTop.py``, ``__eval_mosei_regression``):
  * ``MAE`` = mean |p - y| over all samples; ``Corr`` = Pearson over all samples.
  * ``Mult_acc_7`` = mean(round(clip(p, -3, 3)) == round(clip(y, -3, 3))), ``Mult_acc_5`` the same
    with clip +-2; ``np.round`` rounds half to even (0.5 -> 0, 1.5 -> 2, -2.5 -> -2).
  * ``Has0_acc_2`` / ``Has0_F1_score``: all samples, classes ``y >= 0`` vs ``p >= 0``.
  * ``Non0_acc_2`` / ``Non0_F1_score``: only samples with ``y != 0``, classes ``y > 0`` vs
    ``p > 0``.
  * F1 is support-weighted (scikit-learn ``average="weighted"``) with the true labels first.

``"mult"`` (MulT ``src/eval_metrics.py``, ``eval_mosei_senti``; MulT calls it with
``exclude_zero=True`` for MOSI/MOSEI):
  * ``MAE``, ``Corr``, ``Mult_acc_7``, ``Mult_acc_5`` exactly as in ``mmsa`` (all samples).
  * Binary classes use ``> 0`` for both predictions and labels, so a prediction or label of
    exactly 0 is *negative* (MMSA's Has0 counts it as non-negative).
  * ``Non0_*`` = ``exclude_zero=True`` (samples with ``y != 0``); ``Has0_*`` =
    ``exclude_zero=False`` (all samples, still thresholded at ``> 0``).
  * F1 is called as ``f1_score(preds > 0, truths > 0, average="weighted")``: the arguments are
    swapped, so the weights are the supports of the *predicted* classes. Accuracy is symmetric.

``"magbert"`` (MAG-BERT ``multimodal_driver.py``, ``test_score_model(..., use_zero=False)``):
  * Samples with ``y == 0`` are removed *before* everything, including ``MAE`` and ``Corr``
    (zero-filtered MAE/Corr).
  * Binary classes ``y >= 0`` vs ``p >= 0`` (on the filtered set equivalent to ``y > 0``), F1 with
    the true labels first (not swapped).
  * ``Non0_*`` = ``use_zero=False`` (the published numbers); ``Has0_*`` = ``use_zero=True`` (all
    samples, ``>= 0``).
  * MAG-BERT reports no 5- or 7-class accuracy: ``Mult_acc_5`` and ``Mult_acc_7`` are ``nan`` and
    print as ``n/a``.

``decimals=4`` reproduces MMSA's ``round(x, 4)`` of every value; the default keeps full precision.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

MSA_KEYS = (
    "Has0_acc_2",
    "Has0_F1_score",
    "Non0_acc_2",
    "Non0_F1_score",
    "Mult_acc_5",
    "Mult_acc_7",
    "MAE",
    "Corr",
)
CONVENTIONS = ("mmsa", "mult", "magbert")
IEMOCAP_EMOTIONS = ("Neutral", "Happy", "Sad", "Angry")


def _as_float_vector(name: str, x: Any) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype == object or not (
        np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.bool_)
    ):
        raise ValueError(f"{name}: expected a numeric array, got dtype {arr.dtype}")
    arr = arr.astype(np.float64).reshape(-1)
    if arr.size == 0:
        raise ValueError(f"{name}: empty array")
    bad = ~np.isfinite(arr)
    if bad.any():
        raise ValueError(
            f"{name}: {int(bad.sum())} non-finite value(s) (NaN/inf), first at flat index "
            f"{int(np.argmax(bad))}"
        )
    return arr


def _check_pair(preds: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    p_shape, y_shape = np.shape(preds), np.shape(labels)
    p = _as_float_vector("preds", preds)
    y = _as_float_vector("labels", labels)
    if p.shape != y.shape:
        raise ValueError(
            f"shape mismatch: preds {p_shape} ({p.size} values) vs labels {y_shape} "
            f"({y.size} values)"
        )
    return p, y


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Fraction of equal entries (scikit-learn ``accuracy_score``).

    Args:
      y_true: ``(N,)`` class labels.
      y_pred: ``(N,)`` class labels.

    Returns:
      ``mean(y_true == y_pred)`` as a Python float.
    """
    return float(np.mean(np.asarray(y_true) == np.asarray(y_pred)))


def weighted_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Support-weighted F1 (scikit-learn ``f1_score(y_true, y_pred, average="weighted")``).

    The classes are the union of the values in both arrays; each class's F1 is
    ``2 TP / (2 TP + FP + FN)`` (0 when the denominator is 0, scikit-learn's ``zero_division``
    default) and is weighted by its support in ``y_true``.

    Args:
      y_true: ``(N,)`` class labels; supplies the weights.
      y_pred: ``(N,)`` class labels.

    Returns:
      The weighted F1 as a Python float.
    """
    y_true = np.asarray(y_true).reshape(-1)
    y_pred = np.asarray(y_pred).reshape(-1)
    total = 0.0
    for c in np.union1d(y_true, y_pred):
        t, q = y_true == c, y_pred == c
        tp = float(np.sum(t & q))
        denom = 2.0 * tp + float(np.sum(~t & q)) + float(np.sum(t & ~q))
        f1 = 2.0 * tp / denom if denom > 0 else 0.0
        total += f1 * float(np.sum(t))
    return total / y_true.size


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation in float64 (``np.corrcoef(x, y)[0, 1]``); ``nan`` if either is constant.

    Args:
      x: ``(N,)`` values.
      y: ``(N,)`` values.

    Returns:
      The correlation coefficient as a Python float.
    """
    x = np.asarray(x, np.float64) - np.mean(x)
    y = np.asarray(y, np.float64) - np.mean(y)
    denom = np.sqrt(np.sum(x * x) * np.sum(y * y))
    if denom == 0.0:
        return float("nan")
    return float(np.clip(np.sum(x * y) / denom, -1.0, 1.0))


def multiclass_acc(preds: np.ndarray, labels: np.ndarray, clip: float) -> float:
    """``mean(round(clip(p)) == round(clip(y)))`` with NumPy's round-half-to-even.

    Args:
      preds: ``(N,)`` regression outputs.
      labels: ``(N,)`` regression targets.
      clip: symmetric clip bound (3 for Acc-7, 2 for Acc-5).

    Returns:
      The accuracy as a Python float.
    """
    p = np.round(np.clip(preds, -clip, clip))
    y = np.round(np.clip(labels, -clip, clip))
    return float(np.mean(p == y))


def _binary(y_true, y_pred, swap_f1: bool) -> tuple[float, float]:
    if y_true.size == 0:
        raise ValueError("no samples left after removing labels equal to 0; Non0 metrics undefined")
    f1 = weighted_f1(y_pred, y_true) if swap_f1 else weighted_f1(y_true, y_pred)
    return accuracy(y_true, y_pred), f1


def msa_metrics(
    preds: Any, labels: Any, convention: str = "mmsa", decimals: int | None = None
) -> dict[str, float]:
    """Sentiment regression metrics (MOSI/MOSEI, labels in [-3, 3]) under a named convention.

    See the module docstring for exactly what each convention computes.

    Args:
      preds: ``(N,)`` or ``(N, 1)`` predictions (any array-like, NumPy or JAX).
      labels: same number of values as ``preds``.
      convention: ``"mmsa"``, ``"mult"`` or ``"magbert"``.
      decimals: round every value to this many decimals (MMSA uses 4); ``None`` keeps all.

    Returns:
      A dict with exactly the keys of :data:`MSA_KEYS` (Python floats; ``nan`` where the
      convention defines no value).

    Raises:
      ValueError: unknown convention, shape mismatch, empty input, NaN/inf values, or no non-zero
        label (Non0 metrics undefined).
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown convention {convention!r}; expected one of {CONVENTIONS}")
    p, y = _check_pair(preds, labels)
    nz = y != 0
    out: dict[str, float] = {}
    if convention == "mmsa":
        out["Has0_acc_2"], out["Has0_F1_score"] = _binary(y >= 0, p >= 0, swap_f1=False)
        out["Non0_acc_2"], out["Non0_F1_score"] = _binary(y[nz] > 0, p[nz] > 0, swap_f1=False)
        out["Mult_acc_5"] = multiclass_acc(p, y, 2.0)
        out["Mult_acc_7"] = multiclass_acc(p, y, 3.0)
        out["MAE"] = float(np.mean(np.abs(p - y)))
        out["Corr"] = pearson(p, y)
    elif convention == "mult":
        out["Has0_acc_2"], out["Has0_F1_score"] = _binary(y > 0, p > 0, swap_f1=True)
        out["Non0_acc_2"], out["Non0_F1_score"] = _binary(y[nz] > 0, p[nz] > 0, swap_f1=True)
        out["Mult_acc_5"] = multiclass_acc(p, y, 2.0)
        out["Mult_acc_7"] = multiclass_acc(p, y, 3.0)
        out["MAE"] = float(np.mean(np.abs(p - y)))
        out["Corr"] = pearson(p, y)
    else:
        out["Has0_acc_2"], out["Has0_F1_score"] = _binary(y >= 0, p >= 0, swap_f1=False)
        pz, yz = p[nz], y[nz]
        out["Non0_acc_2"], out["Non0_F1_score"] = _binary(yz >= 0, pz >= 0, swap_f1=False)
        out["Mult_acc_5"] = float("nan")
        out["Mult_acc_7"] = float("nan")
        out["MAE"] = float(np.mean(np.abs(pz - yz)))
        out["Corr"] = pearson(pz, yz)
    out = {k: out[k] for k in MSA_KEYS}
    if decimals is not None:
        out = {k: float(np.round(v, decimals)) for k, v in out.items()}
    return out


def _class_indices(name: str, x: Any, n_emotions: int) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype == object or not (
        np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.bool_)
    ):
        raise ValueError(f"{name}: expected a numeric array, got dtype {arr.dtype}")
    if arr.ndim == 3 and arr.shape[1:] == (n_emotions, 2):
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name}: contains NaN/inf")
        return np.argmax(arr, axis=-1)
    if arr.ndim == 2 and arr.shape[1] == n_emotions:
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name}: contains NaN/inf")
        if not np.all(np.isin(arr, (0, 1))):
            raise ValueError(f"{name}: class indices of shape (N, {n_emotions}) must be 0 or 1")
        return arr.astype(np.int64)
    raise ValueError(
        f"{name}: expected shape (N, {n_emotions}, 2) scores/one-hot or (N, {n_emotions}) class "
        f"indices, got {arr.shape}"
    )


def iemocap_metrics(preds: Any, labels: Any) -> dict[str, float]:
    """Per-emotion binary accuracy and weighted F1 on IEMOCAP (MulT ``eval_iemocap``), plus means.

    Args:
      preds: ``(N, 4, 2)`` logits/probabilities (argmax over the last axis) or ``(N, 4)`` 0/1
        predictions; emotion order Neutral, Happy, Sad, Angry.
      labels: ``(N, 4, 2)`` one-hot (MulT pickles) or ``(N, 4)`` 0/1 class indices.

    Returns:
      ``{"<Emotion>_acc", "<Emotion>_F1"}`` for each emotion and ``"Mean_acc"``, ``"Mean_F1"``
      (unweighted means over the four emotions). F1 is
      ``f1_score(truth, pred, average="weighted")``.

    Raises:
      ValueError: wrong shape, NaN/inf, non-binary indices or mismatched N.
    """
    n = len(IEMOCAP_EMOTIONS)
    p = _class_indices("preds", preds, n)
    y = _class_indices("labels", labels, n)
    if p.shape[0] != y.shape[0]:
        raise ValueError(f"shape mismatch: preds has N={p.shape[0]}, labels has N={y.shape[0]}")
    if p.shape[0] == 0:
        raise ValueError("preds: empty array")
    out: dict[str, float] = {}
    for i, emo in enumerate(IEMOCAP_EMOTIONS):
        out[f"{emo}_acc"] = accuracy(y[:, i], p[:, i])
        out[f"{emo}_F1"] = weighted_f1(y[:, i], p[:, i])
    out["Mean_acc"] = float(np.mean([out[f"{e}_acc"] for e in IEMOCAP_EMOTIONS]))
    out["Mean_F1"] = float(np.mean([out[f"{e}_F1"] for e in IEMOCAP_EMOTIONS]))
    return out


def format_table(metrics: Mapping[str, float], convention: str, title: str | None = None) -> str:
    """A markdown table of metric values whose header always names the convention.

    Args:
      metrics: name -> value (``nan`` prints as ``n/a``).
      convention: the convention that produced the numbers (e.g. ``"mmsa"``, ``"mult"``,
        ``"magbert"``, ``"iemocap"``); required so a number is never printed without it.
      title: optional first line (e.g. dataset and split).

    Returns:
      The table as a string (no trailing newline).
    """
    if not convention:
        raise ValueError("format_table: a convention name is required")
    lines = [] if title is None else [title]
    lines.append(f"| metric ({convention} convention) | value |")
    lines.append("|---|---|")
    for k, v in metrics.items():
        vf = float(v)
        lines.append(f"| {k} | {'n/a' if np.isnan(vf) else f'{vf:.4f}'} |")
    return "\n".join(lines)
