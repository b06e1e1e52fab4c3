"""scripts/eval_cfg_sweep.py: the protocol switch (eval=openpi) and the refusal to guess a task.

Only configs are composed and checked here; no policy or simulator is built (the end-to-end sweep
of a trained checkpoint is exercised in tests/test_train_reach.py).
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from ript.training.checkpointing import TrainingState, save_checkpoint
from ript.training.config_checks import ConfigError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def sweep_script(script_loader):
    return script_loader("eval_cfg_sweep")


@pytest.fixture
def pi0_weights(tmp_path) -> Path:
    path = tmp_path / "pi0_libero" / "model.safetensors"
    path.parent.mkdir()
    path.write_bytes(b"")  # the checks only need it to exist; nothing is loaded
    return path.parent


def test_pi0_weights_without_task_are_refused(sweep_script, pi0_weights, capsys, monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(SystemExit) as info:
        sweep_script.main(["--checkpoint", str(pi0_weights)])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("Config error: --task=None") and "libero_goal_rl" in err and "\n" not in err


def test_openpi_switch_on_pi0_weights(sweep_script, pi0_weights, fixtures_dir):
    stats = fixtures_dir / "libero_norm_stats_flat.json"
    cfg, weights, info = sweep_script.load_config(
        pi0_weights, "libero_goal_rl", ["eval=openpi", f"algo.policy.norm_stats_path={stats}"])
    assert weights is None and info["eval_protocol"] == "openpi"
    runner = cfg.task.env_runner
    assert (runner.replan_steps, runner.camera_height, runner.seed) == (5, 256, 7)
    assert sweep_script.trials_per_task(cfg, None) == 50
    with pytest.raises(ConfigError, match="--num-trials-per-task=10"):
        sweep_script.trials_per_task(cfg, 10)


def test_openpi_trial_count_is_enforced_before_anything_is_built(sweep_script, pi0_weights, capsys,
                                                                 fixtures_dir, monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    stats = fixtures_dir / "libero_norm_stats_flat.json"
    with pytest.raises(SystemExit) as info:  # the empty weights file would fail to load if reached
        sweep_script.main(["--checkpoint", str(pi0_weights), "--task", "libero_goal_rl", "--num-trials-per-task",
                           "10", "eval=openpi", f"algo.policy.norm_stats_path={stats}"])
    assert info.value.code == 2 and "--num-trials-per-task=10" in capsys.readouterr().err


def test_pi0_weights_in_relative_mode_need_their_stats(sweep_script, pi0_weights):
    with pytest.raises(ConfigError, match="algo.policy.norm_stats_path=None"):
        sweep_script.load_config(pi0_weights, "libero_goal_rl", ["eval=openpi"])


def _training_run(run_dir: Path, *overrides: str) -> Path:
    """A run directory holding one checkpoint whose saved config is the composed one (resolved)."""
    with initialize_config_dir(config_dir=str(REPO / "config"), version_base=None):
        cfg = compose("train_base_rl_openvla_oft", overrides=[f"output_dir={run_dir}", *overrides])
    state = TrainingState(step=1, optimizers=[], schedulers=[], rng={}, rollout_stats=None,
                          extra={"config": OmegaConf.to_container(cfg, resolve=True)})
    save_checkpoint(run_dir, {"w": torch.zeros(1)}, state, keep_last=1)
    return run_dir


def test_openpi_switch_on_a_saved_training_config(sweep_script, tmp_path):
    # An older run rendered at 128 px; its saved config holds resolved values, not interpolations.
    run_dir = _training_run(tmp_path / "run", "task=libero_goal_rl", "algo.action_mode=absolute",
                            "task.camera_size=128")
    cfg, weights, info = sweep_script.load_config(run_dir)
    assert info["eval_protocol"] == "training" and cfg.task.env_runner.camera_height == 128
    assert sweep_script.trials_per_task(cfg, 3) == 3
    cfg, weights, info = sweep_script.load_config(run_dir, overrides=["eval=openpi"])
    assert weights is not None and info["eval_protocol"] == "openpi"
    runner = cfg.task.env_runner
    assert (runner.replan_steps, runner.camera_height, runner.camera_width, runner.seed) == (5, 256, 256, 7)
    with pytest.raises(ConfigError, match="task.env_runner.replan_steps=1"):
        sweep_script.load_config(run_dir, overrides=["eval=openpi", "task.env_runner.replan_steps=1"])


def test_a_folder_of_step_checkpoints_resolves_to_its_newest(sweep_script, tmp_path):
    # An unpacked final_<run>/ (or a run's checkpoints/) holds step_<N> dirs itself; not PI0 weights.
    run_dir = _training_run(tmp_path / "run")
    folder = tmp_path / "final_run"
    folder.mkdir()
    for step in (3, 12):
        shutil.copytree(run_dir / "checkpoints" / "step_1", folder / f"step_{step}")
    (folder / "step_20").mkdir()  # incomplete: no weights, no state
    assert sweep_script.resolve_training_checkpoint(folder) == folder / "step_12"
    assert sweep_script.resolve_training_checkpoint(run_dir / "checkpoints") == run_dir / "checkpoints" / "step_1"
    assert sweep_script.resolve_training_checkpoint(tmp_path / "empty_dir_that_is_not_there") is None


def test_a_folder_that_is_neither_a_checkpoint_nor_weights_is_named_as_such(sweep_script, tmp_path):
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    with pytest.raises(ConfigError, match="neither a training checkpoint .* nor PI0 weights"):
        sweep_script.load_config(tmp_path, "libero_goal_rl")
