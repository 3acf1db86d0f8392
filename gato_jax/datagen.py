"""Multi-domain expert data generation: one TFDS RLDS dataset per task (:mod:`gato_jax.tasks`).

    python -m gato_jax.datagen --tasks cartpole,pendulum,babyai_goto_redball,vl_shapes \
        --episodes 20 --out /tmp/gato_data [--seed 0] [--max_steps 100]
    python -m gato_jax.main --config gato_tiny --workdir /tmp/run \
        --data "$(cat /tmp/gato_data/data_spec.txt)" [--set expert_fraction=0]
    # every task, text included (the tasks' own specs and OUT/tokenizer.model):
    python -m gato_jax.main --config gato_tiny --workdir /tmp/run --data gen:/tmp/gato_data

(The pipeline's expert filter keeps, per task, episodes within 20% of the best windowed return,
``E - 0.2|E|``; ``expert_fraction=0`` keeps every episode.) From Python, with the tasks' own
specs (text fields included)::

    >>> srcs = datagen.sources("/tmp/gato_data", cfg=tok_cfg)
    >>> data = GatoDataPipeline(srcs, tok_cfg, batch_size=8,
    ...                         text_tokenizer=datagen.load_tokenizer("/tmp/gato_data"))

Each task's episodes are rolled out with its expert (environment tasks) or sampled from its
procedural source (``vl`` / ``text``), with seeds ``seed, seed + 1, ...``, and written with
:func:`gato_jax.input_pipeline.write_rlds_dataset` (``array_record`` by default) to
``OUT/<task>/1.0.0``. Layout of an episode:

* ``steps/observation``: the task's observation fields (:attr:`Task.spec`) except a text field
  named ``instruction``, which is constant over an episode and stored once as
  ``episode_metadata/instruction`` (read it back into every step with
  ``Source(instruction_key="instruction")``, as :func:`sources` does);
* ``steps/action`` (dict of action fields), ``steps/reward`` float32 (reward received after the
  step's action), ``steps/is_first``, ``steps/is_last``, ``steps/is_terminal`` (True only on the
  last step of an episode that ended in a terminal state, not a time limit). The final
  observation, which no action follows, is not stored, so rewards sum to the episode return.
  ``vl`` / ``text`` episodes have no reward; ``text_corpus`` has observation text only,
  ``vl_shapes`` the image as observation and the caption as a text action
  (``steps/action/caption``, so the caption follows its image and carries the loss).
* ``episode_metadata``: ``task``, ``domain``, ``instruction``, ``policy`` (``expert``),
  ``seed``, ``episode_return``.

``OUT/tasks.json`` records per task the dataset, seeds, the recorded random / expert returns for
normalisation (from ``gato_jax/task_returns.json``), the generated episodes' returns and the
spec; ``OUT/data_spec.txt`` holds the ``--data`` string for ``python -m gato_jax.main`` (which
infers specs from the features, so it lists the tasks without text in their steps; all tasks,
text included, load with :func:`sources` and :func:`load_tokenizer`);
``OUT/tokenizer.model`` is a small SentencePiece model trained on the generated text and the
shipped corpus (for text fields: ``TextTokenizer.load``).

``--measure_returns`` re-measures the random-policy and expert mean returns of the selected
tasks (``--returns_episodes`` episodes each, seeds from :data:`RETURNS_SEED`) and updates
``gato_jax/task_returns.json`` (or ``--returns_file``) instead of writing datasets.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from gato_jax import tasks as tasks_lib
from gato_jax.tasks import Task, get_task, list_tasks

POLICIES = ("expert", "random")
RETURNS_SEED = 1_000_000  # returns are measured on seeds disjoint from the default data seeds
DATA_VERSION = "1.0.0"


def _stack(values: list, where: str):
    """Per-step values -> [T, ...] array, or a list of T strings for text."""
    if isinstance(values[0], str):
        return list(values)
    try:
        return np.stack([np.asarray(v) for v in values])
    except ValueError as e:
        raise ValueError(f"{where}: per-step values disagree in shape: {e}") from None


def _stack_tree(steps: list[Mapping[str, Any]], where: str) -> dict[str, Any]:
    out = {}
    for k in steps[0]:
        vals = [s[k] for s in steps]
        if isinstance(vals[0], Mapping):
            out[k] = _stack_tree(vals, f"{where}/{k}")
        else:
            out[k] = _stack(vals, f"{where}/{k}")
    return out


def run_episode(
    task: Task,
    seed: int,
    policy: str = "expert",
    *,
    record: bool = True,
    max_steps: int | None = None,
) -> dict[str, Any]:
    """Rolls out one episode of an environment task.

    Args:
      task: a task with an environment.
      seed: ``make_env(seed)``, ``env.reset(seed=seed)``; the expert is ``task.expert(seed)``;
        the random policy samples the env's action space seeded with ``seed``.
      policy: ``"expert"`` or ``"random"``.
      record: keep observations and actions (False: returns only, for measuring).
      max_steps: stop after this many steps (default ``task.max_steps``); an episode stopped
        here is truncated, not terminal.

    Returns:
      ``{"return": float, "steps": int, "terminal": bool, "instruction": str}`` and, when
      recording, ``"observation"`` / ``"action"`` (dicts of ``[T, ...]`` arrays; text as
      lists of strings) and ``"reward"`` float32 ``[T]``.
    """
    if policy not in POLICIES:
        raise ValueError(f"policy={policy!r}: expected one of {POLICIES}")
    if not task.has_env:
        raise ValueError(f"task {task.name!r} ({task.domain}) has no environment to roll out")
    limit = task.max_steps if max_steps is None else int(max_steps)
    if limit < 1:
        raise ValueError(f"max_steps={limit} must be >= 1")
    env, obs = task.new_episode(seed)
    try:
        agent = None
        if policy == "expert":
            agent = task.expert(seed)
            agent.reset(env, obs)
        observations, actions, rewards = [], [], []
        total, terminal, n = 0.0, False, 0
        instruction = task.instruction
        while n < limit:
            if record or n == 0:
                o = task.observation(obs, env)
                if "instruction" in o:
                    instruction = str(o["instruction"])
                if record:
                    observations.append({k: v for k, v in o.items() if k != "instruction"})
            env_action = agent.act(obs, env) if agent is not None else env.action_space.sample()
            action = task.from_env_action(env_action)
            # Step with the recorded action itself, so data and rollout agree exactly.
            obs, reward, terminated, truncated, _ = env.step(task.to_env_action(action))
            reward = float(reward)
            total += reward
            n += 1
            if record:
                actions.append(action)
                rewards.append(reward)
            if terminated or truncated:
                terminal = bool(terminated)
                break
    finally:
        env.close()
    out: dict[str, Any] = {
        "return": total,
        "steps": n,
        "terminal": terminal,
        "instruction": instruction,
    }
    if record:
        out["observation"] = _stack_tree(observations, f"{task.name}/observation")
        out["action"] = _stack_tree(actions, f"{task.name}/action")
        out["reward"] = np.asarray(rewards, np.float32)
    return out


def rlds_episode(task: Task, seed: int, *, max_steps: int | None = None) -> dict[str, Any]:
    """One expert (or sampled) episode of ``task`` in the RLDS layout ``write_rlds_dataset`` takes.

    Returns:
      ``{"steps": {...}, "episode_metadata": {...}}`` (see the module docstring).
    """
    meta = {"task": task.name, "domain": task.domain, "policy": "expert", "seed": np.int64(seed)}
    if not task.has_env:
        if task.sample_episode is None:
            raise ValueError(f"task {task.name!r} has neither an environment nor a sampler")
        ep = task.sample_episode(int(seed))
        obs, act = ep["observation"], ep.get("action")
        n = len(next(iter(obs.values())))
        if max_steps is not None:
            n = min(n, int(max_steps))
            obs = {k: v[:n] for k, v in obs.items()}
            act = None if act is None else {k: v[:n] for k, v in act.items()}
        steps = {
            "observation": obs,
            **({"action": act} if act else {}),
            "is_first": np.arange(n) == 0,
            "is_last": np.arange(n) == n - 1,
            "is_terminal": np.arange(n) == n - 1,
        }
        meta.update(instruction=task.instruction, episode_return=np.float64(0.0))
        return {"steps": steps, "episode_metadata": meta}
    ep = run_episode(task, seed, "expert", max_steps=max_steps)
    n = ep["steps"]
    last = np.arange(n) == n - 1
    steps = {
        "observation": ep["observation"],
        "action": ep["action"],
        "reward": ep["reward"],
        "is_first": np.arange(n) == 0,
        "is_last": last,
        "is_terminal": last & ep["terminal"],
    }
    meta.update(instruction=ep["instruction"], episode_return=np.float64(ep["return"]))
    return {"steps": steps, "episode_metadata": meta}


# --------------------------------------------------------------------------------------------
# Returns for normalisation.


def measure_returns(
    task: Task, episodes: int = 20, seed: int = RETURNS_SEED, *, progress_bar=None
) -> dict[str, Any]:
    """Mean return of the uniform random policy and of the expert on seeds ``seed + i``.

    Returns:
      ``{"random_return", "expert_return", "random_std", "expert_std", "episodes", "seed",
      "max_steps"}`` (both policies play the same ``episodes`` seeds).
    """
    if not task.has_env or task.expert is None:
        raise ValueError(f"task {task.name!r} ({task.domain}) has no environment/expert")
    if episodes < 1:
        raise ValueError(f"episodes={episodes} must be >= 1")
    out: dict[str, Any] = {}
    for policy in POLICIES:
        rs = []
        for i in range(episodes):
            rs.append(run_episode(task, seed + i, policy, record=False)["return"])
            if progress_bar is not None:
                progress_bar.update(1)
        out[f"{policy}_return"] = float(np.mean(rs))
        out[f"{policy}_std"] = float(np.std(rs))
    out.update(episodes=int(episodes), seed=int(seed), max_steps=int(task.max_steps))
    return out


def update_returns_file(rows: Mapping[str, Mapping[str, Any]], path: str) -> dict:
    """Merges measured rows into the JSON returns table at ``path`` (sorted by task)."""
    table = {}
    if os.path.isfile(path):
        with open(path) as f:
            table = json.load(f)
    table.update({k: dict(v) for k, v in rows.items()})
    with open(path, "w") as f:
        json.dump(dict(sorted(table.items())), f, indent=2)
        f.write("\n")
    tasks_lib._returns_table.cache_clear()
    return table


# --------------------------------------------------------------------------------------------
# Datasets.


def resolve_tasks(text: str | Sequence[str] | None) -> list[str]:
    """Task names from ``"all"``, ``"available"`` (default), domain names or task names.

    Raises:
      ValueError: an unknown name (the message lists the known tasks and domains) or a task whose
        optional packages are not installed.
    """
    if text is None or text == "available":
        return [n for n in list_tasks() if not tasks_lib.missing_packages(n)]
    items = [s.strip() for s in text.split(",")] if isinstance(text, str) else list(text)
    names: list[str] = []
    for item in items:
        if not item:
            continue
        if item == "all":
            found = list_tasks()
        elif item in tasks_lib.DOMAINS:
            found = list_tasks(item)
        elif item in list_tasks():
            found = [item]
        else:
            raise ValueError(
                f"unknown task {item!r}; known tasks: {', '.join(list_tasks())}; "
                f"domains: {', '.join(tasks_lib.DOMAINS)}; or 'all' / 'available'"
            )
        names.extend(n for n in found if n not in names)
    if not names:
        raise ValueError("no tasks selected")
    for n in names:
        missing = tasks_lib.missing_packages(n)
        if missing:
            raise ValueError(
                f"task {n!r} needs the packages {', '.join(missing)} (pip install them, or "
                "drop the task)"
            )
    return names


def _texts(episodes: Iterable[Mapping[str, Any]]) -> list[str]:
    out = []

    def walk(node):
        if isinstance(node, Mapping):
            for v in node.values():
                walk(v)
        elif isinstance(node, list) and node and isinstance(node[0], str):
            out.extend(node)
        elif isinstance(node, str) and node:
            out.append(node)

    for ep in episodes:
        walk(ep["steps"].get("observation", {}))
        walk(ep["steps"].get("action", {}))
        walk(ep["episode_metadata"].get("instruction", ""))
    return out


def train_tokenizer(texts: Iterable[str], vocab_size: int = 512):
    """A SentencePiece :class:`~gato_jax.tokenizer.TextTokenizer` for the generated text.

    Trained on ``texts`` plus the shipped corpus, so that every task's text is covered even
    when few episodes were generated. ``vocab_size`` is an upper bound (the trainer may stop
    below it on little text).
    """
    from gato_jax.tokenizer import TextTokenizer

    sentences = sorted(set(texts) | set(tasks_lib.corpus_sentences()))
    return TextTokenizer.train(sentences, vocab_size=vocab_size, hard_vocab_limit=False)


def _check_text_budget(task: Task, episodes, tokenizer) -> None:
    """Every text value fits its field's token budget (errors name task, field and text)."""
    budgets = {
        (f.name.split("/")[0], f.path[-1]): f.spec.shape[0]
        for f in task.spec.fields
        if f.spec.kind == "text"
    }
    for ep in episodes:
        values = {
            (root, k): v
            for root in ("observation", "action")
            for k, v in dict(ep["steps"].get(root, {})).items()
        }
        if ("observation", "instruction") in budgets:
            values["observation", "instruction"] = [ep["episode_metadata"]["instruction"]]
        for (root, key), budget in budgets.items():
            for text in values.get((root, key), []):
                n = len(tokenizer.encode(text))
                if n > budget:
                    raise ValueError(
                        f"task {task.name!r}: {root}/{key} {text!r} takes {n} tokens, more "
                        f"than the field's {budget}"
                    )


