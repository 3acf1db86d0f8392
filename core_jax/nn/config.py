"""Configuration of the shared decoder-only transformer.

One frozen dataclass describes every transformer in this repository: Gato (pre-LayerNorm, GEGLU,
tied embeddings, learned local positions added from outside), Llama/Qwen2 (RMSNorm, SwiGLU, RoPE,
grouped-query attention) and GPT-2 (LayerNorm, GELU, learned positions, biases). Every field is
validated in ``__post_init__``; an invalid value raises ``ValueError`` naming the field.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import jax.numpy as jnp

MLP_KINDS = ("gelu", "geglu", "swiglu")
NORM_KINDS = ("layernorm", "rmsnorm")
POSITION_KINDS = ("none", "learned", "rope")
DTYPES = ("float32", "bfloat16", "float16")


def _dtype_name(dtype: Any) -> str:
    try:
        return jnp.dtype(dtype).name
    except TypeError as e:
        raise ValueError(f"not a dtype: {dtype!r}") from e


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """Hyper-parameters of :class:`core_jax.nn.Transformer`.

    Attributes:
      vocab_size: rows of the token embedding table (and columns of the output logits).
      d_model: width of the residual stream.
      num_layers: number of decoder blocks.
      num_heads: query heads per attention layer.
      num_kv_heads: key/value heads (grouped-query attention); ``None`` means ``num_heads``
        (multi-head attention). Must divide ``num_heads``.
      head_dim: width of one head; ``None`` means ``d_model // num_heads`` (then ``num_heads``
        must divide ``d_model``). May be set explicitly to any value (Gato's 79M model uses 24
        heads of 32 over d_model 768).
      mlp_dim: hidden width of the feed-forward block.
      mlp: ``gelu`` (Linear-GELU-Linear, GPT-2), ``geglu`` (Gato) or ``swiglu`` (Llama).
      norm: ``layernorm`` or ``rmsnorm``; pre-norm everywhere plus a final norm.
      positions: ``none`` (the caller adds its own), ``learned`` (absolute table of ``max_len``
        rows) or ``rope`` (rotary, base ``rope_theta``).
      max_len: longest sequence (learned table size; default KV-cache length).
      tie_embeddings: output logits use the transposed token table.
      stochastic_depth: probability of dropping each attention / MLP residual branch per example
        at train time (``deterministic=False``); surviving branches are scaled by ``1/(1-p)``.
      dtype: compute dtype of activations and matmuls (``bfloat16`` with fp32 params is the
        mixed-precision recipe). Softmax, norms statistics and logits are computed in fp32.
      param_dtype: storage dtype of the parameters.
      norm_eps: epsilon of the normalisation layers.
      rope_theta: RoPE base frequency.
      qkv_bias: biases on the query/key/value projections (Qwen2, GPT-2).
      out_bias: bias on the attention output projection (GPT-2).
      mlp_bias: biases in the feed-forward block (GPT-2).
      norm_bias: LayerNorm has a learned bias (ignored by RMSNorm).
      gelu_approximate: tanh approximation of GELU (GPT-2's ``gelu_new``) instead of the exact
        erf form.
      remat: rematerialise each block in the backward pass (saves activation memory).
      embedding_scale: multiply token embeddings by ``sqrt(d_model)`` (Gemma-style); off by
        default.
    """

    vocab_size: int
    d_model: int
    num_layers: int
    num_heads: int
    mlp_dim: int
    num_kv_heads: int | None = None
    head_dim: int | None = None
    mlp: str = "geglu"
    norm: str = "layernorm"
    positions: str = "rope"
    max_len: int = 2048
    tie_embeddings: bool = True
    stochastic_depth: float = 0.0
    dtype: str = "float32"
    param_dtype: str = "float32"
    norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    qkv_bias: bool = False
    out_bias: bool = False
    mlp_bias: bool = False
    norm_bias: bool = True
    gelu_approximate: bool = False
    remat: bool = False
    embedding_scale: bool = False

    def __post_init__(self):
        def bad(field, why):
            raise ValueError(f"TransformerConfig.{field}={getattr(self, field)!r}: {why}")

        for field in ("vocab_size", "d_model", "num_layers", "num_heads", "mlp_dim", "max_len"):
            v = getattr(self, field)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                bad(field, "must be a positive integer")
        for field in ("num_kv_heads", "head_dim"):
            v = getattr(self, field)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v <= 0):
                bad(field, "must be a positive integer or None")
        if self.head_dim is None and self.d_model % self.num_heads:
            bad("num_heads", f"does not divide d_model={self.d_model} (or set head_dim explicitly)")
        if self.num_heads % self.kv_heads:
            bad("num_kv_heads", f"does not divide num_heads={self.num_heads}")
        if self.mlp not in MLP_KINDS:
            bad("mlp", f"unknown option; choose one of {MLP_KINDS}")
        if self.norm not in NORM_KINDS:
            bad("norm", f"unknown option; choose one of {NORM_KINDS}")
        if self.positions not in POSITION_KINDS:
            bad("positions", f"unknown option; choose one of {POSITION_KINDS}")
        if self.positions == "rope" and self.dim_per_head % 2:
            bad("head_dim", "RoPE needs an even head dimension")
        if not 0.0 <= self.stochastic_depth < 1.0:
            bad("stochastic_depth", "must lie in [0, 1)")
        for field in ("dtype", "param_dtype"):
            try:
                name = _dtype_name(getattr(self, field))
            except ValueError:
                bad(field, f"unknown dtype; choose one of {DTYPES}")
            if name not in DTYPES:
                bad(field, f"unknown dtype; choose one of {DTYPES}")
            # Normalise jnp.float32 / np.dtype objects to their names so configs stay JSON-able.
            object.__setattr__(self, field, name)
        if self.norm_eps <= 0:
            bad("norm_eps", "must be positive")
        if self.rope_theta <= 0:
            bad("rope_theta", "must be positive")

    # Derived quantities -------------------------------------------------------------------------
    @property
    def kv_heads(self) -> int:
        return self.num_heads if self.num_kv_heads is None else self.num_kv_heads

    @property
    def dim_per_head(self) -> int:
        return self.d_model // self.num_heads if self.head_dim is None else self.head_dim

    @property
    def compute_dtype(self):
        return jnp.dtype(self.dtype)

    @property
    def params_dtype(self):
        return jnp.dtype(self.param_dtype)

    def replace(self, **changes) -> TransformerConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TransformerConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"TransformerConfig: unknown field(s) {unknown}")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    # Counting -----------------------------------------------------------------------------------
    def param_count(self) -> int:
        """Exact number of parameters, from the formula (tests check it against the pytree)."""
        d, h, kv, hd, f = (
            self.d_model,
            self.num_heads,
            self.kv_heads,
            self.dim_per_head,
            self.mlp_dim,
        )
        norm = d * (2 if self.norm == "layernorm" and self.norm_bias else 1)
        attn = d * h * hd + 2 * d * kv * hd + h * hd * d
        if self.qkv_bias:
            attn += h * hd + 2 * kv * hd
        if self.out_bias:
            attn += d
        n_in = 1 if self.mlp == "gelu" else 2
        mlp = n_in * d * f + f * d
        if self.mlp_bias:
            mlp += n_in * f + d
        block = 2 * norm + attn + mlp
        total = self.num_layers * block + norm + self.vocab_size * d
        if not self.tie_embeddings:
            total += d * self.vocab_size
        if self.positions == "learned":
            total += self.max_len * d
        return total

    def flops_per_token(self, seq_len: int, *, training: bool = True) -> float:
        """Model FLOPs per token (PaLM appendix B convention: 6N + 12 L d_attn T for training).

        Args:
          seq_len: sequence length T; the attention term uses the full (non-causal-halved) T, as
            is customary for MFU so numbers are comparable across codebases.
          training: forward + backward (x3) when True, forward only otherwise.

        Returns:
          FLOPs for one token.
        """
        # Matmul parameters: everything except the input lookup table and learned positions
        # (lookups cost no FLOPs); the output projection always costs 2 * d * V per token.
        n = self.param_count() - self.vocab_size * self.d_model
        if self.positions == "learned":
            n -= self.max_len * self.d_model
        if self.tie_embeddings:
            n += self.vocab_size * self.d_model
        attn = 4 * self.num_layers * self.num_heads * self.dim_per_head * seq_len
        fwd = 2 * n + attn
        return float(3 * fwd if training else fwd)
