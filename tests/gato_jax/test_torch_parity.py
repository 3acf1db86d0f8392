"""Parity of gato_jax.models.Gato with its PyTorch twin (benchmarks/gato_torch.py).

Same parameters (random, including non-trivial norms and biases), fresh random windows with
text, image patches (random pixels), discrete and continuous tokens and prompts: eval-mode
logits and the masked loss agree to 1e-4 in fp32.
"""

import dataclasses
import functools

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import flax.linen as fnn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from benchmarks.gato_torch import (  # noqa: E402
    TorchGato,
    gato_inputs_to_torch,
    gato_loss,
    load_gato_params,
    patch_position_ids,
)
from gato_jax.configs import TokenizerConfig, get_config  # noqa: E402
from gato_jax.models import Gato  # noqa: E402
from gato_jax.sequence import build_batch, encode_episode, stack_episodes  # noqa: E402
from gato_jax.spec import EpisodeSpec, FieldSpec, TokenKind  # noqa: E402
from gato_jax.tokenizer import patch_position_ids as jax_patch_position_ids  # noqa: E402
from gato_jax.train import gato_loss as jax_gato_loss  # noqa: E402


def _config(**model_changes):
    cfg = get_config("gato_tiny")
    t = dataclasses.replace(cfg.model.transformer, stochastic_depth=0.0)
    return dataclasses.replace(cfg.model, transformer=t, **model_changes), cfg.tokenizer


def _spec(tok: TokenizerConfig) -> EpisodeSpec:
    return EpisodeSpec(
        {
            "instruction": FieldSpec("text", (4,)),
            "cam": FieldSpec("image", (32, 32, 3)),
            "buttons": FieldSpec("discrete", (2,), low=0, high=9),
            "proprio": FieldSpec("continuous", (3,)),
        },
        {
            "torque": FieldSpec("continuous", (2,), low=-1.0, high=1.0),
            "grip": FieldSpec("discrete", (), low=0, high=1),
        },
        tok,
    )


def _episode(rng: np.random.Generator, steps: int) -> dict:
    return {
        "observation": {
            "instruction": [
                rng.integers(0, 32000, rng.integers(1, 5)).astype(np.int32) for _ in range(steps)
            ],
            "cam": rng.integers(0, 256, (steps, 32, 32, 3), dtype=np.uint8),
            "buttons": rng.integers(0, 10, (steps, 2)),
            "proprio": rng.normal(0, 5, (steps, 3)).astype(np.float32),
        },
        "action": {
            "torque": rng.uniform(-1, 1, (steps, 2)).astype(np.float32),
            "grip": rng.integers(0, 2, (steps,)),
        },
    }


@functools.lru_cache
def _batch(tok: TokenizerConfig, seed: int, batch: int = 3, steps: int = 6):
    """A random batch of windows (with prompts) from the episode spec above."""
    spec = _spec(tok)
    rng = np.random.default_rng(seed)
    eps = stack_episodes([encode_episode(_episode(rng, steps), spec) for _ in range(batch)])
    prompts = stack_episodes([encode_episode(_episode(rng, steps), spec) for _ in range(batch)])
    keys = jax.random.split(jax.random.key(seed), batch)
    return jax.device_get(build_batch(eps, keys, spec, prompts))


def _perturbed_params(model, batch, seed):
    params = fnn.unbox(jax.jit(model.init)(jax.random.key(seed), batch)["params"])
    # Non-trivial norm scales / biases, so a mis-mapped one shows up.
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    leaves = [
        x + 0.1 * jax.random.normal(k, x.shape) if x.ndim == 1 else x
        for x, k in zip(leaves, keys, strict=True)
    ]
    return jax.tree_util.tree_unflatten(treedef, leaves)


def _kinds_present(batch):
    kinds = set(np.unique(np.asarray(batch.kinds)).tolist())
    return kinds


