"""Pieces the named recipes share (not a recipe itself: it has no ``get_config``)."""

from __future__ import annotations

# Maze start indices (25 starts, `evol_jax.envs.maze.START_POSITIONS`)
MAZE_EXPERT = [0, 9]  # (1, 1) and (1, 11): the two far ends of the top corridor
MAZE_EVAL = [1, 3, 6, 8, 12, 15, 20, 23]  # (1,2) (1,4) (1,8) (1,10) (4,3) (5,5) (5,8) (3,9)
MAZE_EXPLORE = [i for i in range(25) if i not in MAZE_EXPERT + MAZE_EVAL]
MAZE_SPLITS = {"expert": MAZE_EXPERT, "explore": MAZE_EXPLORE, "eval": MAZE_EVAL}

TEXTCRAFT_GOALS = 55  # goals of the package's recipe set (idx is taken modulo this)


def _textcraft(rem):
    return [i for i in range(TEXTCRAFT_GOALS) if i % 5 in rem]


# goals i % 5 == 0 expert (11), i % 5 == 1 held out (11), the other 33 explored (the goal table is
# sorted by crafting depth, so every split spans the depths)
TEXTCRAFT_SPLITS = {"expert": _textcraft({0}), "explore": _textcraft({2, 3, 4}),
                    "eval": _textcraft({1})}  # fmt: skip


def tiny_model(d_model: int = 64, num_layers: int = 2, num_heads: int = 4) -> dict:
    """A small Llama-style policy (``TransformerConfig`` keys; the vocabulary comes from the
    tokenizer), SwiGLU MLP of width 3 d, RMSNorm, RoPE."""
    return dict(d_model=d_model, num_layers=num_layers, num_heads=num_heads,
                mlp_dim=3 * d_model, mlp="swiglu", norm="rmsnorm", positions="rope",
                max_len=2048)  # fmt: skip


def bc(updates: int, log_every: int = 20, peak_lr: float = 3e-3) -> dict:
    """`evol_jax.train.BCConfig` keys: a fixed number of updates (BC_base and every AgentEvol
    iteration train the same count from the same initialisation), 4 packed rows of 1,024
    tokens per update, no intermediate checkpoints."""
    return dict(peak_lr=peak_lr, warmup_frac=0.1, micro_batch=4, grad_accum=1, seq_len=1024,
                updates=updates, log_every=log_every, checkpoint_every=100000)  # fmt: skip


def evol(**overrides) -> dict:
    """`evol_jax.evol.EvolConfig` keys: M = 4 official iterations (init from base, cumulative
    merge, success filter), K = 4 samples per instruction at temperature 1."""
    return dict(iterations=4, init_from="base", merge="cumulative", temperature=1.0,
                num_samples=4, **overrides)  # fmt: skip
