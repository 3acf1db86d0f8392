"""BabyAI primitive stepping with minigrid's image observation only (no text, no action search).

The comparison issue 7 asks for is against minigrid's own Python BabyAI stepping *primitive*
actions: ``env.step(a)`` with ``a`` in minigrid's 7 actions (left, right, forward, pickup, drop,
toggle, done) returning ``obs["image"]`` (the 7x7x3 encoded egocentric view of ``gen_obs``),
reward, terminated and truncated. `BabyAIPrimitive` is exactly that on device: the same world and
dynamics as the text environment (`babyai_core.prim_step`, mission verification included) and
the same view (`babyai_core.view_image`), without AgentGym's text observation, its per-observation
action search and its high-level actions.

>>> env = BabyAIPrimitive()
>>> state, ts = jax.jit(jax.vmap(env.reset))(jax.random.split(jax.random.key(0), 4096),
...                                          jnp.zeros(4096, jnp.int32))   # level 1, native
>>> state, ts = jax.jit(jax.vmap(env.step))(state, jnp.full(4096, 2))      # all move forward
>>> ts.image.shape, ts.image.dtype
((4096, 7, 7, 3), dtype('uint8'))

Semantics are minigrid's (``RoomGridLevel.step``): ``step_count`` grows by one per step,
``truncated`` once it reaches ``max_steps``, ``terminated`` on the mission's success (reward
``1 - 0.9 step_count / max_steps``) or failure (reward 0). Like minigrid, and unlike the text
environments' contract, stepping a finished episode is not blocked: the caller resets
(`reset`, or a select against a reset state inside a scan). Tested equal to minigrid (world,
image, reward, terminated, truncated) on random primitive sequences over several levels.

Instances: ``reset(key, idx)`` generates level ``idx % 40 + 1`` natively for
`babyai_gen.NATIVE_LEVELS` (the same distribution as minigrid's, not its RNG stream), otherwise
reads the instance bank given to `use_bank` (`BabyAI.bank_from_minigrid`); `reset_from_minigrid`
imports an exact minigrid instance.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from evol_jax.envs import babyai_core as core

# minigrid's action ids (MiniGridEnv.Actions)
LEFT, RIGHT, FORWARD, PICKUP, DROP, TOGGLE, DONE = range(7)
NUM_ACTIONS = 7


@flax.struct.dataclass
class ImageStep:
    """One primitive step's output, as minigrid's ``step`` returns it (image only)."""

    image: jax.Array  # uint8 [7, 7, 3] obs["image"]: (object, colour, state), unseen cells 0
    direction: jax.Array  # int32 [] obs["direction"]
    reward: jax.Array  # float32 []
    terminated: jax.Array  # bool [] mission success or failure
    truncated: jax.Array  # bool [] step_count reached max_steps (minigrid: even if terminated)
    done: jax.Array  # bool [] terminated | truncated


class BabyAIPrimitive:
    """minigrid BabyAI with primitive actions and the image observation (module docstring).

    State: a `babyai_core.World` (grid, objects, agent, carried object, step count, mission).
    """

    name = "babyai_primitive"
    num_actions = NUM_ACTIONS

    def __init__(self):
        self._bank = None

    # ------------------------------------------------------------------ device

    @staticmethod
    def observe(world: core.World, reward, terminated) -> ImageStep:
        truncated = world.step_count >= world.max_steps
        return ImageStep(
            image=core.view_image(world).astype(jnp.uint8),
            direction=world.agent_dir,
            reward=jnp.asarray(reward, jnp.float32),
            terminated=jnp.asarray(terminated, bool),
            truncated=truncated,
            done=terminated | truncated,
        )

    def step(self, world: core.World, action) -> tuple[core.World, ImageStep]:
        """minigrid ``env.step(action)``; ``action`` int32 [] in ``[0, 7)`` (others clipped)."""
        action = jnp.clip(jnp.asarray(action, jnp.int32), 0, NUM_ACTIONS - 1)
        world, reward, terminated = core.prim_step(world, action)
        return world, self.observe(world, reward, terminated)

    def reset(self, key, idx) -> tuple[core.World, ImageStep]:
        """Instance ``idx`` (level ``idx % 40 + 1``); native levels on device, others from the
        bank (`use_bank`). A concrete ``idx`` of a level with neither raises ``ValueError``."""
        from evol_jax.envs.babyai import draw_world

        world, _, _, _ = draw_world(key, idx, self._bank, "BabyAIPrimitive.reset")
        return world, self.observe(world, 0.0, False)

    # ------------------------------------------------------------------ host import

    def reset_from_minigrid(self, env=None, *, level: int | None = None, seed: int | None = None):
        """Imports a live minigrid env (any point of an episode), or makes ``level`` with ``seed``.

        Returns:
          ``(world, ImageStep)``: the observation is the env's current image, reward 0.
        """
        from evol_jax.envs.babyai import make_minigrid
        from evol_jax.envs.babyai_import import world_from_minigrid

        if env is None:
            env = make_minigrid(level, seed)
        world, _ = world_from_minigrid(env)
        if not hasattr(self, "_observe_jit"):
            self._observe_jit = jax.jit(lambda w: self.observe(w, 0.0, False))
        return world, self._observe_jit(world)

    def bank_from_minigrid(self, instances):
        """Stacks imported instances ``[(level, seed), ...]`` (`BabyAI.bank_from_minigrid`)."""
        from evol_jax.envs.babyai import BabyAI

        return BabyAI().bank_from_minigrid(instances)

    def use_bank(self, bank):
        """Instances for the non-native levels: ``BabyAI.bank_from_minigrid(...)``'s result."""
        self._bank = bank
        return self
