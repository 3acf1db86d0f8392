"""Named AgentEvol recipes: ``get_config(name)`` imports ``evol_jax.configs.<name>``."""

from __future__ import annotations

import importlib


def get_config(name: str) -> dict:
    """The recipe dict of config ``name`` (a module in this package with ``get_config()``)."""
    try:
        mod = importlib.import_module(f"evol_jax.configs.{name}")
    except ModuleNotFoundError:
        mod = None
    if not hasattr(mod, "get_config"):
        raise ValueError(f"unknown config {name!r}; available: demo, small")
    return mod.get_config()
