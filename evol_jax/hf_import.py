"""Hugging Face checkpoints <-> :class:`core_jax.nn.Transformer` (Llama, Qwen2, GPT-2 families).

A local Hugging Face directory (``config.json``, ``model.safetensors`` or sharded safetensors with
``model.safetensors.index.json``, ``tokenizer.json``) becomes a :class:`TransformerConfig`, a
plain Flax params pytree and a :class:`HFTokenizer`; no torch is needed. Every tensor is accounted
for: a missing tensor, a tensor of the wrong shape, or a tensor the mapping does not know is an
error naming it (a silently ignored tensor would be a silently wrong model). Architectures and
options the shared transformer cannot express exactly (RoPE scaling, sliding windows, other
activations, ...) are rejected with an error naming the option.

>>> config, params, tokenizer = load_hf_checkpoint("/path/to/llama")   # doctest: +SKIP
>>> logits = Transformer(config).apply({"params": params}, tokens)      # doctest: +SKIP
>>> save_hf_checkpoint("/tmp/out", config, params, tokenizer=tokenizer)  # doctest: +SKIP

Layouts: HF ``nn.Linear`` stores ``[out, in]`` (transposed here), GPT-2's ``Conv1D`` stores
``[in, out]`` (used as is, its fused ``c_attn`` split into query/key/value). Hugging Face
Llama/Qwen2 checkpoints already use the rotate-half RoPE convention of
:func:`core_jax.nn.rope`, so no permutation of the query/key rows is needed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from core_jax.nn.config import TransformerConfig

FAMILIES = ("llama", "qwen2", "gpt2")
# Tensors some checkpoints carry that are not parameters (causal-mask and RoPE buffers).
_IGNORED = (
    re.compile(r"(^|\.)attn\.(masked_)?bias$"),
    re.compile(r"(^|\.)rotary_emb\.inv_freq$"),
)


class HFImportError(ValueError):
    """A checkpoint that cannot be imported exactly (names the file, option or tensor)."""


# ------------------------------------------------------------------------------------------------
# Config mapping
# ------------------------------------------------------------------------------------------------


def read_hf_config(path: str) -> dict[str, Any]:
    """Reads ``config.json`` of a local Hugging Face model directory."""
    file = os.path.join(path, "config.json")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"not a directory: {path}")
    if not os.path.exists(file):
        raise FileNotFoundError(f"no config.json in {path}")
    try:
        with open(file) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise HFImportError(f"{file}: not valid JSON ({e})") from e


def _rope_theta(hf: dict[str, Any]) -> float:
    """RoPE base from either the transformers>=5 ``rope_parameters`` or the older keys."""
    params = hf.get("rope_parameters")
    if params is not None:
        kind = params.get("rope_type", params.get("type", "default"))
        if kind != "default":
            raise HFImportError(
                f"rope_parameters.rope_type={kind!r} is not supported (only 'default' RoPE)"
            )
        extra = sorted(set(params) - {"rope_type", "type", "rope_theta"})
        if extra:
            raise HFImportError(f"rope_parameters has unsupported entries {extra}")
        return float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))
    scaling = hf.get("rope_scaling")
    if scaling is not None:
        kind = scaling.get("rope_type", scaling.get("type"))
        if kind != "default":
            raise HFImportError(
                f"rope_scaling={scaling!r} is not supported (only unscaled 'default' RoPE)"
            )
    return float(hf.get("rope_theta", 10000.0))


def _require(hf: dict[str, Any], key: str, allowed: Sequence[Any], default: Any = None) -> Any:
    value = hf.get(key, default)
    if value not in allowed:
        raise HFImportError(f"config.{key}={value!r} is not supported (supported: {list(allowed)})")
    return value


def config_from_hf(
    hf: dict[str, Any],
    *,
    dtype: str = "float32",
    param_dtype: str = "float32",
    max_len: int | None = None,
) -> tuple[TransformerConfig, str]:
    """Maps a Hugging Face ``config.json`` dict to a :class:`TransformerConfig`.

    Args:
      hf: the parsed ``config.json``.
      dtype: compute dtype of the returned config.
      param_dtype: parameter dtype (tensors are cast to it on load).
      max_len: override of ``max_len`` (default: ``max_position_embeddings`` / ``n_positions``).
        For GPT-2 it must not exceed ``n_positions`` (the learned table is cut to it).

    Returns:
      ``(config, family)`` with ``family`` one of :data:`FAMILIES`.

    Raises:
      HFImportError: unsupported ``model_type`` or option (the message names it).
    """
    family = hf.get("model_type")
    if family not in FAMILIES:
        raise HFImportError(
            f"config.model_type={family!r} is not supported (supported: {list(FAMILIES)})"
        )
    common = dict(dtype=dtype, param_dtype=param_dtype, embedding_scale=False)
    if family == "gpt2":
        act = _require(
            hf, "activation_function", ("gelu_new", "gelu_pytorch_tanh", "gelu"), "gelu_new"
        )
        _require(hf, "scale_attn_weights", (True,), True)
        _require(hf, "scale_attn_by_inverse_layer_idx", (False,), False)
        _require(hf, "add_cross_attention", (False,), False)
        d = hf["n_embd"]
        n_pos = hf["n_positions"]
        if max_len is not None and max_len > n_pos:
            raise HFImportError(f"max_len={max_len} exceeds GPT-2's n_positions={n_pos}")
        cfg = TransformerConfig(
            vocab_size=hf["vocab_size"],
            d_model=d,
            num_layers=hf["n_layer"],
            num_heads=hf["n_head"],
            mlp_dim=hf.get("n_inner") or 4 * d,
            mlp="gelu",
            norm="layernorm",
            positions="learned",
            max_len=max_len or n_pos,
            tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
            norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
            qkv_bias=True,
            out_bias=True,
            mlp_bias=True,
            norm_bias=True,
            gelu_approximate=act != "gelu",
            **common,
        )
        return cfg, family

    _require(hf, "hidden_act", ("silu",), "silu")
    if hf.get("partial_rotary_factor", 1.0) != 1.0:
        raise HFImportError(f"config.partial_rotary_factor={hf['partial_rotary_factor']!r}")
    if family == "qwen2":
        if hf.get("use_sliding_window", False):
            raise HFImportError("config.use_sliding_window=True is not supported")
        kinds = set(hf.get("layer_types") or ["full_attention"])
        if kinds != {"full_attention"}:
            raise HFImportError(f"config.layer_types={sorted(kinds)} (only full_attention)")
        qkv_bias, out_bias, mlp_bias = True, False, False
    else:
        qkv_bias = out_bias = bool(hf.get("attention_bias", False))
        mlp_bias = bool(hf.get("mlp_bias", False))
    d, h = hf["hidden_size"], hf["num_attention_heads"]
    cfg = TransformerConfig(
        vocab_size=hf["vocab_size"],
        d_model=d,
        num_layers=hf["num_hidden_layers"],
        num_heads=h,
        num_kv_heads=hf.get("num_key_value_heads") or h,
        head_dim=hf.get("head_dim") or d // h,
        mlp_dim=hf["intermediate_size"],
        mlp="swiglu",
        norm="rmsnorm",
        positions="rope",
        max_len=max_len or hf.get("max_position_embeddings", 2048),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        rope_theta=_rope_theta(hf),
        qkv_bias=qkv_bias,
        out_bias=out_bias,
        mlp_bias=mlp_bias,
        **common,
    )
    return cfg, family


def infer_family(config: TransformerConfig) -> str:
    """The Hugging Face family a config can be exported as (raises if none fits exactly)."""
    c = config
    if c.embedding_scale:
        raise HFImportError("embedding_scale=True has no Hugging Face Llama/Qwen2/GPT-2 equivalent")
    if (c.mlp, c.norm, c.positions) == ("gelu", "layernorm", "learned"):
        if (
            not (c.qkv_bias and c.out_bias and c.mlp_bias and c.norm_bias)
            or c.kv_heads != c.num_heads
        ):
            raise HFImportError("GPT-2 export needs all biases and num_kv_heads == num_heads")
        if c.dim_per_head * c.num_heads != c.d_model:
            raise HFImportError("GPT-2 export needs head_dim * num_heads == d_model")
        return "gpt2"
    if (c.mlp, c.norm, c.positions) == ("swiglu", "rmsnorm", "rope"):
        if c.qkv_bias and not c.out_bias and not c.mlp_bias:
            return "qwen2"
        if c.qkv_bias == c.out_bias:
            return "llama"
        raise HFImportError(f"qkv_bias={c.qkv_bias}, out_bias={c.out_bias}: no HF family matches")
    raise HFImportError(
        f"mlp={c.mlp!r}, norm={c.norm!r}, positions={c.positions!r}: no Hugging Face family "
        "(llama/qwen2: swiglu+rmsnorm+rope; gpt2: gelu+layernorm+learned)"
    )


def config_to_hf(config: TransformerConfig, family: str | None = None) -> dict[str, Any]:
    """The ``config.json`` dict of a Hugging Face model equivalent to ``config``."""
    family = family or infer_family(config)
    c = config
    torch_dtype = c.param_dtype
    if family == "gpt2":
        return {
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            "vocab_size": c.vocab_size,
            "n_embd": c.d_model,
            "n_layer": c.num_layers,
            "n_head": c.num_heads,
            "n_inner": c.mlp_dim,
            "n_positions": c.max_len,
            "activation_function": "gelu_new" if c.gelu_approximate else "gelu",
            "layer_norm_epsilon": c.norm_eps,
            "tie_word_embeddings": c.tie_embeddings,
            "scale_attn_weights": True,
            "scale_attn_by_inverse_layer_idx": False,
            "reorder_and_upcast_attn": False,
            "dtype": torch_dtype,
        }
    out = {
        "architectures": ["Qwen2ForCausalLM" if family == "qwen2" else "LlamaForCausalLM"],
        "model_type": family,
        "vocab_size": c.vocab_size,
        "hidden_size": c.d_model,
        "intermediate_size": c.mlp_dim,
        "num_hidden_layers": c.num_layers,
        "num_attention_heads": c.num_heads,
        "num_key_value_heads": c.kv_heads,
        "head_dim": c.dim_per_head,
        "hidden_act": "silu",
        "max_position_embeddings": c.max_len,
        "rms_norm_eps": c.norm_eps,
        "rope_theta": c.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": c.rope_theta},
        "tie_word_embeddings": c.tie_embeddings,
        "dtype": torch_dtype,
    }
    if family == "llama":
        out.update(attention_bias=c.qkv_bias, mlp_bias=c.mlp_bias)
    else:
        out.update(use_sliding_window=False, sliding_window=None)
    return out


# ------------------------------------------------------------------------------------------------
# Tensor mapping
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Entry:
    """One HF tensor <-> one Flax leaf (GPT-2's fused c_attn is three entries with a slice)."""

    flax_path: tuple[str, ...]
    hf_name: str
    hf_shape: tuple[int, ...]
    to_flax: Callable[[np.ndarray], np.ndarray]
    # Flax leaf -> the (part of the) HF tensor it came from; parts are concatenated on export.
    to_hf: Callable[[np.ndarray], np.ndarray]
    part: int = 0  # index of this part along the HF tensor's last axis (GPT-2 c_attn)


def _linear(path, name, out_shape: tuple[int, ...], in_shape: tuple[int, ...]) -> _Entry:
    """HF ``nn.Linear`` weight ``[prod(out), prod(in)]`` <-> Flax kernel ``[*in, *out]``."""
    n_out, n_in = int(np.prod(out_shape)), int(np.prod(in_shape))
    return _Entry(
        path,
        name,
        (n_out, n_in),
        lambda w: w.T.reshape(*in_shape, *out_shape),
        lambda k: k.reshape(n_in, n_out).T,
    )


def _plain(path, name, shape: tuple[int, ...], flax_shape: tuple[int, ...] | None = None) -> _Entry:
    flax_shape = shape if flax_shape is None else flax_shape
    return _Entry(path, name, shape, lambda w: w.reshape(flax_shape), lambda k: k.reshape(shape))


def _llama_entries(c: TransformerConfig, prefix: str) -> list[_Entry]:
    d, h, kv, hd, f = c.d_model, c.num_heads, c.kv_heads, c.dim_per_head, c.mlp_dim
    p = prefix
    out = [_plain(("embedder", "embedding"), f"{p}embed_tokens.weight", (c.vocab_size, d))]
    for i in range(c.num_layers):
        L, n = f"layer_{i}", f"{p}layers.{i}."
        out += [
            _plain((L, "attn_norm", "scale"), n + "input_layernorm.weight", (d,)),
            _plain((L, "mlp_norm", "scale"), n + "post_attention_layernorm.weight", (d,)),
            _linear((L, "attn", "query", "kernel"), n + "self_attn.q_proj.weight", (h, hd), (d,)),
            _linear((L, "attn", "key", "kernel"), n + "self_attn.k_proj.weight", (kv, hd), (d,)),
            _linear((L, "attn", "value", "kernel"), n + "self_attn.v_proj.weight", (kv, hd), (d,)),
            _linear((L, "attn", "out", "kernel"), n + "self_attn.o_proj.weight", (d,), (h, hd)),
            _linear((L, "mlp", "wi_0", "kernel"), n + "mlp.gate_proj.weight", (f,), (d,)),
            _linear((L, "mlp", "wi_1", "kernel"), n + "mlp.up_proj.weight", (f,), (d,)),
            _linear((L, "mlp", "wo", "kernel"), n + "mlp.down_proj.weight", (d,), (f,)),
        ]
        if c.qkv_bias:
            for proj, heads in (("query", h), ("key", kv), ("value", kv)):
                hf = {"query": "q", "key": "k", "value": "v"}[proj]
                out.append(
                    _plain(
                        (L, "attn", proj, "bias"),
                        n + f"self_attn.{hf}_proj.bias",
                        (heads * hd,),
                        (heads, hd),
                    )
                )
        if c.out_bias:
            out.append(_plain((L, "attn", "out", "bias"), n + "self_attn.o_proj.bias", (d,)))
        if c.mlp_bias:
            out += [
                _plain((L, "mlp", "wi_0", "bias"), n + "mlp.gate_proj.bias", (f,)),
                _plain((L, "mlp", "wi_1", "bias"), n + "mlp.up_proj.bias", (f,)),
                _plain((L, "mlp", "wo", "bias"), n + "mlp.down_proj.bias", (d,)),
            ]
    out.append(_plain(("final_norm", "scale"), f"{p}norm.weight", (d,)))
    if not c.tie_embeddings:
        out.append(_linear(("lm_head", "kernel"), "lm_head.weight", (c.vocab_size,), (d,)))
    return out


def _c_attn_part(path, name, d: int, h: int, hd: int, part: int, bias: bool) -> _Entry:
    """One of q/k/v from GPT-2's fused ``c_attn`` (``Conv1D``: weight ``[in, out]``)."""
    sl = slice(part * d, (part + 1) * d)
    if bias:
        return _Entry(
            path, name, (3 * d,), lambda w: w[sl].reshape(h, hd), lambda k: k.reshape(d), part
        )
    return _Entry(
        path,
        name,
        (d, 3 * d),
        lambda w: w[:, sl].reshape(d, h, hd),
        lambda k: k.reshape(d, d),
        part,
    )


def _gpt2_entries(c: TransformerConfig, prefix: str) -> list[_Entry]:
    d, h, hd, f = c.d_model, c.num_heads, c.dim_per_head, c.mlp_dim
    p = prefix
    out = [
        _plain(("embedder", "embedding"), f"{p}wte.weight", (c.vocab_size, d)),
        _Entry(
            ("pos_embedding",),
            f"{p}wpe.weight",
            (c.max_len, d),
            lambda w: w,
            lambda k: k,
        ),
    ]
    for i in range(c.num_layers):
        L, n = f"layer_{i}", f"{p}h.{i}."
        for norm, hf in (("attn_norm", "ln_1"), ("mlp_norm", "ln_2")):
            out += [
                _plain((L, norm, "scale"), n + f"{hf}.weight", (d,)),
                _plain((L, norm, "bias"), n + f"{hf}.bias", (d,)),
            ]
        for part, proj in enumerate(("query", "key", "value")):
            out += [
                _c_attn_part(
                    (L, "attn", proj, "kernel"), n + "attn.c_attn.weight", d, h, hd, part, 0
                ),
                _c_attn_part((L, "attn", proj, "bias"), n + "attn.c_attn.bias", d, h, hd, part, 1),
            ]
        out += [
            _plain((L, "attn", "out", "kernel"), n + "attn.c_proj.weight", (d, d), (h, hd, d)),
            _plain((L, "attn", "out", "bias"), n + "attn.c_proj.bias", (d,)),
            _plain((L, "mlp", "wi", "kernel"), n + "mlp.c_fc.weight", (d, f)),
            _plain((L, "mlp", "wi", "bias"), n + "mlp.c_fc.bias", (f,)),
            _plain((L, "mlp", "wo", "kernel"), n + "mlp.c_proj.weight", (f, d)),
            _plain((L, "mlp", "wo", "bias"), n + "mlp.c_proj.bias", (d,)),
        ]
    out += [
        _plain(("final_norm", "scale"), f"{p}ln_f.weight", (d,)),
        _plain(("final_norm", "bias"), f"{p}ln_f.bias", (d,)),
    ]
    if not c.tie_embeddings:
        out.append(_linear(("lm_head", "kernel"), "lm_head.weight", (c.vocab_size,), (d,)))
    return out


def _entries(config: TransformerConfig, family: str, prefix: str) -> list[_Entry]:
    if family == "gpt2":
        return _gpt2_entries(config, prefix)
    return _llama_entries(config, prefix)


# ------------------------------------------------------------------------------------------------
# Safetensors reading
# ------------------------------------------------------------------------------------------------


class _SafetensorsDir:
    """Lazy reader over ``model.safetensors`` or an index of shards."""

    def __init__(self, path: str):
        from safetensors import safe_open

        single = os.path.join(path, "model.safetensors")
        index = os.path.join(path, "model.safetensors.index.json")
        listed: dict[str, str] | None = None
        if os.path.exists(index):
            try:
                with open(index) as f:
                    listed = json.load(f)["weight_map"]
            except (json.JSONDecodeError, KeyError) as e:
                raise HFImportError(f"{index}: not a safetensors index ({e!r})") from e
            files = sorted({os.path.join(path, shard) for shard in listed.values()})
        elif os.path.exists(single):
            files = [single]
        else:
            others = [f for f in os.listdir(path) if f.endswith((".bin", ".pt", ".pth", ".h5"))]
            hint = f" (found {others}: convert to safetensors first)" if others else ""
            raise FileNotFoundError(
                f"no model.safetensors or model.safetensors.index.json in {path}{hint}"
            )
        self._files: dict[str, Any] = {}
        self._where: dict[str, str] = {}
        for file in files:
            if not os.path.exists(file):
                raise FileNotFoundError(f"safetensors shard listed in the index is missing: {file}")
            try:
                handle = safe_open(file, framework="numpy")
            except Exception as e:  # safetensors raises its own error types
                raise HFImportError(f"{file}: cannot read safetensors ({e})") from e
            self._files[file] = handle
            for name in handle.keys():
                self._where[name] = file
        if listed is not None:
            missing = sorted(n for n in listed if n not in self._where)
            if missing:
                raise HFImportError(f"index lists tensors absent from their shards: {missing[:5]}")

    def names(self) -> set[str]:
        return set(self._where)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._files[self._where[name]].get_slice(name).get_shape())

    def get(self, name: str) -> np.ndarray:
        return self._files[self._where[name]].get_tensor(name)


