"""Co-SA training: one jitted step for the supervised, critic and actor updates and the targets.

API (used by ``cosa_jax.main``, the demo and the benchmark)::

    >>> state = make_train_state(cfg, train_ds, seed=1111)        # CoSAState (a pytree)
    >>> state, metrics = train_step(state, batch)                  # jitted, one MSABatch
    >>> state, epoch_metrics = train_epoch(state, train_ds)        # one pass, drop_last per cfg
    >>> result = evaluate(state, valid_ds)                         # loss, preds, labels, metrics
    >>> state = end_epoch(state, result["loss"])                   # plateau lr + best snapshot

The step (:func:`train_step`), for batch ``k`` with labels ``y_k``:

1. **Supervised.** ``feats_k`` = agents' DPSR outputs; the policy's state ``s_k`` is
   ``stop_gradient(feats_k)`` (paper) or ``stop_gradient(feats_k * a_{k-1})`` (code-compat, the
   official MDP); ``a_k = pi(s_k)``; predictions from ``feats_k * a_k`` — the action is *not*
   detached, so the policy also gets the supervised gradient (as the official code).
   ``L_sup = a1 L_p + a2 L_msd + a3 L_dpsr``.
2. **Critic.** A batch ``(s, a, r, s')`` is drawn from the replay buffer (as it stood at the start
   of the step); ``L_critic = TD(Q(s, a), r + gamma Q'(s', pi'(s')))`` with the target under
   ``stop_gradient`` (L1 as the official code, or L2).
3. **Actor.** ``L_actor = -mean Q(s, pi(s))`` with the critic's parameters held fixed.
4. One optimizer update of the single objective ``L_sup + a4 (L_actor + L_critic)``, routed to three
   parameter groups (``model``, ``actor``, ``critic``), each with its own Adam state
   (``optax.multi_transform``) and the learning rate of the ReduceLROnPlateau state.
   Steps 2-3 only count once the buffer holds more than one batch (official gate); before that the
   critic's parameters and Adam state do not move.
5. Soft target updates ``theta' <- (1 - tau) theta' + tau theta`` (when the gate is open).
6. The transition completed by this batch, ``(s_{k-1}, a_{k-1}, r_{k-1}, s_k)``, enters the buffer;
   ``(s_k, a_k, r_k)`` waits for the next batch (so transitions chain across epochs, as the
   official ``last``).

Differences from the official loop, by design: the official code takes two Adam steps on the actor
(supervised, then actor loss) and computes the critic/actor losses after the supervised step; here
one update applies the gradient of the paper's single loss. The newest transition is sampled from
the next step on (the official code adds before sampling). The official loss at step ``k`` uses
features computed before the previous update (stale graph); here features are fresh.

Evaluation uses the raw features as the policy's state (as the official ``eval_epoch``), dropout
off and BatchNorm running statistics.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from cosa_jax import losses as L
from cosa_jax import replay
from cosa_jax.configs.base import CoSAConfig
from cosa_jax.data import Dataset, MSABatch, iterate_batches, num_batches
from cosa_jax.metrics import iemocap_metrics, msa_metrics
from cosa_jax.models import Actor, CoSAModel, Critic, share_initial_layers

Array = jax.Array
GROUPS = ("model", "actor", "critic")
PLATEAU_THRESHOLD = 1e-4  # torch ReduceLROnPlateau defaults: rel threshold, cooldown 0, min_lr 0
PLATEAU_EPS = 1e-8


class CoSAState(struct.PyTreeNode):
    """Everything a Co-SA run carries between steps; a pytree (jit, orbax).

    Attributes:
      step: int32 number of train steps taken.
      epoch: int32 number of finished epochs.
      params: ``{"model", "actor", "critic"}`` parameters.
      batch_stats: ``{"actor", "critic"}`` BatchNorm running statistics.
      target_params: ``{"actor", "critic"}`` target networks.
      opt_state: ``optax.multi_transform`` state (one Adam state per group).
      lr: float32 learning rate (all groups; ReduceLROnPlateau moves it).
      plateau_best: float32 best validation loss seen by the plateau scheduler.
      plateau_bad: int32 epochs without improvement.
      rng: uint32[2] key data; step keys fold in ``step``.
      seed: int32 data-order seed (shuffling uses ``(seed, epoch)``).
      buffer: the replay buffer.
      pending: the half transition ``(s_k, a_k, r_k, mask_k)`` waiting for the next state.
      pending_valid: bool, False before the first step.
      best_valid: float32 lowest validation loss so far (inf before the first evaluation).
      best_epoch: int32 epoch of ``best_valid`` (-1 before).
      best_params: ``{"model", "actor"}`` snapshot at ``best_epoch`` (what the test uses).
      best_batch_stats: ``{"actor"}`` snapshot.
      cfg: the run config (static).
    """

    step: Array
    epoch: Array
    params: Any
    batch_stats: Any
    target_params: Any
    opt_state: Any
    lr: Array
    plateau_best: Array
    plateau_bad: Array
    rng: Array
    seed: Array
    buffer: replay.ReplayBuffer
    pending: Any
    pending_valid: Array
    best_valid: Array
    best_epoch: Array
    best_params: Any
    best_batch_stats: Any
    cfg: CoSAConfig = struct.field(pytree_node=False)


# ----------------------------------------------------------------------------------------- setup


def _copy(tree):
    return jax.tree_util.tree_map(lambda x: jnp.array(x, copy=True), tree)


def make_tx(cfg: CoSAConfig) -> optax.GradientTransformation:
    """Adam moments per group (``multi_transform``); the learning rate is applied by the step."""
    o = cfg.optim
    return optax.multi_transform(
        {g: optax.flatten(optax.scale_by_adam(b1=o.b1, b2=o.b2, eps=o.eps)) for g in GROUPS},
        lambda params: {g: jax.tree_util.tree_map(lambda _, g=g: g, params[g]) for g in GROUPS},
    )


def _modules(cfg: CoSAConfig, dims: tuple[int, int, int]):
    return (
        CoSAModel(cfg.model, dims, cfg.loss.use_msd),
        Actor(cfg.model, cfg.data.task),
        Critic(cfg.model),
    )


def input_triples(batch: MSABatch) -> tuple[tuple, tuple]:
    """``((vision, audio, text), (masks))`` from a batch; raises if text features are absent."""
    if batch.text is None:
        raise ValueError(
            "batch.text is None: Co-SA needs text feature vectors (MulT/MMSA layouts); the "
            "MAG-BERT layout carries word ids only"
        )
    return (batch.vision, batch.audio, batch.text), (
        batch.vision_mask,
        batch.audio_mask,
        batch.text_mask,
    )


def _dims(cfg: CoSAConfig, data: Dataset | MSABatch) -> tuple[tuple[int, int, int], tuple]:
    b = data.batch if isinstance(data, Dataset) else data
    x, _ = input_triples(b)
    dims = tuple(int(a.shape[-1]) for a in x)  # (vision, audio, text)
    want = (cfg.data.dims[2], cfg.data.dims[1], cfg.data.dims[0])
    if dims != want:
        raise ValueError(
            f"feature dims (text, audio, vision) = {(dims[2], dims[1], dims[0])} but the config "
            f"says data.dims = {cfg.data.dims}; set data.dims to match the file"
        )
    task = "iemocap" if b.labels.ndim == 2 else "regression"
    if task != cfg.data.task:
        raise ValueError(
            f"labels of shape {b.labels.shape} are {task}; config task {cfg.data.task}"
        )
    return dims, tuple(int(a.shape[1]) for a in x)


def make_train_state(cfg: CoSAConfig, data: Dataset | MSABatch, seed: int) -> CoSAState:
    """A fresh :class:`CoSAState` for ``cfg`` on data shaped like ``data``.

    Args:
      cfg: the run config.
      data: the training split (only shapes and dims are read).
      seed: run seed (parameters, dropout, replay sampling and data order derive from it).

    Returns:
      The initial state.

    Raises:
      ValueError: feature dims or task disagree with ``cfg.data``.
    """
    dims, lengths = _dims(cfg, data)
    return _init_state(cfg, dims, lengths, jnp.asarray(seed, jnp.int32))


def _init_state_impl(
    cfg: CoSAConfig, dims: tuple[int, ...], lengths: tuple[int, ...], seed: Array
) -> CoSAState:
    b, e = cfg.data.batch_size, cfg.model.emb_dim
    model, actor, critic = _modules(cfg, dims)
    root = jax.random.key(seed)
    k_model, k_actor, k_critic, k_ta, k_tc, k_drop, k_run = jax.random.split(root, 7)
    x = tuple(jnp.zeros((2, t, d), jnp.float32) for t, d in zip(lengths, dims, strict=True))
    m = tuple(jnp.ones((2, t), bool) for t in lengths)
    s = tuple(jnp.zeros((2, t, e), jnp.float32) for t in lengths)
    w = tuple(jnp.zeros((2, t), jnp.float32) for t in lengths)

    def init_actor(key):
        v = actor.init({"params": key, "dropout": k_drop}, s, s, m, True)
        p = v["params"]
        if cfg.model.shared_layer_init:
            p = share_initial_layers(p, "temporal")
        return p, v["batch_stats"]

    def init_critic(key):
        v = critic.init({"params": key, "dropout": k_drop}, s, w, m, True)
        p = v["params"]
        if cfg.model.shared_layer_init:
            p = share_initial_layers(p, "critic")
        return p, v["batch_stats"]

    p_actor, bs_actor = init_actor(k_actor)
    p_critic, bs_critic = init_critic(k_critic)
    params = {
        "model": model.init(k_model, x, m)["params"],
        "actor": p_actor,
        "critic": p_critic,
    }
    if cfg.sac.copy_targets:
        targets = {"actor": p_actor, "critic": p_critic}
    else:  # the official code builds the targets as fresh, independently initialised networks
        targets = {"actor": init_actor(k_ta)[0], "critic": init_critic(k_tc)[0]}
    targets = _copy(targets)  # own buffers: donation must not see one buffer twice
    batch_stats = {"actor": bs_actor, "critic": bs_critic}
    one = {
        "s": tuple(jnp.zeros((t, e), jnp.float32) for t in lengths),
        "a": tuple(jnp.zeros((t,), jnp.float32) for t in lengths),
        "r": jnp.zeros((), jnp.float32),
        "mask": tuple(jnp.zeros((t,), bool) for t in lengths),
    }
    transition = {**one, "s2": one["s"], "mask2": one["mask"]}
    policy = "drop_half_batch" if cfg.sac.drop_half_when_full else "ring"
    buf = replay.init_buffer(transition, cfg.sac.buffer_capacity, policy)
    pending = jax.tree_util.tree_map(lambda x: jnp.zeros((b,) + x.shape, x.dtype), one)
    return CoSAState(
        step=jnp.zeros((), jnp.int32),
        epoch=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=batch_stats,
        target_params=targets,
        opt_state=make_tx(cfg).init(params),
        lr=jnp.asarray(cfg.optim.peak_lr, jnp.float32),
        plateau_best=jnp.asarray(jnp.inf, jnp.float32),
        plateau_bad=jnp.zeros((), jnp.int32),
        rng=jax.random.key_data(k_run),
        seed=seed,
        buffer=buf,
        pending=pending,
        pending_valid=jnp.zeros((), bool),
        best_valid=jnp.asarray(jnp.inf, jnp.float32),
        best_epoch=jnp.asarray(-1, jnp.int32),
        best_params=_copy({"model": params["model"], "actor": params["actor"]}),
        best_batch_stats=_copy({"actor": bs_actor}),
        cfg=cfg,
    )


# One compiled program for the whole initialisation: run op by op, the ~hundreds of eager
# dispatches each leave a cached executable behind (~600 MB of resident memory for the IEMOCAP
# config, measured in benchmarks/cosa_epoch.py) and take longer.
_init_state = jax.jit(_init_state_impl, static_argnums=(0, 1, 2))


# ----------------------------------------------------------------------------------------- losses


def _row_mean(per_row: Array, valid: Array) -> Array:
    v = valid.astype(jnp.float32)
    return jnp.sum(per_row * v) / jnp.maximum(jnp.sum(v), 1.0)


def task_loss_per_row(preds: Array, labels: Array, task: str) -> Array:
    """L_p per sample: mean 2-way CE over the 4 emotions, or ``|y_hat - y|``."""
    if task == "iemocap":
        return jax.vmap(lambda p, y: L.iemocap_task_loss(p[None], y[None]))(preds, labels)
    return jnp.abs(preds - labels.astype(jnp.float32))


def _reward(cfg: CoSAConfig, preds: Array, labels: Array) -> Array:
    if cfg.data.task == "iemocap":
        return L.iemocap_reward(preds, labels, cfg.sac.reward_mode)
    return L.regression_reward(preds, labels)


def _loss_fn(params, state: CoSAState, batch: MSABatch, sample: dict, gate: Array, keys):
    cfg = state.cfg
    x, masks = input_triples(batch)
    dims = tuple(int(a.shape[-1]) for a in x)
    model, actor, critic = _modules(cfg, dims)
    k_head, k_c1, k_c2, k_c3 = keys
    out = model.apply({"params": params["model"]}, x, masks)
    feats = out["feats"]
    s = feats
    if cfg.sac.state_with_previous_action:
        s = tuple(
            jnp.where(state.pending_valid, f * a[..., None], f)
            for f, a in zip(feats, state.pending["a"], strict=True)
        )
    s = jax.lax.stop_gradient(s)
    a, mix = actor.apply({"params": params["actor"]}, s, masks, method=Actor.act)
    preds, new_actor_bs = actor.apply(
        {"params": params["actor"], "batch_stats": state.batch_stats["actor"]},
        feats, a, masks, True, batch.valid,
        method=Actor.predict, rngs={"dropout": k_head}, mutable=["batch_stats"],
    )  # fmt: skip
    l_p = _row_mean(task_loss_per_row(preds, batch.labels, cfg.data.task), batch.valid)
    l_dpsr = L.dpsr_total(*feats, mode=cfg.loss.dpsr_mode, masks=masks)
    aux: dict[str, Any] = {"task": l_p, "dpsr": l_dpsr}
    total = cfg.loss.a1 * l_p + cfg.loss.a3 * l_dpsr
    if cfg.loss.use_msd:
        l_m = L.modality_classification_loss(out["mod_logits"])
        l_c = L.separation_loss(out["f_s"], out["f_m"], cfg.loss.separation, cfg.loss.margin)
        l_r = L.reconstruction_loss(x, out["recon"], masks)
        aux.update(msd_m=l_m, msd_c=l_c, msd_r=l_r)
        total = total + cfg.loss.a2 * (l_m + l_c + l_r)
    # critic: TD on a replayed batch; the targets are fixed parameters
    bs_c = state.batch_stats["critic"]
    q, new_critic_bs = critic.apply(
        {"params": params["critic"], "batch_stats": bs_c},
        sample["s"], sample["a"], sample["mask"], True,
        rngs={"dropout": k_c1}, mutable=["batch_stats"],
    )  # fmt: skip
    tp = state.target_params
    a2, _ = actor.apply({"params": tp["actor"]}, sample["s2"], sample["mask2"], method=Actor.act)
    # the official target critic is never put in eval mode: batch statistics, dropout on
    q_next, _ = critic.apply(
        {"params": tp["critic"], "batch_stats": bs_c},
        sample["s2"], a2, sample["mask2"], True,
        rngs={"dropout": k_c2}, mutable=["batch_stats"],
    )  # fmt: skip
    l_critic = L.critic_loss(q, sample["r"], q_next, cfg.sac.gamma, cfg.sac.critic_loss)
    a_pi, _ = actor.apply(
        {"params": params["actor"]}, sample["s"], sample["mask"], method=Actor.act
    )
    q_pi, _ = critic.apply(
        {"params": jax.lax.stop_gradient(params["critic"]), "batch_stats": bs_c},
        sample["s"], a_pi, sample["mask"], True,
        rngs={"dropout": k_c3}, mutable=["batch_stats"],
    )  # fmt: skip
    l_actor = L.actor_loss(q_pi)
    total = total + cfg.loss.a4 * gate * (l_actor + l_critic)
    r = _reward(cfg, preds, batch.labels)
    aux.update(
        actor=l_actor, critic=l_critic, q=jnp.mean(q), reward=_row_mean(r, batch.valid),
        weight_mean=sum(_masked_avg(w, m) for w, m in zip(a, masks, strict=True)) / 3.0,
        advice_self=jnp.mean(mix[:, :, 0]),
    )  # fmt: skip
    extra = {
        "s": s, "a": a, "r": r, "masks": masks,
        "actor_bs": new_actor_bs["batch_stats"], "critic_bs": new_critic_bs["batch_stats"],
    }  # fmt: skip
    return total, (aux, extra)


def _masked_avg(w: Array, m: Array) -> Array:
    mf = m.astype(jnp.float32)
    return jnp.sum(w * mf) / jnp.maximum(jnp.sum(mf), 1.0)


def _select(pred: Array, new, old):
    return jax.tree_util.tree_map(lambda n, o: jnp.where(pred, n, o), new, old)


def _grads(state: CoSAState, batch: MSABatch):
    cfg = state.cfg
    bsz = batch.labels.shape[0]
    if bsz != cfg.data.batch_size:
        raise ValueError(f"batch has {bsz} rows; the state was built for {cfg.data.batch_size}")
    key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    k_sample, k_head, k_c1, k_c2, k_c3 = jax.random.split(key, 5)
    gate = state.buffer.size > bsz
    sample = replay.sample(state.buffer, k_sample, bsz, replace=not cfg.sac.drop_half_when_full)
    grad_fn = jax.value_and_grad(_loss_fn, has_aux=True)
    (total, (aux, extra)), grads = grad_fn(
        state.params, state, batch, sample, gate.astype(jnp.float32), (k_head, k_c1, k_c2, k_c3)
    )
    return total, aux, extra, grads, gate


def loss_and_grads(state: CoSAState, batch: MSABatch) -> tuple[Array, dict, dict]:
    """The step's objective, its parts and the gradients ``{"model", "actor", "critic"}``
    (before the optimizer; what :func:`train_step` applies). Pure: jit it or call it eagerly."""
    total, aux, _, grads, _ = _grads(state, batch)
    return total, aux, grads


def _train_step(state: CoSAState, batch: MSABatch) -> tuple[CoSAState, dict]:
    cfg = state.cfg
    total, aux, extra, grads, gate = _grads(state, batch)
    tx = make_tx(cfg)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    updates = jax.tree_util.tree_map(lambda u: -state.lr * u, updates)
    params = optax.apply_updates(state.params, updates)
    # the critic moves only once the buffer is ready (official gate)
    params = {**params, "critic": _select(gate, params["critic"], state.params["critic"])}
    inner = dict(opt_state.inner_states)
    inner["critic"] = _select(gate, inner["critic"], state.opt_state.inner_states["critic"])
    opt_state = opt_state._replace(inner_states=inner)
    critic_bs = _select(gate, extra["critic_bs"], state.batch_stats["critic"])
    tau = cfg.sac.tau
    soft = jax.tree_util.tree_map(
        lambda t, p: (1.0 - tau) * t + tau * p,
        state.target_params,
        {"actor": params["actor"], "critic": params["critic"]},
    )
    targets = _select(gate, soft, state.target_params)
    # complete the pending transition with this batch's state, then queue this batch's
    transition = {**state.pending, "s2": extra["s"], "mask2": extra["masks"]}
    buf = jax.lax.cond(
        state.pending_valid,
        lambda b: replay.add_batch(b, transition),
        lambda b: b,
        state.buffer,
    )
    pending = {"s": extra["s"], "a": extra["a"], "r": extra["r"], "mask": extra["masks"]}
    new = state.replace(
        step=state.step + 1,
        params=params,
        batch_stats={"actor": extra["actor_bs"], "critic": critic_bs},
        target_params=targets,
        opt_state=opt_state,
        buffer=buf,
        pending=pending,
        pending_valid=jnp.ones((), bool),
    )
    metrics = {"loss": total, **aux, "gate": gate.astype(jnp.float32), "buffer": buf.size}
    return new, metrics


train_step = jax.jit(_train_step)
"""``train_step(state, batch) -> (state, metrics)``: one jitted Co-SA update (module docstring).

