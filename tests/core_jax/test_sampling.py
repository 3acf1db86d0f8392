"""Sampling: greedy, temperature, top-k, top-p and restricted ids."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from core_jax.nn import restrict_logits, sample, top_k_logits, top_p_logits


def rand_logits(seed, b=4, v=50):
    return jax.random.normal(jax.random.key(seed), (b, v)) * 2.0


def test_greedy_is_argmax():
    logits = rand_logits(0)
    ids = sample(jax.random.key(1), logits, temperature=0.0)
    np.testing.assert_array_equal(ids, np.argmax(np.asarray(logits), -1))


def test_temperature_sampling_matches_softmax():
    logits = jnp.array([[1.0, 0.0, -1.0, 2.0]])
    keys = jax.random.split(jax.random.key(3), 20000)
    draws = jax.vmap(lambda k: sample(k, logits, temperature=0.7)[0])(keys)
    freq = np.bincount(np.asarray(draws), minlength=4) / len(keys)
    expected = np.asarray(jax.nn.softmax(logits[0] / 0.7))
    np.testing.assert_allclose(freq, expected, atol=0.015)


def test_top_k_only_draws_from_top_k():
    logits = rand_logits(2)
    top3 = np.argsort(-np.asarray(logits), -1)[:, :3]
    keys = jax.random.split(jax.random.key(4), 500)
    draws = np.asarray(jax.vmap(lambda k: sample(k, logits, temperature=5.0, top_k=3))(keys))
    for b in range(logits.shape[0]):
        assert set(draws[:, b]) <= set(top3[b])
        assert len(set(draws[:, b])) == 3


def test_top_p_keeps_smallest_nucleus():
    probs = np.array([0.5, 0.3, 0.15, 0.05])
    logits = jnp.log(jnp.asarray(probs))[None]
    kept = np.isfinite(np.asarray(top_p_logits(logits, 0.75)))[0]
    np.testing.assert_array_equal(kept, [True, True, False, False])
    kept = np.isfinite(np.asarray(top_p_logits(logits, 0.81)))[0]
    np.testing.assert_array_equal(kept, [True, True, True, False])
    kept = np.isfinite(np.asarray(top_p_logits(logits, 1e-6)))[0]
    np.testing.assert_array_equal(kept, [True, False, False, False])


def test_top_k_validation():
    with pytest.raises(ValueError, match="top_k"):
        top_k_logits(rand_logits(0), 0)
    out = top_k_logits(rand_logits(0), 1000)
    assert np.isfinite(np.asarray(out)).all()


def test_restriction_never_emits_illegal_ids():
    logits = rand_logits(5, b=3, v=40)
    lo = jnp.array([0, 10, 30])
    hi = jnp.array([5, 13, 40])
    mask = jnp.zeros(40, bool).at[jnp.arange(0, 40, 3)].set(True)
    keys = jax.random.split(jax.random.key(6), 300)
    draws = np.asarray(
        jax.vmap(
            lambda k: sample(k, logits, temperature=3.0, id_range=(lo, hi), allowed_mask=mask)
        )(keys)
    )
    for b in range(3):
        legal = {i for i in range(int(lo[b]), int(hi[b])) if i % 3 == 0}
        assert set(draws[:, b]) <= legal
    greedy = sample(jax.random.key(0), logits, temperature=0.0, id_range=(lo, hi))
    assert all(int(lo[b]) <= int(greedy[b]) < int(hi[b]) for b in range(3))


def test_empty_legal_set_returns_minus_one():
    logits = rand_logits(7, b=2, v=10)
    mask = jnp.array([[False] * 10, [True] + [False] * 9])
    ids = sample(jax.random.key(0), logits, temperature=1.0, allowed_mask=mask)
    assert list(np.asarray(ids)) == [-1, 0]


def test_restrict_logits_shape_mismatch():
    with pytest.raises(ValueError, match="allowed_mask"):
        restrict_logits(rand_logits(0), allowed_mask=jnp.ones(3, bool))


def test_sample_is_jittable_and_deterministic():
    logits = rand_logits(8)
    f = jax.jit(lambda k, x, t, p: sample(k, x, temperature=t, top_k=5, top_p=p))
    a = f(jax.random.key(1), logits, 1.0, 0.9)
    b = f(jax.random.key(1), logits, 1.0, 0.9)
    np.testing.assert_array_equal(a, b)
