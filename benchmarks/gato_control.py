"""Control frequency of :class:`gato_jax.policy.GatoPolicy`: actions/s and latency per action.

Spec section 8: the paper's robot ran at 20 Hz, so latency per action is a first-class figure.
Setting: a Meta-World-like task (39 continuous state values, 4 bounded continuous action
dimensions: 44 tokens per timestep), the paper's 1024-token window with a 256-token prompt of
a (random) demonstration, random-init parameters (timing does not depend on the values).

Measured per config:

* **end to end** (``GatoPolicy.act``: host tokenisation, one jitted call, detokenisation,
  device -> host transfer), ``B = 1``: latency p50 / p99 over ``acts`` consecutive actions of
  one long episode, so the periodic context roll-overs (a re-prefill of the window) are inside
  the distribution (they set p99); actions/s = acts / total time. Also ``B = 16``
  environments at once (actions/s counts all 16).
* **device only**, ``B = 1``, one action with the window nearly full: the policy's compiled act
  (KV cache: observation chunk + 3 single-token decode steps) vs the **no-cache** reference
  (what acting without a cache costs at fixed shapes: one forward of the whole right-padded
  1024-token window per action token, 4 per action; only the needed position's logits are
  computed). Timed interleaved; the ratio is no-cache / cached.

Compile times are reported separately. CPU: ``gato_tiny`` (fp32). GPU: ``gato_79m``,
``gato_364m``, ``gato_1_18b`` (bf16 compute, fp32 parameters).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.harness import environment, time_interleaved
from core_jax.nn import sample
from gato_jax.configs import get_config
from gato_jax.models import Gato, dummy_inputs, param_count
from gato_jax.policy import GatoPolicy, ModelInputs
from gato_jax.sequence import action_id_ranges
from gato_jax.spec import EpisodeSpec, FieldSpec

NAME = "gato_control"
CONTEXT, PROMPT = 1024, 256
CPU_CASES = ("gato_tiny",)
GPU_CASES = ("gato_79m", "gato_364m", "gato_1_18b")


def control_spec(tokenizer) -> EpisodeSpec:
    return EpisodeSpec(
        {"state": FieldSpec("continuous", (39,))},
        {"action": FieldSpec("continuous", (4,), low=-1.0, high=1.0)},
        tokenizer,
    )


def random_demo(rng: np.random.Generator, steps: int) -> dict:
    return {
        "observation": {"state": rng.normal(size=(steps, 39)).astype(np.float32)},
        "action": {"action": rng.uniform(-1, 1, size=(steps, 4)).astype(np.float32)},
    }


def make_uncached_act(model: Gato, spec: EpisodeSpec):
    """Acting without a KV cache at fixed shapes: a full-window forward per action token."""
    ranges = jnp.asarray(action_id_ranges(spec))
    n_act = ranges.shape[0]

    def act(params, window: ModelInputs, length, key):
        table = params["transformer"]["embedder"]["embedding"]

        def body(i, carry):
            window, length, ids = carry
            _, hidden = model.apply({"params": params}, window, return_hidden=True)
            h = jnp.take_along_axis(hidden, (length - 1)[:, None, None], axis=1)[:, 0]
            logits = jnp.einsum("bd,vd->bv", h, table.astype(h.dtype)).astype(jnp.float32)
            tok = sample(jax.random.fold_in(key, i), logits, temperature=0.0,
                         id_range=(ranges[i, 0], ranges[i, 1]))  # fmt: skip
            rows = jnp.arange(tok.shape[0])
            window = window.replace(tokens=window.tokens.at[rows, length].set(tok))
            return window, length + 1, ids.at[:, i].set(tok)

        ids = jnp.zeros((window.tokens.shape[0], n_act), jnp.int32)
        _, _, ids = jax.lax.fori_loop(0, n_act, body, (window, length, ids))
        return ids

    return jax.jit(act)


def bench_config(name: str, gpu: bool):
    cfg = get_config(name)
    model_cfg = cfg.model
    if gpu:
        model_cfg = dataclasses.replace(
            model_cfg, transformer=dataclasses.replace(model_cfg.transformer, dtype="bfloat16")
        )
    tok = dataclasses.replace(cfg.tokenizer, seq_len=CONTEXT, prompt_tokens=PROMPT, max_patches=1)
    return model_cfg, tok


def run_case(name: str, gpu: bool, acts: int, repeats: int) -> dict[str, Any]:
    model_cfg, tok = bench_config(name, gpu)
    spec = control_spec(tok)
    model = Gato(model_cfg)
    small = dataclasses.replace(tok, seq_len=16, max_patches=1)
    params = jax.jit(lambda k: nn.meta.unbox(model.init(k, dummy_inputs(small))["params"]))(
        jax.random.key(0)
    )
    rng = np.random.default_rng(0)
    demo = random_demo(rng, 12)
    out: dict[str, Any] = {
        "config": name,
        "param_count": param_count(model_cfg),
        "dtype": model_cfg.transformer.dtype,
        "context": CONTEXT,
        "prompt_tokens": PROMPT,
        "tokens_per_step": spec.tokens_per_step,
    }

    # End to end, B = 1 and B = 16.
    for b in (1, 16):
        policy = GatoPolicy(model_cfg, params, spec, batch_size=b, context_len=CONTEXT)
        t0 = time.perf_counter()
        policy.reset(demo)
        obs = [{"state": rng.normal(size=39).astype(np.float32)} for _ in range(b)]
        policy.act_batch(obs)
        compile_s = time.perf_counter() - t0
        lat = []
        t_start = time.perf_counter()
        for _ in range(acts):
            obs = [{"state": rng.normal(size=39).astype(np.float32)} for _ in range(b)]
            t = time.perf_counter()
            policy.act_batch(obs)
            lat.append(time.perf_counter() - t)
        total = time.perf_counter() - t_start
        assert dict(policy.trace_counts) == {"act": 1, "refill": 1}, policy.trace_counts
        lat_ms = np.asarray(lat) * 1e3
        out[f"e2e_b{b}"] = {
            "batch": b,
            "acts": acts,
            "actions_per_s": b * acts / total,
            "latency_p50_ms": float(np.percentile(lat_ms, 50)),
            "latency_p99_ms": float(np.percentile(lat_ms, 99)),
            "latency_max_ms": float(lat_ms.max()),
            "compile_and_first_act_s": compile_s,
        }
        if b == 1:
            single = policy

    # Device only, B = 1, nearly full window: cached act vs no-cache full-window forwards.
    # After a reset, 16 acts leave 256 + 16 * 44 = 960 tokens in context: the next step fits.
    single.reset(demo)
    for _ in range((CONTEXT - PROMPT) // spec.tokens_per_step - 1):
        single.act({"state": rng.normal(size=39).astype(np.float32)})
    st = single._envs[0]
    enc, act_local = single.encode_observation({"state": rng.normal(size=39)})
    assert st.cache_len + 1 + len(enc) + 3 <= CONTEXT
    pending = st.steps[-1].slice(len(st.steps[-1]) - 1, len(st.steps[-1]))
    chunk_row, n_chunk = single._pack([pending, enc], single.chunk_len, 0)
    chunk = single._stack([chunk_row])
    ctx = single.context()
    win_row, n_win = single._pack([ctx, enc], CONTEXT, 1)
    window = single._stack([win_row])
    cache = single.cache
    keys = single.keys
    temp = np.float32(0.0)
    counts = np.asarray([n_chunk], np.int32)
    act_local = act_local[None]

    def cached():
        return single._act_fn(params, cache, chunk, counts, act_local, keys, temp)[0]

    uncached_fn = make_uncached_act(model, spec)
    length = np.asarray([n_win], np.int32)
    t0 = time.perf_counter()
    jax.block_until_ready(uncached_fn(params, window, length, jax.random.key(1)))
    uncached_compile = time.perf_counter() - t0

    def uncached():
        return uncached_fn(params, window, length, jax.random.key(1))

    timings = time_interleaved({"cached": cached, "uncached": uncached}, warmup=1, repeats=repeats)
    c, u = timings["cached"].median, timings["uncached"].median
    out["device_b1"] = {
        "context_tokens": int(n_win),
        "cached_ms": c * 1e3,
        "uncached_ms": u * 1e3,
        "ratio_uncached_over_cached": u / c,
        "uncached_compile_s": uncached_compile,
        "cached": timings["cached"].to_dict(),
        "uncached": timings["uncached"].to_dict(),
    }
    rows = []
    for b in (1, 16):
        e = out[f"e2e_b{b}"]
        rows.append(
            {
                "config": name,
                "mode": f"KV cache, end to end, B={b}",
                "actions/s": e["actions_per_s"],
                "p50 ms": e["latency_p50_ms"],
                "p99 ms": e["latency_p99_ms"],
                "compile s": e["compile_and_first_act_s"],
            }
        )
    d = out["device_b1"]
    rows.append(
        {
            "config": name,
            "mode": "KV cache, device only, B=1",
            "actions/s": 1e3 / d["cached_ms"],
            "p50 ms": d["cached_ms"],
            "p99 ms": "",
            "compile s": "",
        }
    )
    rows.append(
        {
            "config": name,
            "mode": f"no cache, device only, B=1 ({d['ratio_uncached_over_cached']:.1f}x slower)",
            "actions/s": 1e3 / d["uncached_ms"],
            "p50 ms": d["uncached_ms"],
            "p99 ms": "",
            "compile s": d["uncached_compile_s"],
        }
    )
    out["rows"] = rows
    return out


def run(quick: bool = False, warmup: int = 1, repeats: int | None = None) -> dict[str, Any]:
    del warmup
    gpu = jax.default_backend() == "gpu"
    cases = GPU_CASES if gpu else CPU_CASES
    repeats = repeats or (3 if quick else 10)
    acts = 30 if quick else (200 if gpu else 150)
    env = environment()
    results = [run_case(c, gpu, acts, repeats) for c in cases]
    return {
        "name": NAME,
        "quick": quick,
        "description": (
            "GatoPolicy control frequency: 39-d state, 4-d continuous action (44 tokens/step), "
            f"{CONTEXT}-token window with a {PROMPT}-token prompt; KV cache vs no cache"
        ),
        "platform": jax.default_backend(),
        "cases": results,
        "rows": [r for c in results for r in c["rows"]],
        "environment": env,
        "loadavg_after": list(__import__("os").getloadavg()),
    }


def summary(result: dict[str, Any]) -> str:
    parts = []
    for c in result["cases"]:
        e, d = c["e2e_b1"], c["device_b1"]
        parts.append(
            f"`{c['config']}` ({c['param_count'] / 1e6:.1f}M params, {c['dtype']}): "
            f"{e['actions_per_s']:.0f} actions/s at B=1 (p50 {e['latency_p50_ms']:.1f} ms, "
            f"p99 {e['latency_p99_ms']:.1f} ms incl. context roll-overs), "
            f"{c['e2e_b16']['actions_per_s']:.0f} actions/s at B=16; "
            f"no-cache / KV-cache device time **{d['ratio_uncached_over_cached']:.1f}x** "
            f"({d['context_tokens']}-token context)."
        )
    load = result["environment"].get("loadavg_before")
    note = f" Load average before the run: {load}." if load else ""
    return result["description"] + ". " + " ".join(parts) + note
