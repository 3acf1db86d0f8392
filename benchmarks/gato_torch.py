"""PyTorch twin of :class:`gato_jax.models.Gato` for parity tests and benchmarks.

:class:`TorchGato` is the same network as the JAX model, written the way a PyTorch user would
write it (``nn.Conv2d``, ``nn.GroupNorm``, ``nn.Linear``, ``F.scaled_dot_product_attention``)
and run in eager mode:

* token ids -> the tied token table of :class:`benchmarks.torch_reference.TorchTransformer`;
* every patch slot ``[B, P, 16, 16, C]`` -> :class:`TorchPatchEmbed` (stem conv, pre-activation
  ResNet-v2 block with GroupNorm + exact GELU, flatten in ``(H, W, C)`` order, dense to
  ``d_model``) + learned row / column position embeddings (rounded interval mean in eval mode,
  a uniform bin inside the interval in train mode), gathered to the tokens whose
  ``patch_index >= 0``;
* ``+`` a learned local position embedding where ``local_positions >= 0``;
* the pre-LayerNorm GEGLU decoder blocks of ``TorchTransformer``, with stochastic depth in train
  mode (per-example drop of each residual branch, survivors scaled by ``1 / (1 - p)``, as
  :class:`core_jax.nn.transformer.Block`).

:func:`load_gato_params` copies a JAX ``Gato`` parameter tree into it (the transformer part
through :func:`benchmarks.torch_reference.load_jax_params`), and :func:`gato_loss` is the masked
next-token loss of :func:`gato_jax.train.gato_loss`. Parity:
``tests/gato_jax/test_torch_parity.py``.

    >>> tmodel = load_gato_params(TorchGato(cfg.model), jax_params)
    >>> logits = tmodel(gato_inputs_to_torch(batch))        # [B, L, V] fp32, eval mode
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.torch_reference import (
    TorchTransformer,
    _t,
    load_jax_params,
    rope_tables,
)
from gato_jax.configs.base import GatoModelConfig

# GatoInputs fields the model and the loss read, with their torch dtypes.
TORCH_FIELDS = {
    "tokens": torch.int64,
    "local_positions": torch.int64,
    "patch_index": torch.int64,
    "patches": torch.float32,
    "patch_rows": torch.int64,
    "patch_cols": torch.int64,
    "loss_mask": torch.bool,
    "kinds": torch.int64,
}

# flax.linen.GroupNorm's default epsilon (PyTorch's default is 1e-5).
GROUP_NORM_EPS = 1e-6


def gato_inputs_to_torch(inputs: Any) -> dict[str, torch.Tensor]:
    """Batched :class:`gato_jax.sequence.GatoInputs` (JAX or NumPy leaves) -> dict of tensors.

    Only the fields in :data:`TORCH_FIELDS` are converted (``tokens [B, L]``,
    ``patches [B, P, p, p, C]``, ``patch_rows / patch_cols [B, P, 2]``, ...).
    """
    out = {}
    for name, dtype in TORCH_FIELDS.items():
        value = np.array(getattr(inputs, name))  # a writable copy
        out[name] = torch.from_numpy(value).to(dtype)
    return out


class TorchPatchEmbed(nn.Module):
    """``[N, p, p, C]`` patches -> ``[N, d_model]``, as :class:`gato_jax.models.PatchEmbed`."""

    def __init__(self, cfg: GatoModelConfig):
        super().__init__()
        s, w, c = cfg.resnet_stem_stride, cfg.resnet_width, cfg.image_channels
        self.cfg = cfg
        self.stem = nn.Conv2d(c, w, kernel_size=s, stride=s)
        self.norm_1 = nn.GroupNorm(cfg.resnet_groups, w, eps=GROUP_NORM_EPS)
        self.conv_1 = nn.Conv2d(w, w, kernel_size=3, padding=1)
        self.norm_2 = nn.GroupNorm(cfg.resnet_groups, w, eps=GROUP_NORM_EPS)
        self.conv_2 = nn.Conv2d(w, w, kernel_size=3, padding=1)
        side = cfg.patch_size // s
        self.proj = nn.Linear(side * side * w, cfg.transformer.d_model)
        self.approximate = "tanh" if cfg.transformer.gelu_approximate else "none"

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        x = self.stem(patches.permute(0, 3, 1, 2))  # NHWC -> NCHW
        y = self.conv_1(F.gelu(self.norm_1(x), approximate=self.approximate))
        y = self.conv_2(F.gelu(self.norm_2(y), approximate=self.approximate))
        x = x + y
        # Flatten in (H, W, C) order, like the JAX model's NHWC reshape.
        return self.proj(x.permute(0, 2, 3, 1).reshape(x.shape[0], -1))


def patch_position_ids(intervals: torch.Tensor, generator: torch.Generator | None = None):
    """Bin index per patch from ``[..., 2]`` half-open intervals (see the JAX function).

    Eval (``generator is None``): ``round((lo + hi - 1) / 2)``, halves to even (as
    ``jnp.round``). Train: uniform in ``[lo, max(hi, lo + 1))``.
    """
    lo, hi = intervals[..., 0], intervals[..., 1]
    if generator is None:
        return torch.round((lo + hi - 1).double() / 2.0).long()
    width = torch.clamp(hi - lo, min=1)
    u = torch.rand(lo.shape, generator=generator, device=generator.device)
    return lo + torch.clamp((u * width).long(), max=width - 1)


class TorchGato(nn.Module):
    """Eager PyTorch twin of :class:`gato_jax.models.Gato` (no KV cache).

    Args:
      cfg: the model config (``transformer.dtype == transformer.param_dtype``).
    """

    def __init__(self, cfg: GatoModelConfig):
        super().__init__()
        tcfg = cfg.transformer
        self.cfg = cfg
        self.transformer = TorchTransformer(tcfg)
        self.patch_embed = TorchPatchEmbed(cfg)
        self.patch_row_embedding = nn.Parameter(torch.randn(cfg.position_bins, tcfg.d_model) * 0.02)
        self.patch_col_embedding = nn.Parameter(torch.randn(cfg.position_bins, tcfg.d_model) * 0.02)
        self.local_position_embedding = nn.Parameter(
            torch.randn(cfg.max_local_positions, tcfg.d_model) * 0.02
        )

    def embed_inputs(self, inputs: dict[str, torch.Tensor], generator=None) -> torch.Tensor:
        """Input embeddings ``[B, L, d_model]`` (token or patch embedding + local position)."""
        cfg = self.cfg
        tokens, patches = inputs["tokens"], inputs["patches"]
        b, p = patches.shape[:2]
        rows = patch_position_ids(inputs["patch_rows"], generator)
        cols = patch_position_ids(inputs["patch_cols"], generator)
        rows = rows.clamp(0, cfg.position_bins - 1)
        cols = cols.clamp(0, cfg.position_bins - 1)
        emb = self.patch_embed(patches.reshape(b * p, *patches.shape[2:])).reshape(b, p, -1)
        emb = emb + self.patch_row_embedding[rows] + self.patch_col_embedding[cols]
        index = inputs["patch_index"]
        gathered = torch.gather(emb, 1, index.clamp(min=0)[..., None].expand(-1, -1, emb.shape[-1]))
        x = self.transformer.embedder(tokens)
        if self.transformer.cfg.embedding_scale:
            x = x * math.sqrt(self.transformer.cfg.d_model)
        x = torch.where((index >= 0)[..., None], gathered, x)
        local = inputs["local_positions"]
        pos = self.local_position_embedding[local.clamp(0, cfg.max_local_positions - 1)]
        return x + torch.where((local >= 0)[..., None], pos, torch.zeros_like(pos))

    def forward(
        self, inputs: dict[str, torch.Tensor], generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """fp32 logits ``[B, L, vocab]``.

        Args:
          inputs: :func:`gato_inputs_to_torch` of a batch.
          generator: None for eval mode (deterministic patch positions, no stochastic depth);
            a ``torch.Generator`` for train mode (random patch positions, stochastic depth).
        """
        t = self.transformer
        tcfg = t.cfg
        x = self.embed_inputs(inputs, generator)
        b, seq = x.shape[:2]
        positions = torch.arange(seq, device=x.device).expand(b, seq)
        if tcfg.positions == "learned":
            x = x + t.pos_embedding[positions]
        rope_cs = rope_tables(tcfg, positions) if tcfg.positions == "rope" else None
        p = tcfg.stochastic_depth
        for blk in t.blocks:
            x = x + self._drop_path(blk.attn(blk.attn_norm(x), rope_cs), p, generator)
            x = x + self._drop_path(blk.mlp(blk.mlp_norm(x)), p, generator)
        x = t.final_norm(x)
        if tcfg.tie_embeddings:
            return (x @ t.embedder.weight.t()).float()
        return t.lm_head(x).float()

    @staticmethod
    def _drop_path(y: torch.Tensor, p: float, generator) -> torch.Tensor:
        if generator is None or p == 0.0:
            return y
        keep = torch.rand((y.shape[0], 1, 1), generator=generator, device=y.device) < 1.0 - p
        return torch.where(keep, y / (1.0 - p), torch.zeros_like(y))


def gato_loss(logits: torch.Tensor, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Masked next-token cross-entropy normalised by the target count (as the JAX loss).

    ``sum(mask * nll(logits[:, :-1], tokens[:, 1:])) / max(sum(mask), 1)`` with
    ``mask = loss_mask[:, 1:]``.
    """
    logits, targets = logits[:, :-1], inputs["tokens"][:, 1:]
    mask = inputs["loss_mask"][:, 1:].float()
    nll = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none"
    ).reshape(targets.shape)
    return (nll * mask).sum() / mask.sum().clamp(min=1.0)


