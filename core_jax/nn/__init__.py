"""Shared decoder-only transformer, KV cache and sampling."""

from core_jax.nn.config import TransformerConfig
from core_jax.nn.decoding import check_token_ids, decode_step, generate, prefill
from core_jax.nn.sampling import restrict_logits, sample, top_k_logits, top_p_logits
from core_jax.nn.transformer import (
    KVCache,
    Transformer,
    dot_product_attention,
    rope,
    segment_positions,
)

__all__ = [
    "KVCache",
    "Transformer",
    "TransformerConfig",
    "check_token_ids",
    "decode_step",
    "dot_product_attention",
    "generate",
    "prefill",
    "restrict_logits",
    "rope",
    "sample",
    "segment_positions",
    "top_k_logits",
    "top_p_logits",
]
