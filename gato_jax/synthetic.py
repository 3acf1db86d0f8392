"""Built-in synthetic episode source (``--data synthetic``): small, deterministic, mixed domains.

Two toy tasks with learnable actions, so a training run's loss falls:

* ``control``: observation ``state`` continuous ``(4,)`` in [-1, 1]; action ``move`` discrete in
  ``[0, 4)`` = argmax of the state (6 tokens per step).
* ``vision``: observation ``rgb`` image ``(16, 32, 3)`` (two patches: left half one flat
  colour, right half another) and ``proprio`` continuous ``(2,)``; action ``torque`` continuous
  ``(2,)`` in [-1, 1] = ``-proprio`` (7 tokens per step).

Batch ``i`` depends only on ``(seed, i, process_index)``: each row draws its domain with the
mixture weights, an episode and a same-task prompt episode (prompt conditioning with the
paper's 25% rate), and a random token window (:func:`gato_jax.sequence.build_batch`). Each
process builds only its ``batch_size / process_count`` rows. ``state()`` / ``restore()`` save and
restore the iterator position with the checkpoint.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from gato_jax.configs.base import GatoConfig
from gato_jax.sequence import GatoInputs, build_batch, encode_episode, stack_episodes
from gato_jax.spec import EpisodeSpec, FieldSpec

DOMAINS = ("control", "vision")
WEIGHTS = (0.5, 0.5)


def domain_specs(cfg: GatoConfig) -> dict[str, EpisodeSpec]:
    """The EpisodeSpec of each synthetic domain, with the run's tokenizer config."""
    tok = cfg.tokenizer
    c = tok.image_channels
    return {
        "control": EpisodeSpec(
            {"state": FieldSpec("continuous", (4,), low=-1.0, high=1.0)},
            {"move": FieldSpec("discrete", (), low=0, high=3)},
            tok,
        ),
        "vision": EpisodeSpec(
            {
                "rgb": FieldSpec("image", (tok.patch_size, 2 * tok.patch_size, c)),
                "proprio": FieldSpec("continuous", (2,)),
            },
            {"torque": FieldSpec("continuous", (2,), low=-1.0, high=1.0)},
            tok,
        ),
    }


def make_episode(domain: str, rng: np.random.Generator, steps: int, cfg: GatoConfig) -> dict:
    """One raw episode (``{"observation": ..., "action": ...}``, leaves ``[steps, ...]``)."""
    if domain == "control":
        state = rng.uniform(-1, 1, (steps, 4)).astype(np.float32)
        return {
            "observation": {"state": state},
            "action": {"move": np.argmax(state, axis=1).astype(np.int32)},
        }
    if domain == "vision":
        p, c = cfg.tokenizer.patch_size, cfg.tokenizer.image_channels
        colours = rng.integers(0, 256, (steps, 2, c), dtype=np.uint8)
        rgb = np.repeat(np.repeat(colours[:, None, :, :], p, axis=1), p, axis=2)
        proprio = rng.uniform(-1, 1, (steps, 2)).astype(np.float32)
        return {
            "observation": {"rgb": rgb, "proprio": proprio},
            "action": {"torque": -proprio},
        }
    raise ValueError(f"unknown synthetic domain {domain!r}; choose one of {DOMAINS}")


class SyntheticData:
    """Deterministic, resumable iterator of host batches (:class:`GatoInputs` of NumPy arrays).

    Args:
      cfg: the run config (``batch_size``, ``seed``, ``synthetic_steps``, tokenizer).
      process_index, process_count: this process's share (default from JAX).
    """

    def __init__(
        self, cfg: GatoConfig, process_index: int | None = None, process_count: int | None = None
    ):
        self.cfg, self.index = cfg, 0
        self.process_index = jax.process_index() if process_index is None else process_index
        count = jax.process_count() if process_count is None else process_count
        if cfg.batch_size % count:
            raise ValueError(f"batch_size={cfg.batch_size} not divisible by {count} processes")
        self.local_batch = cfg.batch_size // count
        self.specs = domain_specs(cfg)

    def state(self) -> dict[str, int]:
        return {"index": self.index}

    def restore(self, state: dict[str, Any]) -> None:
        self.index = int(state["index"])

    def __iter__(self):
        return self

    def __next__(self) -> GatoInputs:
        cfg = self.cfg
        rng = np.random.default_rng([cfg.seed, self.index, self.process_index])
        key = jax.random.fold_in(
            jax.random.fold_in(jax.random.key(cfg.seed), self.index), self.process_index
        )
        self.index += 1
        b, t = self.local_batch, cfg.synthetic_steps
        choice = rng.choice(len(DOMAINS), size=b, p=np.asarray(WEIGHTS))
        out = None
        for d, name in enumerate(DOMAINS):
            rows = np.nonzero(choice == d)[0]
            if rows.size == 0:
                continue
            spec = self.specs[name]
            eps = [encode_episode(make_episode(name, rng, t, cfg), spec) for _ in rows]
            prompts = [encode_episode(make_episode(name, rng, t, cfg), spec) for _ in rows]
            # Fixed batch shape b per domain (one compilation each): unused rows repeat row 0.
            fill = [0] * (b - rows.size)
            eps = stack_episodes(eps + [eps[i] for i in fill])
            prompts = stack_episodes(prompts + [prompts[i] for i in fill])
            keys = jax.random.split(jax.random.fold_in(key, d), b)
            built = jax.device_get(build_batch(eps, keys, spec, prompts))
            if out is None:
                out = jax.tree.map(np.array, built)
            sel = np.zeros(b, bool)
            sel[rows] = True
            src = np.cumsum(sel) - 1  # row r of this domain sits at built[src[r]]

            def put(o, n, sel=sel, src=src):
                o[sel] = n[src[sel]]
                return o

            out = jax.tree.map(put, out, built)
        return out
