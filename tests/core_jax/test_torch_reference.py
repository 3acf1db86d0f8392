"""Parity of core_jax.nn.Transformer with the PyTorch reference used by the benchmarks."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import flax.linen as fnn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

from benchmarks.torch_reference import (  # noqa: E402
    TorchTransformer,
    load_jax_params,
    next_token_loss,
)
from core_jax.nn import Transformer, TransformerConfig  # noqa: E402

BASE = dict(vocab_size=61, d_model=32, num_layers=2, num_heads=4, mlp_dim=64, max_len=64)
CONFIGS = {
    # The benchmark architecture: pre-LayerNorm, GEGLU (exact GELU), RoPE, tied embeddings.
    "gato_like": TransformerConfig(**BASE),
    # Llama-like: RMSNorm, SwiGLU, grouped-query attention, untied output head.
    "llama_like": TransformerConfig(
        **BASE, num_kv_heads=2, mlp="swiglu", norm="rmsnorm", tie_embeddings=False, qkv_bias=True
    ),
    # GPT-2-like: learned positions, GELU (tanh), biases everywhere.
    "gpt2_like": TransformerConfig(
        **BASE,
        mlp="gelu",
        positions="learned",
        gelu_approximate=True,
        qkv_bias=True,
        out_bias=True,
        mlp_bias=True,
    ),
}
ADAMW = dict(learning_rate=1e-2, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1)


def _setup(cfg, seed=0, batch=3, length=40):
    model = Transformer(cfg)
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, cfg.vocab_size, (batch, length + 1)).astype(np.int32)
    params = fnn.unbox(model.init(jax.random.key(seed), jnp.asarray(tokens[:, :-1]))["params"])
    # Non-trivial norm parameters / biases, so a mis-mapped one shows up.
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    leaves = [
        x + 0.1 * jax.random.normal(k, x.shape) if x.ndim == 1 else x
        for x, k in zip(leaves, keys, strict=True)
    ]
    params = jax.tree_util.tree_unflatten(treedef, leaves)
    tmodel = load_jax_params(TorchTransformer(cfg), params)
    return model, params, tmodel, tokens


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_logits_match(name):
    cfg = CONFIGS[name]
    model, params, tmodel, tokens = _setup(cfg)
    fresh = np.random.default_rng(123).integers(0, cfg.vocab_size, (2, 37)).astype(np.int32)
    for toks in (tokens[:, :-1], fresh):
        jax_logits = np.asarray(model.apply({"params": params}, jnp.asarray(toks)))
        with torch.no_grad():
            torch_logits = tmodel(torch.from_numpy(toks.astype(np.int64))).numpy()
        assert jax_logits.shape == torch_logits.shape
        np.testing.assert_allclose(torch_logits, jax_logits, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_one_adamw_step_matches(name):
    cfg = CONFIGS[name]
    model, params, tmodel, tokens = _setup(cfg, seed=1)
    tx = optax.adamw(
        ADAMW["learning_rate"],
        b1=ADAMW["b1"],
        b2=ADAMW["b2"],
        eps=ADAMW["eps"],
        weight_decay=ADAMW["weight_decay"],
    )
    topt = torch.optim.AdamW(
        tmodel.parameters(),
        lr=ADAMW["learning_rate"],
        betas=(ADAMW["b1"], ADAMW["b2"]),
        eps=ADAMW["eps"],
        weight_decay=ADAMW["weight_decay"],
    )

    def loss_fn(p, toks):
        logits = model.apply({"params": p}, toks[:, :-1])
        return optax.softmax_cross_entropy_with_integer_labels(logits, toks[:, 1:]).mean()

    jtoks = jnp.asarray(tokens)
    ttoks = torch.from_numpy(tokens.astype(np.int64))
    loss0, grads = jax.value_and_grad(loss_fn)(params, jtoks)
    updates, _ = tx.update(grads, tx.init(params), params)
    params1 = optax.apply_updates(params, updates)
    loss1 = loss_fn(params1, jtoks)

    tloss0 = next_token_loss(tmodel(ttoks[:, :-1]), ttoks[:, 1:])
    tloss0.backward()
    topt.step()
    with torch.no_grad():
        tloss1 = next_token_loss(tmodel(ttoks[:, :-1]), ttoks[:, 1:])

    np.testing.assert_allclose(tloss0.item(), float(loss0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(tloss1.item(), float(loss1), rtol=1e-4, atol=1e-4)
    assert float(loss1) < float(loss0)
    # The updated parameters agree too (compared through a fresh conversion). Adam's first step
    # moves every weight by about lr * sign(grad), so rounding noise in a near-zero gradient can
    # move a weight by a fraction of lr: compare at 5% of lr.
    ref = load_jax_params(TorchTransformer(cfg), params1)
    # The key bias is skipped: its exact gradient is zero (it shifts a whole softmax row), so
    # Adam turns rounding noise into +-lr.
    for (pname, p), (_, r) in zip(tmodel.named_parameters(), ref.named_parameters(), strict=True):
        if pname.endswith("attn.key.bias"):
            continue
        np.testing.assert_allclose(
            p.detach().numpy(),
            r.detach().numpy(),
            atol=0.05 * ADAMW["learning_rate"],
            err_msg=pname,
        )
