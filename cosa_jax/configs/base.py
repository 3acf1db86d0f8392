"""Co-SA config dataclasses (strict; built and overridden through ``core_jax.config``).

Two modes (spec section 3): ``paper`` (full disentanglement, correct reward, working DPSR) and
``code-compat`` (the August 2024 official code with its quirks). :func:`make_config` fills in
both modes for each dataset; the named configs in this package call it.

``ModelConfig`` is consumed by ``cosa_jax.models``; ``SACConfig``/``TrainConfig`` by
``cosa_jax.train`` and ``cosa_jax.main``; ``DataConfig`` and ``LossConfig`` map onto
``cosa_jax.data`` and ``cosa_jax.losses``.
"""

from __future__ import annotations

import dataclasses

from core_jax.optim import OptimizerConfig
from cosa_jax.data import LAYOUTS
from cosa_jax.losses import MODES
from cosa_jax.metrics import CONVENTIONS

DATASETS = ("mosi", "mosei", "iemocap")


def _check(ok: bool, msg: str) -> None:
    if not ok:
        raise ValueError(msg)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Which file and how it is batched.

    Attributes:
      dataset: ``mosi``, ``mosei`` or ``iemocap``.
      layout: pickle layout for ``cosa_jax.data.load`` (``mult``, ``mmsa``, ``magbert``).
      filename: file name inside ``--data`` (e.g. ``aligned_50.pkl``).
      task: ``regression`` (labels in [-3, 3]) or ``iemocap`` (4 emotions x 2 classes).
      dims: (text, audio, vision) feature dims of the real files.
      seq_len: aligned sequence length T.
      batch_size: rows per step (fixed shapes; official code 128).
      drop_last: skip the final partial training batch (official code: True).
      nan_to_zero: replace NaN/+inf features by 0 instead of failing.
    """

    dataset: str = "iemocap"
    layout: str = "mult"
    filename: str = "iemocap_data.pkl"
    task: str = "iemocap"
    dims: tuple[int, int, int] = (300, 74, 35)
    seq_len: int = 20
    batch_size: int = 128
    drop_last: bool = True
    nan_to_zero: bool = False

    def __post_init__(self):
        _check(self.dataset in DATASETS, f"data.dataset={self.dataset!r}: one of {DATASETS}")
        _check(self.layout in LAYOUTS, f"data.layout={self.layout!r}: one of {LAYOUTS}")
        _check(self.task in ("regression", "iemocap"), f"data.task={self.task!r}: unknown")
        _check(len(self.dims) == 3, f"data.dims={self.dims!r}: need (text, audio, vision)")
        _check(self.batch_size > 0 and self.seq_len > 0, "data.batch_size/seq_len must be > 0")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Agents, policy, critic and head sizes.

    Attributes:
      emb_dim: feature width of every agent (official 128).
      num_heads: attention heads (official 8).
      head_dropout: dropout in the heads (official 0.1).
      fusion: ``add`` (average of the three pooled vectors, official) or ``cat``.
      dpsr_residual: residual connection around the DPSR block (paper mode; the official block
        has none, so its output is nearly constant over time and DPSR sits at its ceiling).
      advice_temperature: temperature of the cross-modal cosine "advice" mixing softmax.
      advice_reduce: ``sum`` (official: similarities summed over all step pairs, so the weight
        on "self" is exactly 1.0 in float32 and the advice has no effect) or ``mean`` (paper
        mode: mean similarities, a usable mixture); see ``cosa_jax.models.advice``.
      ff_dim: feed-forward width of the actor/critic transformer layers (PyTorch's default
        2048 in the official code).
      shared_layer_init: build the three per-modality actor/critic layers from one initial
        value (the official code's single layer object).
      remat: memory/time trade-off of the actor/critic transformer layers' backward pass
        (``cosa_jax.models.EncoderLayer``): ``none``, ``ff``, ``ff_relu`` or ``layer``
        (default: each layer recomputed in the backward pass). Values and gradients are the
        same in every mode up to float rounding (tested).
      scan_modalities: run the three per-modality actor/critic layers as one ``lax.scan`` when
        the modalities have equal lengths (``cosa_jax.models.apply_encoder_layers``).
      ff_chunks: run each feed-forward block over this many slices of the batch x time rows,
        one after the other (``cosa_jax.models.feed_forward``).
        The defaults (``layer``, scan, 4 slices) cut XLA's scratch memory of the IEMOCAP
        code-compat step from ~760 MB to ~316 MB for a ~5-15% longer step (measured in
        ``benchmarks/NOTES.md``, "Co-SA epoch"); ``remat="none", scan_modalities=False,
        ff_chunks=1`` is the plain (fastest, largest) step.
    """

    emb_dim: int = 128
    num_heads: int = 8
    head_dropout: float = 0.1
    fusion: str = "add"
    dpsr_residual: bool = True
    advice_temperature: float = 1.0
    advice_reduce: str = "mean"
    ff_dim: int = 2048
    shared_layer_init: bool = False
    remat: str = "layer"
    scan_modalities: bool = True
    ff_chunks: int = 4

    def __post_init__(self):
        _check(self.fusion in ("add", "cat"), f"model.fusion={self.fusion!r}: 'add' or 'cat'")
        _check(self.emb_dim % self.num_heads == 0, "model.emb_dim must divide by num_heads")
        _check(self.advice_temperature > 0, "model.advice_temperature must be > 0")
        _check(self.advice_reduce in ("sum", "mean"), f"model.advice_reduce={self.advice_reduce!r}")
        _check(self.ff_dim > 0, "model.ff_dim must be > 0")
        _check(
            self.remat in ("none", "ff", "ff_relu", "layer"),
            f"model.remat={self.remat!r}: 'none', 'ff', 'ff_relu' or 'layer'",
        )
        _check(self.ff_chunks >= 1, f"model.ff_chunks={self.ff_chunks}: must be >= 1")


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """``L = a1 L_p + a2 L_msd + a3 L_dpsr + a4 (L_actor + L_critic)``.

    Attributes:
      a1, a2, a3, a4: loss weights (paper: 9, 1, 30, 1, the January code values; code-compat:
        9, 0 (no MSD), 10, 9).
      use_msd: include ``L_m + L_c + L_r`` (``False`` in code-compat).
      separation: ``hinge`` (bounded, default) or ``raw`` (as published) for L_c.
      margin: hinge margin of L_c.
      dpsr_mode: ``paper`` or ``code-compat`` for ``cosa_jax.losses.dpsr_total``.
    """

    a1: float = 9.0
    a2: float = 1.0
    a3: float = 30.0
    a4: float = 1.0
    use_msd: bool = True
    separation: str = "hinge"
    margin: float = 1.0
    dpsr_mode: str = "paper"

    def __post_init__(self):
        _check(self.separation in ("hinge", "raw"), f"loss.separation={self.separation!r}")
        _check(self.dpsr_mode in MODES, f"loss.dpsr_mode={self.dpsr_mode!r}: one of {MODES}")
        _check(self.use_msd or self.a2 == 0.0, "loss.a2 must be 0 when loss.use_msd is False")


