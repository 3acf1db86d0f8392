"""iemocap_code_compat: Co-SA config.

code-compat mode: the August 2024 official code — no MSD, eta' DPSR with the acoustic term
replaced by the visual one, mismatched reward indexing, uncopied targets, official add_batch replay
buffer, shared actor/critic layer init; loss weights 9/-/10/9.

Command: ``python -m cosa_jax.main --config iemocap_code_compat
--data DIR --workdir DIR``. Adam 2.2e-4 for the three parameter groups, batch 128 with drop_last,
200 epochs, ReduceLROnPlateau(patience 20, factor 0.8) on validation loss.
"""

from cosa_jax.configs.base import CoSAConfig, make_config


def get_config() -> CoSAConfig:
    return make_config("iemocap", "code-compat")
