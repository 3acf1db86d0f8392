"""Gato 79M (spec section 4: 8 blocks / 24 heads / d_model 768 / FFN 3072 / kv size 32).

Command: ``python -m gato_jax.main --config gato_79m --workdir DIR --dry_run`` (compile only), or
without ``--dry_run`` to train (spec section 7: batch 512 x 1024 tokens, 1M steps).
Expected result: the paper's run of this size; parameters: see ``gato_jax.models.param_count``
(within 3% of 79M, recorded in the README).

**[decision]** GEGLU hidden width ``mlp_dim=1792``, not the table's FFN 3072: a literal GEGLU with
hidden width 3072 (three d_model x 3072 matrices) overshoots the paper's parameter count by 30-43%,
while the paper's counts imply about 0.6 x FFN; we take the multiple of 128 nearest to the
paper's total. Peak learning rate 1e-4 (**[decision]**: the paper states ~1e-4 for 1.18B only).
"""

from gato_jax.configs.base import GatoConfig, GatoModelConfig, paper_optimizer, paper_transformer
from gato_jax.configs.tokenizer import TokenizerConfig


def get_config() -> GatoConfig:
    return GatoConfig(
        model=GatoModelConfig(
            transformer=paper_transformer(
                num_layers=8, num_heads=24, d_model=768, mlp_dim=1792, head_dim=32
            )
        ),
        tokenizer=TokenizerConfig(),
        optim=paper_optimizer(1e-4, warmup_steps=15_000, decay_steps=1_000_000),
        batch_size=512,
        num_steps=1_000_000,
        log_every=100,
        checkpoint_every=1000,
    )