@pytest.mark.parametrize("resnet_width", [32, 64])
def test_logits_and_loss_match_torch(resnet_width):
    cfg, tok = _config(resnet_width=resnet_width)
    model = Gato(cfg)
    init_batch = _batch(tok, seed=0)
    params = _perturbed_params(model, init_batch, seed=resnet_width)
    tmodel = load_gato_params(TorchGato(cfg), params).eval()
    apply = jax.jit(model.apply)
    for seed in (1, 2):  # fresh windows, not the init batch
        batch = _batch(tok, seed=seed)
        kinds = _kinds_present(batch)
        assert set(TokenKind) - {TokenKind.PAD} <= kinds, kinds
        assert np.asarray(batch.patch_valid).sum() >= 3 * 4  # image patches in every row
        assert np.asarray(batch.loss_mask).sum() > 0
        logits = np.asarray(apply({"params": params}, batch))
        loss = float(jax_gato_loss(jnp.asarray(logits), batch)[0])
        tin = gato_inputs_to_torch(batch)
        with torch.no_grad():
            tlogits = tmodel(tin)
            tloss = float(gato_loss(tlogits, tin))
        assert tlogits.shape == logits.shape == (3, tok.seq_len, cfg.transformer.vocab_size)
        np.testing.assert_allclose(tlogits.numpy(), logits, atol=1e-4, rtol=1e-4)
        np.testing.assert_allclose(tloss, loss, atol=1e-4, rtol=1e-4)


def test_loss_gradients_match_torch():
    """Backward parity: gradients of the masked loss w.r.t. every parameter group."""
    cfg, tok = _config()
    model = Gato(cfg)
    batch = _batch(tok, seed=3, batch=2)
    params = _perturbed_params(model, batch, seed=5)
    tmodel = load_gato_params(TorchGato(cfg), params)
    grads = jax.jit(jax.grad(lambda p: jax_gato_loss(model.apply({"params": p}, batch), batch)[0]))(
        params
    )
    tin = gato_inputs_to_torch(batch)
    gato_loss(tmodel(tin), tin).backward()
    pairs = {
        "patch_embed/stem": (
            grads["patch_embed"]["stem"]["kernel"],
            tmodel.patch_embed.stem.weight,
        ),
        "patch_embed/proj": (
            grads["patch_embed"]["proj"]["kernel"],
            tmodel.patch_embed.proj.weight,
        ),
        "local_position_embedding": (
            grads["local_position_embedding"],
            tmodel.local_position_embedding,
        ),
        "patch_row_embedding": (grads["patch_row_embedding"], tmodel.patch_row_embedding),
        "embedder": (
            grads["transformer"]["embedder"]["embedding"],
            tmodel.transformer.embedder.weight,
        ),
    }
    for name, (g, p) in pairs.items():
        g = np.asarray(g)
        tg = p.grad.numpy()
        if g.ndim == 4:  # flax conv [kh, kw, in, out] -> torch [out, in, kh, kw]
            g = g.transpose(3, 2, 0, 1)
        elif name == "patch_embed/proj":
            g = g.T
        assert np.abs(g).max() > 0, name
        np.testing.assert_allclose(tg, g, atol=1e-5, rtol=1e-4, err_msg=name)


def test_patch_position_ids_match_jax():
    rng = np.random.default_rng(0)
    lo = rng.integers(0, 120, (50,))
    hi = lo + rng.integers(0, 9, (50,))  # includes empty intervals (hi == lo)
    iv = np.stack([lo, hi], -1)
    np.testing.assert_array_equal(
        patch_position_ids(torch.from_numpy(iv)).numpy(), np.asarray(jax_patch_position_ids(iv))
    )
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        ids = patch_position_ids(torch.from_numpy(iv), g).numpy()
        assert np.all(ids >= lo) and np.all(ids < np.maximum(hi, lo + 1))


def test_train_mode_is_stochastic_and_eval_is_not():
    cfg, tok = _config()
    cfg = dataclasses.replace(
        cfg, transformer=dataclasses.replace(cfg.transformer, stochastic_depth=0.5)
    )
    batch = _batch(tok, seed=4, batch=2)
    tmodel = TorchGato(cfg)
    tin = gato_inputs_to_torch(batch)
    with torch.no_grad():
        e1, e2 = tmodel(tin), tmodel(tin)
        t1 = tmodel(tin, torch.Generator().manual_seed(1))
        t2 = tmodel(tin, torch.Generator().manual_seed(2))
    assert torch.equal(e1, e2)
    assert (t1 - t2).abs().max() > 1e-4


def test_load_rejects_other_config():
    cfg, tok = _config()
    params = fnn.unbox(jax.jit(Gato(cfg).init)(jax.random.key(0), _batch(tok, seed=0))["params"])
    other = dataclasses.replace(cfg, resnet_width=64)
    with pytest.raises(ValueError, match="patch_embed/stem/kernel"):
        load_gato_params(TorchGato(other), params)
