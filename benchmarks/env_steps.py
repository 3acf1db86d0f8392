"""Environment steps/s: vmapped JAX text environments vs minigrid's Python BabyAI and the HTTP path.

For each of Maze, Wordle, TextCraft and BabyAI (corrected mode, ``agentgym_compat=False``), and
BabyAI's primitive/image mode (`evol_jax.envs.babyai_primitive`):

* **JAX, batched**: ``jax.jit`` of a ``lax.scan`` of ``T`` steps of ``jax.vmap(env.step)`` over
  ``B`` environments (B = 1, 64, 256, 1024, 4096; BabyAI's high-level text env up to 1024), each
  step taking a uniformly random *legal* action (`pick_legal`, from the timestep's legal-action
  mask; primitive mode: a uniformly random primitive among minigrid's first 6, as
  `minigrid_run` draws). Every step's observation (token ids; primitive mode: the 7x7x3 image)
  is folded into a checksum the rollout returns, so XLA cannot skip building it. A finished
  environment is put back to its reset state inside the scan (`auto_reset`, so every step of
  every row is a real step). Reset throughput (``jax.vmap(env.reset)``) is timed separately.
  Compile time (trace + lower + compile) is reported apart from run time; every timed call ends
  with ``block_until_ready``; the median of ``repeats`` timed calls is reported.
* **minigrid** (BabyAI rows): minigrid's own Python ``BabyAI-GoToRedBallGrey-v0`` (the level the
  JAX BabyAI rows use: AgentGym level 1, ``idx = 40 k``), uniformly random primitive actions,
  resetting on ``terminated`` / ``truncated``; primitive steps/s, each step returning its image
  observation. The JAX BabyAI text rows count both high-level steps (one AgentGym action, a
  compiled plan of primitives) and the primitive steps executed inside them (minigrid
  ``step_count`` increments); the primitive-mode rows are primitive steps with the image only,
  i.e. exactly what minigrid's ``env.step`` does.
* **HTTP** (text envs): our AgentGym-compatible server (``python -m evol_jax.serve --env NAME``
  on 127.0.0.1, a separate process) driven by the pooled asynchronous client
  (`evol_jax.client.AgentGymClient.run_episodes`, ``concurrency`` episodes in flight) with a
  random valid action text per step; steps/s counts ``/step`` replies (create / reset / close
  included in the wall time, as in a rollout).

Ratios reported per row: x our HTTP path; x AgentGym over HTTP and (BabyAI) in-process, as
recorded on this CPU with the parity data (issue 7: BabyAI 191 in-process / 107 HTTP, TextCraft
251, Maze 289, Wordle 192 steps/s; the AgentGym servers are not installed here, so these are
constants, labelled as such); x minigrid primitive steps/s measured in the same run and x the
recorded 4,100/s.

All implementations of one environment are timed interleaved (harness.time_interleaved), so load
from other jobs on this shared CPU hits them alike.

    python -m benchmarks.run --only env_steps --out benchmarks/results
    python -m benchmarks.env_steps --quick
    python -m benchmarks.env_steps --envs textcraft,maze --out /tmp/env_steps_subset.json

``--envs`` times a subset (comma-separated names from `ENVS`); ``--batches`` overrides the batch
sizes. A subset's JSON records which envs it covers (``envs``) and is written only where
``--out`` says (never over ``benchmarks/results/env_steps.json`` unless asked to).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.harness import (
    Timing,
    block,
    compile_jitted,
    environment,
    time_interleaved,
)
from evol_jax.envs.base import packed_mask, select_packed

NAME = "env_steps"
ENVS = ("maze", "wordle", "textcraft", "babyai", "babyai_primitive")
BATCHES = (1, 64, 256, 1024, 4096)
# BabyAI's high-level step (plan execution + one action search per observation) is far heavier:
# B=4096 would take minutes per timed call on the 2-core CPU
BATCHES_FOR = {"babyai": (1, 64, 1024)}
QUICK_BATCHES = (1, 8)
SCAN_STEPS = {"maze": 64, "wordle": 64, "textcraft": 64, "babyai": 16, "babyai_primitive": 64}
QUICK_SCAN_STEPS = 8
BABYAI_LEVEL = 1  # BabyAI-GoToRedBallGrey-v0; JAX idx = 40 k selects it
MINIGRID_STEPS = 2000
HTTP_EPISODES, HTTP_ROUNDS, HTTP_CONCURRENCY = 32, 10, 16

# Measured on this CPU when the parity data was recorded (issue 7): the AgentGym servers.
UPSTREAM_RECORDED = {
    "babyai": {"in_process": 191.0, "http": 107.0, "minigrid_primitive": 4100.0},
    "textcraft": {"http": 251.0},
    "maze": {"http": 289.0},
    "wordle": {"http": 192.0},
}
UPSTREAM_RECORDED["babyai_primitive"] = {"minigrid_primitive": 4100.0}


# ------------------------------------------------------------------------------------- JAX


def make_env(name: str):
    if name == "babyai_primitive":
        from evol_jax.envs.babyai_primitive import BabyAIPrimitive

        return BabyAIPrimitive()
    from evol_jax.envs import make

    return make(name, agentgym_compat=False)


def _indices(name: str, batch: int) -> jax.Array:
    k = jnp.arange(batch, dtype=jnp.int32)
    return k * 40 + (BABYAI_LEVEL - 1) if name.startswith("babyai") else k


def pick_legal(u: jax.Array, legal: jax.Array) -> jax.Array:
    """A uniformly random legal action id from one uniform draw ``u`` in [0, 1) (one env).

    Returns the ``floor(u * n)``-th legal id (``n`` legal ids in ``legal``, bool [A], n >= 1):
    one random number per env and step instead of one Gumbel draw per action id, so the
    policy's cost (threefry bits and two logs for each of Wordle's 477 / TextCraft's 1,367 ids)
    does not swamp the step it drives. The rank is found on the mask packed into 32-bit words
    (popcounts, a short cumsum over words, then a select within the word) rather than a cumsum
    over all ids, which XLA:CPU lowers to costly reduce-windows.
    """
    words, cum = packed_mask(legal)
    n = cum[-1]
    return select_packed(words, cum, jnp.minimum((u * n).astype(jnp.int32), n - 1))


def auto_reset(done: jax.Array, new: Any, state: Any, init: Any) -> Any:
    """``where(done, init, new)`` leaf by leaf, skipping leaves the step passed through.

    A leaf of ``new`` that *is* the corresponding leaf of ``state`` (the same traced value: the
    step never writes it, e.g. BabyAI's box contents or mission object sets) still holds its
    reset value, because it started from ``init`` and nothing changes it, so selecting it
    again would only copy it. Same result as the plain select, less memory traffic.
    """
    return jax.tree.map(lambda a, s, b: a if a is s else jnp.where(done, b, a), new, state, init)


def _checksum(x: jax.Array) -> jax.Array:
    """int32 sum of an observation (wrapping): consumed so that XLA cannot drop its computation."""
    return jnp.sum(x.astype(jnp.int32))


def make_rollout(env, name: str, steps: int):
    """``rollout(state0, legal0, key) -> (primitive steps, observation checksum, final state)``.

    ``state0`` is a batch of reset states (the auto-reset target), ``legal0`` their legal masks.
    Every step's observation tokens are folded into a checksum that the rollout returns, so the
    timed program builds every observation (an unused observation would be dead code to XLA).
    """
    babyai = name == "babyai"

    def one(state, legal, init, init_legal, u):
        action = pick_legal(u, legal)
        new, ts = env.step(state, action)
        prims = (
            jnp.maximum(new.world.step_count - state.world.step_count, 0)
            if babyai
            else jnp.int32(0)
        )
        done = ts.done
        new = auto_reset(done, new, state, init)
        legal = jnp.where(done, init_legal, ts.legal_actions)
        return new, legal, prims, _checksum(jnp.where(ts.obs_mask, ts.obs_tokens, 0))

    vone = jax.vmap(one)

    def rollout(state0, legal0, key):
        batch = legal0.shape[0]

        def body(carry, k):
            s, legal, n_prim, check = carry
            u = jax.random.uniform(k, (batch,))
            s, legal, prims, c = vone(s, legal, state0, legal0, u)
            return (s, legal, n_prim + jnp.sum(prims), check + jnp.sum(c)), None

        init = (state0, legal0, jnp.int32(0), jnp.int32(0))
        (s, _, n_prim, check), _ = jax.lax.scan(body, init, jax.random.split(key, steps))
        return n_prim, check, s

    return rollout


def make_primitive_rollout(env, steps: int):
    """BabyAI primitive/image mode: ``rollout(world0, key) -> (steps, image checksum, world)``.

    Uniformly random primitives among minigrid's first 6 (left, right, forward, pickup, drop,
    toggle: the actions `minigrid_run` draws), finished episodes reset inside the scan; every
    step's 7x7x3 image is folded into the returned checksum (so it is computed).
    """

    def one(world, init, a):
        new, ts = env.step(world, a)
        return auto_reset(ts.done, new, world, init), _checksum(ts.image)

    vone = jax.vmap(one)

    def rollout(world0, key):
        batch = world0.step_count.shape[0]

        def body(carry, k):
            w, check = carry
            a = jax.random.randint(k, (batch,), 0, 6, dtype=jnp.int32)
            w, c = vone(w, world0, a)
            return (w, check + jnp.sum(c)), None

        init = (world0, jnp.int32(0))
        (w, check), _ = jax.lax.scan(body, init, jax.random.split(key, steps))
        return jnp.int32(batch * steps), check, w

    return rollout


def jax_case(env, name: str, batch: int, steps: int) -> dict[str, Any]:
    """Compiled reset and rollout for one batch size (compile times measured)."""
    keys = jax.random.split(jax.random.key(0), batch)
    idx = _indices(name, batch)
    reset = jax.jit(jax.vmap(env.reset))
    reset_c, reset_compile = compile_jitted(reset, keys, idx)
    state0, ts0 = block(reset_c(keys, idx))
    if name == "babyai" and bool(jnp.any(state0.invalid)):
        raise RuntimeError("env_steps: BabyAI reset of a non-native level")
    key = jax.random.key(1)
    if name == "babyai_primitive":
        rollout = jax.jit(make_primitive_rollout(env, steps))
        roll_c, roll_compile = compile_jitted(rollout, state0, key)
        call = lambda: roll_c(state0, key)  # noqa: E731
    else:
        rollout = jax.jit(make_rollout(env, name, steps))
        roll_c, roll_compile = compile_jitted(rollout, state0, ts0.legal_actions, key)
        call = lambda: roll_c(state0, ts0.legal_actions, key)  # noqa: E731
    return {
        "batch": batch,
        "steps": steps,
        "reset": lambda: reset_c(keys, idx),
        "rollout": call,
        "reset_compile_s": reset_compile,
        "rollout_compile_s": roll_compile,
    }


# -------------------------------------------------------------------------------- minigrid


def minigrid_run(n_steps: int, seed: int = 0):
    """``n_steps`` uniformly random primitives on minigrid's BabyAI level; returns steps done."""
    from evol_jax.envs.babyai import make_minigrid

    env = make_minigrid(BABYAI_LEVEL, seed)
    rng = np.random.default_rng(seed)
    actions = rng.integers(0, 6, n_steps)
    episode = seed
    for a in actions:
        _, _, term, trunc, _ = env.step(int(a))
        if term or trunc:
            episode += 1
            env.reset(seed=episode)
    return n_steps