``batch`` is an :class:`MSABatch` with exactly ``cfg.data.batch_size`` rows. Retraces only when
the config or shapes change."""

train_step_donated = jax.jit(_train_step, donate_argnums=0)
""":func:`train_step` donating the input state's buffers (for loops that drop the old state)."""


def batch_spec(cfg: CoSAConfig) -> MSABatch:
    """Shapes and dtypes (``jax.ShapeDtypeStruct``) of one training batch of aligned data under
    ``cfg`` (every modality ``cfg.data.seq_len`` steps, text as feature vectors), as
    :func:`train_epoch` feeds it to the step: what :func:`compile_train_step` needs to compile
    before any data is loaded."""
    b, t = cfg.data.batch_size, cfg.data.seq_len
    d_text, d_audio, d_vision = cfg.data.dims
    f32, sd = jnp.float32, jax.ShapeDtypeStruct
    labels = sd((b, 4), jnp.int32) if cfg.data.task == "iemocap" else sd((b,), f32)
    return MSABatch(
        text=sd((b, t, d_text), f32), text_ids=None, text_bert=None,
        audio=sd((b, t, d_audio), f32), vision=sd((b, t, d_vision), f32),
        text_mask=sd((b, t), jnp.bool_), audio_mask=sd((b, t), jnp.bool_),
        vision_mask=sd((b, t), jnp.bool_), labels=labels, valid=sd((b,), jnp.bool_),
    )  # fmt: skip


