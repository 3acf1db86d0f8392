"""Episodes -> fixed-length Gato model inputs (spec sections 1, 2, 5 and 6).

Two stages, kept apart because compiled code cannot raise on values:

1. **Host (NumPy), validating** -- :func:`encode_episode` checks an episode against its
   :class:`~gato_jax.spec.EpisodeSpec` (missing/extra fields, time lengths, image size and
   dtype, discrete range, NaN/Inf, text length) and raises ``ValueError`` naming the field; it
   tokenises text with a :class:`~gato_jax.tokenizer.TextTokenizer` and pads the episode to a
   fixed number of steps. :func:`stack_episodes` stacks several into a batch.
2. **Pure (jit/vmap)** -- :func:`build_sequence` turns one :class:`EpisodeArrays` (plus an
   optional same-task prompt episode) into :class:`GatoInputs` of fixed length
   ``L = spec.cfg.seq_len``; :func:`build_batch` is its jitted ``vmap`` over a batch.

    >>> arrays = [encode_episode(ep, spec, text_tokenizer=tok, max_steps=64) for ep in episodes]
    >>> batch = build_batch(stack_episodes(arrays), jax.random.split(key, len(arrays)), spec)
    >>> batch.tokens.shape, batch.patches.shape
    ((B, 1024), (B, 1024, 16, 16, 3))

Output layout (:class:`GatoInputs`, all fixed-shape): token ``i`` of the window has id
``tokens[i]``; image-patch tokens carry ``pad_id`` there and ``patch_index[i] = s >= 0``, the
slot of their pixels in ``patches[s]`` (slots filled in window order, so the model embeds
``patches`` with its ResNet block and scatters/gathers by ``patch_index``). ``loss_mask[i]``
says whether token ``i`` is a *target* (text or action token): train with
``logits[:, :-1]`` against ``tokens[:, 1:]`` masked by ``loss_mask[:, 1:]``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from gato_jax.prompt import sample_prompt
from gato_jax.spec import EpisodeSpec, Field, TokenKind
from gato_jax.tokenizer import (
    TextTokenizer,
    detokenize_continuous,
    detokenize_discrete,
    image_to_patches,
    patch_grid,
    patch_intervals,
    tokenize_continuous,
    tokenize_discrete,
)

Array = jax.Array


class EpisodeArrays(flax.struct.PyTreeNode):
    """A validated episode as fixed-shape arrays (output of :func:`encode_episode`).

    Attributes:
      values: field name -> ``[T, ...]`` per-step values: text int32 ``[T, max_tokens]``
        (token ids, zero-padded), image uint8 ``[T, H, W, C]``, discrete int32 ``[T, *shape]``,
        continuous float32 ``[T, *shape]``. Steps ``>= num_steps`` are zero padding.
      text_lengths: text field name -> int32 ``[T]`` tokens used per step.
      num_steps: int32 scalar, real steps (``<= T``).
    """

    values: dict[str, Any]
    text_lengths: dict[str, Any]
    num_steps: Any


class GatoInputs(flax.struct.PyTreeNode):
    """Fixed-shape model inputs of one sequence (``[B, ...]`` when batched).

    Attributes:
      tokens: int32 ``[L]`` token ids (``pad_id`` at padding and image-patch positions).
      kinds: int32 ``[L]`` :class:`~gato_jax.spec.TokenKind`.
      valid: bool ``[L]`` real tokens (False on padding).
      loss_mask: bool ``[L]`` True on text and action tokens (targets of the loss).
      local_positions: int32 ``[L]`` index of an observation token within its timestep's
        observation, in ``[0, max_local_positions)``; ``-1`` on separator/action (unless
        ``separator_local_position``) and padding.
      timesteps: int32 ``[L]`` step of each token within its episode (prompt tokens: within the
        prompt episode); ``-1`` on padding.
      prompt_mask: bool ``[L]`` tokens that come from the prompt.
      patch_index: int32 ``[L]`` slot in ``patches`` of an image-patch token, else ``-1``.
      patches: float32 ``[P, 16, 16, C]`` normalised patch pixels (``P = cfg.num_patch_slots``),
        zero in unused slots.
      patch_valid: bool ``[P]`` used slots.
      patch_rows: int32 ``[P, 2]`` half-open row interval ``(lo, hi)`` in 128 position bins.
      patch_cols: int32 ``[P, 2]`` column interval, as ``patch_rows``.
      patch_overflow: bool scalar, the window had more patches than ``P`` (the excess tokens are
        marked invalid).
      window_start: int32 scalar, token offset of the window in the (main) episode's stream.
      prompt_kind: int32 scalar :class:`~gato_jax.prompt.PromptKind`.
    """

    tokens: Any
    kinds: Any
    valid: Any
    loss_mask: Any
    local_positions: Any
    timesteps: Any
    prompt_mask: Any
    patch_index: Any
    patches: Any
    patch_valid: Any
    patch_rows: Any
    patch_cols: Any
    patch_overflow: Any
    window_start: Any
    prompt_kind: Any


# --------------------------------------------------------------------------------------------
# Host path: validation and encoding (NumPy).


def _lookup(episode: Mapping, field: Field):
    root = "action" if field.is_action else "observation"
    if not isinstance(episode, Mapping) or root not in episode:
        raise ValueError(f"{root}: missing from the episode")
    node = episode[root]
    for i, key in enumerate(field.path):
        if not isinstance(node, Mapping) or key not in node:
            missing = "/".join((root, *field.path[: i + 1]))
            raise ValueError(f"{field.name}: missing from the episode (no key {missing!r})")
        node = node[key]
    return node


def _leaf_names(tree, prefix: str) -> list[str]:
    if isinstance(tree, Mapping):
        out = []
        for k, v in tree.items():
            out.extend(_leaf_names(v, f"{prefix}/{k}"))
        return out
    return [prefix]


def _encode_text(name, value, steps, field, cfg, tokenizer):
    n = field.spec.shape[0]
    if isinstance(value, str) or not isinstance(value, Sequence | np.ndarray):
        raise ValueError(f"{name}: expected one string (or id array) per step, got {value!r:.80}")
    if len(value) != steps:
        raise ValueError(f"{name}: {len(value)} steps, expected {steps}")
    ids = np.zeros((steps, n), np.int32)
    lengths = np.zeros((steps,), np.int32)
    for t, v in enumerate(value):
        if isinstance(v, str):
            if tokenizer is None:
                raise ValueError(f"{name}: text given as str but no text_tokenizer was passed")
            toks = tokenizer.encode(v)
        else:
            toks = np.asarray(v)
            if toks.ndim != 1 or (toks.size and not np.issubdtype(toks.dtype, np.integer)):
                raise ValueError(f"{name}[{t}]: expected a str or a 1-D integer id array")
        if toks.size and (toks.min() < 0 or toks.max() >= cfg.text_vocab_size):
            raise ValueError(f"{name}[{t}]: text ids outside [0, {cfg.text_vocab_size})")
        if toks.size > n:
            if not cfg.text_truncate:
                raise ValueError(
                    f"{name}[{t}]: {toks.size} text tokens exceed the field's {n} "
                    "(TokenizerConfig.text_truncate=True keeps the first ones)"
                )
            toks = toks[:n]
        ids[t, : toks.size] = toks
        lengths[t] = toks.size
    return ids, lengths


def _encode_array(name, value, steps, field, cfg):
    fs = field.spec
    try:
        arr = np.asarray(value)
    except Exception as e:
        raise ValueError(f"{name}: not an array ({e})") from e
    expected = (steps, *fs.shape)
    if fs.kind == "image":
        if arr.dtype != np.uint8:
            raise ValueError(f"{name}: image dtype must be uint8, got {arr.dtype}")
        if arr.shape != expected:
            raise ValueError(f"{name}: image shape {arr.shape}, expected [T, H, W, C] = {expected}")
        return arr
    if arr.shape != expected:
        raise ValueError(f"{name}: shape {arr.shape}, expected [T, *shape] = {expected}")
    if fs.kind == "discrete":
        if arr.dtype == np.bool_:
            arr = arr.astype(np.int32)
        if np.issubdtype(arr.dtype, np.floating):
            if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
                raise ValueError(f"{name}: discrete values must be integers")
        elif not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"{name}: discrete values must be integers, got dtype {arr.dtype}")
        lo = 0 if fs.low is None else np.asarray(fs.low).reshape(fs.shape)
        hi = cfg.num_bins - 1 if fs.high is None else np.asarray(fs.high).reshape(fs.shape)
        bad = (arr < 0) | (arr >= cfg.num_bins) | (arr < lo) | (arr > hi)
        if bad.any():
            v = arr[bad].reshape(-1)[0]
            raise ValueError(
                f"{name}: discrete value {v} outside [0, {cfg.num_bins}) or the field's bounds"
            )
        return arr.astype(np.int32)
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{name}: continuous values must be numbers, got dtype {arr.dtype}")
    arr = arr.astype(np.float32)
    finite = np.isfinite(arr)
    if not finite.all():
        if cfg.nonfinite == "error":
            kind = "NaN" if np.isnan(arr).any() else "Inf"
            raise ValueError(
                f"{name}: {kind} in continuous values (TokenizerConfig.nonfinite='zero' maps "
                "NaN to 0 and +-Inf to the extreme bins)"
            )
        arr = np.where(np.isnan(arr), np.float32(0), arr)
    return arr


def encode_episode(
    episode: Mapping[str, Any],
    spec: EpisodeSpec,
    *,
    text_tokenizer: TextTokenizer | None = None,
    max_steps: int | None = None,
    start_step: int = 0,
) -> EpisodeArrays:
    """Validates an episode and turns it into fixed-shape NumPy arrays (host path).

    Args:
      episode: ``{"observation": tree, "action": tree}``, each tree mirroring the spec (a
        mapping of fields, or the field itself when the spec's root is a single field). Every
        leaf has a leading time axis ``T``: text leaves are a length-``T`` sequence of strings
        (needs ``text_tokenizer``) or of 1-D int id arrays; images uint8 ``[T, H, W, C]``;
        discrete integers ``[T, *shape]``; continuous numbers ``[T, *shape]``.
      spec: the task's :class:`~gato_jax.spec.EpisodeSpec` (with its config).
      text_tokenizer: SentencePiece tokenizer for string text values.
      max_steps: pad (with zeros, ``num_steps`` records the real length) or crop to this many
        steps; default ``T``.
      start_step: first step kept (cropping long episodes on the host; the token window inside
        the kept steps is chosen on device).

    Returns:
      :class:`EpisodeArrays` of NumPy arrays.

    Raises:
      ValueError: naming the field, for missing or unexpected fields, disagreeing time
        lengths, wrong image shape or dtype, discrete values outside ``[0, 1024)`` or the
        field's bounds, NaN/Inf in continuous values (``cfg.nonfinite="error"``), or text longer
        than its field (``cfg.text_truncate=False``).
    """
    cfg = spec.cfg
    if not isinstance(episode, Mapping):
        raise ValueError(f"episode: expected a mapping, got {type(episode).__name__}")
    known = {f.name for f in spec.fields}
    for root in ("observation", "action"):
        if root in episode:
            extra = sorted(set(_leaf_names(episode[root], root)) - known)
            if extra and not (root == "action" and not spec.action and extra == ["action"]):
                raise ValueError(f"{extra[0]}: not in the spec (unexpected episode field)")
    unknown_roots = sorted(set(episode) - {"observation", "action"})
    if unknown_roots:
        raise ValueError(f"{unknown_roots[0]}: unexpected top-level episode key")

    raw = {f.name: _lookup(episode, f) for f in spec.fields}
    first = spec.fields[0]
    steps = len(raw[first.name])
    if steps < 1:
        raise ValueError(f"{first.name}: the episode has no steps")
    values, lengths = {}, {}
    for f in spec.fields:
        if f.spec.kind == "text":
            values[f.name], lengths[f.name] = _encode_text(
                f.name, raw[f.name], steps, f, cfg, text_tokenizer
            )
        else:
            values[f.name] = _encode_array(f.name, raw[f.name], steps, f, cfg)

    if not 0 <= start_step < steps:
        raise ValueError(f"start_step={start_step}: the episode has {steps} steps")
    max_steps = steps - start_step if max_steps is None else int(max_steps)
    if max_steps < 1:
        raise ValueError(f"max_steps={max_steps}: must be >= 1")
    kept = min(max_steps, steps - start_step)

    def fit(a):
        a = a[start_step : start_step + kept]
        pad = [(0, max_steps - kept)] + [(0, 0)] * (a.ndim - 1)
        return np.pad(a, pad)

    return EpisodeArrays(
        values={k: fit(v) for k, v in values.items()},
        text_lengths={k: fit(v) for k, v in lengths.items()},
        num_steps=np.asarray(kept, np.int32),
    )


def stack_episodes(episodes: Sequence[EpisodeArrays]) -> EpisodeArrays:
    """Stacks encoded episodes of one spec (same ``max_steps``) into a batch ``[B, T, ...]``."""
    if not episodes:
        raise ValueError("stack_episodes: no episodes")
    shapes = {jax.tree.map(np.shape, e).values.__repr__() for e in episodes}
    if len(shapes) != 1:
        raise ValueError(
            "stack_episodes: episodes have different shapes; encode them with the same spec "
            "and max_steps"
        )
    return jax.tree.map(lambda *xs: np.stack(xs), *episodes)


# --------------------------------------------------------------------------------------------
# Pure path (jit / vmap).


def _continuous_ids(x: Array, field: Field, cfg) -> Array:
    """float [T, n] -> ids [T, n] with the spec's companding/scaling decisions."""
    kw = dict(mu=cfg.mu, M=cfg.mu_law_m, num_bins=cfg.num_bins, offset=cfg.continuous_offset)
    fs = field.spec
    if field.is_action and cfg.scale_bounded_actions and fs.low is not None and fs.high is not None:
        lo, hi = np.asarray(fs.low, np.float32), np.asarray(fs.high, np.float32)
        bounded = np.isfinite(lo) & np.isfinite(hi)
        if bounded.any():
            span = np.where(bounded & (hi > lo), hi - lo, 1.0).astype(np.float32)
            lo_ = np.where(bounded, lo, 0.0).astype(np.float32)
            scaled = 2.0 * (x - lo_) / span - 1.0
            return jnp.where(
                bounded,
                tokenize_continuous(scaled, mu_law=False, **kw),
                tokenize_continuous(x, mu_law=True, **kw),
            )
    mu_law = cfg.mu_law_observations if not field.is_action else True
    return tokenize_continuous(x, mu_law=mu_law, **kw)


def _step_streams(ep: EpisodeArrays, spec: EpisodeSpec) -> dict[str, Array]:
    """Per-step token layout: ``[T, S]`` arrays plus the episode's patch buffer."""
    cfg = spec.cfg
    T = next(iter(ep.values.values())).shape[0]  # noqa: N806
    ids, kinds, valid, src, is_obs = [], [], [], [], []
    patches, p_step = [], 0

    def add(i, k, v, s, obs):
        n = i.shape[1]
        ids.append(i.astype(jnp.int32))
        kinds.append(jnp.full((T, n), k, jnp.int32))
        valid.append(jnp.broadcast_to(v, (T, n)))
        src.append(jnp.broadcast_to(s, (T, n)))
        is_obs.append(np.full((n,), obs))

    no_src = jnp.int32(-1)
    for f in spec.observation + ((None,) if spec.has_separator else ()) + spec.action:
        if f is None:
            add(jnp.full((T, 1), cfg.separator_id), TokenKind.SEPARATOR, True, no_src, False)
            continue
        x = ep.values[f.name]
        obs = not f.is_action
        kind = f.spec.kind
        if kind == "text":
            n = f.num_tokens
            v = jnp.arange(n)[None, :] < ep.text_lengths[f.name][:, None]
            add(x, TokenKind.TEXT if obs else TokenKind.ACTION, v, no_src, obs)
        elif kind == "image":
            p = image_to_patches(x, patch_size=cfg.patch_size, resize=cfg.image_resize)
            n = p.shape[1]
            patches.append(p)
            s = (p_step + jnp.arange(n, dtype=jnp.int32))[None, :]
            p_step += n
            add(jnp.full((T, n), cfg.pad_id), TokenKind.IMAGE, True, s, True)
        elif kind == "discrete":
            i = tokenize_discrete(x.reshape(T, -1), cfg.discrete_offset, num_bins=cfg.num_bins)
            add(i, TokenKind.DISCRETE if obs else TokenKind.ACTION, True, no_src, obs)
        else:
            i = _continuous_ids(x.reshape(T, -1).astype(jnp.float32), f, cfg)
            add(i, TokenKind.CONTINUOUS if obs else TokenKind.ACTION, True, no_src, obs)

    step_ok = jnp.arange(T) < ep.num_steps
    valid = jnp.concatenate(valid, axis=1) & step_ok[:, None]
    kinds = jnp.concatenate(kinds, axis=1)
    is_obs = np.concatenate(is_obs)
    obs_pos = jnp.cumsum(valid & is_obs[None], axis=1) - 1
    if cfg.separator_local_position:
        local = jnp.cumsum(valid, axis=1) - 1
    else:
        local = jnp.where(is_obs[None], obs_pos, -1)
    src = jnp.concatenate(src, axis=1)
    # Patch source index into the flattened [T * p_step] buffer.
    src = jnp.where(src >= 0, src + jnp.arange(T, dtype=jnp.int32)[:, None] * p_step, -1)
    out = dict(
        ids=jnp.concatenate(ids, axis=1),
        kinds=kinds,
        valid=valid,
        local=jnp.where(valid, local, -1).astype(jnp.int32),
        steps=jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32)[:, None], kinds.shape),
        src=src,
    )
    out = {k: v.reshape(-1) for k, v in out.items()}
    if patches:
        buf = jnp.concatenate(patches, axis=1)
        out["patches"] = buf.reshape(T * p_step, *buf.shape[2:])
    out["p_step"] = p_step
    out["count"] = out["valid"].sum().astype(jnp.int32)
    out["order"] = jnp.nonzero(out["valid"], size=out["valid"].shape[0], fill_value=0)[0]
    return out


