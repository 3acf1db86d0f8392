"""cosa_jax.data loaders on synthetic files of every layout; corrupt files; batching."""

import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cosa_jax import data as D
from cosa_jax import synthetic as S

SMALL = dict(n_train=16)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cosa_data")
    out = {}
    out["iemocap"] = (
        d / "iemocap_data.pkl",
        S.write_mult(d / "iemocap_data.pkl", "iemocap", **SMALL),
    )
    out["mosi"] = (
        d / "mosi_data.pkl",
        S.write_mult(d / "mosi_data.pkl", "mosi", seq_len=12, **SMALL),
    )
    out["aligned"] = (
        d / "aligned_50.pkl",
        S.write_mmsa(d / "aligned_50.pkl", "mosi", True, dims=(16, 5, 20), **SMALL),
    )
    out["unaligned"] = (
        d / "unaligned_50.pkl",
        S.write_mmsa(
            d / "unaligned_50.pkl", "mosei", False, dims=(16, 74, 35), lengths=(50, 60, 70), **SMALL
        ),
    )
    out["magbert"] = (d / "mosi.pkl", S.write_magbert(d / "mosi.pkl", "mosi", **SMALL))
    return out


def _raw(path):
    with open(path, "rb") as fh:
        return pickle.load(fh)


@pytest.mark.parametrize("split", D.SPLITS)
def test_mult_iemocap_round_trip(files, split):
    path, lat = files["iemocap"]
    ds = D.load_mult(path, split)
    raw = _raw(path)[split]
    n = len(lat[split])
    assert ds.task == "iemocap" and len(ds) == n
    b = ds.batch
    assert b.text.shape == (n, 20, 300) and b.audio.shape == (n, 20, 74)
    assert b.vision.shape == (n, 20, 35) and b.labels.shape == (n, 4)
    np.testing.assert_array_equal(b.labels, S.iemocap_target(lat[split]))
    np.testing.assert_array_equal(b.labels, raw["labels"].argmax(-1))
    # -inf -> 0, everything else untouched
    neg = raw["audio"] == -np.inf
    assert neg.any() and np.all(b.audio[neg] == 0) and np.all(np.isfinite(b.audio))
    np.testing.assert_array_equal(b.audio[~neg], raw["audio"][~neg])
    np.testing.assert_array_equal(b.text, raw["text"])
    assert b.text_mask.all() and b.audio_mask.all() and b.valid.all()
    assert b.text_ids is None and b.text_bert is None
    np.testing.assert_array_equal(ds.ids, raw["id"])


def test_mult_regression(files):
    path, lat = files["mosi"]
    ds = D.load(path, "test")
    assert ds.layout == "mult" and ds.task == "regression"
    np.testing.assert_array_equal(ds.batch.labels, S.regression_target(lat["test"]))
    assert ds.batch.labels.dtype == np.float32 and ds.batch.text.shape[1] == 12


@pytest.mark.parametrize("which", ["aligned", "unaligned"])
def test_mmsa_round_trip(files, which):
    path, lat = files[which]
    raw = _raw(path)["valid"]
    ds = D.load(path, "valid")
    b = ds.batch
    assert ds.layout == "mmsa"
    np.testing.assert_array_equal(b.labels, raw["regression_labels"])
    np.testing.assert_array_equal(b.labels, S.regression_target(lat["valid"]))
    np.testing.assert_array_equal(b.audio_mask.sum(1), raw["audio_lengths"])
    np.testing.assert_array_equal(b.vision_mask.sum(1), raw["vision_lengths"])
    np.testing.assert_array_equal(b.text_mask, raw["text_bert"][:, 1].astype(bool))
    np.testing.assert_array_equal(b.text_bert, raw["text_bert"])
    assert b.text.shape[1:] == (50, 16) and np.all(np.isfinite(b.audio))
    np.testing.assert_array_equal(ds.raw_text, raw["raw_text"])
    if which == "unaligned":
        assert b.audio.shape[1:] == (60, 74) and b.vision.shape[1:] == (70, 35)


