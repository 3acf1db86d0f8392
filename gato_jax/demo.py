"""Mini-Gato demo: multi-domain expert data -> a few minutes of training on CPU -> evaluation.

Commands::

    python -m gato_jax.demo --workdir runs/gato_demo                 # recipe "demo", minutes
    python -m gato_jax.demo --recipe demo_babyai --workdir runs/gato_b   # + BabyAI, longer
    python -m gato_jax.demo --recipe long --workdir runs/gato_long   # all 13 tasks, ~1 hour

(rerun: every stage resumes or reuses what is already in the workdir; ``--tasks`` /
``--train_steps`` / ``--data_episodes`` / ``--eval_episodes`` / ``--time_budget`` change the
run.)

Stages (each the library's own CLI, called in-process):

1. ``python -m gato_jax.datagen``: expert episodes of the environment tasks and samples of
   ``vl_shapes`` (image | caption) and ``text_corpus`` (sentences), written as RLDS datasets
   with a SentencePiece tokenizer trained on their text (``WORKDIR/data``; per-task episode
   counts, :attr:`Recipe.episodes_per_task`);
2. ``python -m gato_jax.main --config gato_tiny --data gen:WORKDIR/data:...``: one Gato trained
   on the mixture, control actions, captions and text together (``WORKDIR/run``; checkpoints,
   metrics.jsonl), stopped early by ``--time_budget`` where the recipe has one;
3. ``python -m gato_jax.evaluate``: every environment task is played by a batched, KV-cached
   :class:`~gato_jax.policy.GatoPolicy` prompted with a successful expert demonstration and
   scored 0 (random policy) .. 100 (expert); ``vl_shapes`` images the model never saw (fresh
   seeds) are captioned greedily and compared with their reference captions (exact match,
   token accuracy, per-object colour / shape / place accuracy); text perplexity. The table,
   per-domain means and sample captions are printed and written to ``WORKDIR/eval``
   (results.json / results.md / scores.png).

Recipes (:data:`RECIPES`, all settings ordinary ``--set`` overrides of ``gato_tiny``; both use
a 512-piece text vocabulary, so the model's vocabulary is 512 + 1024 + 1 = 1537 ids instead of
the paper's 33,025, and no stochastic depth; the token layout and loss are the paper's):

* ``demo`` (default): ``cartpole``, ``vl_shapes`` (100 episodes = 500 images; with 2,000
  episodes the same 1,500 steps underfit: held-out token accuracy 20% vs 41%) and
  ``text_corpus``; the 2-block d_model-64 model, 96-token windows, batch 16, 1,500 steps, peak
  learning rate 1e-2 (warm-up 30, cosine to 1e-3).
* ``demo_babyai``: the demo plus ``babyai_goto_redball`` (2,000 ``vl_shapes`` episodes: with
  500 images and this recipe the captions were memorised); 200-token windows (chosen when a BabyAI
  step was up to 182 tokens; since the one-token-per-cell view it is at most 84),
  batch 12, 1,200 steps.
* ``long``: all 13 tasks; the demo's 2-block d_model-64 model, 200-token windows with 64 patch
  slots, batch 16, 2,400 steps (cosine) with a 40-minute training budget, mixture weights
  :data:`LONG_WEIGHTS`, so that data, training and evaluation aim at an hour on the 2-core CPU
  (the earlier 4-block d_model-128 / 256-token recipe reached 376 of 1,000 steps in 35 min).

Every run writes ``WORKDIR/timing.json``: wall and process CPU seconds per stage and the load
average at the end of each stage (the CPU is shared, so wall time alone says little).

Runtime and result: see the README section (measured numbers, with the load they were measured
under). The numbers printed are what the trained model does, not a claim.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import sys
import time


@dataclasses.dataclass(frozen=True)
class Recipe:
    """One demo recipe: data, mixture, ``gato_tiny`` overrides, steps and evaluation.

    Attributes:
      tasks: comma-separated task names (``--tasks`` overrides; weights and episode counts of
        tasks not listed are ignored).
      episodes: expert episodes (or samples) per task; ``episodes_per_task`` overrides it per
        task (BabyAI episodes are a few steps long, Meta-World's 150, Pong's 500).
      weights: mixture weight (probability of a training row) per task, default 1.
      overrides: ``--set`` overrides of ``gato_tiny``.
      train_steps: optimizer steps (``--train_steps`` overrides); the cosine schedule ends there.
      time_budget: seconds of training after which the run stops and checkpoints early
        (``None``: no limit).
      eval_episodes: rollouts per environment task (batched), and vl/text samples.
    """

    tasks: str
    episodes: int
    weights: dict
    overrides: tuple
    train_steps: int
    eval_episodes: int
    episodes_per_task: dict = dataclasses.field(default_factory=dict)
    time_budget: float | None = None


# ``long``: mixture weights (probability of a training row), steps and training budget. A
# control row holds 25-50 steps, a Meta-World row four, a BabyAI row two to three (<= 84 tokens
# a step; one of 182 before the one-token-per-cell view): the
# weights favour the tasks a few thousand rows can teach (``demo_babyai`` gave BabyAI 5,200
# rows of GoToRedBall and no episode reached the ball), and every task keeps a share.
LONG_WEIGHTS = {
    "cartpole": 1.5,
    "acrobot": 1.5,
    "pendulum": 2.0,
    "mountaincar_continuous": 0.5,
    "babyai_goto_redball": 1.0,
    "babyai_goto_local": 1.0,
    "babyai_pickup_loc": 1.0,
    "metaworld_reach": 2.5,
    "metaworld_push": 1.5,
    "metaworld_drawer_open": 2.0,
    "atari_pong": 1.0,
    "vl_shapes": 1.0,
    "text_corpus": 0.3,
}
LONG_STEPS = 2400
LONG_BUDGET = 40 * 60.0

# Shared by both recipes: a 512-piece text vocabulary (model vocabulary 512 + 1024 + 1 = 1537
# ids instead of 33,025: the output layer over 33k ids was ~90% of a tiny model's FLOPs), no
# stochastic depth, data loaded in the training thread.
_COMMON = (
    "data_threads=0",
    "tokenizer.text_vocab_size=512",
    "model.transformer.vocab_size=1537",
    "model.transformer.stochastic_depth=0.0",
)

RECIPES = {
    # The default (``make demo-gato``): control, vision-language and text in 96-token windows.
    "demo": Recipe(
        tasks="cartpole,vl_shapes,text_corpus",
        episodes=100,
        weights={"cartpole": 2.0, "vl_shapes": 3.0, "text_corpus": 0.5},
        overrides=(
            *_COMMON,
            "batch_size=16",
            "log_every=50",
            "tokenizer.seq_len=96",
            "model.transformer.max_len=96",
            "tokenizer.max_patches=24",
            "optim.peak_lr=0.01",
            "optim.end_lr=0.001",
            "optim.warmup_steps=30",
        ),
        train_steps=1500,
        eval_episodes=8,
    ),
    # The demo plus BabyAI GoToRedBall: 200-token windows (chosen when one BabyAI step was up to
    # 182 tokens; it is now at most 84, so ~128 would do, untested).
    "demo_babyai": Recipe(
        tasks="cartpole,babyai_goto_redball,vl_shapes,text_corpus",
        episodes=100,
        episodes_per_task={"babyai_goto_redball": 500, "vl_shapes": 2000},
        weights={
            "cartpole": 2.0,
            "babyai_goto_redball": 2.0,
            "vl_shapes": 3.0,
            "text_corpus": 0.3,
        },
        overrides=(
            *_COMMON,
            "batch_size=12",
            "log_every=50",
            "tokenizer.seq_len=200",
            "model.transformer.max_len=200",
            "tokenizer.max_patches=48",
            "optim.peak_lr=0.01",
            "optim.end_lr=0.001",
            "optim.warmup_steps=30",
        ),
        train_steps=1200,
        eval_episodes=8,
    ),
    # Every task, sized so that enough optimizer steps fit in the hour: the demo's 2-block
    # d_model-64 model (a step of the 4-block d_model-128 model with 256-token windows and 256
    # patch slots cost 4-5x as much, so only 376 steps fitted), 200-token windows (the 16-token
    # prompt plus two BabyAI steps of at most 84 tokens) and 64
    # patch slots per window (every row pays for every slot in the patch ResNet; a vl_shapes
    # episode has 45 patches, a Pong step 25, so Pong windows keep the frames of their first
    # 2-3 steps and the later steps' frame tokens are masked out, ``patch_overflow``).
    "long": Recipe(
        tasks=(
            "cartpole,acrobot,pendulum,mountaincar_continuous,babyai_goto_redball,"
            "babyai_goto_local,babyai_pickup_loc,metaworld_reach,metaworld_push,"
            "metaworld_drawer_open,atari_pong,vl_shapes,text_corpus"
        ),
        episodes=100,
        episodes_per_task={
            "babyai_goto_redball": 1000,
            "babyai_goto_local": 1000,
            "babyai_pickup_loc": 1000,
            "metaworld_reach": 50,
            "metaworld_push": 50,
            "metaworld_drawer_open": 50,
            "atari_pong": 30,
            "vl_shapes": 400,
            "text_corpus": 200,
        },
        weights=LONG_WEIGHTS,
        overrides=(
            *_COMMON,
            "batch_size=16",
            "log_every=50",
            "checkpoint_every=250",
            "tokenizer.seq_len=200",
            "model.transformer.max_len=200",
            "tokenizer.max_patches=64",
            "optim.peak_lr=0.01",
            "optim.end_lr=0.001",
            "optim.warmup_steps=50",
        ),
        train_steps=LONG_STEPS,
        time_budget=LONG_BUDGET,
        eval_episodes=10,
    ),
}
# Backwards-compatible names (the demo recipe).
DATA_TASKS = RECIPES["demo"].tasks
WEIGHTS = RECIPES["demo"].weights
TRAIN_OVERRIDES = RECIPES["demo"].overrides


def _print_captions(results_path: str, limit: int = 5) -> None:
    with open(results_path) as f:
        results = json.load(f)
    for row in results["tasks"]:
        for pair in row.get("caption_samples", [])[:limit]:
            ok = "ok " if pair["generated"] == pair["reference"] else "   "
            print(
                f"  {ok} generated: {pair['generated']!r}\n      reference: {pair['reference']!r}"
            )


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process so far (all threads)."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def stage_timing(marks: list[tuple[str, float, float, tuple]]) -> dict:
    """Per-stage wall / CPU seconds and load averages from ``(name, wall, cpu, loadavg)`` marks.

    ``marks[0]`` is the start; stage ``i`` runs from ``marks[i - 1]`` to ``marks[i]``. The
    load average (1, 5, 15 min) is the one read at the end of the stage.
    """
    if len(marks) < 2:
        raise ValueError(f"stage_timing needs a start mark and at least one stage, got {marks}")
    out = {}
    for (_, w0, c0, _), (name, w1, c1, load) in zip(marks, marks[1:], strict=False):
        out[name] = {
            "wall_s": round(w1 - w0, 1),
            "cpu_s": round(c1 - c0, 1),
            "loadavg": [round(x, 2) for x in load],
        }
    out["total"] = {
        "wall_s": round(marks[-1][1] - marks[0][1], 1),
        "cpu_s": round(marks[-1][2] - marks[0][2], 1),
    }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", default="runs/gato_demo")
    parser.add_argument(
        "--recipe",
        default="demo",
        choices=sorted(RECIPES),
        help="demo (minutes), demo_babyai or long",
    )
    parser.add_argument("--tasks", help="default: the recipe's")
    parser.add_argument("--data_episodes", type=int, help="episodes of every task")
    parser.add_argument("--train_steps", type=int, help="default: the recipe's")
    parser.add_argument("--eval_episodes", type=int, help="default: the recipe's")
    parser.add_argument(
        "--time_budget", type=float, help="training seconds (default: the recipe's)"
    )
    args = parser.parse_args(argv)
    recipe = RECIPES[args.recipe]
    tasks = args.tasks or recipe.tasks
    steps = args.train_steps or recipe.train_steps
    eval_episodes = args.eval_episodes or recipe.eval_episodes
    budget = args.time_budget if args.time_budget is not None else recipe.time_budget

    from gato_jax import datagen, evaluate
    from gato_jax import main as train_main

    names = [n.strip() for n in tasks.split(",") if n.strip()]
    if args.data_episodes is not None:
        episodes = {n: args.data_episodes for n in names}
    else:
        episodes = {n: recipe.episodes_per_task.get(n, recipe.episodes) for n in names}
    data = os.path.join(args.workdir, "data")
    run = os.path.join(args.workdir, "run")
    out = os.path.join(args.workdir, "eval")
    marks = [("start", time.perf_counter(), _cpu_seconds(), os.getloadavg())]

    def mark(name):
        marks.append((name, time.perf_counter(), _cpu_seconds(), os.getloadavg()))

    if not os.path.isfile(os.path.join(data, "tasks.json")):
        counts = ",".join(f"{n}={episodes[n]}" for n in names)
        print(f"[1/3] expert data: {counts} episodes -> {data}")
        rc = datagen.main(
            ["--tasks", ",".join(names), "--episodes", counts, "--out", data, "--quiet"]
        )
        if rc:
            return rc
    else:
        print(f"[1/3] expert data: reusing {data}")
    mark("data")
    mixture = ",".join(f"{n}*{recipe.weights.get(n, 1.0):g}" for n in names)
    print(f"[2/3] training gato_tiny for {steps} steps on gen:{data}:{mixture} -> {run}")
    overrides = [*recipe.overrides, f"optim.decay_steps={steps}"]
    sets = sum((["--set", o] for o in overrides), [])
    train_argv = ["--config", "gato_tiny", "--workdir", run, "--num_steps", str(steps),
                  "--data", f"gen:{data}:{mixture}", *sets]  # fmt: skip
    if budget is not None:
        train_argv += ["--time_budget", f"{budget:g}"]
    rc = train_main.main(train_argv)
    if rc:
        return rc
    mark("training")
    print(f"[3/3] evaluating ({eval_episodes} episodes per task) -> {out}")
    rc = evaluate.main(
        ["--workdir", run, "--tasks", ",".join(names), "--episodes", str(eval_episodes),
         "--out", out]
    )  # fmt: skip
    if rc:
        return rc
    print("sample captions of held-out images (greedy):")
    _print_captions(os.path.join(out, "results.json"))
    mark("evaluation")
    timing = stage_timing(marks)
    with open(os.path.join(args.workdir, "timing.json"), "w") as f:
        json.dump(timing, f, indent=1)
    print(
        "demo finished in {total[wall_s]:.0f} s (data {data[wall_s]:.0f} s, training "
        "{training[wall_s]:.0f} s, evaluation {evaluation[wall_s]:.0f} s); process CPU "
        "{total[cpu_s]:.0f} s; load average at the end {evaluation[loadavg]}".format(**timing)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
