"""PyTorch twin of ``cosa_jax`` in code-compat mode (IEMOCAP): model, losses and training loop.

The reference side of ``benchmarks.cosa_epoch``. It reproduces, in PyTorch eager on CPU, what
``cosa_jax.train`` does for a code-compat IEMOCAP config, module for module and loss for loss:

* :class:`TorchCoSAModel` — per modality a sentiment encoder ``Linear(D_m, E)`` and the official
  DPSR block ``LayerNorm(ctx + W ctx)`` (no residual; ``ctx`` = multi-head self-attention with
  separate q/k/v maps and no output projection).
* :class:`TorchActor` — projections, cross-modal cosine "advice" with summed similarities
  (``advice_reduce="sum"``: the weight on "self" is exactly 1.0 in float32), sigmoid per-step
  weights, one ``nn.TransformerEncoderLayer`` per modality (cloned from one layer object, as the
  official code), mean pooling, ``add`` fusion and the head ``Linear, Dropout, ReLU, BatchNorm1d,
  Linear`` -> ``(B, 4, 2)`` logits.
* :class:`TorchCritic` — ``[s_m ; w_m x heads]`` -> one encoder layer of width ``E + heads`` per
  modality -> mean -> concatenation -> ``Linear, Dropout, ReLU, BatchNorm1d, Linear, Linear``.
* Losses: ``a1 * CE + a3 * DPSR' + a4 * (L_actor + L_critic)`` with the code-compat DPSR
  (``eta' = 2 (T - |p - q| + 1) / T``; the acoustic term replaced by the visual one), the L1 TD
  loss to ``r + gamma * Q'(s', pi'(s'))`` (target networks in train mode, gradient stopped) and
  ``-mean Q(s, pi(s))`` with the critic held fixed; the code-compat reward (rows of ``i // 4``).
* The step (:meth:`TorchCoSATrainer.train_step`) follows ``cosa_jax.train._train_step``: the
  policy's state is the features weighted by the previous batch's action; one backward pass of
  the single objective; three ``torch.optim.Adam`` optimizers (model, actor, critic); the critic,
  the actor's SAC terms and the soft target updates only once the buffer holds more than one
  batch; then the transition completed by this batch enters the buffer.
* :class:`ListReplayBuffer` — the official replay buffer: a Python list of per-sample tensor
  copies; ``add_batch`` deletes the oldest half when the batch would fill it; sampling draws
  ``np.random.choice(len, batch, replace=False)`` and stacks the chosen samples.

Targets are independently initialised networks (official code: not copies); the three actor and
critic layers start from one layer object (``copy.deepcopy``). Not reproduced: variable-length
masks (IEMOCAP is aligned, every step valid; :meth:`TorchCoSATrainer.train_step` checks this) and
paper mode. Dropout draws and replay samples use PyTorch / NumPy RNGs, so a run is not
bit-identical to ``cosa_jax``; with the same parameters, inputs and replay sample the losses and
gradients agree (``tests/cosa_jax/test_torch_twin.py``).

>>> trainer = TorchCoSATrainer(get_config("iemocap_code_compat"), seed=0)
>>> stats = trainer.train_epoch(train_ds, epoch=0)        # cosa_jax.data.Dataset
>>> loss = trainer.evaluate(valid_ds)["loss"]
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cosa_jax.configs.base import CoSAConfig
from cosa_jax.data import Dataset, iterate_batches

Tensor = torch.Tensor
Triple = tuple[Tensor, Tensor, Tensor]
MODALITIES = ("vision", "audio", "text")
NUM_EMOTIONS = 4


def check_config(cfg: CoSAConfig) -> None:
    """Raise ``ValueError`` unless ``cfg`` is an IEMOCAP code-compat config (what the twin does)."""
    problems = []
    if cfg.data.task != "iemocap":
        problems.append(f"data.task={cfg.data.task!r} (need 'iemocap')")
    if cfg.loss.use_msd or cfg.loss.dpsr_mode != "code-compat":
        problems.append("loss must be code-compat (no MSD, dpsr_mode 'code-compat')")
    if cfg.model.dpsr_residual or cfg.model.advice_reduce != "sum" or cfg.model.fusion != "add":
        problems.append("model must be code-compat (no DPSR residual, advice 'sum', fusion 'add')")
    sac = cfg.sac
    if not (sac.drop_half_when_full and sac.state_with_previous_action):
        problems.append("sac must use the official buffer and the previous-action state")
    if sac.reward_mode != "code-compat" or sac.critic_loss != "l1" or sac.copy_targets:
        problems.append("sac must use the code-compat reward, the L1 TD loss, uncopied targets")
    if problems:
        raise ValueError(
            "the PyTorch twin only implements code-compat IEMOCAP: " + "; ".join(problems)
        )


# ----------------------------------------------------------------------------------------- modules


def _mha(q: Tensor, k: Tensor, v: Tensor, heads: int) -> Tensor:
    """Scaled dot-product attention ``(B, T, D)`` -> ``(B, T, D)``, no mask (aligned data)."""
    b, t, d = q.shape
    split = lambda x: x.reshape(b, x.shape[1], heads, d // heads).transpose(1, 2)
    qh, kh, vh = split(q), split(k), split(v)
    probs = torch.softmax(qh @ kh.transpose(-1, -2) / math.sqrt(d // heads), dim=-1)
    return (probs @ vh).transpose(1, 2).reshape(b, t, d)


class DPSRBlock(nn.Module):
    """The official DPSR block: ``LayerNorm(ctx + dense1(ctx))``, ``ctx`` = MHA(q, k, v)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value = (nn.Linear(dim, dim) for _ in range(3))
        self.dense1 = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim, eps=1e-5)

    def forward(self, x: Tensor) -> Tensor:
        ctx = _mha(self.query(x), self.key(x), self.value(x), self.heads)
        return self.norm(ctx + self.dense1(ctx))


