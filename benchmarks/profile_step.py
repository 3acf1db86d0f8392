"""Per-op profile of the JAX ``transformer_step``: where the step time goes on XLA:CPU.

    python -m benchmarks.profile_step [--no-cpu-flags] [--top 30]

Traces one step with ``jax.profiler``, reads the XSpace back with ``jax.profiler.ProfileData``
and sums thunk durations by HLO instruction, grouped by (shape, kind), where kind lists the
interesting ops inside the fusion (``dot``, ``exponential``, ``erf``, ``transpose``, ...) and
whether YNNPACK runs it. Durations are per-thread sums: thunks that run concurrently on the
two worker threads are both counted, so the total exceeds the wall time.
"""

from __future__ import annotations

import argparse
import collections
import glob
import re
import tempfile


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--no-cpu-flags", action="store_true")
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args(argv)
    if not args.no_cpu_flags:
        from core_jax import cpu_flags

        cpu_flags.apply_default_cpu_flags()

    import jax
    from jax.profiler import ProfileData

    from benchmarks.transformer_step import BATCH, CONFIG, SEQ_LEN, make_jax_step

    init, step = make_jax_step(CONFIG)
    tokens = jax.random.randint(jax.random.key(0), (BATCH, SEQ_LEN + 1), 0, CONFIG.vocab_size)
    state = list(init(jax.random.key(1), tokens))
    compiled = step.lower(state[0], state[1], tokens).compile()
    state[0], state[1], loss = compiled(state[0], state[1], tokens)
    jax.block_until_ready(loss)
    logdir = tempfile.mkdtemp(prefix="profile_step_")
    jax.profiler.start_trace(logdir)
    state[0], state[1], loss = compiled(state[0], state[1], tokens)
    jax.block_until_ready(loss)
    jax.profiler.stop_trace()
    profile = ProfileData.from_file(glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True)[0])

    hlo = compiled.as_text()
    bodies: dict[str, str] = {}
    current = None
    for line in hlo.split("\n"):
        m = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
        if m and not line.startswith(" "):
            current = m.group(1)
            bodies[current] = ""
        elif current:
            bodies[current] += line + "\n"
    kinds: dict[str, tuple[str, str]] = {}
    interesting = "dot|exponential|erf|reduce|transpose|divide|select|concatenate|copy|scatter"
    for line in hlo.split("\n"):
        m = re.match(r"\s+(?:ROOT )?%([\w.\-]+) = (\S+) (\w+)\(", line)
        if not m:
            continue
        name, shape, op = m.groups()
        called = re.search(r"calls=%([\w.\-]+)", line)
        kind = op
        if called and called.group(1) in bodies:
            ops = sorted(set(re.findall(rf"= \S+ ({interesting})\(", bodies[called.group(1)])))
            kind = f"{op}{'(ynn)' if '__ynn_fusion' in line else ''}:{','.join(ops)}"
        kinds[name] = (shape.split("{")[0], kind)

    total = collections.Counter()
    wall = 0.0
    for plane in profile.planes:
        for line in plane.lines:
            for ev in line.events:
                if "wait for completion" in ev.name:
                    wall += ev.duration_ns / 1e6
                if "XLAEigen" in line.name and ev.name in kinds:
                    total[kinds[ev.name]] += ev.duration_ns / 1e6
    print(f"step wall time {wall:.1f} ms; per-thread op time {sum(total.values()):.1f} ms")
    print("| ms | shape | kind |\n|---|---|---|")
    for (shape, kind), ms in total.most_common(args.top):
        print(f"| {ms:.1f} | {shape} | {kind} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
