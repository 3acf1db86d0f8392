"""Gato training CLI: ``python -m gato_jax.main --config NAME --workdir DIR [--num_steps N]``.

Trains the named config (:func:`gato_jax.configs.get_config`) on a ``(data, fsdp, model)`` mesh,
resuming from ``DIR`` automatically (orbax checkpoints hold the train state, the config and the
data-iterator position, so a killed run continues bit for bit). Metrics go to
``DIR/metrics.jsonl`` (``step``, ``loss``, per-kind losses/accuracies, learning rate, grad norm,
tokens/s, TFLOP/s per device and MFU where the device's peak is known) and TensorBoard.

``--dry_run`` compiles the train step ahead of time (``jax.jit(...).lower(...).compile()``) for
the config and mesh and prints parameter, optimizer-state and activation (XLA temporary) memory
per device without running a step.

``--data`` (config field ``data``) picks the episode source:

* ``synthetic`` (default): the built-in deterministic generator of mixed episodes
  (:mod:`gato_jax.synthetic`).
* ``tfds:NAME@DATA_DIR[:SPLIT][*WEIGHT]``, comma-separated for a mixture: RLDS datasets prepared
  by TFDS under ``DATA_DIR/NAME/VERSION`` (``NAME:VERSION`` pins a version; the split defaults to
  ``train`` and takes TFDS slicing, e.g. ``train[:90%]``; rows draw their dataset with
  probability proportional to ``WEIGHT``, default 1). ``array_record`` datasets are read without
  TensorFlow; ``tfrecord`` ones need it. Episodes below 80% of their task's expert return are
  dropped (``--set expert_fraction=0`` keeps all); ``--set data_threads=N`` sets the loader
  threads. See :mod:`gato_jax.input_pipeline`. Example::

      python -m gato_jax.main --config gato_tiny --workdir /tmp/run \
          --data 'tfds:cartpole@/data/rlds*3,tfds:pendulum@/data/rlds:train[:90%]*1'

* ``gen:DIR[:TASK[*WEIGHT],...]``: a :mod:`gato_jax.datagen` output directory, read with the
  tasks' own specs (:func:`gato_jax.datagen.sources`) and its SentencePiece tokenizer
  (``DIR/tokenizer.model``), so tasks with text in their steps (``vl_shapes`` captions,
  ``text_corpus``) train in the same mixture as control and BabyAI tasks; the task list
  defaults to every task in ``DIR/tasks.json``. The tokenizer is copied to
  ``WORKDIR/tokenizer.model``, where :mod:`gato_jax.evaluate` finds it. Example::

      python -m gato_jax.main --config gato_tiny --workdir /tmp/run \
          --data 'gen:/tmp/gato_data:cartpole*2,babyai_goto_redball,vl_shapes,text_corpus'

Every source is deterministic given ``seed`` and checkpointed with the run (its position is
saved as the checkpoint's data state), so a resumed run sees the same batches.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import logging
import os
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from core_jax import config as config_lib
from core_jax.checkpoint import Checkpointer, resume
from core_jax.metrics import MetricWriter, Throughput
from core_jax.optim import make_schedule
from core_jax.parallel import (
    batch_sharding,
    host_to_global,
    init_sharded,
    initialize_distributed,
    logical_sharding,
    make_mesh,
    make_train_step,
)
from core_jax.progress import progress
from core_jax.train_state import TrainState
from gato_jax.configs import CONFIG_NAMES, GatoConfig, get_config
from gato_jax.models import Gato, dummy_inputs, init_bin_embeddings, param_count
from gato_jax.synthetic import SyntheticData
from gato_jax.train import make_optimizer, train_step


def _create_fn(cfg: GatoConfig, model: Gato):
    tx = make_optimizer(cfg.optim)
    inputs = dummy_inputs(cfg.tokenizer, batch_size=1)

    def create(key):
        params = model.init(key, inputs)["params"]
        params = init_bin_embeddings(params, cfg.tokenizer, cfg.bin_embedding_init)
        return TrainState.create(params=params, tx=tx, rng=jax.random.fold_in(key, 1))

    return create


def _step_fn(cfg: GatoConfig, model: Gato):
    tok = cfg.tokenizer
    return functools.partial(
        train_step,
        model=model,
        schedule=make_schedule(cfg.optim),
        action_input_noise=cfg.action_input_noise,
        continuous_range=(tok.continuous_offset, tok.continuous_offset + tok.num_bins),
    )


def _bytes_per_device(tree: Any, shardings: Any) -> int:
    total = 0
    for x, s in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings), strict=True):
        total += int(np.prod(s.shard_shape(x.shape))) * jnp.dtype(x.dtype).itemsize
    return total


def dry_run(cfg: GatoConfig) -> dict[str, Any]:
    """Compiles one train step ahead of time and reports memory per device (runs nothing).

    Returns:
      A dict of byte counts per device: ``params``, ``optimizer``, ``batch``, ``activations``
      (XLA temporaries of the compiled step), plus ``param_count``, ``mesh``, ``compile_s``.
    """
    mesh = make_mesh(cfg.mesh)
    model = Gato(cfg.model)
    create = _create_fn(cfg, model)
    abstract_boxed = jax.eval_shape(create, jax.random.key(cfg.seed))
    sharding = logical_sharding(abstract_boxed, mesh, cfg.mesh.rules)
    from flax import linen as nn

    abstract = nn.meta.unbox(abstract_boxed)
    state_in = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, sharding
    )
    batch = jax.eval_shape(lambda: dummy_inputs(cfg.tokenizer, cfg.batch_size))
    batch_shard = jax.tree.map(lambda x: batch_sharding(mesh, cfg.mesh.rules, x.ndim), batch)
    batch_in = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), batch, batch_shard
    )
    jitted = jax.jit(
        _step_fn(cfg, model),
        in_shardings=(sharding, batch_shard),
        out_shardings=(sharding, NamedSharding(mesh, PartitionSpec())),
        donate_argnums=(0,),
    )
    t0 = time.perf_counter()
    compiled = jitted.lower(state_in, batch_in).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    report = {
        "config_mesh": dict(mesh.shape),
        "devices": mesh.size,
        "param_count": param_count(cfg.model),
        "params": _bytes_per_device(abstract.params, sharding.params),
        "optimizer": _bytes_per_device(abstract.opt_state, sharding.opt_state),
        "batch": _bytes_per_device(batch, batch_shard),
        "activations": None if mem is None else int(mem.temp_size_in_bytes),
        "compiled_args": None if mem is None else int(mem.argument_size_in_bytes),
        "compile_s": compile_s,
    }
    return report


def _fmt(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 2**20:,.1f} MiB"


def print_dry_run(name: str, cfg: GatoConfig, r: dict[str, Any]) -> None:
    print(
        f"dry run: {name}, {r['param_count']:,} parameters, mesh {r['config_mesh']} "
        f"({r['devices']} devices), global batch {cfg.batch_size} x {cfg.tokenizer.seq_len} "
        f"tokens, compute {cfg.model.transformer.dtype}"
    )
    print("memory per device:")
    print(f"  parameters       {_fmt(r['params'])}")
    print(f"  optimizer state  {_fmt(r['optimizer'])}")
    print(f"  batch            {_fmt(r['batch'])}")
    print(f"  activations      {_fmt(r['activations'])} (XLA temporaries of the compiled step)")
    print(f"compiled in {r['compile_s']:.1f} s; no step was run")


def _gen_data(cfg: GatoConfig):
    from gato_jax import datagen
    from gato_jax.input_pipeline import from_config

    directory, names, weights = datagen.parse_gen_spec(cfg.data)
    srcs = datagen.sources(directory, names, weights, cfg=cfg.tokenizer)
    tok_path = os.path.join(directory, "tokenizer.model")
    tokenizer = datagen.load_tokenizer(directory) if os.path.isfile(tok_path) else None
    return from_config(cfg, tokenizer, sources=srcs)


def make_data(cfg: GatoConfig):
    """The run's host-batch iterator (``state()`` / ``restore()`` for checkpoints)."""
    if cfg.data == "synthetic":
        return SyntheticData(cfg)
    if cfg.data.startswith("gen:"):
        return _gen_data(cfg)
    from gato_jax import input_pipeline  # imports TFDS only for TFDS sources

    return input_pipeline.from_config(cfg)


