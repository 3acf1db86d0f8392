"""One full Gato training step: ``gato_jax.train.train_step`` vs the same model in PyTorch eager.

The step is forward + backward + global-norm clipping (1.0) + AdamW (b1 0.9, b2 0.95, eps 1e-8,
weight decay 0.1 on matrices only) on the masked next-token loss, in train mode (stochastic
depth 0.1, random patch positions), on the same synthetic batch (mixed control / image
windows from :mod:`gato_jax.synthetic`, with prompts). JAX: ``train_step`` under one
``jax.jit`` with the state donated, optimizer from :func:`gato_jax.train.make_optimizer`.
PyTorch: :class:`benchmarks.gato_torch.TorchGato` (parity-tested against the JAX model),
``clip_grad_norm_`` and ``torch.optim.AdamW(fused=True)`` with the same decay mask (the learning
rate is a constant in PyTorch; the JAX warm-up/cosine schedule costs a handful of scalar ops).
Both run in the same process, timed interleaved (A, B, A, B, ...).

Shapes (tokens per step = batch x seq_len):

* CPU: ``gato_tiny`` (its own 8 x 64 window batch) and ``gato_79m`` at **2 x 256** tokens with
  85 patch slots per window (the paper's 512 x 1024 would take hours per step on 2 cores);
  fp32. ``--quick``: ``gato_tiny`` at 2 x 64 only.
* GPU: ``gato_79m`` and ``gato_364m`` at 8 x 1024 tokens (341 patch slots), bf16 compute with
  fp32 parameters (JAX; PyTorch under ``torch.autocast`` when it has CUDA), with model FLOP/s
  and MFU against :func:`core_jax.metrics.peak_flops_per_device` (bf16 dense peak).

Model FLOPs per token: ``TransformerConfig.flops_per_token(seq_len)`` (6N + attention, the
tied output projection included) plus the patch ResNet's convolutions and projection for every
patch slot of the window (3x forward for training), divided by ``seq_len``.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any

import flax.linen as fnn
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.harness import compile_jitted, environment, time_interleaved
from core_jax.metrics import peak_flops_per_device
from core_jax.optim import make_schedule
from core_jax.train_state import TrainState
from gato_jax.configs import GatoConfig, get_config
from gato_jax.models import Gato, param_count
from gato_jax.synthetic import SyntheticData
from gato_jax.train import make_optimizer, train_step

NAME = "gato_step"

# (config name, batch, seq_len, patch slots); None = the config's own value.
CPU_CASES = (("gato_tiny", None, None, None), ("gato_79m", 2, 256, 85))
QUICK_CASES = (("gato_tiny", 2, None, None),)
GPU_CASES = (("gato_79m", 8, 1024, 341), ("gato_364m", 8, 1024, 341))


def bench_config(name: str, batch: int | None, seq_len: int | None, slots: int | None, gpu: bool):
    """The named config with the benchmark's batch / window / patch slots (and bf16 on GPU)."""
    cfg = get_config(name)
    tok = cfg.tokenizer
    if seq_len is not None:
        tok = dataclasses.replace(tok, seq_len=seq_len, max_patches=slots)
    model = cfg.model
    if gpu:
        model = dataclasses.replace(
            model, transformer=dataclasses.replace(model.transformer, dtype="bfloat16")
        )
    return dataclasses.replace(
        cfg,
        tokenizer=tok,
        model=model,
        batch_size=batch or cfg.batch_size,
        synthetic_steps=max(cfg.synthetic_steps, tok.seq_len // 6 + 1),
    )


def patch_flops_per_slot(cfg: GatoConfig) -> float:
    """Forward FLOPs of the patch ResNet block for one patch slot."""
    m = cfg.model
    s, w, c, d = m.resnet_stem_stride, m.resnet_width, m.image_channels, m.transformer.d_model
    pos = (m.patch_size // s) ** 2
    stem = 2 * pos * s * s * c * w
    convs = 2 * (2 * pos * 9 * w * w)
    proj = 2 * pos * w * d
    return float(stem + convs + proj)


def flops_per_token(cfg: GatoConfig) -> float:
    tok = cfg.tokenizer
    patches = 3 * patch_flops_per_slot(cfg) * tok.num_patch_slots / tok.seq_len
    return cfg.model.transformer.flops_per_token(tok.seq_len, training=True) + patches


def make_jax_step(cfg: GatoConfig, batch: Any):
    model = Gato(cfg.model)
    params = fnn.unbox(jax.jit(model.init)(jax.random.key(0), batch)["params"])
    state = TrainState.create(params=params, tx=make_optimizer(cfg.optim), rng=1)
    step = jax.jit(
        functools.partial(train_step, model=model, schedule=make_schedule(cfg.optim)),
        donate_argnums=(0,),
    )
    compiled, compile_s = compile_jitted(step, state, batch)
    box = [state]

    def run():
        box[0], metrics = compiled(box[0], batch)
        return metrics["loss"]

    return run, compile_s, params


def make_torch_step(cfg: GatoConfig, batch: Any, params: Any):
    import torch

    from benchmarks.gato_torch import (
        TorchGato,
        decay_parameters,
        gato_inputs_to_torch,
        gato_loss,
        load_gato_params,
    )

    device = "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"
    if jax.default_backend() == "gpu" and device == "cpu":
        return None  # a CPU-only PyTorch next to a GPU JAX is no comparison
    tcfg = dataclasses.replace(
        cfg.model, transformer=dataclasses.replace(cfg.model.transformer, dtype="float32")
    )
    model = load_gato_params(TorchGato(tcfg), params).to(device).train()
    o = cfg.optim
    decay, no_decay = decay_parameters(model)
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": o.weight_decay},
            {"params": no_decay, "weight_decay": 0},
        ],
        lr=o.peak_lr,
        betas=(o.b1, o.b2),
        eps=o.eps,
        fused=True,
    )
    inputs = {k: v.to(device) for k, v in gato_inputs_to_torch(batch).items()}
    gen = torch.Generator(device=device).manual_seed(0)
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda")

    def run():
        opt.zero_grad(set_to_none=True)
        with autocast:
            loss = gato_loss(model(inputs, gen), inputs)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), o.clip_norm)
        opt.step()
        return loss.item()  # synchronises

    return run