def _patch_tables(spec: EpisodeSpec) -> tuple[np.ndarray, np.ndarray]:
    cfg = spec.cfg
    rows, cols = [np.zeros((0, 2), np.int32)], [np.zeros((0, 2), np.int32)]
    for f in spec.observation:
        if f.spec.kind == "image":
            h, w = patch_grid(f.spec.shape[0], f.spec.shape[1], cfg.patch_size, cfg.image_resize)
            r, c = patch_intervals(h, w, cfg.patch_size, cfg.position_bins)
            rows.append(r)
            cols.append(c)
    return np.concatenate(rows), np.concatenate(cols)


def build_sequence(
    episode: EpisodeArrays,
    key: Array,
    spec: EpisodeSpec,
    prompt: EpisodeArrays | None = None,
    *,
    prompt_mode: str = "train",
    window: str | None = None,
) -> GatoInputs:
    """One episode (and optional same-task prompt episode) -> fixed-length model inputs.

    Pure: jit- and vmap-compatible (``spec``, ``prompt_mode`` and ``window`` are static);
    deterministic given ``key``. Performs no value validation: pass the output of
    :func:`encode_episode`.

    The episode's token stream is: per step, observation (text, image patches, tensors), '|',
    action; steps in order. A window of ``L - p`` tokens of it follows a ``p``-token prompt
    (:func:`gato_jax.prompt.sample_prompt`; ``p = 0`` without ``prompt``); streams shorter
    than the window are right-padded.

    Args:
      episode: :class:`EpisodeArrays` of one episode (leaves ``[T, ...]``).
      key: PRNG key (window offset and prompt choice).
      spec: the episode's spec (static).
      prompt: another episode of the same spec (any ``T``) to cut prompts from, or ``None``.
      prompt_mode: see :func:`gato_jax.prompt.sample_prompt` (``"train"``: 25% of sequences,
        half from the end, half uniform).
      window: ``"random"``, ``"start"`` or ``"end"``; default ``spec.cfg.window``.

    Returns:
      :class:`GatoInputs` with ``L = spec.cfg.seq_len``.
    """
    cfg = spec.cfg
    window = window or cfg.window
    if window not in ("random", "start", "end"):
        raise ValueError(f"window={window!r}: expected 'random', 'start' or 'end'")
    L = cfg.seq_len  # noqa: N806
    k_prompt, k_window = jax.random.split(key)
    main = _step_streams(episode, spec)
    streams = [main]
    if prompt is not None:
        pr = _step_streams(prompt, spec)
        p_len, p_off, p_kind = sample_prompt(k_prompt, pr["count"], cfg, prompt_mode)
        streams.append(pr)
    else:
        p_len, p_off, p_kind = jnp.int32(0), jnp.int32(0), jnp.int32(0)

    avail = L - p_len
    slack = jnp.maximum(main["count"] - avail, 0)
    if window == "random":
        m_off = jax.random.randint(k_window, (), 0, slack + 1, jnp.int32)
    elif window == "start":
        m_off = jnp.int32(0)
    else:
        m_off = slack.astype(jnp.int32)

    j = jnp.arange(L, dtype=jnp.int32)
    k_main = m_off + j - p_len
    ok_main = (j >= p_len) & (k_main < main["count"])
    s_main = main["order"][jnp.clip(k_main, 0, main["order"].shape[0] - 1)]

    def take(name, fill, s=s_main, st=main, ok=ok_main):
        return jnp.where(ok, st[name][s], fill)

    tokens = take("ids", cfg.pad_id)
    kinds = take("kinds", TokenKind.PAD)
    local = take("local", -1)
    steps = take("steps", -1)
    src = take("src", -1)
    valid = ok_main
    in_prompt = jnp.zeros((L,), bool)
    if prompt is not None:
        k_pr = p_off + j
        ok_pr = j < p_len
        s_pr = pr["order"][jnp.clip(k_pr, 0, pr["order"].shape[0] - 1)]
        tokens = jnp.where(ok_pr, pr["ids"][s_pr], tokens)
        kinds = jnp.where(ok_pr, pr["kinds"][s_pr], kinds)
        local = jnp.where(ok_pr, pr["local"][s_pr], local)
        steps = jnp.where(ok_pr, pr["steps"][s_pr], steps)
        p_src = pr["src"][s_pr]
        # Prompt patches live after the main episode's patches in the joint buffer.
        main_patches = main["patches"].shape[0] if "patches" in main else 0
        src = jnp.where(ok_pr, jnp.where(p_src >= 0, p_src + main_patches, -1), src)
        valid = valid | ok_pr
        in_prompt = ok_pr

    # Patch slots in window order.
    P = cfg.num_patch_slots  # noqa: N806
    ps, C = cfg.patch_size, cfg.image_channels  # noqa: N806
    is_patch = valid & (kinds == TokenKind.IMAGE)
    slot = jnp.cumsum(is_patch) - 1
    fits = is_patch & (slot < P)
    overflow = jnp.any(is_patch & ~fits)
    valid = valid & (fits | ~is_patch)
    patch_index = jnp.where(fits, slot, -1).astype(jnp.int32)
    n_used = fits.sum()
    patch_valid = jnp.arange(P) < n_used
    if main["p_step"] > 0:
        buffers = [main["patches"]] + ([pr["patches"]] if prompt is not None else [])
        buf = jnp.concatenate(buffers, axis=0)
        pos = jnp.nonzero(fits, size=P, fill_value=0)[0]
        slot_src = jnp.where(patch_valid, src[pos], 0)
        patches = jnp.where(patch_valid[:, None, None, None], buf[slot_src], 0.0)
        rows_tab, cols_tab = _patch_tables(spec)
        within = slot_src % main["p_step"]
        patch_rows = jnp.where(patch_valid[:, None], jnp.asarray(rows_tab)[within], 0)
        patch_cols = jnp.where(patch_valid[:, None], jnp.asarray(cols_tab)[within], 0)
    else:
        patches = jnp.zeros((P, ps, ps, C), jnp.float32)
        patch_rows = patch_cols = jnp.zeros((P, 2), jnp.int32)

    target = (kinds == TokenKind.TEXT) | (kinds == TokenKind.ACTION)
    loss_mask = valid & target
    if not cfg.prompt_loss:
        loss_mask = loss_mask & ~in_prompt
    return GatoInputs(
        tokens=jnp.where(valid, tokens, cfg.pad_id).astype(jnp.int32),
        kinds=jnp.where(valid, kinds, TokenKind.PAD).astype(jnp.int32),
        valid=valid,
        loss_mask=loss_mask,
        local_positions=jnp.where(valid, local, -1).astype(jnp.int32),
        timesteps=jnp.where(valid, steps, -1).astype(jnp.int32),
        prompt_mask=in_prompt,
        patch_index=patch_index,
        patches=patches.astype(jnp.float32),
        patch_valid=patch_valid,
        patch_rows=patch_rows.astype(jnp.int32),
        patch_cols=patch_cols.astype(jnp.int32),
        patch_overflow=overflow,
        window_start=m_off,
        prompt_kind=p_kind.astype(jnp.int32),
    )