# ------------------------------------------------------------------------------------ HTTP


class Server:
    """``python -m evol_jax.serve --env NAME --port 0`` as a child process."""

    def __init__(self, name: str):
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "evol_jax.serve", "--env", name, "--port", "0", "--corrected"],
            cwd=root,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        deadline = time.time() + 600
        self.url = None
        while time.time() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            m = re.search(r"EVOL_JAX_SERVE_READY (\S+)", line)
            if m:
                self.url = m.group(1)
                break
        if self.url is None:
            self.close()
            raise RuntimeError(f"env_steps: the {name} server did not start")

    def close(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def http_policy(env, name: str, seed: int):
    """A random valid action text from the observation (BabyAI) or the env's action table."""
    rng = random.Random(seed)
    if name == "babyai":

        def policy(idx, obs, history):
            m = re.search(r"Available actions: (\[.*\])", obs, re.S)
            return rng.choice(json.loads(m.group(1))) if m else "turn left"

        return policy
    if name == "textcraft":
        # only "get" and listed-recipe actions of this instance are valid; use the table's texts
        texts = [env.action_text(i) for i in range(env.num_actions)]
        gets = [t for t in texts if t.startswith("get ")]

        recipes: dict[int, list[str]] = {}

        def policy(idx, obs, history):
            if not history:  # the reset observation lists the instance's recipe lines
                recipes[idx] = re.findall(r"^craft .+$", obs, re.M)
            return rng.choice(recipes.get(idx, []) + rng.sample(gets, 4))

        return policy
    texts = [env.action_text(i) for i in range(env.num_actions)]
    return lambda idx, obs, history: rng.choice(texts)


def http_run(url: str, name: str, policy, episodes: int, rounds: int, concurrency: int) -> int:
    """Runs ``episodes`` episodes through the pooled client; returns the number of steps."""
    from evol_jax.client import AgentGymClient

    async def go():
        # a long timeout: the server compiles its jitted reset / step on first use (warm-up)
        client = AgentGymClient(url, env=name, max_connections=concurrency, timeout_s=900)
        async with client:
            idx = [int(i) for i in np.asarray(_indices(name, episodes))]
            batch = await client.run_episodes(
                idx, policy, max_rounds=rounds, concurrency=concurrency
            )
        if batch.failed:
            raise RuntimeError(f"env_steps: HTTP episodes failed: {batch.failed}")
        return sum(len(ep.replies) for ep in batch.episodes.values())

    return asyncio.run(go())


# ------------------------------------------------------------------------------------- run


def batches_for(name: str, quick: bool) -> tuple[int, ...]:
    return QUICK_BATCHES if quick else BATCHES_FOR.get(name, BATCHES)


def parse_envs(text: str | None) -> tuple[str, ...]:
    """``"maze,wordle"`` -> ``("maze", "wordle")`` (in `ENVS` order); ``None``/empty: all of them.

    Raises:
      ValueError: an unknown or repeated name.
    """
    if text is None or not text.strip():
        return ENVS
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in ENVS]
    if unknown:
        raise ValueError(f"env_steps: unknown env(s) {unknown}; choose from {', '.join(ENVS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"env_steps: an env named twice in {text!r}")
    return tuple(n for n in ENVS if n in names)


def run_env(
    name: str, quick: bool, repeats: int, batches: tuple[int, ...] | None = None
) -> tuple[list[dict], dict]:
    env = make_env(name)
    steps = QUICK_SCAN_STEPS if quick else SCAN_STEPS[name]
    cases = [jax_case(env, name, b, steps) for b in (batches or batches_for(name, quick))]
    fns: dict[str, Any] = {}
    for c in cases:
        fns[f"reset{c['batch']}"] = c["reset"]
    prim_counts: dict[str, int] = {}

    def counted(label, fn):
        def call():
            n_prim, check, s = fn()
            prim_counts[label] = int(n_prim)
            return check, s

        return call

    for c in cases:
        fns[f"jax{c['batch']}"] = counted(f"jax{c['batch']}", c["rollout"])
    mg_steps = MINIGRID_STEPS // (10 if quick else 1)
    babyai = name.startswith("babyai")
    if babyai:
        fns["minigrid"] = lambda: minigrid_run(mg_steps)
    episodes = HTTP_EPISODES // (4 if quick else 1)
    rounds = HTTP_ROUNDS // (2 if quick else 1)
    http_steps: dict[str, int] = {}
    server = None if name == "babyai_primitive" else Server(name)  # no text: no HTTP path
    try:
        if server is not None:
            policy = http_policy(env, name, 0)
            # warm the server's jitted reset/step (compiled on first use) outside the timing
            http_run(server.url, name, policy, 2, 2, 2)

            def http_call():
                http_steps["n"] = http_run(
                    server.url, name, policy, episodes, rounds, HTTP_CONCURRENCY
                )

            fns["http"] = http_call
        timings = time_interleaved(fns, warmup=1, repeats=repeats)
    finally:
        if server is not None:
            server.close()
    rows = []
    up = UPSTREAM_RECORDED[name]
    http_sps = http_steps["n"] / timings["http"].median if server is not None else None
    mg_sps = mg_steps / timings["minigrid"].median if babyai else None
    for c in cases:
        b = c["batch"]
        t: Timing = timings[f"jax{b}"]
        sps = b * steps / t.median
        row = {
            "env": name,
            "impl": f"JAX vmap B={b}, scan {steps}",
            "steps/s": sps,
            "ms/call (median)": t.median * 1e3,
            "compile s": c["rollout_compile_s"],
            "resets/s": b / timings[f"reset{b}"].median,
        }
        if http_sps is not None:
            row["x HTTP (ours)"] = sps / http_sps
            row["x HTTP (AgentGym, recorded)"] = sps / up["http"]
        if "in_process" in up:
            row["x AgentGym in-process (recorded)"] = sps / up["in_process"]
        if babyai:
            psps = prim_counts[f"jax{b}"] / t.median
            row["primitive steps/s"] = psps
            row["x minigrid (primitive)"] = psps / mg_sps
            row["x minigrid (recorded 4,100/s)"] = psps / up["minigrid_primitive"]
        rows.append(row)
    if http_sps is not None:
        rows.append(
            {
                "env": name,
                "impl": f"HTTP: evol_jax.serve + pooled client ({HTTP_CONCURRENCY} in flight)",
                "steps/s": http_sps,
                "ms/call (median)": timings["http"].median * 1e3,
                "x HTTP (AgentGym, recorded)": http_sps / up["http"],
            }
        )
    if babyai:
        rows.append(
            {
                "env": name,
                "impl": "minigrid Python (BabyAI-GoToRedBallGrey-v0), random primitives",
                "primitive steps/s": mg_sps,
                "ms/call (median)": timings["minigrid"].median * 1e3,
            }
        )
    detail = {
        "timings": {k: v.to_dict() for k, v in timings.items()},
        "compile_s": {
            f"B={c['batch']}": {"reset": c["reset_compile_s"], "rollout": c["rollout_compile_s"]}
            for c in cases
        },
        "http_steps_per_call": http_steps.get("n"),
        "primitive_steps_per_call": prim_counts,
        "upstream_recorded_steps_per_s": up,
    }
    return rows, detail


def run(
    quick: bool = False,
    repeats: int | None = None,
    envs: str | Sequence[str] | None = None,
    batches: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Times ``envs`` (default all of `ENVS`; a comma-separated string or a sequence of names)
    at ``batches`` (default per env: `batches_for`)."""
    repeats = repeats or (2 if quick else 3)
    names = parse_envs(envs if envs is None or isinstance(envs, str) else ",".join(envs))
    if batches is not None:
        batches = tuple(int(b) for b in batches)
        if not batches or min(batches) < 1:
            raise ValueError(f"env_steps: batch sizes must be >= 1, got {batches}")
    env_info = environment()
    rows, details = [], {}
    for name in names:
        print(f"  {name} ...", flush=True)
        r, d = run_env(name, quick, repeats, batches)
        rows += r
        details[name] = d
    columns: list[str] = []
    for r in rows:
        columns += [k for k in r if k not in columns]
    rows = [{k: r.get(k, "-") for k in columns} for r in rows]
    best = {}
    for name in names:
        jr = [r for r in rows if r["env"] == name and r["impl"].startswith("JAX")]
        top = max(jr, key=lambda r: r["steps/s"])
        best[name] = {
            k: v for k, v in top.items() if (k.startswith("x ") or k == "impl") and v != "-"
        }
    return {
        "name": NAME,
        "quick": quick,
        "description": "environment steps/s: vmapped JAX envs vs minigrid and the HTTP path",
        "agentgym_compat": False,
        "envs": list(names),
        "scan_steps": {n: QUICK_SCAN_STEPS if quick else SCAN_STEPS[n] for n in names},
        "batches": {n: list(batches or batches_for(n, quick)) for n in names},
        "babyai_level": BABYAI_LEVEL,
        "best_ratios": best,
        "details": details,
        "rows": rows,
        "environment": env_info,
        "loadavg_after": list(os.getloadavg()),
    }


def summary(result: dict[str, Any]) -> str:
    parts = []
    for name, b in result["best_ratios"].items():
        bits = []
        if "x HTTP (ours)" in b:
            bits.append(f"{b['x HTTP (ours)']:,.0f}x our HTTP path")
            bits.append(f"{b['x HTTP (AgentGym, recorded)']:,.0f}x AgentGym's recorded HTTP figure")
        if "x AgentGym in-process (recorded)" in b:
            bits.append(f"{b['x AgentGym in-process (recorded)']:,.0f}x AgentGym in-process")
        if "x minigrid (primitive)" in b:
            bits.append(f"{b['x minigrid (primitive)']:,.1f}x minigrid primitive steps/s")
        parts.append(f"{name}: {', '.join(bits)} ({b['impl']})")
    env = result["environment"]
    return (
        "Corrected mode (`agentgym_compat=False`), random legal actions (BabyAI primitive mode: "
        "random primitives), every observation built, finished envs reset inside the scan; "
        f"best batch per env: {'; '.join(parts)}. Goals (issue 7): 100x minigrid, 1000x the "
        "AgentGym environments. The AgentGym columns divide by the figures measured on this "
        "CPU when the parity data was recorded (BabyAI 191 in-process / 107 over HTTP, "
        "TextCraft 251, Maze 289, Wordle 192 steps/s over HTTP), not re-measured here. Load "
        f"average before the run: {env.get('loadavg_before')}, after: "
        f"{result.get('loadavg_after')} on {env.get('cpu_count')} CPUs (shared machine: noisy)."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes (smoke test)")
    parser.add_argument(
        "--envs", default=None, help=f"comma-separated subset of {','.join(ENVS)} (default all)"
    )
    parser.add_argument(
        "--batches", default=None, help="comma-separated batch sizes (default per env)"
    )
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per impl")
    parser.add_argument("--out", default=None, help="write the result JSON to this path")
    parser.add_argument(
        "--no-cpu-flags", action="store_true", help="do not apply core_jax.cpu_flags defaults"
    )
    args = parser.parse_args(argv)
    try:
        parse_envs(args.envs)
        batches = [int(b) for b in args.batches.split(",")] if args.batches else None
    except ValueError as e:
        parser.error(str(e))
    if not args.no_cpu_flags:  # as benchmarks.run does, before JAX compiles anything
        from core_jax import cpu_flags

        cpu_flags.apply_default_cpu_flags()
    import datetime

    from benchmarks.harness import markdown_table, write_json

    res = run(quick=args.quick, repeats=args.repeats, envs=args.envs, batches=batches)
    res["command"] = "python -m benchmarks.env_steps " + " ".join(argv or sys.argv[1:])
    res["date_utc"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    table = markdown_table(res["rows"])
    res["markdown"] = f"## {NAME}\n\n{summary(res)}\n\n{table}\n"
    print(res["markdown"], flush=True)
    if args.out:
        write_json(args.out, res)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
