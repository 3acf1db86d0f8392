"""Behavioural cloning (and reward-weighted regression) of the policy LM on AgentTraj data.

The official AgentGym recipe: AdamW, 10% linear warm-up then linear decay, gradient clipping 1.0,
global batch 32 reached by accumulation, one epoch per evolution iteration, loss on every assistant
turn. ``bc_loss`` is the masked next-token cross-entropy; with ``reward_weighted`` each example's
tokens are weighted by its reward (`evol_jax.policy_data` puts the weight on the loss tokens), i.e.
``max E[r log pi(tau)]`` of the paper.

    >>> cfg = BCConfig(peak_lr=1e-3, micro_batch=8, seq_len=2048, epochs=1)
    >>> params, log = train_bc(model, examples, cfg, workdir="/tmp/bc")     # doctest: +SKIP

Training is a pure ``train_step(state, batch) -> (state, metrics)`` jitted by
`core_jax.parallel.make_train_step` with the state sharded by the logical-axis rules (``data``,
``fsdp``, ``model`` mesh axes) and the batch sharded over the batch axes. With a ``workdir`` the
state, config and data-iterator position are checkpointed (`core_jax.checkpoint`) and a restarted
run resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from core_jax import parallel
from core_jax.checkpoint import Checkpointer, resume
from core_jax.losses import masked_cross_entropy
from core_jax.metrics import MetricWriter
from core_jax.nn.transformer import Transformer
from core_jax.optim import OptimizerConfig, make_optimizer
from core_jax.train_state import TrainState
from evol_jax.policy_data import Example, PackedBatchIterator, next_token_targets


@dataclasses.dataclass(frozen=True)
class BCConfig:
    """Behavioural-cloning hyper-parameters.

    Attributes:
      peak_lr: AdamW peak learning rate (official 1e-5 for 7B; tiny models need ~1e-3).
      warmup_frac: fraction of the updates spent in linear warm-up (official 0.1).
      weight_decay: AdamW decoupled decay (matrices only).
      clip_norm: global-norm clip (official 1.0).
      micro_batch: packed rows per micro-batch.
      grad_accum: micro-batches per update (global batch = micro_batch * grad_accum rows).
      seq_len: packed row length (official cap 4096).
      epochs: passes over the data (official 1 per iteration); ignored when ``updates`` is set.
      updates: if > 0, train exactly this many optimizer updates, cycling over the (reshuffled)
        data as often as needed, whatever the data size. A fixed update budget makes BC_base
        and every AgentEvol iteration comparable: they differ only in their data, not in how
        long they trained (with ``epochs``, more explored data also means more updates).
      seed: shuffling and init seed.
      log_every: metric lines every this many updates.
      checkpoint_every: save every this many micro-steps (with a workdir).
      mesh_data, mesh_fsdp: mesh axis sizes (``-1`` takes the remaining devices).
    """

    peak_lr: float = 1e-5
    warmup_frac: float = 0.1
    weight_decay: float = 0.0
    clip_norm: float = 1.0
    micro_batch: int = 8
    grad_accum: int = 4
    seq_len: int = 4096
    epochs: int = 1
    updates: int = 0
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 200
    mesh_data: int = -1
    mesh_fsdp: int = 1

    def __post_init__(self):
        for f in ("micro_batch", "grad_accum", "seq_len", "epochs", "log_every"):
            if getattr(self, f) < 1:
                raise ValueError(f"BCConfig.{f}={getattr(self, f)} must be >= 1")
        if self.updates < 0:
            raise ValueError(f"BCConfig.updates={self.updates} must be >= 0 (0: use epochs)")
        if not 0 <= self.warmup_frac < 1:
            raise ValueError(f"BCConfig.warmup_frac={self.warmup_frac} must be in [0, 1)")
        if not self.peak_lr > 0:
            raise ValueError(f"BCConfig.peak_lr={self.peak_lr} must be > 0")


def bc_loss(model: Transformer, params, batch) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Weighted next-token loss on a packed batch (``tokens``, ``segment_ids``, ``positions``,
    ``weights`` or ``loss_mask``, each ``[B, L]``); normalised by the number of loss tokens."""
    targets, weights = next_token_targets(batch)
    logits = model.apply(
        {"params": params},
        batch["tokens"],
        segment_ids=batch["segment_ids"],
        positions=batch["positions"],
    )
    mask = batch["loss_mask"]
    mask = jnp.concatenate([mask[:, 1:], jnp.zeros_like(mask[:, :1])], axis=1) & (weights != 0)
    return masked_cross_entropy(logits, targets, mask=mask, weights=weights)


def make_step_fn(model: Transformer):
    """The pure ``train_step(state, batch) -> (state, metrics)``."""

    def step(state: TrainState, batch):
        (loss, metrics), grads = jax.value_and_grad(
            lambda p: bc_loss(model, p, batch), has_aux=True
        )(state.params)
        metrics = dict(metrics, grad_norm=_global_norm(grads))
        return state.apply_gradients(grads), metrics

    return step


def _global_norm(tree) -> jax.Array:
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))