@functools.partial(jax.jit, static_argnames=("spec", "prompt_mode", "window"))
def build_batch(
    episodes: EpisodeArrays,
    keys: Array,
    spec: EpisodeSpec,
    prompts: EpisodeArrays | None = None,
    *,
    prompt_mode: str = "train",
    window: str | None = None,
) -> GatoInputs:
    """Jitted ``vmap`` of :func:`build_sequence` over a batch of episodes.

    Args:
      episodes: :class:`EpisodeArrays` with leaves ``[B, T, ...]`` (:func:`stack_episodes`).
      keys: ``[B]`` PRNG keys (e.g. ``jax.random.split(key, B)``).
      spec: the shared spec (static).
      prompts: optional ``[B, T', ...]`` same-task episodes to cut prompts from.
      prompt_mode: see :func:`build_sequence`.
      window: see :func:`build_sequence`.

    Returns:
      :class:`GatoInputs` with a leading batch axis ``B``.
    """
    fn = functools.partial(build_sequence, spec=spec, prompt_mode=prompt_mode, window=window)
    if prompts is None:
        return jax.vmap(lambda e, k: fn(e, k))(episodes, keys)
    return jax.vmap(lambda e, k, p: fn(e, k, prompt=p))(episodes, keys, prompts)


# --------------------------------------------------------------------------------------------
# Actions: id ranges for constrained decoding and detokenisation.


