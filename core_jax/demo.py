"""`make demo`: train the shared transformer to sort digit sequences, then show what it learned.

Command: ``python -m core_jax.demo --workdir runs/demo`` (what ``make demo`` runs).
Runtime: about 2 minutes on a 2-core laptop CPU.
Expected result: >= 95% of held-out sequences (2-8 digits) sorted exactly by KV-cached greedy
decoding, up from ~0% before training.

Everything the three systems use runs here end to end: a :class:`core_jax.nn.Transformer`
initialised directly in its sharding on a ``(data, fsdp, model)`` mesh, a jitted train step with
donation, AdamW with warm-up and cosine decay, atomic orbax checkpoints holding the train state,
the config and the data-iterator position (a killed run resumes exactly; rerun the command), JSONL
and TensorBoard metrics with tokens/s, a progress bar, and batched KV-cached generation.

Each sequence is ``BOS x_1 .. x_n SEP sort(x) EOS PAD..``; the loss covers only the sorted part
and EOS.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import os
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from core_jax import config as config_lib
from core_jax.checkpoint import Checkpointer, resume
from core_jax.losses import masked_cross_entropy
from core_jax.metrics import MetricWriter, Throughput, plot_metrics
from core_jax.nn import Transformer, TransformerConfig, generate
from core_jax.optim import OptimizerConfig, make_optimizer, make_schedule
from core_jax.parallel import (
    MeshConfig,
    host_to_global,
    init_sharded,
    initialize_distributed,
    make_mesh,
    make_train_step,
)
from core_jax.progress import progress
from core_jax.train_state import TrainState

PAD, BOS, SEP, EOS, DIGIT0 = 0, 1, 2, 3, 4
VOCAB = DIGIT0 + 10


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """Digit-sorting demo (see the module docstring for command, runtime and expected result).

    Attributes:
      model: the transformer (tiny: 2 layers, d_model 128, RoPE, GEGLU).
      optim: AdamW schedule; ``decay_steps`` should equal ``num_steps``.
      mesh: device mesh; the default uses every device for data parallelism.
      batch_size: global batch (sequences per step).
      num_steps: optimizer steps.
      seed: seeds initialisation, data order and evaluation prompts.
      min_digits, max_digits: length range of the sequences to sort.
      log_every, checkpoint_every: intervals in steps.
      max_to_keep: checkpoints kept on disk.
      num_eval: held-out sequences decoded at the end.
    """

    model: TransformerConfig = TransformerConfig(
        vocab_size=VOCAB,
        d_model=128,
        num_layers=2,
        num_heads=4,
        mlp_dim=512,
        mlp="geglu",
        norm="layernorm",
        positions="rope",
        max_len=20,
    )
    optim: OptimizerConfig = OptimizerConfig(
        peak_lr=3e-3, warmup_steps=80, decay_steps=800, weight_decay=0.01, clip_norm=1.0
    )
    mesh: MeshConfig = MeshConfig()
    batch_size: int = 64
    num_steps: int = 800
    seed: int = 0
    min_digits: int = 2
    max_digits: int = 8
    log_every: int = 50
    checkpoint_every: int = 200
    max_to_keep: int = 2
    num_eval: int = 256

    def __post_init__(self):
        if not 1 <= self.min_digits <= self.max_digits:
            raise ValueError(
                f"DemoConfig.min_digits={self.min_digits}, max_digits="
                f"{self.max_digits}: need 1 <= min_digits <= max_digits"
            )
        if 2 * self.max_digits + 2 > self.model.max_len:
            raise ValueError(
                f"DemoConfig.max_digits={self.max_digits}: sequences of "
                f"{2 * self.max_digits + 2} tokens exceed model.max_len="
                f"{self.model.max_len}"
            )
        if self.model.vocab_size < VOCAB:
            raise ValueError(f"DemoConfig.model.vocab_size={self.model.vocab_size} < {VOCAB}")


def make_example(rng: np.random.Generator, n: int) -> np.ndarray:
    digits = rng.integers(0, 10, n)
    return np.concatenate([[BOS], digits + DIGIT0, [SEP], np.sort(digits) + DIGIT0, [EOS]])


class SortData:
    """Deterministic, resumable batches: batch ``i`` depends only on ``(seed, i, process)``.

    Each process draws only its ``batch_size / process_count`` rows. ``state()`` is the
    iterator position saved with checkpoints; ``restore`` continues from it.
    """

    def __init__(self, cfg: DemoConfig):
        self.cfg, self.index = cfg, 0
        self.seq_len = cfg.model.max_len
        if cfg.batch_size % jax.process_count():
            raise ValueError(
                f"batch_size={cfg.batch_size} not divisible by {jax.process_count()} processes"
            )
        self.local_batch = cfg.batch_size // jax.process_count()

    def state(self) -> dict[str, int]:
        return {"index": self.index}

    def restore(self, state: dict[str, Any]) -> None:
        self.index = int(state["index"])

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.cfg.seed, self.index, jax.process_index()])
        self.index += 1
        seqs = np.full((self.local_batch, self.seq_len + 1), PAD, np.int32)
        mask = np.zeros((self.local_batch, self.seq_len), np.float32)
        for r in range(self.local_batch):
            n = int(rng.integers(self.cfg.min_digits, self.cfg.max_digits + 1))
            ex = make_example(rng, n)
            seqs[r, : len(ex)] = ex
            mask[r, n + 1 : 2 * n + 2] = 1.0  # targets: the sorted digits and EOS
        return {"inputs": seqs[:, :-1], "targets": seqs[:, 1:], "mask": mask}


def train_step(
    state: TrainState, batch: dict[str, jax.Array], *, model: Transformer, schedule
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One AdamW step on the masked next-token loss (pure; jitted by ``make_train_step``)."""

    def loss_fn(params):
        logits = model.apply(
            {"params": params},
            batch["inputs"],
            deterministic=False,
            rngs={"dropout": state.step_rng()},
        )
        return masked_cross_entropy(logits, batch["targets"], batch["mask"])

    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    metrics["learning_rate"] = schedule(state.step)
    metrics["grad_norm"] = jnp.sqrt(sum(jnp.sum(g * g) for g in jax.tree.leaves(grads)))
    return state.apply_gradients(grads), metrics