class TorchCoSAModel(nn.Module):
    """The three sentiment agents: ``(B, T, D_m)`` inputs -> DPSR features ``(B, T, E)``."""

    def __init__(self, dims: tuple[int, int, int], emb: int, heads: int):
        super().__init__()
        self.dims = dims
        self.encoders = nn.ModuleList(nn.Linear(d, emb) for d in dims)
        self.dpsr = nn.ModuleList(DPSRBlock(emb, heads) for _ in dims)

    def forward(self, x: Triple) -> Triple:
        for i, name in enumerate(MODALITIES):
            if x[i].shape[-1] != self.dims[i]:
                raise ValueError(f"{name}: expected feature dim {self.dims[i]}, got {x[i].shape}")
        return tuple(self.dpsr[i](self.encoders[i](x[i])) for i in range(3))


def _encoder_layers(dim: int, heads: int, ff: int) -> nn.ModuleList:
    # the official code builds the three per-modality layers from one layer object
    layer = nn.TransformerEncoderLayer(dim, heads, ff, dropout=0.0, batch_first=True)
    return nn.ModuleList(copy.deepcopy(layer) for _ in range(3))


def advice(p: Triple, temperature: float) -> Triple:
    """The official ``generate_advise`` with summed similarities (``cosa_jax.models.advice``
    with ``reduce="sum"`` and all steps valid). ``p``: ``(B, T, E)`` per modality."""
    unit = tuple(F.normalize(x, dim=-1, eps=1e-12) for x in p)
    outs = []
    for m in range(3):
        cands, logits = [p[m]], []
        pos, neg, sims = [], [], []
        for n in (n for n in range(3) if n != m):
            s = unit[m] @ unit[n].transpose(1, 2)  # (B, T_m, T_n)
            pos.append(torch.softmax(s, -1) @ p[n])
            neg.append(torch.softmax(-s, -1) @ p[n])
            sims.append(s.sum(dim=(1, 2)))
            if not logits:
                logits.append(torch.full_like(sims[-1], float(s.shape[1] * s.shape[2])))
        cands += pos + neg
        logits += sims + [-x for x in sims]
        w = torch.softmax(torch.stack(logits, 1) / temperature, dim=1)  # (B, 5)
        outs.append(sum(c * w[:, i, None, None] for i, c in enumerate(cands)))
    return tuple(outs)


