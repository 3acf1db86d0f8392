"""Co-SA losses and rewards (spec section 2), pure ``jax.numpy`` functions, jit- and vmap-safe.

Total objective: ``L = a1 * L_p + a2 * L_msd + a3 * L_dpsr + a4 * (L_actor + L_critic)`` with
``L_msd = L_m + L_c + L_r``. Modalities are always ordered (vision, audio, text) where a function
takes one array per modality.

Modes (strings): ``"paper"`` and ``"code-compat"`` (the August 2024 official code). They differ in
:func:`dpsr_loss` (pair weights), :func:`dpsr_total` (the dropped acoustic term) and
:func:`iemocap_reward` (indexing), as documented on each function.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

Array = jax.Array
MODES = ("paper", "code-compat")
COS_EPS = 1e-8  # torch.nn.functional.cosine_similarity's default eps


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")


def _check_three(name: str, xs: Sequence[Array]) -> None:
    if len(xs) != 3:
        raise ValueError(f"{name}: expected 3 arrays (vision, audio, text), got {len(xs)}")


def _same_shape(a_name: str, a: Array, b_name: str, b: Array) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{a_name} {a.shape} and {b_name} {b.shape} disagree")


def _class_targets(name: str, labels: Array, logits_shape: tuple[int, ...]) -> Array:
    """Integer targets from int class indices ``logits_shape[:-1]`` or one-hot ``logits_shape``."""
    if labels.shape == logits_shape:
        return jnp.argmax(labels, axis=-1)
    if labels.shape == logits_shape[:-1]:
        return labels.astype(jnp.int32)
    raise ValueError(
        f"{name}: expected class indices {logits_shape[:-1]} or one-hot {logits_shape}, "
        f"got {labels.shape}"
    )


def _cross_entropy(logits: Array, targets: Array) -> Array:
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.take_along_axis(logp, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]


# ----------------------------------------------------------------------------------------- L_p


def regression_loss(preds: Array, labels: Array) -> Array:
    """L_p for MOSI/MOSEI: mean absolute error (``torch.nn.L1Loss()``).

    Args:
      preds: ``(N,)`` or ``(N, 1)`` predictions.
      labels: same shape as ``preds``.

    Returns:
      Scalar ``mean |preds - labels|``.
    """
    _same_shape("preds", preds, "labels", labels)
    return jnp.mean(jnp.abs(preds.astype(jnp.float32) - labels.astype(jnp.float32)))


def iemocap_task_loss(logits: Array, labels: Array) -> Array:
    """L_p for IEMOCAP: 2-way cross-entropy per emotion, averaged over the ``N * 4`` decisions.

    Args:
      logits: ``(N, 4, 2)`` (Neutral, Happy, Sad, Angry) x (no, yes).
      labels: ``(N, 4)`` class indices or ``(N, 4, 2)`` one-hot (MulT pickles).

    Returns:
      Scalar mean cross-entropy (``CrossEntropyLoss`` on ``logits.view(-1, 2)``).
    """
    if logits.ndim != 3 or logits.shape[-1] != 2:
        raise ValueError(f"logits: expected (N, E, 2), got {logits.shape}")
    targets = _class_targets("labels", labels, logits.shape)
    return jnp.mean(_cross_entropy(logits, targets))


# ----------------------------------------------------------------------------------------- L_msd


def modality_classification_loss(logits: Sequence[Array]) -> Array:
    """L_m: 3-way "which modality is this f^m from" cross-entropy, mean over all samples.

    Args:
      logits: three arrays ``(..., 3)``, the classifier's outputs on f^m of vision (target 0),
        audio (target 1) and text (target 2).

    Returns:
      Scalar mean cross-entropy over the three modalities and all leading positions.
    """
    _check_three("logits", logits)
    losses = []
    for i, lg in enumerate(logits):
        if lg.shape[-1] != 3:
            raise ValueError(f"logits[{i}]: last axis must be 3 (modalities), got {lg.shape}")
        losses.append(jnp.mean(_cross_entropy(lg, jnp.full(lg.shape[:-1], i, jnp.int32))))
    return sum(losses) / 3.0


def separation_loss(
    f_s: Sequence[Array], f_m: Sequence[Array], variant: str = "hinge", margin: float = 1.0
) -> Array:
    """L_c: push each sentiment feature f^s_i away from its modality feature f^m_i.

    With ``d_i = mean |f^s_i - f^m_i|`` (``torch.nn.L1Loss()``, as the official code):

    * ``variant="raw"`` (as published): ``-(1/3) * sum_i d_i``. Unbounded below: the encoders can
      lower it forever by scaling features up, so it is only safe with normalised features.
    * ``variant="hinge"`` (default): ``(1/3) * sum_i relu(margin - d_i)``, in ``[0, margin]``;
      zero once every pair is at least ``margin`` apart, so it cannot run away. Its gradient
      equals the raw loss's wherever ``d_i < margin``.

    Args:
      f_s: three sentiment features (vision, audio, text), any shape each.
      f_m: three modality features, shapes matching ``f_s``.
      variant: ``"hinge"`` or ``"raw"``.
      margin: hinge margin (``"hinge"`` only).

    Returns:
      Scalar loss.
    """
    _check_three("f_s", f_s)
    _check_three("f_m", f_m)
    if variant not in ("raw", "hinge"):
        raise ValueError(f"unknown separation variant {variant!r}; expected 'raw' or 'hinge'")
    total = 0.0
    for i, (s, m) in enumerate(zip(f_s, f_m, strict=True)):
        _same_shape(f"f_s[{i}]", s, f"f_m[{i}]", m)
        d = jnp.mean(jnp.abs(s.astype(jnp.float32) - m.astype(jnp.float32)))
        total = total + (-d if variant == "raw" else jax.nn.relu(margin - d))
    return total / 3.0


def _masked_l1(x: Array, y: Array, mask: Array | None) -> Array:
    diff = jnp.abs(x.astype(jnp.float32) - y.astype(jnp.float32))
    if mask is None:
        return jnp.mean(diff)
    if mask.shape != x.shape[: mask.ndim]:
        raise ValueError(f"mask {mask.shape} does not prefix input shape {x.shape}")
    m = mask.astype(jnp.float32).reshape(mask.shape + (1,) * (x.ndim - mask.ndim))
    m = jnp.broadcast_to(m, x.shape)
    return jnp.sum(diff * m) / jnp.maximum(jnp.sum(m), 1.0)


def reconstruction_loss(
    x: Sequence[Array], x_rec: Sequence[Array], masks: Sequence[Array | None] | None = None
) -> Array:
    """L_r: ``(1/3) * sum_i mean |x_i - D_i(f^s_i ⊕ f^m_i)|`` (L1).

    Args:
      x: three inputs (vision, audio, text), e.g. ``(B, T_i, D_i)``.
      x_rec: three reconstructions, shapes matching ``x``.
      masks: optional three validity masks ``(B, T_i)`` (or ``None`` entries); padded positions
        are left out of the mean (which then runs over valid positions x features).

    Returns:
      Scalar loss.
    """
    _check_three("x", x)
    _check_three("x_rec", x_rec)
    masks = (None, None, None) if masks is None else masks
    _check_three("masks", masks)
    total = 0.0
    for i in range(3):
        _same_shape(f"x[{i}]", x[i], f"x_rec[{i}]", x_rec[i])
        total = total + _masked_l1(x[i], x_rec[i], masks[i])
    return total / 3.0


# ----------------------------------------------------------------------------------------- DPSR


def dpsr_pair_weights(t: int, mode: str = "paper") -> Array:
    """The ``(T, T)`` DPSR pair weights, zero on the diagonal, before normalisation.

    ``paper``: ``eta_pq = T - |p - q|``. ``code-compat``: ``eta'_pq = 2 (T - |p - q| + 1) / T``.

    Args:
      t: sequence length T.
      mode: ``"paper"`` or ``"code-compat"``.

    Returns:
      ``(T, T)`` float32 weights.
    """
    _check_mode(mode)
    idx = jnp.arange(t)
    dist = jnp.abs(idx[:, None] - idx[None, :]).astype(jnp.float32)
    eta = t - dist if mode == "paper" else 2.0 * (t - dist + 1.0) / t
    return jnp.where(dist > 0, eta, 0.0)


def dpsr_loss(f: Array, mode: str = "paper", mask: Array | None = None) -> Array:
    """DPSR: ``sum_{p != q} eta_pq (cos(f_p, f_q) + 1) / 2 / (T (T - 1))``, mean over the batch.

    Both modes normalise the weighted sum over ordered pairs ``p != q`` by ``T (T - 1)`` (the
    number of ordered pairs); only the weights differ (:func:`dpsr_pair_weights`). The loss is
    computed per sequence and averaged over the batch. Its ceiling (all frames parallel, cos = 1):
    ``(2T - 1) / 3`` in paper mode; ``4 (T + 1) / (3 T)`` in code-compat mode (1.4 for T = 20, the
    value measured on the official code, which pins this normalisation down).

    With ``mask``, each sequence uses its own valid length ``L = sum(mask)`` in place of ``T``
    (in the weights and the normaliser), pairs involving a padded frame are dropped, and ``|p - q|``
    is the distance on the padded axis (for prefix masks this equals the loss of the unpadded
    sequence). Sequences with ``L < 2`` contribute nothing and are left out of the batch mean.

    Args:
      f: ``(B, T, D)`` or ``(T, D)`` projected sentiment features ``W_i f^s_i``.
      mode: ``"paper"`` or ``"code-compat"``.
      mask: optional ``(B, T)`` / ``(T,)`` validity mask.

    Returns:
      Scalar loss.
    """
    _check_mode(mode)
    if f.ndim == 2:
        f = f[None]
        mask = None if mask is None else mask[None]
    if f.ndim != 3:
        raise ValueError(f"f: expected (B, T, D) or (T, D), got {f.shape}")
    b, t, _ = f.shape
    f = f.astype(jnp.float32)
    m = jnp.ones((b, t), jnp.float32) if mask is None else mask.astype(jnp.float32)
    if m.shape != (b, t):
        raise ValueError(f"mask {m.shape} does not match f {f.shape[:2]}")
    norm = jnp.linalg.norm(f, axis=-1)  # (B, T)
    dots = jnp.einsum("btd,bsd->bts", f, f)
    cos = dots / jnp.maximum(norm[:, :, None] * norm[:, None, :], COS_EPS)
    length = jnp.sum(m, axis=1)  # (B,)
    idx = jnp.arange(t)
    dist = jnp.abs(idx[:, None] - idx[None, :]).astype(jnp.float32)[None]  # (1, T, T)
    ell = length[:, None, None]
    eta = ell - dist if mode == "paper" else 2.0 * (ell - dist + 1.0) / jnp.maximum(ell, 1.0)
    pair = m[:, :, None] * m[:, None, :] * (dist > 0)
    per_seq = jnp.sum(eta * pair * (cos + 1.0) / 2.0, axis=(1, 2))
    per_seq = per_seq / jnp.maximum(length * (length - 1.0), 1.0)
    ok = (length >= 2).astype(jnp.float32)
    return jnp.sum(per_seq * ok) / jnp.maximum(jnp.sum(ok), 1.0)


def dpsr_total(
    f_v: Array,
    f_a: Array,
    f_t: Array,
    mode: str = "paper",
    masks: Sequence[Array | None] | None = None,
) -> Array:
    """L_dpsr over the three agents.

    ``paper``: ``(L(f_t) + L(f_a) + L(f_v)) / 3``. ``code-compat``: ``(L(f_t) + L(f_v) + L(f_v))/3``
    — the official code computes the vision term in place of the acoustic one, so the acoustic
    branch receives no DPSR gradient (measured; spec section 3). Each term is :func:`dpsr_loss`
    in the same ``mode``.

    Args:
      f_v: ``(B, T_v, D)`` vision features.
      f_a: ``(B, T_a, D)`` audio features.
      f_t: ``(B, T_t, D)`` text features.
      mode: ``"paper"`` or ``"code-compat"``.
      masks: optional (vision, audio, text) masks ``(B, T_i)`` or ``None`` entries.

    Returns:
      Scalar loss.
    """
    _check_mode(mode)
    m_v, m_a, m_t = (None, None, None) if masks is None else masks
    l_t = dpsr_loss(f_t, mode, m_t)
    l_v = dpsr_loss(f_v, mode, m_v)
    l_a = dpsr_loss(f_a, mode, m_a) if mode == "paper" else l_v
    return (l_t + l_a + l_v) / 3.0


# ----------------------------------------------------------------------------------------- SAC


def actor_loss(q: Array) -> Array:
    """Actor objective: maximise the critic's value, i.e. ``-mean(Q(s, pi(s)))``.

    Args:
      q: ``(B,)`` or ``(B, 1)`` critic values of the policy's action (the critic's parameters
        should be held fixed by the caller when differentiating w.r.t. the actor).

    Returns:
      Scalar ``-mean(q)``.
    """
    return -jnp.mean(q.astype(jnp.float32))


def critic_loss(
    q: Array, reward: Array, q_next: Array, gamma: float = 0.5, kind: str = "l1"
) -> Array:
    """Critic TD loss to the target ``r + gamma * stop_gradient(Q')``.

    Args:
      q: ``(B,)`` online critic values ``Q(s, a)`` (a ``(B, 1)`` output is flattened).
      reward: ``(B,)`` rewards.
      q_next: ``(B,)`` target-critic values ``Q'(s', pi'(s'))``; gradient is stopped.
      gamma: discount (official code: 0.5).
      kind: ``"l1"`` (official code, ``L1Loss``) or ``"l2"`` (mean squared error).

    Returns:
      Scalar loss.
    """
    if kind not in ("l1", "l2"):
        raise ValueError(f"unknown critic loss kind {kind!r}; expected 'l1' or 'l2'")
    q = q.reshape(q.shape[0], -1)[:, 0] if q.ndim == 2 else q
    q_next = q_next.reshape(q_next.shape[0], -1)[:, 0] if q_next.ndim == 2 else q_next
    _same_shape("q", q, "reward", reward)
    _same_shape("q", q, "q_next", q_next)
    target = jax.lax.stop_gradient(reward + gamma * q_next)
    err = q.astype(jnp.float32) - target.astype(jnp.float32)
    return jnp.mean(jnp.abs(err)) if kind == "l1" else jnp.mean(err * err)


def iemocap_reward(logits: Array, labels: Array, mode: str = "paper") -> Array:
    """IEMOCAP reward: sum over the 4 emotions of the predicted probability of the true class.

    ``paper``: ``r_i = sum_e softmax(logits[i, e])[y[i, e]]``, in ``[0, 4]``.

    ``code-compat``: the official code gathers the probabilities with mismatched indices; the
    reward of sample ``i`` reads the prediction rows of sample ``i // 4`` (spec section 3):
    ``r_i = sum_e softmax(logits[i // 4, e])[y[i, e]]`` — the true-class index still comes from
    sample ``i``'s own labels, so the reward is nearly uncorrelated with the intended one.

    Args:
      logits: ``(N, 4, 2)`` head outputs.
      labels: ``(N, 4)`` class indices or ``(N, 4, 2)`` one-hot.
      mode: ``"paper"`` or ``"code-compat"``.

    Returns:
      ``(N,)`` rewards (no gradient flows into them).
    """
    _check_mode(mode)
    if logits.ndim != 3 or logits.shape[-1] != 2:
        raise ValueError(f"logits: expected (N, E, 2), got {logits.shape}")
    targets = _class_targets("labels", labels, logits.shape)
    probs = jax.nn.softmax(jax.lax.stop_gradient(logits).astype(jnp.float32), axis=-1)
    if mode == "code-compat":
        probs = probs[jnp.arange(probs.shape[0]) // 4]
    p_true = jnp.take_along_axis(probs, targets[..., None], axis=-1)[..., 0]
    return jnp.sum(p_true, axis=-1)


def regression_reward(preds: Array, labels: Array) -> Array:
    """Regression reward (not published; our choice): ``exp(-|y_hat - y|)`` in ``(0, 1]``.

    1 for an exact prediction, ``exp(-1) ~ 0.37`` one sentiment step away; smooth and bounded
    like the IEMOCAP reward (which is in ``[0, 4]``).

    Args:
      preds: ``(N,)`` or ``(N, 1)`` predictions.
      labels: same shape.

    Returns:
      ``(N,)`` rewards (gradient stopped).
    """
    _same_shape("preds", preds, "labels", labels)
    err = jnp.abs(preds.astype(jnp.float32) - labels.astype(jnp.float32)).reshape(preds.shape[0])
    return jax.lax.stop_gradient(jnp.exp(-err))
