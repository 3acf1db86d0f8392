"""mosi_paper: Co-SA config.

paper mode: full MSD (hinge L_c), eta = T-|p-q| DPSR on all three agents, correct reward,
residual DPSR block, mean-similarity advice, copied targets, ring replay buffer; loss weights
9/1/30/1.

Command: ``python -m cosa_jax.main --config mosi_paper
--data DIR --workdir DIR``. Adam 2.2e-4 for the three parameter groups, batch 128 with drop_last,
200 epochs, ReduceLROnPlateau(patience 20, factor 0.8) on validation loss.
"""

from cosa_jax.configs.base import CoSAConfig, make_config


def get_config() -> CoSAConfig:
    return make_config("mosi", "paper")