def test_magbert_round_trip(files):
    path, lat = files["magbert"]
    raw = _raw(path)
    ds = D.load(path, "valid", max_seq_length=20)
    assert ds.layout == "magbert" and len(ds) == len(raw["dev"])
    b = ds.batch
    assert b.text is None and b.text_ids.shape == (len(ds), 20)
    assert b.vision.shape[2] == 47 and b.audio.shape[2] == 74
    for i, ((words, visual, acoustic), label, seg) in enumerate(raw["dev"]):
        k = min(len(words), 20)
        assert b.text_mask[i].sum() == k and b.audio_mask[i].sum() == k
        np.testing.assert_array_equal(b.vision[i, :k], visual[:k])
        np.testing.assert_array_equal(b.audio[i, :k], acoustic[:k])
        assert np.all(b.vision[i, k:] == 0)
        assert [ds.vocab.get(w, 1) for w in words[:k]] == list(b.text_ids[i, :k])
        assert b.labels[i] == np.float32(label[0][0]) and ds.ids[i] == seg
    np.testing.assert_array_equal(b.labels, S.regression_target(lat["valid"]))
    assert ds.vocab["<pad>"] == 0 and ds.vocab["<unk>"] == 1
    assert "good" in ds.vocab and "bad" in ds.vocab


def test_planted_signal_is_cross_modal(files):
    """Recovered latents predict the label only when all modalities are combined."""
    path, lat = files["mosi"]
    b = D.load(path, "train").batch
    s_hat = np.zeros((len(b.labels), 3), np.float32)
    for m, x in enumerate((b.vision, b.audio, b.text)):
        u = np.random.default_rng([0, 7, m]).normal(size=(x.shape[-1],))
        s_hat[:, m] = x.mean(1) @ (u / np.linalg.norm(u)) / 2.0
    fused = np.corrcoef(S.regression_target(s_hat), b.labels)[0, 1]
    text_only = np.corrcoef(s_hat[:, 2], b.labels)[0, 1]
    assert fused > 0.9 and fused > text_only + 0.05


def _dump(tmp_path, obj, name="bad.pkl"):
    p = tmp_path / name
    with open(p, "wb") as fh:
        pickle.dump(obj, fh)
    return p


def test_corrupt_files(files, tmp_path):
    path, _ = files["iemocap"]
    raw = _raw(path)
    junk = tmp_path / "junk.pkl"
    junk.write_bytes(b"this is not a pickle")
    with pytest.raises(D.DataError, match="not a readable pickle"):
        D.load_mult(junk, "train")
    with pytest.raises(D.DataError, match="no such file"):
        D.load_mult(tmp_path / "missing.pkl", "train")
    with pytest.raises(D.DataError, match="unknown split"):
        D.load_mult(path, "dev")
    with pytest.raises(D.DataError, match="missing split 'test'"):
        D.load_mult(_dump(tmp_path, {k: raw[k] for k in ("train", "valid")}), "test")
    bad = {k: dict(v) for k, v in raw.items()}
    del bad["train"]["vision"]
    with pytest.raises(D.DataError, match=r"\[train\]: missing key 'vision'"):
        D.load_mult(_dump(tmp_path, bad), "train")
    bad = {k: dict(v) for k, v in raw.items()}
    bad["train"]["audio"] = bad["train"]["audio"][:, :, 0]
    with pytest.raises(
        D.DataError, match=r"\['audio'\]: expected \(N, T, D\), got shape \(16, 20\)"
    ):
        D.load_mult(_dump(tmp_path, bad), "train")
    bad = {k: dict(v) for k, v in raw.items()}
    bad["train"]["labels"] = bad["train"]["labels"][:-1]
    with pytest.raises(D.DataError, match="inconsistent number of samples.*'labels': 15"):
        D.load_mult(_dump(tmp_path, bad), "train")
    bad = {k: dict(v) for k, v in raw.items()}
    bad["train"]["vision"] = bad["train"]["vision"].copy()
    bad["train"]["vision"][0, 0, 0] = np.nan
    p = _dump(tmp_path, bad)
    with pytest.raises(D.DataError, match=r"\['vision'\]: 1 NaN"):
        D.load_mult(p, "train")
    assert D.load_mult(p, "train", nan_to_zero=True).batch.vision[0, 0, 0] == 0
    with pytest.raises(D.DataError, match="expected a dict of splits"):
        D.load_mult(_dump(tmp_path, [1, 2]), "train")


