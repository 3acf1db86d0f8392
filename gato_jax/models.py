"""The Gato network: embedding stack (spec section 3) on :class:`core_jax.nn.Transformer`.

    >>> import jax
    >>> from gato_jax.configs import get_config
    >>> from gato_jax.models import Gato, dummy_inputs, param_count
    >>> cfg = get_config("gato_tiny")
    >>> model = Gato(cfg.model)
    >>> inputs = dummy_inputs(cfg.tokenizer, batch_size=2)
    >>> params = model.init(jax.random.key(0), inputs)["params"]
    >>> model.apply({"params": params}, inputs).shape      # [B, L, vocab]
    (2, 64, 33025)
    >>> param_count(get_config("gato_79m").model)
    79759232

Embeddings of one window (:class:`gato_jax.sequence.GatoInputs`, batched):

* token ids -> the transformer's own token table (tied to the output softmax);
* image-patch tokens (``patch_index >= 0``) -> :class:`PatchEmbed` of their slot in ``patches``
  (one ResNet-v2 block per 16x16 patch, GroupNorm 32 groups, GELU, -> ``d_model``) plus learned
  row and column position embeddings (128 bins each; a uniformly random bin inside the patch's
  interval at train time, the rounded mean at eval: :func:`gato_jax.tokenizer.patch_position_ids`);
* every token with ``local_positions >= 0`` (observation tokens; separator/action tokens too
  with ``TokenizerConfig.separator_local_position``) -> + a learned local position (512 rows).

The patch embeddings replace token embeddings through the transformer's ``input_embeddings`` /
``embeddings_mask``; local positions enter as ``extra_embeddings``; the transformer is not forked.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from core_jax.nn import KVCache, Transformer
from gato_jax.configs.base import BIN_EMBEDDING_INITS, GatoModelConfig
from gato_jax.configs.tokenizer import TokenizerConfig
from gato_jax.sequence import GatoInputs
from gato_jax.tokenizer import patch_position_ids

Array = jax.Array

# The fields of GatoInputs the model reads (the rest are bookkeeping for losses and tests).
MODEL_FIELDS = ("tokens", "local_positions", "patch_index", "patches", "patch_rows", "patch_cols")


def _boxed(names: tuple[str | None, ...], init):
    return nn.with_logical_partitioning(init, names)


class PatchEmbed(nn.Module):
    """One 16x16xC patch -> one ``d_model`` vector through a pre-activation (v2) ResNet block.

    Stem conv (kernel = stride = ``resnet_stem_stride``) C -> width, then
    ``x + Conv3x3(GELU(GN(Conv3x3(GELU(GN(x))))))`` with GroupNorm of ``resnet_groups`` groups,
    then flatten and a dense projection to ``d_model``.
    """

    config: GatoModelConfig

    @nn.compact
    def __call__(self, patches: Array) -> Array:
        """``[..., p, p, C]`` float patches -> ``[..., d_model]`` (compute dtype)."""
        cfg = self.config
        tcfg = cfg.transformer
        dtype, pdtype = tcfg.compute_dtype, tcfg.params_dtype
        lead = patches.shape[:-3]
        x = patches.reshape((-1, *patches.shape[-3:])).astype(dtype)
        conv_init = _boxed((None, None, None, None), nn.initializers.lecun_normal())
        s, w = cfg.resnet_stem_stride, cfg.resnet_width

        def conv(name, k, stride=1):
            return nn.Conv(
                w,
                (k, k),
                strides=(stride, stride),
                padding="SAME" if k > 1 else "VALID",
                use_bias=True,
                dtype=dtype,
                param_dtype=pdtype,
                kernel_init=conv_init,
                name=name,
            )

        def gn(name):
            return nn.GroupNorm(
                num_groups=cfg.resnet_groups,
                dtype=dtype,
                param_dtype=pdtype,
                name=name,
                scale_init=_boxed((None,), nn.initializers.ones),
                bias_init=_boxed((None,), nn.initializers.zeros),
            )

        gelu = lambda y: nn.gelu(y, approximate=tcfg.gelu_approximate)  # noqa: E731
        x = nn.Conv(
            w,
            (s, s),
            strides=(s, s),
            padding="VALID",
            dtype=dtype,
            param_dtype=pdtype,
            kernel_init=conv_init,
            name="stem",
        )(x)
        y = conv("conv_1", 3)(gelu(gn("norm_1")(x)))
        y = conv("conv_2", 3)(gelu(gn("norm_2")(y)))
        # No norm after the sum: the skip path keeps absolute colour / brightness, which the
        # GroupNorms inside the residual branch remove.
        x = x + y
        x = x.reshape((x.shape[0], -1))
        x = nn.Dense(
            tcfg.d_model,
            dtype=dtype,
            param_dtype=pdtype,
            name="proj",
            kernel_init=_boxed((None, "embed"), nn.initializers.lecun_normal()),
            bias_init=_boxed(("embed",), nn.initializers.zeros),
        )(x)
        return x.reshape((*lead, tcfg.d_model))


class Gato(nn.Module):
    """Gato: embeddings of tokens, patches and local positions + the shared decoder.

    Attributes:
      config: :class:`~gato_jax.configs.base.GatoModelConfig`.
    """

    config: GatoModelConfig

    def setup(self):
        cfg = self.config
        tcfg = cfg.transformer
        table = _boxed(("max_len", "embed"), nn.initializers.normal(0.02))
        self.transformer = Transformer(tcfg)
        self.patch_embed = PatchEmbed(cfg)
        self.patch_row_embedding = self.param(
            "patch_row_embedding", table, (cfg.position_bins, tcfg.d_model), tcfg.params_dtype
        )
        self.patch_col_embedding = self.param(
            "patch_col_embedding", table, (cfg.position_bins, tcfg.d_model), tcfg.params_dtype
        )
        self.local_position_embedding = self.param(
            "local_position_embedding",
            table,
            (cfg.max_local_positions, tcfg.d_model),
            tcfg.params_dtype,
        )

    def embed_inputs(
        self, inputs: GatoInputs | Any, deterministic: bool = True
    ) -> tuple[Array, Array, Array]:
        """``(input_embeddings, embeddings_mask, extra_embeddings)`` for the transformer.

        Args:
          inputs: batched :class:`GatoInputs` (leaves ``[B, ...]``; only :data:`MODEL_FIELDS`
            are read).
          deterministic: False samples patch positions uniformly inside their intervals (needs
            a ``dropout`` rng); True uses the rounded interval mean.

        Returns:
          ``[B, L, d]`` patch embeddings gathered to their tokens, ``[B, L]`` bool patch-token
          mask, and ``[B, L, d]`` local position embeddings (zero where ``local_positions < 0``).
        """
        cfg = self.config
        dtype = cfg.transformer.compute_dtype
        patches = inputs.patches
        if patches.ndim != 5 or patches.shape[-3:] != (
            cfg.patch_size,
            cfg.patch_size,
            cfg.image_channels,
        ):
            raise ValueError(
                f"patches must be [batch, slots, {cfg.patch_size}, {cfg.patch_size}, "
                f"{cfg.image_channels}], got shape {patches.shape}"
            )
        local = inputs.local_positions
        has_local = local >= 0
        pos = jnp.take(
            self.local_position_embedding, jnp.clip(local, 0, cfg.max_local_positions - 1), axis=0
        )
        extra = jnp.where(has_local[..., None], pos.astype(dtype), jnp.zeros((), dtype))
        if patches.shape[1] == 0:
            # No patch slots (a decode step of action tokens): nothing to embed or gather.
            shape = inputs.tokens.shape
            return (
                jnp.zeros((*shape, cfg.transformer.d_model), dtype),
                jnp.zeros(shape, bool),
                extra,
            )
        key = None if deterministic else self.make_rng("dropout")
        if key is not None:
            k_row, k_col = jax.random.split(key)
        rows = patch_position_ids(inputs.patch_rows, None if key is None else k_row)
        cols = patch_position_ids(inputs.patch_cols, None if key is None else k_col)
        rows = jnp.clip(rows, 0, cfg.position_bins - 1)
        cols = jnp.clip(cols, 0, cfg.position_bins - 1)
        emb = self.patch_embed(patches)
        emb = emb + jnp.take(self.patch_row_embedding, rows, axis=0).astype(dtype)
        emb = emb + jnp.take(self.patch_col_embedding, cols, axis=0).astype(dtype)
        index = inputs.patch_index
        is_patch = index >= 0
        gathered = jnp.take_along_axis(emb, jnp.clip(index, 0)[..., None], axis=1)
        return gathered, is_patch, extra

    def __call__(
        self,
        inputs: GatoInputs | Any,
        *,
        deterministic: bool = True,
        return_hidden: bool = False,
        cache: KVCache | None = None,
        num_valid: Array | None = None,
    ):
        """Logits ``[B, L, vocab]`` (fp32) for a batch of windows, or of new tokens with a cache.

        Args:
          inputs: batched :class:`GatoInputs` (or any object with the :data:`MODEL_FIELDS`).
            ``patches`` may have zero slots (``[B, 0, p, p, C]``): the patch ResNet is then
            skipped, which is what a decode step of action tokens wants.
          deterministic: False enables stochastic depth and random patch positions (needs a
            ``dropout`` rng).
          return_hidden: also return the final hidden states ``[B, L, d_model]``.
          cache: a :class:`core_jax.nn.KVCache` (``KVCache.init(config.transformer, B, S)``).
            When given, the ``L`` tokens of row ``b`` are appended at ``cache.length[b]`` and
            attend to everything before them (the transformer's own cached path; see
            :func:`core_jax.nn.prefill` / :func:`core_jax.nn.decode_step`), and the call
            returns ``(logits, new_cache)`` (``(logits, hidden, new_cache)`` with
            ``return_hidden``).
          num_valid: ``[B]`` int32, with ``cache``: how many of the ``L`` new tokens of each row
            are real (the rest is right padding, written but not counted); default ``L``.
        """
        tokens = inputs.tokens
        if tokens.ndim != 2:
            raise ValueError(f"tokens must be [batch, length], got shape {tokens.shape}")
        for name in ("local_positions", "patch_index"):
            if getattr(inputs, name).shape != tokens.shape:
                raise ValueError(
                    f"{name} has shape {getattr(inputs, name).shape}, expected {tokens.shape}"
                )
        if num_valid is not None and cache is None:
            raise ValueError("num_valid is only meaningful with a cache")
        emb, mask, extra = self.embed_inputs(inputs, deterministic)
        return self.transformer(
            tokens,
            input_embeddings=emb,
            embeddings_mask=mask,
            extra_embeddings=extra,
            deterministic=deterministic,
            return_hidden=return_hidden,
            cache=cache,
            num_valid=num_valid,
        )


def dummy_inputs(tokenizer: TokenizerConfig, batch_size: int = 1) -> GatoInputs:
    """All-padding :class:`GatoInputs` of the config's shapes (for ``init`` and shape checks)."""
    L, P = tokenizer.seq_len, tokenizer.num_patch_slots  # noqa: N806
    ps, c = tokenizer.patch_size, tokenizer.image_channels
    b = batch_size
    zi = jnp.zeros((b, L), jnp.int32)
    return GatoInputs(
        tokens=zi,
        kinds=zi,
        valid=jnp.zeros((b, L), bool),
        loss_mask=jnp.zeros((b, L), bool),
        local_positions=zi - 1,
        timesteps=zi - 1,
        prompt_mask=jnp.zeros((b, L), bool),
        patch_index=zi - 1,
        patches=jnp.zeros((b, P, ps, ps, c), jnp.float32),
        patch_valid=jnp.zeros((b, P), bool),
        patch_rows=jnp.zeros((b, P, 2), jnp.int32),
        patch_cols=jnp.zeros((b, P, 2), jnp.int32),
        patch_overflow=jnp.zeros((b,), bool),
        window_start=jnp.zeros((b,), jnp.int32),
        prompt_kind=jnp.zeros((b,), jnp.int32),
    )


