"""Configuration dataclasses of the Gato model and its training run (spec sections 3, 4 and 7).

:class:`GatoModelConfig` is everything :class:`gato_jax.models.Gato` needs (hashable, so it can
be a static jit argument); :class:`GatoConfig` adds the tokenizer, optimizer, mesh and run
settings. Named configs (``gato_jax/configs/gato_*.py``) each define ``get_config()``; pick one
with :func:`gato_jax.configs.get_config` and change fields with ``--set a.b=v``.
"""

from __future__ import annotations

import dataclasses

from core_jax.nn import TransformerConfig
from core_jax.optim import OptimizerConfig
from core_jax.parallel import MeshConfig
from gato_jax.configs.tokenizer import TokenizerConfig

DATA_SOURCES = ("synthetic",)
BIN_EMBEDDING_INITS = ("normal", "sinusoidal")  # GatoConfig.bin_embedding_init


@dataclasses.dataclass(frozen=True)
class GatoModelConfig:
    """The Gato network: embedding stack + :class:`core_jax.nn.Transformer`.

    Attributes:
      transformer: the decoder (pre-LayerNorm, GEGLU, tied token table; its ``vocab_size`` must
        equal the tokenizer's). **[decision]** ``positions="none"`` in the named configs: the
        paper describes only the local observation and patch position encodings, so there is no
        global position encoding beyond causality (set ``transformer.positions=rope`` to add one).
      patch_size: side of the square image patches (paper: 16).
      image_channels: channels of every patch (3).
      resnet_width: channels of the patch ResNet block (multiple of ``resnet_groups``).
      resnet_groups: GroupNorm groups (appendix: 32).
      resnet_stem_stride: the stem convolution (kernel = stride) reduces the 16x16 patch to
        ``16/stride`` squared positions before the residual block. **[decision]** 4: the ResNet-v2
        block then runs at 4x4 x ``resnet_width``; the appendix gives no stem size.
      position_bins: rows of the patch row and column position tables (appendix: 128).
      max_local_positions: rows of the local observation position table (appendix: 512).
    """

    transformer: TransformerConfig
    patch_size: int = 16
    image_channels: int = 3
    resnet_width: int = 128
    resnet_groups: int = 32
    resnet_stem_stride: int = 4
    position_bins: int = 128
    max_local_positions: int = 512

    def __post_init__(self):
        def bad(name, why):
            raise ValueError(f"GatoModelConfig.{name}={getattr(self, name)!r}: {why}")

        for name in (
            "patch_size",
            "image_channels",
            "resnet_width",
            "resnet_groups",
            "resnet_stem_stride",
            "position_bins",
            "max_local_positions",
        ):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                bad(name, "must be a positive integer")
        if self.resnet_width % self.resnet_groups:
            bad("resnet_width", f"must be a multiple of resnet_groups={self.resnet_groups}")
        if self.patch_size % self.resnet_stem_stride:
            bad("resnet_stem_stride", f"must divide patch_size={self.patch_size}")


