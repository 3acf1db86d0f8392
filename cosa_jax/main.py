"""Co-SA CLI: ``python -m cosa_jax.main --config NAME --data PATH --workdir DIR``.

Trains the named config (:func:`cosa_jax.configs.get_config`) once per seed (default 1111-1115)
and reports test metrics as mean ± std over the seeds (population std, ``ddof=0``).

Protocol (spec section 6):

* **default (honest):** after every epoch the validation loss drives ReduceLROnPlateau and picks the
  checkpoint (the parameters of the epoch with the lowest validation loss); the test split is scored
  once, with that checkpoint, after training.
* ``--best_test_per_metric``: Co-SA's own protocol — the test split is scored after every epoch and
  each metric keeps its best value over epochs (max; min for MAE). It selects on the test set and
  is optimistic; every output produced with it says so.

``--data`` is the pickle or the directory holding ``cfg.data.filename``. Per seed, ``DIR/seed_S/``
holds orbax checkpoints (one per epoch; a killed run resumes from the last one when the command
is rerun), ``metrics.jsonl`` and TensorBoard events. ``DIR/results.json`` and ``DIR/results.md``
hold the table; every table names its metric convention and protocol.

Overrides: ``--epochs N``, ``--seeds 1111,1112``, ``--set section.key=value`` (repeatable, e.g.
``--set data.dims=(16,12,10) --set model.emb_dim=32``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from typing import Any

import jax
import numpy as np

from core_jax import config as config_lib
from core_jax.checkpoint import Checkpointer, resume
from core_jax.metrics import MetricWriter
from core_jax.progress import progress
from cosa_jax import data as D
from cosa_jax import train as T
from cosa_jax.configs import CONFIG_NAMES, CoSAConfig, get_config

HONEST = "checkpoint selected on validation loss; test scored once"
CO_SA = (
    "Co-SA protocol: best test value per metric over all epochs (selects on the test set; "
    "optimistic, not comparable with honest numbers)"
)
LOWER_IS_BETTER = ("MAE",)


def data_path(cfg: CoSAConfig, path: str) -> str:
    """The pickle: ``path`` itself, or ``path/cfg.data.filename`` for a directory."""
    full = os.path.join(path, cfg.data.filename) if os.path.isdir(path) else path
    if not os.path.exists(full):
        raise FileNotFoundError(f"data file {full} does not exist (config {cfg.name})")
    return full


def load_splits(cfg: CoSAConfig, path: str) -> dict[str, D.Dataset]:
    """Train / valid / test :class:`cosa_jax.data.Dataset` of the config's file and layout."""
    full = data_path(cfg, path)
    return {s: D.load(full, s, cfg.data.layout, nan_to_zero=cfg.data.nan_to_zero) for s in D.SPLITS}


class _Position:
    """Data-position adapter for ``core_jax.checkpoint.resume``: the epoch lives in the state;
    the JSON side only carries the per-epoch best test values of the Co-SA protocol."""

    def __init__(self):
        self.best_test: dict[str, float] = {}

    def restore(self, state: dict | None) -> None:
        raw = (state or {}).get("best_test") or {}
        self.best_test = {k: float("nan") if v is None else float(v) for k, v in raw.items()}

    def state(self) -> dict:
        return {"best_test": {k: None if np.isnan(v) else v for k, v in self.best_test.items()}}

    def update(self, metrics: dict[str, float]) -> None:
        for k, v in metrics.items():
            old = self.best_test.get(k)
            if old is None or np.isnan(old):
                self.best_test[k] = v
            elif not np.isnan(v):
                self.best_test[k] = min(old, v) if k in LOWER_IS_BETTER else max(old, v)


