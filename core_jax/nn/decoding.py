"""KV-cached decoding: ``prefill``, fixed-shape ``decode_step`` and a jit-able ``generate`` loop.

    >>> cache = KVCache.init(cfg, batch_size=2, max_len=64)
    >>> logits, cache = prefill(model, params, prompt, lengths=prompt_lengths, cache=cache)
    >>> next_logits, cache = jax.jit(decode_step, static_argnums=0)(model, params, cache, ids)

``prefill`` of right-padded prompts with per-row ``lengths`` followed by ``decode_step`` gives the
same logits as running the full sequence through the model (tested to 1e-5 in fp32).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from core_jax.nn.sampling import sample
from core_jax.nn.transformer import KVCache, Transformer

Array = jax.Array


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def check_token_ids(tokens, vocab_size: int, name: str = "tokens") -> None:
    """Raises ValueError if concrete ``tokens`` hold ids outside ``[0, vocab_size)``.

    Traced values (inside jit) cannot be checked and are let through.
    """
    if tokens is None or not _is_concrete(tokens):
        return
    arr = np.asarray(tokens)
    if arr.size and (arr.min() < 0 or arr.max() >= vocab_size):
        raise ValueError(
            f"{name} holds ids outside [0, {vocab_size}): min {arr.min()}, max {arr.max()}"
        )


def prefill(
    model: Transformer,
    params: Any,
    tokens: Array | None,
    *,
    lengths: Array | None = None,
    cache: KVCache | None = None,
    cache_len: int | None = None,
    **inputs,
) -> tuple[Array, KVCache]:
    """Runs the prompt through the model and fills a cache.

    Args:
      model: the :class:`Transformer`.
      params: its parameters (the ``"params"`` collection).
      tokens: ``[B, P]`` right-padded prompt ids (or None with ``input_embeddings``).
      lengths: ``[B]`` true prompt lengths (default ``P``); row b continues at ``lengths[b]``.
      cache: an existing cache to append to (default: a new empty one).
      cache_len: capacity of the new cache (default ``config.max_len``).
      **inputs: other :class:`Transformer` inputs (``input_embeddings``, ``embeddings_mask``,
        ``extra_embeddings``, ``positions``).

    Returns:
      ``(logits [B, P, V], cache)``. The logits of row b's last real token are
      ``logits[b, lengths[b] - 1]``.
    """
    cfg = model.config
    check_token_ids(tokens, cfg.vocab_size)
    ref = tokens if tokens is not None else inputs["input_embeddings"]
    b, p = ref.shape[:2]
    if cache is None:
        cache = KVCache.init(cfg, b, cache_len)
    if _is_concrete(cache.length) and _is_concrete(lengths if lengths is not None else 0):
        need = np.asarray(cache.length) + (p if lengths is None else np.asarray(lengths))
        if need.max() > cache.capacity:
            raise ValueError(
                f"prompt needs {need.max()} cache positions, capacity is {cache.capacity}"
            )
    if lengths is not None:
        lengths = jnp.asarray(lengths, jnp.int32)
    return model.apply({"params": params}, tokens, cache=cache, num_valid=lengths, **inputs)


def decode_step(
    model: Transformer, params: Any, cache: KVCache, tokens: Array, **inputs
) -> tuple[Array, KVCache]:
    """Appends one token per row and returns its logits.

    Args:
      model: the :class:`Transformer` (static under jit).
      params: its parameters.
      cache: the cache from :func:`prefill` or a previous step.
      tokens: ``[B]`` int32 ids (or None with ``input_embeddings`` of shape ``[B, 1, D]``).
      **inputs: other :class:`Transformer` inputs with a length-1 time axis.

    Returns:
      ``(logits [B, V], cache)``; shapes never change, so a jitted step compiles once.
    """
    check_token_ids(tokens, model.config.vocab_size)
    if tokens is not None:
        tokens = tokens[:, None]
    logits, cache = model.apply({"params": params}, tokens, cache=cache, **inputs)
    return logits[:, 0], cache


def generate(
    model: Transformer,
    params: Any,
    key: Array,
    prompt: Array,
    *,
    max_new_tokens: int,
    lengths: Array | None = None,
    cache_len: int | None = None,
    eos_id: int | None = None,
    temperature: Array | float = 0.0,
    top_k: int | None = None,
    top_p: Array | float | None = None,
    allowed_mask: Array | None = None,
) -> tuple[Array, Array]:
    """Samples continuations of right-padded prompts with a KV cache, in one ``lax.scan``.

    Args:
      model, params: the model.
      key: PRNG key; step i uses ``fold_in(key, i)``.
      prompt: ``[B, P]`` right-padded prompt ids.
      max_new_tokens: number of tokens to generate (static).
      lengths: ``[B]`` prompt lengths (default ``P``).
      cache_len: cache capacity (default ``P + max_new_tokens``).
      eos_id: rows stop after emitting it; later positions hold ``eos_id``.
      temperature, top_k, top_p, allowed_mask: see :func:`core_jax.nn.sampling.sample`.

    Returns:
      ``(new_tokens [B, max_new_tokens], num_generated [B])``.
    """
    b, p = prompt.shape
    lengths = jnp.full((b,), p, jnp.int32) if lengths is None else jnp.asarray(lengths, jnp.int32)
    cache_len = p + max_new_tokens if cache_len is None else cache_len
    logits, cache = prefill(model, params, prompt, lengths=lengths, cache_len=cache_len)
    last = jnp.take_along_axis(logits, (lengths - 1)[:, None, None], axis=1)[:, 0]
    toks, count, _ = sample_continuation(
        model, params, key, cache, last, max_new_tokens=max_new_tokens, eos_id=eos_id,
        temperature=temperature, top_k=top_k, top_p=top_p, allowed_mask=allowed_mask,
    )  # fmt: skip
    return toks, count


def sample_continuation(
    model: Transformer,
    params: Any,
    key: Array,
    cache: KVCache,
    last_logits: Array,
    *,
    max_new_tokens: int,
    eos_id: int | None = None,
    temperature: Array | float = 0.0,
    top_k: int | None = None,
    top_p: Array | float | None = None,
    allowed_mask: Array | None = None,
) -> tuple[Array, Array, KVCache]:
    """The sampling loop of :func:`generate` from an already prefilled cache, in one ``lax.scan``.

    Args:
      cache: the rows' cache after their prompt; ``last_logits``: ``[B, V]`` logits of each row's
        last prompt position. Other arguments as in :func:`generate` (step i draws with
        ``fold_in(key, i)``; rows stop after ``eos_id``).

    Returns:
      ``(new_tokens [B, max_new_tokens], num_generated [B], cache)``: the cache holds the
      generated tokens too, so a caller can keep it for the next turn.
    """
    b = last_logits.shape[0]

    def body(carry, i):
        cache, last_logits, done = carry
        tok = sample(
            jax.random.fold_in(key, i),
            last_logits,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            allowed_mask=allowed_mask,
        )
        pad = eos_id if eos_id is not None else 0
        tok = jnp.where(done, pad, tok)
        new_done = done | (tok == eos_id) if eos_id is not None else done
        step_logits, cache = decode_step(model, params, cache, jnp.maximum(tok, 0))
        return (cache, step_logits, new_done), (tok, ~done)

    init = (cache, last_logits, jnp.zeros((b,), bool))
    (cache, _, _), (toks, live) = jax.lax.scan(body, init, jnp.arange(max_new_tokens))
    return toks.T, live.T.sum(axis=1).astype(jnp.int32), cache
