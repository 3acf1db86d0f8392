"""Co-SA demo: a short run on a synthetic IEMOCAP-layout file, printing the metrics table.

Command: ``python -m cosa_jax.demo --workdir runs/cosa_demo``.
Runtime: about a minute on a 2-core CPU (mostly XLA compilation of the one train step).
Expected result: mean per-emotion accuracy well above the majority-class baseline it prints
(planted signal, see :mod:`cosa_jax.synthetic`), with the protocol and metric convention named.

What runs: :func:`cosa_jax.synthetic.write_mult` writes ``iemocap_data.pkl`` (MulT layout, small
feature dims) into the workdir; then :func:`cosa_jax.main.run` trains the ``iemocap_paper`` config
at a small size (emb 32, 4 heads, 8 steps per sequence) for two seeds — agents with MSD and DPSR,
the policy with cross-modal advice, critic and target networks, replay buffer, one jitted step,
ReduceLROnPlateau, orbax checkpoints per epoch (rerunning resumes) — selects each seed's checkpoint
on validation loss and scores the test split once.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from cosa_jax import main as cosa_main
from cosa_jax import synthetic

DIMS = (32, 16, 12)  # text, audio, vision
OVERRIDES = [
    f"data.dims={DIMS}", "data.seq_len=8", "data.batch_size=32", "model.emb_dim=32",
    "model.num_heads=4", "model.ff_dim=64", "sac.buffer_capacity=256", "optim.peak_lr=2e-3",
]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", default="runs/cosa_demo")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seeds", default="1111,1112")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    workdir = os.path.abspath(args.workdir)
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "iemocap_data.pkl")
    if not os.path.exists(path):
        synthetic.write_mult(path, "iemocap", n_train=512, seq_len=8, dims=DIMS, seed=0)
    cfg = cosa_main.build_config(
        "iemocap_paper", epochs=args.epochs, seeds=args.seeds, overrides=OVERRIDES
    )
    splits = cosa_main.load_splits(cfg, path)
    y = np.asarray(splits["test"].batch.labels)
    majority = float(np.mean(np.maximum(y.mean(0), 1.0 - y.mean(0))))
    results = cosa_main.run(cfg, path, workdir, quiet=args.quiet)
    print(results["markdown"])
    mean_acc = results["honest"]["summary"]["Mean_acc"]["mean"]
    print(
        f"\nmajority-class baseline Mean_acc (iemocap convention) = {majority:.4f}; "
        f"Co-SA Mean_acc = {mean_acc:.4f}\nresults: {os.path.join(workdir, 'results.md')}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
