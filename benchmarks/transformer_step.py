"""One full training step of a 29M-parameter GEGLU transformer: JAX vs PyTorch eager.

The step is forward + backward + AdamW (optax.adamw / torch.optim.AdamW with identical
hyper-parameters) on next-token cross-entropy, batch 4 x 512 tokens, fp32. The JAX side is
``core_jax.nn.Transformer`` under one ``jax.jit`` with the parameters and optimizer state
donated; the PyTorch side is :class:`benchmarks.torch_reference.TorchTransformer`, the same
architecture, in eager mode. Both run in the same process, timed interleaved.
"""

from __future__ import annotations

import time
from typing import Any

import flax.linen as fnn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks.harness import compile_jitted, environment, time_interleaved
from core_jax.nn import Transformer, TransformerConfig

NAME = "transformer_step"

# 29.37M parameters (TransformerConfig.param_count()); tied embeddings, pre-LayerNorm, GEGLU
# (exact erf GELU), RoPE, no biases in dense layers.
CONFIG = TransformerConfig(
    vocab_size=8192,
    d_model=512,
    num_layers=6,
    num_heads=8,
    mlp_dim=2048,
    mlp="geglu",
    norm="layernorm",
    positions="rope",
    max_len=512,
    tie_embeddings=True,
    dtype="float32",
    param_dtype="float32",
)
BATCH, SEQ_LEN = 4, 512
QUICK_CONFIG = CONFIG.replace(
    vocab_size=512, d_model=64, num_layers=2, num_heads=4, mlp_dim=128, max_len=64
)
QUICK_BATCH, QUICK_SEQ_LEN = 2, 64

IMPL_NAMES = {
    "jax": "JAX (one jit, donated)",
    "jax_split": "JAX (grad jit + update jit without YNN eltwise)",
    "torch": "PyTorch eager",
}

# AdamW hyper-parameters shared by both frameworks.
ADAMW = dict(learning_rate=3e-4, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1)

# Dense peak throughput per device kind (bf16, TFLOP/s, without sparsity) for MFU on GPUs.
GPU_PEAK_TFLOPS = {
    "H100": 989.0,
    "H200": 989.0,
    "H800": 989.0,
    "GH200": 989.0,
    "B200": 2250.0,
    "A100": 312.0,
    "A800": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "A10": 125.0,
    "V100": 125.0,
    "T4": 65.0,
}
# Nominal fp32 peak of this 2-core AVX-512 development VM, as stated in the task; the
# measured matmul peak of the same run is reported next to it.
CPU_NOMINAL_PEAK_GFLOPS = 320.0


def gpu_peak_tflops(device_kind: str) -> float | None:
    kind = device_kind.upper()
    # Longest key first so "GH200" wins over "H200", "L40S" over "L4".
    for key in sorted(GPU_PEAK_TFLOPS, key=len, reverse=True):
        if key in kind:
            return GPU_PEAK_TFLOPS[key]
    return None


def _model_tx_loss(cfg: TransformerConfig):
    model = Transformer(cfg)
    tx = optax.adamw(
        ADAMW["learning_rate"],
        b1=ADAMW["b1"],
        b2=ADAMW["b2"],
        eps=ADAMW["eps"],
        weight_decay=ADAMW["weight_decay"],
    )

    def loss_fn(params, tokens):
        logits = model.apply({"params": params}, tokens[:, :-1])
        return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

    return model, tx, loss_fn


def make_jax_step(cfg: TransformerConfig):
    model, tx, loss_fn = _model_tx_loss(cfg)

    def step(params, opt_state, tokens):
        loss, grads = jax.value_and_grad(loss_fn)(params, tokens)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    def init(key, tokens):
        params = fnn.unbox(model.init(key, tokens[:, :-1])["params"])
        return params, tx.init(params)

    return init, jax.jit(step, donate_argnums=(0, 1))


