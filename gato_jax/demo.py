"""Mini-Gato demo: multi-domain expert data -> a few minutes of training on CPU -> evaluation.

Command: ``python -m gato_jax.demo --workdir runs/gato_demo`` (rerun: every stage resumes or
reuses what is already in the workdir; ``--tasks`` / ``--train_steps`` change the run).

Stages (each the library's own CLI, called in-process):

1. ``python -m gato_jax.datagen``: expert episodes of ``cartpole`` (control) and samples of
   ``vl_shapes`` (image | caption) and ``text_corpus`` (sentences), written as RLDS datasets
   with a SentencePiece tokenizer trained on their text (``WORKDIR/data``);
2. ``python -m gato_jax.main --config gato_tiny --data gen:WORKDIR/data:...``: one 2-block
   Gato trained on the mixture, control actions, captions and text together
   (``WORKDIR/run``; checkpoints, metrics.jsonl);
3. ``python -m gato_jax.evaluate``: the control task is played by a batched, KV-cached
   :class:`~gato_jax.policy.GatoPolicy` prompted with a successful expert demonstration and
   scored 0 (random policy) .. 100 (expert); ``vl_shapes`` images the model never saw (fresh
   seeds) are captioned greedily and compared with their reference captions; text perplexity.
   The table, per-domain means and sample captions are printed and written to
   ``WORKDIR/eval`` (results.json / results.md / scores.png).

Demo settings (:data:`TRAIN_OVERRIDES`, all ordinary ``--set`` overrides of ``gato_tiny``):
96-token windows (one vl image + caption, or ~16 CartPole steps, fit), batch 16, peak learning
rate 1e-2 (warm-up 30 steps, cosine to 1e-3 over the run), no stochastic depth (a 2-block
model trained this briefly does not need it), and a 512-piece text vocabulary
(``tokenizer.text_vocab_size=512``, so the model's vocabulary is 512 + 1024 + 1 = 1537 ids
instead of the paper's 33,025; the output layer over 33k ids was ~90% of a step's FLOPs). The
token layout and loss are the paper's; only the id ranges are smaller.

Runtime and result: see the README section (measured numbers, with the load they were measured
under). The numbers printed are what the trained model does, not a claim.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

DATA_TASKS = "cartpole,vl_shapes,text_corpus"
# Mixture weights of the training run (tasks absent from --tasks are dropped).
WEIGHTS = {"cartpole": 2.0, "vl_shapes": 3.0, "text_corpus": 0.5}
TRAIN_OVERRIDES = (
    "data_threads=0",
    "batch_size=16",
    "log_every=50",
    "tokenizer.seq_len=96",
    "model.transformer.max_len=96",
    "tokenizer.max_patches=24",
    "tokenizer.text_vocab_size=512",
    "model.transformer.vocab_size=1537",
    "optim.peak_lr=0.01",
    "optim.end_lr=0.001",
    "optim.warmup_steps=30",
    "model.transformer.stochastic_depth=0.0",
)


def _print_captions(results_path: str, limit: int = 5) -> None:
    with open(results_path) as f:
        results = json.load(f)
    for row in results["tasks"]:
        for pair in row.get("caption_samples", [])[:limit]:
            ok = "ok " if pair["generated"] == pair["reference"] else "   "
            print(
                f"  {ok} generated: {pair['generated']!r}\n      reference: {pair['reference']!r}"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", default="runs/gato_demo")
    parser.add_argument("--tasks", default=DATA_TASKS)
    parser.add_argument("--data_episodes", type=int, default=100)
    parser.add_argument("--train_steps", type=int, default=1500)
    parser.add_argument("--eval_episodes", type=int, default=8)
    args = parser.parse_args(argv)

    from gato_jax import datagen, evaluate
    from gato_jax import main as train_main

    names = [n.strip() for n in args.tasks.split(",") if n.strip()]
    data = os.path.join(args.workdir, "data")
    run = os.path.join(args.workdir, "run")
    out = os.path.join(args.workdir, "eval")
    t0 = time.perf_counter()
    if not os.path.isfile(os.path.join(data, "tasks.json")):
        print(f"[1/3] expert data: {','.join(names)} x {args.data_episodes} episodes -> {data}")
        rc = datagen.main(
            ["--tasks", ",".join(names), "--episodes", str(args.data_episodes), "--out", data,
             "--quiet"]
        )  # fmt: skip
        if rc:
            return rc
    else:
        print(f"[1/3] expert data: reusing {data}")
    t1 = time.perf_counter()
    mixture = ",".join(f"{n}*{WEIGHTS.get(n, 1.0):g}" for n in names)
    print(f"[2/3] training gato_tiny for {args.train_steps} steps on gen:{data}:{mixture} -> {run}")
    overrides = [*TRAIN_OVERRIDES, f"optim.decay_steps={args.train_steps}"]
    rc = train_main.main(
        ["--config", "gato_tiny", "--workdir", run, "--num_steps", str(args.train_steps),
         "--data", f"gen:{data}:{mixture}", *sum((["--set", o] for o in overrides), [])]
    )  # fmt: skip
    if rc:
        return rc
    t2 = time.perf_counter()
    print(f"[3/3] evaluating ({args.eval_episodes} episodes per task) -> {out}")
    rc = evaluate.main(
        ["--workdir", run, "--tasks", ",".join(names), "--episodes", str(args.eval_episodes),
         "--out", out]
    )  # fmt: skip
    if rc:
        return rc
    print("sample captions of held-out images (greedy):")
    _print_captions(os.path.join(out, "results.json"))
    t3 = time.perf_counter()
    print(
        f"demo finished in {t3 - t0:.0f} s (data {t1 - t0:.0f} s, training {t2 - t1:.0f} s, "
        f"evaluation {t3 - t2:.0f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