def run_seed(
    cfg: CoSAConfig,
    splits: dict[str, D.Dataset],
    workdir: str,
    seed: int,
    *,
    quiet: bool = False,
    best_test_per_metric: bool = False,
    stop_after: int | None = None,
) -> dict[str, Any] | None:
    """Train one seed (resuming from ``workdir`` if it holds checkpoints) and score the test split.

    Args:
      cfg: the run config.
      splits: train / valid / test datasets.
      workdir: this seed's directory.
      seed: the seed.
      quiet: no progress output.
      best_test_per_metric: also track Co-SA's best-test-per-metric protocol.
      stop_after: stop after this many epochs in this call, as if killed (tests of resume);
        returns None then.

    Returns:
      ``{"seed", "best_epoch", "best_valid_loss", "test": metrics}`` (+ ``"best_test_per_metric"``
      when the Co-SA protocol is on).
    """
    os.makedirs(workdir, exist_ok=True)
    state = T.make_train_state(cfg, splits["train"], seed)
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=2)
    writer = MetricWriter(workdir)
    position = _Position()
    cfg_dict = config_lib.to_dict(cfg)
    sharding = jax.tree_util.tree_map(lambda x: x.sharding, state)
    state, resumed = resume(
        ckpt, state, sharding, data=position, writer=writer, config=cfg_dict, check_key="model"
    )
    if resumed is not None and not quiet:
        print(f"seed {seed}: resumed after epoch {resumed} from {ckpt.directory}")
    per_epoch = T.steps_per_epoch(cfg, splits["train"])
    start = int(state.epoch)
    bar = progress(
        cfg.train.epochs * per_epoch, desc=f"{cfg.name} seed {seed}",
        initial=start * per_epoch, disable=True if quiet else None,
    )  # fmt: skip
    stop = cfg.train.epochs if stop_after is None else min(cfg.train.epochs, start + stop_after)
    for epoch in range(start, stop):
        state, train_m = T.train_epoch(state, splits["train"], bar=bar)
        valid = T.evaluate(state, splits["valid"])
        state = T.end_epoch(state, valid["loss"])
        record = {f"train/{k}": v for k, v in train_m.items()}
        record.update({"valid/loss": valid["loss"], "lr": float(state.lr)})
        record.update({f"valid/{k}": v for k, v in valid["metrics"].items()})
        if best_test_per_metric:
            test_e = T.evaluate(state, splits["test"])
            position.update(test_e["metrics"])
            record.update({f"test_every_epoch/{k}": v for k, v in test_e["metrics"].items()})
        writer.write(epoch + 1, record)
        bar.set_postfix(loss=f"{train_m['loss']:.3f}", valid=f"{valid['loss']:.3f}")
        ckpt.save(epoch + 1, state, config=cfg_dict, data_state=position.state())
    bar.close()
    ckpt.wait_until_finished()
    if stop < cfg.train.epochs:
        writer.close()
        ckpt.close()
        return None
    test = T.evaluate(state, splits["test"], use_best=True)
    out = {
        "seed": seed,
        "best_epoch": int(state.best_epoch) + 1,
        "best_valid_loss": float(state.best_valid),
        "test": test["metrics"],
        "test_loss": test["loss"],
    }
    if best_test_per_metric:
        out["best_test_per_metric"] = dict(position.best_test)
    writer.write(cfg.train.epochs, {f"test/{k}": v for k, v in test["metrics"].items()})
    writer.close()
    ckpt.close()
    with open(os.path.join(workdir, "result.json"), "w") as fh:
        json.dump(_jsonable(out), fh, indent=2)
    return out


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and not np.isfinite(x):
        return None
    return x


