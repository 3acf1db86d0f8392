"""Named configs of gato_jax (one file per config family)."""

from gato_jax.configs.tokenizer import TokenizerConfig

__all__ = ["TokenizerConfig"]