def load_gato_params(model: TorchGato, params: Any) -> TorchGato:
    """Copies a JAX :class:`gato_jax.models.Gato` ``"params"`` tree into ``model`` (in place).

    Conv kernels go from Flax ``[kh, kw, in, out]`` to PyTorch ``[out, in, kh, kw]``; dense
    kernels are transposed; ``flax.linen.Partitioned`` boxes are unboxed.

    Raises:
      ValueError: on a shape mismatch (a different config), naming the parameter.
    """
    import flax.linen as fnn

    params = fnn.unbox(params)
    load_jax_params(model.transformer, params["transformer"])

    def put(name: str, param: torch.Tensor, value: torch.Tensor):
        if tuple(param.shape) != tuple(value.shape):
            raise ValueError(
                f"{name}: shape mismatch: torch {tuple(param.shape)} vs jax {tuple(value.shape)}"
            )
        param.data.copy_(value.to(param.dtype))

    pe, tpe = params["patch_embed"], model.patch_embed
    with torch.no_grad():
        for name in ("stem", "conv_1", "conv_2"):
            conv = getattr(tpe, name)
            put(
                f"patch_embed/{name}/kernel",
                conv.weight,
                _t(pe[name]["kernel"]).permute(3, 2, 0, 1),
            )
            put(f"patch_embed/{name}/bias", conv.bias, _t(pe[name]["bias"]))
        for name in ("norm_1", "norm_2"):
            norm = getattr(tpe, name)
            put(f"patch_embed/{name}/scale", norm.weight, _t(pe[name]["scale"]))
            put(f"patch_embed/{name}/bias", norm.bias, _t(pe[name]["bias"]))
        put("patch_embed/proj/kernel", tpe.proj.weight, _t(pe["proj"]["kernel"]).t())
        put("patch_embed/proj/bias", tpe.proj.bias, _t(pe["proj"]["bias"]))
        for name in ("patch_row_embedding", "patch_col_embedding", "local_position_embedding"):
            put(name, getattr(model, name), _t(params[name]))
    return model


def decay_parameters(model: TorchGato) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """``(decayed, not_decayed)``: weight decay on tensors with >= 2 dims, as
    :func:`core_jax.optim.decay_mask` (not on norms, biases or other 1-D parameters)."""
    decay, no_decay = [], []
    for p in model.parameters():
        (decay if p.ndim >= 2 else no_decay).append(p)
    return decay, no_decay