def action_token_count(spec: EpisodeSpec) -> int:
    """Tokens of one action (text action fields count their maximum length)."""
    return sum(f.num_tokens for f in spec.action)


def action_id_ranges(spec: EpisodeSpec) -> np.ndarray:
    """Legal id range of each action token in layout order (spec section 8 decision).

    Returns:
      int32 ``[action_token_count(spec), 2]`` half-open ``(lo, hi)``: discrete fields
      ``[offset, offset + 1024)`` (narrowed by the field's bounds), continuous
      ``[32000, 33024)``, text ``[0, 32000)``.
    """
    cfg = spec.cfg
    out = []
    for f in spec.action:
        if f.spec.kind == "discrete":
            lo = np.zeros(f.num_tokens) if f.spec.low is None else np.asarray(f.spec.low)
            hi = (
                np.full(f.num_tokens, cfg.num_bins - 1)
                if f.spec.high is None
                else np.asarray(f.spec.high)
            )
            lo = np.clip(np.ceil(lo), 0, cfg.num_bins - 1)
            hi = np.clip(np.floor(hi), 0, cfg.num_bins - 1)
            out.append(np.stack([lo, hi + 1], -1) + cfg.discrete_offset)
        elif f.spec.kind == "continuous":
            r = [cfg.continuous_offset, cfg.continuous_offset + cfg.num_bins]
            out.append(np.tile(r, (f.num_tokens, 1)))
        else:
            out.append(np.tile([0, cfg.text_vocab_size], (f.num_tokens, 1)))
    if not out:
        return np.zeros((0, 2), np.int32)
    return np.concatenate(out).astype(np.int32)


