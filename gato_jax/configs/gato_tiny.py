"""gato_tiny: a 2-block, d_model 64 Gato for tests and the CPU demo.

Command: ``python -m gato_jax.main --config gato_tiny --workdir DIR --num_steps 200``.
Runtime: well under a minute of training on a 2-core CPU (64-token windows, batch 8).
Expected result: the loss on the built-in synthetic episodes falls from ~10.4 (ln 33025) to
below 2 within a few hundred steps.

The paper's tokenizer (vocabulary 33,025: the token table holds most of the 2.2M parameters)
with a 64-token window and at most 16 image patches per window.
"""

from core_jax.nn import TransformerConfig
from gato_jax.configs.base import GatoConfig, GatoModelConfig, paper_optimizer
from gato_jax.configs.tokenizer import TokenizerConfig


def get_config() -> GatoConfig:
    tok = TokenizerConfig(seq_len=64, max_patches=16, prompt_tokens=16)
    return GatoConfig(
        model=GatoModelConfig(
            transformer=TransformerConfig(
                vocab_size=tok.vocab_size,
                d_model=64,
                num_layers=2,
                num_heads=4,
                mlp_dim=128,
                mlp="geglu",
                norm="layernorm",
                positions="none",
                max_len=tok.seq_len,
                tie_embeddings=True,
                stochastic_depth=0.1,
            ),
            resnet_width=32,
        ),
        tokenizer=tok,
        optim=paper_optimizer(3e-3, warmup_steps=20, decay_steps=200),
        batch_size=8,
        num_steps=200,
        synthetic_steps=8,
        log_every=10,
        checkpoint_every=50,
    )