def compile_train_step(cfg: CoSAConfig, batch: MSABatch | None = None, donate: bool = True):
    """Compile the train step ahead of time from shapes alone (no state, no data).

    Compiling first and calling ``core_jax.memory.malloc_trim`` afterwards keeps the compiler's
    scratch (several hundred MB for the IEMOCAP config) out of the process's peak, which then
    stays below what the compiler needs plus the data and state (``benchmarks/cosa_epoch.py``).

    Args:
      cfg: the run config.
      batch: a batch (arrays or ``ShapeDtypeStruct``) of the shapes to compile for; default
        :func:`batch_spec` ``(cfg)``.
      donate: compile :data:`train_step_donated` (else :data:`train_step`).

    Returns:
      A compiled ``step(state, batch) -> (state, metrics)`` for states built by
      :func:`make_train_state` ``(cfg, ...)``.
    """
    spec = batch_spec(cfg) if batch is None else _strip(batch)
    spec = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), spec)
    state = jax.eval_shape(lambda: make_train_state(cfg, spec, 0))
    return (train_step_donated if donate else train_step).lower(state, spec).compile()


# ----------------------------------------------------------------------------------------- epochs


def _strip(batch: MSABatch) -> MSABatch:
    return batch.replace(text_ids=None, text_bert=None)