def abstract_params(config: GatoModelConfig, seq_len: int = 16, num_patch_slots: int = 4) -> Any:
    """Boxed parameter shapes (``jax.eval_shape``; allocates nothing)."""
    tok = TokenizerConfig(
        seq_len=seq_len,
        max_patches=num_patch_slots,
        patch_size=config.patch_size,
        image_channels=config.image_channels,
    )
    inputs = dummy_inputs(tok)
    return jax.eval_shape(lambda k: Gato(config).init(k, inputs)["params"], jax.random.key(0))


def param_count(config: GatoModelConfig) -> int:
    """Exact number of parameters of :class:`Gato` with ``config`` (via ``jax.eval_shape``)."""
    leaves = jax.tree.leaves(nn.meta.unbox(abstract_params(config)))
    return int(sum(x.size for x in leaves))


def bin_embedding_table(num_bins: int, d_model: int, scale: float = 0.02) -> np.ndarray:
    """Smooth initial embeddings of the continuous bins: ``[num_bins, d_model]`` float32.

    Row ``k`` holds sines and cosines of the bin centre ``v_k = (k + 1/2) / num_bins * 2 - 1``
    at ``d_model / 2`` geometrically spaced frequencies from ``pi / 2`` to ``pi num_bins / 2``
    (the highest tells neighbouring bins apart), scaled so that every row has the norm of the
    default ``normal(scale)`` row (``scale sqrt(d_model)``). Nearby values start with nearby
    embeddings, so what the network learns for one bin carries over to its neighbours, instead
    of each of the 1024 rows being learnt on its own (a mu-law bin near 0 is seen rarely).
    """
    if d_model < 2 or d_model % 2:
        raise ValueError(f"bin_embedding_table: d_model must be even and >= 2, got {d_model}")
    v = ((np.arange(num_bins) + 0.5) / num_bins * 2.0 - 1.0)[:, None]
    freqs = np.pi / 2 * np.geomspace(1.0, num_bins, d_model // 2)[None, :]
    table = np.concatenate([np.sin(freqs * v), np.cos(freqs * v)], axis=1)
    table *= scale * np.sqrt(d_model) / np.linalg.norm(table, axis=1, keepdims=True)
    return table.astype(np.float32)


def init_bin_embeddings(params: Any, tokenizer: TokenizerConfig, kind: str) -> Any:
    """Initial token table with the continuous-bin rows set by ``kind`` (``params`` boxed or not).

    ``"normal"`` returns ``params`` unchanged (the transformer's ``normal(0.02)`` rows);
    ``"sinusoidal"`` replaces rows ``[continuous_offset, continuous_offset + num_bins)`` of
    ``transformer/embedder/embedding`` by :func:`bin_embedding_table` (tied tables: the output
    logits of neighbouring bins start correlated too).
    """
    if kind not in BIN_EMBEDDING_INITS:
        raise ValueError(f"bin_embedding_init={kind!r}: expected one of {BIN_EMBEDDING_INITS}")
    if kind == "normal":
        return params
    box = params["transformer"]["embedder"]["embedding"]
    table = nn.meta.unbox(box)
    lo, n = tokenizer.continuous_offset, tokenizer.num_bins
    if table.shape[0] < lo + n:
        raise ValueError(
            f"init_bin_embeddings: token table has {table.shape[0]} rows, the bins need {lo + n}"
        )
    rows = jnp.asarray(bin_embedding_table(n, table.shape[1]), table.dtype)
    new = table.at[lo : lo + n].set(rows)
    new = box.replace_boxed(new) if isinstance(box, nn.meta.AxisMetadata) else new
    embedder = {**params["transformer"]["embedder"], "embedding": new}
    transformer = {**params["transformer"], "embedder": embedder}
    return {**params, "transformer": transformer}