def _prefix(names: set[str], family: str) -> str:
    probe = "wte.weight" if family == "gpt2" else "embed_tokens.weight"
    for p in ("transformer.", "model.", ""):
        if p + probe in names:
            return p
    raise HFImportError(f"no token embedding tensor (*{probe}) in the checkpoint")


def _set(tree: dict, path: tuple[str, ...], value) -> None:
    for k in path[:-1]:
        tree = tree.setdefault(k, {})
    tree[path[-1]] = value


def _expected_shapes(config: TransformerConfig) -> dict[tuple[str, ...], tuple[int, ...]]:
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    from flax import traverse_util

    from core_jax.nn.transformer import Transformer

    abstract = jax.eval_shape(
        lambda: Transformer(config).init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))
    )["params"]
    flat = traverse_util.flatten_dict(nn.meta.unbox(abstract))
    return {k: tuple(v.shape) for k, v in flat.items()}


def load_hf_params(path: str, config: TransformerConfig, family: str) -> dict[str, Any]:
    """Reads the safetensors of ``path`` into a Flax params pytree for ``Transformer(config)``.

    Raises:
      HFImportError: a tensor is missing, has the wrong shape, or is not used by the mapping.
    """
    import jax.numpy as jnp

    reader = _SafetensorsDir(path)
    names = reader.names()
    prefix = _prefix(names, family)
    entries = _entries(config, family, prefix)
    expected = _expected_shapes(config)
    dtype = config.params_dtype
    params: dict = {}
    used = set()
    for e in entries:
        if e.hf_name not in names:
            raise HFImportError(
                f"tensor {e.hf_name!r} (expected shape {e.hf_shape}) is missing from {path}"
            )
        shape = reader.shape(e.hf_name)
        if family == "gpt2" and e.flax_path == ("pos_embedding",):
            if shape[1:] != e.hf_shape[1:] or shape[0] < e.hf_shape[0]:
                raise HFImportError(
                    f"tensor {e.hf_name!r} has shape {shape}, expected at least {e.hf_shape}"
                )
            value = reader.get(e.hf_name)[: e.hf_shape[0]]
        else:
            if shape != e.hf_shape:
                raise HFImportError(
                    f"tensor {e.hf_name!r} has shape {shape}, expected {e.hf_shape}"
                )
            value = reader.get(e.hf_name)
        leaf = e.to_flax(value)
        want = expected.get(e.flax_path)
        if want is None or leaf.shape != want:  # a mapping bug, not a user error
            raise AssertionError(f"mapping of {e.hf_name} -> {e.flax_path}: {leaf.shape} vs {want}")
        _set(params, e.flax_path, jnp.asarray(np.asarray(leaf).astype(dtype)))
        used.add(e.hf_name)
    if config.tie_embeddings and "lm_head.weight" in names:
        # Some exporters write the tied head anyway; accept it only if it really is the table.
        emb = entries[0].hf_name
        if not np.array_equal(reader.get("lm_head.weight"), reader.get(emb)):
            raise HFImportError(
                "tie_word_embeddings=True but lm_head.weight differs from the embedding table"
            )
        used.add("lm_head.weight")
    unused = sorted(n for n in names - used if not any(p.search(n) for p in _IGNORED))
    if unused:
        raise HFImportError(f"tensors not used by the {family} mapping: {unused[:8]}")
    missing = sorted(set(expected) - {e.flax_path for e in entries})
    if missing:
        raise AssertionError(f"mapping leaves Flax parameters unset: {missing}")
    return params