def evaluate(model: Transformer, params, cfg: DemoConfig, num: int, seed: int):
    """Greedy KV-cached sorting of held-out sequences; returns metrics and examples."""
    rng = np.random.default_rng([seed, 10**6])
    p_len = cfg.max_digits + 2
    prompts = np.full((num, p_len), PAD, np.int32)
    lengths = rng.integers(cfg.min_digits, cfg.max_digits + 1, num)
    targets = []
    for r, n in enumerate(lengths):
        ex = make_example(rng, int(n))
        prompts[r, : n + 2] = ex[: n + 2]
        targets.append(ex[n + 2 :])
    gen = jax.jit(generate, static_argnames=("model", "max_new_tokens"))
    out, _ = gen(
        model=model,
        params=params,
        key=jax.random.key(0),
        prompt=jnp.asarray(prompts),
        lengths=jnp.asarray(lengths + 2),
        max_new_tokens=cfg.max_digits + 1,
        eos_id=EOS,
    )
    out = np.asarray(out)
    exact, tok_hits, tok_total, examples = 0, 0, 0, []
    per_len: dict[int, list[int]] = {}
    for r, n in enumerate(lengths):
        pred, tgt = out[r, : n + 1], targets[r]
        ok = bool(np.array_equal(pred, tgt))
        exact += ok
        tok_hits += int((pred == tgt).sum())
        tok_total += len(tgt)
        per_len.setdefault(int(n), []).append(ok)
        if len(examples) < 8:
            show = lambda a: " ".join(str(t - DIGIT0) if t >= DIGIT0 else "<eos>" for t in a)  # noqa: E731
            examples.append((show(prompts[r, 1 : n + 1]), show(pred), ok))
    metrics = {"eval_exact_match": exact / num, "eval_token_accuracy": tok_hits / tok_total}
    by_len = {n: float(np.mean(v)) for n, v in sorted(per_len.items())}
    return metrics, by_len, examples


