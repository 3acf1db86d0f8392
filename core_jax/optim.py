"""Optimizer construction shared by the three systems: AdamW, warm-up + decay, clipping,
weight-decay masks and gradient accumulation."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import optax

from core_jax import cpu_flags


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """AdamW with linear warm-up then cosine / linear / constant decay.

    Attributes:
      peak_lr: learning rate reached at the end of warm-up.
      init_lr: learning rate at step 0.
      end_lr: learning rate at ``decay_steps`` (cosine and linear).
      warmup_steps: linear warm-up length.
      decay_steps: total schedule length including warm-up.
      schedule: ``cosine``, ``linear`` or ``constant``.
      b1, b2, eps: Adam moments.
      weight_decay: decoupled decay, applied to matrices only (not to norms, biases or 1-D
        parameters) unless ``decay_all``.
      decay_all: apply weight decay to every parameter.
      clip_norm: global-norm gradient clipping (None or 0 disables).
      grad_accum_steps: micro-batches accumulated per update (``optax.MultiSteps``).
    """

    peak_lr: float = 1e-3
    init_lr: float = 0.0
    end_lr: float = 0.0
    warmup_steps: int = 0
    decay_steps: int = 1000
    schedule: str = "cosine"
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    decay_all: bool = False
    clip_norm: float | None = 1.0
    grad_accum_steps: int = 1

    def __post_init__(self):
        if self.schedule not in ("cosine", "linear", "constant"):
            raise ValueError(
                f"OptimizerConfig.schedule={self.schedule!r}: unknown option; "
                "choose cosine, linear or constant"
            )
        if self.warmup_steps < 0 or self.decay_steps <= 0:
            raise ValueError(
                f"OptimizerConfig.warmup_steps={self.warmup_steps} / decay_steps="
                f"{self.decay_steps}: must be >= 0 / > 0"
            )
        if self.grad_accum_steps < 1:
            raise ValueError(
                f"OptimizerConfig.grad_accum_steps={self.grad_accum_steps}: must be >= 1"
            )


def make_schedule(cfg: OptimizerConfig) -> optax.Schedule:
    warm = optax.linear_schedule(cfg.init_lr, cfg.peak_lr, max(cfg.warmup_steps, 1))
    rest = max(cfg.decay_steps - cfg.warmup_steps, 1)
    if cfg.schedule == "cosine":
        decay = optax.cosine_decay_schedule(
            cfg.peak_lr, rest, alpha=cfg.end_lr / cfg.peak_lr if cfg.peak_lr else 0.0
        )
    elif cfg.schedule == "linear":
        decay = optax.linear_schedule(cfg.peak_lr, cfg.end_lr, rest)
    else:
        decay = optax.constant_schedule(cfg.peak_lr)
    if cfg.warmup_steps == 0:
        return decay
    return optax.join_schedules([warm, decay], [cfg.warmup_steps])


def decay_mask(params):
    """True for parameters that get weight decay: arrays with at least 2 dimensions."""
    return jax.tree.map(lambda p: getattr(p, "ndim", 0) >= 2, params)


def make_optimizer(cfg: OptimizerConfig) -> optax.GradientTransformation:
    chain = []
    if cfg.clip_norm:
        chain.append(optax.clip_by_global_norm(cfg.clip_norm))
    chain.append(
        optax.adamw(
            make_schedule(cfg),
            b1=cfg.b1,
            b2=cfg.b2,
            eps=cfg.eps,
            weight_decay=cfg.weight_decay,
            mask=None if cfg.decay_all else decay_mask,
        )
    )
    tx = optax.chain(*chain)
    if cfg.grad_accum_steps > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=cfg.grad_accum_steps)
    return tx


def split_update_step(
    value_and_grad_fn: Callable, tx: optax.GradientTransformation, params, opt_state, *batch: Any
) -> Callable:
    """A training step compiled as two programs: gradients, then the optimizer update.

    On CPU the update program is compiled with :func:`core_jax.cpu_flags.
    optimizer_compiler_options` (YNNPACK elementwise fusion off) while the gradient program
    keeps the process defaults, which are best for the model but ~4x slower for an optimizer
    update. Results are identical to one fused ``jax.jit`` of the whole step up to float
    reassociation (~1e-8, tested). Elsewhere the split costs one extra dispatch; prefer the
    single program on GPU/TPU.

    Args:
      value_and_grad_fn: ``(params, *batch) -> (loss, grads)`` (e.g. ``jax.value_and_grad``).
      tx: the optax transformation.
      params, opt_state, batch: example arguments (shapes and dtypes) to compile for.

    Returns:
      ``step(params, opt_state, *batch) -> (params, opt_state, loss)``; ``params`` and
      ``opt_state`` are donated. ``step.compiled`` holds the two compiled programs.
    """

    def update(params, opt_state, grads):
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    grad_c = jax.jit(value_and_grad_fn).lower(params, *batch).compile()
    update_c = (
        jax.jit(update, donate_argnums=(0, 1))
        .lower(params, opt_state, params)  # gradients have the parameters' shapes and dtypes
        .compile(compiler_options=cpu_flags.optimizer_compiler_options() or None)
    )

    def step(params, opt_state, *batch):
        loss, grads = grad_c(params, *batch)
        params, opt_state = update_c(params, opt_state, grads)
        return params, opt_state, loss

    step.compiled = (grad_c, update_c)
    return step
