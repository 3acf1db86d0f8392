"""Fixed-shape on-device replay buffer for the SAC phase (jit-safe, no host round-trips).

The buffer stores any pytree of per-transition arrays with a leading ``capacity`` axis. Two
insertion policies (spec section 2/3):

* ``ring`` (paper mode): a circular buffer; once full, each new transition overwrites the
  oldest one.
* ``drop_half`` (code-compat mode): reproduces the official Python list, appended one sample at a
  time: before an append that finds the list full (``len == capacity``), the oldest
  ``capacity // 2`` entries are deleted (``buffer = buffer[capacity // 2:]``). Entries are kept
  oldest-first at positions ``[0, size)``.
* ``drop_half_batch`` (code-compat training): the official ``ReplayBuffer.add_batch`` exactly: a
  batch of ``k`` is appended whole if ``size + k < capacity``; otherwise the oldest
  ``size // 2`` entries are deleted first (``del buffer[:len(buffer) // 2]``). With ``k = 128``
  and capacity 1000 the sizes run 128, ..., 896, 576, 704, 832, 960, 608, ... Needs
  ``k <= capacity // 2``.

Sampling draws indices uniformly from the valid entries, with replacement by default or without
(``replace=False``, the official ``np.random.choice(count, batch_size, replace=False)``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

POLICIES = ("ring", "drop_half")
ALL_POLICIES = POLICIES + ("drop_half_batch",)


@struct.dataclass
class ReplayBuffer:
    """Replay storage; a pytree (passes through ``jit``).

    Attributes:
      data: pytree of arrays ``(capacity, ...)``.
      size: int32 scalar, number of valid entries.
      pos: int32 scalar, next write position (``ring``) — equal to ``size`` for ``drop_half``.
      policy: ``"ring"`` or ``"drop_half"`` (static: changing it retraces).
    """

    data: object
    size: jax.Array
    pos: jax.Array
    policy: str = struct.field(pytree_node=False, default="ring")

    @property
    def capacity(self) -> int:
        """Static number of slots."""
        return int(jax.tree_util.tree_leaves(self.data)[0].shape[0])


def init_buffer(example: object, capacity: int, policy: str = "ring") -> ReplayBuffer:
    """An empty buffer whose slots look like ``example`` (one transition, no batch axis).

    Args:
      example: pytree of arrays for one transition (shapes and dtypes are copied).
      capacity: number of slots (official 1000).
      policy: ``"ring"``, ``"drop_half"`` or ``"drop_half_batch"``.

    Returns:
      The empty :class:`ReplayBuffer`.
    """
    if policy not in ALL_POLICIES:
        raise ValueError(f"unknown replay policy {policy!r}; expected one of {ALL_POLICIES}")
    if capacity < 2:
        raise ValueError(f"capacity must be >= 2, got {capacity}")
    data = jax.tree_util.tree_map(
        lambda x: jnp.zeros((capacity,) + jnp.shape(x), jnp.asarray(x).dtype), example
    )
    # two distinct buffers: a donating jit must not see one buffer twice
    return ReplayBuffer(
        data=data, size=jnp.zeros((), jnp.int32), pos=jnp.zeros((), jnp.int32), policy=policy
    )


def add_batch(buf: ReplayBuffer, batch: object) -> ReplayBuffer:
    """Insert ``k`` transitions (leading axis of every leaf), in order.

    Args:
      buf: the buffer.
      batch: pytree matching the buffer's slots with a leading axis ``k`` (``k <= capacity``
        for ``ring``).

    Returns:
      The updated buffer.
    """
    cap = buf.capacity
    leaves = jax.tree_util.tree_leaves(batch)
    k = leaves[0].shape[0]
    slot_shapes = [x.shape[1:] for x in jax.tree_util.tree_leaves(buf.data)]
    if [x.shape[1:] for x in leaves] != slot_shapes or any(x.shape[0] != k for x in leaves):
        raise ValueError(
            f"batch leaves {[x.shape for x in leaves]} do not match slots (k, ...) of {slot_shapes}"
        )
    if buf.policy == "ring":
        if k > cap:
            raise ValueError(f"ring buffer: cannot add {k} transitions at once to capacity {cap}")
        idx = (buf.pos + jnp.arange(k)) % cap
        data = jax.tree_util.tree_map(
            lambda d, x: d.at[idx].set(x.astype(d.dtype)), buf.data, batch
        )
        return buf.replace(
            data=data,
            size=jnp.minimum(buf.size + k, cap).astype(jnp.int32),
            pos=((buf.pos + k) % cap).astype(jnp.int32),
        )

    if buf.policy == "drop_half_batch":
        if k > cap // 2:
            raise ValueError(f"drop_half_batch: batch {k} exceeds capacity // 2 = {cap // 2}")
        full = buf.size + k >= cap
        drop = jnp.where(full, buf.size // 2, 0)
        size = buf.size - drop
        data = jax.tree_util.tree_map(
            lambda d, x: jax.lax.dynamic_update_slice_in_dim(
                jnp.roll(d, -drop, axis=0), x.astype(d.dtype), size, 0
            ),
            buf.data,
            batch,
        )
        size = (size + k).astype(jnp.int32)
        return buf.replace(data=data, size=size, pos=size)

    half = cap // 2

    def one(carry, item):
        data, size = carry
        full = size >= cap
        # drop the oldest half: shift left by `half`; stale tail slots are beyond `size`
        data = jax.tree_util.tree_map(
            lambda d: jnp.where(full, jnp.roll(d, -half, axis=0), d), data
        )
        size = jnp.where(full, size - half, size)
        data = jax.tree_util.tree_map(
            lambda d, x: jax.lax.dynamic_update_index_in_dim(d, x.astype(d.dtype), size, 0),
            data,
            item,
        )
        return (data, size + 1), None

    (data, size), _ = jax.lax.scan(one, (buf.data, buf.size), batch)
    return buf.replace(data=data, size=size.astype(jnp.int32), pos=size.astype(jnp.int32))


def sample(buf: ReplayBuffer, key: jax.Array, batch_size: int, replace: bool = True) -> object:
    """Draw ``batch_size`` transitions uniformly from the valid entries.

    Args:
      buf: a non-empty buffer (sampling an empty one returns slot 0, which is zeros).
      key: PRNG key.
      batch_size: number of transitions.
      replace: with replacement (default) or without; without replacement needs
        ``size >= batch_size`` (otherwise invalid slots fill the remainder).

    Returns:
      Pytree of arrays ``(batch_size, ...)``.
    """
    if replace:
        idx = jax.random.randint(key, (batch_size,), 0, jnp.maximum(buf.size, 1))
    else:
        u = jax.random.uniform(key, (buf.capacity,))
        u = jnp.where(jnp.arange(buf.capacity) < buf.size, u, 2.0)
        idx = jnp.argsort(u)[:batch_size]
    return jax.tree_util.tree_map(lambda d: d[idx], buf.data)


def valid_items(buf: ReplayBuffer) -> object:
    """Host-side view of the stored transitions, oldest first (for tests and debugging).

    Args:
      buf: the buffer (concrete, not traced).

    Returns:
      Pytree of arrays ``(size, ...)`` in insertion order.
    """
    size, cap = int(buf.size), buf.capacity
    if buf.policy != "ring" or size < cap:
        order = jnp.arange(size)
    else:
        order = (int(buf.pos) + jnp.arange(cap)) % cap
    return jax.tree_util.tree_map(lambda d: d[order], buf.data)
