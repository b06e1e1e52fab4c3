"""Interrupted runs: SIGTERM saves a final checkpoint, a resumed run reaches the same weights as an
uninterrupted one, and a failing rank brings the whole torchrun job down instead of hanging.

All on the fast reach environment (deterministic settings), launched as a user would.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from train_cli import REPO_ROOT, read_metrics, run_training_cli
from ript.training.checkpointing import latest_checkpoint, list_checkpoints, load_checkpoint

pytestmark = pytest.mark.slow

FAST_REACH = [
    "task=reach_rl",
    "task.task_names_to_use=[reach_red,reach_blue]",
    "algo.rloo_batch_size=2",
    "algo.num_parallel_envs=4",
    "algo.mini_batch_size=4",
    "train_dataloader.batch_size=2",
    "rollout.enabled=false",
    "logging.mode=disabled",
    "training.deterministic=true",
    "training.torch_num_threads=1",
    # The LR schedule must not depend on where a run stops (T_max defaults to training.n_steps).
    "algo.scheduler_factory.T_max=2",
]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted 2-round run both resume tests compare with (checkpoint files split into
    pieces of 50 KB: the split changes no number, and the tests below read it back)."""
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    result = run_training_cli([*FAST_REACH, "training.n_steps=2", "training.checkpoint_shard_mb=0.05",
                               f"hydra.run.dir={run_dir}"], timeout_s=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


def test_resumed_run_reaches_the_same_weights_as_an_uninterrupted_one(tmp_path, straight):
    interrupted = tmp_path / "interrupted"
    # Stop after one step, then continue in the same run directory up to step 2.
    result = run_training_cli([*FAST_REACH, "training.n_steps=1", f"hydra.run.dir={interrupted}"], timeout_s=600)
    assert result.returncode == 0, result.stderr[-3000:]
    result = run_training_cli([*FAST_REACH, "training.n_steps=2", "training.resume=true",
                               f"hydra.run.dir={interrupted}"], timeout_s=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed from" in result.stdout + result.stderr

    straight_weights, straight_state = load_checkpoint(latest_checkpoint(straight))
    resumed_weights, resumed_state = load_checkpoint(latest_checkpoint(interrupted))
    assert straight_state.step == resumed_state.step == 2
    for name, value in straight_weights.items():
        torch.testing.assert_close(resumed_weights[name], value, rtol=0, atol=0, msg=name)
    # Both optimizers' moments match too, not just the weights.
    for straight_opt, resumed_opt in zip(straight_state.optimizers, resumed_state.optimizers):
        for param_id, moments in straight_opt["state"].items():
            torch.testing.assert_close(resumed_opt["state"][param_id]["exp_avg"], moments["exp_avg"], rtol=0, atol=0)
    assert [r["step"] for r in read_metrics(interrupted) if "loss/fm_loss" in r] == [1, 2]


def test_sigterm_finishes_the_step_and_writes_a_final_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(REPO_ROOT))
    process = subprocess.Popen(
        [sys.executable, str(REPO_ROOT / "train_ript_openvla_oft.py"), *FAST_REACH, "training.n_steps=1000",
         "training.save_every_n_steps=1000", f"hydra.run.dir={run_dir}"],
        cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        metrics_path = run_dir / "metrics.jsonl"
        deadline = time.time() + 300
        while not (metrics_path.exists() and metrics_path.read_text().strip()):
            assert process.poll() is None, process.stdout.read()[-3000:]
            assert time.time() < deadline, "no training step finished within 300 s"
            time.sleep(1)
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, output[-3000:]
    assert "saving a checkpoint, then exiting" in output
    checkpoints = list_checkpoints(run_dir)
    # save_every_n_steps=1000 would never have saved: this checkpoint comes from the signal.
    assert len(checkpoints) == 1
    _, state = load_checkpoint(checkpoints[0])
    assert 1 <= state.step < 1000
    assert state.step == max(r["step"] for r in read_metrics(run_dir))


def test_a_rank_that_raises_tears_the_torchrun_job_down(tmp_path):
    started = time.time()
    result = run_training_cli(
        [*FAST_REACH, "training.n_steps=2", f"hydra.run.dir={tmp_path / 'run'}",
         # A test-only runner that raises on rank 1 while rank 0 goes on to the DDP set-up collective.
         "task.env_runner._target_=fault_injection.RunnerFailingOnRank1"],
        timeout_s=600,
        launcher=[sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"],
        extra_env={"PYTHONPATH": f"{REPO_ROOT / 'tests'}{os.pathsep}{REPO_ROOT}"},
    )
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "injected failure on rank 1" in output
    assert time.time() - started < 600


# Wall-clock readings: the only values two identical runs may differ in.
CLOCK_KEYS = ("time", "_s", "episodes_per_min", "simulator_utilization")


def _timeless(rows: list[dict]) -> list[dict]:
    """Metrics rows without wall-clock readings."""
    return [{k: v for k, v in row.items() if not any(c in k for c in CLOCK_KEYS)} for row in rows]


def test_a_run_resumed_elsewhere_from_a_copied_checkpoint_continues_the_same_run(tmp_path, straight):
    # Issue 26: the GPU machine goes away after round 1; only its checkpoint (files split into pieces
    # under a size limit) is copied to another directory, and a fresh process resumes from there into
    # a new run directory. Same weights, bit for bit, and the same metrics rows, each round once.
    import shutil

    run = [*FAST_REACH, "training.n_steps=2", "training.checkpoint_shard_mb=0.05"]
    first_leg, resumed = tmp_path / "machine1", tmp_path / "machine2"
    result = run_training_cli([*run, "training.stop_after_step=1", f"hydra.run.dir={first_leg}"], timeout_s=600)
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = latest_checkpoint(first_leg)
    assert checkpoint.name == "step_1"
    assert max(p.stat().st_size for p in checkpoint.iterdir()) <= 0.05 * 2**20  # every piece under the limit
    assert len(list(checkpoint.glob("trainable.safetensors.part*"))) > 1
    carried = shutil.copytree(checkpoint, tmp_path / "carried" / "step_1")  # nothing else travels

    result = run_training_cli([*run, f"training.resume_from={carried}", f"hydra.run.dir={resumed}"], timeout_s=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed from" in result.stdout + result.stderr

    straight_weights, straight_state = load_checkpoint(latest_checkpoint(straight))
    resumed_weights, resumed_state = load_checkpoint(latest_checkpoint(resumed))
    assert straight_state.step == resumed_state.step == 2
    assert straight_weights.keys() == resumed_weights.keys()
    for name, value in straight_weights.items():
        assert torch.equal(resumed_weights[name], value), name
    for straight_opt, resumed_opt in zip(straight_state.optimizers, resumed_state.optimizers):
        for param_id, moments in straight_opt["state"].items():
            assert torch.equal(resumed_opt["state"][param_id]["exp_avg_sq"], moments["exp_avg_sq"])
    straight_rows, resumed_rows = read_metrics(straight), read_metrics(resumed)
    assert [r["step"] for r in resumed_rows] == [1, 2]
    assert _timeless(resumed_rows) == _timeless(straight_rows)
