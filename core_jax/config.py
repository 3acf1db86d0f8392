"""Nested frozen-dataclass configs: strict dict round-trips and ``a.b=value`` CLI overrides.

Every CLI in the repository takes a named config (a frozen dataclass) and optional overrides:

    >>> cfg = apply_overrides(cfg, ["model.d_model=128", "optim.peak_lr=3e-4"])

Unknown keys and values of the wrong type raise ``ValueError`` naming the key.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import types
import typing
from typing import Any


def to_dict(cfg: Any) -> Any:
    """A JSON-able dict of a (nested) dataclass config; tuples become lists."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, tuple | list):
        return [to_dict(v) for v in cfg]
    return cfg


def _field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unwrap_optional(tp):
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _coerce(value: Any, tp: Any, key: str) -> Any:
    tp, optional = _unwrap_optional(tp)
    if value is None:
        if optional:
            return None
        raise ValueError(f"config key {key!r}: None is not allowed")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ValueError(f"config key {key!r}: expected a mapping, got {value!r}")
        return from_dict(tp, value, prefix=key + ".")
    origin = typing.get_origin(tp)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ValueError(f"config key {key!r}: expected a sequence, got {value!r}")
        return tuple(_to_tuple(v) for v in value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ValueError(f"config key {key!r}: expected a bool, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"config key {key!r}: expected an int, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"config key {key!r}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ValueError(f"config key {key!r}: expected a string, got {value!r}")
        return value
    return value


def _to_tuple(v):
    return tuple(_to_tuple(x) for x in v) if isinstance(v, list | tuple) else v


def from_dict(cls, d: dict[str, Any], prefix: str = "") -> Any:
    """Builds dataclass ``cls`` from a dict, strictly (unknown keys and bad types raise)."""
    if not isinstance(d, dict):
        raise ValueError(f"config {prefix or cls.__name__}: expected a mapping, got {d!r}")
    types_ = _field_types(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(
            f"config: unknown key(s) {[prefix + u for u in unknown]} for {cls.__name__}"
        )
    kwargs = {k: _coerce(v, types_[k], prefix + k) for k, v in d.items()}
    return cls(**kwargs)


def _parse_value(text: str) -> Any:
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def apply_overrides(cfg: Any, overrides: list[str] | None) -> Any:
    """Returns ``cfg`` with ``dotted.key=value`` overrides applied (values parsed as literals)."""
    if not overrides:
        return cfg
    d = to_dict(cfg)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r}: expected key=value")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        node = d
        for p in parts[:-1]:
            if not isinstance(node, dict) or p not in node:
                raise ValueError(f"override {key!r}: unknown key {p!r}")
            node = node[p]
        if not isinstance(node, dict) or parts[-1] not in node:
            raise ValueError(f"override {key!r}: unknown key {parts[-1]!r}")
        value = _parse_value(text)
        if isinstance(node[parts[-1]], float) and isinstance(value, int):
            value = float(value)
        node[parts[-1]] = value
    return from_dict(type(cfg), d)


def dumps(cfg: Any) -> str:
    return json.dumps(to_dict(cfg), indent=2, sort_keys=True)
