"""A straightforward NumPy, per-episode reference of :func:`gato_jax.sequence.build_sequence`.

Written as the paper describes it -- loop over timesteps, append each field's tokens to Python
lists, then cut a window -- with no vectorisation. It is the parity reference of the tests
(``tests/gato_jax/test_sequence.py``) and the baseline of ``benchmarks/gato_tokenize.py``.
No prompts (the JAX prompt logic is tested on its own); the window offset is given explicitly.
"""

from __future__ import annotations

import math

import numpy as np

from gato_jax.sequence import EpisodeArrays
from gato_jax.spec import EpisodeSpec, TokenKind
from gato_jax.tokenizer import patch_grid, patch_intervals


def _mu_law(x, mu, m):
    return np.sign(x) * np.log1p(np.abs(x) * mu) / math.log1p(m * mu)


def _bin(y, cfg):
    y = np.clip(np.nan_to_num(y, nan=0.0), -1.0, 1.0)
    b = np.floor((y + 1.0) * (cfg.num_bins / 2.0)).astype(np.int64)
    return np.clip(b, 0, cfg.num_bins - 1) + cfg.continuous_offset


def _continuous(x, field, cfg):
    x = np.nan_to_num(np.asarray(x, np.float32).reshape(-1), nan=0.0, posinf=np.inf, neginf=-np.inf)
    fs = field.spec
    mu_law = cfg.mu_law_observations if not field.is_action else True
    out = _bin(_mu_law(x, cfg.mu, cfg.mu_law_m) if mu_law else x, cfg)
    if field.is_action and cfg.scale_bounded_actions and fs.low is not None and fs.high is not None:
        lo, hi = np.asarray(fs.low, np.float32), np.asarray(fs.high, np.float32)
        for i in range(x.size):
            if np.isfinite(lo[i]) and np.isfinite(hi[i]):
                span = hi[i] - lo[i] if hi[i] > lo[i] else np.float32(1.0)
                out[i] = _bin(np.float32(2.0) * (x[i] - lo[i]) / span - np.float32(1.0), cfg)
    return out


def _patches(img, cfg):
    h, w, c = img.shape
    hp, wp = patch_grid(h, w, cfg.patch_size, cfg.image_resize)
    x = img.astype(np.float32) * np.float32(2.0 / 255.0) - np.float32(1.0)
    if (hp, wp) != (h, w):
        if cfg.image_resize != "pad":
            raise ValueError("the NumPy reference supports image_resize 'none' and 'pad' only")
        x = np.pad(x, [(0, hp - h), (0, wp - w), (0, 0)])
    x = x / np.float32(math.sqrt(cfg.patch_size))
    ps = cfg.patch_size
    out = []
    for r in range(hp // ps):
        for col in range(wp // ps):
            out.append(x[r * ps : (r + 1) * ps, col * ps : (col + 1) * ps])
    rows, cols = patch_intervals(hp, wp, ps, cfg.position_bins)
    return out, rows, cols


def reference_build_sequence(
    episode: EpisodeArrays, spec: EpisodeSpec, window_start: int = 0
) -> dict[str, np.ndarray]:
    """NumPy version of ``build_sequence(episode, key, spec)`` without a prompt.

    Args:
      episode: one encoded episode (NumPy leaves ``[T, ...]``).
      spec: its spec.
      window_start: token offset of the window in the episode's token stream (``GatoInputs
        .window_start`` of the JAX result to compare with).

    Returns:
      dict with the :class:`~gato_jax.sequence.GatoInputs` fields ``tokens, kinds, valid,
      loss_mask, local_positions, timesteps, patch_index, patches, patch_valid, patch_rows,
      patch_cols`` as NumPy arrays.
    """
    cfg = spec.cfg
    tokens, kinds, local, steps, patch_list, prow, pcol = [], [], [], [], [], [], []

    def emit(tok, kind, loc, t, patch=None, r=None, c=None):
        tokens.append(int(tok))
        kinds.append(int(kind))
        local.append(int(loc))
        steps.append(t)
        patch_list.append(patch)
        prow.append(r)
        pcol.append(c)

    for t in range(int(episode.num_steps)):
        pos = 0
        for f in spec.observation:
            x = np.asarray(episode.values[f.name][t])
            kind = f.spec.kind
            if kind == "text":
                for tok in x[: int(episode.text_lengths[f.name][t])]:
                    emit(tok, TokenKind.TEXT, pos, t)
                    pos += 1
            elif kind == "image":
                ps, rows, cols = _patches(x, cfg)
                for i, p in enumerate(ps):
                    emit(cfg.pad_id, TokenKind.IMAGE, pos, t, p, rows[i], cols[i])
                    pos += 1
            elif kind == "discrete":
                for v in x.reshape(-1):
                    emit(int(v) + cfg.discrete_offset, TokenKind.DISCRETE, pos, t)
                    pos += 1
            else:
                for tok in _continuous(x, f, cfg):
                    emit(tok, TokenKind.CONTINUOUS, pos, t)
                    pos += 1
        if not spec.has_separator:
            continue
        sep_pos = pos if cfg.separator_local_position else -1
        emit(cfg.separator_id, TokenKind.SEPARATOR, sep_pos, t)
        pos += 1
        for f in spec.action:
            x = np.asarray(episode.values[f.name][t])
            if f.spec.kind == "text":
                toks = x[: int(episode.text_lengths[f.name][t])]
            elif f.spec.kind == "discrete":
                toks = x.reshape(-1) + cfg.discrete_offset
            else:
                toks = _continuous(x, f, cfg)
            for tok in toks:
                emit(tok, TokenKind.ACTION, pos if cfg.separator_local_position else -1, t)
                pos += 1

    L, P = cfg.seq_len, cfg.num_patch_slots  # noqa: N806
    ps, C = cfg.patch_size, cfg.image_channels  # noqa: N806
    out = dict(
        tokens=np.full(L, cfg.pad_id, np.int32),
        kinds=np.zeros(L, np.int32),
        valid=np.zeros(L, bool),
        loss_mask=np.zeros(L, bool),
        local_positions=np.full(L, -1, np.int32),
        timesteps=np.full(L, -1, np.int32),
        patch_index=np.full(L, -1, np.int32),
        patches=np.zeros((P, ps, ps, C), np.float32),
        patch_valid=np.zeros(P, bool),
        patch_rows=np.zeros((P, 2), np.int32),
        patch_cols=np.zeros((P, 2), np.int32),
    )
    slot = 0
    for j, k in enumerate(range(window_start, min(window_start + L, len(tokens)))):
        if kinds[k] == TokenKind.IMAGE:
            if slot >= P:
                continue
            out["patch_index"][j] = slot
            out["patches"][slot] = patch_list[k]
            out["patch_valid"][slot] = True
            out["patch_rows"][slot] = prow[k]
            out["patch_cols"][slot] = pcol[k]
            slot += 1
        out["tokens"][j] = tokens[k]
        out["kinds"][j] = kinds[k]
        out["valid"][j] = True
        out["loss_mask"][j] = kinds[k] in (TokenKind.TEXT, TokenKind.ACTION)
        out["local_positions"][j] = local[k]
        out["timesteps"][j] = steps[k]
    return out
