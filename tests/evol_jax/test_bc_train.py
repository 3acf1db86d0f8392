"""BC trainer: loss falls, reward weights act as example weights, interrupted run == full run."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from core_jax.nn import Transformer, TransformerConfig
from evol_jax.policy_data import Example, PackedBatchIterator
from evol_jax.train import BCConfig, bc_loss, train_bc

V = 40


def _examples(rng, n, weight=1.0, tag="a"):
    out = []
    for i in range(n):
        # A learnable pattern: after token 5 comes 6, 7, 8 (assistant part, with loss).
        prompt = rng.integers(10, V, 6)
        answer = np.array([5, 6, 7, 8], np.int32)
        toks = np.concatenate([prompt, answer]).astype(np.int32)
        mask = np.array([False] * 6 + [True] * 4)
        out.append(Example(f"{tag}{i}", toks, mask, weight))
    return out


def _model():
    cfg = TransformerConfig(vocab_size=V, d_model=32, num_layers=1, num_heads=2, mlp_dim=64,
                            mlp="swiglu", norm="rmsnorm", max_len=64)  # fmt: skip
    return Transformer(cfg)


CFG = BCConfig(peak_lr=2e-2, micro_batch=8, grad_accum=2, seq_len=12, epochs=20, log_every=1)


def test_loss_decreases():
    model = _model()
    ex = _examples(np.random.default_rng(0), 16)
    params, lines = train_bc(model, ex, CFG)
    assert lines[-1]["loss"] < 0.5 * lines[0]["loss"]
    assert all(np.isfinite(line["grad_norm"]) for line in lines)


def test_reward_weight_zero_examples_do_not_count():
    model = _model()
    rng = np.random.default_rng(1)
    good = _examples(rng, 4)
    bad = [Example(e.item_id + "z", e.tokens[::-1].copy(), e.loss_mask, 0.0)
           for e in _examples(rng, 4, tag="b")]  # fmt: skip
    params = model.init(jax.random.key(0), np.zeros((1, 4), np.int32))["params"]
    it = PackedBatchIterator(good + bad, batch_size=8, seq_len=16, shuffle=False)
    it_good = PackedBatchIterator(good, batch_size=8, seq_len=16, shuffle=False)
    batch, batch_good = next(it), next(it_good)
    (l1, m1), g1 = jax.value_and_grad(lambda p: bc_loss(model, p, batch), has_aux=True)(params)
    (l2, m2), g2 = jax.value_and_grad(lambda p: bc_loss(model, p, batch_good), has_aux=True)(params)
    np.testing.assert_allclose(l1, l2, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)
    # Weight 2 on every example doubles the loss (the reward scales log-likelihood).
    twice = [Example(e.item_id, e.tokens, e.loss_mask, 2.0) for e in good]
    b2 = next(PackedBatchIterator(twice, batch_size=8, seq_len=16, shuffle=False))
    np.testing.assert_allclose(bc_loss(model, params, b2)[0], 2 * l2, rtol=1e-5)


def test_interrupted_run_resumes_to_same_params(tmp_path):
    model = _model()
    ex = _examples(np.random.default_rng(2), 8)
    cfg = BCConfig(peak_lr=3e-3, micro_batch=8, grad_accum=1, seq_len=12, epochs=6, log_every=1,
                   checkpoint_every=3)  # fmt: skip
    full, _ = train_bc(model, ex, cfg)

    class Stop(Exception):
        pass

    def stop_at_5(line):
        if line["step"] == 5:
            raise Stop

    with pytest.raises(Stop):
        train_bc(model, ex, cfg, workdir=str(tmp_path), log_fn=stop_at_5)
    resumed, lines = train_bc(model, ex, cfg, workdir=str(tmp_path))
    assert lines[0]["step"] == 4  # restarted after the step-3 checkpoint
    for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_bad_config():
    with pytest.raises(ValueError, match="micro_batch"):
        BCConfig(micro_batch=0)
    with pytest.raises(ValueError, match="divisible"):
        train_bc(_model(), _examples(np.random.default_rng(0), 4), BCConfig(micro_batch=3))
    with pytest.raises(ValueError, match="no examples"):
        train_bc(_model(), [], CFG)


def test_update_budget_cycles_the_data(tmp_path):
    """``updates=N`` trains exactly N updates whatever the data size (3 examples, 8 per batch:
    the iterator wraps around epochs), and an interrupted budgeted run resumes to the same
    parameters."""
    model = _model()
    ex = _examples(np.random.default_rng(3), 3)
    cfg = BCConfig(peak_lr=3e-3, micro_batch=8, grad_accum=2, seq_len=12, updates=5,
                   log_every=1, checkpoint_every=4)  # fmt: skip
    full, lines = train_bc(model, ex, cfg)
    assert [line["update"] for line in lines] == [1, 2, 3, 4, 5]
    assert lines[-1]["step"] == 10  # micro-steps = updates * grad_accum

    class Stop(Exception):
        pass

    def stop_at_6(line):
        if line["step"] == 6:
            raise Stop

    with pytest.raises(Stop):
        train_bc(model, ex, cfg, workdir=str(tmp_path), log_fn=stop_at_6)
    resumed, lines = train_bc(model, ex, cfg, workdir=str(tmp_path))
    assert lines[-1]["update"] == 5
    for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="updates"):
        BCConfig(updates=-1)
