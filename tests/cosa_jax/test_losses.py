"""cosa_jax.losses against NumPy float64 references on fresh random inputs; jit == eager."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cosa_jax import losses as L

TOL = dict(rtol=1e-5, atol=1e-5)


def _rng(seed):
    return np.random.default_rng(seed)


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _np_dpsr(f, mode, mask=None):
    """Loop-by-loop float64 DPSR: per sequence, ordered pairs p != q of valid frames."""
    f = np.asarray(f, np.float64)
    b, t, _ = f.shape
    mask = np.ones((b, t)) if mask is None else np.asarray(mask, np.float64)
    vals = []
    for i in range(b):
        valid = [p for p in range(t) if mask[i, p] > 0]
        n = len(valid)
        if n < 2:
            continue
        s = 0.0
        for p in valid:
            for q in valid:
                if p == q:
                    continue
                d = abs(p - q)
                eta = n - d if mode == "paper" else 2.0 * (n - d + 1) / n
                a, c = f[i, p], f[i, q]
                cos = a @ c / max(np.linalg.norm(a) * np.linalg.norm(c), 1e-8)
                s += eta * (cos + 1) / 2
        vals.append(s / (n * (n - 1)))
    return np.mean(vals) if vals else 0.0


def _check(fn, args, want):
    eager = fn(*args)
    jitted = jax.jit(fn)(*args)
    np.testing.assert_allclose(np.asarray(eager), want, **TOL)
    np.testing.assert_allclose(np.asarray(jitted), np.asarray(eager), **TOL)


@pytest.mark.parametrize("seed", [0, 1])
def test_task_losses(seed):
    r = _rng(seed)
    p, y = r.normal(size=(16, 1)), r.uniform(-3, 3, size=(16, 1))
    _check(L.regression_loss, (jnp.asarray(p), jnp.asarray(y)), np.mean(np.abs(p - y)))
    logits = r.normal(size=(16, 4, 2))
    idx = r.integers(0, 2, size=(16, 4))
    want = -np.mean(np.take_along_axis(_log_softmax(logits), idx[..., None], -1))
    _check(L.iemocap_task_loss, (jnp.asarray(logits), jnp.asarray(idx)), want)
    _check(L.iemocap_task_loss, (jnp.asarray(logits), jnp.asarray(np.eye(2)[idx])), want)


def test_msd_losses():
    r = _rng(2)
    lg = [r.normal(size=(8, 3)) for _ in range(3)]
    want = np.mean([-np.mean(_log_softmax(x)[:, i]) for i, x in enumerate(lg)])
    _check(lambda *a: L.modality_classification_loss(a), tuple(map(jnp.asarray, lg)), want)

    fs = [r.normal(size=(8, 5, 4)) for _ in range(3)]
    fm = [r.normal(size=(8, 5, 4)) * 0.3 for _ in range(3)]
    d = np.array([np.mean(np.abs(a - b)) for a, b in zip(fs, fm, strict=True)])
    args = tuple(map(jnp.asarray, fs + fm))
    _check(lambda *a: L.separation_loss(a[:3], a[3:], "raw"), args, -d.sum() / 3)
    for margin in (0.5, 2.0):
        want = np.maximum(margin - d, 0).sum() / 3
        _check(lambda *a, m=margin: L.separation_loss(a[:3], a[3:], "hinge", m), args, want)

    xs = [r.normal(size=(6, t, dd)) for t, dd in ((5, 3), (7, 2), (4, 6))]
    xr = [x + r.normal(size=x.shape) for x in xs]
    want = np.mean([np.mean(np.abs(a - b)) for a, b in zip(xs, xr, strict=True)])
    args = tuple(map(jnp.asarray, xs + xr))
    _check(lambda *a: L.reconstruction_loss(a[:3], a[3:]), args, want)
    masks = [r.random(size=x.shape[:2]) > 0.3 for x in xs]
    want = np.mean([np.abs(a - b)[m].mean() for a, b, m in zip(xs, xr, masks, strict=True)])
    args = tuple(map(jnp.asarray, xs + xr + masks))
    _check(lambda *a: L.reconstruction_loss(a[:3], a[3:6], a[6:]), args, want)


@pytest.mark.parametrize("mode", L.MODES)
def test_dpsr_against_numpy(mode):
    r = _rng(3)
    f = r.normal(size=(3, 7, 5))
    _check(functools.partial(L.dpsr_loss, mode=mode), (jnp.asarray(f),), _np_dpsr(f, mode))
    mask = np.ones((3, 7), bool)
    mask[0, 4:] = False  # padded
    mask[1, [1, 5]] = False  # holes
    mask[2, 1:] = False  # single frame: excluded from the mean
    fn = lambda x, m: L.dpsr_loss(x, mode, m)
    _check(fn, (jnp.asarray(f), jnp.asarray(mask)), _np_dpsr(f, mode, mask))
    # a prefix mask equals the loss of the unpadded sequence
    np.testing.assert_allclose(
        L.dpsr_loss(jnp.asarray(f[:1]), mode, jnp.asarray(mask[:1])),
        L.dpsr_loss(jnp.asarray(f[:1, :4]), mode),
        **TOL,
    )
    # (T, D) input is a batch of one
    np.testing.assert_allclose(L.dpsr_loss(jnp.asarray(f[0]), mode), _np_dpsr(f[:1], mode), **TOL)


def test_dpsr_ceilings_and_weights():
    t = 20
    f = jnp.ones((2, t, 8))  # all frames parallel: cos = 1
    np.testing.assert_allclose(L.dpsr_loss(f, "code-compat"), 1.4, **TOL)  # measured value
    np.testing.assert_allclose(L.dpsr_loss(f, "paper"), (2 * t - 1) / 3, **TOL)
    w = np.asarray(L.dpsr_pair_weights(4, "paper"))
    np.testing.assert_allclose(w[0], [0, 3, 2, 1])
    w = np.asarray(L.dpsr_pair_weights(4, "code-compat"))
    np.testing.assert_allclose(w[0], [0, 2, 1.5, 1])
    # antiparallel alternating frames lower the loss below the ceiling
    alt = jnp.asarray(np.where(np.arange(t)[:, None] % 2 == 0, 1.0, -1.0) * np.ones((t, 8)))
    assert float(L.dpsr_loss(alt, "paper")) < (2 * t - 1) / 3


@pytest.mark.parametrize("mode", L.MODES)
def test_dpsr_total_quirk(mode):
    r = _rng(4)
    fv, fa, ft = (jnp.asarray(r.normal(size=(2, 6, 4))) for _ in range(3))
    got = L.dpsr_total(fv, fa, ft, mode)
    lv, la, lt = (_np_dpsr(np.asarray(x), mode) for x in (fv, fa, ft))
    want = (lt + la + lv) / 3 if mode == "paper" else (lt + lv + lv) / 3
    np.testing.assert_allclose(got, want, **TOL)
    g = jax.grad(lambda a: L.dpsr_total(fv, a, ft, mode))(fa)
    if mode == "paper":
        assert float(jnp.abs(g).sum()) > 0
    else:
        assert float(jnp.abs(g).sum()) == 0.0  # acoustic branch gets no DPSR gradient


@pytest.mark.parametrize("kind", ["l1", "l2"])
def test_actor_critic(kind):
    r = _rng(5)
    q, rew, qn = (r.normal(size=(10,)) for _ in range(3))
    _check(L.actor_loss, (jnp.asarray(q),), -q.mean())
    err = q - (rew + 0.5 * qn)
    want = np.mean(np.abs(err)) if kind == "l1" else np.mean(err**2)
    fn = lambda a, b, c: L.critic_loss(a, b, c, 0.5, kind)
    _check(fn, (jnp.asarray(q), jnp.asarray(rew), jnp.asarray(qn)), want)
    _check(fn, (jnp.asarray(q)[:, None], jnp.asarray(rew), jnp.asarray(qn)[:, None]), want)
    # no gradient through the target
    g = jax.grad(lambda c: L.critic_loss(jnp.asarray(q), jnp.asarray(rew), c, 0.5, kind))(
        jnp.asarray(qn)
    )
    assert float(jnp.abs(g).sum()) == 0.0


def test_rewards():
    r = _rng(6)
    n = 12
    logits = r.normal(size=(n, 4, 2))
    idx = r.integers(0, 2, size=(n, 4))
    probs = np.exp(_log_softmax(logits))
    want = np.array([sum(probs[i, e, idx[i, e]] for e in range(4)) for i in range(n)])
    _check(
        lambda a, b: L.iemocap_reward(a, b, "paper"), (jnp.asarray(logits), jnp.asarray(idx)), want
    )
    want_cc = np.array([sum(probs[i // 4, e, idx[i, e]] for e in range(4)) for i in range(n)])
    _check(
        lambda a, b: L.iemocap_reward(a, b, "code-compat"),
        (jnp.asarray(logits), jnp.asarray(np.eye(2)[idx])),
        want_cc,
    )
    p, y = r.normal(size=(n,)), r.uniform(-3, 3, size=(n,))
    _check(L.regression_reward, (jnp.asarray(p), jnp.asarray(y)), np.exp(-np.abs(p - y)))


def test_bad_inputs():
    x = jnp.zeros((4, 3))
    with pytest.raises(ValueError, match="unknown mode"):
        L.dpsr_loss(jnp.zeros((2, 3, 4)), "code")
    with pytest.raises(ValueError, match="disagree"):
        L.regression_loss(jnp.zeros(3), jnp.zeros(4))
    with pytest.raises(ValueError, match="expected 3 arrays"):
        L.modality_classification_loss([x, x])
    with pytest.raises(ValueError, match="last axis must be 3"):
        L.modality_classification_loss([x, x, jnp.zeros((4, 2))])
    with pytest.raises(ValueError, match="variant"):
        L.separation_loss([x] * 3, [x] * 3, "soft")
    with pytest.raises(ValueError, match="labels"):
        L.iemocap_task_loss(jnp.zeros((4, 4, 2)), jnp.zeros((4, 3)))
    with pytest.raises(ValueError, match="mask"):
        L.dpsr_loss(jnp.zeros((2, 3, 4)), "paper", jnp.ones((2, 4)))
    with pytest.raises(ValueError, match="kind"):
        L.critic_loss(jnp.zeros(2), jnp.zeros(2), jnp.zeros(2), kind="huber")