def train_epoch(
    state: CoSAState,
    data: Dataset,
    *,
    bar: Any = None,
    donate: bool = True,
    step_fn: Any = None,
    history: list | None = None,
) -> tuple[CoSAState, dict[str, float]]:
    """One pass over ``data`` (shuffled by ``(seed, epoch)``, ``drop_last`` per config).

    Args:
      state: the state (its ``epoch`` picks the order; it is not advanced here, see
        :func:`end_epoch`).
      data: the training split.
      bar: optional progress bar (``update(1)`` per step).
      donate: use :data:`train_step_donated` (the input state must not be reused).
      step_fn: a replacement for the step function (e.g. a trace-counting jit in tests).
      history: if given, each step's metrics (device arrays) are appended to it.

    Returns:
      ``(state, mean of each step metric over the epoch)``.
    """
    cfg = state.cfg
    if step_fn is None:
        step_fn = train_step_donated if donate else train_step
    sums: dict[str, Array] = {}
    n = 0
    for batch in iterate_batches(
        data, cfg.data.batch_size, shuffle=True, seed=int(state.seed), epoch=int(state.epoch),
        drop_last=cfg.data.drop_last,
    ):  # fmt: skip
        state, m = step_fn(state, _strip(batch))
        if history is not None:
            history.append(m)
        sums = m if not sums else jax.tree_util.tree_map(jnp.add, sums, m)
        n += 1
        if bar is not None:
            bar.update(1)
    if n == 0:
        raise ValueError(
            f"training split has {len(data)} rows < batch_size {cfg.data.batch_size} with "
            "drop_last: no step"
        )
    return state, {k: float(v) / n for k, v in jax.device_get(sums).items()}


