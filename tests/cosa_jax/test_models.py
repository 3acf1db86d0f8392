"""cosa_jax.models: official parameter counts, advice saturation, BatchNorm semantics, DPSR
behaviour at initialisation, head shapes, bad input."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from cosa_jax import losses as L
from cosa_jax import models as M
from cosa_jax.configs import get_config


def _triples(key, b, t, dims):
    ks = jax.random.split(key, 3)
    x = tuple(jax.random.normal(k, (b, t, d)) for k, d in zip(ks, dims, strict=True))
    m = tuple(jnp.ones((b, t), bool) for _ in range(3))
    return x, m


def test_official_parameter_counts():
    """Spec section 3: model 251,648; actor 1,847,179; critic 2,041,177 (IEMOCAP, code-compat)."""
    cfg = get_config("iemocap_code_compat")
    dims = (35, 74, 300)  # vision, audio, text
    x, m = _triples(jax.random.key(0), 2, 20, dims)
    s = tuple(jnp.zeros((2, 20, 128)) for _ in range(3))
    w = tuple(jnp.zeros((2, 20)) for _ in range(3))
    shapes = lambda mod, *a: jax.eval_shape(
        lambda: mod.init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, *a)
    )["params"]
    model = shapes(M.CoSAModel(cfg.model, dims, False), x, m)
    actor = shapes(M.Actor(cfg.model, "iemocap"), s, s, m, True)
    critic = shapes(M.Critic(cfg.model), s, w, m, True)
    assert M.param_count(model) == 251_648
    assert M.param_count(actor) == 1_847_179
    assert M.param_count(critic) == 2_041_177
    # paper mode adds the MSD modules: modality encoders, decoders and the modality classifier
    paper = shapes(M.CoSAModel(get_config("iemocap_paper").model, dims, True), x, m)
    extra = sum(d * 128 + 128 + 256 * 128 + 128 + 128 * d + d for d in dims) + 128 * 3 + 3
    assert M.param_count(paper) == 251_648 + extra


def test_advice_saturates_in_code_compat_only():
    key = jax.random.key(1)
    p, m = _triples(key, 4, 20, (32, 32, 32))
    adv = jax.jit(M.advice, static_argnums=(2, 3))
    _, mix_sum = adv(p, m, 1.0, "sum")
    assert np.all(np.asarray(mix_sum[..., 0]) == 1.0)  # exactly 1.0 on "self" in float32
    out, mix_mean = adv(p, m, 1.0, "mean")
    assert np.all(np.asarray(mix_mean[..., 0]) < 0.9)
    np.testing.assert_allclose(np.asarray(mix_mean.sum(-1)), 1.0, rtol=1e-6)
    # mean mode is a convex mixture of the self features and the four advice vectors
    assert out[0].shape == p[0].shape


def test_advice_matches_numpy_reference():
    p, m = _triples(jax.random.key(2), 2, 5, (8, 8, 8))
    out, _ = jax.jit(M.advice, static_argnums=(2, 3))(p, m, 0.7, "mean")
    pn = [np.asarray(x, np.float64) for x in p]

    def cos(a, b):
        a = a / np.linalg.norm(a, axis=-1, keepdims=True)
        b = b / np.linalg.norm(b, axis=-1, keepdims=True)
        return a @ b.transpose(0, 2, 1)

    def softmax(z, ax):
        z = z - z.max(ax, keepdims=True)
        e = np.exp(z)
        return e / e.sum(ax, keepdims=True)

    for c in range(3):
        o = [n for n in range(3) if n != c]
        sims = [cos(pn[c], pn[n]) for n in o]
        cands = [pn[c]] + [softmax(s, -1) @ pn[n] for s, n in zip(sims, o, strict=True)]
        cands += [softmax(-s, -1) @ pn[n] for s, n in zip(sims, o, strict=True)]
        means = [s.mean((1, 2)) for s in sims]
        logits = np.stack([np.ones(2), *means, *[-x for x in means]], 1) / 0.7
        w = softmax(logits, 1)
        ref = sum(cd * w[:, i, None, None] for i, cd in enumerate(cands))
        np.testing.assert_allclose(np.asarray(out[c]), ref, rtol=1e-4, atol=1e-5)


def test_batchnorm_matches_torch_train_and_eval():
    x = np.random.default_rng(0).normal(size=(16, 6)).astype(np.float32) * 3 + 1
    bn = M.BatchNorm1d()
    v = bn.init(jax.random.key(0), jnp.asarray(x), True)
    y, upd = bn.apply(v, jnp.asarray(x), True, mutable=["batch_stats"])
    tbn = torch.nn.BatchNorm1d(6)
    ty = tbn(torch.from_numpy(x))
    np.testing.assert_allclose(np.asarray(y), ty.detach().numpy(), atol=1e-5)
    np.testing.assert_allclose(np.asarray(upd["batch_stats"]["mean"]), tbn.running_mean, atol=1e-6)
    np.testing.assert_allclose(np.asarray(upd["batch_stats"]["var"]), tbn.running_var, atol=1e-5)
    tbn.eval()
    y_eval = bn.apply({**v, **upd}, jnp.asarray(x), False)
    np.testing.assert_allclose(
        np.asarray(y_eval), tbn(torch.from_numpy(x)).detach().numpy(), atol=1e-5
    )
    # padded rows (row_mask False) do not move the batch statistics
    xp = np.concatenate([x, 100 * np.ones((4, 6), np.float32)])
    mask = jnp.asarray([True] * 16 + [False] * 4)
    yp, _ = bn.apply(v, jnp.asarray(xp), True, mask, mutable=["batch_stats"])
    np.testing.assert_allclose(np.asarray(yp[:16]), np.asarray(y), atol=1e-5)


def test_encoder_layer_matches_torch():
    layer = M.EncoderLayer(num_heads=2, ff_dim=16)
    x = jax.random.normal(jax.random.key(3), (3, 5, 8))
    mask = jnp.ones((3, 5), bool)
    p = jax.jit(layer.init)(jax.random.key(4), x, mask)["params"]
    t = torch.nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0, batch_first=True)
    sd = {
        "self_attn.in_proj_weight": p["in_proj_kernel"].T,
        "self_attn.in_proj_bias": p["in_proj_bias"],
        "self_attn.out_proj.weight": p["out_proj"]["kernel"].T,
        "self_attn.out_proj.bias": p["out_proj"]["bias"],
        "linear1.weight": p["linear1"]["kernel"].T,
        "linear1.bias": p["linear1"]["bias"],
        "linear2.weight": p["linear2"]["kernel"].T,
        "linear2.bias": p["linear2"]["bias"],
        "norm1.weight": p["norm1"]["scale"],
        "norm1.bias": p["norm1"]["bias"],
        "norm2.weight": p["norm2"]["scale"],
        "norm2.bias": p["norm2"]["bias"],
    }
    t.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in sd.items()})
    t.eval()
    ref = t(torch.from_numpy(np.array(x))).detach().numpy()
    out = jax.jit(layer.apply)({"params": p}, x, mask)
    np.testing.assert_allclose(np.asarray(out), ref, atol=1e-5)


@pytest.mark.parametrize("name", ["iemocap_paper", "iemocap_code_compat"])
def test_dpsr_at_initialisation(name):
    """Without the residual the DPSR block outputs nearly one vector per sequence: the loss sits at
    its ceiling; with it (paper) the loss starts clearly below."""
    cfg = get_config(name)
    t, dims = 20, (35, 74, 300)
    x, m = _triples(jax.random.key(5), 8, t, dims)
    model = M.CoSAModel(cfg.model, dims, cfg.loss.use_msd)

    @jax.jit
    def dpsr(x, m):
        feats = model.apply(model.init(jax.random.key(6), x, m), x, m)["feats"]
        return L.dpsr_total(*feats, mode=cfg.loss.dpsr_mode)

    loss = float(dpsr(x, m))
    if cfg.mode == "code-compat":
        ceiling = 4 * (t + 1) / (3 * t)  # 1.4, measured on the official code
        assert loss > 0.97 * ceiling
    else:
        ceiling = (2 * t - 1) / 3
        assert loss < 0.8 * ceiling


def test_heads_and_bad_input():
    cfg = dataclasses.replace(
        get_config("mosi_paper").model, emb_dim=16, num_heads=2, ff_dim=32, fusion="cat"
    )
    s, m = _triples(jax.random.key(7), 4, 6, (16, 16, 16))
    rngs = {"params": jax.random.key(8), "dropout": jax.random.key(9)}

    def run(task):
        actor = M.Actor(cfg, task)
        return jax.jit(lambda s, m: actor.apply(actor.init(rngs, s, s, m, True), s, s, m, False))(
            s, m
        )

    preds, w = run("regression")
    assert preds.shape == (4,) and np.all(np.abs(np.asarray(preds)) < 3.0)
    assert all(x.shape == (4, 6) for x in w)
    assert np.all((np.asarray(w[0]) > 0) & (np.asarray(w[0]) < 1))
    model = M.CoSAModel(cfg, (6, 5, 4), True)
    x, mx = _triples(jax.random.key(10), 2, 6, (6, 5, 4))
    jax.eval_shape(model.init, jax.random.key(0), x, mx)
    with pytest.raises(ValueError, match="audio: expected feature dim 5"):
        bad = (x[0], jnp.zeros((2, 6, 7)), x[2])
        jax.eval_shape(model.init, jax.random.key(0), bad, mx)


def test_padding_does_not_change_valid_outputs():
    """Masked steps do not influence the DPSR block, the encoder layers or the pooled outputs."""
    cfg = dataclasses.replace(get_config("mosi_paper").model, emb_dim=16, num_heads=2, ff_dim=32)
    s, m = _triples(jax.random.key(11), 2, 6, (16, 16, 16))
    actor = M.Actor(cfg, "regression")
    v = jax.jit(actor.init, static_argnums=4)(
        {"params": jax.random.key(8), "dropout": jax.random.key(9)}, s, s, m, True
    )
    short = tuple(x[:, :4] for x in s)
    m_short = tuple(x[:, :4] for x in m)
    padded = tuple(x.at[:, 4:].set(50.0) for x in s)
    m_pad = tuple(x.at[:, 4:].set(False) for x in m)
    apply = jax.jit(lambda s, m: actor.apply(v, s, s, m, False)[0])
    ref = apply(short, m_short)
    out = apply(padded, m_pad)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-5)


@pytest.mark.parametrize(
    ("remat", "scan"),
    [
        ("layer", True),  # the default
        ("ff_relu", False),
        pytest.param("ff", False, marks=pytest.mark.slow),
        pytest.param("ff", True, marks=pytest.mark.slow),
        pytest.param("ff_relu", True, marks=pytest.mark.slow),
        pytest.param("layer", False, marks=pytest.mark.slow),
    ],
)
def test_encoder_layers_remat_and_scan_same_values_and_gradients(remat, scan):
    """Every rematerialisation mode, unrolled or scanned over the modalities, gives the plain
    unrolled layers' outputs and gradients (parameters and inputs); ``ff_relu``'s hand-written
    backward included."""
    ks = jax.random.split(jax.random.key(5), 4)
    xs = tuple(jax.random.normal(k, (3, 5, 8)) for k in ks[:3])
    mask = jnp.asarray([[True] * 5, [True] * 3 + [False] * 2, [True] * 5])
    masks = (mask, mask, jnp.ones((3, 5), bool))
    layer = M.EncoderLayer(2, 16)
    ps = [jax.jit(layer.init)(jax.random.key(i), xs[0], mask)["params"] for i in range(3)]
    w = jax.random.normal(ks[3], (3, 5, 8))

    def loss(ps, xs, remat, scan):
        hs = M.apply_encoder_layers(ps, xs, masks, 2, 16, remat, scan)
        return sum(jnp.sum(jnp.sin(h) * w * (i + 1)) for i, h in enumerate(hs))

    grad = jax.value_and_grad(loss, (0, 1))
    v0, g0 = jax.jit(grad, static_argnums=(2, 3))(ps, xs, "none", False)
    v1, g1 = jax.jit(grad, static_argnums=(2, 3))(ps, xs, remat, scan)
    np.testing.assert_allclose(float(v1), float(v0), rtol=1e-6)
    for a, b in zip(jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g0), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    # the plain unrolled path is the layer itself
    h0 = M.apply_encoder_layers(ps, xs, masks, 2, 16, "none", False)
    np.testing.assert_allclose(
        np.asarray(h0[1]), np.asarray(layer.apply({"params": ps[1]}, xs[1], masks[1])), atol=1e-6
    )


def test_ff_save_relu_gradient_at_relu_kink():
    """Pre-activations exactly 0 get derivative 0, as ``jax.nn.relu`` (mask from ``h > 0``)."""
    x = jnp.asarray([[1.0, -1.0], [0.0, 0.0]])
    w1 = jnp.asarray([[1.0, 0.0, 2.0], [1.0, 1.0, 0.0]])  # row 0: pre-activation (0, -1, 2)
    b1 = jnp.zeros(3)
    w2 = jnp.asarray([[1.0], [2.0], [3.0]])
    b2 = jnp.asarray([0.5])
    args = (x, w1, b1, w2, b2)
    g_ref = jax.grad(lambda *a: jnp.sum(M._ff(*a) ** 2), argnums=(0, 1, 2, 3, 4))(*args)
    g = jax.grad(lambda *a: jnp.sum(M.ff_save_relu(*a) ** 2), argnums=(0, 1, 2, 3, 4))(*args)
    np.testing.assert_allclose(np.asarray(M.ff_save_relu(*args)), [[6.5], [0.5]])
    for a, b in zip(g, g_ref, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(ValueError, match="remat"):
        M.apply_encoder_layers([], (), (), 2, 16, "everything", True)


def test_feed_forward_in_chunks():
    """Slices of rows one after the other: same output and gradients as one pass."""
    ks = jax.random.split(jax.random.key(7), 5)
    x = jax.random.normal(ks[0], (4, 3, 8))
    w1, w2 = jax.random.normal(ks[1], (8, 16)), jax.random.normal(ks[2], (16, 8))
    b1, b2 = jax.random.normal(ks[3], (16,)), jax.random.normal(ks[4], (8,))

    def loss(chunks, *a):
        return jnp.sum(jnp.cos(M.feed_forward(*a, "none", chunks)))

    argn = (0, 1, 2, 3, 4)
    v0, g0 = jax.value_and_grad(lambda *a: loss(1, *a), argn)(x, w1, b1, w2, b2)
    v1, g1 = jax.value_and_grad(lambda *a: loss(3, *a), argn)(x, w1, b1, w2, b2)
    np.testing.assert_allclose(float(v1), float(v0), rtol=1e-6)
    for a, b in zip(g1, g0, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
    v5, g5 = jax.value_and_grad(lambda *a: loss(5, *a), argn)(x, w1, b1, w2, b2)  # 12 rows: pad
    np.testing.assert_allclose(float(v5), float(v0), rtol=1e-6)
    for a, b in zip(g5, g0, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="ff_chunks=0"):
        M.feed_forward(x, w1, b1, w2, b2, "none", 0)
