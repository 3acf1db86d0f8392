"""Golden sequences, parity with the NumPy reference, prompts and bad input (spec 2, 5, 6)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gato_jax.configs import TokenizerConfig
from gato_jax.prompt import PromptKind, sample_prompt
from gato_jax.reference import reference_build_sequence
from gato_jax.sequence import (
    action_id_ranges,
    build_batch,
    build_sequence,
    detokenize_action,
    encode_episode,
    episode_num_tokens,
    stack_episodes,
)
from gato_jax.spec import EpisodeSpec, FieldSpec, TokenKind

K = TokenKind
PAD, SEP = 0, 33024
jit_build = jax.jit(build_sequence, static_argnames=("spec", "prompt_mode", "window"))


def build_np(*args, **kwargs):
    """Jitted build_sequence with NumPy leaves (for fancy indexing in assertions)."""
    return jax.tree.map(np.asarray, jit_build(*args, **kwargs))


def golden_spec(**cfg_kwargs):
    cfg = TokenizerConfig(seq_len=32, window="start", **cfg_kwargs)
    observation = {
        "z": {"b": FieldSpec("continuous", ()), "a": FieldSpec("discrete", (2,))},
        "text": FieldSpec("text", (3,)),
        "y": FieldSpec("discrete", ()),
        "cam": FieldSpec("image", (16, 32, 3)),
    }
    action = {
        "move": FieldSpec("continuous", (1,), low=-1.0, high=1.0),
        "button": FieldSpec("discrete", ()),
    }
    return EpisodeSpec(observation, action, cfg)


def golden_episode():
    cam = np.zeros((2, 16, 32, 3), np.uint8)
    cam[:, :, 16:] = 255  # left patch black, right patch white
    return {
        "observation": {
            "text": [np.array([5, 7], np.int32), np.array([9], np.int32)],
            "cam": cam,
            "y": np.array([3, 0]),
            "z": {"a": np.array([[1, 2], [1023, 0]]), "b": np.array([0.0, 256.0])},
        },
        "action": {"button": np.array([4, 1]), "move": np.array([[0.5], [-1.0]])},
    }


def test_spec_field_order():
    spec = golden_spec()
    names = [f.name for f in spec.fields]
    assert names == [
        "observation/text",
        "observation/cam",
        "observation/y",
        "observation/z/a",
        "observation/z/b",
        "action/button",
        "action/move",
    ]
    assert spec.tokens_per_step == 3 + 2 + 1 + 2 + 1 + 1 + 1 + 1


def test_golden_sequence():
    spec = golden_spec()
    arrays = encode_episode(golden_episode(), spec)
    out = build_np(arrays, jax.random.key(0), spec)
    # t=0: text 5 7 | cam 2 patches | y=3 | z/a=1,2 | z/b=0.0 | '|' | button=4 | move=0.5
    # t=1: text 9   | cam 2 patches | y=0 | z/a=1023,0 | z/b=256 | '|' | button=1 | move=-1
    tokens = [5, 7, PAD, PAD, 3, 1, 2, 32512, SEP, 4, 32768]
    tokens += [9, PAD, PAD, 0, 1023, 0, 33023, SEP, 1, 32000]
    kinds = [K.TEXT] * 2 + [K.IMAGE] * 2 + [K.DISCRETE] * 3 + [K.CONTINUOUS, K.SEPARATOR]
    kinds += [K.ACTION] * 2
    kinds += [K.TEXT] + [K.IMAGE] * 2 + [K.DISCRETE] * 3 + [K.CONTINUOUS, K.SEPARATOR]
    kinds += [K.ACTION] * 2
    local = list(range(8)) + [-1, -1, -1] + list(range(7)) + [-1, -1, -1]
    loss = [1, 1, 0, 0, 0, 0, 0, 0, 0, 1, 1] + [1, 0, 0, 0, 0, 0, 0, 0, 1, 1]
    n, pad = len(tokens), 32 - len(tokens)
    np.testing.assert_array_equal(out.tokens, tokens + [PAD] * pad)
    np.testing.assert_array_equal(out.kinds, kinds + [K.PAD] * pad)
    np.testing.assert_array_equal(out.local_positions, local + [-1] * pad)
    np.testing.assert_array_equal(out.loss_mask, np.array(loss + [0] * pad, bool))
    np.testing.assert_array_equal(out.valid, np.arange(32) < n)
    np.testing.assert_array_equal(out.timesteps, [0] * 11 + [1] * 10 + [-1] * pad)
    assert out.tokens.dtype == jnp.int32 and out.tokens.shape == (32,)
    patch_index = np.full(32, -1)
    patch_index[[2, 3, 12, 13]] = [0, 1, 2, 3]
    np.testing.assert_array_equal(out.patch_index, patch_index)
    np.testing.assert_array_equal(out.patch_valid, np.arange(32) < 4)
    assert out.patches.shape == (32, 16, 16, 3)
    np.testing.assert_allclose(out.patches[[0, 2]], -0.25, atol=1e-6)
    np.testing.assert_allclose(out.patches[[1, 3]], 0.25, atol=1e-6)
    np.testing.assert_allclose(out.patches[4:], 0.0)
    np.testing.assert_array_equal(out.patch_rows[:4], [[0, 128]] * 4)
    np.testing.assert_array_equal(out.patch_cols[:4], [[0, 64], [64, 128]] * 2)
    assert not bool(out.patch_overflow) and int(out.prompt_kind) == 0
    assert episode_num_tokens(arrays, spec) == n


def test_golden_flags():
    spec = golden_spec(separator_local_position=True, padding_row=True, discrete_offset=33026)
    out = build_np(encode_episode(golden_episode(), spec), jax.random.key(0), spec)
    np.testing.assert_array_equal(out.local_positions[:11], np.arange(11))
    pad_id = 33025
    np.testing.assert_array_equal(out.tokens[:5], [5, 7, pad_id, pad_id, 33026 + 3])
    assert int(out.tokens[31]) == pad_id
    # scale_bounded_actions=False: the bounded action is mu-law companded like observations.
    spec = golden_spec(scale_bounded_actions=False, mu_law_observations=False)
    out = build_np(encode_episode(golden_episode(), spec), jax.random.key(0), spec)
    mu_half = int(np.floor((np.log1p(50.0) / np.log1p(25600.0) + 1) * 512)) + 32000
    assert int(out.tokens[10]) == mu_half
    assert int(out.tokens[17]) == 33023  # 256 clipped to 1 without companding


def test_window_end_and_random_crop():
    spec = golden_spec()
    arrays = encode_episode(golden_episode(), spec)
    small = EpisodeSpec(
        {k: v for k, v in golden_episode_spec_tree().items()},
        golden_action_tree(),
        spec.cfg.replace(seq_len=8),
    )
    full = reference_build_sequence(arrays, spec)
    out = build_np(arrays, jax.random.key(0), small, window="end")
    assert int(out.window_start) == 21 - 8
    np.testing.assert_array_equal(out.tokens, full["tokens"][13:21])
    np.testing.assert_array_equal(out.local_positions, full["local_positions"][13:21])
    starts = set()
    for i in range(20):
        o = build_np(arrays, jax.random.key(i), small, window="random")
        s = int(o.window_start)
        starts.add(s)
        np.testing.assert_array_equal(o.tokens, full["tokens"][s : s + 8])
        assert bool(o.valid.all())
    assert min(starts) >= 0 and max(starts) <= 13 and len(starts) > 5


def golden_episode_spec_tree():
    return {
        "z": {"b": FieldSpec("continuous", ()), "a": FieldSpec("discrete", (2,))},
        "text": FieldSpec("text", (3,)),
        "y": FieldSpec("discrete", ()),
        "cam": FieldSpec("image", (16, 32, 3)),
    }


def golden_action_tree():
    return {
        "move": FieldSpec("continuous", (1,), low=-1.0, high=1.0),
        "button": FieldSpec("discrete", ()),
    }


MIXED_CFG = TokenizerConfig(seq_len=96, max_patches=40)
MIXED_SPEC = EpisodeSpec(
    {
        "instruction": FieldSpec("text", (6,)),
        "rgb": FieldSpec("image", (32, 32, 3)),
        "proprio": {"pos": FieldSpec("continuous", (3,)), "vel": FieldSpec("continuous", (2, 2))},
        "buttons": FieldSpec("discrete", (2,)),
    },
    {"torque": FieldSpec("continuous", (2,), low=[-2.0, -1.0], high=[2.0, 1.0])},
    MIXED_CFG,
)


def mixed_episode(rng, steps):
    return {
        "observation": {
            "instruction": [
                rng.integers(0, 32000, rng.integers(0, 7)).astype(np.int32) for _ in range(steps)
            ],
            "rgb": rng.integers(0, 256, (steps, 32, 32, 3), dtype=np.uint8),
            "proprio": {
                "pos": rng.standard_normal((steps, 3)) * 50,
                "vel": rng.standard_normal((steps, 2, 2)),
            },
            "buttons": rng.integers(0, 1024, (steps, 2)),
        },
        "action": {"torque": rng.uniform(-2, 2, (steps, 2)) * [1.0, 0.5]},
    }


def check_against_reference(out, arrays, spec):
    ref = reference_build_sequence(arrays, spec, int(out.window_start))
    for name, want in ref.items():
        got = np.asarray(getattr(out, name))
        if name == "patches":
            np.testing.assert_allclose(got, want, atol=1e-6, err_msg=name)
        elif name == "tokens":
            # float32 NumPy vs XLA transcendental rounding may move a value sitting on a bin
            # edge by one bin; anything else must be identical.
            diff = np.abs(got.astype(np.int64) - want)
            assert diff.max() <= 1 and (diff > 0).sum() <= 1, name
        else:
            np.testing.assert_array_equal(got, want, err_msg=name)


def test_random_episodes_match_numpy_reference():
    rng = np.random.default_rng(0)
    for i, steps in enumerate([1, 3, 7]):
        arrays = encode_episode(mixed_episode(rng, steps), MIXED_SPEC, max_steps=8)
        for window in ("start", "end", "random"):
            out = build_np(arrays, jax.random.key(i), MIXED_SPEC, window=window)
            check_against_reference(out, arrays, MIXED_SPEC)


def test_patch_overflow_marks_tokens_invalid():
    spec = EpisodeSpec(
        {"rgb": FieldSpec("image", (32, 32, 3))}, {}, TokenizerConfig(seq_len=16, max_patches=5)
    )
    ep = {"observation": {"rgb": np.zeros((4, 32, 32, 3), np.uint8)}}
    arrays = encode_episode(ep, spec)
    out = build_np(arrays, jax.random.key(0), spec, window="start")
    assert bool(out.patch_overflow)
    assert int(out.valid.sum()) == 5 and int(out.patch_valid.sum()) == 5
    np.testing.assert_array_equal(out.patch_index[:6], [0, 1, 2, 3, 4, -1])
    assert SEP not in np.asarray(out.tokens)  # no action fields: no separator
    check_against_reference(out, arrays, spec)


def batch_of(n, steps=5, seed=0):
    rng = np.random.default_rng(seed)
    return [encode_episode(mixed_episode(rng, steps), MIXED_SPEC, max_steps=6) for _ in range(n)]


def test_vmap_equals_loop_and_jit_equals_eager():
    eps = batch_of(3)
    prompts = batch_of(3, steps=6, seed=1)
    keys = jax.random.split(jax.random.key(7), 3)
    batch = build_batch(stack_episodes(eps), keys, MIXED_SPEC, stack_episodes(prompts))
    for i in range(3):
        jitted = jit_build(eps[i], keys[i], MIXED_SPEC, prompts[i])
        for name in jitted.__dataclass_fields__:
            row = np.asarray(getattr(batch, name))[i]
            np.testing.assert_array_equal(row, np.asarray(getattr(jitted, name)), err_msg=name)
    # jit == eager (op by op, so on the small golden episode).
    spec = golden_spec()
    arrays = encode_episode(golden_episode(), spec)
    eager = build_sequence(arrays, jax.random.key(3), spec)
    jitted = jit_build(arrays, jax.random.key(3), spec)
    for name in jitted.__dataclass_fields__:
        want = np.asarray(getattr(eager, name))
        np.testing.assert_allclose(np.asarray(getattr(jitted, name)), want, atol=1e-7, err_msg=name)
    assert batch.tokens.shape == (3, 96) and batch.patches.shape == (3, 40, 16, 16, 3)


def test_no_retracing():
    fn = jax.jit(
        chex.assert_max_traces(lambda e, k: build_sequence(e, k, MIXED_SPEC), n=1),
    )
    for i, ep in enumerate(batch_of(3, seed=3)):
        jax.block_until_ready(fn(ep, jax.random.key(i)))


def test_prompt_statistics_and_determinism():
    cfg = TokenizerConfig(seq_len=64, prompt_tokens=10)
    keys = jax.random.split(jax.random.key(0), 8000)
    length, offset, kind = jax.vmap(lambda k: sample_prompt(k, 50, cfg))(keys)
    kind = np.asarray(kind)
    frac = (kind != PromptKind.NONE).mean()
    assert abs(frac - 0.25) < 0.02
    assert abs((kind == PromptKind.END).sum() / (kind != 0).sum() - 0.5) < 0.05
    np.testing.assert_array_equal(np.asarray(length)[kind != 0], 10)
    np.testing.assert_array_equal(np.asarray(offset)[kind == PromptKind.END], 40)
    uni = np.asarray(offset)[kind == PromptKind.UNIFORM]
    assert uni.min() >= 0 and uni.max() <= 40 and len(np.unique(uni)) > 20
    again = jax.vmap(lambda k: sample_prompt(k, 50, cfg))(keys)
    np.testing.assert_array_equal(np.asarray(again[2]), kind)
    short = sample_prompt(jax.random.key(0), 4, cfg, "end")
    assert (int(short[0]), int(short[1])) == (4, 0)


def test_prompt_is_prepended():
    spec = golden_spec()
    spec = EpisodeSpec(
        golden_episode_spec_tree(), golden_action_tree(), spec.cfg.replace(prompt_tokens=5)
    )
    arrays = encode_episode(golden_episode(), spec)
    ref = reference_build_sequence(arrays, spec)
    out = build_np(arrays, jax.random.key(0), spec, arrays, prompt_mode="end")
    assert int(out.prompt_kind) == PromptKind.END
    np.testing.assert_array_equal(out.prompt_mask, np.arange(32) < 5)
    np.testing.assert_array_equal(out.tokens[:5], ref["tokens"][16:21])  # end of the prompt ep
    np.testing.assert_array_equal(out.tokens[5:26], ref["tokens"][:21])
    assert not bool(out.loss_mask[:5].any())  # prompt_loss=False
    np.testing.assert_array_equal(out.loss_mask[5:26], ref["loss_mask"][:21])
    np.testing.assert_array_equal(out.timesteps[:5], [1] * 5)
    # Prompt patches come from the prompt episode: prompt has none here (tail of step 1).
    np.testing.assert_array_equal(out.patch_index[5:26], ref["patch_index"][:21])
    start = build_np(arrays, jax.random.key(0), spec, arrays, prompt_mode="start")
    np.testing.assert_array_equal(start.tokens[:5], ref["tokens"][:5])
    np.testing.assert_array_equal(start.patch_index[:5], [-1, -1, 0, 1, -1])
    np.testing.assert_array_equal(
        start.patch_index[5:26], ref["patch_index"][:21] + 2 * (ref["patch_index"][:21] >= 0)
    )
    np.testing.assert_allclose(start.patches[:2], ref["patches"][:2], atol=1e-6)
    none = build_np(arrays, jax.random.key(0), spec, arrays, prompt_mode="none")
    np.testing.assert_array_equal(none.tokens, ref["tokens"])


def test_detokenize_action_round_trip():
    rng = np.random.default_rng(9)
    ep = mixed_episode(rng, 4)
    arrays = encode_episode(ep, MIXED_SPEC)
    out = build_np(arrays, jax.random.key(0), MIXED_SPEC, window="start")
    act = np.asarray(out.tokens)[np.asarray(out.kinds) == K.ACTION].reshape(4, 2)
    ranges = action_id_ranges(MIXED_SPEC)
    assert np.all((act >= ranges[:, 0]) & (act < ranges[:, 1]))
    back = np.asarray(
        jax.jit(detokenize_action, static_argnums=1)(act, MIXED_SPEC)["action/torque"]
    )
    half_bin = np.array([4.0, 2.0]) / 1024 / 2
    assert np.all(np.abs(back - ep["action"]["torque"]) <= half_bin + 1e-6)
    spec = golden_spec()
    np.testing.assert_array_equal(action_id_ranges(spec), [[0, 1024], [32000, 33024]])
    dec = detokenize_action(jnp.array([4, 32768]), spec)
    assert int(dec["action/button"]) == 4 and abs(float(dec["action/move"][0]) - 0.5) <= 1 / 1024


# ---------------------------------------------------------------------------- bad input


def corrupt(path, value):
    ep = golden_episode()
    node = ep
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    return ep


@pytest.mark.parametrize(
    "path,value,match",
    [
        (("observation", "z", "b"), np.array([0.0, np.nan]), "observation/z/b: NaN"),
        (("observation", "z", "b"), np.array([np.inf, 0.0]), "observation/z/b: Inf"),
        (("action", "move"), np.array([[np.nan], [0.0]]), "action/move: NaN"),
        (
            ("observation", "cam"),
            np.zeros((2, 16, 16, 3), np.uint8),
            "observation/cam: image shape",
        ),
        (("observation", "cam"), np.zeros((2, 16, 32, 3), np.float32), "observation/cam: image dt"),
        (("observation", "y"), np.array([3, -1]), "observation/y: discrete value -1"),
        (
            ("observation", "z", "a"),
            np.array([[1, 1024], [0, 0]]),
            "observation/z/a: discrete value",
        ),
        (("observation", "y"), np.array([0.5, 1.0]), "observation/y: discrete values must be int"),
        (("observation", "y"), np.array([1, 2, 3]), "observation/y: shape"),
        (("observation", "text"), [np.arange(4), np.arange(1)], "observation/text\\[0\\]: 4 text"),
        (("observation", "text"), ["hello", "x"], "observation/text: text given as str"),
        (("observation", "extra"), np.zeros(2), "observation/extra: not in the spec"),
    ],
)
def test_bad_episode_errors_name_the_field(path, value, match):
    with pytest.raises(ValueError, match=match):
        encode_episode(corrupt(path, value), golden_spec())


def test_missing_fields_and_bad_specs():
    ep = golden_episode()
    del ep["observation"]["z"]["a"]
    with pytest.raises(ValueError, match="observation/z/a: missing"):
        encode_episode(ep, golden_spec())
    ep = golden_episode()
    del ep["action"]
    with pytest.raises(ValueError, match="action: missing"):
        encode_episode(ep, golden_spec())
    with pytest.raises(ValueError, match="observation/snd: unknown field kind 'audio'"):
        EpisodeSpec({"snd": FieldSpec("audio", (4,))}, {})
    with pytest.raises(ValueError, match="observation/cam: image size 20x32"):
        EpisodeSpec({"cam": FieldSpec("image", (20, 32, 3))}, {})
    with pytest.raises(ValueError, match="observation/cam: image has 1 channels"):
        EpisodeSpec({"cam": FieldSpec("image", (16, 16, 1))}, {})
    with pytest.raises(ValueError, match="action/a: low > high"):
        EpisodeSpec({"x": FieldSpec("discrete")}, {"a": FieldSpec("continuous", (2,), 1.0, 0.0)})
    with pytest.raises(ValueError, match="max_local_positions"):
        EpisodeSpec({"x": FieldSpec("continuous", (600,))}, {})
    padded = EpisodeSpec(
        {"cam": FieldSpec("image", (20, 32, 3))}, {}, TokenizerConfig(image_resize="pad")
    )
    assert padded.observation[0].num_tokens == 4


def test_nonfinite_zero_policy_and_truncation():
    spec = golden_spec(nonfinite="zero", text_truncate=True)
    ep = corrupt(("observation", "z", "b"), np.array([np.nan, -np.inf]))
    ep["observation"]["text"] = [np.arange(5), np.arange(1)]
    out = build_np(encode_episode(ep, spec), jax.random.key(0), spec)
    assert int(out.tokens[8]) == 32512  # NaN -> 0
    assert int(out.tokens[18]) == 32000  # -Inf -> lowest bin
    np.testing.assert_array_equal(out.tokens[:3], [0, 1, 2])  # truncated to 3 text tokens


def test_string_text_with_tokenizer():
    from gato_jax.tokenizer import TextTokenizer

    rng = np.random.default_rng(0)
    letters = list("abcdefgh")
    corpus = [" ".join("".join(rng.choice(letters, 3)) for _ in range(4)) for _ in range(300)]
    tok = TextTokenizer.train(corpus, vocab_size=30)
    spec = EpisodeSpec({"text": FieldSpec("text", (40,))}, {"a": FieldSpec("discrete")})
    ep = {"observation": {"text": corpus[:2]}, "action": {"a": np.array([1, 2])}}
    arrays = encode_episode(ep, spec, text_tokenizer=tok)
    np.testing.assert_array_equal(
        arrays.text_lengths["observation/text"][0], len(tok.encode(corpus[0]))
    )
