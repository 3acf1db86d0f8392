"""A longer recipe (hours on CPU, minutes on one GPU): all four native envs, a 4-layer d=256
policy, BC on 20 expert episodes per env, M = 4, official options (init from base, cumulative
merge, success filter).

    python -m evol_jax.main --config small --workdir /tmp/evol_small
"""


def get_config() -> dict:
    return {
        "seed": 0,
        "envs": ["maze", "textcraft", "wordle", "babyai"],
        "splits": {
            "maze": {"expert": (0, 5), "explore": (5, 17), "eval": (17, 25)},
            "textcraft": {"expert": (0, 20), "explore": (100, 400), "eval": (1000, 1100)},
            "wordle": {"expert": (0, 20), "explore": (100, 400), "eval": (1000, 1100)},
            "babyai": {"expert": (0, 80), "explore": (400, 1200), "eval": (4000, 4200)},
        },
        "vocab_size": 2000,
        "model": dict(
            d_model=256,
            num_layers=4,
            num_heads=8,
            mlp_dim=768,
            mlp="swiglu",
            norm="rmsnorm",
            positions="rope",
            max_len=8192,
        ),  # fmt: skip
        "bc": dict(
            peak_lr=1e-3,
            warmup_frac=0.1,
            micro_batch=8,
            grad_accum=4,
            seq_len=8192,
            epochs=3,
            log_every=10,
            checkpoint_every=200,
        ),  # fmt: skip
        "evol": dict(iterations=4, init_from="base", merge="cumulative", temperature=1.0),
    }
