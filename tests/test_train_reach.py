"""A two-round CFG-Flow RL run on the reach env through the training entry point (task=reach_rl)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from ript.training.checkpointing import latest_checkpoint, load_checkpoint

CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "config")


REACH_RUN = [
    "task=reach_rl", "training.n_steps=2", "logging.mode=disabled",
    "algo.policy.preset=tiny", "algo.policy.device_id=cpu", "algo.policy.dtype=float32",
    "train_dataloader.batch_size=1", "algo.rloo_batch_size=2", "algo.num_parallel_envs=2",
    "algo.mini_batch_size=4", "algo.short_window=pad", "task.max_episode_length=100",
    "++task.env_config.num_init_states_per_task=2", "rollout.num_trials_per_task=1",
    "algo.rollout_generator_factory.use_tqdm=false",
]


def _compose(*overrides):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        return compose(config_name="train_base_rl_openvla_oft", overrides=[*REACH_RUN, *overrides])


def _records(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_two_rl_rounds_on_reach(tmp_path):
    from train_ript_openvla_oft import run_training

    cfg = _compose(f"output_dir={tmp_path}")
    assert cfg.algo.action_mode == "absolute" and cfg.algo.policy.norm_stats_path == "builtin:reach"
    final_eval = run_training(cfg)

    records = _records(tmp_path)
    train = [r for r in records if "loss/fm_loss" in r]
    assert [r["step"] for r in train] == [1, 2]
    for r in train:
        for key in ("rollout/mean_scores", "rollout/mean_advantage", "loss/fm_loss", "loss/fm_loss_uncond",
                    "train/grad_norm_model", "train/grad_norm_header"):
            assert math.isfinite(r[key]), (key, r)
        assert r["train/windows_used"] > 0 and r["rollout/valid_episodes"] == 2
        # the per-round diagnostics of docs/learning.md are logged by every run
        for key in ("train/branch_gap", "rollout/chunk_diversity", "rollout/groups_mixed",
                    "rollout/groups_all_fail", "rollout/groups_all_success", "train/replayed_windows"):
            assert math.isfinite(r[key]), (key, r)
        assert r["train/branch_gap"] >= 0.0 and r["rollout/chunk_diversity"] > 0.0
        assert r["rollout/env_rebuilds"] == 0.0 and r["rollout/env_faults"] == 0.0
    assert 0.0 <= final_eval["rollout/overall_success_rate"] <= 1.0
    assert final_eval["rollout/num_episodes"] == 4  # one per reach task
    ckpt = latest_checkpoint(tmp_path)
    assert ckpt is not None and ckpt.name == "step_2"
    weights, state = load_checkpoint(ckpt)
    assert state.step == 2 and weights and state.extra["config"]["task"]["name"] == "reach_rl"
    # success replay is on by default and its buffer travels with the checkpoint
    assert cfg.algo.success_replay_per_state == 2 and "success_replay" in state.extra["rl_optimizer"]

    # the cfg_scale sweep evaluates the training checkpoint (config from state.pt, base weights + trained)
    import importlib.util

    spec = importlib.util.spec_from_file_location("eval_cfg_sweep", Path(CONFIG_DIR).parent / "scripts" / "eval_cfg_sweep.py")
    sweep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sweep)
    out_dir = tmp_path / "sweep"
    doc = sweep.main(["--checkpoint", str(tmp_path), "--cfg-scales", "1.0", "2.0", "--num-trials-per-task", "1",
                      "--out-dir", str(out_dir), "--device", "cpu"])
    assert doc["checkpoint"]["kind"] == "training_checkpoint" and doc["checkpoint"]["step"] == 2
    assert set(doc["results"]) == {"1", "2"} and len(doc["results"]["2"]["per_task"]) == 4
    assert all((out_dir / name).is_file() for name in ("cfg_sweep.json", "cfg_sweep.md", "cfg_sweep.png"))


def test_a_recovered_simulator_fault_is_counted_in_the_metrics(tmp_path):
    """A worker that dies mid-round is rebuilt and the round completes: no episode is dropped
    (rollout/env_faults stays 0), and rollout/env_rebuilds records the recovery in that round."""
    from train_ript_openvla_oft import run_training

    cfg = _compose(f"output_dir={tmp_path}", "task.env_runner._target_=fault_injection.ReachRunnerFaultingOnce",
                   "rollout.enabled=false")
    run_training(cfg)
    train = [r for r in _records(tmp_path) if "loss/fm_loss" in r]
    assert [(r["step"], r["rollout/env_rebuilds"], r["rollout/env_faults"]) for r in train] == [(1, 1.0, 0.0),
                                                                                               (2, 0.0, 0.0)]
    # the reach env steps in lockstep (no worker processes): its running episodes start again
    assert train[0]["rollout/episode_retries"] >= 1 and train[1]["rollout/episode_retries"] == 0
    assert all(r["rollout/valid_episodes"] == 2 for r in train)