def _spec_summary(task: Task) -> list[dict[str, Any]]:
    return [
        {
            "name": f.name,
            "kind": f.spec.kind,
            "shape": list(f.spec.shape),
            **({"low": min(f.spec.low), "high": max(f.spec.high)} if f.spec.low else {}),
        }
        for f in task.spec.fields
    ]


def _layout_diff(recorded: list[dict], now: list[dict]) -> list[tuple[str, Any, Any]]:
    """``(field, recorded entry, current entry)`` of the fields whose layout differs."""
    a = {d["name"]: {k: v for k, v in d.items() if k != "name"} for d in recorded}
    b = {d["name"]: {k: v for k, v in d.items() if k != "name"} for d in now}
    return [(k, a.get(k), b.get(k)) for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)]


def data_spec(names: Sequence[str], out: str) -> str:
    """The ``--data`` string of ``python -m gato_jax.main`` for datasets under ``out``."""
    return ",".join(f"tfds:{n}@{os.path.abspath(out)}" for n in names)


def has_text_steps(task: Task) -> bool:
    """Whether the task stores text in its steps (its spec cannot be inferred from features)."""
    return any(
        f.spec.kind == "text" and f.name != "observation/instruction" for f in task.spec.fields
    )


def parse_episodes(text: str) -> tuple[int | None, dict[str, int]]:
    """Parses ``--episodes``: ``N`` or ``N,TASK=M,...`` or ``TASK=M,...``.

    Returns:
      ``(default or None, {task: episodes})``.

    Raises:
      ValueError: naming the malformed item.
    """
    default, per_task = None, {}
    for item in (s.strip() for s in str(text).split(",")):
        if not item:
            continue
        name, eq, value = item.rpartition("=")
        try:
            n = int(value)
        except ValueError:
            raise ValueError(f"--episodes {text!r}: {value!r} is not an integer") from None
        if n < 1:
            raise ValueError(f"--episodes {text!r}: {item!r} must be >= 1")
        if eq:
            if not name:
                raise ValueError(f"--episodes {text!r}: empty task name in {item!r}")
            per_task[name] = n
        elif default is not None:
            raise ValueError(f"--episodes {text!r}: two default counts")
        else:
            default = n
    return default, per_task


