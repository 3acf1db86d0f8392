"""cosa_jax.main: CLI smoke runs (IEMOCAP and MOSI synthetic files), labelled tables, protocol
flag, exact resume, bad arguments."""

import json
import os

import numpy as np
import pytest

from core_jax.metrics import read_metrics
from cosa_jax import main as M
from cosa_jax import synthetic

IE_DIMS = (12, 8, 6)
TINY = [
    "data.seq_len=6", "data.batch_size=16", "model.emb_dim=16", "model.num_heads=2",
    "model.ff_dim=32", "sac.buffer_capacity=64",
]  # fmt: skip


def _ie_args(tmp_path):
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    synthetic.write_mult(data / "iemocap_data.pkl", "iemocap", 96, seq_len=6, dims=IE_DIMS)
    sets = [f"data.dims={IE_DIMS}", *TINY]
    return str(data), sum((["--set", s] for s in sets), [])


@pytest.mark.slow
def test_cli_iemocap_and_resume(tmp_path, capsys):
    data, sets = _ie_args(tmp_path)
    work = tmp_path / "run"
    argv = ["--config", "iemocap_paper", "--data", data, "--workdir", str(work), "--epochs", "2",
            "--seeds", "1111", "--quiet", *sets]  # fmt: skip
    assert M.main(argv) == 0
    out = capsys.readouterr().out
    assert "| metric (iemocap convention) | mean ± std |" in out
    assert f"protocol: {M.HONEST}" in out and "Co-SA protocol" not in out
    res = json.loads((work / "results.json").read_text())
    assert res["convention"] == "iemocap" and res["seeds"] == [1111]
    assert set(res["honest"]["summary"]) >= {"Mean_acc", "Mean_F1", "Happy_F1"}
    assert res["honest"]["summary"]["Mean_acc"]["std"] == 0.0  # one seed
    assert (work / "results.md").read_text().startswith("Co-SA iemocap_paper (paper mode)")
    # killed after epoch 1, then resumed: the same numbers as the uninterrupted run
    cfg = M.build_config(
        "iemocap_paper", epochs=2, seeds="1111", overrides=[s for s in sets if s != "--set"]
    )
    splits = M.load_splits(cfg, data)
    resumed_dir = str(tmp_path / "resumed")
    assert M.run_seed(cfg, splits, resumed_dir, 1111, quiet=True, stop_after=1) is None
    again = M.run_seed(cfg, splits, resumed_dir, 1111, quiet=True)
    full = res["per_seed"][0]
    assert again["best_valid_loss"] == full["best_valid_loss"]
    assert again["best_epoch"] == full["best_epoch"]
    assert again["test"] == full["test"]
    a = read_metrics(os.path.join(resumed_dir, "metrics.jsonl"))
    b = read_metrics(str(work / "seed_1111" / "metrics.jsonl"))
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 2]
    assert a[1]["train/loss"] == b[1]["train/loss"]


def test_cli_mosi_with_co_sa_protocol(tmp_path, capsys):
    data = tmp_path / "aligned_50.pkl"
    synthetic.write_mmsa(data, "mosi", n_train=64, dims=(10, 5, 7), lengths=(6, 6, 6))
    sets = sum((["--set", s] for s in ["data.dims=(10, 5, 7)", *TINY]), [])
    work = tmp_path / "run"
    argv = ["--config", "mosi_code_compat", "--data", str(data), "--workdir", str(work),
            "--epochs", "2", "--seeds", "1111,1112", "--best_test_per_metric", "--quiet",
            *sets]  # fmt: skip
    assert M.main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("| metric (mmsa convention) | mean ± std |") == 2
    assert f"protocol: {M.CO_SA}" in out and f"protocol: {M.HONEST}" in out
    res = json.loads((work / "results.json").read_text())
    assert res["co_sa_protocol"]["protocol"] == M.CO_SA
    assert len(res["per_seed"]) == 2
    for run in res["per_seed"]:  # the per-epoch best is never worse than the selected checkpoint
        assert run["best_test_per_metric"]["MAE"] <= run["test"]["MAE"] + 1e-12
        assert run["best_test_per_metric"]["Non0_acc_2"] >= run["test"]["Non0_acc_2"] - 1e-12
    mae = [r["test"]["MAE"] for r in res["per_seed"]]
    np.testing.assert_allclose(res["honest"]["summary"]["MAE"]["mean"], np.mean(mae))
    np.testing.assert_allclose(res["honest"]["summary"]["MAE"]["std"], np.std(mae))


def test_cli_errors(tmp_path):
    with pytest.raises(SystemExit):
        M.main(["--config", "nope", "--data", str(tmp_path), "--workdir", str(tmp_path)])
    with pytest.raises(SystemExit):  # no iemocap_data.pkl in the directory
        M.main(["--config", "iemocap_paper", "--data", str(tmp_path), "--workdir", str(tmp_path)])
    with pytest.raises(ValueError, match="--seeds"):
        M.build_config("mosi_paper", seeds="1,x")
    with pytest.raises(ValueError, match="unknown key"):
        M.build_config("mosi_paper", overrides=["model.size=3"])
