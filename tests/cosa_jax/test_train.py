"""cosa_jax.train: jit == eager, no retracing, learning the planted signal, paper vs code-compat
quirks (DPSR ceiling and gradients, advice, targets, shared init, reward, replay), plateau."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from core_jax import config as C
from cosa_jax import data as D
from cosa_jax import losses as L
from cosa_jax import replay as R
from cosa_jax import synthetic
from cosa_jax import train as T
from cosa_jax.configs import get_config
from cosa_jax.models import CoSAModel

DIMS = (12, 8, 6)  # text, audio, vision
SEQ = 6
TINY = [
    f"data.dims={DIMS}", f"data.seq_len={SEQ}", "data.batch_size=16", "model.emb_dim=16",
    "model.num_heads=2", "model.ff_dim=32", "sac.buffer_capacity=64", "optim.peak_lr=2e-3",
]  # fmt: skip
PAPER_EPOCHS = 5
CC_EPOCHS = 2


def tiny(name):
    return C.apply_overrides(get_config(name), TINY)


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    path = tmp_path_factory.mktemp("cosa") / "iemocap_data.pkl"
    synthetic.write_mult(path, "iemocap", n_train=256, seq_len=SEQ, dims=DIMS, seed=0)
    return {s: D.load(path, s, "mult") for s in D.SPLITS}


def _run(cfg, splits, epochs):
    chex.clear_trace_counter()
    step = jax.jit(chex.assert_max_traces(T._train_step, n=1))
    s0 = T.make_train_state(cfg, splits["train"], 1111)
    hist, st = [], s0
    for _ in range(epochs):
        st, _ = T.train_epoch(st, splits["train"], step_fn=step, history=hist)
        st = T.end_epoch(st, T.evaluate(st, splits["valid"])["loss"])
    hist = jax.device_get(hist)
    return {"cfg": cfg, "step": step, "s0": s0, "state": st, "hist": hist}


@pytest.fixture(scope="module")
def paper(splits):
    return _run(tiny("iemocap_paper"), splits, PAPER_EPOCHS)


@pytest.fixture(scope="module")
def compat(splits):
    return _run(tiny("iemocap_code_compat"), splits, CC_EPOCHS)


@pytest.fixture(scope="module")
def compat_s0(splits):
    return T.make_train_state(tiny("iemocap_code_compat"), splits["train"], 1111)


def _first_batch(data, cfg, epoch=0):
    it = D.iterate_batches(data, cfg.data.batch_size, shuffle=True, seed=3, epoch=epoch)
    return T._strip(next(it))


@pytest.mark.slow
def test_jit_equals_eager(paper, splits):
    """One full step (critic/actor gate open) jitted vs op by op: losses, gradients, targets and
    replay contents agree. (Parameters after Adam are not compared leaf by leaf: leaves with an
    exactly-zero true gradient, e.g. attention key biases, carry float noise that Adam scales to
    +-lr.)"""
    st = paper["state"]
    assert int(st.buffer.size) > st.cfg.data.batch_size  # critic/actor path is active
    batch = _first_batch(splits["train"], st.cfg)
    new_j, m_j = paper["step"](st, batch)
    new_e, m_e = T._train_step(st, batch)
    assert float(m_j["gate"]) == 1.0
    for k in m_j:
        np.testing.assert_allclose(np.asarray(m_j[k]), np.asarray(m_e[k]), rtol=1e-5, atol=1e-5)
    _, _, g_j = jax.jit(T.loss_and_grads)(st, batch)
    _, _, g_e = T.loss_and_grads(st, batch)
    chex.assert_trees_all_close(g_j, g_e, rtol=1e-4, atol=1e-5)
    chex.assert_trees_all_close(new_j.target_params, new_e.target_params, atol=1e-5)
    chex.assert_trees_all_close(new_j.buffer.data, new_e.buffer.data, atol=1e-5)
    chex.assert_trees_all_close(new_j.batch_stats, new_e.batch_stats, atol=1e-5)


def test_eval_jit_equals_eager(paper, splits):
    st = paper["state"]
    batch = _first_batch(splits["test"], st.cfg)
    dims = tuple(int(a.shape[-1]) for a in T.input_triples(batch)[0])
    p_j, l_j = T._eval_jit(st.cfg, dims, st.params, st.batch_stats, batch)
    p_e, l_e = T._eval_batch(st.cfg, dims, st.params, st.batch_stats, batch)
    np.testing.assert_allclose(np.asarray(p_j), np.asarray(p_e), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(l_j), np.asarray(l_e), rtol=1e-5, atol=1e-5)


def test_no_retracing_over_epochs(paper):
    # the chex wrapper raises on a second trace; all epochs (and the extra step above) reused one
    assert paper["step"]._cache_size() == 1
    steps = int(paper["state"].step)
    assert steps == PAPER_EPOCHS * (256 // 16) and len(paper["hist"]) == steps


def test_beats_chance_on_planted_signal(paper, splits):
    test = splits["test"]
    y = np.asarray(test.batch.labels)
    majority = float(np.mean(np.maximum(y.mean(0), 1 - y.mean(0))))
    before = T.evaluate(paper["s0"], test)["metrics"]["Mean_acc"]
    after = T.evaluate(paper["state"], test, use_best=True)["metrics"]["Mean_acc"]
    assert after > majority + 0.1, (after, majority)
    assert after > before + 0.1, (after, before)


def _dpsr_grads(cfg, params, batch):
    x, m = T.input_triples(batch)
    dims = tuple(a.shape[-1] for a in x)
    model = CoSAModel(cfg.model, dims, cfg.loss.use_msd)

    @jax.jit
    def g(p):
        def f(p):
            feats = model.apply({"params": p}, x, m)["feats"]
            return L.dpsr_total(*feats, mode=cfg.loss.dpsr_mode, masks=m)

        return jax.grad(f)(p)

    grads = g(params)
    return {
        mod: float(optax_norm(grads[f"sentiment_encoder_{mod}"]))
        for mod in ("vision", "audio", "text")
    }


def optax_norm(tree):
    return jnp.sqrt(sum(jnp.sum(x * x) for x in jax.tree_util.tree_leaves(tree)))


def test_dpsr_paper_mode_works(paper, splits):
    """Paper mode: the DPSR loss falls from where it starts (below its (2T-1)/3 ceiling) and every
    agent's sentiment encoder gets a DPSR gradient."""
    d = [float(m["dpsr"]) for m in paper["hist"]]
    ceiling = (2 * SEQ - 1) / 3
    assert d[0] < ceiling
    assert np.mean(d[-16:]) < d[0] - 0.1, (d[0], np.mean(d[-16:]))
    grads = _dpsr_grads(
        paper["cfg"], paper["s0"].params["model"], _first_batch(splits["train"], paper["cfg"])
    )
    assert all(v > 1e-4 for v in grads.values()), grads


