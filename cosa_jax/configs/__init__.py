"""Named configs of cosa_jax (one file per config): ``get_config(name) -> CoSAConfig``.

>>> from cosa_jax.configs import get_config
>>> get_config("iemocap_code_compat").loss.a3
10.0
"""

import importlib

from cosa_jax.configs.base import CoSAConfig, make_config

CONFIG_NAMES = (
    "mosi_paper",
    "mosi_code_compat",
    "mosei_paper",
    "mosei_code_compat",
    "iemocap_paper",
    "iemocap_code_compat",
)


def get_config(name: str) -> CoSAConfig:
    """The named :class:`CoSAConfig`.

    Raises:
      ValueError: for an unknown name, listing the valid ones.
    """
    if name not in CONFIG_NAMES:
        raise ValueError(f"unknown Co-SA config {name!r}; valid names: {', '.join(CONFIG_NAMES)}")
    return importlib.import_module(f"cosa_jax.configs.{name}").get_config()


__all__ = ["CONFIG_NAMES", "CoSAConfig", "get_config", "make_config"]
