"""benchmarks.cosa_torch (the PyTorch twin of the code-compat loop) against cosa_jax: with the
same parameters, inputs and replay sample, forward outputs, losses and gradients agree; the twin's
replay buffer follows the official add_batch; the twin learns the planted signal."""

import copy
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from benchmarks import cosa_torch as CT
from core_jax import config as C
from cosa_jax import data as D
from cosa_jax import losses as L
from cosa_jax import models as M
from cosa_jax import synthetic
from cosa_jax import train as T
from cosa_jax.configs import get_config

DIMS = (12, 8, 6)  # text, audio, vision
SEQ = 6
TINY = [
    f"data.dims={DIMS}", f"data.seq_len={SEQ}", "data.batch_size=16", "model.emb_dim=16",
    "model.num_heads=2", "model.ff_dim=32", "sac.buffer_capacity=64", "optim.peak_lr=2e-3",
]  # fmt: skip


def tiny(**model):
    cfg = C.apply_overrides(get_config("iemocap_code_compat"), TINY)
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **model))


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    path = tmp_path_factory.mktemp("cosa_twin") / "iemocap_data.pkl"
    synthetic.write_mult(path, "iemocap", n_train=256, seq_len=SEQ, dims=DIMS, seed=0)
    return {s: D.load(path, s, "mult") for s in D.SPLITS}


def _np(x):
    return x.detach().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _close(a, b, tol=1e-4):
    np.testing.assert_allclose(_np(a), _np(b), rtol=tol, atol=tol)


@pytest.fixture(scope="module")
def state(splits):
    # one state for the parity tests (dropout 0 so the training-mode objective is deterministic)
    return T.make_train_state(tiny(head_dropout=0.0), splits["train"], 7)


def _random_batch(rng, b, cfg):
    dt, da, dv = cfg.data.dims
    x = tuple(rng.normal(size=(b, SEQ, d)).astype(np.float32) for d in (dv, da, dt))
    y = rng.integers(0, 2, size=(b, 4)).astype(np.int32)
    return x, y


def _twin_with_jax_params(cfg, state):
    tw = CT.TorchCoSATrainer(cfg, seed=0)
    tw.load_jax(state.params, state.batch_stats, state.target_params)
    return tw


def test_forward_matches_jax(state):
    """Fresh random inputs, the cosa_jax parameters copied over: DPSR features, policy weights,
    eval-mode logits, critic values, supervised CE and the code-compat DPSR / reward agree."""
    st, cfg = state, state.cfg
    tw = _twin_with_jax_params(cfg, st)
    tw.train_mode(False)
    rng = np.random.default_rng(0)
    x, y = _random_batch(rng, 16, cfg)
    masks = tuple(jnp.ones((16, SEQ), bool) for _ in range(3))
    dims = (DIMS[2], DIMS[1], DIMS[0])
    model, actor, critic = T._modules(cfg, dims)

    @jax.jit  # one program (op-by-op dispatch would compile every op separately)
    def forward(params, batch_stats, x, y):
        feats = model.apply({"params": params["model"]}, x, masks)["feats"]
        w = actor.apply({"params": params["actor"]}, feats, masks, method=M.Actor.act)[0]
        vars_a = {"params": params["actor"], "batch_stats": batch_stats["actor"]}
        logits = actor.apply(vars_a, feats, w, masks, False, None, method=M.Actor.predict)
        vars_c = {"params": params["critic"], "batch_stats": batch_stats["critic"]}
        q = critic.apply(vars_c, feats, w, masks, False)
        return (
            feats,
            w,
            logits,
            q,
            {
                "ce": L.iemocap_task_loss(logits, y),
                "dpsr": L.dpsr_total(*feats, mode="code-compat"),
                "reward": L.iemocap_reward(logits, y, "code-compat"),
            },
        )

    feats, w, logits, q, lo = forward(st.params, st.batch_stats, x, y)
    xt = tuple(torch.from_numpy(a) for a in x)
    with torch.no_grad():
        f_t = tw.model(xt)
        for a, b in zip(feats, f_t, strict=True):
            _close(a, b)
        w_t = tw.actor.act(f_t)
        for a, b in zip(w, w_t, strict=True):
            _close(a, b)
        logits_t = tw.actor.predict(f_t, w_t)
        _close(logits, logits_t)
        _close(q, tw.critic(f_t, w_t))
        yt = torch.from_numpy(y).long()
        _close(lo["ce"], CT.task_loss(logits_t, yt))
        _close(lo["dpsr"], CT.dpsr_total(f_t))
        # a non-degenerate DPSR check too: raw random inputs are far from the ceiling
        raw = (x[0], x[0][..., :4] * 2.0, x[2][..., :5])
        raw_t = tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in raw)
        _close(L.dpsr_total(*raw, mode="code-compat"), CT.dpsr_total(raw_t))
        _close(lo["reward"], CT.reward(logits_t, yt))