def test_dpsr_code_compat_no_acoustic_gradient_at_init(compat_s0, splits):
    cfg = compat_s0.cfg
    grads = _dpsr_grads(cfg, compat_s0.params["model"], _first_batch(splits["train"], cfg))
    assert grads["audio"] == 0.0 and grads["vision"] > 0.0 and grads["text"] > 0.0


@pytest.mark.slow
def test_dpsr_code_compat_reproduces_official_failure(compat, splits):
    """Code-compat: DPSR sits at its ceiling 4(T+1)/(3T) for the whole run and the acoustic
    encoder receives exactly zero DPSR gradient (its term is replaced by the visual one)."""
    ceiling = 4 * (SEQ + 1) / (3 * SEQ)
    d = np.asarray([float(m["dpsr"]) for m in compat["hist"]])
    assert np.all(d > 0.95 * ceiling) and np.all(d <= ceiling + 1e-5), (d.min(), ceiling)
    for st in (compat["s0"], compat["state"]):
        grads = _dpsr_grads(
            compat["cfg"], st.params["model"], _first_batch(splits["train"], compat["cfg"])
        )
        assert grads["audio"] == 0.0
        assert grads["vision"] > 0.0 and grads["text"] > 0.0


@pytest.mark.slow
def test_advice_has_no_effect_only_in_code_compat(paper, compat):
    # T = 6 here: the summed "self" logit is 36, so the weight is ~1 (exactly 1.0 at the official
    # T = 20, see test_models)
    assert all(float(m["advice_self"]) > 0.99 for m in compat["hist"])
    assert all(float(m["advice_self"]) < 0.9 for m in paper["hist"])


def test_targets_and_shared_init(paper, compat_s0):
    p0, c0 = paper["s0"], compat_s0
    chex.assert_trees_all_equal(p0.target_params["actor"], p0.params["actor"])
    chex.assert_trees_all_equal(p0.target_params["critic"], p0.params["critic"])
    diff = lambda a, b: any(
        not np.array_equal(x, y)
        for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True)
    )
    assert diff(c0.target_params["actor"], c0.params["actor"])  # targets are not copies
    assert diff(c0.target_params["critic"], c0.params["critic"])
    for prefix, group in (("temporal", "actor"), ("critic", "critic")):
        cp, pp = c0.params[group], p0.params[group]
        chex.assert_trees_all_equal(cp[f"{prefix}_vision"], cp[f"{prefix}_audio"])
        chex.assert_trees_all_equal(cp[f"{prefix}_vision"], cp[f"{prefix}_text"])
        assert diff(pp[f"{prefix}_vision"], pp[f"{prefix}_audio"])