def make_jax_split_step(cfg: TransformerConfig, params, opt_state, tokens):
    """The same step as two compiled programs: forward+backward, then the AdamW update.

    The update is compiled with :func:`core_jax.cpu_flags.optimizer_compiler_options` (no
    YNNPACK elementwise fusion), the gradient program with the process defaults; see
    ``benchmarks/NOTES.md``. Returns ``(step, compile_s)`` where ``step(params, opt_state,
    tokens) -> (params, opt_state, loss)``.
    """
    from core_jax.optim import split_update_step

    _, tx, loss_fn = _model_tx_loss(cfg)
    t0 = time.perf_counter()
    step = split_update_step(jax.value_and_grad(loss_fn), tx, params, opt_state, tokens)
    return step, time.perf_counter() - t0


def make_torch_step(cfg: TransformerConfig, tokens_np: np.ndarray):
    import torch

    from benchmarks.torch_reference import TorchTransformer, next_token_loss

    torch.manual_seed(0)
    model = TorchTransformer(cfg)
    opt = torch.optim.AdamW(
        model.parameters(),
        lr=ADAMW["learning_rate"],
        betas=(ADAMW["b1"], ADAMW["b2"]),
        eps=ADAMW["eps"],
        weight_decay=ADAMW["weight_decay"],
        fused=True,
    )
    tokens = torch.from_numpy(np.array(tokens_np, dtype=np.int64))
    inputs, targets = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()

    def step():
        opt.zero_grad(set_to_none=True)
        loss = next_token_loss(model(inputs), targets)
        loss.backward()
        opt.step()
        return loss.item()

    return step


def matmul_gflops(n: int, repeats: int) -> dict[str, float]:
    """Best-of-``repeats`` fp32 ``n x n`` matmul throughput, JAX and (if present) PyTorch."""
    out = {}
    x = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    f = jax.jit(jnp.matmul)
    jax.block_until_ready(f(x, x))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(f(x, x))
        best = min(best, time.perf_counter() - t0)
    out["jax"] = 2 * n**3 / best / 1e9
    try:
        import torch

        a = torch.randn(n, n)
        a @ a
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            a @ a
            best = min(best, time.perf_counter() - t0)
        out["torch"] = 2 * n**3 / best / 1e9
    except ImportError:
        pass
    return out


