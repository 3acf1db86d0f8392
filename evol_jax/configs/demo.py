"""The CPU demo: ``python -m evol_jax.main --config demo --workdir DIR`` (a few minutes).

Maze and TextCraft (default, corrected semantics), a 2-layer d=64 policy from scratch, BC on 3
expert episodes per env, M = 4 AgentEvol rounds exploring disjoint instructions at temperature 1,
greedy evaluation on held-out instructions.
"""


def get_config() -> dict:
    return {
        "seed": 0,
        "envs": ["maze", "textcraft"],
        # [start, stop) ranges of instance indices; eval is disjoint from expert and explore.
        "splits": {
            "maze": {"expert": (0, 3), "explore": (3, 17), "eval": (17, 25)},
            "textcraft": {"expert": (0, 4), "explore": (100, 124), "eval": (500, 512)},
        },
        # TextCraft's expert needs <= 3 rounds; 10 instead of AgentGym's 20 keeps failures cheap.
        "env_options": {"textcraft": {"max_rounds": 10}},
        "max_cache_len": 3072,
        "vocab_size": 700,
        "model": dict(
            d_model=64,
            num_layers=2,
            num_heads=4,
            mlp_dim=192,
            mlp="swiglu",
            norm="rmsnorm",
            positions="rope",
            max_len=8192,
        ),  # fmt: skip
        "bc": dict(
            peak_lr=3e-3,
            warmup_frac=0.1,
            micro_batch=8,
            grad_accum=1,
            seq_len=2048,
            epochs=12,
            log_every=1000,
            checkpoint_every=100000,
        ),  # fmt: skip
        "evol": dict(iterations=4, init_from="previous", merge="cumulative", temperature=1.0),
    }