@dataclasses.dataclass(frozen=True)
class SACConfig:
    """Actor-critic settings.

    Attributes:
      gamma: TD discount (official 0.5).
      tau: soft target-update rate (official 0.01).
      buffer_capacity: replay buffer size (official 1000).
      drop_half_when_full: the official buffer (``add_batch``: drop the oldest half when the next
        batch would fill it; ``cosa_jax.replay`` policy ``drop_half_batch``, sampled without
        replacement); otherwise a ring sampled with replacement.
      copy_targets: initialise target networks as copies of the online ones (the official code
        does not).
      critic_loss: ``l1`` (official) or ``l2``.
      reward_mode: ``paper`` or ``code-compat`` for ``cosa_jax.losses.iemocap_reward``.
      state_with_previous_action: the policy's state is the agents' features weighted by the
        previous step's action (the official MDP: ``s_k = fused(feats_k, a_{k-1})``, while
        evaluation acts on the raw features); otherwise the raw features (paper mode).
    """

    gamma: float = 0.5
    tau: float = 0.01
    buffer_capacity: int = 1000
    drop_half_when_full: bool = False
    copy_targets: bool = True
    critic_loss: str = "l1"
    reward_mode: str = "paper"
    state_with_previous_action: bool = False

    def __post_init__(self):
        _check(0.0 <= self.gamma <= 1.0 and 0.0 < self.tau <= 1.0, "sac.gamma/tau out of range")
        _check(self.buffer_capacity > 0, "sac.buffer_capacity must be > 0")
        _check(self.critic_loss in ("l1", "l2"), f"sac.critic_loss={self.critic_loss!r}")
        _check(self.reward_mode in MODES, f"sac.reward_mode={self.reward_mode!r}")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Schedule and protocol.

    Attributes:
      epochs: training epochs (official 200).
      plateau_patience: ReduceLROnPlateau patience on validation loss (official 20).
      plateau_factor: ReduceLROnPlateau factor (official 0.8).
      seeds: seeds of the reported mean +- std (spec: 1111-1115).
      best_test_per_metric: Co-SA's own protocol (best test value per metric over all epochs);
        off by default, labelled in every output when on.
      metrics_convention: ``mmsa``, ``mult`` or ``magbert`` (regression tasks).
    """

    epochs: int = 200
    plateau_patience: int = 20
    plateau_factor: float = 0.8
    seeds: tuple[int, ...] = (1111, 1112, 1113, 1114, 1115)
    best_test_per_metric: bool = False
    metrics_convention: str = "mmsa"

    def __post_init__(self):
        _check(self.epochs > 0 and len(self.seeds) > 0, "train.epochs/seeds must be non-empty")
        _check(0.0 < self.plateau_factor < 1.0, "train.plateau_factor must lie in (0, 1)")
        _check(
            self.metrics_convention in CONVENTIONS,
            f"train.metrics_convention={self.metrics_convention!r}: one of {CONVENTIONS}",
        )


def adam(lr: float = 2.2e-4) -> OptimizerConfig:
    """The official optimizer as an ``OptimizerConfig``: plain Adam, constant lr, no clipping."""
    return OptimizerConfig(
        peak_lr=lr, init_lr=lr, end_lr=lr, schedule="constant", b1=0.9, b2=0.999,
        weight_decay=0.0, clip_norm=None,
    )  # fmt: skip


@dataclasses.dataclass(frozen=True)
class CoSAConfig:
    """A complete Co-SA run.

    Attributes:
      name: config name.
      mode: ``paper`` or ``code-compat``.
      data, model, loss, sac, train: see their classes.
      optim: Adam shared by the three parameter groups (model, actor, critic); each group gets
        its own optimizer state.
    """

    name: str = "iemocap_paper"
    mode: str = "paper"
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    sac: SACConfig = dataclasses.field(default_factory=SACConfig)
    optim: OptimizerConfig = dataclasses.field(default_factory=adam)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)

    def __post_init__(self):
        _check(self.mode in MODES, f"mode={self.mode!r}: one of {MODES}")


_DATA = {
    "iemocap": DataConfig("iemocap", "mult", "iemocap_data.pkl", "iemocap", (300, 74, 35), 20),
    "mosi": DataConfig("mosi", "mmsa", "aligned_50.pkl", "regression", (768, 5, 20), 50),
    "mosei": DataConfig("mosei", "mmsa", "aligned_50.pkl", "regression", (768, 74, 35), 50),
}


def make_config(dataset: str, mode: str) -> CoSAConfig:
    """The config of ``dataset`` (``mosi``, ``mosei``, ``iemocap``) in ``mode``.

    Args:
      dataset: which dataset.
      mode: ``paper`` or ``code-compat``.

    Returns:
      The :class:`CoSAConfig` named ``f"{dataset}_{mode with '-' -> '_'}"``.
    """
    _check(dataset in DATASETS, f"unknown dataset {dataset!r}; one of {DATASETS}")
    _check(mode in MODES, f"unknown mode {mode!r}; one of {MODES}")
    name = f"{dataset}_{mode.replace('-', '_')}"
    if mode == "paper":
        return CoSAConfig(name=name, mode=mode, data=_DATA[dataset])
    return CoSAConfig(
        name=name,
        mode=mode,
        data=_DATA[dataset],
        model=ModelConfig(dpsr_residual=False, advice_reduce="sum", shared_layer_init=True),
        loss=LossConfig(a1=9.0, a2=0.0, a3=10.0, a4=9.0, use_msd=False, dpsr_mode=mode),
        sac=SACConfig(
            drop_half_when_full=True,
            copy_targets=False,
            reward_mode=mode,
            state_with_previous_action=True,
        ),
    )