def test_corrupt_mmsa_and_magbert(files, tmp_path):
    raw = _raw(files["aligned"][0])
    bad = {k: dict(v) for k, v in raw.items()}
    bad["test"]["audio_lengths"] = bad["test"]["audio_lengths"] + 100
    with pytest.raises(D.DataError, match=r"\['audio_lengths'\]: lengths must lie in \[0, 50\]"):
        D.load_mmsa(_dump(tmp_path, bad), "test")
    bad = {k: dict(v) for k, v in raw.items()}
    bad["test"]["text_bert"] = bad["test"]["text_bert"][:, :2]
    with pytest.raises(D.DataError, match=r"\['text_bert'\]: expected \(N, 3, 50\)"):
        D.load_mmsa(_dump(tmp_path, bad), "test")
    raw = _raw(files["magbert"][0])
    bad = dict(raw)
    (w, v, a), y, seg = bad["test"][0]
    bad["test"] = [((w, v[:-1], a), y, seg)] + list(bad["test"][1:])
    with pytest.raises(D.DataError, match=r"\[test\]\[0\] visual: expected"):
        D.load_magbert(_dump(tmp_path, bad), "test")
    bad["test"] = [("not", "a sample")]
    with pytest.raises(D.DataError, match=r"\[test\]\[0\]: expected \(\(words"):
        D.load_magbert(_dump(tmp_path, bad), "test")
    with pytest.raises(D.DataError, match="cannot detect"):
        D.load(_dump(tmp_path, {"x": 1}), "train")


def test_iterate_batches(files):
    ds = D.load_mult(files["iemocap"][0], "train")  # 16 rows
    batches = list(D.iterate_batches(ds, 6))
    assert len(batches) == D.num_batches(16, 6) == 3
    assert all(b.text.shape == (6, 20, 300) and b.labels.shape == (6, 4) for b in batches)
    assert batches[-1].valid.tolist() == [True] * 4 + [False] * 2
    assert not batches[-1].audio_mask[4:].any()
    np.testing.assert_array_equal(np.concatenate([b.labels for b in batches])[:16], ds.batch.labels)
    assert len(list(D.iterate_batches(ds, 6, drop_last=True))) == D.num_batches(16, 6, True) == 2
    # deterministic shuffling: same (seed, epoch) -> same order; covers every row once
    a = [b.labels for b in D.iterate_batches(ds, 4, shuffle=True, seed=3)]
    b = [b.labels for b in D.iterate_batches(ds, 4, shuffle=True, seed=3)]
    c = [b.text for b in D.iterate_batches(ds, 4, shuffle=True, seed=3, epoch=1)]
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    texts = np.concatenate([b.text for b in D.iterate_batches(ds, 4, shuffle=True, seed=3)])
    assert not np.array_equal(texts, np.concatenate(c))
    order = [np.flatnonzero(ds.batch.text[:, 0, 0] == t)[0] for t in texts[:, 0, 0]]
    assert sorted(order) == list(range(16))
    # the batch is a pytree usable under jit; None fields stay None
    f = jax.jit(lambda bt: jnp.sum(bt.audio * bt.audio_mask[..., None]) + bt.labels.sum())
    f(batches[0])
    assert jax.tree_util.tree_structure(batches[0]) == jax.tree_util.tree_structure(batches[1])
    with pytest.raises(ValueError, match="batch_size"):
        next(D.iterate_batches(ds, 0))
