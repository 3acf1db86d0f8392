"""GatoPolicy: KV-cached acting == a non-cached reference, restricted decoding, action spaces,
batched == per-env, no retracing, checkpoint loading, bad input."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from core_jax import config as config_lib
from core_jax.checkpoint import Checkpointer
from core_jax.nn import sample
from core_jax.train_state import TrainState
from gato_jax.configs import get_config
from gato_jax.models import Gato, dummy_inputs
from gato_jax.policy import GatoPolicy, ModelInputs
from gato_jax.sequence import (
    action_id_ranges,
    build_batch,
    detokenize_action,
    encode_episode,
    stack_episodes,
)
from gato_jax.spec import EpisodeSpec, FieldSpec
from gato_jax.train import make_optimizer

CFG = get_config("gato_tiny")


@pytest.fixture(scope="module")
def params():
    p = Gato(CFG.model).init(jax.random.key(0), dummy_inputs(CFG.tokenizer))["params"]
    return nn.meta.unbox(p)


def mixed_spec():
    """Text (ids) + image + continuous observation; bounded continuous + discrete action."""
    return EpisodeSpec(
        {
            "instr": FieldSpec("text", (3,)),
            "rgb": FieldSpec("image", (16, 16, 3)),
            "state": FieldSpec("continuous", (3,)),
        },
        {
            "arm": FieldSpec("continuous", (2,), low=[-2.0, 0.0], high=[2.0, 0.5]),
            "grip": FieldSpec("discrete", (), low=2, high=5),
        },
        CFG.tokenizer,
    )


def mixed_obs(rng, t):
    return {
        "instr": rng.integers(0, 32000, size=1 + t % 3).astype(np.int32),
        "rgb": rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8),
        "state": rng.normal(size=3).astype(np.float32),
    }


def mixed_episode(rng, steps):
    obs = [mixed_obs(rng, t) for t in range(steps)]
    return {
        "observation": {
            "instr": [o["instr"] for o in obs],
            "rgb": np.stack([o["rgb"] for o in obs]),
            "state": np.stack([o["state"] for o in obs]),
        },
        "action": {
            "arm": rng.uniform([-2, 0], [2, 0.5], size=(steps, 2)).astype(np.float32),
            "grip": rng.integers(2, 6, size=steps),
        },
    }


def full_forward_logits(model, params, toks, cfg, length):
    """Non-cached forward of a host token run, right-padded to ``length``: last logits [V]."""
    n, k = len(toks), int(toks.is_patch.sum())
    tokens = np.zeros((1, length), np.int32)
    local = np.full((1, length), -1, np.int32)
    pidx = np.full((1, length), -1, np.int32)
    tokens[0, :n], local[0, :n] = toks.ids, toks.local
    pidx[0, np.flatnonzero(toks.is_patch)] = np.arange(k)
    slots = 16  # fixed, so the jitted reference compiles once
    patches = np.zeros((1, slots, cfg.patch_size, cfg.patch_size, 3), np.float32)
    rows = np.zeros((1, slots, 2), np.int32)
    cols = np.zeros((1, slots, 2), np.int32)
    patches[0, :k], rows[0, :k], cols[0, :k] = toks.pixels, toks.rows, toks.cols
    inputs = ModelInputs(tokens, local, pidx, patches, rows, cols)
    return np.asarray(_forward(model, params, inputs))[0, n - 1]


@jax.jit
def _forward_impl(params, inputs):
    return Gato(CFG.model).apply({"params": params}, inputs)


def _forward(model, params, inputs):
    assert model.config == CFG.model
    return _forward_impl(params, inputs)


def test_cached_acting_equals_non_cached_reference_with_roll_over(params):
    spec = mixed_spec()
    rng = np.random.default_rng(1)
    demo = mixed_episode(rng, 6)
    policy = GatoPolicy(CFG.model, params, spec, temperature=1.0, seed=3)
    policy.reset(prompt_episode=demo)
    model = Gato(CFG.model)
    S, n_act = policy.context_len, policy.num_action_tokens  # noqa: N806
    ranges = action_id_ranges(spec)
    prompt = policy.encode_prompt(demo)
    assert len(prompt) == CFG.tokenizer.prompt_tokens
    steps, rolled = [], 0
    for t in range(14):
        obs = mixed_obs(rng, t)
        policy.act(obs)
        # Reference: the same lazy whole-step roll-over rule, then a full forward per token.
        enc, act_local = policy.encode_observation(obs)
        if len(prompt) + sum(len(s) for s in steps) + len(enc) + n_act - 1 > S:
            rolled += 1
            while sum(len(s) for s in steps) > S - len(prompt) - len(enc) - (n_act - 1):
                steps.pop(0)
        ctx = dataclasses.replace(enc)
        key = jax.random.fold_in(policy.keys[0], t)
        ids = []
        for i in range(n_act):
            run = type(enc).concat([prompt, *steps, ctx], policy._empty)
            logits = full_forward_logits(model, params, run, CFG.tokenizer, S)
            np.testing.assert_allclose(policy.last_logits[0, i], logits, atol=1e-4, rtol=1e-4)
            tok = sample(
                jax.random.fold_in(key, i),
                jnp.asarray(logits)[None],
                temperature=1.0,
                id_range=tuple(ranges[i]),
            )
            ids.append(int(tok[0]))
            ctx = type(enc).concat(
                [
                    ctx,
                    type(enc)(
                        np.array([ids[-1]], np.int32),
                        act_local[i : i + 1],
                        np.zeros(1, bool),
                        policy._empty.pixels,
                        policy._empty.rows,
                        policy._empty.cols,
                    ),
                ],
                policy._empty,
            )
        np.testing.assert_array_equal(policy.last_action_ids(), ids)
        steps.append(ctx)
        ctx_now = policy.context()
        want = type(enc).concat([prompt, *steps], policy._empty)
        np.testing.assert_array_equal(ctx_now.ids, want.ids)
        np.testing.assert_array_equal(ctx_now.local, want.local)
    assert rolled >= 2, "the episode must roll the context over"
    assert dict(policy.trace_counts) == {"act": 1, "refill": 1}


def test_context_tokens_match_build_sequence(params):
    """Prompt + steps in the policy's context == build_sequence's 'start' prompt + episode."""
    spec = mixed_spec()
    rng = np.random.default_rng(2)
    demo, episode = mixed_episode(rng, 5), mixed_episode(rng, 4)
    policy = GatoPolicy(CFG.model, params, spec)
    policy.reset(prompt_episode=demo)
    for t in range(4):
        obs = {k: (v[t]) for k, v in episode["observation"].items()}
        policy.act(obs)
    # Replace the episode's actions by the ones the policy took, then build the sequence.
    ctx = policy.context()
    acted = dict(episode)
    arm = np.zeros((4, 2), np.float32)
    grip = np.zeros(4, np.int64)
    ranges = policy.num_action_tokens
    steps = list(policy._envs[0].steps)
    for t, s in enumerate(steps):
        vals = detokenize_action(s.ids[-ranges:], spec)
        arm[t], grip[t] = vals["action/arm"], vals["action/grip"]
    acted["action"] = {"arm": arm, "grip": grip}
    arrays = encode_episode(acted, spec)
    prompt_arrays = encode_episode(demo, spec)
    batch = build_batch(
        stack_episodes([arrays]),
        jax.random.key(0)[None],
        spec,
        stack_episodes([prompt_arrays]),
        prompt_mode="start",
        window="start",
    )
    seq = jax.tree.map(lambda x: x[0], batch)
    n = len(ctx)
    assert n <= spec.cfg.seq_len and int(seq.valid.sum()) == n
    np.testing.assert_array_equal(np.asarray(seq.tokens)[:n], ctx.ids)
    np.testing.assert_array_equal(np.asarray(seq.local_positions)[:n], ctx.local)
    np.testing.assert_array_equal(
        np.flatnonzero(np.asarray(seq.patch_index)[:n] >= 0), np.flatnonzero(ctx.is_patch)
    )


def test_restricted_decoding_never_emits_an_illegal_id(params):
    spec = EpisodeSpec(
        {"state": FieldSpec("continuous", (2,))},
        {
            "a": FieldSpec("discrete", (2,), low=[3, 0], high=[6, 1]),
            "b": FieldSpec("continuous", (1,), low=-1.0, high=1.0),
        },
        CFG.tokenizer,
    )
    ranges = action_id_ranges(spec)
    policy = GatoPolicy(CFG.model, params, spec, batch_size=16, temperature=3.0, seed=5)
    policy.reset()
    rng = np.random.default_rng(0)
    unrestricted_outside = 0
    for _ in range(6):
        acts = policy.act_batch([{"state": rng.normal(size=2) * 5} for _ in range(16)])
        for b in range(16):
            ids = policy.last_action_ids(b)
            assert np.all((ids >= ranges[:, 0]) & (ids < ranges[:, 1])), ids
            assert 3 <= acts[b]["a"][0] <= 6 and 0 <= acts[b]["a"][1] <= 1
            assert -1.0 <= acts[b]["b"][0] <= 1.0
        top = policy.last_logits.argmax(-1)  # [B, n_act]
        unrestricted_outside += int(np.sum((top < ranges[:, 0]) | (top >= ranges[:, 1])))
    # Random parameters would often pick other ids: the restriction is doing the work.
    assert unrestricted_outside > 0


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_detokenised_actions_lie_in_the_action_space(params, env_id):
    env = gym.make(env_id)
    space = env.action_space
    if isinstance(space, gym.spaces.Discrete):
        act = FieldSpec("discrete", (), low=int(space.start), high=int(space.start + space.n - 1))
    else:
        act = FieldSpec("continuous", space.shape, low=space.low, high=space.high)
    spec = EpisodeSpec(
        {"state": FieldSpec("continuous", env.observation_space.shape)}, act, CFG.tokenizer
    )
    policy = GatoPolicy(CFG.model, params, spec, temperature=2.0, seed=1)
    obs, _ = env.reset(seed=0)
    policy.reset()
    seen = set()
    for _ in range(25):
        a = policy.act({"state": obs})
        assert space.contains(a), (a, space)
        seen.add(str(a))
        obs, _, term, trunc, _ = env.step(a)
        if term or trunc:
            obs, _ = env.reset()
            policy.reset()
    assert len(seen) > 1


def test_box_with_offset_bounds_detokenises_inside(params):
    space = gym.spaces.Box(low=np.array([10.0, -0.01]), high=np.array([10.5, 0.01]))
    spec = EpisodeSpec(
        {"s": FieldSpec("continuous", ())},
        FieldSpec("continuous", (2,), low=space.low, high=space.high),
        CFG.tokenizer,
    )
    policy = GatoPolicy(CFG.model, params, spec, batch_size=8, temperature=5.0)
    policy.reset()
    for _ in range(3):
        for a in policy.act_batch([{"s": np.float32(0.3)}] * 8):
            assert space.contains(a), a


def test_batched_equals_per_env(params):
    temperature = 1.0  # sampled: per-row PRNG streams must match too (greedy is t = 0 of it)
    spec = mixed_spec()
    rng = np.random.default_rng(7)
    demos = [mixed_episode(rng, 3), None]
    B = 2  # noqa: N806
    batched = GatoPolicy(CFG.model, params, spec, batch_size=B, temperature=temperature, seed=9)
    singles = [
        GatoPolicy(CFG.model, params, spec, temperature=temperature, keys=batched.keys[b : b + 1])
        for b in range(B)
    ]
    batched.reset_envs(range(B), demos)
    for b in range(B):
        singles[b].reset(demos[b])
    for t in range(9):
        obs = [mixed_obs(rng, t + b) for b in range(B)]
        if t == 4:  # env 1 starts a new (prompted) episode alone; env 0 idles for one act
            batched.reset_env(1, demos[0])
            singles[1].reset(demos[0])
        if t == 6:
            obs[0] = None
        got = batched.act_batch(obs)
        for b in range(B):
            if obs[b] is None:
                assert got[b] is None
                continue
            want = singles[b].act(obs[b])
            np.testing.assert_array_equal(batched.last_action_ids(b), singles[b].last_action_ids())
            np.testing.assert_allclose(got[b]["arm"], want["arm"], atol=1e-6)
            assert got[b]["grip"] == want["grip"]
            np.testing.assert_allclose(
                batched.last_logits[b], singles[b].last_logits[0], atol=1e-4, rtol=1e-4
            )
    assert batched.trace_counts == {"act": 1, "refill": 1}
    assert all(s.trace_counts == {"act": 1, "refill": 1} for s in singles)


def test_from_checkpoint_restores_params_and_config(params, tmp_path):
    cfg = dataclasses.replace(CFG, seed=0)
    state = TrainState.create(params=params, tx=make_optimizer(cfg.optim), rng=1)
    with Checkpointer(tmp_path / "checkpoints") as ckpt:
        ckpt.save(3, state, config=config_lib.to_dict(cfg), force=True)
    spec = EpisodeSpec({"s": FieldSpec("continuous", (2,))}, FieldSpec("discrete", (), 0, 2))
    assert spec.cfg.seq_len == 1024  # default tokenizer: replaced by the checkpoint's
    policy = GatoPolicy.from_checkpoint(str(tmp_path), spec)
    assert policy.context_len == CFG.tokenizer.seq_len
    jax.tree.map(np.testing.assert_array_equal, policy.params, params)
    policy.reset()
    rng = np.random.default_rng(0)
    lo, hi = action_id_ranges(policy.spec)[0]
    for _ in range(4):  # greedy (temperature 0): the argmax over the legal ids of the logits
        a = policy.act({"s": rng.normal(size=2)})
        assert a in (0, 1, 2)
        assert policy.last_action_ids()[0] == lo + np.argmax(policy.last_logits[0, 0, lo:hi])
    with pytest.raises(FileNotFoundError, match="checkpoints"):
        GatoPolicy.from_checkpoint(str(tmp_path / "nothing"), spec)


def test_bad_input_names_the_problem(params):
    spec = EpisodeSpec(
        {"s": FieldSpec("continuous", (2,))}, FieldSpec("discrete", ()), CFG.tokenizer
    )
    policy = GatoPolicy(CFG.model, params, spec, batch_size=2)
    policy.reset()
    with pytest.raises(ValueError, match="observation/x"):
        policy.act_batch([{"x": np.zeros(2)}, {"s": np.zeros(2)}])
    with pytest.raises(ValueError, match="NaN"):
        policy.act_batch([{"s": np.array([np.nan, 0])}, {"s": np.zeros(2)}])
    with pytest.raises(ValueError, match="batch_size 1"):
        policy.act({"s": np.zeros(2)})
    with pytest.raises(ValueError, match="expected 2 observations"):
        policy.act_batch([{"s": np.zeros(2)}])
    text_action = EpisodeSpec(
        {"s": FieldSpec("continuous", ())}, FieldSpec("text", (4,)), CFG.tokenizer
    )
    with pytest.raises(ValueError, match="text action"):
        GatoPolicy(CFG.model, params, text_action)
    big = EpisodeSpec(
        {"s": FieldSpec("continuous", (60,))}, FieldSpec("discrete", ()), CFG.tokenizer
    )
    with pytest.raises(ValueError, match="context_len"):
        GatoPolicy(CFG.model, params, big)
