"""The README's main job (``scripts/quickstart.sh`` -> ``experiment=libero_object_ketchup``):
it composes, passes the pre-flight checks, and points at the shipped checkpoint with the settings
the docs promise. Nothing is built."""
from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir

from ript.training.config_checks import check_config
from ript.utils.assets import CHECKPOINTS_DIR, resolve_checkpoint_path, resolve_norm_stats_path

REPO = Path(__file__).resolve().parents[2]


def _main_job(*overrides: str):
    with initialize_config_dir(config_dir=str(REPO / "config"), version_base=None):
        return compose("train_base_rl_openvla_oft",
                       overrides=["output_dir=/tmp/ript_main_job_test", "experiment=libero_object_ketchup", *overrides])


def test_main_job_composes_and_passes_the_checks():
    cfg = _main_job()
    check_config(cfg)
    ckpt = CHECKPOINTS_DIR / "pi0_small_libero_object_ketchup"
    assert resolve_checkpoint_path(cfg.algo.policy.pretrained_path) == str(ckpt)
    assert resolve_norm_stats_path(cfg.algo.policy.norm_stats_path) == str(ckpt / "norm_stats.json")
    assert cfg.algo.policy.preset == "small" and cfg.algo.policy.strict_load


def test_main_job_settings():
    cfg = _main_job()
    assert cfg.task.benchmark_name == "libero_object"
    assert list(cfg.task.task_names_to_use) == ["pick_up_the_ketchup_and_place_it_in_the_basket"]
    assert list(cfg.task.env_runner.task_names_to_use) == list(cfg.task.task_names_to_use)
    assert cfg.task.env_runner.hard_reset is False and cfg.task.env_runner.action_mode == "absolute"
    assert (cfg.task.dataset.num_val, cfg.task.dataset.seed) == (25, 0)  # the checkpoint's split
    algo = cfg.algo
    assert (algo.action_mode, algo.lr, algo.mini_batch_size, algo.rloo_batch_size) == ("absolute", 2.5e-5, 16, 4)
    assert algo.clip_labels and algo.episode_weighting == "episode" and algo.num_parallel_envs == 2
    assert algo.rl_optimizer_factory.num_epochs == 1
    assert algo.rl_optimizer_factory.clip_labels and algo.rl_optimizer_factory.episode_weighting == "episode"
    rollout = cfg.rollout
    assert rollout.enabled and rollout.eval_at_start and rollout.init_states == "heldout"
    assert rollout.every_n_steps == cfg.training.n_steps  # evaluated before and after only


def test_overrides_still_apply_on_top():
    cfg = _main_job("training.n_steps=8", "rollout.num_trials_per_task=25")
    assert cfg.training.n_steps == 8 and cfg.rollout.num_trials_per_task == 25
