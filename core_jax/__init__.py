"""Shared JAX/Flax runtime of gato_jax, cosa_jax and evol_jax.

Submodules: nn (transformer, KV cache, sampling), parallel (meshes, sharding, train steps),
train_state, optim, losses, checkpoint, metrics, progress, config; demo is `make demo`.
"""
