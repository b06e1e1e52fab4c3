"""A Hydra multirun sweep over the guidance scale completes, one run directory per value."""
from __future__ import annotations

import math

import pytest

from train_cli import read_metrics, run_training_cli

pytestmark = pytest.mark.slow


def test_multirun_over_two_cfg_scales_completes_with_the_tiny_preset(tmp_path):
    sweep_dir = tmp_path / "sweep"
    result = run_training_cli(
        ["-m", "task=reach_rl", "algo.cfg_scale=1.0,2.0", "training.n_steps=1", "algo.rloo_batch_size=2",
         "algo.num_parallel_envs=4", "train_dataloader.batch_size=1", "rollout.enabled=false",
         "logging.mode=disabled", f"hydra.sweep.dir={sweep_dir}"],
        timeout_s=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    job_dirs = sorted(p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit())
    assert [p.name for p in job_dirs] == ["0", "1"]
    for job_dir in job_dirs:
        records = read_metrics(job_dir)
        assert records and math.isfinite(records[-1]["loss/fm_loss"])
        assert (job_dir / "checkpoints" / "step_1" / "trainable.safetensors").is_file()
