"""cosa_jax.configs: every named config builds, round-trips and encodes its mode."""

import dataclasses

import pytest

from core_jax import config as C
from cosa_jax.configs import CONFIG_NAMES, CoSAConfig, get_config, make_config
from cosa_jax.configs.base import DataConfig, LossConfig


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_named_configs(name):
    cfg = get_config(name)
    assert cfg.name == name
    assert C.from_dict(CoSAConfig, C.to_dict(cfg)) == cfg
    assert cfg.data.dataset == name.split("_")[0]
    if cfg.mode == "paper":
        assert (cfg.loss.a1, cfg.loss.a2, cfg.loss.a3, cfg.loss.a4) == (9.0, 1.0, 30.0, 1.0)
        assert cfg.loss.use_msd and cfg.sac.copy_targets and cfg.model.dpsr_residual
        assert cfg.sac.reward_mode == cfg.loss.dpsr_mode == "paper"
    else:
        assert (cfg.loss.a1, cfg.loss.a2, cfg.loss.a3, cfg.loss.a4) == (9.0, 0.0, 10.0, 9.0)
        assert not cfg.loss.use_msd and not cfg.sac.copy_targets
        assert cfg.sac.drop_half_when_full and cfg.model.shared_layer_init
        assert cfg.sac.reward_mode == cfg.loss.dpsr_mode == "code-compat"
    assert cfg.optim.peak_lr == 2.2e-4 and cfg.data.batch_size == 128 and cfg.data.drop_last
    assert cfg.train.seeds == (1111, 1112, 1113, 1114, 1115) and not cfg.train.best_test_per_metric
    assert (cfg.sac.gamma, cfg.sac.tau, cfg.sac.buffer_capacity) == (0.5, 0.01, 1000)


def test_overrides_and_errors():
    cfg = C.apply_overrides(get_config("mosi_paper"), ["loss.a3=5", "data.batch_size=32"])
    assert cfg.loss.a3 == 5.0 and cfg.data.batch_size == 32
    with pytest.raises(ValueError, match="unknown key"):
        C.apply_overrides(cfg, ["loss.a5=1"])
    with pytest.raises(ValueError, match="separation"):
        C.apply_overrides(cfg, ["loss.separation='soft'"])
    with pytest.raises(ValueError, match="unknown Co-SA config"):
        get_config("mosi")
    with pytest.raises(ValueError, match="unknown mode"):
        make_config("mosi", "faithful")
    with pytest.raises(ValueError, match="a2 must be 0"):
        LossConfig(use_msd=False)
    with pytest.raises(ValueError, match="layout"):
        dataclasses.replace(DataConfig(), layout="csv")