def summarize(per_seed: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """``{metric: {"mean", "std"}}`` over seeds (population std; NaN-valued metrics stay NaN)."""
    keys = list(per_seed[0])
    out = {}
    for k in keys:
        v = np.asarray([m[k] for m in per_seed], np.float64)
        out[k] = {"mean": float(np.mean(v)), "std": float(np.std(v))}
    return out


def format_summary(
    summary: dict[str, dict[str, float]], convention: str, protocol: str, title: str
) -> str:
    """Markdown table ``| metric (<convention> convention) | mean ± std |`` under a title line
    that names the protocol."""
    lines = [
        title,
        f"protocol: {protocol}",
        "",
        f"| metric ({convention} convention) | mean ± std |",
    ]
    lines.append("|---|---|")
    for k, s in summary.items():
        val = "n/a" if np.isnan(s["mean"]) else f"{s['mean']:.4f} ± {s['std']:.4f}"
        lines.append(f"| {k} | {val} |")
    return "\n".join(lines)


def run(cfg: CoSAConfig, data: str, workdir: str, *, quiet: bool = False) -> dict[str, Any]:
    """All seeds of ``cfg``; writes ``results.json`` / ``results.md`` and returns the results."""
    workdir = os.path.abspath(workdir)
    splits = load_splits(cfg, data)
    seeds = list(cfg.train.seeds)
    runs = [
        run_seed(
            cfg, splits, os.path.join(workdir, f"seed_{s}"), s, quiet=quiet,
            best_test_per_metric=cfg.train.best_test_per_metric,
        )
        for s in seeds
    ]  # fmt: skip
    convention = T.metric_convention(cfg)
    title = (
        f"Co-SA {cfg.name} ({cfg.mode} mode), {cfg.data.dataset} test split, "
        f"{len(seeds)} seed(s) {', '.join(map(str, seeds))}, {cfg.train.epochs} epochs"
    )
    results: dict[str, Any] = {
        "config": cfg.name,
        "mode": cfg.mode,
        "convention": convention,
        "seeds": seeds,
        "per_seed": runs,
        "honest": {"protocol": HONEST, "summary": summarize([r["test"] for r in runs])},
    }
    tables = [format_summary(results["honest"]["summary"], convention, HONEST, title)]
    if cfg.train.best_test_per_metric:
        summary = summarize([r["best_test_per_metric"] for r in runs])
        results["co_sa_protocol"] = {"protocol": CO_SA, "summary": summary}
        tables.append(format_summary(summary, convention, CO_SA, title))
    results["markdown"] = "\n\n".join(tables)
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "results.json"), "w") as fh:
        json.dump(_jsonable(results), fh, indent=2)
    with open(os.path.join(workdir, "results.md"), "w") as fh:
        fh.write(results["markdown"] + "\n")
    return results


def build_config(
    name: str,
    *,
    epochs: int | None = None,
    seeds: str | None = None,
    overrides: list[str] | None = None,
    best_test_per_metric: bool = False,
) -> CoSAConfig:
    """The named config with CLI overrides applied (``ValueError`` naming a bad key/value)."""
    cfg = config_lib.apply_overrides(get_config(name), overrides)
    train = cfg.train
    if epochs is not None:
        train = dataclasses.replace(train, epochs=epochs)
    if seeds:
        try:
            parsed = tuple(int(s) for s in seeds.split(","))
        except ValueError as e:
            raise ValueError(f"--seeds {seeds!r}: expected comma-separated integers") from e
        train = dataclasses.replace(train, seeds=parsed)
    if best_test_per_metric:
        train = dataclasses.replace(train, best_test_per_metric=True)
    return dataclasses.replace(cfg, train=train)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help=f"one of {', '.join(CONFIG_NAMES)}")
    parser.add_argument("--data", required=True, help="pickle, or directory holding it")
    parser.add_argument("--workdir", required=True, help="run directory (resumed when rerun)")
    parser.add_argument("--epochs", type=int, help="override train.epochs")
    parser.add_argument("--seeds", help="comma-separated seeds (default 1111-1115)")
    parser.add_argument(
        "--best_test_per_metric", action="store_true",
        help="also report Co-SA's own protocol (best test value per metric over epochs; labelled)",
    )  # fmt: skip
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="config override, e.g. --set model.emb_dim=64 (repeatable)",
    )  # fmt: skip
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        cfg = build_config(
            args.config, epochs=args.epochs, seeds=args.seeds, overrides=args.set,
            best_test_per_metric=args.best_test_per_metric,
        )  # fmt: skip
        data_path(cfg, args.data)
    except (ValueError, FileNotFoundError) as e:
        parser.error(str(e))
    results = run(cfg, args.data, args.workdir, quiet=args.quiet)
    print(results["markdown"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