def load_hf_checkpoint(
    path: str,
    *,
    dtype: str = "float32",
    param_dtype: str = "float32",
    max_len: int | None = None,
    tokenizer: bool = True,
) -> tuple[TransformerConfig, dict[str, Any], HFTokenizer | None]:
    """Imports a local Llama / Qwen2 / GPT-2 checkpoint directory.

    Args:
      path: directory with ``config.json``, ``model.safetensors`` (or an index with shards) and,
        unless ``tokenizer=False``, ``tokenizer.json``.
      dtype: compute dtype of the returned config.
      param_dtype: dtype the parameters are cast to.
      max_len: ``TransformerConfig.max_len`` override (default from the HF config).
      tokenizer: also load the tokenizer (``None`` is returned in its place otherwise).

    Returns:
      ``(config, params, tokenizer)``: ``Transformer(config).apply({"params": params}, tokens)``
      gives the Hugging Face model's logits.
    """
    hf = read_hf_config(path)
    config, family = config_from_hf(hf, dtype=dtype, param_dtype=param_dtype, max_len=max_len)
    params = load_hf_params(path, config, family)
    tok = HFTokenizer.from_dir(path) if tokenizer else None
    if tok is not None and tok.vocab_size > config.vocab_size:
        raise HFImportError(
            f"tokenizer has {tok.vocab_size} tokens but the model's vocab_size is "
            f"{config.vocab_size}"
        )
    return config, params, tok


