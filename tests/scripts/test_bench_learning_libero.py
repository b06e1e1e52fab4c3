"""scripts/bench_learning_libero.py: its RL run is a valid training config built from the SFT output."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import bench_learning_libero as bench  # noqa: E402
from eval_cfg_sweep import compose_config  # noqa: E402

TASK = "pick_up_the_ketchup_and_place_it_in_the_basket"


def test_rl_overrides_compose_into_the_training_config_with_the_sft_output(tmp_path):
    args = bench.parse_args(["--task", "4", "--sft-dir", str(tmp_path / "sft"), "--num-envs", "3",
                             "--save-every", "1", "--rl-steps", "5",
                             "--rl-override", "algo.clip_labels=true",
                             "--rl-override", "algo.episode_weighting=episode"])
    cfg = compose_config(None, bench.rl_overrides(args, TASK, tmp_path / "work", tmp_path / "work" / "rl"))
    assert cfg.algo.policy.pretrained_path == str(tmp_path / "sft" / "model.safetensors")
    assert cfg.algo.policy.norm_stats_path == str(tmp_path / "sft" / "norm_stats.json")
    assert cfg.algo.policy.preset == "small" and cfg.algo.action_mode == "absolute"
    assert cfg.algo.num_parallel_envs == 3 and cfg.task.env_runner.num_parallel_envs == 3
    assert cfg.training.save_every_n_steps == 1 and cfg.training.n_steps == 5
    assert cfg.algo.lr == 2.5e-5  # the default that did not wreck a few-demo start
    assert cfg.algo.clip_labels is True and cfg.algo.episode_weighting == "episode"
    assert list(cfg.task.task_names_to_use) == [TASK]
    assert cfg.algo.policy.cond_layer_modulation is True and cfg.algo.cond_lr_scale == 10.0  # issue 26 default


def test_the_per_layer_condition_can_be_turned_off(tmp_path):
    args = bench.parse_args(["--task", "4", "--no-cond-layer-modulation", "--cond-lr-scale", "1"])
    cfg = compose_config(None, bench.rl_overrides(args, TASK, tmp_path / "work", tmp_path / "work" / "rl"))
    assert cfg.algo.policy.cond_layer_modulation is False and cfg.algo.cond_lr_scale == 1.0


def test_without_sft_dir_the_stages_read_their_own_work_dir(tmp_path):
    args = bench.parse_args(["--task", "4"])
    assert bench.sft_weights(args, tmp_path) == tmp_path / "sft" / "model.safetensors"
    assert bench.sft_norm_stats(args, tmp_path) == tmp_path / "norm_stats.json"


def test_the_held_out_split_is_the_init_state_datasets():
    train, val = bench.split_rows(50, 25, 0)
    assert len(train) == len(val) == 25 and not set(train) & set(val)
    assert sorted(train + val) == list(range(50))
