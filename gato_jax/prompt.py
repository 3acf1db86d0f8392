"""Prompt conditioning (spec section 6), as a pure function of a PRNG key.

In training, a fraction ``cfg.prompt_prob`` (25%) of sequences start with a prompt cut from
another episode of the same task; ``cfg.prompt_end_fraction`` (half) of those prompts are the
*last* ``cfg.prompt_tokens`` tokens of that episode (goal conditioning), the rest a window of
the same length at a uniformly random token offset. :func:`sample_prompt` only decides the
window; :func:`gato_jax.sequence.build_sequence` cuts it and prepends it.
"""

from __future__ import annotations

import enum

import jax
import jax.numpy as jnp

from gato_jax.configs.tokenizer import TokenizerConfig


class PromptKind(enum.IntEnum):
    """Which prompt a sequence got (``GatoInputs.prompt_kind``)."""

    NONE = 0
    END = 1  # the end of the prompt episode (goal conditioning)
    UNIFORM = 2  # a uniformly placed window
    START = 3  # the beginning of the prompt episode (evaluation-style demonstration prompt)


PROMPT_MODES = ("train", "none", "end", "uniform", "start")


def sample_prompt(
    key: jax.Array, num_tokens: jax.Array, cfg: TokenizerConfig, mode: str = "train"
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Chooses whether and where to cut a prompt from an episode of ``num_tokens`` tokens.

    Pure and jit/vmap-compatible; deterministic given ``key``.

    Args:
      key: PRNG key.
      num_tokens: int scalar, valid tokens in the prompt episode.
      cfg: ``prompt_prob``, ``prompt_end_fraction`` and ``prompt_tokens`` are used.
      mode: ``"train"`` (random, as the paper), or a fixed choice ``"none"``, ``"end"``,
        ``"uniform"`` (random offset) or ``"start"``. Static.

    Returns:
      ``(length, offset, kind)`` int32 scalars: the prompt is tokens
      ``[offset, offset + length)`` of the prompt episode (``length = min(prompt_tokens,
      seq_len, num_tokens)``, 0 for no prompt) and ``kind`` a :class:`PromptKind`.
    """
    if mode not in PROMPT_MODES:
        raise ValueError(f"prompt mode {mode!r}: expected one of {PROMPT_MODES}")
    k_use, k_end, k_off = jax.random.split(key, 3)
    n = jnp.asarray(num_tokens, jnp.int32)
    if mode == "train":
        use = jax.random.uniform(k_use) < cfg.prompt_prob
        from_end = jax.random.uniform(k_end) < cfg.prompt_end_fraction
        kind = jnp.where(use, jnp.where(from_end, PromptKind.END, PromptKind.UNIFORM), 0)
    else:
        fixed = {"none": 0, "end": PromptKind.END, "uniform": PromptKind.UNIFORM}
        kind = fixed.get(mode, PromptKind.START)
    kind = jnp.asarray(kind, jnp.int32)
    kind = jnp.where(n > 0, kind, PromptKind.NONE)
    length = jnp.where(
        kind == PromptKind.NONE, 0, jnp.minimum(min(cfg.prompt_tokens, cfg.seq_len), n)
    )
    uniform_offset = jax.random.randint(k_off, (), 0, n - length + 1, jnp.int32)
    offset = jnp.select(
        [kind == PromptKind.END, kind == PromptKind.UNIFORM], [n - length, uniform_offset], 0
    )
    return length.astype(jnp.int32), offset.astype(jnp.int32), kind