def save_hf_checkpoint(
    path: str,
    config: TransformerConfig,
    params: dict[str, Any],
    *,
    family: str | None = None,
    tokenizer: HFTokenizer | None = None,
    dtype: str | None = None,
) -> str:
    """Writes ``config.json`` + ``model.safetensors`` (+ tokenizer files) loadable by transformers.

    Args:
      path: output directory (created).
      config: the model's config; must match a family exactly (see :func:`infer_family`).
      params: the Flax params pytree.
      family: ``llama``, ``qwen2`` or ``gpt2``; inferred from ``config`` when None.
      tokenizer: written next to the weights when given.
      dtype: storage dtype (default ``config.param_dtype``).

    Returns:
      ``path``.
    """
    from flax import traverse_util
    from safetensors.numpy import save_file

    family = family or infer_family(config)
    if family not in FAMILIES:
        raise HFImportError(f"family={family!r} (supported: {list(FAMILIES)})")
    hf_config = config_to_hf(config, family)
    prefix = "transformer." if family == "gpt2" else "model."
    flat = traverse_util.flatten_dict(dict(params))
    entries = _entries(config, family, prefix)
    missing = sorted("/".join(e.flax_path) for e in entries if e.flax_path not in flat)
    if missing:
        raise HFImportError(f"params lack leaves {missing[:5]}")
    extra = sorted("/".join(k) for k in set(flat) - {e.flax_path for e in entries})
    if extra:
        raise HFImportError(f"params have leaves no {family} tensor holds: {extra[:5]}")
    store = np.dtype(config.params_dtype if dtype is None else dtype)
    parts: dict[str, list[tuple[int, np.ndarray]]] = {}
    for e in entries:
        parts.setdefault(e.hf_name, []).append((e.part, e.to_hf(np.asarray(flat[e.flax_path]))))
    tensors = {}
    for name, ps in parts.items():
        arrays = [a for _, a in sorted(ps, key=lambda t: t[0])]
        t = arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=-1)
        tensors[name] = np.ascontiguousarray(t.astype(store))
    os.makedirs(path, exist_ok=True)
    save_file(tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    hf_config["dtype"] = store.name
    if tokenizer is not None:
        hf_config.update(
            bos_token_id=tokenizer.bos_id,
            eos_token_id=tokenizer.eos_id,
            pad_token_id=tokenizer.pad_id,
        )
        tokenizer.save(path)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(hf_config, f, indent=2, sort_keys=True)
    return path


# ------------------------------------------------------------------------------------------------
# Tokenizer
# ------------------------------------------------------------------------------------------------


def _token_str(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, dict):  # AddedToken serialised as {"content": ..., ...}
        return value.get("content")
    return str(value)


class HFTokenizer:
    """A ``tokenizer.json`` (``tokenizers`` library) with the special tokens and chat template.

    ``encode`` never adds special tokens by itself; special-token strings written in the text
    (``"<s>"``, ``"</s>"``, ``"<|im_end|>"``) are recognised as their ids, as Hugging Face
    ``encode(text, add_special_tokens=False)`` does — chat templates write them explicitly.

    Attributes:
      bos_token, eos_token, pad_token, unk_token: special-token strings (None when absent).
      chat_template: the Jinja chat template string, if the directory has one.
    """

    _SPECIAL = ("bos_token", "eos_token", "pad_token", "unk_token")

    def __init__(
        self,
        tokenizer,
        *,
        bos_token: str | None = None,
        eos_token: str | None = None,
        pad_token: str | None = None,
        unk_token: str | None = None,
        chat_template: str | None = None,
        extra_config: dict[str, Any] | None = None,
    ):
        self.tokenizer = tokenizer
        self.bos_token, self.eos_token = bos_token, eos_token
        self.pad_token, self.unk_token = pad_token, unk_token
        self.chat_template = chat_template
        self._extra_config = dict(extra_config or {})
        for name in self._SPECIAL:
            tok = getattr(self, name)
            if tok is not None and tokenizer.token_to_id(tok) is None:
                raise HFImportError(f"{name}={tok!r} is not in the tokenizer's vocabulary")

    @classmethod
    def from_dir(cls, path: str) -> HFTokenizer:
        """Loads ``tokenizer.json`` (+ ``tokenizer_config.json``, ``chat_template.jinja``)."""
        from tokenizers import Tokenizer

        file = os.path.join(path, "tokenizer.json")
        if not os.path.exists(file):
            raise FileNotFoundError(f"no tokenizer.json in {path}")
        try:
            tok = Tokenizer.from_file(file)
        except Exception as e:  # tokenizers raises a bare Exception subclass
            raise HFImportError(f"{file}: cannot load ({e})") from e
        cfg: dict[str, Any] = {}
        cfg_file = os.path.join(path, "tokenizer_config.json")
        if os.path.exists(cfg_file):
            with open(cfg_file) as f:
                cfg = json.load(f)
        template = cfg.get("chat_template")
        if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
            named = {t["name"]: t["template"] for t in template}
            template = named.get("default")
        jinja_file = os.path.join(path, "chat_template.jinja")
        if os.path.exists(jinja_file):
            with open(jinja_file) as f:
                template = f.read()
        return cls(
            tok,
            **{k: _token_str(cfg.get(k)) for k in cls._SPECIAL},
            chat_template=template,
            extra_config={k: v for k, v in cfg.items() if k not in cls._SPECIAL},
        )

    def save(self, path: str) -> None:
        """Writes ``tokenizer.json``, ``tokenizer_config.json`` and ``chat_template.jinja``."""
        os.makedirs(path, exist_ok=True)
        self.tokenizer.save(os.path.join(path, "tokenizer.json"))
        cfg = {k: v for k, v in self._extra_config.items() if k != "chat_template"}
        cfg.update({k: getattr(self, k) for k in self._SPECIAL if getattr(self, k) is not None})
        with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
            json.dump(cfg, f, indent=2)
        if self.chat_template is not None:
            with open(os.path.join(path, "chat_template.jinja"), "w") as f:
                f.write(self.chat_template)

    def _id(self, token: str | None) -> int | None:
        return None if token is None else self.tokenizer.token_to_id(token)

    @property
    def bos_id(self) -> int | None:
        return self._id(self.bos_token)

    @property
    def eos_id(self) -> int | None:
        return self._id(self.eos_token)

    @property
    def pad_id(self) -> int | None:
        return self._id(self.pad_token)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    @property
    def special_tokens_map(self) -> dict[str, str]:
        """Special-token strings by name (what HF passes to chat templates)."""
        return {k: getattr(self, k) for k in self._SPECIAL if getattr(self, k) is not None}

    def token_to_id(self, token: str) -> int | None:
        return self.tokenizer.token_to_id(token)

    def encode(self, text: str) -> list[int]:
        """Text -> ids, adding no special tokens (those written in ``text`` are recognised)."""
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}")
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        """Ids -> text (special tokens kept by default, so chat text round-trips)."""
        ids = [int(i) for i in np.asarray(ids).reshape(-1)]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"decode: ids outside [0, {self.vocab_size}): {bad[:5]}")
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)
