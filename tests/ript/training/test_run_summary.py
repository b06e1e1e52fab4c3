"""Before/after lines and the plot of the main job, from a hand-written ``metrics.jsonl``."""
from __future__ import annotations

import json

import pytest

from ript.training.run_summary import EvalResult, before_after, summarize, training_success

TASK_KEY = "rollout/success_rate/pick_up_the_ketchup_and_place_it_in_the_basket"
RECORDS = [
    # eval at start (step 0): 6 of 12
    {"step": 0, "rollout/overall_success_rate": 0.5, "rollout/num_episodes": 12, TASK_KEY: 0.5},
    # two training rounds: training rollouts' success and episode counts
    {"step": 1, "train/step_time_s": 90.0, TASK_KEY: 0.25, "rollout/valid_episodes": 16},
    {"step": 2, "train/step_time_s": 80.0, TASK_KEY: 0.5, "rollout/valid_episodes": 16},
    # final evaluation: 8 of 12
    {"step": 2, "rollout/overall_success_rate": 8 / 12, "rollout/num_episodes": 12, TASK_KEY: 8 / 12},
]


def test_before_after_and_training_curve():
    before, after = before_after(RECORDS)
    assert before == EvalResult(0, 6, 12) and after == EvalResult(2, 8, 12)
    assert training_success(RECORDS) == [(1, 0.25, 16), (2, 0.5, 16)]


def test_wilson_interval():
    # 6/12: p = 0.5, z = 1.96 -> centre 0.5, half = 1.96 * sqrt(0.25/12 + 3.8416/576) / (1 + 3.8416/12)
    #        = 1.96 * sqrt(0.0275028) / 1.320133 = 1.96 * 0.165840 / 1.320133 = 0.24622 -> [0.2538, 0.7462]
    low, high = EvalResult(0, 6, 12).interval95()
    assert low == pytest.approx(0.2538, abs=1e-4) and high == pytest.approx(0.7462, abs=1e-4)
    assert EvalResult(0, 0, 12).interval95()[0] == 0.0 and EvalResult(0, 12, 12).interval95()[1] == 1.0


def test_summarize_prints_counts_and_writes_the_plot(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    lines = summarize(tmp_path)
    assert lines[0].startswith("before RL: 6/12 = 50%") and lines[1].startswith("after RL : 8/12 = 67%")
    assert "25% (16 eps), 50% (16 eps)" in lines[2]
    assert lines[3] == f"plot: {tmp_path / 'success.png'}" and (tmp_path / "success.png").stat().st_size > 1000


def test_summarize_without_evaluations_says_why(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(json.dumps(RECORDS[1]) + "\n")
    lines = summarize(tmp_path, plot=False)
    assert "eval_at_start" in lines[0] and "rollout.enabled" in lines[1]