def steps_per_epoch(cfg: CoSAConfig, data: Dataset) -> int:
    """Train steps in one epoch."""
    return num_batches(len(data), cfg.data.batch_size, cfg.data.drop_last)


def _eval_batch(cfg, dims, params, batch_stats, batch):
    model, actor, _ = _modules(cfg, dims)
    x, masks = input_triples(batch)
    feats = model.apply({"params": params["model"]}, x, masks)["feats"]
    a, _ = actor.apply({"params": params["actor"]}, feats, masks, method=Actor.act)
    preds = actor.apply(
        {"params": params["actor"], "batch_stats": batch_stats["actor"]},
        feats, a, masks, False, None, method=Actor.predict,
    )  # fmt: skip
    return preds, task_loss_per_row(preds, batch.labels, cfg.data.task)


_eval_jit = jax.jit(_eval_batch, static_argnums=(0, 1))


def predict(
    state: CoSAState, data: Dataset, *, use_best: bool = False, batch_size: int | None = None
) -> tuple[np.ndarray, np.ndarray, float]:
    """Predictions over a split in evaluation mode.

    Args:
      state: the state.
      data: the split.
      use_best: use the best-on-validation snapshot instead of the current parameters.
      batch_size: evaluation batch (default ``cfg.data.batch_size``).

    Returns:
      ``(preds (N, 4, 2) or (N,), labels, mean task loss over the N samples)``.
    """
    cfg = state.cfg
    dims, _ = _dims(cfg, data)
    params = state.best_params if use_best else state.params
    bstats = state.best_batch_stats if use_best else state.batch_stats
    bs = batch_size or cfg.data.batch_size
    preds, losses = [], []
    for batch in iterate_batches(data, bs):
        p, lr = _eval_jit(cfg, dims, params, bstats, _strip(batch))
        keep = np.asarray(batch.valid)
        preds.append(np.asarray(p)[keep])
        losses.append(np.asarray(lr)[keep])
    return (
        np.concatenate(preds),
        np.asarray(data.batch.labels),
        float(np.mean(np.concatenate(losses))),
    )


