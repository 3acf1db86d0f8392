"""cosa_jax.metrics against scikit-learn / NumPy, written out as the public codes compute them."""

import math

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score

from cosa_jax import metrics as M


def _random(seed, n=200):
    rng = np.random.default_rng(seed)
    y = np.round(rng.uniform(-3, 3, n) * 3) / 3  # MOSI-like thirds, many exact zeros below
    p = rng.normal(0, 1.5, n)
    y[rng.choice(n, 25, replace=False)] = 0.0
    p[rng.choice(n, 15, replace=False)] = 0.0
    p[:5] = [0.5, -2.5, 1.5, 2.5, -0.5]  # round-half-to-even cases
    y[5:8] = [-3.0, 3.0, 0.5]
    return p, y


def _mmsa_reference(p, y):
    """MMSA metricsTop.__eval_mosei_regression, line for line."""
    nz = np.array([i for i, e in enumerate(y) if e != 0])
    return {
        "Has0_acc_2": accuracy_score(p >= 0, y >= 0),
        "Has0_F1_score": f1_score(y >= 0, p >= 0, average="weighted"),
        "Non0_acc_2": accuracy_score(p[nz] > 0, y[nz] > 0),
        "Non0_F1_score": f1_score(y[nz] > 0, p[nz] > 0, average="weighted"),
        "Mult_acc_5": np.sum(np.round(np.clip(p, -2, 2)) == np.round(np.clip(y, -2, 2))) / len(y),
        "Mult_acc_7": np.sum(np.round(np.clip(p, -3, 3)) == np.round(np.clip(y, -3, 3))) / len(y),
        "MAE": np.mean(np.abs(p - y)),
        "Corr": np.corrcoef(p, y)[0][1],
    }


def _mult_reference(p, y):
    """MulT eval_mosei_senti with exclude_zero True (Non0) and False (Has0)."""
    out = {}
    for key, exclude in (("Non0", True), ("Has0", False)):
        nz = np.array([i for i, e in enumerate(y) if e != 0 or (not exclude)])
        out[f"{key}_F1_score"] = f1_score(p[nz] > 0, y[nz] > 0, average="weighted")
        out[f"{key}_acc_2"] = accuracy_score(y[nz] > 0, p[nz] > 0)
    out["Mult_acc_5"] = np.mean(np.round(np.clip(p, -2, 2)) == np.round(np.clip(y, -2, 2)))
    out["Mult_acc_7"] = np.mean(np.round(np.clip(p, -3, 3)) == np.round(np.clip(y, -3, 3)))
    out["MAE"] = np.mean(np.abs(p - y))
    out["Corr"] = np.corrcoef(p, y)[0][1]
    return out


def _magbert_reference(p, y):
    """MAG-BERT test_score_model with use_zero False (Non0, MAE, Corr) and True (Has0)."""
    out = {}
    for key, use_zero in (("Non0", False), ("Has0", True)):
        nz = np.array([i for i, e in enumerate(y) if e != 0 or use_zero])
        pp, yy = p[nz], y[nz]
        if not use_zero:
            out["MAE"] = np.mean(np.abs(pp - yy))
            out["Corr"] = np.corrcoef(pp, yy)[0][1]
        out[f"{key}_F1_score"] = f1_score(yy >= 0, pp >= 0, average="weighted")
        out[f"{key}_acc_2"] = accuracy_score(yy >= 0, pp >= 0)
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(
    "convention,ref",
    [("mmsa", _mmsa_reference), ("mult", _mult_reference), ("magbert", _magbert_reference)],
)
def test_against_reference(seed, convention, ref):
    p, y = _random(seed)
    got = M.msa_metrics(p, y, convention=convention)
    assert tuple(got) == M.MSA_KEYS
    want = ref(p, y)
    for k in M.MSA_KEYS:
        if k in want:
            np.testing.assert_allclose(got[k], want[k], rtol=0, atol=1e-12, err_msg=k)
        else:
            assert convention == "magbert" and math.isnan(got[k])