@dataclasses.dataclass(frozen=True)
class GatoConfig:
    """A named Gato training configuration.

    Attributes:
      model: the network.
      tokenizer: tokenisation and sequence layout (``seq_len`` = training window L).
      optim: AdamW per spec section 7 (b1 0.9, b2 0.95, eps 1e-8, weight decay 0.1, linear
        warm-up from ``init_lr`` 1e-7, cosine decay by 10x: ``end_lr = peak_lr / 10``, clip 1.0).
      mesh: ``(data, fsdp, model)`` device mesh.
      batch_size: global sequences per optimizer micro-step (``optim.grad_accum_steps``
        micro-steps make one update).
      num_steps: micro-steps to run.
      seed: initialisation, data order and stochastic depth.
      data: episode source; ``synthetic`` is the built-in deterministic generator of mixed
        control / image episodes (:mod:`gato_jax.synthetic`); otherwise a mixture of RLDS TFDS
        datasets ``tfds:NAME@DATA_DIR[:SPLIT][*WEIGHT][,...]``
        (:func:`gato_jax.input_pipeline.parse_data_spec`), or ``gen:DIR[:TASK[*WEIGHT],...]``:
        a :mod:`gato_jax.datagen` output read with the tasks' own specs and its text tokenizer
        (:func:`gato_jax.datagen.parse_gen_spec`).
      synthetic_steps: timesteps per synthetic episode.
      expert_fraction: TFDS sources keep episodes with return ``>=`` this fraction of their
        task's expert return (spec section 7: 0.8; 0 keeps all).
      data_threads: grain threads loading TFDS batches (0: in the training thread).
      data_prefetch: TFDS batches loaded ahead.
      log_every, checkpoint_every, max_to_keep: intervals in steps / checkpoints kept.
      bin_embedding_init: **[decision]** initial rows of the 1024 continuous-bin tokens in the
        (tied) token table: ``"normal"`` (default; like every other row) or ``"sinusoidal"``
        (:func:`gato_jax.models.bin_embedding_table`: smooth in the bin's value, so that nearby
        values start with nearby embeddings; for small models trained briefly).
      action_input_noise: **[decision]** probability that a continuous action token is replaced
        by a random bin *in the model's input* (targets unchanged;
        :func:`gato_jax.train.corrupt_action_inputs`), against copying the previous action.
        Default 0 (off, paper-literal).
    """

    model: GatoModelConfig
    tokenizer: TokenizerConfig
    optim: OptimizerConfig
    mesh: MeshConfig = MeshConfig()
    batch_size: int = 512
    num_steps: int = 1_000_000
    seed: int = 0
    data: str = "synthetic"
    synthetic_steps: int = 32
    expert_fraction: float = 0.8
    data_threads: int = 4
    data_prefetch: int = 4
    log_every: int = 100
    checkpoint_every: int = 1000
    max_to_keep: int = 2
    bin_embedding_init: str = "normal"
    action_input_noise: float = 0.0

    def __post_init__(self):
        def bad(name, why):
            raise ValueError(f"GatoConfig.{name}={getattr(self, name)!r}: {why}")

        if self.model.transformer.vocab_size != self.tokenizer.vocab_size:
            raise ValueError(
                f"GatoConfig.model.transformer.vocab_size={self.model.transformer.vocab_size} "
                f"differs from the tokenizer's vocab_size={self.tokenizer.vocab_size}"
            )
        for name in ("patch_size", "image_channels", "position_bins", "max_local_positions"):
            if getattr(self.model, name) != getattr(self.tokenizer, name):
                raise ValueError(
                    f"GatoConfig.model.{name}={getattr(self.model, name)} differs from "
                    f"tokenizer.{name}={getattr(self.tokenizer, name)}"
                )
        if self.bin_embedding_init not in BIN_EMBEDDING_INITS:
            bad("bin_embedding_init", f"expected one of {BIN_EMBEDDING_INITS}")
        if not 0.0 <= self.action_input_noise < 1.0:
            bad("action_input_noise", "must be in [0, 1)")
        for name in ("batch_size", "num_steps", "synthetic_steps", "log_every"):
            if getattr(self, name) < 1:
                bad(name, "must be >= 1")
        if self.checkpoint_every < 1 or self.max_to_keep < 1:
            bad("checkpoint_every", "checkpoint_every and max_to_keep must be >= 1")
        if self.data.startswith("gen:"):
            from gato_jax.datagen import parse_gen_spec  # light: no simulator or TFDS import

            try:
                parse_gen_spec(self.data)
            except ValueError as e:
                bad("data", str(e))
        elif self.data not in DATA_SOURCES:
            from gato_jax.input_pipeline import parse_data_spec  # light: tfds loads on use

            try:
                parse_data_spec(self.data)
            except ValueError as e:
                bad("data", f"choose one of {DATA_SOURCES} or a TFDS mixture ({e})")
        if not 0.0 <= self.expert_fraction <= 1.0:
            bad("expert_fraction", "must lie in [0, 1]")
        if self.data_threads < 0 or self.data_prefetch < 1:
            bad("data_threads", "data_threads must be >= 0 and data_prefetch >= 1")


def paper_optimizer(peak_lr: float, *, warmup_steps: int, decay_steps: int) -> OptimizerConfig:
    """Spec section 7: AdamW(0.9, 0.95, 1e-8), wd 0.1, warm-up from 1e-7, cosine to peak/10."""
    return OptimizerConfig(
        peak_lr=peak_lr,
        init_lr=1e-7,
        end_lr=peak_lr / 10,
        warmup_steps=warmup_steps,
        decay_steps=decay_steps,
        schedule="cosine",
        b1=0.9,
        b2=0.95,
        eps=1e-8,
        weight_decay=0.1,
        clip_norm=1.0,
    )


def paper_transformer(
    *, num_layers: int, num_heads: int, d_model: int, mlp_dim: int, head_dim: int
) -> TransformerConfig:
    """Pre-LayerNorm GEGLU decoder with a tied 33,025-row token table and stochastic depth 0.1."""
    return TransformerConfig(
        vocab_size=TokenizerConfig().vocab_size,
        d_model=d_model,
        num_layers=num_layers,
        num_heads=num_heads,
        head_dim=head_dim,
        mlp_dim=mlp_dim,
        mlp="geglu",
        norm="layernorm",
        positions="none",
        max_len=1024,
        tie_embeddings=True,
        stochastic_depth=0.1,
    )