def run_case(name, batch, seq_len, slots, gpu: bool, warmup: int, repeats: int) -> dict[str, Any]:
    cfg = bench_config(name, batch, seq_len, slots, gpu)
    host = next(SyntheticData(cfg, 0, 1))
    batch_arr = jax.tree.map(jnp.asarray, host)
    jax_fn, jax_compile_s, params = make_jax_step(cfg, batch_arr)
    fns = {"jax": jax_fn}
    torch_setup_s = None
    try:
        t0 = time.perf_counter()
        torch_fn = make_torch_step(cfg, host, params)
        torch_setup_s = time.perf_counter() - t0
        if torch_fn is not None:
            fns["torch"] = torch_fn
    except ImportError:
        pass
    timings = time_interleaved(fns, warmup=warmup, repeats=repeats)
    timings["jax"].compile_s = jax_compile_s
    if "torch" in timings:
        timings["torch"].compile_s = torch_setup_s

    tok = cfg.tokenizer
    tokens_per_step = cfg.batch_size * tok.seq_len
    fpt = flops_per_token(cfg)
    dtype = cfg.model.transformer.dtype
    peak = peak_flops_per_device(dtype=dtype) if gpu else None
    rows = []
    for impl, t in timings.items():
        tps = tokens_per_step / t.median
        row = {
            "config": name,
            "impl": "JAX (jit, donated)" if impl == "jax" else "PyTorch eager",
            "batch x seq": f"{cfg.batch_size} x {tok.seq_len}",
            "tokens/s": tps,
            "step ms (median)": t.median * 1e3,
            "min ms": t.min * 1e3,
            "max ms": t.max * 1e3,
            "compile s": t.compile_s if impl == "jax" else "-",
            "model GFLOP/s": tps * fpt / 1e9,
        }
        if gpu:
            row["MFU"] = tps * fpt / peak if peak else None
        rows.append(row)
    ratio = ratio_best = None
    if "torch" in timings:
        ratio = timings["torch"].median / timings["jax"].median
        ratio_best = timings["torch"].min / timings["jax"].min
    return {
        "config": name,
        "param_count": param_count(cfg.model),
        "batch": cfg.batch_size,
        "seq_len": tok.seq_len,
        "patch_slots": tok.num_patch_slots,
        "dtype": dtype,
        "param_dtype": cfg.model.transformer.param_dtype,
        "tokens_per_step": tokens_per_step,
        "flops_per_token": fpt,
        "peak_flops_per_device": peak,
        "loss_mask_tokens": int(np.asarray(host.loss_mask[:, 1:]).sum()),
        "timings": {k: v.to_dict() for k, v in timings.items()},
        "ratio_jax_over_torch_tokens_per_s": ratio,
        "ratio_jax_over_torch_best_step": ratio_best,
        "rows": rows,
    }