def _official_add_batch(buf, items, cap):
    """The official ReplayBuffer.add_batch (utils.py)."""
    if len(buf) + len(items) < cap:
        return buf + items
    del buf[: len(buf) // 2]
    return buf + items


def test_replay_official_add_batch_policy():
    cap, k = 64, 16
    buf = R.init_buffer({"x": jnp.zeros(())}, cap, "drop_half_batch")
    add = jax.jit(chex.assert_max_traces(R.add_batch, n=1))
    ref = []
    for i in range(12):
        items = list(range(i * k, (i + 1) * k))
        buf = add(buf, {"x": jnp.asarray(items, jnp.float32)})
        ref = _official_add_batch(ref, items, cap)
        np.testing.assert_array_equal(np.asarray(R.valid_items(buf)["x"]), np.asarray(ref))
    with pytest.raises(ValueError, match="capacity // 2"):
        R.add_batch(R.init_buffer({"x": jnp.zeros(())}, 8, "drop_half_batch"), {"x": jnp.zeros(5)})
    # sampling without replacement draws distinct valid slots
    idx = R.sample(buf, jax.random.key(0), 16, replace=False)["x"]
    assert len(set(np.asarray(idx).tolist())) == 16


@pytest.mark.slow
def test_code_compat_buffer_follows_official_list(compat):
    """The code-compat run's buffer sizes follow the official list, one batch per step after the
    first (the first step only queues its half transition)."""
    sizes, ref = [], []
    for _ in range(len(compat["hist"]) - 1):
        ref = _official_add_batch(ref, [0] * 16, 64)
        sizes.append(len(ref))
    assert [int(m["buffer"]) for m in compat["hist"][1:]] == sizes


def test_reward_modes():
    logits = jax.random.normal(jax.random.key(0), (16, 4, 2))
    labels = jax.random.bernoulli(jax.random.key(1), 0.5, (16, 4)).astype(jnp.int32)
    for name in ("iemocap_paper", "iemocap_code_compat"):
        cfg = tiny(name)
        np.testing.assert_allclose(
            T._reward(cfg, logits, labels), L.iemocap_reward(logits, labels, cfg.sac.reward_mode)
        )
    assert not np.allclose(
        T._reward(tiny("iemocap_paper"), logits, labels),
        T._reward(tiny("iemocap_code_compat"), logits, labels),
    )


def test_plateau_matches_torch():
    rng = np.random.default_rng(0)
    losses = np.concatenate(
        [np.linspace(2, 1, 10), 1 + rng.random(60) * 0.1, np.linspace(1, 0.5, 5)]
    )
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([p], lr=2.2e-4)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, "min", patience=5, factor=0.8)
    lr, best, bad = 2.2e-4, float("inf"), 0
    for v in losses:
        sched.step(float(v))
        lr, best, bad = T.plateau_update(lr, best, bad, float(v), 5, 0.8)
        assert lr == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12)
        assert bad == sched.num_bad_epochs


def test_bad_input(splits):
    cfg = C.apply_overrides(tiny("iemocap_paper"), ["data.dims=(300, 74, 35)"])
    with pytest.raises(ValueError, match="data.dims"):
        T.make_train_state(cfg, splits["train"], 0)
    reg = C.apply_overrides(tiny("mosi_paper"), [f"data.dims={DIMS}"])
    with pytest.raises(ValueError, match="config task regression"):
        T.make_train_state(reg, splits["train"], 0)
    st = T.make_train_state(tiny("iemocap_paper"), splits["train"], 0)
    small = next(D.iterate_batches(splits["train"], 8))
    with pytest.raises(ValueError, match="state was built for 16"):
        jax.eval_shape(T._train_step, st, T._strip(small))
    with pytest.raises(ValueError, match="text feature vectors"):
        T.input_triples(small.replace(text=None))


@pytest.mark.parametrize(
    ("remat", "scan", "chunks"),
    [
        ("layer", True, 4),  # the default
        pytest.param("none", True, 1, marks=pytest.mark.slow),
        pytest.param("ff_relu", False, 2, marks=pytest.mark.slow),
    ],
)
def test_remat_and_scan_give_the_same_step(paper, splits, remat, scan, chunks):
    """The memory options change what the backward pass keeps, not the numbers: the whole
    objective, its parts and every gradient agree with the unrolled, non-rematerialised step
    (state after training, so the critic/actor path is active)."""
    st = paper["state"]
    assert int(st.buffer.size) > st.cfg.data.batch_size
    batch = _first_batch(splits["train"], st.cfg)

    def with_model(**kw):
        return dataclasses.replace(st.cfg, model=dataclasses.replace(st.cfg.model, **kw))

    ref_cfg = with_model(remat="none", scan_modalities=False, ff_chunks=1)
    cfg = with_model(remat=remat, scan_modalities=scan, ff_chunks=chunks)
    assert cfg != ref_cfg
    t0, a0, g0 = jax.jit(T.loss_and_grads)(st.replace(cfg=ref_cfg), batch)
    t1, a1, g1 = jax.jit(T.loss_and_grads)(st.replace(cfg=cfg), batch)
    np.testing.assert_allclose(float(t1), float(t0), rtol=1e-6)
    for k in a0:
        np.testing.assert_allclose(float(a1[k]), float(a0[k]), rtol=1e-6, atol=1e-7, err_msg=k)
    for a, b in zip(jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g0), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
