"""cosa_jax.replay against Python list/deque references of both insertion policies."""

import collections

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cosa_jax import replay as R


def _example():
    return {"s": jnp.zeros((3,)), "r": jnp.zeros((), jnp.float32)}


def _items(start, k):
    v = np.arange(start, start + k, dtype=np.float32)
    return {"s": np.stack([v, -v, 2 * v], 1), "r": v}


@pytest.mark.parametrize("policy", R.POLICIES)
def test_against_python_reference(policy):
    cap = 10
    buf = R.init_buffer(_example(), cap, policy)
    ref = collections.deque(maxlen=cap) if policy == "ring" else []
    chex.clear_trace_counter()
    add = jax.jit(chex.assert_max_traces(R.add_batch, n=2))  # one trace per batch size k (3, 4)
    start = 0
    for k in (3, 4, 4, 4, 3, 4, 4):
        buf = add(buf, _items(start, k))
        for v in range(start, start + k):
            if policy == "drop_half" and len(ref) >= cap:
                ref = ref[cap // 2 :]  # the official list: drop the oldest half when full
            ref.append(v)
        start += k
        got = R.valid_items(buf)
        assert int(buf.size) == len(ref)
        np.testing.assert_array_equal(got["r"], np.array(list(ref), np.float32))
        np.testing.assert_array_equal(got["s"][:, 1], -np.array(list(ref), np.float32))


def test_eager_equals_jit_and_sampling():
    buf = R.init_buffer(_example(), 8, "drop_half")
    a = R.add_batch(buf, _items(0, 11))
    b = jax.jit(R.add_batch)(buf, _items(0, 11))
    np.testing.assert_array_equal(R.valid_items(a)["r"], R.valid_items(b)["r"])
    key = jax.random.PRNGKey(0)
    s1 = jax.jit(R.sample, static_argnums=2)(a, key, 64)
    s2 = R.sample(a, key, 64)
    np.testing.assert_array_equal(s1["r"], s2["r"])
    assert s1["s"].shape == (64, 3)
    assert set(np.asarray(s1["r"]).tolist()) <= set(np.asarray(R.valid_items(a)["r"]).tolist())


def test_bad_inputs():
    with pytest.raises(ValueError, match="unknown replay policy"):
        R.init_buffer(_example(), 4, "fifo")
    buf = R.init_buffer(_example(), 4)
    with pytest.raises(ValueError, match="do not match"):
        R.add_batch(buf, {"s": np.zeros((2, 4)), "r": np.zeros(2)})
    with pytest.raises(ValueError, match="cannot add 5"):
        R.add_batch(buf, _items(0, 5))
