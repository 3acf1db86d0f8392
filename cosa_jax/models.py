"""Co-SA networks (Flax Linen): sentiment agents, policy (actor), critic and the task head.

Modalities are always ordered (vision, audio, text) and passed as 3-tuples of arrays; each
modality keeps its own length ``T_m`` (aligned data has one ``T``), with boolean masks ``(B, T_m)``
(True on real steps). Every network takes and returns plain pytrees, so
``module.apply({"params": p, "batch_stats": s}, ...)`` works from any JAX code.

Architecture (the August 2024 official code, ``network.py``, plus the paper's modules):

* :class:`CoSAModel` — one agent per modality: a sentiment encoder ``f^s`` (a linear map), and in
  paper mode a modality encoder ``f^m``, a decoder ``D(f^s ⊕ f^m)`` and a shared 3-way modality
  classifier (the MSD modules, absent in code-compat so the parameter count is the official
  251,648 for IEMOCAP); then a DPSR block (multi-head self-attention, ``ctx + W ctx``, LayerNorm).
  ``ModelConfig.dpsr_residual`` (paper mode) adds the block's input inside the LayerNorm: the
  official block has no residual, so at initialisation it outputs almost the same vector at every
  step (uniform attention averages the values) and the DPSR loss sits at its ceiling.
* :class:`Actor` — the policy: per modality a projection ``P_m``, cross-modal cosine "advice"
  (:func:`advice`), and one sigmoid weight per time step ``w = σ(W [x_m ; advice_m])``; plus the
  task path: ``x_m * w_m`` -> one post-norm transformer encoder layer per modality -> mean over
  valid steps -> fusion (``add``: average of the three pooled vectors; ``cat``: concatenation) ->
  head ``Linear, Dropout, ReLU, BatchNorm, Linear``.
* :class:`Critic` — ``Q(s, w)``: per modality ``[s_m ; w_m repeated num_heads times]`` -> one
  transformer encoder layer of width ``emb + num_heads`` -> mean -> concatenation ->
  ``Linear, Dropout, ReLU, BatchNorm, Linear, Linear`` -> scalar.

Heads: IEMOCAP logits ``(B, 4, 2)`` (8 outputs viewed as 4 emotions x 2 classes, as the official
code); regression ``3 * tanh(z / 3)`` in ``(-3, 3)`` (identity near 0; our choice, the official code
has no regression head).

BatchNorm follows ``torch.nn.BatchNorm1d``: in training the batch mean and biased variance of the
valid rows normalise, and the running statistics move by ``momentum=0.1`` towards the batch mean
and the *unbiased* variance; in evaluation the running statistics normalise. Linear layers use
PyTorch's default initialisation (uniform ``±1/sqrt(fan_in)``), attention in-projections Xavier
uniform with zero bias, so initial behaviour (e.g. the DPSR ceiling) matches the official code.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cosa_jax.configs.base import ModelConfig

Array = jax.Array
Triple = tuple[Array, Array, Array]
MODALITIES = ("vision", "audio", "text")
NUM_EMOTIONS = 4


def _torch_uniform(fan_in: int):
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class TorchDense(nn.Module):
    """``torch.nn.Linear`` (kernel ``(in, out)``; weight and bias ~ U(±1/sqrt(in)))."""

    features: int
    use_bias: bool = True
    zero_bias: bool = False

    @nn.compact
    def __call__(self, x: Array) -> Array:
        fan_in = x.shape[-1]
        k = self.param("kernel", _torch_uniform(fan_in), (fan_in, self.features))
        y = x @ k
        if self.use_bias:
            init = nn.initializers.zeros if self.zero_bias else _torch_uniform(fan_in)
            y = y + self.param("bias", init, (self.features,))
        return y


class DenseParams(nn.Module):
    """The ``kernel`` and ``bias`` of a :class:`TorchDense` (same names, shapes and init),
    returned as arrays so a caller can apply them inside ``jax.checkpoint`` / ``custom_vjp``."""

    fan_in: int
    features: int

    @nn.compact
    def __call__(self) -> tuple[Array, Array]:
        init = _torch_uniform(self.fan_in)
        k = self.param("kernel", init, (self.fan_in, self.features))
        return k, self.param("bias", init, (self.features,))


REMAT_MODES = ("none", "ff", "ff_relu", "layer")


def _ff(x: Array, w1: Array, b1: Array, w2: Array, b2: Array) -> Array:
    return jax.nn.relu(x @ w1 + b1) @ w2 + b2


@jax.custom_vjp
def ff_save_relu(x: Array, w1: Array, b1: Array, w2: Array, b2: Array) -> Array:
    """``relu(x W1 + b1) W2 + b2`` whose backward pass keeps only ``h = relu(x W1 + b1)``
    (plus ``x`` and the weights): the ReLU mask is recovered as ``h > 0``, which is exactly
    ``jax.nn.relu``'s derivative (0 at 0), so gradients equal plain autodiff's."""
    return _ff(x, w1, b1, w2, b2)


def _ff_fwd(x, w1, b1, w2, b2):
    h = jax.nn.relu(x @ w1 + b1)
    return h @ w2 + b2, (x, h, w1, w2)


def _ff_bwd(res, dy):
    x, h, w1, w2 = res
    lead = tuple(range(dy.ndim - 1))
    dh = jnp.where(h > 0, dy @ w2.T, 0.0)
    dw2 = jnp.tensordot(h, dy, axes=(lead, lead))
    dw1 = jnp.tensordot(x, dh, axes=(lead, lead))
    return dh @ w1.T, dw1, jnp.sum(dh, lead), dw2, jnp.sum(dy, lead)


ff_save_relu.defvjp(_ff_fwd, _ff_bwd)


def feed_forward(
    x: Array, w1: Array, b1: Array, w2: Array, b2: Array, remat: str = "none", chunks: int = 1
) -> Array:
    """``relu(x W1 + b1) W2 + b2`` over the last axis of ``x``.

    Args:
      x: ``(..., d)``.
      w1, b1, w2, b2: the two linear maps.
      remat: ``ff`` recomputes ``x W1`` in the backward pass (``jax.checkpoint``), ``ff_relu``
        keeps only the ReLU output (:func:`ff_save_relu`; measured no faster than plain
        autodiff on XLA:CPU); anything else: plain autodiff. Ignored when ``chunks > 1``.
      chunks: process the ``prod(x.shape[:-1])`` rows in this many slices, one after the
        other (``jax.lax.scan``, each slice rematerialised), so the ``(rows, ff_dim)`` hidden
        activations and their gradients exist one slice at a time; the weight gradients are
        summed over slices (same values up to float rounding). Rows that do not split evenly
        are padded with zero rows whose outputs are discarded.

    Raises:
      ValueError: ``chunks < 1``.
    """
    fn = {"ff": jax.checkpoint(_ff), "ff_relu": ff_save_relu}.get(remat, _ff)
    if chunks < 1:
        raise ValueError(f"ff_chunks={chunks}: must be >= 1")
    if chunks == 1:
        return fn(x, w1, b1, w2, b2)
    rows, d = math.prod(x.shape[:-1]), x.shape[-1]
    size = -(-rows // chunks)
    flat = x.reshape(rows, d)
    if size * chunks != rows:  # zero rows pad the last slice; their outputs are dropped below,
        flat = jnp.pad(flat, ((0, size * chunks - rows), (0, 0)))  # so they get no gradient
    body = jax.checkpoint(lambda carry, xc: (carry, _ff(xc, w1, b1, w2, b2)))
    _, ys = jax.lax.scan(body, None, flat.reshape(chunks, size, d))
    return ys.reshape(chunks * size, -1)[:rows].reshape(x.shape[:-1] + (w2.shape[-1],))


class BatchNorm1d(nn.Module):
    """``torch.nn.BatchNorm1d`` over the last axis of ``(B, C)`` inputs, with a row mask.

    Attributes:
      momentum: running-statistics update rate (PyTorch convention, 0.1).
      eps: variance epsilon.
    """

    momentum: float = 0.1
    eps: float = 1e-5

    @nn.compact
    def __call__(self, x: Array, train: bool, row_mask: Array | None = None) -> Array:
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,))
        bias = self.param("bias", nn.initializers.zeros, (c,))
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
        if train:
            m = (
                jnp.ones(x.shape[:1], jnp.float32)
                if row_mask is None
                else row_mask.astype(jnp.float32)
            )
            n = jnp.maximum(jnp.sum(m), 1.0)
            mean = jnp.sum(x * m[:, None], 0) / n
            var = jnp.sum(jnp.square(x - mean) * m[:, None], 0) / n
            if not self.is_initializing():
                unbiased = var * n / jnp.maximum(n - 1.0, 1.0)
                ra_mean.value = (1 - self.momentum) * ra_mean.value + self.momentum * mean
                ra_var.value = (1 - self.momentum) * ra_var.value + self.momentum * unbiased
        else:
            mean, var = ra_mean.value, ra_var.value
        return (x - mean) * jax.lax.rsqrt(var + self.eps) * scale + bias


def _mha(q: Array, k: Array, v: Array, heads: int, key_mask: Array | None) -> Array:
    """Scaled dot-product attention ``(B, T, D)`` -> ``(B, T, D)`` with a key padding mask."""
    b, t, d = q.shape
    h = d // heads
    split = lambda x: x.reshape(b, x.shape[1], heads, h).transpose(0, 2, 1, 3)
    qh, kh, vh = split(q), split(k), split(v)
    scores = qh @ kh.transpose(0, 1, 3, 2) / math.sqrt(h)
    if key_mask is not None:
        scores = jnp.where(key_mask[:, None, None, :], scores, jnp.finfo(scores.dtype).min)
    probs = jax.nn.softmax(scores, axis=-1)
    return (probs @ vh).transpose(0, 2, 1, 3).reshape(b, t, d)


class DPSRBlock(nn.Module):
    """The official DPSR block: ``LayerNorm(ctx + W ctx)`` (``+ x`` when ``residual``).

    ``ctx`` is multi-head self-attention with separate q/k/v linear maps (no output projection).
    """

    num_heads: int
    residual: bool

    @nn.compact
    def __call__(self, x: Array, mask: Array) -> Array:
        d = x.shape[-1]
        q, k, v = (TorchDense(d, name=n)(x) for n in ("query", "key", "value"))
        ctx = _mha(q, k, v, self.num_heads, mask)
        out = ctx + TorchDense(d, name="dense1")(ctx)
        if self.residual:
            out = out + x
        return nn.LayerNorm(epsilon=1e-5, name="norm")(out)


class EncoderLayer(nn.Module):
    """``torch.nn.TransformerEncoderLayer`` (post-norm, ReLU, dropout 0 as the official code).

    ``remat`` trades memory for time in the backward pass (same values and gradients up to
    float rounding; the parameter tree is the same for every mode): ``none`` (autodiff keeps what
    XLA chooses), ``ff`` (the feed-forward block under ``jax.checkpoint``: only its input is kept,
    ``x W1`` is recomputed), ``ff_relu`` (:func:`ff_save_relu`: keeps one ``(.., ff_dim)`` buffer,
    the ReLU output, no recomputation). ``layer`` (the whole layer under ``jax.checkpoint``) is
    applied by :func:`apply_encoder_layers`, which is how the actor and critic run their layers.
    """

    num_heads: int
    ff_dim: int
    remat: str = "none"
    ff_chunks: int = 1

    @nn.compact
    def __call__(self, x: Array, mask: Array) -> Array:
        d = x.shape[-1]
        xavier = nn.initializers.xavier_uniform()
        w_in = self.param("in_proj_kernel", lambda k, s: xavier(k, (s[1], s[0])).T, (d, 3 * d))
        b_in = self.param("in_proj_bias", nn.initializers.zeros, (3 * d,))
        q, k, v = jnp.split(x @ w_in + b_in, 3, axis=-1)
        att = TorchDense(d, zero_bias=True, name="out_proj")(_mha(q, k, v, self.num_heads, mask))
        x = nn.LayerNorm(epsilon=1e-5, name="norm1")(x + att)
        w1, b1 = DenseParams(d, self.ff_dim, name="linear1")()
        w2, b2 = DenseParams(self.ff_dim, d, name="linear2")()
        ff = feed_forward(x, w1, b1, w2, b2, self.remat, self.ff_chunks)
        return nn.LayerNorm(epsilon=1e-5, name="norm2")(x + ff)


def apply_encoder_layers(
    params: Sequence[dict],
    xs: Sequence[Array],
    masks: Sequence[Array],
    num_heads: int,
    ff_dim: int,
    remat: str,
    scan: bool,
    ff_chunks: int = 1,
) -> tuple[Array, ...]:
    """Apply one :class:`EncoderLayer` per modality (``params[i]`` to ``xs[i]``), purely.

    With ``scan`` and equal shapes across modalities the layers run as one ``jax.lax.scan`` over
    the stacked parameters, so the backward pass handles one modality at a time and reuses its
    scratch memory; unrolled, XLA keeps the three layers' scratch live together (measured in
    ``benchmarks/NOTES.md``, "Co-SA epoch"). Unequal lengths (unaligned data) always unroll.
    ``remat`` as :class:`EncoderLayer` (``layer``: ``jax.checkpoint`` around each layer).
    Same values as calling the layers one by one (up to float rounding).
    """
    if remat not in REMAT_MODES:
        raise ValueError(f"remat={remat!r}: one of {REMAT_MODES}")
    # parent=None: a free-standing module (this may run inside another module's method)
    layer = EncoderLayer(
        num_heads, ff_dim, "none" if remat == "layer" else remat, ff_chunks, parent=None
    )

    def one(p, x, m):
        return layer.apply({"params": p}, x, m)

    if remat == "layer":
        one = jax.checkpoint(one)
    same = all(x.shape == xs[0].shape for x in xs) and all(m.shape == masks[0].shape for m in masks)
    if not (scan and same and len(xs) > 1):
        return tuple(one(p, x, m) for p, x, m in zip(params, xs, masks, strict=True))
    stacked = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *params)
    _, hs = jax.lax.scan(
        lambda carry, inp: (carry, one(*inp)), None, (stacked, jnp.stack(xs), jnp.stack(masks))
    )
    return tuple(hs[i] for i in range(len(xs)))


def masked_mean(x: Array, mask: Array) -> Array:
    """Mean over the time axis of ``(B, T, D)`` using the valid steps ``(B, T)``."""
    m = mask.astype(x.dtype)[..., None]
    return jnp.sum(x * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1.0)


def _cosine(a: Array, b: Array) -> Array:
    """``(B, T, D), (B, S, D) -> (B, T, S)`` cosine similarity (``F.normalize`` eps 1e-12)."""
    na = a / jnp.maximum(jnp.linalg.norm(a, axis=-1, keepdims=True), 1e-12)
    nb = b / jnp.maximum(jnp.linalg.norm(b, axis=-1, keepdims=True), 1e-12)
    return na @ nb.transpose(0, 2, 1)


def advice(p: Triple, masks: Triple, temperature: float, reduce: str) -> tuple[Triple, Array]:
    """Cross-modal cosine "advice" of each modality from the other two (official
    ``generate_advise``).

    For centre ``m`` and each other modality ``n``: ``S = cos(p_m, p_n)`` ``(B, T_m, T_n)``,
    positive advice ``softmax(S) p_n``, negative advice ``softmax(-S) p_n`` (softmax over ``n``'s
    valid steps). The five candidates ``[p_m, adv+_n1, adv+_n2, adv-_n1, adv-_n2]`` are mixed with
    per-sample weights ``softmax([c, s_1, s_2, -s_1, -s_2] / temperature)``, where ``s_j`` is the
    reduced similarity and ``c`` the reduced all-ones matrix:

    * ``reduce="sum"`` (official): sums over all ``T_m x T_n`` pairs, so ``c = T_m T_n`` (400 for
      T = 20) dominates and the weight on ``p_m`` is exactly 1.0 in float32: the advice has no
      effect.
    * ``reduce="mean"`` (paper mode): means over valid pairs (``c = 1``, ``|s_j| <= 1``), a usable
      mixture (weight on ``p_m`` ~0.4 at temperature 1 when the similarities are ~0).

    Args:
      p: projected features ``(B, T_m, E)`` per modality (vision, audio, text).
      masks: ``(B, T_m)`` bool per modality.
      temperature: softmax temperature of the mixing weights.
      reduce: ``"sum"`` or ``"mean"``.

    Returns:
      ``(advice per modality (B, T_m, E), mixing weights (B, 3, 5))``.
    """
    outs, mix = [], []
    for m in range(3):
        others = [n for n in range(3) if n != m]
        cands, logits = [p[m]], []
        pos, neg, sims = [], [], []
        for n in others:
            s = _cosine(p[m], p[n])
            key = masks[n][:, None, :]
            pair = (masks[m][:, :, None] & key).astype(s.dtype)
            big = jnp.finfo(s.dtype).min
            pos.append(jax.nn.softmax(jnp.where(key, s, big), -1) @ p[n])
            neg.append(jax.nn.softmax(jnp.where(key, -s, big), -1) @ p[n])
            total = jnp.sum(s * pair, axis=(1, 2))
            count = jnp.sum(pair, axis=(1, 2))
            sims.append(total if reduce == "sum" else total / jnp.maximum(count, 1.0))
            if not logits:
                logits.append(count if reduce == "sum" else jnp.ones_like(count))
        cands += pos + neg
        logits += sims + [-x for x in sims]
        w = jax.nn.softmax(jnp.stack(logits, 1) / temperature, axis=1)  # (B, 5)
        outs.append(sum(c * w[:, i, None, None] for i, c in enumerate(cands)))
        mix.append(w)
    return tuple(outs), jnp.stack(mix, 1)


class Head(nn.Module):
    """``Linear(h), Dropout, ReLU, BatchNorm1d(h), Linear(out)``."""

    hidden: int
    out: int
    dropout: float

    @nn.compact
    def __call__(self, x: Array, train: bool, row_mask: Array | None) -> Array:
        x = TorchDense(self.hidden)(x)
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        x = BatchNorm1d()(jax.nn.relu(x), train, row_mask)
        return TorchDense(self.out)(x)


def task_outputs(task: str) -> int:
    """Head width: 8 (4 emotions x 2) for ``iemocap``, 1 for ``regression``."""
    return 2 * NUM_EMOTIONS if task == "iemocap" else 1


def format_predictions(raw: Array, task: str) -> Array:
    """Head output -> ``(B, 4, 2)`` IEMOCAP logits or ``(B,)`` sentiment ``3 tanh(z/3)``."""
    if task == "iemocap":
        return raw.reshape(raw.shape[0], NUM_EMOTIONS, 2)
    return 3.0 * jnp.tanh(raw[:, 0] / 3.0)


class CoSAModel(nn.Module):
    """The three sentiment agents (SAE phase).

    Attributes:
      cfg: model sizes and switches.
      dims: input feature dims (vision, audio, text).
      use_msd: build the modality encoders, decoders and modality classifier (paper mode).
    """

    cfg: ModelConfig
    dims: tuple[int, int, int]
    use_msd: bool

    @nn.compact
    def __call__(self, x: Triple, masks: Triple) -> dict:
        """Encode the three modalities.

        Args:
          x: inputs ``(B, T_m, D_m)`` (vision, audio, text).
          masks: ``(B, T_m)`` bool.

        Returns:
          Dict with ``feats`` (DPSR outputs ``(B, T_m, E)``, the agents' states), ``f_s``
          (sentiment features before DPSR) and, with MSD, ``f_m``, ``mod_logits`` ``(B, T_m, 3)``
          and ``recon`` ``(B, T_m, D_m)``.
        """
        e = self.cfg.emb_dim
        out: dict = {"f_s": [], "feats": []}
        if self.use_msd:
            out.update(f_m=[], mod_logits=[], recon=[])
            classifier = TorchDense(3, name="modality_classifier")
        for i, name in enumerate(MODALITIES):
            if x[i].shape[-1] != self.dims[i]:
                raise ValueError(f"{name}: expected feature dim {self.dims[i]}, got {x[i].shape}")
            f_s = TorchDense(e, name=f"sentiment_encoder_{name}")(x[i])
            out["f_s"].append(f_s)
            if self.use_msd:
                f_m = TorchDense(e, name=f"modality_encoder_{name}")(x[i])
                h = TorchDense(e, name=f"decoder_{name}_0")(jnp.concatenate([f_s, f_m], -1))
                out["f_m"].append(f_m)
                out["mod_logits"].append(classifier(f_m))
                out["recon"].append(TorchDense(self.dims[i], name=f"decoder_{name}_1")(h))
            block = DPSRBlock(self.cfg.num_heads, self.cfg.dpsr_residual, name=f"dpsr_{name}")
            out["feats"].append(block(f_s, masks[i]))
        return {k: tuple(v) for k, v in out.items()}


class Actor(nn.Module):
    """The policy (per-step, per-modality weights) and the task path that uses them.

    Attributes:
      cfg: model config.
      task: ``iemocap`` or ``regression``.
    """

    cfg: ModelConfig
    task: str

    def setup(self):
        e = self.cfg.emb_dim
        self.proj = [TorchDense(e, name=f"proj_{m}") for m in MODALITIES]
        self.action = [TorchDense(1, name=f"action_{m}") for m in MODALITIES]
        self.temporal = [
            EncoderLayer(self.cfg.num_heads, self.cfg.ff_dim, name=f"temporal_{m}")
            for m in MODALITIES
        ]
        hidden = e if self.cfg.fusion == "add" else 3 * e
        self.head = Head(hidden, task_outputs(self.task), self.cfg.head_dropout, name="head")

    def act(self, s: Triple, masks: Triple) -> tuple[Triple, Array]:
        """Weights ``w_m = sigmoid(W_m [s_m ; advice_m])`` ``(B, T_m)`` and the advice mixture."""
        p = tuple(self.proj[i](s[i]) for i in range(3))
        adv, mix = advice(p, masks, self.cfg.advice_temperature, self.cfg.advice_reduce)
        w = tuple(
            jax.nn.sigmoid(self.action[i](jnp.concatenate([s[i], adv[i]], -1))[..., 0])
            for i in range(3)
        )
        return w, mix

    def predict(self, x: Triple, w: Triple, masks: Triple, train: bool, row_mask: Array | None):
        """Fuse ``x_m * w_m`` and run the head; returns formatted predictions."""
        xw = tuple(x[i] * w[i][..., None] for i in range(3))
        if self.is_initializing():  # create the parameters through the submodules
            hs = tuple(self.temporal[i](xw[i], masks[i]) for i in range(3))
        else:
            c = self.cfg
            ps = [self.variables["params"][f"temporal_{m}"] for m in MODALITIES]
            hs = apply_encoder_layers(
                ps, xw, masks, c.num_heads, c.ff_dim, c.remat, c.scan_modalities, c.ff_chunks
            )
        pooled = [masked_mean(hs[i], masks[i]) for i in range(3)]
        z = sum(pooled) / 3.0 if self.cfg.fusion == "add" else jnp.concatenate(pooled, -1)
        return format_predictions(self.head(z, train, row_mask), self.task)

    def __call__(self, s: Triple, x: Triple, masks: Triple, train: bool = False, row_mask=None):
        w, _ = self.act(s, masks)
        return self.predict(x, w, masks, train, row_mask), w


class Critic(nn.Module):
    """``Q(s, w)`` per sample.

    Attributes:
      cfg: model config.
    """

    cfg: ModelConfig

    @nn.compact
    def __call__(self, s: Triple, w: Triple, masks: Triple, train: bool = False) -> Array:
        """Args: states ``(B, T_m, E)``, weights ``(B, T_m)``, masks. Returns ``(B,)``."""
        h, c = self.cfg.num_heads, self.cfg
        xs = tuple(
            jnp.concatenate([s[i], jnp.repeat(w[i][..., None], h, axis=-1)], -1) for i in range(3)
        )
        if self.is_initializing():
            hs = tuple(
                EncoderLayer(h, c.ff_dim, name=f"critic_{m}")(xs[i], masks[i])
                for i, m in enumerate(MODALITIES)
            )
        else:
            ps = [self.variables["params"][f"critic_{m}"] for m in MODALITIES]
            hs = apply_encoder_layers(
                ps, xs, masks, h, c.ff_dim, c.remat, c.scan_modalities, c.ff_chunks
            )
        pooled = [masked_mean(hs[i], masks[i]) for i in range(3)]
        z = jnp.concatenate(pooled, -1)
        e = self.cfg.emb_dim
        z = TorchDense(2 * e, name="proj_0")(z)
        z = nn.Dropout(self.cfg.head_dropout, deterministic=not train)(z)
        z = BatchNorm1d(name="proj_bn")(jax.nn.relu(z), train)
        z = TorchDense(e, name="proj_1")(z)
        return TorchDense(1, name="proj_2")(z)[:, 0]


def param_count(tree) -> int:
    """Number of scalars in a pytree."""
    return int(sum(x.size for x in jax.tree_util.tree_leaves(tree)))


def share_initial_layers(params: dict, prefix: str, names: Sequence[str] = MODALITIES) -> dict:
    """Copy ``{prefix}_{names[0]}`` into the other two layers (the official single layer object)."""
    params = dict(params)
    first = params[f"{prefix}_{names[0]}"]
    for n in names[1:]:
        params[f"{prefix}_{n}"] = jax.tree_util.tree_map(lambda x: jnp.array(x, copy=True), first)
    return params
