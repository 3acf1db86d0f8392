"""The CPU demo: ``python -m evol_jax.demo --workdir DIR`` (same as ``python -m evol_jax.main
--config demo --workdir DIR``).

Maze (the cheapest native env: short observations, 4 actions), a 2-layer d=64 policy trained from
scratch, compact prompts (`evol_jax.sampler.conversation_start`: AgentGym's constant instructions
would be ~75% of every episode's tokens). D_s is the expert from the two far ends of the top
corridor only, so BC_base has seen 2 of the 25 starts. Exploration (temperature 1, K = 4 samples
per instruction) covers 15 other starts; the success filter keeps at most one success per start
and iteration. Every iteration trains the same number of updates (120) from the same
initialisation (official ``init_from="base"``, cumulative merge), so BC_base and AgentEvol differ
only in their data. Greedy evaluation is on 8 held-out starts, disjoint from D_s and from the
exploration pool.

Measured (fresh workdir, 2-core CPU shared with other jobs, load average 11-16): BC_base 75.0
success, AgentEvol 87.5 from M = 1 on (14/15 pool starts solved by exploration each round);
13.5 min wall, 6.0 min CPU (user + sys). Re-runs reuse ``DIR/xla_cache``.
"""

from evol_jax.configs.common import MAZE_SPLITS, bc, evol, tiny_model


def get_config() -> dict:
    return {
        "seed": 0,
        "envs": ["maze"],
        # explicit index lists (a (start, stop) tuple would be a range)
        "splits": {"maze": MAZE_SPLITS},
        "prompt": "compact",
        "tokenizer_symbols": ["Thought:", "Action:"],
        "vocab_size": 600,
        "model": tiny_model(),
        "bc": bc(updates=120),
        "evol": evol(),
    }
