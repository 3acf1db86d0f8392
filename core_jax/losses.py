"""Losses shared by the language-model style systems (Gato, AgentEvol)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def masked_cross_entropy(
    logits: Array, targets: Array, mask: Array | None = None, weights: Array | None = None
) -> tuple[Array, dict[str, Array]]:
    """Mean token cross-entropy over positions where ``mask`` is set.

    Args:
      logits: ``[..., V]`` (any float dtype; computed in fp32).
      targets: ``[...]`` int ids.
      mask: ``[...]`` bool/0-1, positions that count (default all).
      weights: optional ``[...]`` per-token weights multiplied into the mask (e.g. rewards).

    Returns:
      ``(loss, metrics)`` with ``loss = sum(mask * w * nll) / max(sum(mask), 1)`` and metrics
      ``loss``, ``accuracy`` (argmax == target on masked positions) and ``num_tokens``.
    """
    if logits.shape[:-1] != targets.shape:
        raise ValueError(f"logits {logits.shape} and targets {targets.shape} disagree")
    logits = logits.astype(jnp.float32)
    m = jnp.ones(targets.shape, jnp.float32) if mask is None else mask.astype(jnp.float32)
    if m.shape != targets.shape:
        raise ValueError(f"mask {m.shape} and targets {targets.shape} disagree")
    logz = jax.nn.logsumexp(logits, axis=-1)
    tgt = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    nll = logz - tgt
    w = m if weights is None else m * weights.astype(jnp.float32)
    denom = jnp.maximum(m.sum(), 1.0)
    loss = (nll * w).sum() / denom
    acc = ((jnp.argmax(logits, -1) == targets) * m).sum() / denom
    return loss, {"loss": loss, "accuracy": acc, "num_tokens": m.sum()}