def detokenize_action(ids: Array, spec: EpisodeSpec) -> dict[str, Array]:
    """Action ids (one step, layout order) -> values per action field (pure, jit-compatible).

    Inverts the tokenisation of discrete and continuous action fields: bin centre, then inverse
    mu-law or the inverse of the bounds scaling. Text action fields are returned as their ids.

    Args:
      ids: int ``[..., action_token_count(spec)]``.
      spec: the spec (static).

    Returns:
      field name -> ``[..., *shape]`` (discrete int32, continuous float32, text int32 ids).
    """
    cfg = spec.cfg
    ids = jnp.asarray(ids, jnp.int32)
    if ids.shape[-1] != action_token_count(spec):
        raise ValueError(
            f"detokenize_action: {ids.shape[-1]} ids, the spec's action has "
            f"{action_token_count(spec)} tokens"
        )
    kw = dict(mu=cfg.mu, M=cfg.mu_law_m, num_bins=cfg.num_bins, offset=cfg.continuous_offset)
    out, start = {}, 0
    batch = ids.shape[:-1]
    for f in spec.action:
        x = ids[..., start : start + f.num_tokens]
        start += f.num_tokens
        fs = f.spec
        if fs.kind == "discrete":
            v = detokenize_discrete(x, cfg.discrete_offset, num_bins=cfg.num_bins)
        elif fs.kind == "continuous":
            v = detokenize_continuous(x, mu_law=True, **kw)
            if cfg.scale_bounded_actions and fs.low is not None and fs.high is not None:
                lo, hi = np.asarray(fs.low, np.float32), np.asarray(fs.high, np.float32)
                bounded = np.isfinite(lo) & np.isfinite(hi)
                unit = detokenize_continuous(x, mu_law=False, **kw)
                lo_, hi_ = np.where(bounded, lo, 0.0), np.where(bounded, hi, 0.0)
                scaled = (unit + 1.0) * 0.5 * (hi_ - lo_) + lo_
                v = jnp.where(bounded, scaled.astype(jnp.float32), v)
        else:
            v = x
        out[f.name] = v.reshape(*batch, *fs.shape) if fs.kind != "text" else v
    return out


def num_tokens_per_step(spec: EpisodeSpec) -> int:
    """Maximum tokens per timestep (observation + separator + action)."""
    return spec.tokens_per_step


def episode_num_tokens(episode: EpisodeArrays, spec: EpisodeSpec) -> int:
    """Valid tokens of an encoded episode (host; counts text by its lengths)."""
    steps = int(np.asarray(episode.num_steps))
    fixed = sum(f.num_tokens for f in spec.fields if f.spec.kind != "text")
    fixed += int(spec.has_separator)
    text = sum(int(np.asarray(v)[:steps].sum()) for v in episode.text_lengths.values())
    return steps * fixed + text


__all__ = [
    "EpisodeArrays",
    "GatoInputs",
    "action_id_ranges",
    "action_token_count",
    "build_batch",
    "build_sequence",
    "detokenize_action",
    "encode_episode",
    "episode_num_tokens",
    "num_tokens_per_step",
    "stack_episodes",
]
