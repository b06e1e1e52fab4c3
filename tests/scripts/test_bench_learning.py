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
