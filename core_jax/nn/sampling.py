"""Sampling from logits: greedy, temperature, top-k, top-p, and per-step restriction of the ids.

All functions are pure, jit-able and work on a batch ``[B, V]`` of fp32 logits. ``top_k`` is a
static Python int (it fixes a shape); ``temperature`` and ``top_p`` may be traced scalars or
per-row ``[B]`` arrays.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array
NEG_INF = -jnp.inf


def restrict_logits(
    logits: Array, *, allowed_mask: Array | None = None, id_range: tuple[Array, Array] | None = None
) -> Array:
    """Sets the logits of disallowed ids to ``-inf``.

    Args:
      logits: ``[B, V]``.
      allowed_mask: ``[V]`` or ``[B, V]`` bool, True for legal ids.
      id_range: ``(lo, hi)``, scalars or ``[B]`` int arrays: legal ids are ``lo <= id < hi``.

    Returns:
      The restricted ``[B, V]`` logits.
    """
    if allowed_mask is not None:
        if allowed_mask.shape[-1] != logits.shape[-1]:
            raise ValueError(
                f"allowed_mask has {allowed_mask.shape[-1]} ids, logits have {logits.shape[-1]}"
            )
        logits = jnp.where(jnp.broadcast_to(allowed_mask, logits.shape), logits, NEG_INF)
    if id_range is not None:
        lo, hi = (jnp.asarray(r, jnp.int32) for r in id_range)
        ids = jnp.arange(logits.shape[-1], dtype=jnp.int32)[None, :]
        lo = lo.reshape(-1, 1) if lo.ndim else lo
        hi = hi.reshape(-1, 1) if hi.ndim else hi
        logits = jnp.where((ids >= lo) & (ids < hi), logits, NEG_INF)
    return logits


def top_k_logits(logits: Array, k: int) -> Array:
    """Keeps the ``k`` largest logits of each row (ties at the threshold are all kept)."""
    if not isinstance(k, int) or k <= 0:
        raise ValueError(f"top_k must be a positive int, got {k!r}")
    k = min(k, logits.shape[-1])
    kth = jax.lax.top_k(logits, k)[0][..., -1:]
    return jnp.where(logits >= kth, logits, NEG_INF)


def top_p_logits(logits: Array, p: Array | float) -> Array:
    """Nucleus filtering: keeps the smallest set of ids whose probability mass reaches ``p``.

    The most likely id is always kept, so ``p -> 0`` degenerates to greedy.
    """
    p = jnp.asarray(p, jnp.float32)
    p = p.reshape(-1, 1) if p.ndim else p
    sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    keep_sorted = mass_before < p
    keep_sorted = keep_sorted.at[..., 0].set(True)
    # The threshold is the smallest kept logit; every id at least as likely is kept.
    threshold = jnp.min(jnp.where(keep_sorted, sorted_logits, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(logits >= threshold, logits, NEG_INF)


def sample(
    key: Array,
    logits: Array,
    *,
    temperature: Array | float = 1.0,
    top_k: int | None = None,
    top_p: Array | float | None = None,
    allowed_mask: Array | None = None,
    id_range: tuple[Array, Array] | None = None,
) -> Array:
    """Draws one id per row.

    Args:
      key: PRNG key.
      logits: ``[B, V]`` fp32.
      temperature: ``0`` means greedy (argmax); scalar or ``[B]``.
      top_k: keep the k most likely ids (static int) or None.
      top_p: nucleus mass in ``(0, 1]`` or None.
      allowed_mask: see :func:`restrict_logits`.
      id_range: see :func:`restrict_logits`.

    Returns:
      ``[B]`` int32 ids. A row whose restriction leaves no legal id returns ``-1``, which is
      never a valid id, so callers can detect it instead of acting on garbage.
    """
    if logits.ndim != 2:
        raise ValueError(f"logits must be [batch, vocab], got shape {logits.shape}")
    logits = restrict_logits(
        logits.astype(jnp.float32), allowed_mask=allowed_mask, id_range=id_range
    )
    any_legal = jnp.any(logits > NEG_INF, axis=-1)
    greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    t = jnp.asarray(temperature, jnp.float32)
    t_safe = jnp.where(t > 0, t, 1.0)
    scaled = logits / (t_safe.reshape(-1, 1) if t_safe.ndim else t_safe)
    if top_k is not None:
        scaled = top_k_logits(scaled, top_k)
    if top_p is not None:
        scaled = top_p_logits(scaled, top_p)
    drawn = jax.random.categorical(key, scaled, axis=-1).astype(jnp.int32)
    ids = jnp.where(t > 0, drawn, greedy)
    return jnp.where(any_legal, ids, -1)
