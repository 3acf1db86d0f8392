"""HF import/export: logits and greedy generation match transformers (torch, fp32) per family."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from core_jax.nn import Transformer, generate
from evol_jax.hf_import import (
    HFImportError,
    HFTokenizer,
    config_from_hf,
    load_hf_checkpoint,
    save_hf_checkpoint,
)
from tests.evol_jax.hf_testutil import make_model, make_tokenizer

torch = pytest.importorskip("torch")
torch.set_num_threads(1)

# Per family: one variant each of GQA, tied/untied head, biases, RoPE base.
FAMILIES = {
    "llama": dict(rope_theta=50000.0, attention_bias=True, mlp_bias=True),
    "qwen2": dict(tie_word_embeddings=True),
    "gpt2": dict(),
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    out = {}
    for family, overrides in FAMILIES.items():
        path = str(tmp_path_factory.mktemp(family))
        model = make_model(family, path, **overrides)
        make_tokenizer(path)
        out[family] = (path, model)
    return out


def _hf_logits(model, ids: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.as_tensor(ids)).logits.numpy()


@pytest.mark.parametrize("family", list(FAMILIES))
def test_logits_match_transformers(checkpoints, family):
    path, hf_model = checkpoints[family]
    config, params, tok = load_hf_checkpoint(path)
    ids = np.random.default_rng(1).integers(0, config.vocab_size, (2, 13)).astype(np.int32)
    ours = np.asarray(Transformer(config).apply({"params": params}, jnp.asarray(ids)))
    ref = _hf_logits(hf_model, ids)
    assert ours.shape == ref.shape
    assert np.abs(ref).max() > 1.0  # a meaningful comparison, not two near-zero tensors
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)
    assert tok.vocab_size <= config.vocab_size


@pytest.mark.parametrize("family", list(FAMILIES))
def test_greedy_generation_matches_transformers(checkpoints, family):
    path, hf_model = checkpoints[family]
    config, params, _ = load_hf_checkpoint(path, tokenizer=False)
    prompt = np.random.default_rng(2).integers(3, config.vocab_size, (1, 7)).astype(np.int32)
    n_new = 6
    hf_model.generation_config.eos_token_id = None
    with torch.no_grad():
        ref = hf_model.generate(
            torch.as_tensor(prompt),
            attention_mask=torch.ones_like(torch.as_tensor(prompt)),
            max_new_tokens=n_new,
            min_new_tokens=n_new,
            do_sample=False,
            pad_token_id=0,
        ).numpy()[:, prompt.shape[1] :]
    toks, n = generate(
        Transformer(config),
        params,
        jax.random.key(0),
        jnp.asarray(prompt),
        max_new_tokens=n_new,
        temperature=0.0,
    )
    np.testing.assert_array_equal(np.asarray(toks), ref)
    assert int(n[0]) == n_new


def test_config_mapping():
    hf = {
        "model_type": "gpt2",
        "vocab_size": 50,
        "n_embd": 32,
        "n_layer": 3,
        "n_head": 4,
        "n_positions": 40,
        "n_inner": None,
        "layer_norm_epsilon": 1e-3,
        "activation_function": "gelu_new",
    }
    cfg, family = config_from_hf(hf)
    assert family == "gpt2"
    assert (cfg.mlp_dim, cfg.max_len, cfg.norm_eps, cfg.gelu_approximate) == (128, 40, 1e-3, True)
    assert cfg.tie_embeddings and cfg.positions == "learned" and cfg.mlp == "gelu"
    cfg, _ = config_from_hf({**hf, "activation_function": "gelu"})
    assert not cfg.gelu_approximate
    llama = {
        "model_type": "llama",
        "vocab_size": 50,
        "hidden_size": 32,
        "intermediate_size": 48,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 1,
        "rms_norm_eps": 1e-5,
        "rope_theta": 1e6,
        "rope_scaling": None,
        "max_position_embeddings": 99,
    }
    cfg, family = config_from_hf(llama)
    assert family == "llama"
    assert (cfg.kv_heads, cfg.dim_per_head, cfg.rope_theta, cfg.norm_eps) == (1, 8, 1e6, 1e-5)
    assert (cfg.norm, cfg.mlp, cfg.positions, cfg.tie_embeddings) == (
        "rmsnorm",
        "swiglu",
        "rope",
        False,
    )
    cfg, _ = config_from_hf(
        {**llama, "rope_parameters": {"rope_type": "default", "rope_theta": 7.0}}
    )
    assert cfg.rope_theta == 7.0
    cfg, family = config_from_hf({**llama, "model_type": "qwen2", "tie_word_embeddings": True})
    assert family == "qwen2" and cfg.qkv_bias and not cfg.out_bias and cfg.tie_embeddings


@pytest.mark.parametrize(
    "change, match",
    [
        ({"model_type": "mistral"}, "model_type='mistral'"),
        ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "rope_scaling"),
        ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1.0}}, "rope_type='yarn'"),
        ({"hidden_act": "gelu"}, "hidden_act"),
    ],
)
def test_unsupported_llama_options(change, match):
    hf = {
        "model_type": "llama",
        "vocab_size": 50,
        "hidden_size": 32,
        "intermediate_size": 48,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
    }
    with pytest.raises(HFImportError, match=match):
        config_from_hf({**hf, **change})


def test_unsupported_qwen_and_gpt2_options():
    qwen = {
        "model_type": "qwen2",
        "vocab_size": 50,
        "hidden_size": 32,
        "intermediate_size": 48,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
    }
    with pytest.raises(HFImportError, match="use_sliding_window"):
        config_from_hf({**qwen, "use_sliding_window": True})
    gpt2 = {"model_type": "gpt2", "vocab_size": 50, "n_embd": 32, "n_layer": 1, "n_head": 4}
    gpt2["n_positions"] = 16
    with pytest.raises(HFImportError, match="scale_attn_by_inverse_layer_idx"):
        config_from_hf({**gpt2, "scale_attn_by_inverse_layer_idx": True})
    with pytest.raises(HFImportError, match="activation_function='relu'"):
        config_from_hf({**gpt2, "activation_function": "relu"})


def _rewrite(path, drop=None, add=None):
    from safetensors.numpy import load_file, save_file

    file = os.path.join(path, "model.safetensors")
    tensors = load_file(file)
    if drop:
        del tensors[drop]
    tensors.update(add or {})
    save_file(tensors, file, metadata={"format": "pt"})


def test_tensor_errors_name_the_tensor(checkpoints, tmp_path):
    import shutil

    src, _ = checkpoints["llama"]
    bad = str(tmp_path / "missing")
    shutil.copytree(src, bad)
    _rewrite(bad, drop="model.layers.1.mlp.up_proj.weight")
    with pytest.raises(HFImportError, match=r"model\.layers\.1\.mlp\.up_proj\.weight.*missing"):
        load_hf_checkpoint(bad)

    extra = str(tmp_path / "extra")
    shutil.copytree(src, extra)
    _rewrite(extra, add={"model.layers.0.self_attn.q_norm.weight": np.ones(16, np.float32)})
    with pytest.raises(HFImportError, match="q_norm"):
        load_hf_checkpoint(extra)

    shape = str(tmp_path / "shape")
    shutil.copytree(src, shape)
    with open(os.path.join(shape, "config.json")) as f:
        cfg = json.load(f)
    cfg["intermediate_size"] = 80
    with open(os.path.join(shape, "config.json"), "w") as f:
        json.dump(cfg, f)
    with pytest.raises(HFImportError, match=r"gate_proj\.weight' has shape \(96, 64\), expected"):
        load_hf_checkpoint(shape)


def test_missing_files(tmp_path, checkpoints):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_hf_checkpoint(str(tmp_path))
    src, _ = checkpoints["gpt2"]
    d = tmp_path / "nomodel"
    d.mkdir()
    (d / "config.json").write_text(open(os.path.join(src, "config.json")).read())
    (d / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match="pytorch_model.bin"):
        load_hf_checkpoint(str(d))
    (d / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(HFImportError, match="cannot read safetensors"):
        load_hf_checkpoint(str(d))


def test_sharded_checkpoint_equals_single(checkpoints, tmp_path):
    path, hf_model = checkpoints["qwen2"]
    sharded = str(tmp_path / "sharded")
    hf_model.save_pretrained(sharded, max_shard_size="60KB")
    assert os.path.exists(os.path.join(sharded, "model.safetensors.index.json"))
    _, p1, _ = load_hf_checkpoint(path, tokenizer=False)
    _, p2, _ = load_hf_checkpoint(sharded, tokenizer=False)
    jax.tree.map(np.testing.assert_array_equal, p1, p2)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_export_round_trip(checkpoints, family, tmp_path):
    from transformers import AutoModelForCausalLM

    path, hf_model = checkpoints[family]
    config, params, tok = load_hf_checkpoint(path)
    out = save_hf_checkpoint(str(tmp_path / "export"), config, params, tokenizer=tok)
    config2, params2, tok2 = load_hf_checkpoint(out)
    assert config2 == config
    jax.tree.map(np.testing.assert_array_equal, params, params2)
    assert tok2.encode("Thought: move</s>") == tok.encode("Thought: move</s>")
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = np.random.default_rng(3).integers(0, config.vocab_size, (1, 9))
    np.testing.assert_allclose(_hf_logits(reloaded, ids), _hf_logits(hf_model, ids), atol=1e-5)


def test_tokenizer_matches_transformers(tmp_path):
    from transformers import AutoTokenizer

    make_tokenizer(str(tmp_path))
    ours = HFTokenizer.from_dir(str(tmp_path))
    ref = AutoTokenizer.from_pretrained(str(tmp_path))
    text = "<s>[INST] Your goal: go to the red ball [/INST] Thought:\nmove forward</s><|im_end|>"
    ids = ours.encode(text)
    assert ids == ref.encode(text, add_special_tokens=False)
    assert ids[0] == ours.bos_id == ref.bos_token_id
    assert ours.eos_id == ref.eos_token_id and ours.eos_id in ids
    assert ours.decode(ids) == text
    assert ours.vocab_size == len(ref)
    with pytest.raises(ValueError, match="outside"):
        ours.decode([ours.vocab_size])
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        HFTokenizer.from_dir(str(tmp_path / "nowhere"))


def test_bf16_checkpoint_and_dtypes(checkpoints, tmp_path):
    path, hf_model = checkpoints["llama"]
    bf16 = str(tmp_path / "bf16")
    hf_model.to(torch.bfloat16).save_pretrained(bf16)
    hf_model.to(torch.float32)
    make_tokenizer(bf16)
    config, params, _ = load_hf_checkpoint(bf16, param_dtype="float32", dtype="bfloat16")
    assert config.dtype == "bfloat16" and config.param_dtype == "float32"
    ref = hf_model.model.layers[0].self_attn.q_proj.weight.detach().to(torch.bfloat16).float()
    want = ref.numpy().T.reshape(64, 4, 16)
    np.testing.assert_array_equal(np.asarray(params["layer_0"]["attn"]["query"]["kernel"]), want)
    _, params16, _ = load_hf_checkpoint(bf16, param_dtype="bfloat16", tokenizer=False)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(params16))


def test_gpt2_max_len_override(checkpoints):
    path, hf_model = checkpoints["gpt2"]
    config, params, _ = load_hf_checkpoint(path, max_len=16, tokenizer=False)
    assert config.max_len == 16 and params["pos_embedding"].shape == (16, 64)
    ids = np.random.default_rng(4).integers(0, config.vocab_size, (1, 16)).astype(np.int32)
    ours = np.asarray(Transformer(config).apply({"params": params}, jnp.asarray(ids)))
    np.testing.assert_allclose(ours, _hf_logits(hf_model, ids), atol=1e-4, rtol=0)
    with pytest.raises(HFImportError, match="n_positions=64"):
        load_hf_checkpoint(path, max_len=65, tokenizer=False)


def test_tied_head_written_anyway(checkpoints, tmp_path):
    import shutil

    src, _ = checkpoints["qwen2"]  # tie_word_embeddings=True: no lm_head.weight on disk
    from safetensors.numpy import load_file

    emb = load_file(os.path.join(src, "model.safetensors"))["model.embed_tokens.weight"]
    same = str(tmp_path / "same")
    shutil.copytree(src, same)
    _rewrite(same, add={"lm_head.weight": emb.copy()})
    _, p_same, _ = load_hf_checkpoint(same, tokenizer=False)
    assert "lm_head" not in p_same
    differs = str(tmp_path / "differs")
    shutil.copytree(src, differs)
    _rewrite(differs, add={"lm_head.weight": emb + 1.0})
    with pytest.raises(HFImportError, match="lm_head.weight differs"):
        load_hf_checkpoint(differs, tokenizer=False)
