"""The train state that moves through jit: step, params, optimizer state and a PRNG key."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct


class TrainState(struct.PyTreeNode):
    """Everything a training step reads and writes; a plain pytree (checkpointable, shardable).

    Attributes:
      step: int32 scalar, number of updates applied.
      params: the model parameters (plain pytree).
      opt_state: the optax state.
      rng: raw ``uint32[2]`` key data (not a typed key, so checkpoints stay plain arrays);
        :meth:`step_rng` derives this step's key by folding in ``step``, so a resumed run draws
        exactly the keys the uninterrupted run would have.
      tx: the optax transformation (static: not a pytree leaf, never traced).
    """

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array
    tx: optax.GradientTransformation = struct.field(pytree_node=False)

    @classmethod
    def create(
        cls, *, params: Any, tx: optax.GradientTransformation, rng: jax.Array | int = 0
    ) -> TrainState:
        if isinstance(rng, int):
            rng = jax.random.key(rng)
        if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
            rng = jax.random.key_data(rng)
        return cls(
            step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), rng=rng, tx=tx
        )

    def step_rng(self) -> jax.Array:
        """A typed PRNG key unique to this step."""
        return jax.random.fold_in(jax.random.wrap_key_data(self.rng), self.step)

    def apply_gradients(self, grads: Any) -> TrainState:
        updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
        params = optax.apply_updates(self.params, updates)
        return self.replace(step=self.step + 1, params=params, opt_state=opt_state)