def train_and_evaluate(cfg: DemoConfig, workdir: str, *, quiet: bool = False) -> dict[str, Any]:
    """Trains (resuming from ``workdir`` if it holds a checkpoint) and evaluates.

    Returns:
      The final evaluation metrics (also written to ``workdir/results.json``).
    """
    workdir = os.path.abspath(workdir)
    mesh = make_mesh(cfg.mesh)
    model = Transformer(cfg.model)
    tx = make_optimizer(cfg.optim)
    seq_len = cfg.model.max_len

    def create(key):
        params = model.init(key, jnp.zeros((1, seq_len), jnp.int32))["params"]
        return TrainState.create(params=params, tx=tx, rng=jax.random.fold_in(key, 1))

    state, sharding = init_sharded(create, mesh, jax.random.key(cfg.seed), rules=cfg.mesh.rules)
    data = SortData(cfg)
    ckpt = Checkpointer(
        os.path.join(workdir, "checkpoints"),
        max_to_keep=cfg.max_to_keep,
        save_interval_steps=cfg.checkpoint_every,
    )
    writer = MetricWriter(workdir)
    cfg_dict = config_lib.to_dict(cfg)
    state, resumed_at = resume(ckpt, state, sharding, data=data, writer=writer, config=cfg_dict)
    if resumed_at is not None and not quiet:
        print(f"Resumed from step {resumed_at} in {ckpt.directory}")

    step_fn = make_train_step(
        functools.partial(train_step, model=model, schedule=make_schedule(cfg.optim)),
        mesh=mesh,
        state_sharding=sharding,
    )
    start = int(state.step)
    tput = Throughput(
        tokens_per_step=cfg.batch_size * seq_len, flops_per_token=cfg.model.flops_per_token(seq_len)
    )
    bar = progress(cfg.num_steps, desc="train", initial=start, disable=True if quiet else None)
    for step in range(start, cfg.num_steps):
        state, metrics = step_fn(state, host_to_global(next(data), mesh))
        done = step + 1
        if done % cfg.log_every == 0 or done == cfg.num_steps:
            metrics = jax.device_get(metrics)
            if done != start + 1:
                metrics.update(tput.update(done))
            else:
                tput.update(done)
            writer.write(done, metrics)
            bar.set_postfix(
                loss=f"{float(metrics['loss']):.4f}", acc=f"{float(metrics['accuracy']):.3f}"
            )
        ckpt.save(
            done, state, config=cfg_dict, data_state=data.state(), force=done == cfg.num_steps
        )
        bar.update(1)
    bar.close()
    ckpt.wait_until_finished()

    t0 = time.perf_counter()
    results, by_len, examples = evaluate(model, state.params, cfg, cfg.num_eval, cfg.seed)
    results["eval_seconds"] = time.perf_counter() - t0
    writer.write(int(state.step), results)
    results["step"] = int(state.step)
    writer.close()
    ckpt.close()
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "results.json"), "w") as f:
            json.dump({**results, "exact_match_by_length": by_len}, f, indent=2)
        plot_metrics(
            writer.jsonl_path, os.path.join(workdir, "loss.png"), keys=("loss", "accuracy")
        )
    if not quiet:
        print(
            f"\nWhat the transformer learned after {results['step']} steps "
            f"({cfg.model.param_count():,} parameters):"
        )
        print("  input digits        -> model output (KV-cached greedy decoding)")
        for src, pred, ok in examples:
            print(f"  {src:<19} -> {pred:<25} {'ok' if ok else 'WRONG'}")
        print(
            f"\nHeld-out exact match: {100 * results['eval_exact_match']:.1f}% of "
            f"{cfg.num_eval} sequences; token accuracy "
            f"{100 * results['eval_token_accuracy']:.1f}%"
        )
        print(
            "Exact match by length: " + ", ".join(f"{n}: {100 * v:.0f}%" for n, v in by_len.items())
        )
        print(
            f"Metrics: {writer.jsonl_path} (TensorBoard: {workdir}/tensorboard), "
            f"plot: {workdir}/loss.png"
        )
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True, help="run directory (resumed if it exists)")
    parser.add_argument("--num_steps", type=int, help="override num_steps (and decay_steps)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override, e.g. --set model.d_model=64 (repeatable)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar or report")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    initialize_distributed()
    cfg = DemoConfig()
    if args.num_steps is not None:
        cfg = dataclasses.replace(
            cfg,
            num_steps=args.num_steps,
            optim=dataclasses.replace(cfg.optim, decay_steps=args.num_steps),
        )
    try:
        cfg = config_lib.apply_overrides(cfg, args.set)
    except ValueError as e:
        parser.error(str(e))
    train_and_evaluate(cfg, args.workdir, quiet=args.quiet)
    return 0


if __name__ == "__main__":
    sys.exit(main())
