"""Co-SA code-compat training epoch: ``cosa_jax`` vs its PyTorch twin, time and peak memory.

Data: an IEMOCAP-layout synthetic pickle (:func:`cosa_jax.synthetic.write_mult`) with the real
shapes: 2717 training samples, T = 20, (text, audio, vision) dims (300, 74, 35); config
``iemocap_code_compat`` (batch 128 with drop_last: 21 steps per epoch, emb 128, 8 heads, FF 2048,
replay capacity 1000).

* JAX: ``cosa_jax.train.train_epoch`` with the step compiled ahead of time from shapes alone
  (``cosa_jax.train.compile_train_step``, reported as ``compile_s``) before the state is built
  and the data loaded, ``core_jax.memory.malloc_trim`` after compiling and after building the
  state (``--no-compile-first`` / ``--no-trim`` restore the old order); the state donated; each
  timed epoch ends with ``jax.block_until_ready``. The model's memory options (``--remat``,
  ``--scan-modalities``, ``--ff-chunks``) default to the config's and are recorded.
* PyTorch: :class:`benchmarks.cosa_torch.TorchCoSATrainer` (the same model, losses and step,
  parity-tested in ``tests/cosa_jax/test_torch_twin.py``), eager, with the official replay buffer
  (a Python list of per-sample tensor copies, oldest half dropped when full).

Each framework runs in its **own subprocess** (``--worker jax|torch``) so that its peak resident
memory (``VmHWM`` from ``/proc/self/status``, the same as ``ru_maxrss``) is its own; the RSS at
each stage (after loading, after building, after compiling, after the epochs) is recorded too.
Per epoch we record wall time and the process's CPU time (user + system): on the shared 2-core
machine the wall time of both sides swings with other jobs, CPU seconds much less. Workers run
one after the other (``--rounds`` alternates them: jax, torch, jax, torch, ...); the machine's
load average and busy fraction are recorded before the run and before each worker.

On a GPU (``jax.default_backend() == "gpu"``) the JAX worker also times a full run of
``cfg.train.epochs`` (200) epochs with validation and the plateau scheduler after each epoch,
as ``cosa_jax.main`` does.

    python -m benchmarks.run --only cosa_epoch --out benchmarks/results
    python -m benchmarks.cosa_epoch --epochs 3 --rounds 2          # standalone, same JSON
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

NAME = "cosa_epoch"
N_TRAIN, SEQ_LEN = 2717, 20
ORIGINAL = {"epoch_s": 31.0, "peak_rss_gb": 6.9, "full_run_min": 104.0}  # spec section 3
TARGETS = {"speedup_vs_torch": 3.0, "jax_peak_rss_gb": 1.0, "gpu_200_epochs_s": 60.0}


def _mem() -> dict[str, float | None]:
    from core_jax import memory  # jax-free: the PyTorch worker imports it too

    return {"rss_mb": memory.rss_mb(), "hwm_mb": memory.peak_rss_mb()}


def _cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def _median(xs: list[float]) -> float:
    return statistics.median(xs)


# ----------------------------------------------------------------------------------------- workers


def _load(path: str, with_valid: bool = True):
    from cosa_jax import data as D

    return D.load(path, "train", "mult"), (D.load(path, "valid", "mult") if with_valid else None)


def _jax_config(opts: dict[str, Any]):
    import dataclasses

    from cosa_jax.configs import get_config

    cfg = get_config("iemocap_code_compat")
    model = dataclasses.replace(
        cfg.model,
        remat=opts.get("remat", cfg.model.remat),
        scan_modalities=opts.get("scan_modalities", cfg.model.scan_modalities),
        ff_chunks=opts.get("ff_chunks", cfg.model.ff_chunks),
    )
    return dataclasses.replace(cfg, model=model)


def worker_jax(
    path: str, epochs: int, warmup: int, full_run: bool, opts: dict[str, Any] | None = None
) -> dict[str, Any]:
    """One JAX process. ``opts``: ``remat``, ``scan_modalities``, ``ff_chunks`` (model memory
    options, default: the config's), ``compile_first`` (compile the step from shapes before the
    state and the data exist, default True) and ``trim`` (``core_jax.memory.malloc_trim`` after
    compiling and after building the state, plus ``jax.clear_caches()`` after the state,
    default True)."""
    opts = dict(opts or {})
    try:
        from core_jax import cpu_flags

        cpu_flags.apply_default_cpu_flags()
    except ImportError:
        pass
    import jax

    from core_jax import memory
    from cosa_jax import train as T
    from cosa_jax.data import iterate_batches

    compile_first, trim = opts.get("compile_first", True), opts.get("trim", True)
    cfg = _jax_config(opts)

    def stage(name: str) -> None:
        if trim:
            memory.malloc_trim()
        stages[name] = _mem()

    stages = {"start": _mem()}
    train = valid = None
    if not compile_first:
        train, valid = _load(path, full_run)
        stages["loaded"] = _mem()
        first = T._strip(next(iterate_batches(train, cfg.data.batch_size, drop_last=True)))
    t0, c0 = time.perf_counter(), _cpu_s()
    compiled = T.compile_train_step(cfg, None if compile_first else first)
    compile_s, compile_cpu_s = time.perf_counter() - t0, _cpu_s() - c0
    temp_mb = compiled.memory_analysis().temp_size_in_bytes / 2**20
    stage("compiled")
    state = T.make_train_state(cfg, T.batch_spec(cfg), seed=1111)
    jax.block_until_ready(state)
    if trim:  # drop the init program and tracing caches (the step is held in `compiled`)
        jax.clear_caches()
    stage("state_built")
    if compile_first:
        train, valid = _load(path, full_run)
        stages["loaded"] = _mem()
    times, cpu = [], []
    for e in range(warmup + epochs):
        t0, c0 = time.perf_counter(), _cpu_s()
        state, metrics = T.train_epoch(state, train, step_fn=compiled)
        jax.block_until_ready(state)
        if e >= warmup:
            times.append(time.perf_counter() - t0)
            cpu.append(_cpu_s() - c0)
        state = state.replace(epoch=state.epoch + 1)  # next shuffle order, as end_epoch
    stages["after_epochs"] = _mem()
    out: dict[str, Any] = {
        "impl": "jax",
        "backend": jax.default_backend(),
        "device": str(jax.devices()[0]),
        "options": {
            "remat": cfg.model.remat,
            "scan_modalities": cfg.model.scan_modalities,
            "ff_chunks": cfg.model.ff_chunks,
            "compile_first": compile_first,
            "trim": trim,
        },
        "steps_per_epoch": T.steps_per_epoch(cfg, train),
        "compile_s": compile_s,
        "compile_cpu_s": compile_cpu_s,
        "xla_temp_mb": temp_mb,
        "epoch_s": times,
        "epoch_cpu_s": cpu,
        "last_epoch_metrics": metrics,
        "stages": stages,
    }
    if full_run:
        out["full_run"] = _jax_full_run(cfg, train, valid, compiled)
    out["peak_rss_mb"] = _mem()["hwm_mb"]
    return out


def _jax_full_run(cfg, train, valid, compiled) -> dict[str, Any]:
    """``cfg.train.epochs`` epochs from a fresh state, validation + plateau after each."""
    import jax

    from cosa_jax import train as T

    state = T.make_train_state(cfg, train, seed=1112)
    T.evaluate(state, valid)  # compile the eval step outside the timed run
    t0 = time.perf_counter()
    for _ in range(cfg.train.epochs):
        state, m = T.train_epoch(state, train, step_fn=compiled)
        state = T.end_epoch(state, T.evaluate(state, valid)["loss"])
    jax.block_until_ready(state)
    return {
        "epochs": cfg.train.epochs,
        "seconds": time.perf_counter() - t0,
        "final_train_task_loss": m["task"],
        "best_valid_loss": float(state.best_valid),
    }


def worker_torch(path: str, epochs: int, warmup: int) -> dict[str, Any]:
    import torch

    from benchmarks.cosa_torch import TorchCoSATrainer
    from cosa_jax.configs import get_config

    stages = {"start": _mem()}
    train, _ = _load(path, with_valid=False)
    stages["loaded"] = _mem()
    cfg = get_config("iemocap_code_compat")
    tw = TorchCoSATrainer(cfg, seed=1111)
    stages["state_built"] = _mem()
    times, cpu = [], []
    for e in range(warmup + epochs):
        t0, c0 = time.perf_counter(), _cpu_s()
        metrics = tw.train_epoch(train, epoch=e, seed=1111)
        if e >= warmup:
            times.append(time.perf_counter() - t0)
            cpu.append(_cpu_s() - c0)
    stages["after_epochs"] = _mem()
    return {
        "impl": "torch",
        "torch": torch.__version__,
        "torch_num_threads": torch.get_num_threads(),
        "steps_per_epoch": tw.steps // (warmup + epochs),
        "compile_s": None,
        "epoch_s": times,
        "epoch_cpu_s": cpu,
        "last_epoch_metrics": metrics,
        "stages": stages,
        "peak_rss_mb": _mem()["hwm_mb"],
    }


# ----------------------------------------------------------------------------------------- driver


def _opts_argv(opts: dict[str, Any]) -> list[str]:
    argv = []
    if "remat" in opts:
        argv += ["--remat", str(opts["remat"])]
    if "scan_modalities" in opts:
        argv += ["--scan-modalities", "1" if opts["scan_modalities"] else "0"]
    if "ff_chunks" in opts:
        argv += ["--ff-chunks", str(opts["ff_chunks"])]
    if not opts.get("compile_first", True):
        argv.append("--no-compile-first")
    if not opts.get("trim", True):
        argv.append("--no-trim")
    return argv


def _spawn(
    impl: str, path: str, epochs: int, warmup: int, full_run: bool, opts: dict | None = None
) -> dict[str, Any]:
    from benchmarks.harness import _cpu_busy_fraction, _loadavg

    load = {"loadavg": _loadavg(), "cpu_busy_fraction": _cpu_busy_fraction()}
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        cmd = [
            sys.executable, "-m", "benchmarks.cosa_epoch", "--worker", impl, "--data", path,
            "--epochs", str(epochs), "--warmup", str(warmup), "--worker-out", out,
        ]  # fmt: skip
        if full_run:
            cmd.append("--full-run")
        if impl == "jax":
            cmd += _opts_argv(opts or {})
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
        subprocess.run(cmd, check=True, cwd=root, env=env)
        with open(out) as f:
            res = json.load(f)
    res["load_before"] = load
    return res


def run(
    quick: bool = False,
    repeats: int | None = None,
    rounds: int = 1,
    warmup: int = 1,
    data_dir: str | None = None,
    jax_opts: dict[str, Any] | None = None,
    impls: tuple[str, ...] = ("jax", "torch"),
) -> dict[str, Any]:
    """Both workers on the same synthetic IEMOCAP-shaped file; returns the JSON-able result.

    Args:
      quick: 1 timed epoch per worker (smoke test).
      repeats: timed epochs per worker (default 3).
      rounds: worker pairs run one after the other (jax, torch, jax, torch, ...).
      warmup: untimed epochs first (the JAX compile is separate and not in any epoch).
      data_dir: where to write the pickle (default a temporary directory).
      jax_opts: JAX worker options (see :func:`worker_jax`; default: the config's model
        options, compile first, trim).
      impls: which workers to run (``("jax",)``: no speed-up ratio, JAX figures only).
    """
    import jax

    from benchmarks.harness import environment
    from cosa_jax import synthetic

    epochs = 1 if quick else (repeats or 3)
    gpu = jax.default_backend() == "gpu"
    env = environment()  # load before the run (the machine is shared)
    with tempfile.TemporaryDirectory(dir=data_dir) as tmp:
        path = os.path.join(tmp, "iemocap_data.pkl")
        synthetic.write_mult(path, "iemocap", n_train=N_TRAIN, seq_len=SEQ_LEN, seed=0)
        workers: dict[str, list[dict[str, Any]]] = {i: [] for i in impls}
        for r in range(rounds):
            for impl in impls:
                full = gpu and impl == "jax" and r == 0 and not quick
                print(f"   {impl} worker, round {r + 1}/{rounds}", flush=True)
                workers[impl].append(_spawn(impl, path, epochs, warmup, full, jax_opts))
    per: dict[str, dict[str, Any]] = {}
    for impl, runs in workers.items():
        ts = [t for w in runs for t in w["epoch_s"]]
        cs = [t for w in runs for t in w["epoch_cpu_s"]]
        comp = [w["compile_s"] for w in runs if w["compile_s"] is not None]
        per[impl] = {
            "epoch_median_s": _median(ts),
            "epoch_min_s": min(ts),
            "epoch_max_s": max(ts),
            "epoch_cpu_median_s": _median(cs),
            "compile_median_s": _median(comp) if comp else None,
            "peak_rss_mb": max(w["peak_rss_mb"] for w in runs),
            "steps_per_epoch": runs[0]["steps_per_epoch"],
        }
    rows = []
    for impl, p in per.items():
        rows.append({
            "impl": "cosa_jax" if impl == "jax" else "PyTorch twin",
            "epoch s (median)": p["epoch_median_s"],
            "epoch s (min-max)": f"{p['epoch_min_s']:.2f}-{p['epoch_max_s']:.2f}",
            "CPU s / epoch": p["epoch_cpu_median_s"],
            "steps/s": p["steps_per_epoch"] / p["epoch_median_s"],
            "compile s": "-" if p["compile_median_s"] is None else p["compile_median_s"],
            "peak RSS MB": p["peak_rss_mb"],
        })  # fmt: skip
    result: dict[str, Any] = {
        "name": NAME,
        "quick": quick,
        "description": (
            "Co-SA code-compat training epoch (IEMOCAP shapes: 2717 x T 20, dims 300/74/35, "
            "batch 128 drop_last = 21 steps), cosa_jax vs the PyTorch twin with the official "
            "list replay buffer; each framework in its own process"
        ),
        "platform": jax.default_backend(),
        "epochs_per_worker": epochs,
        "warmup_epochs": warmup,
        "rounds": rounds,
        "per_impl": per,
        "jax_options": workers["jax"][0].get("options") if "jax" in workers else None,
        "original_code": ORIGINAL,
        "targets": TARGETS,
        "workers": workers,
        "rows": rows,
        "environment": env,
        "loadavg_after": list(os.getloadavg()),
    }
    if "jax" in per and "torch" in per:
        j, t = per["jax"], per["torch"]
        result["speedup_jax_over_torch_wall"] = t["epoch_median_s"] / j["epoch_median_s"]
        result["speedup_jax_over_torch_cpu"] = t["epoch_cpu_median_s"] / j["epoch_cpu_median_s"]
    full_runs = [w["full_run"] for w in workers.get("jax", []) if "full_run" in w]
    if full_runs:
        result["gpu_full_run"] = full_runs[0]
    return result


def _loads(values) -> str:
    return "-" if not values else "/".join(f"{v:.1f}" for v in values)


def summary(result: dict[str, Any]) -> str:
    per, env = result["per_impl"], result["environment"]
    parts = []
    if "speedup_jax_over_torch_wall" in result:
        parts.append(
            f"JAX / PyTorch twin epoch speed-up **{result['speedup_jax_over_torch_wall']:.2f}x** "
            f"wall ({result['speedup_jax_over_torch_cpu']:.2f}x in process CPU seconds)"
        )
    for impl, name in (("jax", "JAX"), ("torch", "PyTorch")):
        if impl in per:
            p = per[impl]
            parts.append(
                f"{name} {p['epoch_median_s']:.1f} s / {p['epoch_cpu_median_s']:.1f} CPU-s per "
                f"epoch, peak RSS {p['peak_rss_mb']:.0f} MB"
            )
    if "jax" in per:
        parts.append(
            f"JAX compile {per['jax']['compile_median_s']:.1f} s (not in any epoch), options "
            f"{result.get('jax_options')}"
        )
    s = (
        "; ".join(parts) + ". Median of "
        f"{result['epochs_per_worker']} epochs x {result['rounds']} round(s) per side after "
        f"{result['warmup_epochs']} warm-up epoch(s). Targets: >= 3x, JAX < 1 GB; the official "
        f"code: ~{ORIGINAL['epoch_s']:.0f} s/epoch and {ORIGINAL['peak_rss_gb']} GB on a 2-core "
        f"CPU. Load average before {_loads(env.get('loadavg_before'))} (CPU busy "
        f"{env.get('cpu_busy_fraction_before') or 0:.0%}), after "
        f"{_loads(result.get('loadavg_after'))}: on the shared machine wall times are noisy."
    )
    if "gpu_full_run" in result:
        g = result["gpu_full_run"]
        s += f" GPU: {g['epochs']} epochs (with validation) in {g['seconds']:.1f} s."
    return s


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", choices=("jax", "torch"), help="(internal) one framework")
    parser.add_argument("--worker-out", help="(internal) worker result JSON")
    parser.add_argument("--data", help="(internal) IEMOCAP-layout pickle")
    parser.add_argument("--full-run", action="store_true", help="(internal) time cfg.train.epochs")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per worker")
    parser.add_argument("--warmup", type=int, default=1, help="untimed epochs per worker")
    parser.add_argument("--rounds", type=int, default=1, help="jax/torch worker pairs")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--remat", help="JAX model.remat (none, ff, ff_relu, layer)")
    parser.add_argument("--scan-modalities", type=int, choices=(0, 1), help="JAX model option")
    parser.add_argument("--ff-chunks", type=int, help="JAX model.ff_chunks")
    parser.add_argument("--no-compile-first", action="store_true", help="load data first")
    parser.add_argument("--no-trim", action="store_true", help="no malloc_trim")
    parser.add_argument("--only", choices=("jax", "torch"), help="run one side only")
    parser.add_argument("--tag", help="write cosa_epoch_TAG.json instead of cosa_epoch.json")
    parser.add_argument("--out", default="benchmarks/results", help="output directory")
    args = parser.parse_args(argv)
    opts: dict[str, Any] = {
        "compile_first": not args.no_compile_first,
        "trim": not args.no_trim,
    }
    if args.remat is not None:
        opts["remat"] = args.remat
    if args.scan_modalities is not None:
        opts["scan_modalities"] = bool(args.scan_modalities)
    if args.ff_chunks is not None:
        opts["ff_chunks"] = args.ff_chunks
    if args.worker:
        if args.worker == "jax":
            res = worker_jax(args.data, args.epochs, args.warmup, args.full_run, opts)
        else:
            res = worker_torch(args.data, args.epochs, args.warmup)
        with open(args.worker_out, "w") as f:
            json.dump(res, f)
        return 0

    from benchmarks.harness import markdown_table, write_json

    res = run(
        quick=args.quick, repeats=args.epochs, rounds=args.rounds, warmup=args.warmup,
        jax_opts=opts, impls=(args.only,) if args.only else ("jax", "torch"),
    )  # fmt: skip
    res["command"] = "python -m benchmarks.cosa_epoch " + " ".join(argv or sys.argv[1:])
    res["markdown"] = f"## {NAME}\n\n{summary(res)}\n\n{markdown_table(res['rows'])}\n"
    tag = f"_{args.tag}" if args.tag else ""
    write_json(os.path.join(args.out, f"{NAME}{tag}.json"), res)
    print(res["markdown"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