def test_conventions_differ_on_zeros():
    # zero predictions/labels are where the conventions disagree
    y = np.array([0.0, 0.0, 1.0, -1.0, 2.0, -2.0])
    p = np.array([-0.2, -0.3, 1.0, -1.0, 1.0, -0.4])
    a = M.msa_metrics(p, y, "mmsa")
    b = M.msa_metrics(p, y, "mult")
    c = M.msa_metrics(p, y, "magbert")
    assert (a["Has0_acc_2"], b["Has0_acc_2"]) == (4 / 6, 1.0)
    assert a["MAE"] != c["MAE"]
    # swapped F1 arguments matter when class supports differ between preds and labels
    y2 = np.array([1.0, 1, 1, 1, -1, -1, 2, 2])
    p2 = np.array([1.0, 1, 1, -1, -1, 1, -2, 2])
    assert M.msa_metrics(p2, y2, "mmsa")["Non0_F1_score"] != pytest.approx(
        M.msa_metrics(p2, y2, "mult")["Non0_F1_score"]
    )


def test_round_half_to_even_known_answer():
    # 0.5 -> 0, 1.5 -> 2, 2.5 -> 2, -0.5 -> 0: all four equal the label's rounding
    p = np.array([0.5, 1.5, 2.5, -0.5])
    y = np.array([0.0, 2.0, 2.0, 0.0])
    assert M.msa_metrics(p, y)["Mult_acc_7"] == 1.0
    assert M.msa_metrics(p, y)["Mult_acc_5"] == 1.0


def test_decimals_and_jax_input():
    import jax.numpy as jnp

    p, y = _random(3)
    full = M.msa_metrics(jnp.asarray(p, jnp.float32)[:, None], y)
    r = M.msa_metrics(p, y, decimals=4)
    for k in M.MSA_KEYS:
        assert r[k] == round(r[k], 4)
        assert abs(full[k] - r[k]) < 1e-4


def test_bad_inputs():
    with pytest.raises(ValueError, match="shape mismatch"):
        M.msa_metrics(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="preds.*NaN"):
        M.msa_metrics(np.array([0.0, np.nan]), np.zeros(2))
    with pytest.raises(ValueError, match="labels.*NaN"):
        M.msa_metrics(np.zeros(2), np.array([1.0, np.inf]))
    with pytest.raises(ValueError, match="unknown convention"):
        M.msa_metrics(np.zeros(2), np.ones(2), convention="misa")
    with pytest.raises(ValueError, match="Non0"):
        M.msa_metrics(np.ones(3), np.zeros(3))
    with pytest.raises(ValueError, match="empty"):
        M.msa_metrics(np.zeros(0), np.zeros(0))
    with pytest.raises(ValueError, match="numeric"):
        M.msa_metrics(np.array(["a"]), np.zeros(1))


def test_iemocap_against_sklearn():
    rng = np.random.default_rng(7)
    n = 150
    logits = rng.normal(size=(n, 4, 2))
    idx = rng.integers(0, 2, size=(n, 4))
    onehot = np.eye(2)[idx]
    got = M.iemocap_metrics(logits, onehot)
    assert got == M.iemocap_metrics(logits, idx)
    pred = logits.argmax(-1)
    for i, e in enumerate(M.IEMOCAP_EMOTIONS):
        assert got[f"{e}_acc"] == pytest.approx(accuracy_score(idx[:, i], pred[:, i]), abs=1e-12)
        assert got[f"{e}_F1"] == pytest.approx(
            f1_score(idx[:, i], pred[:, i], average="weighted"), abs=1e-12
        )
    assert got["Mean_acc"] == pytest.approx(np.mean([got[f"{e}_acc"] for e in M.IEMOCAP_EMOTIONS]))
    with pytest.raises(ValueError, match=r"\(N, 4, 2\)"):
        M.iemocap_metrics(logits[:, :3], onehot)
    with pytest.raises(ValueError, match="N=150"):
        M.iemocap_metrics(logits, onehot[:10])
    bad = logits.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        M.iemocap_metrics(bad, onehot)


def test_weighted_f1_degenerate_matches_sklearn():
    for yt, yp in [([1, 1, 1], [1, 1, 1]), ([1, 1, 0], [0, 0, 0]), ([0, 0, 0], [1, 1, 1])]:
        yt, yp = np.array(yt), np.array(yp)
        assert M.weighted_f1(yt, yp) == pytest.approx(
            f1_score(yt, yp, average="weighted", zero_division=0), abs=1e-12
        )


def test_format_table_names_convention():
    t = M.format_table(
        M.msa_metrics(*_random(0), convention="magbert"), "magbert", title="MOSI test"
    )
    assert "magbert convention" in t and "n/a" in t and t.startswith("MOSI test")
    with pytest.raises(ValueError):
        M.format_table({"MAE": 1.0}, "")
