"""Observation/action specs and the static token layout of one timestep (spec section 2).

    >>> spec = EpisodeSpec(
    ...     observation={"instruction": FieldSpec("text", (8,)),
    ...                  "rgb": FieldSpec("image", (32, 32, 3)),
    ...                  "proprio": {"pos": FieldSpec("continuous", (3,))}},
    ...     action=FieldSpec("continuous", (2,), low=-1.0, high=1.0))
    >>> [f.name for f in spec.observation]
    ['observation/instruction', 'observation/rgb', 'observation/proprio/pos']

Fields are laid out per timestep as: text fields, then image fields, then tensor fields
(discrete and continuous together), each group in lexicographic order of the key path
(nested dicts compare key by key), then the '|' separator, then the action fields in
lexicographic order. :class:`EpisodeSpec` is a frozen, hashable dataclass, so it can be a static
argument of ``jax.jit``.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from gato_jax.configs.tokenizer import TokenizerConfig
from gato_jax.tokenizer import patch_grid

KINDS = ("text", "image", "discrete", "continuous")
_GROUP = {"text": 0, "image": 1, "discrete": 2, "continuous": 2}


class TokenKind(enum.IntEnum):
    """Value of ``kinds[i]`` in a built sequence."""

    PAD = 0
    TEXT = 1  # observation text
    IMAGE = 2  # image patch (embedded from ``patches``, not from ``tokens``)
    DISCRETE = 3  # discrete observation value
    CONTINUOUS = 4  # continuous observation value
    SEPARATOR = 5  # '|'
    ACTION = 6  # any action token (discrete, continuous or text action fields)


def _bounds(value: Any, shape: tuple[int, ...], name: str, what: str):
    if value is None:
        return None
    arr = np.asarray(value, np.float64)
    try:
        arr = np.broadcast_to(arr, shape)
    except ValueError as e:
        raise ValueError(f"{name}: {what} of shape {arr.shape} does not fit shape {shape}") from e
    if np.isnan(arr).any():
        raise ValueError(f"{name}: {what} contains NaN")
    return tuple(float(v) for v in arr.reshape(-1))


@dataclasses.dataclass(frozen=True)
class FieldSpec:
    """One observation or action field (per timestep, without the time axis).

    Attributes:
      kind: ``text`` | ``image`` | ``discrete`` | ``continuous``.
      shape: per-step shape. text: ``(max_tokens,)``; image: ``(H, W, C)`` uint8;
        discrete/continuous: any shape (``()`` is one value), flattened row-major.
      low: optional lower bound (scalar or array broadcastable to ``shape``). Continuous
        actions with finite ``low`` and ``high`` are scaled to [-1, 1] (see
        ``TokenizerConfig.scale_bounded_actions``); discrete values are checked against it.
      high: optional upper bound (inclusive), as ``low``.

    Bounds are stored as flat tuples (hashable); validation happens when the field is placed in
    an :class:`EpisodeSpec`, so that errors can name it.
    """

    kind: str
    shape: tuple[int, ...] = ()
    low: Any = None
    high: Any = None

    def __post_init__(self):
        try:
            shape = tuple(int(s) for s in np.atleast_1d(np.asarray(self.shape, np.int64)))
        except (TypeError, ValueError) as e:
            raise ValueError(f"FieldSpec.shape={self.shape!r}: not a shape") from e
        if np.asarray(self.shape).ndim == 0 and self.shape != ():
            shape = (int(self.shape),)
        object.__setattr__(self, "shape", shape if self.shape != () else ())

    @property
    def size(self) -> int:
        return math.prod(self.shape)


@dataclasses.dataclass(frozen=True)
class Field:
    """A field placed in the layout: its full name, spec and tokens per step."""

    name: str  # "observation/proprio/pos"
    path: tuple[str, ...]  # ("proprio", "pos")
    spec: FieldSpec
    num_tokens: int  # max tokens per step (text: shape[0]; image: patches; tensor: size)
    is_action: bool


def _flatten(tree, prefix: tuple[str, ...], root: str):
    if isinstance(tree, FieldSpec):
        return [(prefix, tree)]
    if isinstance(tree, Mapping):
        out = []
        for k, v in tree.items():
            if not isinstance(k, str):
                raise ValueError(f"{'/'.join((root, *prefix))}: keys must be str, got {k!r}")
            if "/" in k:
                raise ValueError(f"{'/'.join((root, *prefix, k))}: '/' is not allowed in keys")
            out.extend(_flatten(v, (*prefix, k), root))
        return out
    raise ValueError(
        f"{'/'.join((root, *prefix))}: expected a FieldSpec or a mapping, got {type(tree).__name__}"
    )


def _place(tree, root: str, cfg: TokenizerConfig) -> tuple[Field, ...]:
    fields = []
    for path, fs in _flatten(tree, (), root):
        name = "/".join((root, *path))
        if fs.kind not in KINDS:
            raise ValueError(f"{name}: unknown field kind {fs.kind!r}; expected one of {KINDS}")
        if root == "action" and fs.kind == "image":
            raise ValueError(f"{name}: image actions are not supported")
        if fs.kind == "text" and len(fs.shape) != 1:
            raise ValueError(f"{name}: text shape must be (max_tokens,), got {fs.shape}")
        if fs.kind == "image":
            if len(fs.shape) != 3:
                raise ValueError(f"{name}: image shape must be (H, W, C), got {fs.shape}")
            if fs.shape[2] != cfg.image_channels:
                raise ValueError(
                    f"{name}: image has {fs.shape[2]} channels, TokenizerConfig.image_channels="
                    f"{cfg.image_channels}"
                )
            try:
                h, w = patch_grid(fs.shape[0], fs.shape[1], cfg.patch_size, cfg.image_resize)
            except ValueError as e:
                raise ValueError(f"{name}: {e}") from e
            n = (h // cfg.patch_size) * (w // cfg.patch_size)
        else:
            n = fs.size
        if any(s < 1 for s in fs.shape):
            raise ValueError(f"{name}: shape {fs.shape} has an empty dimension")
        low = _bounds(fs.low, fs.shape, name, "low")
        high = _bounds(fs.high, fs.shape, name, "high")
        if (
            low is not None
            and high is not None
            and any(a > b for a, b in zip(low, high, strict=True))
        ):
            raise ValueError(f"{name}: low > high")
        if fs.kind in ("text", "image") and (low is not None or high is not None):
            raise ValueError(f"{name}: bounds are only meaningful for discrete/continuous")
        fs = dataclasses.replace(fs, low=low, high=high)
        fields.append(Field(name, path, fs, n, root == "action"))
    fields.sort(key=lambda f: (_GROUP[f.spec.kind], f.path))
    return tuple(fields)


@dataclasses.dataclass(frozen=True, init=False)
class EpisodeSpec:
    """Observation and action fields of a task, placed in Gato's per-timestep order.

    Args:
      observation: a :class:`FieldSpec` or a (nested) mapping of str -> FieldSpec.
      action: as ``observation``; may be an empty mapping (then no separator is emitted:
        text-only or vision-language data).
      cfg: tokenizer config (default ``TokenizerConfig()``); kept as ``spec.cfg`` and used by
        every function that takes the spec.

    Attributes:
      observation: tuple of :class:`Field` in layout order (text, image, tensors; lexicographic).
      action: tuple of :class:`Field` in lexicographic order.
      cfg: the :class:`TokenizerConfig`.

    Raises:
      ValueError: naming the field, for unknown kinds, bad shapes or bounds, image sizes that
        ``cfg.image_resize`` rejects, or observations longer than ``cfg.max_local_positions``.
    """

    observation: tuple[Field, ...]
    action: tuple[Field, ...]
    cfg: TokenizerConfig

    def __init__(self, observation, action, cfg: TokenizerConfig | None = None):
        cfg = cfg or TokenizerConfig()
        obs = _place(observation, "observation", cfg)
        act = _place(action, "action", cfg)
        if not obs:
            raise ValueError("observation: the spec has no observation fields")
        n_obs = sum(f.num_tokens for f in obs)
        n_local = n_obs + (
            1 + sum(f.num_tokens for f in act) if cfg.separator_local_position else 0
        )
        if n_local > cfg.max_local_positions:
            raise ValueError(
                f"observation: up to {n_local} tokens per timestep need local positions, more "
                f"than TokenizerConfig.max_local_positions={cfg.max_local_positions}"
            )
        object.__setattr__(self, "observation", obs)
        object.__setattr__(self, "action", act)
        object.__setattr__(self, "cfg", cfg)

    @property
    def fields(self) -> tuple[Field, ...]:
        return self.observation + self.action

    @property
    def has_separator(self) -> bool:
        return bool(self.action)

    @property
    def tokens_per_step(self) -> int:
        """Maximum tokens of one timestep (observation + separator + action)."""
        return sum(f.num_tokens for f in self.fields) + int(self.has_separator)