def test_loss_and_gradients_match_jax(state):
    """The whole objective of a step with the SAC terms on (previous action, a replayed batch,
    target networks), dropout 0 so both sides are deterministic: total, parts and the gradients
    of all three parameter groups agree with cosa_jax.train's loss."""
    st, cfg = state, state.cfg
    rng = np.random.default_rng(1)
    b, e = 16, cfg.model.emb_dim
    x, y = _random_batch(rng, b, cfg)
    trip = lambda *shape: tuple(rng.normal(size=shape).astype(np.float32) for _ in range(3))
    ones = tuple(np.ones((b, SEQ), bool) for _ in range(3))
    prev_a = tuple(rng.uniform(0.2, 0.8, size=(b, SEQ)).astype(np.float32) for _ in range(3))
    sample = {
        "s": trip(b, SEQ, e), "a": tuple(rng.uniform(size=(b, SEQ)).astype(np.float32) for _ in
        range(3)), "r": rng.uniform(0, 4, size=(b,)).astype(np.float32), "mask": ones,
        "s2": trip(b, SEQ, e), "mask2": ones,
    }  # fmt: skip
    st = st.replace(pending={**st.pending, "a": prev_a}, pending_valid=jnp.ones((), bool))
    batch = D.MSABatch(
        text=x[2], text_ids=None, text_bert=None, audio=x[1], vision=x[0],
        text_mask=ones[2], audio_mask=ones[1], vision_mask=ones[0], labels=y,
        valid=np.ones((b,), bool),
    )  # fmt: skip
    keys = tuple(jax.random.split(jax.random.key(0), 4))
    grad_fn = jax.jit(jax.value_and_grad(T._loss_fn, has_aux=True))
    (total, (aux, _)), grads = grad_fn(st.params, st, batch, sample, jnp.float32(1.0), keys)

    tw = _twin_with_jax_params(cfg, st)
    tw.train_mode(True)
    to_t = lambda tr: tuple(torch.from_numpy(np.asarray(a)) for a in tr)
    s_t = {"s": to_t(sample["s"]), "a": to_t(sample["a"]), "r": torch.from_numpy(sample["r"]),
           "s2": to_t(sample["s2"])}  # fmt: skip
    total_t, aux_t, _ = tw.loss(to_t(x), torch.from_numpy(y).long(), to_t(prev_a), s_t)
    total_t.backward()
    _close(total, total_t)
    for k in ("task", "dpsr", "actor", "critic"):
        _close(aux[k], aux_t[k])
    # gradients: compare through the same parameter copy (JAX grads -> a torch module)
    for group, loader in (
        ("model", CT.load_model),
        ("actor", CT.load_actor),
        ("critic", CT.load_critic),
    ):
        ref = getattr(tw, group)
        holder = copy.deepcopy(ref)  # parameter-shaped holder: JAX grads via the same loader
        loader(holder, grads[group])
        scale = max(
            float(np.abs(_np(p.grad)).max()) for p in ref.parameters() if p.grad is not None
        )
        for (name, p), q in zip(ref.named_parameters(), holder.parameters(), strict=True):
            g = np.zeros(p.shape, np.float32) if p.grad is None else _np(p.grad)
            np.testing.assert_allclose(g, _np(q), rtol=1e-3, atol=1e-4 * scale, err_msg=name)


def test_list_buffer_follows_official_add_batch():
    """Sizes with k = 128, capacity 1000: 128, ..., 896, 576, 704, 832, 960, 608 (the official
    ``del buffer[:len // 2]`` when the batch would fill it), samples without replacement."""
    buf = CT.ListReplayBuffer(1000, np.random.default_rng(0))
    k, t, e = 128, 2, 3
    sizes = []
    for step in range(12):
        s = tuple(torch.full((k, t, e), float(step)) for _ in range(3))
        a = tuple(torch.arange(k, dtype=torch.float32)[:, None].expand(k, t) for _ in range(3))
        buf.add_batch(s, a, torch.arange(k, dtype=torch.float32), s)
        sizes.append(len(buf))
    assert sizes == [128, 256, 384, 512, 640, 768, 896, 576, 704, 832, 960, 608]
    # per-sample copies: mutating the source after add leaves the buffer alone
    src = torch.zeros(k, t, e)
    buf.add_batch((src,) * 3, a, torch.zeros(k), (src,) * 3)
    src += 5.0
    assert float(buf.buffer[-1][0][0].abs().max()) == 0.0
    smp = buf.sample(k)
    assert smp["s"][0].shape == (k, t, e) and smp["a"][0].shape == (k, t) and smp["r"].shape == (k,)
    # the oldest entries left are from step 8 onward (after the drops), plus the last batch
    assert float(torch.stack([it[0][0][0, 0] for it in buf.buffer]).min()) >= 0.0


def test_twin_learns_planted_signal(splits):
    """A few epochs of the twin's own loop (replay, SAC terms, targets) lower the training
    cross-entropy on the planted synthetic signal."""
    cfg = tiny()
    threads = torch.get_num_threads()
    # one thread: tiny ops gain nothing from OpenMP, whose barriers stall on a loaded machine
    torch.set_num_threads(1)
    try:
        tw = CT.TorchCoSATrainer(cfg, seed=0)
        before = tw.evaluate(splits["train"])["loss"]
        hist = [tw.train_epoch(splits["train"], epoch=e) for e in range(4)]
        after = tw.evaluate(splits["train"])["loss"]
    finally:
        torch.set_num_threads(threads)
    assert hist[-1]["gate"] > 0.5 and hist[-1]["buffer"] > cfg.data.batch_size  # SAC path ran
    assert all(np.isfinite(h["loss"]) for h in hist)
    assert after < before - 0.05, (before, after)
    assert hist[-1]["task"] < hist[0]["task"], [h["task"] for h in hist]


def test_twin_rejects_paper_config():
    with pytest.raises(ValueError, match="code-compat"):
        CT.TorchCoSATrainer(get_config("iemocap_paper"))
