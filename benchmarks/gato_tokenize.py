"""Batch tokenisation of mixed Gato episodes: jit+vmap ``build_batch`` vs a NumPy per-episode loop.

Each episode has, per step, a text instruction (up to 16 tokens), a 64x64 RGB image (16 patches),
continuous proprioception (8 values, mu-law), discrete buttons (4 values), '|' and a bounded
continuous action (4 values): up to 49 tokens per step. Both sides turn the same pre-encoded
:class:`gato_jax.sequence.EpisodeArrays` (text already SentencePiece ids; host validation is not
timed) into the same fixed-length model inputs with deterministic ``window="start"`` windows:
the JAX side is :func:`gato_jax.sequence.build_batch` (one jitted ``vmap`` over the batch), the
reference :func:`gato_jax.reference.reference_build_sequence` called once per episode. Parity of
the two is checked before timing. Tokens/s counts valid output tokens.

    python -m benchmarks.run --only gato_tokenize --out benchmarks/results
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from benchmarks.harness import compile_jitted, environment, time_interleaved
from gato_jax.configs import TokenizerConfig
from gato_jax.reference import reference_build_sequence
from gato_jax.sequence import build_batch, encode_episode, stack_episodes
from gato_jax.spec import EpisodeSpec, FieldSpec

NAME = "gato_tokenize"

BATCH, STEPS, SEQ_LEN = 32, 24, 1024
QUICK_BATCH, QUICK_STEPS, QUICK_SEQ_LEN = 4, 6, 256


def make_spec(seq_len: int) -> EpisodeSpec:
    return EpisodeSpec(
        {
            "instruction": FieldSpec("text", (16,)),
            "rgb": FieldSpec("image", (64, 64, 3)),
            "proprio": FieldSpec("continuous", (8,)),
            "buttons": FieldSpec("discrete", (4,)),
        },
        {"torque": FieldSpec("continuous", (4,), low=-1.0, high=1.0)},
        TokenizerConfig(seq_len=seq_len, window="start"),
    )


def make_episodes(spec: EpisodeSpec, batch: int, steps: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(batch):
        ep = {
            "observation": {
                "instruction": [
                    rng.integers(0, 32000, rng.integers(4, 17)).astype(np.int32)
                    for _ in range(steps)
                ],
                "rgb": rng.integers(0, 256, (steps, 64, 64, 3), dtype=np.uint8),
                "proprio": rng.standard_normal((steps, 8)) * 10,
                "buttons": rng.integers(0, 1024, (steps, 4)),
            },
            "action": {"torque": rng.uniform(-1, 1, (steps, 4))},
        }
        out.append(encode_episode(ep, spec))
    return out


def run(quick: bool = False, warmup: int = 1, repeats: int | None = None) -> dict[str, Any]:
    batch, steps, seq_len = (
        (QUICK_BATCH, QUICK_STEPS, QUICK_SEQ_LEN) if quick else (BATCH, STEPS, SEQ_LEN)
    )
    repeats = repeats or (3 if quick else 5)
    spec = make_spec(seq_len)
    episodes = make_episodes(spec, batch, steps)
    stacked = jax.device_put(stack_episodes(episodes))
    keys = jax.random.split(jax.random.key(0), batch)
    jitted = jax.jit(lambda e, k: build_batch(e, k, spec))
    compiled, compile_s = compile_jitted(jitted, stacked, keys)

    out = compiled(stacked, keys)
    valid_tokens = int(np.asarray(out.valid).sum())
    ref0 = reference_build_sequence(episodes[0], spec)
    parity = bool(
        np.array_equal(np.asarray(out.kinds[0]), ref0["kinds"])
        and np.abs(np.asarray(out.tokens[0]).astype(np.int64) - ref0["tokens"]).max() <= 1
        and np.allclose(np.asarray(out.patches[0]), ref0["patches"], atol=1e-6)
    )

    fns = {
        "jax": lambda: compiled(stacked, keys),
        "numpy": lambda: [reference_build_sequence(e, spec) for e in episodes],
    }
    timings = time_interleaved(fns, warmup=warmup, repeats=repeats)
    timings["jax"].compile_s = compile_s

    labels = {"jax": "JAX build_batch (jit + vmap)", "numpy": "NumPy per-episode reference"}
    rows = []
    for name, t in timings.items():
        rows.append(
            {
                "impl": labels[name],
                "tokens/s": valid_tokens / t.median,
                "episodes/s": batch / t.median,
                "batch ms (median)": t.median * 1e3,
                "min ms": t.min * 1e3,
                "max ms": t.max * 1e3,
                "compile s": t.compile_s if name == "jax" else "-",
            }
        )
    return {
        "name": NAME,
        "quick": quick,
        "description": "batch tokenisation of mixed episodes (text, image, continuous, discrete)",
        "batch": batch,
        "steps_per_episode": steps,
        "seq_len": seq_len,
        "tokens_per_step_max": spec.tokens_per_step,
        "valid_tokens_per_batch": valid_tokens,
        "parity_with_numpy_reference": parity,
        "timings": {k: v.to_dict() for k, v in timings.items()},
        "ratio_jax_over_numpy_tokens_per_s": timings["numpy"].median / timings["jax"].median,
        "rows": rows,
        "environment": environment(),
    }


def summary(result: dict[str, Any]) -> str:
    return (
        f"{result['batch']} episodes x {result['steps_per_episode']} steps (<= "
        f"{result['tokens_per_step_max']} tokens/step) -> [{result['batch']}, "
        f"{result['seq_len']}] model inputs; parity with the NumPy reference: "
        f"{result['parity_with_numpy_reference']}. JAX / NumPy tokens/s (median): "
        f"**{result['ratio_jax_over_numpy_tokens_per_s']:.1f}x**."
    )


if __name__ == "__main__":
    import sys

    from benchmarks.harness import markdown_table

    res = run(quick="--quick" in sys.argv)
    print(summary(res))
    print(markdown_table(res["rows"]))