def num_micro_steps(examples: Sequence[Example], cfg: BCConfig) -> int:
    """Micro-batches of a run: ``updates * grad_accum``, or what the iterator yields for
    ``cfg.epochs`` epochs (counted on the host)."""
    if cfg.updates:
        return cfg.updates * cfg.grad_accum
    it = PackedBatchIterator(
        examples, batch_size=cfg.micro_batch, seq_len=cfg.seq_len, seed=cfg.seed,
        num_epochs=cfg.epochs,
    )  # fmt: skip
    return sum(1 for _ in it)


def train_bc(
    model: Transformer,
    examples: Sequence[Example],
    cfg: BCConfig,
    *,
    init_params: Any = None,
    workdir: str | None = None,
    log_fn=None,
) -> tuple[Any, list[dict]]:
    """Trains ``model`` on tokenised examples; returns ``(params, metric lines)``.

    Args:
      model: the policy transformer.
      examples: from `evol_jax.policy_data.tokenize_records` (``weight`` = reward when
        reward-weighted).
      cfg: hyper-parameters.
      init_params: start from these parameters (default: fresh init from ``cfg.seed``).
      workdir: checkpoint + metrics directory; an interrupted run resumes from it.
      log_fn: optional callable receiving each metric line (dict).

    Returns:
      The trained parameters (unboxed pytree) and the metric lines written.
    """
    if not examples:
        raise ValueError("train_bc: no examples")
    micro = num_micro_steps(examples, cfg)
    updates = max(1, micro // cfg.grad_accum)
    ocfg = OptimizerConfig(
        peak_lr=cfg.peak_lr,
        warmup_steps=int(math.ceil(cfg.warmup_frac * updates)),
        decay_steps=updates,
        schedule="linear",
        b1=0.9,
        b2=0.999,
        weight_decay=cfg.weight_decay,
        clip_norm=cfg.clip_norm,
        grad_accum_steps=cfg.grad_accum,
    )
    tx = make_optimizer(ocfg)
    mesh = parallel.make_mesh(parallel.MeshConfig(data=cfg.mesh_data, fsdp=cfg.mesh_fsdp))
    dummy = jnp.zeros((1, 8), jnp.int32)

    def init_fn(key):
        return TrainState.create(params=model.init(key, dummy)["params"], tx=tx, rng=key)

    state, sharding = parallel.init_sharded(init_fn, mesh, jax.random.key(cfg.seed))
    if init_params is not None:
        params = jax.device_put(_unbox(init_params), sharding.params)
        opt = jax.jit(tx.init, out_shardings=sharding.opt_state)(params)
        state = state.replace(params=params, opt_state=opt)
    shards = math.prod(mesh.shape[a] for a in ("data", "fsdp"))
    if cfg.micro_batch % shards:
        raise ValueError(
            f"BCConfig.micro_batch={cfg.micro_batch} is not divisible by the {shards} batch shards "
            "of the mesh (data x fsdp)"
        )
    step = parallel.make_train_step(make_step_fn(model), mesh=mesh, state_sharding=sharding)
    data = PackedBatchIterator(
        examples, batch_size=cfg.micro_batch, seq_len=cfg.seq_len, seed=cfg.seed,
        num_epochs=None if cfg.updates else cfg.epochs,
    )  # fmt: skip
    lines: list[dict] = []
    ckpt = writer = None
    start = 0
    if workdir is not None:
        os.makedirs(workdir, exist_ok=True)
        ckpt = Checkpointer(os.path.join(workdir, "ckpt"), max_to_keep=1, async_save=False)
        writer = MetricWriter(workdir, tensorboard=False)
        run_cfg = {"model": model.config.to_dict(), "bc": dataclasses.asdict(cfg)}
        state, restored = resume(ckpt, state, sharding, data=data, writer=writer, config=run_cfg)
        start = restored or 0
    acc: dict[str, float] = {}
    for i, batch in enumerate(data, start=start):
        if i >= micro:  # an update budget (``cfg.updates``): the iterator itself never ends
            break
        state, m = step(state, parallel.host_to_global(batch, mesh))
        m = jax.device_get(m)
        for k, v in m.items():
            acc[k] = acc.get(k, 0.0) + float(v)
        acc["n"] = acc.get("n", 0.0) + 1
        done = i + 1 == micro
        if (i + 1) % (cfg.log_every * cfg.grad_accum) == 0 or done:
            n = acc.pop("n")
            line = {k: v / n for k, v in acc.items()}
            line.update(step=i + 1, update=(i + 1) // cfg.grad_accum)
            lines.append(line)
            if writer is not None:
                writer.write(i + 1, {k: v for k, v in line.items() if k != "step"})
            if log_fn is not None:
                log_fn(line)
            acc = {}
        if ckpt is not None and ((i + 1) % cfg.checkpoint_every == 0 or done):
            ckpt.save(i + 1, state, config=run_cfg, data_state=data.state(), force=True)
    if ckpt is not None:
        ckpt.close()
        writer.close()
    if not np.all([np.isfinite(x).all() for x in jax.tree.leaves(jax.device_get(state.params))]):
        raise FloatingPointError("train_bc: parameters became non-finite")
    return jax.device_get(state.params), lines


def _unbox(tree):
    import flax.linen as nn

    return nn.meta.unbox(tree)
