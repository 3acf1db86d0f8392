"""Gato loss and the pure training step (spec sections 5 and 7).

    >>> sched = make_schedule(cfg.optim)
    >>> step = functools.partial(train_step, model=Gato(cfg.model), schedule=sched)
    >>> state, metrics = core_jax.parallel.make_train_step(step, mesh=mesh, ...)(state, batch)

Loss: autoregressive cross-entropy of ``logits[:, :-1]`` against ``tokens[:, 1:]`` with mask
``loss_mask[:, 1:]`` (1 only on text and action targets; observations, image patches,
separators and padding contribute nothing), normalised by the mask count
(:func:`core_jax.losses.masked_cross_entropy`). Metrics add the same loss and accuracy restricted
to text targets and to action targets.

Gradient accumulation (``OptimizerConfig.grad_accum_steps = k``): the loss of one batch is a
mean over its *target tokens*, so the mean of ``k`` micro-batch losses (what
``optax.MultiSteps`` averages, as built by :func:`core_jax.optim.make_optimizer`) is not the loss
of the whole batch when the micro-batches hold different numbers of targets (they do: text,
action, observation and padding tokens vary per window); each micro-batch's tokens would be
weighted by ``1 / (k * n_i)`` instead of ``1 / sum(n_i)``. :func:`make_optimizer` therefore
builds a token-weighted accumulator (:func:`token_weighted_multisteps`): :func:`train_step`
hands it the gradient of the *summed* masked loss and the micro-batch's target count, the
accumulator sums both, and the update divides by the total before clipping and AdamW. ``k``
micro-steps of ``B / k`` rows then give the same update as one step of ``B`` rows (up to float
reassociation; ``tests/gato_jax/test_grad_accum.py``).

    >>> tx = make_optimizer(cfg.optim)       # instead of core_jax.optim.make_optimizer
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from core_jax import optim
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


class TokenWeightedState(NamedTuple):
    """State of :func:`token_weighted_multisteps`.

    Attributes:
      inner: the ``optax.MultiStepsState`` (summed gradients, micro-step counter, AdamW state).
      tokens: float32 scalar, target tokens of the micro-steps accumulated so far in this cycle.
    """

    inner: optax.MultiStepsState
    tokens: jax.Array


def _scale_by_inverse_tokens() -> optax.GradientTransformationExtraArgs:
    """Divides summed gradients by the extra argument ``total_tokens`` (at least 1)."""

    def update(updates, state, params=None, *, total_tokens, **extra):
        del params, extra
        scale = 1.0 / jnp.maximum(total_tokens.astype(jnp.float32), 1.0)
        return jax.tree.map(lambda g: (g * scale).astype(g.dtype), updates), state

    return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update)


def token_weighted_multisteps(
    inner: optax.GradientTransformation, every_k: int
) -> optax.GradientTransformationExtraArgs:
    """Gradient accumulation over ``every_k`` micro-steps, weighted by target-token counts.

    ``update(grads, state, params, num_tokens=n)`` takes the gradient of the *summed* masked
    loss of one micro-batch and its target count ``n``. Every ``every_k``-th call applies
    ``inner`` (clipping + AdamW) to ``sum(grads) / sum(n)``, the gradient of the token-mean
    loss over all accumulated micro-batches; the other calls return zero updates.

    Args:
      inner: the per-update optimizer (e.g. ``core_jax.optim.make_optimizer`` with
        ``grad_accum_steps=1``).
      every_k: micro-steps per update.

    Returns:
      A transformation whose state is a :class:`TokenWeightedState`.
    """
    multi = optax.MultiSteps(
        optax.chain(_scale_by_inverse_tokens(), inner), every_k, use_grad_mean=False
    )

    def init(params):
        return TokenWeightedState(multi.init(params), jnp.zeros((), jnp.float32))

    def update(updates, state, params=None, *, num_tokens, **extra):
        # A new cycle starts whenever the wrapped MultiSteps is at micro-step 0.
        tokens = jnp.where(state.inner.mini_step == 0, 0.0, state.tokens)
        tokens = tokens + jnp.asarray(num_tokens, jnp.float32)
        updates, inner_state = multi.update(
            updates, state.inner, params, total_tokens=tokens, **extra
        )
        return updates, TokenWeightedState(inner_state, tokens)

    return optax.GradientTransformationExtraArgs(init, update)


def make_optimizer(cfg: optim.OptimizerConfig) -> optax.GradientTransformation:
    """:func:`core_jax.optim.make_optimizer`, with token-weighted accumulation when
    ``cfg.grad_accum_steps > 1`` (see the module docstring)."""
    if cfg.grad_accum_steps == 1:
        return optim.make_optimizer(cfg)
    inner = optim.make_optimizer(dataclasses.replace(cfg, grad_accum_steps=1))
    return token_weighted_multisteps(inner, cfg.grad_accum_steps)


def update_count(state: TrainState) -> jax.Array:
    """Optimizer updates applied so far (``state.step`` counts micro-steps)."""
    s = state.opt_state
    if isinstance(s, TokenWeightedState):
        s = s.inner
    if isinstance(s, optax.MultiStepsState):
        return s.gradient_step
    return state.step


def corrupt_action_inputs(batch: Any, key: Array, prob: float, lo: int, hi: int) -> Any:
    """``batch`` with each continuous action token ``[lo, hi)`` *as an input* replaced, with
    probability ``prob``, by a uniformly random id of ``[lo, hi)``.

    Only the copy the model reads changes: :func:`train_step` computes the loss against the
    original ``batch.tokens``, and position ``i``'s target (token ``i + 1``) never sees its own
    input (causal). The model cannot then predict an action by copying the previous one (a
    behaviour-cloning shortcut on smooth or bang-bang experts: the prediction is right on
    almost every token of a window but the first, and wrong where the actions must come from
    the observation) and has to read the observation. Discrete and text action tokens are
    kept (their ids share rows with text).
    """
    t = batch.tokens
    k_flip, k_id = jax.random.split(key)
    cont = (batch.kinds == TokenKind.ACTION) & (t >= lo) & (t < hi)
    flip = cont & (jax.random.uniform(k_flip, t.shape) < prob)
    noise = jax.random.randint(k_id, t.shape, lo, hi, dtype=t.dtype)
    return batch.replace(tokens=jnp.where(flip, noise, t))


def train_step(
    state: TrainState,
    batch: Any,
    *,
    model: Gato,
    schedule: Any,
    action_input_noise: float = 0.0,
    continuous_range: tuple[int, int] | None = None,
) -> tuple[TrainState, dict[str, Array]]:
    """One optimizer (micro-)step; pure, jitted by :func:`core_jax.parallel.make_train_step`.

    Stochastic depth and the train-time patch-position sampling draw from ``state.step_rng()``
    (a key unique to the step), so a resumed run repeats the uninterrupted run exactly. Compute
    runs in ``model.config.transformer.dtype`` (e.g. bfloat16) on fp32 parameters when
    ``param_dtype`` is float32; the loss is computed in fp32.

    With a :func:`token_weighted_multisteps` optimizer (``state.opt_state`` a
    :class:`TokenWeightedState`) the step passes the gradient of the summed masked loss and the
    target count, so accumulated micro-steps weight every target token equally; with any other
    optimizer (including a plain ``optax.MultiSteps``) it passes the gradient of the token-mean
    loss of this batch.

    Args:
      state: the :class:`TrainState`.
      batch: batched :class:`~gato_jax.sequence.GatoInputs` (global arrays).
      model: the :class:`Gato` module (static).
      schedule: the learning-rate schedule (logged at the optimizer's update count).
      action_input_noise: probability of :func:`corrupt_action_inputs` per continuous action
        token (0: off; needs ``continuous_range``, the tokenizer's ``(continuous_offset,
        continuous_offset + num_bins)``). Drawn from the step's key, so resumes repeat it.

    Returns:
      ``(new_state, metrics)``; ``grad_norm`` is the norm of this batch's token-mean gradient.
    """

    weighted = isinstance(state.opt_state, TokenWeightedState)
    model_in = batch
    if action_input_noise > 0.0:
        if continuous_range is None:
            raise ValueError("train_step: action_input_noise needs continuous_range")
        key = jax.random.fold_in(state.step_rng(), 0x6A70)
        model_in = corrupt_action_inputs(batch, key, action_input_noise, *continuous_range)

    def loss_fn(params):
        logits = model.apply(
            {"params": params}, model_in, deterministic=False, rngs={"dropout": state.step_rng()}
        )
        loss, metrics = gato_loss(logits, batch)
        if weighted:
            # Summed masked loss: gato_loss divides by max(count, 1); undo it in the graph.
            loss = loss * jnp.maximum(metrics["num_tokens"], 1.0)
        return loss, metrics

    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    count = metrics["num_tokens"]
    mean_grads = grads
    if weighted:
        inv = 1.0 / jnp.maximum(count, 1.0)
        mean_grads = jax.tree.map(lambda g: g * inv.astype(g.dtype), grads)
    metrics["learning_rate"] = schedule(update_count(state))
    metrics["grad_norm"] = jnp.sqrt(
        sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(mean_grads))
    )
    if not weighted:
        return state.apply_gradients(grads), metrics
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params, num_tokens=count)
    new_state = state.replace(
        step=state.step + 1, params=optax.apply_updates(state.params, updates), opt_state=opt_state
    )
    return new_state, metrics