def _copy_tokenizer(cfg: GatoConfig, workdir: str) -> None:
    """``gen:`` data: the run keeps its text tokenizer (``WORKDIR/tokenizer.model``)."""
    if not cfg.data.startswith("gen:"):
        return
    from gato_jax.datagen import parse_gen_spec

    src = os.path.join(parse_gen_spec(cfg.data)[0], "tokenizer.model")
    if os.path.isfile(src) and jax.process_index() == 0:
        import shutil

        os.makedirs(workdir, exist_ok=True)
        shutil.copyfile(src, os.path.join(workdir, "tokenizer.model"))


def train(
    cfg: GatoConfig, workdir: str, *, quiet: bool = False, time_budget: float | None = None
) -> dict[str, Any]:
    """Trains ``cfg.num_steps`` steps (resuming from ``workdir``); returns the last metrics.

    ``time_budget`` (seconds of this call's training loop, after set-up and compilation
    are counted in) stops earlier: the step that crosses it is logged and checkpointed and
    the returned metrics gain ``stopped_early`` = 1 and ``steps_done``; a rerun resumes from
    there (the learning-rate schedule is still the one of ``cfg.num_steps``).
    """
    if time_budget is not None and not time_budget > 0:
        raise ValueError(f"time_budget={time_budget} must be > 0 seconds")
    t_start = time.monotonic()
    workdir = os.path.abspath(workdir)
    mesh = make_mesh(cfg.mesh)
    model = Gato(cfg.model)
    state, sharding = init_sharded(
        _create_fn(cfg, model), mesh, jax.random.key(cfg.seed), rules=cfg.mesh.rules
    )
    data = make_data(cfg)
    _copy_tokenizer(cfg, workdir)
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
        _step_fn(cfg, model), mesh=mesh, state_sharding=sharding, rules=cfg.mesh.rules
    )
    seq_len = cfg.tokenizer.seq_len
    tput = Throughput(
        tokens_per_step=cfg.batch_size * seq_len,
        flops_per_token=cfg.model.transformer.flops_per_token(seq_len),
    )
    start = int(state.step)
    metrics: dict[str, Any] = {}
    bar = progress(cfg.num_steps, desc="train", initial=start, disable=True if quiet else None)
    stopped = False
    done = start
    for step in range(start, cfg.num_steps):
        state, metrics = step_fn(state, host_to_global(next(data), mesh, cfg.mesh.rules))
        done = step + 1
        stopped = time_budget is not None and time.monotonic() - t_start > time_budget
        last = done == cfg.num_steps or stopped
        if done % cfg.log_every == 0 or last:
            metrics = jax.device_get(metrics)
            rates = tput.update(done)
            if done != start + 1:
                metrics.update(rates)
            writer.write(done, metrics)
            bar.set_postfix(loss=f"{float(metrics['loss']):.4f}")
        ckpt.save(done, state, config=cfg_dict, data_state=data.state(), force=last)
        bar.update(1)
        if stopped:
            break
    bar.close()
    ckpt.wait_until_finished()
    writer.close()
    ckpt.close()
    out = {k: float(v) for k, v in jax.device_get(metrics).items()}
    if stopped:
        out.update(stopped_early=1.0, steps_done=float(done))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help=f"one of {', '.join(CONFIG_NAMES)}")
    parser.add_argument("--workdir", help="run directory (resumed if it holds a checkpoint)")
    parser.add_argument("--num_steps", type=int, help="override the config's num_steps")
    parser.add_argument(
        "--data",
        help="episode source (config.data): 'synthetic', "
        "'tfds:NAME@DATA_DIR[:SPLIT][*WEIGHT][,...]' or 'gen:DIR[:TASK[*WEIGHT],...]' "
        "(see the module docstring)",
    )
    parser.add_argument("--dry_run", action="store_true", help="compile only; print memory")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override, e.g. --set model.transformer.dtype=bfloat16 (repeatable)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument(
        "--time_budget",
        type=float,
        help="stop (and checkpoint) after this many seconds even before --num_steps",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        cfg = get_config(args.config)
        if args.num_steps is not None:
            cfg = dataclasses.replace(cfg, num_steps=args.num_steps)
        if args.data is not None:
            cfg = dataclasses.replace(cfg, data=args.data)
        cfg = config_lib.apply_overrides(cfg, args.set)
    except ValueError as e:
        parser.error(str(e))
    if args.dry_run:
        print_dry_run(args.config, cfg, dry_run(cfg))
        return 0
    if not args.workdir:
        parser.error("--workdir is required unless --dry_run")
    initialize_distributed()
    if args.time_budget is not None and not args.time_budget > 0:
        parser.error(f"--time_budget={args.time_budget} must be > 0")
    last = train(cfg, args.workdir, quiet=args.quiet, time_budget=args.time_budget)
    if last.get("stopped_early"):
        print(
            f"time budget of {args.time_budget:g} s reached: stopped at step "
            f"{int(last['steps_done'])} of {cfg.num_steps} (checkpointed; rerun to resume)"
        )
    elif not args.quiet and last:
        print(f"step {cfg.num_steps}: loss {last['loss']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