def run(quick: bool = False, warmup: int = 1, repeats: int | None = None) -> dict[str, Any]:
    gpu = jax.default_backend() == "gpu"
    cases = GPU_CASES if gpu else (QUICK_CASES if quick else CPU_CASES)
    repeats = repeats or (3 if quick else 5)
    env = environment()  # load before the run (the machine is shared)
    results = [run_case(*c, gpu=gpu, warmup=warmup, repeats=repeats) for c in cases]
    o = get_config("gato_tiny").optim
    return {
        "name": NAME,
        "quick": quick,
        "description": (
            "Gato train step (forward+backward+clip+AdamW, masked next-token loss, train mode: "
            "stochastic depth 0.1, random patch positions), JAX vs PyTorch eager, same batch"
        ),
        "platform": jax.default_backend(),
        "optimizer": {
            "kind": "adamw",
            "b1": o.b1,
            "b2": o.b2,
            "eps": o.eps,
            "weight_decay": o.weight_decay,
            "clip_norm": o.clip_norm,
            "decay_mask": "ndim >= 2",
            "torch_fused": True,
        },
        "cases": results,
        "rows": [r for c in results for r in c["rows"]],
        "environment": env,
        "loadavg_after": list(__import__("os").getloadavg()),
    }


def _loads(values) -> str:
    return "-" if not values else "/".join(f"{v:.1f}" for v in values)


def summary(result: dict[str, Any]) -> str:
    parts = []
    for c in result["cases"]:
        s = (
            f"`{c['config']}` ({c['param_count'] / 1e6:.1f}M params, {c['batch']} x "
            f"{c['seq_len']} tokens, {c['patch_slots']} patch slots, {c['dtype']}, "
            f"{c['flops_per_token'] / 1e6:.0f} MFLOP/token)"
        )
        if c["ratio_jax_over_torch_tokens_per_s"] is not None:
            s += (
                f": JAX / PyTorch tokens/s **{c['ratio_jax_over_torch_tokens_per_s']:.2f}x** "
                f"(best-step ratio {c['ratio_jax_over_torch_best_step']:.2f}x)"
            )
        parts.append(s + ".")
    env = result["environment"]
    parts.append(
        f"Shared {env.get('cpu_count')}-CPU machine, load average before "
        f"{_loads(env.get('loadavg_before'))}, after {_loads(result.get('loadavg_after'))}: "
        "other engineers' jobs make the timings noisy. Under load PyTorch's OpenMP threads "
        f"(torch_num_threads={env.get('torch_num_threads')}) lose far more than XLA's (see "
        "benchmarks/NOTES.md: on an idle machine the similar transformer_step measured JAX at "
        "0.89x PyTorch), so ratios taken on a loaded machine overstate JAX's lead. No MFU on "
        "CPU; run on a GPU for gato_79m / gato_364m MFU."
        if result["platform"] == "cpu"
        else "MFU against the bf16 dense peak of the device."
    )
    return " ".join(parts)