class TorchActor(nn.Module):
    """Policy ``pi(s) -> w`` ``(B, T)`` per modality, and the task path that uses ``w``."""

    def __init__(self, emb: int, heads: int, ff: int, dropout: float, temperature: float):
        super().__init__()
        self.temperature = temperature
        self.proj = nn.ModuleList(nn.Linear(emb, emb) for _ in range(3))
        self.action = nn.ModuleList(nn.Linear(2 * emb, 1) for _ in range(3))
        self.temporal = _encoder_layers(emb, heads, ff)
        self.head = nn.Sequential(
            nn.Linear(emb, emb), nn.Dropout(dropout), nn.ReLU(), nn.BatchNorm1d(emb),
            nn.Linear(emb, 2 * NUM_EMOTIONS),
        )  # fmt: skip

    def act(self, s: Triple) -> Triple:
        adv = advice(tuple(self.proj[i](s[i]) for i in range(3)), self.temperature)
        return tuple(
            torch.sigmoid(self.action[i](torch.cat([s[i], adv[i]], -1))[..., 0]) for i in range(3)
        )

    def predict(self, x: Triple, w: Triple) -> Tensor:
        """Logits ``(B, 4, 2)`` from features ``x_m * w_m``."""
        pooled = [self.temporal[i](x[i] * w[i][..., None]).mean(1) for i in range(3)]
        z = self.head(sum(pooled) / 3.0)
        return z.reshape(z.shape[0], NUM_EMOTIONS, 2)


