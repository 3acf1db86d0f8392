"""Known answers, round trips and errors of gato_jax.tokenizer (spec section 1)."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from core_jax.config import apply_overrides
from gato_jax.configs import TokenizerConfig
from gato_jax.tokenizer import (
    TextTokenizer,
    detokenize_continuous,
    detokenize_discrete,
    image_to_patches,
    mu_law_decode,
    mu_law_encode,
    patch_intervals,
    patch_position_ids,
    tokenize_continuous,
    tokenize_discrete,
)

MU, M, BINS = 100.0, 256.0, 1024


def mu_law_ref(x):
    x = np.asarray(x, np.float64)
    return np.sign(x) * np.log(np.abs(x) * MU + 1.0) / np.log(M * MU + 1.0)


def bins_ref(x, mu_law=True):
    y = mu_law_ref(x) if mu_law else np.asarray(x, np.float64)
    y = np.clip(y, -1.0, 1.0)
    return np.clip(np.floor((y + 1.0) / 2.0 * BINS), 0, BINS - 1).astype(np.int64) + 32000


def companded(x, mu_law=True):
    return np.clip(mu_law_ref(x) if mu_law else np.asarray(x, np.float64), -1, 1)


def test_mu_law_known_answers():
    x = np.array([0.0, 1.0, -1.0, 256.0, -256.0, 0.5, -3.0, 1000.0])
    np.testing.assert_allclose(np.asarray(mu_law_encode(x)), mu_law_ref(x), atol=1e-6)
    assert float(mu_law_encode(0.0)) == 0.0
    np.testing.assert_allclose(float(mu_law_encode(256.0)), 1.0, atol=1e-6)
    np.testing.assert_allclose(float(mu_law_encode(-256.0)), -1.0, atol=1e-6)
    np.testing.assert_allclose(float(mu_law_encode(1.0)), math.log(101) / math.log(25601), 1e-6)


def test_mu_law_random_points_and_inverse():
    x = np.random.default_rng(0).standard_normal(2000) * np.exp(np.linspace(-5, 5, 2000))
    x32 = x.astype(np.float32)
    np.testing.assert_allclose(np.asarray(mu_law_encode(x32)), mu_law_ref(x32), atol=1e-6)
    y = np.linspace(-1, 1, 999)
    ref_inv = np.sign(y) * (np.exp(np.abs(y) * np.log(M * MU + 1)) - 1) / MU
    np.testing.assert_allclose(
        np.asarray(mu_law_decode(y.astype(np.float32))), ref_inv, rtol=1e-5, atol=1e-6
    )
    xs = np.linspace(-256, 256, 1001, dtype=np.float32)
    np.testing.assert_allclose(
        np.asarray(mu_law_decode(mu_law_encode(xs))), xs, rtol=1e-4, atol=1e-5
    )


def test_bin_ids_at_and_around_edges():
    k = np.arange(0, BINS + 1)
    edges = -1.0 + 2.0 * k / BINS  # exact in float32
    ids = np.asarray(tokenize_continuous(edges.astype(np.float32), mu_law=False))
    np.testing.assert_array_equal(ids, np.minimum(k, BINS - 1) + 32000)
    np.testing.assert_array_equal(ids, bins_ref(edges, mu_law=False))
    for eps in (1e-4, -1e-4):
        x = np.clip(edges + eps, -1, 1)
        got = np.asarray(tokenize_continuous(x.astype(np.float32), mu_law=False))
        np.testing.assert_array_equal(got, bins_ref(x.astype(np.float32), mu_law=False))
    # Bin edges in the mu-law domain: x just inside each edge lands in the float64 bin.
    inner = edges[1:-1]
    for eps in (2e-4, -2e-4):
        x = np.sign(inner + eps) * np.expm1(np.abs(inner + eps) * np.log1p(M * MU)) / MU
        got = np.asarray(tokenize_continuous(x.astype(np.float32)))
        np.testing.assert_array_equal(got, bins_ref(x))


def test_bin_ids_random_points_match_float64():
    x = (np.random.default_rng(1).standard_normal(5000) * 30).astype(np.float32)
    got = np.asarray(tokenize_continuous(x))
    ref = bins_ref(x)
    y = (companded(x) + 1) / 2 * BINS
    near_edge = np.abs(y - np.round(y)) < 1e-3  # float32 cannot decide these
    assert near_edge.mean() < 0.01
    np.testing.assert_array_equal(got[~near_edge], ref[~near_edge])


@pytest.mark.parametrize("mu_law", [True, False])
def test_round_trip_within_half_a_bin(mu_law):
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.uniform(-300, 300, 3000), rng.uniform(-1, 1, 3000)]).astype(np.float32)
    ids = tokenize_continuous(x, mu_law=mu_law)
    back = np.asarray(detokenize_continuous(ids, mu_law=mu_law), np.float64)
    err = np.abs(companded(back, mu_law) - companded(x, mu_law))
    assert err.max() <= 1.0 / BINS + 1e-6  # half a bin = (2 / 1024) / 2


def test_monotone_and_id_ranges():
    x = np.sort(np.random.default_rng(3).uniform(-1e4, 1e4, 4000)).astype(np.float32)
    ids = np.asarray(tokenize_continuous(x))
    assert np.all(np.diff(ids) >= 0)
    extreme = np.array([-np.inf, -1e30, -257, 0, 257, 1e30, np.inf, np.nan], np.float32)
    ids = np.asarray(tokenize_continuous(extreme))
    assert ids.dtype == np.int32
    assert ids.min() >= 32000 and ids.max() < 33024
    np.testing.assert_array_equal(ids, [32000, 32000, 32000, 32512, 33023, 33023, 33023, 32512])
    c = np.asarray(detokenize_continuous(np.arange(32000, 33024)))
    assert np.all(np.diff(c) > 0)


def test_discrete_round_trip_and_offset():
    v = np.arange(1024)
    np.testing.assert_array_equal(np.asarray(tokenize_discrete(v)), v)
    ids = np.asarray(tokenize_discrete(v, offset=33025))
    assert ids.min() == 33025 and ids.max() == 33025 + 1023 and ids.dtype == np.int32
    np.testing.assert_array_equal(np.asarray(detokenize_discrete(ids, offset=33025)), v)


def test_image_normalisation_and_raster_order():
    rng = np.random.default_rng(4)
    img = rng.integers(0, 256, (2, 32, 48, 3), dtype=np.uint8)
    p = np.asarray(image_to_patches(img))
    assert p.shape == (2, 6, 16, 16, 3) and p.dtype == np.float32
    ref = (img.astype(np.float64) / 255.0 * 2.0 - 1.0) / 4.0
    for r in range(2):
        for c in range(3):
            np.testing.assert_allclose(
                p[:, r * 3 + c], ref[:, 16 * r : 16 * r + 16, 16 * c : 16 * c + 16], atol=1e-6
            )
    assert p.min() >= -0.25 and p.max() <= 0.25
    edge = np.zeros((1, 32, 16, 1), np.uint8)
    edge[:, 16:] = 255  # top patch black, bottom patch white
    q = np.asarray(image_to_patches(edge))
    np.testing.assert_allclose(q[0, 0], -0.25)
    np.testing.assert_allclose(q[0, 1], 0.25)


def test_image_resize_options_and_errors():
    img = np.full((20, 33, 3), 255, np.uint8)
    with pytest.raises(ValueError, match="multiple of patch_size"):
        image_to_patches(img)
    with pytest.raises(ValueError, match="uint8"):
        image_to_patches(img.astype(np.float32), resize="pad")
    padded = np.asarray(image_to_patches(img, resize="pad"))
    assert padded.shape == (2 * 3, 16, 16, 3)
    np.testing.assert_allclose(padded[0], 0.25)
    np.testing.assert_allclose(padded[5][4:], 0.0)  # rows 20..31 of the last patch are padding
    resized = np.asarray(image_to_patches(img, resize="resize"))
    assert resized.shape == (1 * 2, 16, 16, 3)
    np.testing.assert_allclose(resized, 0.25, atol=1e-6)


def test_patch_intervals_and_position_ids():
    rows, cols = patch_intervals(32, 48)
    np.testing.assert_array_equal(rows, [[0, 64]] * 3 + [[64, 128]] * 3)
    np.testing.assert_array_equal(cols, [[0, 43], [42, 86], [85, 128]] * 2)
    r80, _ = patch_intervals(80, 16)  # 16 / 80 * 128 = 25.6 bins per patch
    np.testing.assert_array_equal(r80[:2], [[0, 26], [25, 52]])
    assert r80[-1, 1] == 128
    np.testing.assert_array_equal(np.asarray(patch_position_ids(rows)), [32] * 3 + [96] * 3)
    sampled = np.asarray(
        jax.vmap(lambda k: patch_position_ids(cols, k))(jax.random.split(jax.random.key(0), 200))
    )
    assert np.all(sampled >= cols[:, 0]) and np.all(sampled < cols[:, 1])
    assert len(np.unique(sampled[:, 0])) > 20


def test_jit_equals_eager_vmap_equals_loop_no_retrace():
    x = jax.random.normal(jax.random.key(0), (4, 50)) * 20
    f = jax.jit(chex.assert_max_traces(tokenize_continuous, n=1))
    np.testing.assert_array_equal(np.asarray(f(x)), np.asarray(tokenize_continuous(x)))
    f(x + 1.0)  # same shapes: no retrace
    v = jax.vmap(tokenize_continuous)(x)
    loop = np.stack([np.asarray(tokenize_continuous(row)) for row in x])
    np.testing.assert_array_equal(np.asarray(v), loop)
    imgs = jax.random.randint(jax.random.key(1), (3, 32, 32, 3), 0, 256).astype(jnp.uint8)
    g = jax.jit(chex.assert_max_traces(image_to_patches, n=1))
    np.testing.assert_allclose(np.asarray(g(imgs)), np.asarray(image_to_patches(imgs)), atol=1e-7)
    g(imgs + 1)
    np.testing.assert_allclose(
        np.asarray(jax.vmap(image_to_patches)(imgs)), np.asarray(image_to_patches(imgs)), atol=0
    )


def test_config_vocabulary_and_flags():
    cfg = TokenizerConfig()
    assert (cfg.separator_id, cfg.vocab_size, cfg.pad_id) == (33024, 33025, 0)
    assert TokenizerConfig(padding_row=True).vocab_size == 33026
    assert TokenizerConfig(padding_row=True).pad_id == 33025
    assert TokenizerConfig(discrete_offset=33025).vocab_size == 34049
    with pytest.raises(ValueError, match="discrete_offset"):
        TokenizerConfig(discrete_offset=32500)
    with pytest.raises(ValueError, match="nonfinite"):
        TokenizerConfig(nonfinite="ignore")
    with pytest.raises(ValueError, match="image_resize"):
        TokenizerConfig(image_resize="crop")
    assert apply_overrides(cfg, ["window=end", "seq_len=64"]).seq_len == 64
    with pytest.raises(ValueError, match="unknown key"):
        apply_overrides(cfg, ["no_such_flag=1"])


def _corpus(n=400):
    rng = np.random.default_rng(5)
    letters = list("abcdefghijklmnopqrstuvwxyz")
    words = ["".join(rng.choice(letters, size=rng.integers(2, 7))) for _ in range(60)]
    return [" ".join(rng.choice(words, size=rng.integers(3, 9))) for _ in range(n)]


def test_text_tokenizer_train_save_load(tmp_path):
    corpus = _corpus()
    tok = TextTokenizer.train(corpus, vocab_size=48)
    assert tok.vocab_size == 48
    ids = tok.encode(corpus[0])
    assert ids.dtype == np.int32 and ids.min() >= 0 and ids.max() < 48
    assert tok.decode(ids) == corpus[0]
    path = tmp_path / "tiny.model"
    tok.save(path)
    again = TextTokenizer.load(path)
    np.testing.assert_array_equal(again.encode(corpus[1]), tok.encode(corpus[1]))
    text_file = tmp_path / "corpus.txt"
    text_file.write_text("\n".join(corpus))
    from_file = TextTokenizer.train(text_file, vocab_size=40, model_type="bpe")
    assert from_file.vocab_size == 40


def test_text_tokenizer_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.model"):
        TextTokenizer.load(tmp_path / "nope.model")
    bad = tmp_path / "corrupt.model"
    bad.write_bytes(b"this is not a sentencepiece model")
    with pytest.raises(ValueError, match="corrupt.model"):
        TextTokenizer.load(bad)
    with pytest.raises(ValueError, match="vocab_size"):
        TextTokenizer.train(["a b c"], vocab_size=40000)
    with pytest.raises(ValueError, match="training failed"):
        TextTokenizer.train(["a b c"] * 10, vocab_size=500)
