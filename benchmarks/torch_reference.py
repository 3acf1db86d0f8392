"""PyTorch reference of :class:`core_jax.nn.Transformer` for parity tests and benchmarks.

:class:`TorchTransformer` implements the same architecture as the JAX model for the subset of
:class:`~core_jax.nn.TransformerConfig` used by the benchmarks and parity tests: pre-norm
LayerNorm / RMSNorm, GEGLU / SwiGLU / GELU MLP, RoPE (rotate-half) / learned / no positions,
multi-head or grouped-query attention, tied or untied embeddings, optional biases. It is written
the way a PyTorch user would write it (``nn.Linear``, ``F.layer_norm``,
``F.scaled_dot_product_attention``) and runs in eager mode.

:func:`load_jax_params` copies a JAX parameter tree into it, so logits can be compared
(``tests/core_jax/test_torch_reference.py``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core_jax.nn.config import TransformerConfig

_TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class TorchNorm(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        self.scale = nn.Parameter(torch.ones(cfg.d_model))
        self.bias = (
            nn.Parameter(torch.zeros(cfg.d_model))
            if cfg.norm == "layernorm" and cfg.norm_bias
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        xf = x.float()
        if cfg.norm == "layernorm":
            y = F.layer_norm(
                xf,
                (cfg.d_model,),
                self.scale.float(),
                None if self.bias is None else self.bias.float(),
                cfg.norm_eps,
            )
        else:
            y = F.rms_norm(xf, (cfg.d_model,), self.scale.float(), cfg.norm_eps)
        return y.to(x.dtype)


def rope_tables(cfg: TransformerConfig, positions: torch.Tensor):
    """cos/sin ``[B, 1, T, D/2]`` for rotate-half RoPE."""
    d = cfg.dim_per_head
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
    angles = positions.float()[..., None] * inv_freq  # [B, T, D/2]
    return torch.cos(angles)[:, None], torch.sin(angles)[:, None]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``x``: ``[B, H, T, D]``."""
    d = x.shape[-1]
    xf = x.float()
    x1, x2 = xf[..., : d // 2], xf[..., d // 2 :]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)


class TorchAttention(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        h, kh, hd, d = cfg.num_heads, cfg.kv_heads, cfg.dim_per_head, cfg.d_model
        self.query = nn.Linear(d, h * hd, bias=cfg.qkv_bias)
        self.key = nn.Linear(d, kh * hd, bias=cfg.qkv_bias)
        self.value = nn.Linear(d, kh * hd, bias=cfg.qkv_bias)
        self.out = nn.Linear(h * hd, d, bias=cfg.out_bias)

    def forward(self, x, rope_cs):
        cfg = self.cfg
        b, t, _ = x.shape
        h, kh, hd = cfg.num_heads, cfg.kv_heads, cfg.dim_per_head
        q = self.query(x).view(b, t, h, hd).transpose(1, 2)
        k = self.key(x).view(b, t, kh, hd).transpose(1, 2)
        v = self.value(x).view(b, t, kh, hd).transpose(1, 2)
        if rope_cs is not None:
            q = apply_rope(q, *rope_cs)
            k = apply_rope(k, *rope_cs)
        if kh != h:
            k = k.repeat_interleave(h // kh, dim=1)
            v = v.repeat_interleave(h // kh, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(out.transpose(1, 2).reshape(b, t, h * hd))


class TorchMlp(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        d, f = cfg.d_model, cfg.mlp_dim
        if cfg.mlp == "gelu":
            self.wi = nn.Linear(d, f, bias=cfg.mlp_bias)
        else:
            self.wi_0 = nn.Linear(d, f, bias=cfg.mlp_bias)
            self.wi_1 = nn.Linear(d, f, bias=cfg.mlp_bias)
        self.wo = nn.Linear(f, d, bias=cfg.mlp_bias)

    def forward(self, x):
        cfg = self.cfg
        approx = "tanh" if cfg.gelu_approximate else "none"
        if cfg.mlp == "gelu":
            hidden = F.gelu(self.wi(x), approximate=approx)
        elif cfg.mlp == "geglu":
            hidden = F.gelu(self.wi_0(x), approximate=approx) * self.wi_1(x)
        else:
            hidden = F.silu(self.wi_0(x)) * self.wi_1(x)
        return self.wo(hidden)


class TorchBlock(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.attn_norm = TorchNorm(cfg)
        self.attn = TorchAttention(cfg)
        self.mlp_norm = TorchNorm(cfg)
        self.mlp = TorchMlp(cfg)

    def forward(self, x, rope_cs):
        x = x + self.attn(self.attn_norm(x), rope_cs)
        return x + self.mlp(self.mlp_norm(x))


class TorchTransformer(nn.Module):
    """Eager PyTorch twin of :class:`core_jax.nn.Transformer` (causal, no cache, deterministic)."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        if cfg.dtype != cfg.param_dtype:
            raise ValueError("TorchTransformer supports only dtype == param_dtype")
        self.cfg = cfg
        self.embedder = nn.Embedding(cfg.vocab_size, cfg.d_model)
        nn.init.normal_(self.embedder.weight, std=0.02)
        if cfg.positions == "learned":
            self.pos_embedding = nn.Parameter(torch.randn(cfg.max_len, cfg.d_model) * 0.02)
        self.blocks = nn.ModuleList([TorchBlock(cfg) for _ in range(cfg.num_layers)])
        self.final_norm = TorchNorm(cfg)
        if not cfg.tie_embeddings:
            self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.to(_TORCH_DTYPES[cfg.dtype])

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens [B, L]`` -> fp32 logits ``[B, L, V]``."""
        cfg = self.cfg
        b, t = tokens.shape
        x = self.embedder(tokens)
        if cfg.embedding_scale:
            x = x * math.sqrt(cfg.d_model)
        positions = torch.arange(t).expand(b, t)
        if cfg.positions == "learned":
            x = x + self.pos_embedding[positions]
        rope_cs = rope_tables(cfg, positions) if cfg.positions == "rope" else None
        for blk in self.blocks:
            x = blk(x, rope_cs)
        x = self.final_norm(x)
        if cfg.tie_embeddings:
            return (x @ self.embedder.weight.t()).float()
        return self.lm_head(x).float()


def next_token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of fp32 logits ``[B, L, V]`` against ``targets [B, L]``."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def _t(x) -> torch.Tensor:
    return torch.from_numpy(np.array(x, dtype=np.float32))


def load_jax_params(model: TorchTransformer, params: Any) -> TorchTransformer:
    """Copies a :class:`core_jax.nn.Transformer` parameter tree into ``model`` (in place).

    Args:
      model: a :class:`TorchTransformer` built from the same config.
      params: the JAX ``"params"`` collection (``flax.linen.Partitioned`` boxes are unboxed).

    Returns:
      ``model``.
    """
    import flax.linen as fnn

    params = fnn.unbox(params)
    cfg = model.cfg
    d, h, kh, hd = cfg.d_model, cfg.num_heads, cfg.kv_heads, cfg.dim_per_head
    dtype = _TORCH_DTYPES[cfg.dtype]

    def put(param: torch.Tensor, value: torch.Tensor):
        if tuple(param.shape) != tuple(value.shape):
            raise ValueError(
                f"shape mismatch: torch {tuple(param.shape)} vs jax {tuple(value.shape)}"
            )
        param.data.copy_(value.to(dtype))

    def put_norm(tnorm: TorchNorm, p):
        put(tnorm.scale, _t(p["scale"]))
        if tnorm.bias is not None:
            put(tnorm.bias, _t(p["bias"]))

    with torch.no_grad():
        put(model.embedder.weight, _t(params["embedder"]["embedding"]))
        if cfg.positions == "learned":
            put(model.pos_embedding, _t(params["pos_embedding"]))
        for i, blk in enumerate(model.blocks):
            p = params[f"layer_{i}"]
            put_norm(blk.attn_norm, p["attn_norm"])
            put_norm(blk.mlp_norm, p["mlp_norm"])
            a = p["attn"]
            for name, heads in (("query", h), ("key", kh), ("value", kh)):
                lin = getattr(blk.attn, name)
                put(lin.weight, _t(a[name]["kernel"]).reshape(d, heads * hd).t())
                if lin.bias is not None:
                    put(lin.bias, _t(a[name]["bias"]).reshape(heads * hd))
            put(blk.attn.out.weight, _t(a["out"]["kernel"]).reshape(h * hd, d).t())
            if blk.attn.out.bias is not None:
                put(blk.attn.out.bias, _t(a["out"]["bias"]))
            m = p["mlp"]
            for name in ("wi", "wi_0", "wi_1", "wo"):
                if name in m:
                    lin = getattr(blk.mlp, name)
                    put(lin.weight, _t(m[name]["kernel"]).t())
                    if lin.bias is not None:
                        put(lin.bias, _t(m[name]["bias"]))
        put_norm(model.final_norm, params["final_norm"])
        if not cfg.tie_embeddings:
            put(model.lm_head.weight, _t(params["lm_head"]["kernel"]).t())
    return model