class TorchCritic(nn.Module):
    """``Q(s, w)`` ``(B,)``."""

    def __init__(self, emb: int, heads: int, ff: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.layers = _encoder_layers(emb + heads, heads, ff)
        self.proj = nn.Sequential(
            nn.Linear(3 * (emb + heads), 2 * emb), nn.Dropout(dropout), nn.ReLU(),
            nn.BatchNorm1d(2 * emb), nn.Linear(2 * emb, emb), nn.Linear(emb, 1),
        )  # fmt: skip

    def forward(self, s: Triple, w: Triple) -> Tensor:
        pooled = []
        for i in range(3):
            x = torch.cat([s[i], w[i][..., None].expand(*w[i].shape, self.heads)], -1)
            pooled.append(self.layers[i](x).mean(1))
        return self.proj(torch.cat(pooled, -1))[:, 0]


# ----------------------------------------------------------------------------------------- losses


def dpsr_loss(f: Tensor) -> Tensor:
    """Code-compat DPSR of ``(B, T, D)``: ``sum_{p != q} eta'_pq (cos + 1) / 2 / (T (T - 1))``,
    ``eta' = 2 (T - |p - q| + 1) / T``, mean over the batch (``cosa_jax.losses.dpsr_loss``)."""
    t = f.shape[1]
    norm = f.norm(dim=-1)
    cos = (f @ f.transpose(1, 2)) / torch.clamp(norm[:, :, None] * norm[:, None, :], min=1e-8)
    idx = torch.arange(t, device=f.device)
    dist = (idx[:, None] - idx[None, :]).abs().to(f.dtype)
    eta = torch.where(dist > 0, 2.0 * (t - dist + 1.0) / t, torch.zeros_like(dist))
    return ((eta * (cos + 1.0) / 2.0).sum(dim=(1, 2)) / (t * (t - 1.0))).mean()


def dpsr_total(feats: Triple) -> Tensor:
    """``(L(f_t) + L(f_v) + L(f_v)) / 3``: the official code computes the visual term in place
    of the acoustic one."""
    f_v, _f_a, f_t = feats
    return (dpsr_loss(f_t) + dpsr_loss(f_v) + dpsr_loss(f_v)) / 3.0


def task_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """2-way cross-entropy over the ``B * 4`` decisions; ``labels`` ``(B, 4)`` int."""
    return F.cross_entropy(logits.reshape(-1, 2), labels.reshape(-1).long())


def reward(logits: Tensor, labels: Tensor) -> Tensor:
    """Code-compat reward: ``r_i = sum_e softmax(logits[i // 4, e])[y[i, e]]`` ``(B,)``."""
    probs = torch.softmax(logits.detach(), -1)
    probs = probs[torch.arange(probs.shape[0], device=probs.device) // 4]
    return probs.gather(-1, labels.long()[..., None])[..., 0].sum(-1)


# ----------------------------------------------------------------------------------------- replay


class ListReplayBuffer:
    """The official replay buffer: a Python list of per-sample tensor copies.

    Each entry is ``(s, a, r, s2)`` for one sample, with ``s``/``s2`` tuples of ``(T, E)`` and
    ``a`` a tuple of ``(T,)`` tensors (cloned out of the batch).
    """

    def __init__(self, capacity: int, rng: np.random.Generator):
        self.capacity = capacity
        self.rng = rng
        self.buffer: list[tuple] = []

    def __len__(self) -> int:
        return len(self.buffer)

    def add_batch(self, s: Triple, a: Triple, r: Tensor, s2: Triple) -> None:
        """Append the ``k`` transitions of a batch; first drop the oldest half if they would fill
        the buffer (``len + k >= capacity``)."""
        k = r.shape[0]
        if len(self.buffer) + k >= self.capacity:
            del self.buffer[: len(self.buffer) // 2]
        for i in range(k):
            self.buffer.append((
                tuple(x[i].detach().clone() for x in s),
                tuple(x[i].detach().clone() for x in a),
                r[i].detach().clone(),
                tuple(x[i].detach().clone() for x in s2),
            ))  # fmt: skip

    def sample(self, batch_size: int) -> dict[str, Any]:
        """``batch_size`` distinct transitions, stacked: ``{"s", "a", "r", "s2"}``."""
        idx = self.rng.choice(len(self.buffer), batch_size, replace=False)
        items = [self.buffer[i] for i in idx]
        stack3 = lambda j: tuple(torch.stack([it[j][m] for it in items]) for m in range(3))
        return {
            "s": stack3(0), "a": stack3(1), "r": torch.stack([it[2] for it in items]),
            "s2": stack3(3),
        }  # fmt: skip


# ----------------------------------------------------------------------------------------- trainer


def batch_tensors(batch) -> tuple[Triple, Tensor]:
    """``((vision, audio, text), labels (B, 4))`` tensors from an ``MSABatch``; raises on padded
    steps or rows (the twin does not implement masks)."""
    masks = (batch.vision_mask, batch.audio_mask, batch.text_mask)
    if not all(np.all(m) for m in masks) or not np.all(batch.valid):
        raise ValueError("the PyTorch twin needs aligned, unpadded batches (all masks True)")
    x = tuple(
        torch.from_numpy(np.asarray(a, np.float32)) for a in (batch.vision, batch.audio, batch.text)
    )
    return x, torch.from_numpy(np.asarray(batch.labels)).long()


class TorchCoSATrainer:
    """Networks, optimizers, targets, replay buffer and the step of the code-compat loop.

    Args:
      cfg: an IEMOCAP code-compat :class:`CoSAConfig` (see :func:`check_config`).
      seed: parameters, dropout (``torch.manual_seed``) and replay sampling.
    """

    def __init__(self, cfg: CoSAConfig, seed: int = 0):
        check_config(cfg)
        self.cfg = cfg
        torch.manual_seed(seed)
        m = cfg.model
        dims = (cfg.data.dims[2], cfg.data.dims[1], cfg.data.dims[0])  # vision, audio, text
        drop = m.head_dropout
        self.model = TorchCoSAModel(dims, m.emb_dim, m.num_heads)
        self.actor = TorchActor(m.emb_dim, m.num_heads, m.ff_dim, drop, m.advice_temperature)
        self.critic = TorchCritic(m.emb_dim, m.num_heads, m.ff_dim, drop)
        # official: the targets are fresh networks, not copies of the online ones
        self.target_actor = TorchActor(m.emb_dim, m.num_heads, m.ff_dim, drop, m.advice_temperature)
        self.target_critic = TorchCritic(m.emb_dim, m.num_heads, m.ff_dim, drop)
        for p in (*self.target_actor.parameters(), *self.target_critic.parameters()):
            p.requires_grad_(False)
        o = cfg.optim
        adam = lambda mod: torch.optim.Adam(
            mod.parameters(), lr=o.peak_lr, betas=(o.b1, o.b2), eps=o.eps
        )
        self.opts = {
            "model": adam(self.model),
            "actor": adam(self.actor),
            "critic": adam(self.critic),
        }
        self.schedulers = [
            torch.optim.lr_scheduler.ReduceLROnPlateau(
                opt, "min", patience=cfg.train.plateau_patience, factor=cfg.train.plateau_factor
            )
            for opt in self.opts.values()
        ]
        self.buffer = ListReplayBuffer(cfg.sac.buffer_capacity, np.random.default_rng(seed))
        self.pending: dict[str, Any] | None = None  # (s_k, a_k, r_k) waiting for s_{k+1}
        self.steps = 0

    def modules(self) -> dict[str, nn.Module]:
        return {
            "model": self.model, "actor": self.actor, "critic": self.critic,
            "target_actor": self.target_actor, "target_critic": self.target_critic,
        }  # fmt: skip

    def train_mode(self, on: bool) -> None:
        for mod in self.modules().values():
            mod.train(on)
        # the official target networks are never put in eval mode
        self.target_actor.train()
        self.target_critic.train()

    def loss(
        self, x: Triple, labels: Tensor, prev_action: Triple | None, sample: dict | None
    ) -> tuple[Tensor, dict[str, Tensor], dict[str, Any]]:
        """The step's objective (``cosa_jax.train._loss_fn`` in code-compat mode).

        Args:
          x: inputs ``(B, T, D_m)`` (vision, audio, text).
          labels: ``(B, 4)`` int classes.
          prev_action: the previous batch's action ``(B, T)`` per modality, or ``None`` on the
            first step (then the state is the raw features).
          sample: a replayed batch ``{"s", "a", "r", "s2"}``, or ``None`` while the buffer holds
            at most one batch (the SAC terms are left out).

        Returns:
          ``(total, {task, dpsr, actor, critic, reward}, {"s", "a", "r"})``.
        """
        c = self.cfg
        feats = self.model(x)
        s = (
            feats
            if prev_action is None
            else tuple(f * a[..., None] for f, a in zip(feats, prev_action, strict=True))
        )
        s = tuple(v.detach() for v in s)
        a = self.actor.act(s)
        logits = self.actor.predict(feats, a)
        l_p = task_loss(logits, labels)
        l_dpsr = dpsr_total(feats)
        total = c.loss.a1 * l_p + c.loss.a3 * l_dpsr
        zero = torch.zeros(())
        l_actor, l_critic = zero, zero
        if sample is not None:
            q = self.critic(sample["s"], sample["a"])
            with torch.no_grad():
                q_next = self.target_critic(sample["s2"], self.target_actor.act(sample["s2"]))
            l_critic = F.l1_loss(q, sample["r"] + c.sac.gamma * q_next)
            a_pi = self.actor.act(sample["s"])
            critic_params = list(self.critic.parameters())
            for p in critic_params:  # the actor loss does not train the critic
                p.requires_grad_(False)
            try:
                q_pi = self.critic(sample["s"], a_pi)
            finally:
                for p in critic_params:
                    p.requires_grad_(True)
            l_actor = -q_pi.mean()
            total = total + c.loss.a4 * (l_actor + l_critic)
        r = reward(logits, labels)
        aux = {
            "task": l_p,
            "dpsr": l_dpsr,
            "actor": l_actor,
            "critic": l_critic,
            "reward": r.mean(),
        }
        return total, aux, {"s": s, "a": tuple(v.detach() for v in a), "r": r}

    @torch.no_grad()
    def _soft_update(self) -> None:
        tau = self.cfg.sac.tau
        for tgt, src in ((self.target_actor, self.actor), (self.target_critic, self.critic)):
            for tp, p in zip(tgt.parameters(), src.parameters(), strict=True):
                tp.mul_(1.0 - tau).add_(p, alpha=tau)

    def train_step(self, x: Triple, labels: Tensor) -> dict[str, float]:
        """One update on a batch; returns the loss parts as floats."""
        bsz = labels.shape[0]
        gate = len(self.buffer) > bsz
        sample = self.buffer.sample(bsz) if gate else None
        prev = None if self.pending is None else self.pending["a"]
        total, aux, extra = self.loss(x, labels, prev, sample)
        for opt in self.opts.values():
            opt.zero_grad(set_to_none=True)
        total.backward()
        self.opts["model"].step()
        self.opts["actor"].step()
        if gate:
            self.opts["critic"].step()
            self._soft_update()
        if self.pending is not None:
            p = self.pending
            self.buffer.add_batch(p["s"], p["a"], p["r"], extra["s"])
        self.pending = extra
        self.steps += 1
        out = {k: float(v.detach()) for k, v in aux.items()}
        out.update(loss=float(total.detach()), gate=float(gate), buffer=float(len(self.buffer)))
        return out

    def train_epoch(self, data: Dataset, epoch: int, seed: int = 0) -> dict[str, float]:
        """One pass (the order of ``cosa_jax.data.iterate_batches(shuffle, seed, epoch)``,
        ``drop_last`` per config); returns the mean of each step's numbers."""
        self.train_mode(True)
        sums: dict[str, float] = {}
        n = 0
        for batch in iterate_batches(
            data, self.cfg.data.batch_size, shuffle=True, seed=seed, epoch=epoch,
            drop_last=self.cfg.data.drop_last,
        ):  # fmt: skip
            x, y = batch_tensors(batch)
            m = self.train_step(x, y)
            sums = {k: sums.get(k, 0.0) + v for k, v in m.items()}
            n += 1
        if n == 0:
            raise ValueError(f"{len(data)} rows < batch size {self.cfg.data.batch_size}: no step")
        return {k: v / n for k, v in sums.items()}

    @torch.no_grad()
    def evaluate(self, data: Dataset) -> dict[str, Any]:
        """Eval mode on a split (raw features as the state, running BatchNorm statistics):
        ``{"loss" (mean CE), "logits" (N, 4, 2)}``."""
        self.train_mode(False)
        logits, losses = [], []
        for batch in iterate_batches(data, self.cfg.data.batch_size):
            keep = np.asarray(batch.valid)
            x, y = batch_tensors(
                batch.replace(
                    valid=np.ones_like(keep),
                    vision_mask=np.ones_like(batch.vision_mask),
                    audio_mask=np.ones_like(batch.audio_mask),
                    text_mask=np.ones_like(batch.text_mask),
                )
            )  # fmt: skip  (padding rows are zeros; they are dropped below)
            feats = self.model(x)
            lg = self.actor.predict(feats, self.actor.act(feats))
            ce = F.cross_entropy(lg.reshape(-1, 2), y.reshape(-1), reduction="none")
            logits.append(lg.numpy()[keep])
            losses.append(ce.reshape(-1, NUM_EMOTIONS).mean(1).numpy()[keep])
        self.train_mode(True)
        return {"loss": float(np.mean(np.concatenate(losses))), "logits": np.concatenate(logits)}

    def end_epoch(self, valid_loss: float) -> None:
        """ReduceLROnPlateau step of the three optimizers."""
        for sched in self.schedulers:
            sched.step(valid_loss)

    # ------------------------------------------------------------------------------ parity helpers

    @torch.no_grad()
    def load_jax(self, params: dict, batch_stats: dict | None = None, targets: dict | None = None):
        """Copy ``cosa_jax`` parameters (``CoSAState.params`` layout) into the twin."""
        load_model(self.model, params["model"])
        load_actor(
            self.actor, params["actor"], None if batch_stats is None else batch_stats["actor"]
        )
        load_critic(
            self.critic, params["critic"], None if batch_stats is None else batch_stats["critic"]
        )
        if targets is not None:
            load_actor(self.target_actor, targets["actor"])
            load_critic(self.target_critic, targets["critic"])


def _t(x) -> Tensor:
    return torch.from_numpy(np.array(x, np.float32))


def _linear(lin: nn.Linear, p: dict) -> None:
    lin.weight.copy_(_t(p["kernel"]).T)
    lin.bias.copy_(_t(p["bias"]))


def _norm(ln: nn.Module, p: dict) -> None:
    ln.weight.copy_(_t(p["scale"]))
    ln.bias.copy_(_t(p["bias"]))


def _bn(bn: nn.BatchNorm1d, p: dict, stats: dict | None) -> None:
    _norm(bn, p)
    if stats is not None:
        bn.running_mean.copy_(_t(stats["mean"]))
        bn.running_var.copy_(_t(stats["var"]))


def _encoder(layer: nn.TransformerEncoderLayer, p: dict) -> None:
    layer.self_attn.in_proj_weight.copy_(_t(p["in_proj_kernel"]).T)
    layer.self_attn.in_proj_bias.copy_(_t(p["in_proj_bias"]))
    _linear(layer.self_attn.out_proj, p["out_proj"])
    _linear(layer.linear1, p["linear1"])
    _linear(layer.linear2, p["linear2"])
    _norm(layer.norm1, p["norm1"])
    _norm(layer.norm2, p["norm2"])


@torch.no_grad()
def load_model(mod: TorchCoSAModel, p: dict) -> None:
    """``cosa_jax.models.CoSAModel`` parameters -> :class:`TorchCoSAModel`."""
    for i, name in enumerate(MODALITIES):
        _linear(mod.encoders[i], p[f"sentiment_encoder_{name}"])
        blk, q = mod.dpsr[i], p[f"dpsr_{name}"]
        for attr in ("query", "key", "value", "dense1"):
            _linear(getattr(blk, attr), q[attr])
        _norm(blk.norm, q["norm"])


@torch.no_grad()
def load_actor(mod: TorchActor, p: dict, stats: dict | None = None) -> None:
    """``cosa_jax.models.Actor`` parameters (and ``batch_stats``) -> :class:`TorchActor`."""
    for i, name in enumerate(MODALITIES):
        _linear(mod.proj[i], p[f"proj_{name}"])
        _linear(mod.action[i], p[f"action_{name}"])
        _encoder(mod.temporal[i], p[f"temporal_{name}"])
    h = p["head"]
    _linear(mod.head[0], h["TorchDense_0"])
    _bn(mod.head[3], h["BatchNorm1d_0"], None if stats is None else stats["head"]["BatchNorm1d_0"])
    _linear(mod.head[4], h["TorchDense_1"])


@torch.no_grad()
def load_critic(mod: TorchCritic, p: dict, stats: dict | None = None) -> None:
    """``cosa_jax.models.Critic`` parameters (and ``batch_stats``) -> :class:`TorchCritic`."""
    for i, name in enumerate(MODALITIES):
        _encoder(mod.layers[i], p[f"critic_{name}"])
    _linear(mod.proj[0], p["proj_0"])
    _bn(mod.proj[3], p["proj_bn"], None if stats is None else stats["proj_bn"])
    _linear(mod.proj[4], p["proj_1"])
    _linear(mod.proj[5], p["proj_2"])
