"""Acting with Gato (spec section 8): a KV-cached, jit-compiled policy with gymnasium conventions.

    >>> from gato_jax.policy import GatoPolicy
    >>> policy = GatoPolicy.from_checkpoint("/tmp/run", task)        # a Task or an EpisodeSpec
    >>> policy.reset(prompt_episode=demo)                           # a successful demonstration
    >>> obs, _ = env.reset(seed=0)
    >>> action = policy.act(task.observation(obs, env))              # -> env action
    >>> batched = GatoPolicy.from_checkpoint("/tmp/run", task, batch_size=16)
    >>> actions = batched.act_batch([task.observation(o, e) for o, e in zip(obss, envs)])

One call of :meth:`GatoPolicy.act` tokenises the observation on the host, then runs **one**
jitted function: the observation tokens and the separator are appended to the KV cache in one
chunk (together with the previous step's last action token, see below), and the action tokens
are sampled one at a time, autoregressively, each from logits restricted to the legal id range
of its action dimension (:func:`gato_jax.sequence.action_id_ranges`: a discrete field's bounds,
the 1024 continuous bins), then detokenised (:func:`gato_jax.sequence.detokenize_action`) into
the environment's action space. Actions are never clipped: a discrete id range is the field's
``[low, high]``; a bounded continuous field's bins map into ``[low, high]`` by construction
(bin centres of ``[-1, 1]`` scaled to the bounds); unbounded continuous fields are mu-law
decoded.

Fixed shapes: every array that enters the compiled functions has a shape fixed at construction
(batch ``B``, context ``S = spec.cfg.seq_len``, observation chunk ``1 + observation tokens + 1``,
``n`` action tokens), so the act function compiles once (``trace_counts`` counts traces; tests
check it stays at 1). Variable-length text observations are right padding inside the chunk.

Cost per act: one forward of the observation chunk plus ``n - 1`` single-token decode steps.
The last action token is not decoded at once: it is prepended to the next observation chunk
(its logits are never needed), which saves one model call per act (half of them for a
one-dimensional discrete action).

Context (the paper's 1024-token window; here ``S = spec.cfg.seq_len`` of the checkpoint's
tokenizer): the prompt (the first ``prompt_tokens`` tokens of a demonstration, cut as in
training's ``PromptKind.START`` prompts) stays pinned at the start of the window, followed by
the episode's most recent **whole** timesteps. When the next step would not fit, the oldest
steps are dropped (as few as needed) and the window is re-prefilled from scratch into a fresh
cache: one forward over ``S`` tokens instead of the chunk, i.e. about ``S / tokens_per_step``
times an ordinary act's prefill, once every ``(S - prompt - kept) / tokens_per_step`` acts.
Dropping whole steps keeps every observation intact; it means the window after a roll-over is
not the token-granular "last S tokens" of training's ``window="end"``, but the model sees the
same kind of context (prompt, then whole recent steps).

Batched mode: ``batch_size=B`` acts in ``B`` environments at once (:meth:`act_batch`); each
environment has its own prompt, history, roll-over and PRNG stream, and can be reset alone
(:meth:`reset_env`); an environment that passes ``None`` for its observation is idle (its cache
and history are left untouched). Row ``b`` of a batched policy draws exactly the actions a
``B = 1`` policy with key ``keys[b]`` draws.

PRNG: environment ``b`` has key ``keys[b]``; its ``t``-th act uses ``fold_in(keys[b], t)`` and
action token ``i`` ``fold_in(that, i)``. ``temperature=0`` is greedy.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from core_jax.nn import KVCache, restrict_logits, sample
from gato_jax.configs.base import GatoConfig, GatoModelConfig
from gato_jax.configs.tokenizer import TokenizerConfig
from gato_jax.models import Gato
from gato_jax.sequence import (
    EpisodeArrays,
    _patch_tables,
    _step_streams,
    action_id_ranges,
    action_token_count,
    detokenize_action,
    encode_episode,
    stack_episodes,
)
from gato_jax.spec import EpisodeSpec, FieldSpec, TokenKind
from gato_jax.tokenizer import TextTokenizer

Array = jax.Array


class ModelInputs(flax.struct.PyTreeNode):
    """The inputs :class:`gato_jax.models.Gato` reads (its ``MODEL_FIELDS``), batched.

    Attributes:
      tokens: int32 ``[B, T]``.
      local_positions: int32 ``[B, T]`` (``-1``: none).
      patch_index: int32 ``[B, T]`` slot in ``patches`` of an image token, else ``-1``.
      patches: float32 ``[B, P, p, p, C]`` (``P`` may be 0).
      patch_rows: int32 ``[B, P, 2]`` row intervals in position bins.
      patch_cols: int32 ``[B, P, 2]``.
    """

    tokens: Any
    local_positions: Any
    patch_index: Any
    patches: Any
    patch_rows: Any
    patch_cols: Any

    @classmethod
    def token_step(cls, tokens, local_positions, patch_size: int, channels: int) -> ModelInputs:
        """One decode step of non-image tokens: ``tokens`` and ``local_positions`` ``[B, 1]``,
        no patch slots (the model then skips the patch ResNet)."""
        b = tokens.shape[0]
        return cls(
            tokens=tokens,
            local_positions=local_positions,
            patch_index=jnp.full((b, 1), -1, jnp.int32),
            patches=jnp.zeros((b, 0, patch_size, patch_size, channels), jnp.float32),
            patch_rows=jnp.zeros((b, 0, 2), jnp.int32),
            patch_cols=jnp.zeros((b, 0, 2), jnp.int32),
        )


@dataclasses.dataclass
class _Tokens:
    """A run of tokens on the host (one timestep, a prompt, or a window) with its patches."""

    ids: np.ndarray  # int32 [n]
    local: np.ndarray  # int32 [n]
    is_patch: np.ndarray  # bool [n]
    pixels: np.ndarray  # float32 [k, p, p, C], one per True in is_patch, in order
    rows: np.ndarray  # int32 [k, 2]
    cols: np.ndarray  # int32 [k, 2]

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @staticmethod
    def concat(parts: Sequence[_Tokens], empty: _Tokens) -> _Tokens:
        parts = [empty, *parts]
        return _Tokens(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in _FIELDS))

    def slice(self, start: int, stop: int) -> _Tokens:
        before = int(self.is_patch[:start].sum())
        n = int(self.is_patch[start:stop].sum())
        return _Tokens(
            self.ids[start:stop],
            self.local[start:stop],
            self.is_patch[start:stop],
            self.pixels[before : before + n],
            self.rows[before : before + n],
            self.cols[before : before + n],
        )


_FIELDS = dataclasses.fields(_Tokens)


@dataclasses.dataclass
class _EnvState:
    """Host bookkeeping of one environment (what its KV cache holds)."""

    prompt: _Tokens
    steps: collections.deque  # of _Tokens: whole timesteps (observation, '|', action)
    cache_len: int = 0  # tokens written in the cache
    pending: int | None = None  # last action id of the newest step, not yet in the cache
    num_acts: int = 0  # acts since construction (PRNG stream position)


def respec(spec: EpisodeSpec, cfg: TokenizerConfig) -> EpisodeSpec:
    """The same fields as ``spec`` under another tokenizer config (e.g. a checkpoint's)."""

    def tree(fields, root):
        if len(fields) == 1 and fields[0].path == ():
            return _plain(fields[0].spec)
        out: dict = {}
        for f in fields:
            node = out
            for k in f.path[:-1]:
                node = node.setdefault(k, {})
            node[f.path[-1]] = _plain(f.spec)
        return out

    def _plain(fs: FieldSpec) -> FieldSpec:
        def b(v):
            return None if v is None else np.asarray(v, np.float64).reshape(fs.shape)

        return FieldSpec(fs.kind, fs.shape, b(fs.low), b(fs.high))

    return EpisodeSpec(tree(spec.observation, "observation"), tree(spec.action, "action"), cfg)


def _add_time_axis(tree):
    if isinstance(tree, Mapping):
        return {k: _add_time_axis(v) for k, v in tree.items()}
    if isinstance(tree, str):
        return [tree]
    return np.asarray(tree)[None]


def _dummy_action(spec: EpisodeSpec):
    """A valid one-step action tree (its tokens are computed and discarded)."""
    out: dict = {}
    for f in spec.action:
        fs = f.spec
        v = np.zeros(fs.shape, np.float64)
        if fs.low is not None:
            low = np.asarray(fs.low).reshape(fs.shape)
            v = np.maximum(v, np.ceil(low) if fs.kind == "discrete" else low)
        if fs.high is not None:
            v = np.minimum(v, np.asarray(fs.high).reshape(fs.shape))
        v = (v.astype(np.int64) if fs.kind == "discrete" else v.astype(np.float32))[None]
        if f.path == ():
            return v
        node = out
        for k in f.path[:-1]:
            node = node.setdefault(k, {})
        node[f.path[-1]] = v
    return out


class GatoPolicy:
    """A Gato agent for one task, acting in ``batch_size`` environments at once.

    Args:
      model_config: the network's :class:`~gato_jax.configs.base.GatoModelConfig`.
      params: its parameters (the ``"params"`` collection, unboxed).
      task_or_spec: a ``gato_jax.tasks.Task`` (then actions go through its ``to_env_action``)
        or an :class:`~gato_jax.spec.EpisodeSpec`. Its ``cfg`` must be the tokenizer config the
        model was trained with (:meth:`from_checkpoint` takes care of that).
      batch_size: number of environments ``B``.
      temperature: ``0`` greedy, else sampling temperature (scalar; fixed at construction:
        the greedy path is compiled without random draws).
      top_k: optional static top-k filter.
      seed: PRNG seed; environment ``b`` gets ``fold_in(key(seed), b)``.
      keys: ``[B]`` typed PRNG keys overriding ``seed``.
      prompt_tokens: prompt length in tokens (default ``spec.cfg.prompt_tokens``).
      context_len: tokens in the window ``S`` (default ``spec.cfg.seq_len``; at most the
        transformer's ``max_len`` when it has learned positions).
      text_tokenizer: SentencePiece tokenizer for string text observations.

    Raises:
      ValueError: for text action fields (not supported here), a context too short for the
        prompt plus one timestep, or a spec whose vocabulary does not fit the model.
    """

    def __init__(
        self,
        model_config: GatoModelConfig,
        params: Any,
        task_or_spec: Any,
        *,
        batch_size: int = 1,
        temperature: float = 0.0,
        top_k: int | None = None,
        seed: int = 0,
        keys: Array | None = None,
        prompt_tokens: int | None = None,
        context_len: int | None = None,
        text_tokenizer: TextTokenizer | None = None,
    ):
        if isinstance(task_or_spec, EpisodeSpec):
            self.task, spec = None, task_or_spec
        elif isinstance(getattr(task_or_spec, "spec", None), EpisodeSpec):
            self.task, spec = task_or_spec, task_or_spec.spec
        else:
            raise ValueError(
                f"task_or_spec must be a Task or an EpisodeSpec, got {type(task_or_spec).__name__}"
            )
        if not spec.action:
            raise ValueError("GatoPolicy: the spec has no action fields (nothing to act)")
        for f in spec.action:
            if f.spec.kind == "text":
                raise ValueError(f"{f.name}: text action fields are not supported by GatoPolicy")
        cfg = spec.cfg
        tcfg = model_config.transformer
        if cfg.vocab_size > tcfg.vocab_size:
            raise ValueError(
                f"the spec's tokenizer needs {cfg.vocab_size} ids, the model has {tcfg.vocab_size}"
            )
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.spec, self.model_config, self.params = spec, model_config, params
        self.model = Gato(model_config)
        self.batch_size = B = int(batch_size)  # noqa: N806
        self.context_len = S = int(context_len or cfg.seq_len)  # noqa: N806
        self.prompt_tokens = int(cfg.prompt_tokens if prompt_tokens is None else prompt_tokens)
        self.num_action_tokens = n_act = action_token_count(spec)
        self.max_obs_tokens = n_obs = sum(f.num_tokens for f in spec.observation)
        self.chunk_len = n_obs + 2  # previous step's last action token, observation, '|'
        if self.prompt_tokens < 0 or self.prompt_tokens + n_obs + n_act + 1 > S:
            raise ValueError(
                f"context_len={S} cannot hold the prompt ({self.prompt_tokens} tokens) plus one "
                f"timestep ({n_obs + 1 + n_act} tokens)"
            )
        self.text_tokenizer = text_tokenizer
        self.temperature = float(temperature)
        self.top_k = top_k
        self.id_ranges = action_id_ranges(spec)  # [n_act, 2]
        rows_tab, cols_tab = _patch_tables(spec)
        self._rows_tab, self._cols_tab = rows_tab, cols_tab
        self.patches_per_step = p_step = rows_tab.shape[0]
        min_step = spec.tokens_per_step - sum(
            f.num_tokens for f in spec.observation if f.spec.kind == "text"
        )
        self.window_patch_slots = 0 if p_step == 0 else min(S, p_step * (S // min_step + 2))
        if keys is None:
            base = jax.random.key(seed)
            keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.arange(B))
        if keys.shape != (B,):
            raise ValueError(f"keys must have shape ({B},), got {keys.shape}")
        self.keys = keys
        self.trace_counts: collections.Counter = collections.Counter()
        ps, c = cfg.patch_size, cfg.image_channels
        self._empty = _Tokens(
            np.zeros(0, np.int32),
            np.zeros(0, np.int32),
            np.zeros(0, bool),
            np.zeros((0, ps, ps, c), np.float32),
            np.zeros((0, 2), np.int32),
            np.zeros((0, 2), np.int32),
        )
        self._encode_step = jax.jit(functools.partial(_step_streams, spec=spec))
        self._encode_batch = jax.jit(jax.vmap(functools.partial(_step_streams, spec=spec)))
        self._act_fn = jax.jit(self._act_impl)
        self._refill_fn = jax.jit(self._refill_impl)
        self.cache = KVCache.init(tcfg, B, S)
        self._envs = [_EnvState(self._empty, collections.deque()) for _ in range(B)]
        self._last_logits = None

    # ------------------------------------------------------------------------------ loading

    @classmethod
    def from_checkpoint(
        cls, workdir: str, task_or_spec: Any, *, step: int | None = None, **kwargs
    ) -> GatoPolicy:
        """Restores the parameters and config that ``python -m gato_jax.main`` saved.

        Args:
          workdir: the training run's directory (``WORKDIR/checkpoints/<step>/``).
          task_or_spec: a Task or an EpisodeSpec; its fields are re-placed under the
            checkpoint's tokenizer config (:func:`respec`).
          step: checkpoint step (default: the latest complete one).
          **kwargs: passed to :class:`GatoPolicy`.

        Raises:
          FileNotFoundError: no checkpoint in ``workdir``.
          ValueError: a corrupt checkpoint or config.
        """
        cfg, params = load_checkpoint(workdir, step)
        spec = task_or_spec if isinstance(task_or_spec, EpisodeSpec) else task_or_spec.spec
        spec = respec(spec, cfg.tokenizer)
        if not isinstance(task_or_spec, EpisodeSpec):
            task_or_spec = dataclasses.replace(task_or_spec, spec=spec)
        else:
            task_or_spec = spec
        return cls(cfg.model, params, task_or_spec, **kwargs)

    # ------------------------------------------------------------------------- tokenisation

    def encode_observation(self, observation: Any) -> tuple[_Tokens, np.ndarray]:
        """One observation -> its tokens plus '|' (host arrays) and the action tokens' local
        positions ``[n_act]``.

        Raises:
          ValueError: naming the field, as :func:`gato_jax.sequence.encode_episode`.
        """
        return self._stream_tokens(self._encode_step(self._arrays(observation)), True)

    def _arrays(self, observation: Any) -> EpisodeArrays:
        episode = {"observation": _add_time_axis(observation), "action": _dummy_action(self.spec)}
        return encode_episode(episode, self.spec, text_tokenizer=self.text_tokenizer, max_steps=1)

    def _encode_observations(self, observations: Sequence[Any]) -> list:
        """``B`` observations (None: idle) -> ``encode_observation`` results, in one jitted call
        (idle rows are filled with a copy of a real one and dropped)."""
        arrays = [None if o is None else self._arrays(o) for o in observations]
        real = [a for a in arrays if a is not None]
        if not real:
            return [None] * len(arrays)
        stacked = stack_episodes([real[0] if a is None else a for a in arrays])
        streams = jax.device_get(self._encode_batch(stacked))
        return [
            None
            if a is None
            else self._stream_tokens(jax.tree.map(lambda x, b=b: x[b], streams), True)
            for b, a in enumerate(arrays)
        ]

    def encode_prompt(self, episode: Mapping) -> _Tokens:
        """The first ``prompt_tokens`` tokens of a demonstration episode (host arrays)."""
        arrays = encode_episode(episode, self.spec, text_tokenizer=self.text_tokenizer)
        stream = jax.jit(functools.partial(_step_streams, spec=self.spec))(arrays)
        toks = self._stream_tokens(stream, split_action=False)
        return toks.slice(0, min(self.prompt_tokens, len(toks)))

    def _stream_tokens(self, stream: dict, split_action: bool):
        s = jax.device_get(stream)
        valid = np.asarray(s["valid"])
        kinds = np.asarray(s["kinds"])
        keep = valid & ((kinds != TokenKind.ACTION) if split_action else True)
        src = np.asarray(s["src"])[keep]
        is_patch = src >= 0
        p_step = max(self.patches_per_step, 1)
        if self.patches_per_step:
            pixels = np.asarray(s["patches"], np.float32)[src[is_patch]]
        else:
            pixels = self._empty.pixels
        within = src[is_patch] % p_step
        toks = _Tokens(
            np.asarray(s["ids"], np.int32)[keep],
            np.asarray(s["local"], np.int32)[keep],
            is_patch,
            pixels,
            self._rows_tab[within].astype(np.int32).reshape(-1, 2),
            self._cols_tab[within].astype(np.int32).reshape(-1, 2),
        )
        if not split_action:
            return toks
        act_local = np.asarray(s["local"], np.int32)[valid & (kinds == TokenKind.ACTION)]
        return toks, act_local

    def _pack(self, runs: Sequence[_Tokens], length: int, slots: int) -> tuple[dict, int]:
        """Host tokens -> fixed-shape numpy model inputs of one row (right-padded)."""
        t = _Tokens.concat(runs, self._empty)
        n, k = len(t), int(t.is_patch.sum())
        if n > length or k > slots:
            raise RuntimeError(f"internal: {n} tokens / {k} patches exceed {length} / {slots}")
        cfg = self.spec.cfg
        ps, c = cfg.patch_size, cfg.image_channels
        tokens = np.full(length, cfg.pad_id, np.int32)
        local = np.full(length, -1, np.int32)
        pidx = np.full(length, -1, np.int32)
        tokens[:n], local[:n] = t.ids, t.local
        pidx[:n][t.is_patch] = np.arange(k)
        patches = np.zeros((slots, ps, ps, c), np.float32)
        rows = np.zeros((slots, 2), np.int32)
        cols = np.zeros((slots, 2), np.int32)
        patches[:k], rows[:k], cols[:k] = t.pixels, t.rows, t.cols
        return dict(
            tokens=tokens,
            local_positions=local,
            patch_index=pidx,
            patches=patches,
            patch_rows=rows,
            patch_cols=cols,
        ), n

    @staticmethod
    def _stack(rows: Sequence[dict]) -> ModelInputs:
        return ModelInputs(**{k: np.stack([r[k] for r in rows]) for k in rows[0]})

    # ---------------------------------------------------------------------- compiled parts

    def _refill_impl(self, params, cache, window: ModelInputs, num_valid, mask):
        """Prefills the windows of the rows in ``mask`` into a fresh cache (others unchanged)."""
        self.trace_counts["refill"] += 1
        fresh = KVCache.init(self.model_config.transformer, self.batch_size, self.context_len)
        _, fresh = self.model.apply({"params": params}, window, cache=fresh, num_valid=num_valid)

        def pick(new, old):
            m = mask.reshape((-1,) + (1,) * (new.ndim - 1))
            return jnp.where(m, new, old)

        return jax.tree.map(pick, fresh, cache)

    def _act_impl(self, params, cache, chunk: ModelInputs, num_valid, act_local, keys, temp):
        """Chunk prefill + restricted autoregressive sampling of the action tokens.

        Args:
          chunk: ``[B, chunk_len]`` inputs (pending action token, observation, '|').
          num_valid: ``[B]`` real tokens of each chunk row (0: idle row).
          act_local: ``[B, n_act]`` local positions of the action tokens.
          keys: ``[B]`` this act's key per row.
          temp: scalar temperature.

        Returns:
          ``(ids [B, n_act], values: detokenised fields, logits [B, n_act, V], cache)``.
        """
        self.trace_counts["act"] += 1
        n_act = self.num_action_tokens
        active = (num_valid > 0).astype(jnp.int32)
        # Only the chunk's last real position needs logits: take its hidden state and project
        # it alone (the chunk's full logits are unused, so XLA drops them: a 33k-wide output
        # layer over the whole chunk would dominate a small model's act).
        _, hidden, cache = self.model.apply(
            {"params": params}, chunk, cache=cache, num_valid=num_valid, return_hidden=True
        )
        h = jnp.take_along_axis(hidden, jnp.maximum(num_valid - 1, 0)[:, None, None], axis=1)
        last = self.model.apply(
            {"params": params}, h[:, 0], method=lambda m, x: m.transformer.logits_from_hidden(x)
        )
        ranges = jnp.asarray(self.id_ranges)
        cfg = self.spec.cfg
        ps, c = cfg.patch_size, cfg.image_channels
        top_k = self.top_k

        greedy = self.temperature == 0.0  # static: no random draws at all when greedy

        def draw(i, lg):
            lo, hi = ranges[i, 0], ranges[i, 1]
            if greedy:  # exactly sample(temperature=0): argmax over the legal ids
                restricted = restrict_logits(lg, id_range=(lo, hi))
                return jnp.argmax(restricted, axis=-1).astype(jnp.int32)
            ks = jax.vmap(lambda k: jax.random.fold_in(k, i))(keys)
            one = lambda k, row: sample(  # noqa: E731
                k, row[None], temperature=temp, top_k=top_k, id_range=(lo, hi)
            )[0]
            return jax.vmap(one)(ks, lg)

        def body(carry, i):
            cache, lg = carry
            tok = draw(i, lg)
            step = ModelInputs.token_step(
                tok[:, None], jax.lax.dynamic_slice_in_dim(act_local, i, 1, axis=1), ps, c
            )
            new_lg, cache = self.model.apply(
                {"params": params}, step, cache=cache, num_valid=active
            )
            return (cache, new_lg[:, 0]), (tok, lg)

        (cache, last_lg), (toks, lgs) = jax.lax.scan(body, (cache, last), jnp.arange(n_act - 1))
        final = draw(n_act - 1, last_lg)
        ids = jnp.concatenate([toks.T, final[:, None]], axis=1)  # [B, n_act]
        all_logits = jnp.concatenate([jnp.moveaxis(lgs, 0, 1), last_lg[:, None]], axis=1)
        values = detokenize_action(ids, self.spec)
        return ids, values, all_logits, cache

    # --------------------------------------------------------------------------------- API

    def reset(self, prompt_episode: Mapping | None = None) -> None:
        """Starts a new episode in every environment (optionally prompted, same prompt).

        Args:
          prompt_episode: a demonstration ``{"observation": ..., "action": ...}`` with a
            leading time axis (as :func:`gato_jax.sequence.encode_episode`), or None.
        """
        self.reset_envs(range(self.batch_size), [prompt_episode] * self.batch_size)

    def reset_env(self, index: int, prompt_episode: Mapping | None = None) -> None:
        """Starts a new episode in environment ``index`` only."""
        self.reset_envs([index], [prompt_episode])

    def reset_envs(self, indices: Sequence[int], prompts: Sequence[Mapping | None]) -> None:
        """Starts new episodes in environments ``indices`` (one prompt, or None, each)."""
        indices = list(indices)
        if len(prompts) != len(indices):
            raise ValueError(f"{len(indices)} environments but {len(prompts)} prompts")
        for i in indices:
            if not 0 <= i < self.batch_size:
                raise ValueError(f"environment index {i} outside [0, {self.batch_size})")
        windows = {}
        for i, p in zip(indices, prompts, strict=True):
            prompt = self._empty if p is None else self.encode_prompt(p)
            old = self._envs[i]
            self._envs[i] = _EnvState(prompt, collections.deque(), num_acts=old.num_acts)
            windows[i] = [prompt]
        self._refill(windows)

    def _refill(self, windows: dict[int, list[_Tokens]]) -> None:
        rows, counts = [], []
        for b in range(self.batch_size):
            row, n = self._pack(windows.get(b, []), self.context_len, self.window_patch_slots)
            rows.append(row)
            counts.append(n)
            if b in windows:
                self._envs[b].cache_len = n
                self._envs[b].pending = None
        mask = np.array([b in windows for b in range(self.batch_size)])
        self.cache = self._refill_fn(
            self.params, self.cache, self._stack(rows), np.asarray(counts, np.int32), mask
        )

    def act(self, observation: Any) -> Any:
        """One action for one environment (``batch_size == 1``); see :meth:`act_batch`."""
        if self.batch_size != 1:
            raise ValueError(f"act() needs batch_size 1 (this policy has {self.batch_size})")
        return self.act_batch([observation])[0]

    def act_batch(self, observations: Sequence[Any]) -> list[Any]:
        """Actions for all ``B`` environments at once.

        Args:
          observations: ``B`` observations, each a nested dict matching ``spec.observation``
            (text as ``str``), or None for an idle environment.

        Returns:
          ``B`` actions in the environment's convention: ``task.to_env_action(fields)`` with a
          Task; else the value of a root action field (a Python ``int`` for a scalar discrete
          field, a float32 array for a continuous one) or a nested dict of them; None for idle
          environments.
        """
        if len(observations) != self.batch_size:
            raise ValueError(f"expected {self.batch_size} observations, got {len(observations)}")
        S, n_act = self.context_len, self.num_action_tokens  # noqa: N806
        encoded = self._encode_observations(observations)
        # Roll-over: drop the oldest whole steps of rows whose next chunk would not fit.
        windows = {}
        for b, enc in enumerate(encoded):
            if enc is None:
                continue
            st = self._envs[b]
            obs_tokens = len(enc[0])
            need = st.cache_len + (st.pending is not None) + obs_tokens + n_act - 1
            if need > S:
                budget = S - len(st.prompt) - obs_tokens - (n_act - 1)
                while st.steps and sum(len(s) for s in st.steps) > budget:
                    st.steps.popleft()
                windows[b] = [st.prompt, *st.steps]
        if windows:
            self._refill(windows)
        rows, counts, act_local = [], [], np.full((self.batch_size, n_act), -1, np.int32)
        for b, enc in enumerate(encoded):
            runs = []
            if enc is not None:
                st = self._envs[b]
                if st.pending is not None:
                    last = st.steps[-1]
                    runs.append(last.slice(len(last) - 1, len(last)))
                runs.append(enc[0])
                act_local[b] = enc[1]
            row, n = self._pack(runs, self.chunk_len, self.patches_per_step)
            rows.append(row)
            counts.append(n)
        keys = jax.vmap(jax.random.fold_in)(
            self.keys, np.asarray([e.num_acts for e in self._envs], np.uint32)
        )
        ids, values, logits, self.cache = self._act_fn(
            self.params,
            self.cache,
            self._stack(rows),
            np.asarray(counts, np.int32),
            act_local,
            keys,
            np.float32(self.temperature),
        )
        self._last_logits = logits
        ids, values = jax.device_get((ids, values))
        out = []
        for b, enc in enumerate(encoded):
            if enc is None:
                out.append(None)
                continue
            st = self._envs[b]
            st.cache_len += counts[b] + n_act - 1
            step_ids = np.asarray(ids[b], np.int32)
            action = _Tokens(
                step_ids,
                enc[1],
                np.zeros(n_act, bool),
                self._empty.pixels,
                self._empty.rows,
                self._empty.cols,
            )
            st.steps.append(_Tokens.concat([enc[0], action], self._empty))
            st.pending = int(step_ids[-1])
            st.num_acts += 1
            out.append(self._to_env({k: v[b] for k, v in values.items()}))
        return out

    # ---------------------------------------------------------------------------- helpers

    def _to_env(self, fields: dict[str, np.ndarray]) -> Any:
        tree: Any = {}
        for f in self.spec.action:
            v = np.asarray(fields[f.name])
            if f.spec.kind == "discrete":
                v = v.astype(np.int64)
                v = int(v) if v.shape == () else v
            else:
                v = v.astype(np.float32)
            if f.path == ():
                tree = v
                break
            node = tree
            for k in f.path[:-1]:
                node = node.setdefault(k, {})
            node[f.path[-1]] = v
        if self.task is not None:
            return self.task.to_env_action(tree)
        return tree

    @property
    def last_logits(self) -> np.ndarray:
        """fp32 ``[B, n_act, V]`` unrestricted logits each action token was drawn from."""
        return None if self._last_logits is None else np.asarray(self._last_logits)

    def last_action_ids(self, index: int = 0) -> np.ndarray:
        """Token ids of environment ``index``'s most recent action."""
        st = self._envs[index]
        return st.steps[-1].ids[-self.num_action_tokens :].copy()

    def context(self, index: int = 0) -> _Tokens:
        """Host copy of the tokens environment ``index`` has in context (prompt + kept steps,
        the pending last action token included)."""
        st = self._envs[index]
        return _Tokens.concat([st.prompt, *st.steps], self._empty)


def load_checkpoint(workdir: str, step: int | None = None) -> tuple[GatoConfig, Any]:
    """``(config, params)`` of a ``gato_jax.main`` run directory (latest step by default).

    Raises:
      FileNotFoundError: no checkpoint directory or no complete step.
      ValueError: a missing/corrupt config or state.
    """
    from flax import linen as nn

    from core_jax.checkpoint import Checkpointer
    from core_jax.config import from_dict
    from core_jax.train_state import TrainState
    from gato_jax.models import dummy_inputs
    from gato_jax.train import make_optimizer

    ckpt_dir = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(ckpt_dir):
        raise FileNotFoundError(f"{workdir}: no checkpoints/ directory (not a gato_jax.main run?)")
    ckpt = Checkpointer(ckpt_dir, create=False, async_save=False)
    try:
        step = ckpt.latest_step() if step is None else int(step)
        if step is None:
            raise FileNotFoundError(f"{ckpt_dir}: no complete checkpoint")
        cfg_path = os.path.join(ckpt_dir, str(step), "config", "metadata")
        try:
            with open(cfg_path) as f:
                cfg = from_dict(GatoConfig, json.load(f))
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{cfg_path}: cannot read the run's config ({e})") from e
        model = Gato(cfg.model)
        inputs = dummy_inputs(cfg.tokenizer, batch_size=1)
        tx = make_optimizer(cfg.optim)

        # The same state layout as gato_jax.main's train state (params + optimizer + rng).
        def create(key):
            params = model.init(key, inputs)["params"]
            return TrainState.create(params=params, tx=tx, rng=key)

        abstract = nn.meta.unbox(jax.eval_shape(create, jax.random.key(0)))
        restored = ckpt.restore(abstract, step)
    finally:
        ckpt.close()
    return cfg, restored.state.params


__all__ = ["GatoPolicy", "ModelInputs", "load_checkpoint", "respec"]
