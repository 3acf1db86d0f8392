"""Known-answer and invariance tests of core_jax.nn.Transformer and its KV cache."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from core_jax.nn import (
    KVCache,
    Transformer,
    TransformerConfig,
    decode_step,
    generate,
    prefill,
    segment_positions,
)

BASE = dict(vocab_size=61, d_model=32, num_layers=2, num_heads=4, mlp_dim=48, max_len=40)

# Every position scheme, MHA / GQA / MQA, every MLP and norm kind, tied and untied.
VARIANTS = [
    dict(positions="none", num_kv_heads=4, mlp="geglu", norm="layernorm"),
    dict(
        positions="learned",
        num_kv_heads=2,
        mlp="gelu",
        norm="layernorm",
        tie_embeddings=False,
        qkv_bias=True,
        out_bias=True,
        mlp_bias=True,
        gelu_approximate=True,
    ),
    dict(positions="rope", num_kv_heads=2, mlp="swiglu", norm="rmsnorm", tie_embeddings=False),
    dict(positions="rope", num_kv_heads=1, mlp="geglu", norm="rmsnorm", head_dim=16),
]
IDS = ["none-mha", "learned-gqa-gpt2", "rope-gqa-llama", "rope-mqa-headdim"]


def make(seed=0, **kw):
    cfg = TransformerConfig(**{**BASE, **kw})
    model = Transformer(cfg)
    tokens = jax.random.randint(jax.random.key(seed + 100), (3, 24), 0, cfg.vocab_size)
    params = model.init(jax.random.key(seed), tokens)["params"]
    return cfg, model, nn.meta.unbox(params), tokens


@pytest.mark.parametrize("kw", VARIANTS, ids=IDS)
def test_causality(kw):
    cfg, model, params, tokens = make(**kw)
    full = model.apply({"params": params}, tokens)
    for t in (0, 7, 23):
        changed = tokens.at[:, t + 1 :].set((tokens[:, t + 1 :] + 5) % cfg.vocab_size)
        out = model.apply({"params": params}, changed)
        np.testing.assert_allclose(out[:, : t + 1], full[:, : t + 1], rtol=0, atol=1e-6)
        if t < 23:
            assert not np.allclose(out[:, t + 1 :], full[:, t + 1 :])


@pytest.mark.parametrize("kw", VARIANTS, ids=IDS)
def test_prefill_decode_equals_forward(kw):
    cfg, model, params, tokens = make(seed=3, **kw)
    full = model.apply({"params": params}, tokens)
    lengths = jnp.array([5, 12, 1])
    logits, cache = prefill(model, params, tokens[:, :12], lengths=lengths, cache_len=32)
    for b in range(3):
        n = int(lengths[b])
        np.testing.assert_allclose(logits[b, :n], full[b, :n], atol=1e-5, rtol=1e-5)
    chex.clear_trace_counter()
    step = jax.jit(chex.assert_max_traces(decode_step, n=1), static_argnums=0)
    rows = jnp.arange(3)
    for t in range(10):
        logits_t, cache = step(model, params, cache, tokens[rows, lengths + t])
        np.testing.assert_allclose(logits_t, full[rows, lengths + t], atol=1e-5, rtol=1e-5)
    np.testing.assert_array_equal(cache.length, lengths + 10)
    assert not bool(cache.overflow.any())


def test_cache_overflow_is_flagged_and_prefill_checks_capacity():
    cfg, model, params, tokens = make()
    with pytest.raises(ValueError, match="capacity"):
        prefill(model, params, tokens[:, :12], cache_len=8)
    _, cache = prefill(model, params, tokens[:, :8], cache_len=8)
    _, cache = decode_step(model, params, cache, tokens[:, 8])
    assert bool(cache.overflow.all())


def test_learned_positions_cache_longer_than_table_rejected():
    cfg = TransformerConfig(**{**BASE, "positions": "learned"})
    with pytest.raises(ValueError, match="max_len"):
        KVCache.init(cfg, 2, max_len=cfg.max_len + 1)


@pytest.mark.parametrize("kw", VARIANTS, ids=IDS)
def test_param_count_formula(kw):
    cfg, _, params, _ = make(**kw)
    assert cfg.param_count() == sum(x.size for x in jax.tree.leaves(params))


def test_every_parameter_has_logical_axes():
    cfg = TransformerConfig(**{**BASE, **VARIANTS[1]})
    boxed = jax.eval_shape(Transformer(cfg).init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32))[
        "params"
    ]
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert leaves
    for leaf in leaves:
        assert isinstance(leaf, nn.LogicallyPartitioned), leaf
        assert len(leaf.names) == leaf.value.ndim
        assert all(isinstance(n, str) for n in leaf.names)


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("num_heads", 5, "TransformerConfig.num_heads"),
        ("num_kv_heads", 3, "TransformerConfig.num_kv_heads"),
        ("mlp", "relu", "TransformerConfig.mlp"),
        ("norm", "batchnorm", "TransformerConfig.norm"),
        ("positions", "alibi", "TransformerConfig.positions"),
        ("dtype", "int8", "TransformerConfig.dtype"),
        ("stochastic_depth", 1.0, "TransformerConfig.stochastic_depth"),
        ("d_model", 0, "TransformerConfig.d_model"),
    ],
)
def test_invalid_config_names_field(field, value, match):
    with pytest.raises(ValueError, match=match):
        TransformerConfig(**{**BASE, field: value})


def test_config_roundtrip_and_unknown_key():
    cfg = TransformerConfig(**BASE)
    assert TransformerConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown field"):
        TransformerConfig.from_dict({**cfg.to_dict(), "n_layer": 3})


def test_segment_ids_equal_separate_sequences():
    cfg, model, params, tokens = make(positions="rope", num_kv_heads=2)
    a, b = tokens[0, :10], tokens[1, :14]
    packed = jnp.concatenate([a, b])[None]
    seg = jnp.concatenate([jnp.ones(10, jnp.int32), jnp.full(14, 2, jnp.int32)])[None]
    out = model.apply({"params": params}, packed, segment_ids=seg)
    ref_a = model.apply({"params": params}, a[None])
    ref_b = model.apply({"params": params}, b[None])
    np.testing.assert_allclose(out[0, :10], ref_a[0], atol=1e-5)
    np.testing.assert_allclose(out[0, 10:], ref_b[0], atol=1e-5)


def test_segment_positions():
    seg = jnp.array([[1, 1, 1, 2, 2, 3, 0, 0]])
    np.testing.assert_array_equal(segment_positions(seg), [[0, 1, 2, 0, 1, 0, 0, 1]])


def test_input_and_extra_embeddings():
    cfg, model, params, tokens = make(positions="learned", num_kv_heads=2)
    ref = model.apply({"params": params}, tokens)
    emb = model.apply({"params": params}, tokens, method=Transformer.embed)
    out = model.apply({"params": params}, None, input_embeddings=emb)
    np.testing.assert_allclose(out, ref, atol=1e-6)
    # Replace some positions by other embeddings: only those (and later) positions change.
    other = jax.random.normal(jax.random.key(9), emb.shape)
    mask = jnp.zeros(tokens.shape, bool).at[:, 10].set(True)
    mixed = model.apply({"params": params}, tokens, input_embeddings=other, embeddings_mask=mask)
    np.testing.assert_allclose(mixed[:, :10], ref[:, :10], atol=1e-6)
    assert not np.allclose(mixed[:, 10], ref[:, 10])
    same = model.apply({"params": params}, tokens, extra_embeddings=jnp.zeros_like(emb))
    np.testing.assert_allclose(same, ref, atol=1e-6)
    with pytest.raises(ValueError, match="embeddings_mask"):
        model.apply({"params": params}, tokens, input_embeddings=other)


def test_bad_inputs_raise_clear_errors():
    cfg, model, params, tokens = make()
    with pytest.raises(ValueError, match="tokens must be"):
        model.apply({"params": params}, tokens.astype(jnp.float32))
    with pytest.raises(ValueError, match="batch, length"):
        model.apply({"params": params}, tokens[0])
    with pytest.raises(ValueError, match="outside"):
        prefill(model, params, tokens.at[0, 0].set(cfg.vocab_size))
    with pytest.raises(ValueError, match="input_embeddings must be"):
        model.apply({"params": params}, None, input_embeddings=jnp.zeros((2, 3, 7)))


def test_stochastic_depth():
    cfg, model, params, tokens = make(stochastic_depth=0.5)
    det = model.apply({"params": params}, tokens)
    again = model.apply({"params": params}, tokens, deterministic=True)
    np.testing.assert_array_equal(det, again)
    s1 = model.apply(
        {"params": params}, tokens, deterministic=False, rngs={"dropout": jax.random.key(1)}
    )
    s2 = model.apply(
        {"params": params}, tokens, deterministic=False, rngs={"dropout": jax.random.key(2)}
    )
    assert not np.allclose(s1, det) and not np.allclose(s1, s2)


def test_bf16_compute_with_fp32_params():
    cfg, model, params, tokens = make(dtype="bfloat16")
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
    out = model.apply({"params": params}, tokens)
    ref = Transformer(cfg.replace(dtype="float32")).apply({"params": params}, tokens)
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, ref, atol=0.1)


def test_remat_same_gradients():
    cfg, model, params, tokens = make()
    remat = Transformer(cfg.replace(remat=True))

    def loss(m, p):
        return jnp.mean(m.apply({"params": p}, tokens) ** 2)

    g1 = jax.grad(lambda p: loss(model, p))(params)
    g2 = jax.grad(lambda p: loss(remat, p))(params)
    chex.assert_trees_all_close(g1, g2, atol=1e-6)


def test_generate_greedy_matches_uncached_loop():
    cfg, model, params, tokens = make(positions="rope", num_kv_heads=2)
    prompt = tokens[:, :6]
    lengths = jnp.array([6, 3, 4])
    new, count = jax.jit(generate, static_argnames=("model", "max_new_tokens"))(
        model=model,
        params=params,
        key=jax.random.key(0),
        prompt=prompt,
        max_new_tokens=7,
        lengths=lengths,
    )
    assert new.shape == (3, 7) and list(count) == [7, 7, 7]
    for b in range(3):
        seq = list(np.asarray(prompt[b, : lengths[b]]))
        for _ in range(7):
            logits = model.apply({"params": params}, jnp.array([seq]))
            seq.append(int(jnp.argmax(logits[0, -1])))
        assert seq[int(lengths[b]) :] == list(np.asarray(new[b]))
