"""SFT warm start: norm stats from demos, demo windows in the optimizer's format, SFT steps."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ript.algos.rl_optimizers.cfg_flow_math import Window, collate_windows, cut_windows
from ript.algos.sft_warm_start import (
    MIN_STD,
    demo_to_episode,
    demonstration_windows,
    norm_stats_from_demonstrations,
    sft_warm_start,
    write_norm_stats_json,
)
from ript.env_runner.pi0_runner_utils import (
    env_obs_to_pi0_observation,
    load_norm_stats,
    model_chunk_to_env_actions,
    raw_state_from_env_obs,
)
from ript.envs.reach_env import ReachEnvConfig, collect_demonstrations
from ript.utils.assets import resolve_norm_stats_path

# The reach_rl task's env settings (slow agent: episodes span several 50-step chunks).
CONFIG = ReachEnvConfig(max_speed=0.015, max_episode_length=200)


@pytest.fixture(scope="module")
def demos():
    return collect_demonstrations(["reach_red", "reach_blue"], n_per_task=2, seed=3, noise=0.2, config=CONFIG)


@pytest.fixture(scope="module")
def stats(demos):
    return norm_stats_from_demonstrations(demos)


def _obs(demo, t):
    keys = ("agentview_image", "robot0_eye_in_hand_image", "robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos")
    return {k: demo[k][t] for k in keys}


# ------------------------------------------------------------------------------ norm stats
def test_norm_stats_match_numpy_and_floor_flat_dims(demos, stats):
    states = np.concatenate([[raw_state_from_env_obs(_obs(d, t)) for t in range(len(d["actions"]))] for d in demos])
    actions = np.concatenate([d["actions"] for d in demos])
    np.testing.assert_allclose(stats.state_mean, states.mean(0), atol=1e-5)
    np.testing.assert_allclose(stats.action_mean, actions.mean(0), atol=1e-5)
    np.testing.assert_allclose(stats.state_std[:2], states.std(0)[:2], rtol=1e-4)
    np.testing.assert_allclose(stats.action_q99[:2], np.quantile(actions, 0.99, axis=0)[:2], rtol=1e-4)
    # z, rotation, gripper never change in reach: floored instead of dividing by ~1e-6
    assert np.all(stats.state_std[2:] == np.float32(MIN_STD))
    assert np.all(stats.action_std[2:] == np.float32(MIN_STD))
    assert np.all(stats.action_q01[2:] < stats.action_mean[2:]) and np.all(stats.action_q99[2:] > stats.action_mean[2:])


def test_norm_stats_json_round_trip(tmp_path, stats):
    path = write_norm_stats_json(stats, tmp_path / "ns.json")
    raw = json.loads(path.read_text())
    assert set(raw) == {"state", "action"} and set(raw["state"]) == {"mean", "std", "q01", "q99"}
    loaded = load_norm_stats(path)
    for name in ("state_mean", "state_std", "action_mean", "action_std", "action_q01", "action_q99"):
        np.testing.assert_allclose(getattr(loaded, name), getattr(stats, name), atol=1e-6)


def test_bundled_reach_stats_load_and_fit_reach_rl_actions():
    ns = load_norm_stats(resolve_norm_stats_path("builtin:reach"))
    assert ns.state_dim == 8 and ns.action_dim == 7
    # expert moves are unit-length in dims 0..1 (max_speed scaled), gripper -1 (open)
    assert 0.5 < ns.action_std[0] < 0.9 and abs(ns.action_mean[6] + 1) < 1e-6


# ------------------------------------------------------------------------------- windows
def test_windows_have_the_optimizer_format_and_runner_conversions(demos, stats):
    demo = demos[0]
    windows = demonstration_windows([demo], stats, stride=10, action_mode="absolute")
    T = len(demo["actions"])
    assert [w.start_step for w in windows] == list(range(0, T, 10))
    for w in windows:
        assert isinstance(w, Window) and w.weight == 1.0 and w.prompt == demo["task_description"]
        # the observation at t converted exactly as the runner converts it
        pi0_obs, raw = env_obs_to_pi0_observation([_obs(demo, w.start_step)], [demo["task_description"]], stats)
        for slot, img in w.images.items():
            np.testing.assert_array_equal(img, pi0_obs[f"image.{slot}"][0])
        np.testing.assert_array_equal(w.state, pi0_obs["state"][0])
        # labels round-trip to the executed actions through the runner's forward transform
        n_real = int((~w.action_is_pad).sum())
        assert n_real == min(50, T - w.start_step)
        env_actions = model_chunk_to_env_actions(w.action[None], raw, stats, "absolute")[0]
        np.testing.assert_allclose(env_actions[:n_real], demo["actions"][w.start_step:w.start_step + n_real],
                                   atol=1e-5)
    batch = collate_windows(windows)
    assert batch["action"].shape == (len(windows), 50, 7) and batch["action_is_pad"].dtype == torch.bool
    assert batch["image.base_0_rgb"].dtype == torch.uint8 and batch["state"].shape == (len(windows), 8)


def test_stride_50_windows_equal_the_optimizers_aligned_windows(demos, stats):
    demo = max(demos, key=lambda d: len(d["actions"]))
    ours = demonstration_windows([demo], stats, stride=50, short_window="skip")
    episode = demo_to_episode(demo, stats, [], n_action_steps=50)
    episode.extra.clear()  # what a runner records: chunk-start observations only
    theirs, _ = cut_windows(episode, 1.0, stats, action_mode="absolute", short_window="skip")
    assert len(ours) == len(theirs) == len(demo["actions"]) // 50
    for a, b in zip(ours, theirs):
        np.testing.assert_array_equal(a.action, b.action)
        np.testing.assert_array_equal(a.images["base_0_rgb"], b.images["base_0_rgb"])


def test_short_window_skip_drops_the_tail_and_only_successful_filters(demos, stats):
    padded = demonstration_windows(demos, stats, stride=50, short_window="pad")
    skipped = demonstration_windows(demos, stats, stride=50, short_window="skip")
    assert all(not w.action_is_pad.any() for w in skipped)
    assert len(padded) > len(skipped)
    failed = [dict(demos[0], success=False)]
    with pytest.raises(ValueError, match="no SFT windows"):
        demonstration_windows(failed, stats, only_successful=True)


# ----------------------------------------------------------------------------------- SFT
@pytest.fixture(scope="module")
def tiny_policy_factory():
    from ript.algos.policies.pi0_oft_policy import PI0_OFT_Policy

    def make():
        torch.manual_seed(0)
        return PI0_OFT_Policy(device_id="cpu", norm_stats_path="builtin:reach", preset="tiny", dtype="float32",
                              freeze_vision_encoder=False)
    return make


def test_sft_is_deterministic_given_the_seed(demos, tiny_policy_factory):
    policy_a, policy_b = tiny_policy_factory(), tiny_policy_factory()
    windows = demonstration_windows(demos[:1], policy_a.norm_stats, stride=25)
    curve_a = sft_warm_start(policy_a, windows, num_steps=3, batch_size=2, seed=5, progress=False)
    curve_b = sft_warm_start(policy_b, windows, num_steps=3, batch_size=2, seed=5, progress=False)
    assert curve_a == curve_b and all(np.isfinite(curve_a))


def test_sft_with_image_augmentation_trains_on_augmented_frames_deterministically(demos, tiny_policy_factory,
                                                                                 monkeypatch):
    seen = []
    policy = tiny_policy_factory()
    real = policy.cfg_flow_losses
    monkeypatch.setattr(policy, "cfg_flow_losses", lambda batch, **kw: seen.append(batch) or real(batch, **kw))
    windows = demonstration_windows(demos[:1], policy.norm_stats, stride=25)
    curve = sft_warm_start(policy, windows, num_steps=2, batch_size=2, seed=5, progress=False, image_augmentation=True)
    clean = collate_windows(windows)
    for batch in seen:
        for key in ("image.base_0_rgb", "image.left_wrist_0_rgb"):
            assert batch[key].dtype == torch.uint8
            assert not any(torch.equal(frame, original) for frame in batch[key] for original in clean[key])
    again = tiny_policy_factory()
    assert sft_warm_start(again, windows, num_steps=2, batch_size=2, seed=5, progress=False,
                          image_augmentation=True) == curve


@pytest.mark.slow
def test_a_few_sft_steps_reduce_the_loss(demos, tiny_policy_factory):
    policy = tiny_policy_factory()
    windows = demonstration_windows(demos[:2], policy.norm_stats, stride=25)
    curve = sft_warm_start(policy, windows, num_steps=20, batch_size=2, lr=3e-3, warmup_steps=3, seed=0,
                           progress=False)
    assert np.mean(curve[-5:]) < 0.8 * np.mean(curve[:5]), curve
    # the unconditional branch is trained too (CFG needs it): its loss drops on the same data
    batch = collate_windows(windows[:4])
    batch.pop("weights")
    with torch.no_grad():
        out = policy.cfg_flow_losses(batch, noise=torch.zeros(4, 50, 32), time=torch.full((4,), 0.5))
    assert torch.isfinite(out["losses_uncond"]).all()


def test_sft_rejects_bad_arguments(tiny_policy_factory):
    with pytest.raises(ValueError):
        sft_warm_start(tiny_policy_factory(), [], num_steps=1)
