"""Gato loss and the pure training step (spec sections 5 and 7).

    >>> sched = make_schedule(cfg.optim)
    >>> step = functools.partial(train_step, model=Gato(cfg.model), schedule=sched)
    >>> state, metrics = core_jax.parallel.make_train_step(step, mesh=mesh, ...)(state, batch)

Loss: autoregressive cross-entropy of ``logits[:, :-1]`` against ``tokens[:, 1:]`` with mask
``loss_mask[:, 1:]`` (1 only on text and action targets; observations, image patches,
separators and padding contribute nothing), normalised by the mask count
(:func:`core_jax.losses.masked_cross_entropy`). Metrics add the same loss and accuracy restricted
to text targets and to action targets.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from core_jax.losses import masked_cross_entropy
from core_jax.train_state import TrainState
from gato_jax.models import Gato
from gato_jax.spec import TokenKind

Array = jax.Array


def gato_loss(logits: Array, inputs: Any) -> tuple[Array, dict[str, Array]]:
    """Masked next-token loss and per-kind metrics.

    Args:
      logits: ``[B, L, V]`` model outputs for the window.
      inputs: batched :class:`~gato_jax.sequence.GatoInputs` (reads ``tokens``, ``kinds``,
        ``loss_mask``).

    Returns:
      ``(loss, metrics)``: ``loss``, ``accuracy``, ``num_tokens`` over all targets, and
      ``text_loss``, ``text_accuracy``, ``text_tokens``, ``action_loss``, ``action_accuracy``,
      ``action_tokens`` (0 where a batch has no such targets).
    """
    logits, targets = logits[:, :-1], inputs.tokens[:, 1:]
    mask = inputs.loss_mask[:, 1:]
    kinds = inputs.kinds[:, 1:]
    loss, metrics = masked_cross_entropy(logits, targets, mask)
    sg = jax.lax.stop_gradient(logits)
    for name, kind in (("text", TokenKind.TEXT), ("action", TokenKind.ACTION)):
        _, m = masked_cross_entropy(sg, targets, mask & (kinds == kind))
        metrics[f"{name}_loss"] = m["loss"]
        metrics[f"{name}_accuracy"] = m["accuracy"]
        metrics[f"{name}_tokens"] = m["num_tokens"]
    return loss, metrics


def train_step(
    state: TrainState, batch: Any, *, model: Gato, schedule: Any
) -> tuple[TrainState, dict[str, Array]]:
    """One optimizer (micro-)step; pure, jitted by :func:`core_jax.parallel.make_train_step`.

    Stochastic depth and the train-time patch-position sampling draw from ``state.step_rng()``
    (a key unique to the step), so a resumed run repeats the uninterrupted run exactly. Compute
    runs in ``model.config.transformer.dtype`` (e.g. bfloat16) on fp32 parameters when
    ``param_dtype`` is float32; the loss is computed in fp32.

    Args:
      state: the :class:`TrainState`.
      batch: batched :class:`~gato_jax.sequence.GatoInputs` (global arrays).
      model: the :class:`Gato` module (static).
      schedule: the learning-rate schedule (logged).

    Returns:
      ``(new_state, metrics)``.
    """

    def loss_fn(params):
        logits = model.apply(
            {"params": params}, batch, deterministic=False, rngs={"dropout": state.step_rng()}
        )
        return gato_loss(logits, batch)

    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    metrics["learning_rate"] = schedule(state.step)
    metrics["grad_norm"] = jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(grads)))
    return state.apply_gradients(grads), metrics