def generate(
    names: Sequence[str],
    episodes: int | Mapping[str, int],
    out: str,
    *,
    seed: int = 0,
    max_steps: int | None = None,
    file_format: str = "array_record",
    vocab_size: int = 512,
    overwrite: bool = False,
    quiet: bool = False,
) -> dict[str, Any]:
    """Generates and writes one RLDS dataset per task; returns the ``tasks.json`` content.

    Args:
      names: task names (:func:`resolve_tasks`).
      episodes: episodes per task (seeds ``seed .. seed + episodes - 1``), or a mapping
        ``{task: episodes}`` covering every name (tasks with short episodes, e.g. BabyAI,
        need many more episodes than long ones for a similar number of steps).
      out: TFDS data directory (created).
      seed: first episode seed.
      max_steps: cap on steps per episode (default: each task's ``max_steps``).
      file_format: ``array_record`` or ``tfrecord``.
      vocab_size: SentencePiece vocabulary bound of ``out/tokenizer.model`` (0: none).
      overwrite: replace existing datasets of these tasks under ``out``.
      quiet: no progress bar or summary.
    """
    import tensorflow_datasets as tfds

    from core_jax.progress import progress
    from gato_jax.input_pipeline import write_rlds_dataset

    tfds.disable_progress_bar()
    if isinstance(episodes, Mapping):
        missing = [n for n in names if n not in episodes]
        if missing:
            raise ValueError(f"episodes: no count for {', '.join(missing)}")
        counts = {n: int(episodes[n]) for n in names}
    else:
        counts = {n: int(episodes) for n in names}
    for n, c in counts.items():
        if c < 1:
            raise ValueError(f"--episodes={c} for {n} must be >= 1")
    os.makedirs(out, exist_ok=True)
    for n in names:
        path = os.path.join(out, n, DATA_VERSION)
        if os.path.exists(path):
            if not overwrite:
                raise FileExistsError(f"{path} exists (pass --overwrite to replace it)")
            shutil.rmtree(path)
    t0 = time.perf_counter()
    # One bar for rollouts and writes; TFDS's own bars and prints are silenced.
    bar = progress(
        sum(counts.values()) + len(names), desc="datagen", disable=True if quiet else None
    )
    generated: dict[str, list] = {}
    for n in names:
        task = get_task(n)
        bar.set_postfix(task=n)
        eps = []
        for i in range(counts[n]):
            eps.append(rlds_episode(task, seed + i, max_steps=max_steps))
            bar.update(1)
        generated[n] = eps
    tokenizer = None
    if vocab_size:
        tokenizer = train_tokenizer(
            [t for eps in generated.values() for t in _texts(eps)], vocab_size
        )
        tokenizer.save(os.path.join(out, "tokenizer.model"))
    report: dict[str, Any] = {
        "version": DATA_VERSION,
        "seed": seed,
        "episodes": counts,
        "max_steps": max_steps,
        "file_format": file_format,
        "tokenizer": "tokenizer.model" if tokenizer else None,
        # For python -m gato_jax.main (specs inferred from the features): no text steps fields.
        "data": data_spec([n for n in names if not has_text_steps(get_task(n))], out),
        "data_all": data_spec(names, out),
        "tasks": {},
    }
    for n, eps in generated.items():
        task = get_task(n)
        if tokenizer is not None:
            _check_text_budget(task, eps, tokenizer)
        bar.set_postfix(write=n)
        with contextlib.redirect_stdout(io.StringIO()):
            write_rlds_dataset(eps, out, n, file_format=file_format, version=DATA_VERSION)
        bar.update(1)
        rets = [float(e["episode_metadata"]["episode_return"]) for e in eps]
        lengths = [len(e["steps"]["is_first"]) for e in eps]

        def num(x):
            return None if not math.isfinite(x) else float(x)

        report["tasks"][n] = {
            "domain": task.domain,
            "dataset": n,
            "data": f"tfds:{n}@{os.path.abspath(out)}",
            "env_id": task.env_id,
            "instruction": task.instruction,
            "episodes": counts[n],
            "seeds": [seed, seed + counts[n]],
            "max_steps": task.max_steps if max_steps is None else min(task.max_steps, max_steps),
            "random_return": num(task.random_return),
            "expert_return": num(task.expert_return),
            "returns_info": task.returns_info,
            "generated_mean_return": float(np.mean(rets)) if task.has_env else None,
            "generated_returns": rets if task.has_env else None,
            "mean_steps": float(np.mean(lengths)),
            "instruction_in_metadata": any(
                f.name == "observation/instruction" for f in task.spec.observation
            ),
            "spec": _spec_summary(task),
        }
    bar.close()
    with open(os.path.join(out, "tasks.json"), "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    with open(os.path.join(out, "data_spec.txt"), "w") as f:
        f.write(report["data"] + "\n")
    report["seconds"] = time.perf_counter() - t0
    return report


def load_report(data_dir: str) -> dict[str, Any]:
    """``DATA_DIR/tasks.json`` written by :func:`generate`."""
    path = os.path.join(data_dir, "tasks.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no tasks.json in {data_dir!r} (not a gato_jax.datagen output)")
    with open(path) as f:
        return json.load(f)


def sources(
    data_dir: str,
    names: Sequence[str] | None = None,
    weights: Mapping[str, float] | None = None,
    cfg=None,
):
    """:class:`~gato_jax.input_pipeline.Source` s for generated datasets, with explicit specs.

    Unlike ``parse_data_spec`` (which infers specs and so cannot read text fields), these carry
    each task's :attr:`Task.spec` and, for tasks with an ``instruction`` text field, read it from
    the episode metadata. A task whose recorded layout (``tasks.json`` ``spec``) differs from the
    current :attr:`Task.spec` (e.g. BabyAI data written before the one-token-per-cell view) is
    refused with a ``ValueError`` naming both layouts. Text fields need a text tokenizer in the
    pipeline (see :func:`load_tokenizer`).

    Args:
      data_dir: the ``--out`` directory of the generator.
      names: tasks to use (default: all in ``tasks.json``).
      weights: mixture weight per task (default 1).
      cfg: tokenizer config for the specs (default ``TokenizerConfig()``).
    """
    from gato_jax.input_pipeline import Source

    report = load_report(data_dir)
    names = list(report["tasks"]) if names is None else list(names)
    out = []
    for n in names:
        if n not in report["tasks"]:
            raise ValueError(
                f"task {n!r} not generated in {data_dir!r} (has: {', '.join(report['tasks'])})"
            )
        task = get_task(n, cfg)
        recorded, now = report["tasks"][n].get("spec"), _spec_summary(task)
        if recorded is not None and recorded != now:
            diff = [
                f"{name}: recorded {old} != now {new}"
                for name, old, new in _layout_diff(recorded, now)
            ]
            raise ValueError(
                f"task {n!r} in {data_dir!r} was generated with another layout than the current "
                f"code's ({'; '.join(diff)}); regenerate it with python -m gato_jax.datagen"
            )
        has_instruction = any(f.name == "observation/instruction" for f in task.spec.observation)
        out.append(
            Source(
                n,
                os.path.abspath(data_dir),
                weight=float((weights or {}).get(n, 1.0)),
                spec=task.spec,
                task_key="task",
                instruction_key="instruction" if has_instruction else None,
            )
        )
    return tuple(out)


def parse_gen_spec(text: str) -> tuple[str, list[str] | None, dict[str, float]]:
    """Parses ``gen:DIR[:TASK[*WEIGHT],...]`` into ``(DIR, tasks or None, weights)``.

    The task list starts after the last ``:`` whose remainder holds no ``/`` (so ``DIR`` may
    itself contain ``:``).

    Raises:
      ValueError: naming the malformed part.
    """
    if not text.startswith("gen:"):
        raise ValueError(f"--data {text!r}: expected 'gen:DIR[:TASK[*WEIGHT],...]'")
    rest = text[len("gen:") :]
    directory, names, weights = rest, None, {}
    pos = rest.rfind(":")
    if pos >= 0 and "/" not in rest[pos + 1 :]:
        directory, items = rest[:pos], rest[pos + 1 :]
        names = []
        for item in (s.strip() for s in items.split(",")):
            name, star, w = item.partition("*")
            if not name:
                raise ValueError(f"--data {text!r}: empty task name in {items!r}")
            if star:
                try:
                    weights[name] = float(w)
                except ValueError:
                    raise ValueError(f"--data {text!r}: weight {w!r} is not a number") from None
            names.append(name)
    if not directory:
        raise ValueError(f"--data {text!r}: empty directory")
    return directory, names, weights


def load_tokenizer(data_dir: str):
    """The SentencePiece tokenizer saved by :func:`generate` (``DATA_DIR/tokenizer.model``)."""
    from gato_jax.tokenizer import TextTokenizer

    return TextTokenizer.load(os.path.join(data_dir, "tokenizer.model"))


# --------------------------------------------------------------------------------------------
# CLI.


def _print_report(report: Mapping[str, Any]) -> None:
    rows = [("task", "domain", "episodes", "steps/ep", "return", "random", "expert")]
    for n, t in report["tasks"].items():

        def f(x):
            return "-" if x is None else f"{x:.1f}"

        rows.append(
            (
                n,
                t["domain"],
                str(t["episodes"]),
                f"{t['mean_steps']:.1f}",
                f(t["generated_mean_return"]),
                f(t["random_return"]),
                f(t["expert_return"]),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
    print(f"generated in {report['seconds']:.1f} s")
    text_tasks = [n for n in report["tasks"] if has_text_steps(get_task(n))]
    print("\n--data for python -m gato_jax.main:")
    print(report["data"])
    if text_tasks:
        print(
            f"(left out: {', '.join(text_tasks)}, whose steps hold text: train on every task "
            "with --data gen:OUT (the --out directory), which reads the tasks' own specs and "
            "the tokenizer; from Python, sources(OUT) + load_tokenizer(OUT).)"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gato_jax.datagen", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--tasks",
        default="available",
        help="comma-separated task names, domain names, 'all' or 'available' (default: every "
        f"task whose packages are installed). Tasks: {', '.join(list_tasks())}",
    )
    parser.add_argument(
        "--episodes",
        default="10",
        help="episodes per task: N, or N,TASK=M,... to give some tasks their own count",
    )
    parser.add_argument("--out", help="output TFDS data directory")
    parser.add_argument("--seed", type=int, default=0, help="first episode seed")
    parser.add_argument("--max_steps", type=int, help="cap on steps per episode")
    parser.add_argument(
        "--file_format", default="array_record", choices=["array_record", "tfrecord"]
    )
    parser.add_argument(
        "--vocab_size", type=int, default=512, help="SentencePiece vocabulary (0: no tokenizer)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing datasets")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument(
        "--measure_returns",
        action="store_true",
        help="measure random/expert mean returns of the tasks and update --returns_file "
        "(no datasets are written)",
    )
    parser.add_argument("--returns_episodes", type=int, default=20)
    parser.add_argument("--returns_file", default=tasks_lib.RETURNS_FILE)
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter
    try:
        names = resolve_tasks(args.tasks)
    except ValueError as e:
        parser.error(str(e))
    if args.measure_returns:
        from core_jax.progress import progress

        env_names = [n for n in names if get_task(n).has_env]
        bar = progress(
            2 * args.returns_episodes * len(env_names),
            desc="returns",
            disable=True if args.quiet else None,
        )
        rows = {}
        for n in env_names:
            bar.set_postfix(task=n)
            rows[n] = measure_returns(get_task(n), args.returns_episodes, progress_bar=bar)
        bar.close()
        update_returns_file(rows, args.returns_file)
        for n, r in rows.items():
            print(
                f"{n}: random {r['random_return']:.2f} +- {r['random_std']:.2f}, "
                f"expert {r['expert_return']:.2f} +- {r['expert_std']:.2f} "
                f"({r['episodes']} episodes)"
            )
        print(f"wrote {args.returns_file}")
        return 0
    if not args.out:
        parser.error("--out is required (unless --measure_returns)")
    try:
        default, per_task = parse_episodes(args.episodes)
        unknown = [n for n in per_task if n not in names]
        if unknown:
            raise ValueError(f"--episodes names tasks not in --tasks: {', '.join(unknown)}")
        if default is None and len(per_task) < len(names):
            raise ValueError("--episodes: give a default count (N,TASK=M,...)")
    except ValueError as e:
        parser.error(str(e))
    report = generate(
        names,
        {n: per_task.get(n, default) for n in names},
        args.out,
        seed=args.seed,
        max_steps=args.max_steps,
        file_format=args.file_format,
        vocab_size=args.vocab_size,
        overwrite=args.overwrite,
        quiet=args.quiet,
    )
    if not args.quiet:
        _print_report(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
