"""The learning bench's per-seed guidance diagnostics (hand values; no training)."""
from __future__ import annotations

import math

import pytest


@pytest.fixture(scope="module")
def bench(script_loader):
    return script_loader("bench_learning")


def _arm(rows):
    return {"curve": rows, "eval": {"scenes": {"1": {"overall": 0.5}}}}


def test_last_value_and_spread_ratio(bench):
    arm = _arm([{"rollout/chunk_diversity": 0.10, "train/branch_gap": 0.003, "rollout/mean_scores": 0.4},
                {"rollout/chunk_diversity": None, "train/branch_gap": 0.02, "rollout/mean_scores": 0.5},
                {"rollout/chunk_diversity": 0.04, "train/branch_gap": None, "rollout/mean_scores": 0.5}])
    assert bench.last_value(arm, "train/branch_gap") == 0.02  # the last round that logged it
    assert bench.spread_ratio(arm) == pytest.approx(0.4)  # 0.04 / 0.10
    assert math.isnan(bench.spread_ratio(_arm([{"rollout/chunk_diversity": 0.1}])))
    assert math.isnan(bench.last_value(_arm([{}]), "train/branch_gap"))


def test_rl_runs_default_to_the_per_layer_condition(bench, tmp_path):
    # Issue 26: the verified reach recipe (per-layer condition at 10x lr) is the bench default.
    from eval_cfg_sweep import compose_config

    def composed(*flags):
        args = bench.parse_args(list(flags))
        return compose_config(None, bench.rl_overrides(args, 0, tmp_path / "sft.safetensors", tmp_path / "rl", False))

    cfg = composed()
    assert cfg.algo.policy.cond_layer_modulation is True and cfg.algo.cond_lr_scale == 10.0
    cfg = composed("--no-cond-layer-modulation", "--cond-lr-scale", "1")
    assert cfg.algo.policy.cond_layer_modulation is False and cfg.algo.cond_lr_scale == 1.0