def run(
    quick: bool = False, warmup: int = 1, repeats: int | None = None, split: bool = True
) -> dict[str, Any]:
    cfg, batch, seq_len = (
        (QUICK_CONFIG, QUICK_BATCH, QUICK_SEQ_LEN) if quick else (CONFIG, BATCH, SEQ_LEN)
    )
    repeats = repeats or (3 if quick else 5)
    tokens = jax.random.randint(
        jax.random.key(0), (batch, seq_len + 1), 0, cfg.vocab_size, jnp.int32
    )
    init, step = make_jax_step(cfg)
    state = list(init(jax.random.key(1), tokens))
    compiled, compile_s = compile_jitted(step, state[0], state[1], tokens)

    def jax_step():
        state[0], state[1], loss = compiled(state[0], state[1], tokens)
        return loss

    fns = {"jax": jax_step}
    if split:
        split_state = list(init(jax.random.key(1), tokens))
        split_step, split_compile_s = make_jax_split_step(cfg, *split_state, tokens)

        def jax_split_step():
            split_state[0], split_state[1], loss = split_step(
                split_state[0], split_state[1], tokens
            )
            return loss

        fns["jax_split"] = jax_split_step
    torch_compile_s = None
    try:
        import torch  # noqa: F401

        t0 = time.perf_counter()
        fns["torch"] = make_torch_step(cfg, np.asarray(tokens))
        torch_compile_s = time.perf_counter() - t0  # model construction only (eager)
    except ImportError:
        pass

    timings = time_interleaved(fns, warmup=warmup, repeats=repeats)
    timings["jax"].compile_s = compile_s
    if split:
        timings["jax_split"].compile_s = split_compile_s
    if "torch" in timings:
        timings["torch"].compile_s = torch_compile_s

    tokens_per_step = batch * seq_len
    flops_per_token = cfg.flops_per_token(seq_len, training=True)
    platform = jax.default_backend()
    device_kind = jax.devices()[0].device_kind
    mm_n = 256 if quick else 2048
    mm = matmul_gflops(mm_n, 3 if quick else 5)
    if platform == "gpu":
        peak = gpu_peak_tflops(device_kind)
        peak_gflops, peak_note = (peak * 1e3 if peak else None), f"{device_kind} dense bf16"
    else:
        peak_gflops, peak_note = CPU_NOMINAL_PEAK_GFLOPS, "nominal CPU fp32 (~320 GFLOP/s)"

    rows = []
    for name, t in timings.items():
        tps = tokens_per_step / t.median
        gflops = tps * flops_per_token / 1e9
        row = {
            "impl": IMPL_NAMES[name],
            "tokens/s": tps,
            "step ms (median)": t.median * 1e3,
            "min ms": t.min * 1e3,
            "max ms": t.max * 1e3,
            "compile s": t.compile_s if name != "torch" else "-",
            "model GFLOP/s": gflops,
        }
        if peak_gflops:
            row["MFU"] = gflops / peak_gflops
        if platform == "cpu":
            row["MFU vs measured matmul"] = gflops / max(mm.values())
        rows.append(row)
    ratio = ratio_best = ratio_split = ratio_split_best = None
    if "torch" in timings:
        ratio = timings["torch"].median / timings["jax"].median
        ratio_best = timings["torch"].min / timings["jax"].min
        if "jax_split" in timings:
            ratio_split = timings["torch"].median / timings["jax_split"].median
            ratio_split_best = timings["torch"].min / timings["jax_split"].min

    result = {
        "name": NAME,
        "quick": quick,
        "description": "forward+backward+AdamW step, next-token cross-entropy, fp32",
        "config": cfg.to_dict(),
        "param_count": cfg.param_count(),
        "batch": batch,
        "seq_len": seq_len,
        "tokens_per_step": tokens_per_step,
        "flops_per_token": flops_per_token,
        "optimizer": {"kind": "adamw", **ADAMW, "torch_fused": True},
        "timings": {k: v.to_dict() for k, v in timings.items()},
        "ratio_jax_over_torch_tokens_per_s": ratio,
        "ratio_jax_over_torch_best_step": ratio_best,
        "ratio_jax_split_over_torch_tokens_per_s": ratio_split,
        "ratio_jax_split_over_torch_best_step": ratio_split_best,
        "matmul_n": mm_n,
        "matmul_gflops": mm,
        "peak_gflops": peak_gflops,
        "peak_note": peak_note,
        "rows": rows,
        "environment": environment({"loss_last": float(jax_step())}),
    }
    return result


def summary(result: dict[str, Any]) -> str:
    lines = [
        f"{result['param_count'] / 1e6:.2f}M params, batch {result['batch']} x "
        f"{result['seq_len']} tokens, fp32, {result['flops_per_token'] / 1e6:.1f} MFLOP/token "
        "(6N + attention).",
    ]
    if result["ratio_jax_over_torch_tokens_per_s"] is not None:
        lines.append(
            f"JAX / PyTorch tokens/s (median): "
            f"**{result['ratio_jax_over_torch_tokens_per_s']:.2f}x** "
            f"(best-step ratio {result['ratio_jax_over_torch_best_step']:.2f}x)."
        )
    if result.get("ratio_jax_split_over_torch_tokens_per_s") is not None:
        lines.append(
            f"JAX split update / PyTorch: "
            f"**{result['ratio_jax_split_over_torch_tokens_per_s']:.2f}x** "
            f"(best-step {result['ratio_jax_split_over_torch_best_step']:.2f}x)."
        )
    mm = ", ".join(f"{k} {v:.0f}" for k, v in result["matmul_gflops"].items())
    lines.append(
        f"fp32 {result['matmul_n']}^2 matmul GFLOP/s in the same run: {mm}; MFU against "
        f"{result['peak_note']}."
    )
    return " ".join(lines)