def compute_metrics(cfg: CoSAConfig, preds: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """IEMOCAP per-emotion scores or MSA metrics under ``cfg.train.metrics_convention``."""
    if cfg.data.task == "iemocap":
        return iemocap_metrics(preds, labels)
    return msa_metrics(preds, labels, cfg.train.metrics_convention)


def metric_convention(cfg: CoSAConfig) -> str:
    """The name printed with every number (``iemocap`` or the MSA convention)."""
    return "iemocap" if cfg.data.task == "iemocap" else cfg.train.metrics_convention


def evaluate(state: CoSAState, data: Dataset, *, use_best: bool = False) -> dict[str, Any]:
    """Loss and metrics on a split.

    Returns:
      ``{"loss", "metrics", "convention", "preds", "labels"}``.
    """
    preds, labels, loss = predict(state, data, use_best=use_best)
    return {
        "loss": loss,
        "metrics": compute_metrics(state.cfg, preds, labels),
        "convention": metric_convention(state.cfg),
        "preds": preds,
        "labels": labels,
    }


def plateau_update(
    lr: float, best: float, bad: int, value: float, patience: int, factor: float
) -> tuple[float, float, int]:
    """``torch.optim.lr_scheduler.ReduceLROnPlateau`` (mode min, rel threshold 1e-4, cooldown 0,
    min_lr 0) for one epoch; returns ``(lr, best, num_bad_epochs)``."""
    if value < best * (1.0 - PLATEAU_THRESHOLD):
        best, bad = value, 0
    else:
        bad += 1
    if bad > patience:
        new = lr * factor
        if lr - new > PLATEAU_EPS:
            lr = new
        bad = 0
    return lr, best, bad


def end_epoch(state: CoSAState, valid_loss: float) -> CoSAState:
    """Close an epoch: plateau step on ``valid_loss``, best snapshot if it improved, epoch + 1."""
    if not math.isfinite(valid_loss):
        raise FloatingPointError(f"validation loss is {valid_loss} at epoch {int(state.epoch)}")
    cfg = state.cfg
    lr, best, bad = plateau_update(
        float(state.lr), float(state.plateau_best), int(state.plateau_bad), valid_loss,
        cfg.train.plateau_patience, cfg.train.plateau_factor,
    )  # fmt: skip
    new = state.replace(
        lr=jnp.asarray(lr, jnp.float32),
        plateau_best=jnp.asarray(best, jnp.float32),
        plateau_bad=jnp.asarray(bad, jnp.int32),
        epoch=state.epoch + 1,
    )
    if valid_loss < float(state.best_valid):
        new = new.replace(
            best_valid=jnp.asarray(valid_loss, jnp.float32),
            best_epoch=state.epoch,
            best_params=_copy({"model": state.params["model"], "actor": state.params["actor"]}),
            best_batch_stats=_copy({"actor": state.batch_stats["actor"]}),
        )
    return new
