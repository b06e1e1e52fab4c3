"""scripts/bench_learning_libero.py: its RL run is a valid training config built from the SFT output."""
import sys
from pathlib import Path

import pytest

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


def test_the_start_is_swept_as_rl_round_0_rolls_it_out(tmp_path):
    # A sweep of the start and one of an RL checkpoint must differ in the weights alone: the start
    # policy is built from the RL run's own config (sdpa attention, per-layer condition, sampler).
    import torch

    shipped = Path(__file__).resolve().parents[2] / "ript/assets/checkpoints/pi0_small_libero_object_ketchup"
    args = bench.parse_args(["--task", "4", "--sft-dir", str(shipped)])
    rl_policy_cfg = compose_config(None, bench.rl_overrides(args, TASK, tmp_path, tmp_path / "rl")).algo.policy
    policy = bench.start_policy(args, TASK, tmp_path)
    assert policy.config.attention_implementation == rl_policy_cfg.attention_implementation == "sdpa"
    assert policy.config.cond_layer_modulation is True and policy.preset == "small"
    assert torch.count_nonzero(policy.pi0.model.cond_layer_mod) == 0  # zero-filled: the start unchanged
    from safetensors.torch import load_file

    shipped_weights = load_file(str(shipped / "model.safetensors"))
    assert torch.equal(policy.pi0.state_dict()["model.action_out_proj.weight"],
                       shipped_weights["model.action_out_proj.weight"])


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


def test_resume_rl_continues_the_run_instead_of_starting_afresh(tmp_path):
    fresh = bench.parse_args(["--task", "4"])
    resumed = bench.parse_args(["--task", "4", "--resume-rl"])
    run_dir = tmp_path / "work" / "rl"
    assert compose_config(None, bench.rl_overrides(fresh, TASK, tmp_path / "work", run_dir)).training.resume is False
    assert compose_config(None, bench.rl_overrides(resumed, TASK, tmp_path / "work", run_dir)).training.resume is True


def test_pool_sweep_pools_env_seeds_per_cfg_scale_with_wilson_intervals():
    # cfg 1: seed 0 has 2/3 valid (one invalid episode is left out), seed 1 has 1/3 -> 3/6 = 0.5.
    # cfg 2: 3/3. Wilson 95 % of 3/6: centre (0.5 + 1.96^2/12) / (1 + 1.96^2/6) = 0.5, half-width
    # 1.96 * sqrt(0.25/6 + 1.96^2/144) / (1 + 1.96^2/6) = 0.3438 -> [0.188, 0.812].
    runs = {"seed0_cfg1": {"env_seed": 0, "cfg_scale": 1.0, "per_state": {"3": True, "5": False, "7": True, "9": None}},
            "seed1_cfg1": {"env_seed": 1, "cfg_scale": 1.0, "per_state": {"3": False, "5": False, "7": True}},
            "seed0_cfg2": {"env_seed": 0, "cfg_scale": 2.0, "per_state": {"3": True, "5": True, "7": True}}}
    pooled = bench.pool_sweep(runs)
    assert (pooled["1"]["successes"], pooled["1"]["episodes"], pooled["1"]["rate"]) == (3, 6, 0.5)
    assert pooled["1"]["wilson95"] == [pytest.approx(0.188, abs=1e-3), pytest.approx(0.812, abs=1e-3)]
    assert (pooled["2"]["successes"], pooled["2"]["episodes"]) == (3, 3)


def test_sweep_skips_what_an_earlier_call_finished(tmp_path, monkeypatch):
    # A device call cut short keeps its (seed, scale) results; the next call runs only the rest.
    calls = []

    def fake_evaluate(policy, task_name, rows, val_rows, seed, camera_size, num_envs=1, cfg_scale=1.0):
        calls.append((seed, cfg_scale))
        return {"per_state": {r: True for r in rows}}

    monkeypatch.setattr(bench, "evaluate", fake_evaluate)
    monkeypatch.setattr(bench, "sweep_policy", lambda args, task_name, work: (None, {"from": "start", "path": "w"}))
    args = bench.parse_args(["--task", "4", "--stages", "sweep", "--eval-seeds", "11", "12", "--cfg-scales", "1", "3"])
    results = {"sweeps": {"start": {"info": {"from": "start", "path": "w"},
                                    "runs": {"seed11_cfg1": {"env_seed": 11, "cfg_scale": 1.0, "per_state": {"0": False}}}}}}
    entry = bench.sweep_stage(args, TASK, [0, 1], tmp_path, results, save=lambda: None)
    assert calls == [(11, 3.0), (12, 1.0), (12, 3.0)]
    assert entry["by_cfg"]["1"] == {"successes": 2, "episodes": 3, "rate": 2 / 3,
                                    "wilson95": entry["by_cfg"]["1"]["wilson95"]}


def test_a_checkpoint_made_elsewhere_is_swept_with_the_start_named_here(tmp_path):
    # The saved config names the GPU machine's paths; --sft-dir replaces them, the sampler is this call's.
    sft = tmp_path / "start"
    args = bench.parse_args(["--task", "4", "--stages", "sweep", "--sft-dir", str(sft), "--sweep-from", "ckpt"])
    assert bench.checkpoint_sweep_overrides(args) == [
        "algo.policy.sampler=eager", f"algo.policy.pretrained_path={sft / 'model.safetensors'}",
        f"algo.policy.norm_stats_path={sft / 'norm_stats.json'}"]
    args = bench.parse_args(["--task", "4", "--stages", "sweep", "--sweep-from", "ckpt", "--sampler=cuda_graph"])
    assert bench.checkpoint_sweep_overrides(args) == ["algo.policy.sampler=cuda_graph"]  # the saved paths stay
