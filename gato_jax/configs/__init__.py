"""Named configs of gato_jax (one file per config): ``get_config(name) -> GatoConfig``.

>>> from gato_jax.configs import get_config
>>> get_config("gato_364m").model.transformer.d_model
1536
"""

import importlib

from gato_jax.configs.base import GatoConfig, GatoModelConfig
from gato_jax.configs.tokenizer import TokenizerConfig

CONFIG_NAMES = ("gato_tiny", "gato_79m", "gato_364m", "gato_1_18b")


def get_config(name: str) -> GatoConfig:
    """The named :class:`GatoConfig`.

    Raises:
      ValueError: for an unknown name, listing the valid ones.
    """
    if name not in CONFIG_NAMES:
        raise ValueError(f"unknown Gato config {name!r}; valid names: {', '.join(CONFIG_NAMES)}")
    return importlib.import_module(f"gato_jax.configs.{name}").get_config()


__all__ = ["CONFIG_NAMES", "GatoConfig", "GatoModelConfig", "TokenizerConfig", "get_config"]
