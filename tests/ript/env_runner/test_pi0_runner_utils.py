"""Spec tests for the pure-numpy PI0 <-> LIBERO conversions (docs/ARCHITECTURE.md, "Observation conventions")."""
from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest

from ript.env_runner.pi0_runner_utils import (
    NormStats, check_norm_stats_against_chunk, env_actions_to_model_chunk,
    env_obs_to_pi0_observation, load_norm_stats, model_chunk_to_env_actions, quat_to_axis_angle,
    resize_with_pad_like_openpi,
)


def _stats() -> NormStats:
    return NormStats(
        state_mean=np.arange(8, dtype=np.float32) * 0.1,
        state_std=np.full(8, 2.0, np.float32),
        action_mean=np.linspace(-0.3, 0.3, 7).astype(np.float32),
        action_std=np.full(7, 0.5, np.float32),
        action_q01=np.full(7, -1.0, np.float32),
        action_q99=np.full(7, 1.0, np.float32),
    )


def _env_obs(seed: int, h: int = 6, w: int = 4) -> dict:
    rng = np.random.default_rng(seed)
    half = math.sqrt(0.5)
    return {
        "agentview_image": rng.integers(0, 255, (h, w, 3), dtype=np.uint8),
        "robot0_eye_in_hand_image": rng.integers(0, 255, (h, w, 3), dtype=np.uint8),
        "robot0_eef_pos": np.array([0.1, -0.2, 0.9]),
        "robot0_eef_quat": np.array([0.0, 0.0, half, half]),  # 90 deg about z, xyzw
        "robot0_gripper_qpos": np.array([0.03, -0.03]),
    }


# ---------------------------------------------------------------- quaternions
def test_quat_90_deg_about_z():
    # q = (axis * sin(theta/2), cos(theta/2)) with theta = pi/2 -> axis-angle (0, 0, pi/2).
    half = math.sqrt(0.5)
    np.testing.assert_allclose(quat_to_axis_angle([0, 0, half, half]), [0, 0, math.pi / 2], atol=1e-6)


def test_quat_180_deg_about_x_and_identity_edge_cases():
    np.testing.assert_allclose(quat_to_axis_angle([1.0, 0, 0, 0]), [math.pi, 0, 0], atol=1e-6)
    # w = +1 and w = -1 both have sqrt(1 - w^2) = 0: robosuite returns the zero vector.
    np.testing.assert_array_equal(quat_to_axis_angle([0, 0, 0, 1.0]), np.zeros(3))
    np.testing.assert_array_equal(quat_to_axis_angle([0, 0, 0, -1.0]), np.zeros(3))
    # w slightly above 1 from float noise is clipped, not NaN.
    assert np.all(np.isfinite(quat_to_axis_angle([0, 0, 0, 1.0 + 1e-9])))


def test_quat_batched_matches_robosuite_formula():
    rng = np.random.default_rng(0)
    q = rng.normal(size=(5, 4))
    q /= np.linalg.norm(q, axis=-1, keepdims=True)
    out = quat_to_axis_angle(q)
    for qi, oi in zip(q, out):  # robosuite: xyz * 2 acos(w) / sqrt(1 - w^2)
        expect = qi[:3] * 2 * math.acos(qi[3]) / math.sqrt(1 - qi[3] ** 2)
        np.testing.assert_allclose(oi, expect, rtol=1e-5)


# ---------------------------------------------------------------- observations
def test_env_obs_mapping_rotation_channel_first_and_state():
    stats = _stats()
    obs = [_env_obs(0), _env_obs(1)]
    pi0_obs, raw = env_obs_to_pi0_observation(obs, ["open the drawer", "open the drawer"], stats)
    assert set(pi0_obs) == {"image.base_0_rgb", "image.left_wrist_0_rgb", "state", "prompt"}
    base, wrist = pi0_obs["image.base_0_rgb"], pi0_obs["image.left_wrist_0_rgb"]
    assert base.shape == (2, 3, 6, 4) and base.dtype == np.uint8
    for b in range(2):
        # 180 deg rotation = flip both spatial axes; then HWC -> CHW.
        np.testing.assert_array_equal(base[b], obs[b]["agentview_image"][::-1, ::-1].transpose(2, 0, 1))
        np.testing.assert_array_equal(wrist[b], obs[b]["robot0_eye_in_hand_image"][::-1, ::-1].transpose(2, 0, 1))
    # pixel (0, 0) of the rotated image is the original's bottom-right pixel
    np.testing.assert_array_equal(base[0, :, 0, 0], obs[0]["agentview_image"][-1, -1])
    expect_raw = [0.1, -0.2, 0.9, 0.0, 0.0, math.pi / 2, 0.03, -0.03]
    np.testing.assert_allclose(raw[0], expect_raw, atol=1e-6)
    assert raw.shape == (2, 8) and raw.dtype == np.float32
    np.testing.assert_allclose(pi0_obs["state"][0], (np.array(expect_raw) - stats.state_mean) / (2.0 + 1e-6), atol=1e-6)
    assert pi0_obs["prompt"] == ["open the drawer", "open the drawer"]


def test_env_obs_without_rotation_keeps_orientation():
    obs = [_env_obs(3)]
    pi0_obs, _ = env_obs_to_pi0_observation(obs, ["t"], _stats(), rotate_180=False)
    np.testing.assert_array_equal(pi0_obs["image.base_0_rgb"][0], obs[0]["agentview_image"].transpose(2, 0, 1))


def test_env_obs_errors_name_the_field():
    bad = _env_obs(0)
    bad["agentview_image"] = bad["agentview_image"].astype(np.float32)
    with pytest.raises(ValueError, match="agentview_image"):
        env_obs_to_pi0_observation([bad], ["t"], _stats())
    missing = _env_obs(0)
    del missing["robot0_gripper_qpos"]
    with pytest.raises(KeyError, match="robot0_gripper_qpos"):
        env_obs_to_pi0_observation([missing], ["t"], _stats())
    nan = _env_obs(0)
    nan["robot0_eef_pos"] = np.array([np.nan, 0, 0])
    with pytest.raises(ValueError, match="robot0_eef_pos"):
        env_obs_to_pi0_observation([nan], ["t"], _stats())


# ---------------------------------------------------------------- openpi's image resize
def _pil_bilinear(img: np.ndarray, width: int, height: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(np.ascontiguousarray(img)).resize((width, height), Image.BILINEAR))


def test_resize_downscales_with_antialiasing_like_pil():
    # A one-pixel checkerboard averages to mid-grey when downscaled with antialiasing; a plain
    # bilinear (PI0's own tensor resize) samples it and keeps strong aliasing stripes.
    board = ((np.indices((256, 256)).sum(axis=0) % 2) * 255).astype(np.uint8)
    img = np.repeat(board[..., None], 3, axis=-1)
    out = resize_with_pad_like_openpi(img, 224)
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, _pil_bilinear(img, 224, 224))
    assert out[8:-8, 8:-8].std() < 30  # antialiased; PI0's plain bilinear gives std 41 here


def test_resize_pads_non_square_frames_centred_in_black():
    rng = np.random.default_rng(5)
    wide = rng.integers(1, 255, (128, 256, 3), dtype=np.uint8)  # no zero pixels: padding is visible
    out = resize_with_pad_like_openpi(wide, 224)
    assert out.shape == (224, 224, 3)
    # ratio 256/224: content 112 x 224, 56 black rows above and below.
    np.testing.assert_array_equal(out[:56], 0)
    np.testing.assert_array_equal(out[168:], 0)
    np.testing.assert_array_equal(out[56:168], _pil_bilinear(wide, 224, 112))
    tall = resize_with_pad_like_openpi(wide.transpose(1, 0, 2), 56)  # 256 x 128 -> 56 x 28 + 14 each side
    np.testing.assert_array_equal(tall[:, :14], 0)
    np.testing.assert_array_equal(tall[:, 42:], 0)
    assert tall[:, 14:42].min() > 0


def test_resize_is_a_no_op_at_the_target_size():
    img = np.random.default_rng(6).integers(0, 255, (224, 224, 3), dtype=np.uint8)
    np.testing.assert_array_equal(resize_with_pad_like_openpi(img, 224), img)


def test_env_obs_resized_after_the_flip_to_the_policy_size():
    obs = [_env_obs(7, h=64, w=64)]
    pi0_obs, _ = env_obs_to_pi0_observation(obs, ["t"], _stats(), image_size=56)
    base = pi0_obs["image.base_0_rgb"]
    assert base.shape == (1, 3, 56, 56) and base.dtype == np.uint8
    flipped = obs[0]["agentview_image"][::-1, ::-1]
    np.testing.assert_array_equal(base[0], _pil_bilinear(flipped, 56, 56).transpose(2, 0, 1))
    with pytest.raises(ValueError, match="image_size"):
        env_obs_to_pi0_observation(obs, ["t"], _stats(), image_size=0)


# ---------------------------------------------------------------- normalisation / actions
def test_normalisation_round_trip_and_formula():
    stats = _stats()
    x = np.random.default_rng(0).normal(size=(3, 8)).astype(np.float32)
    np.testing.assert_allclose(stats.unnormalize_state(stats.normalize_state(x)), x, atol=1e-5)
    a = np.random.default_rng(1).normal(size=(2, 50, 7)).astype(np.float32)
    np.testing.assert_allclose(stats.unnormalize_action(stats.normalize_action(a)), a, atol=1e-5)
    # (x - mean) / (std + 1e-6): action dim 0 has mean -0.3, std 0.5 -> (0.2 + 0.3) / 0.500001
    np.testing.assert_allclose(stats.normalize_action(np.full(7, 0.2))[0], 0.5 / 0.500001, rtol=1e-6)


def test_relative_actions_add_chunk_start_state_except_gripper():
    stats = _stats()
    chunk = np.zeros((1, 50, 7), np.float32)  # normalised 0 = the action mean
    state = np.array([[1, 2, 3, 4, 5, 6, 0.04, -0.04]], np.float32)
    env = model_chunk_to_env_actions(chunk, state, stats, "relative")
    np.testing.assert_allclose(env[0, :, :6], np.broadcast_to(stats.action_mean[:6] + state[0, :6], (50, 6)), atol=1e-6)
    np.testing.assert_allclose(env[0, :, 6], stats.action_mean[6], atol=1e-6)  # gripper absolute
    absolute = model_chunk_to_env_actions(chunk, state, stats, "absolute")
    np.testing.assert_allclose(absolute[0], np.broadcast_to(stats.action_mean, (50, 7)), atol=1e-6)


@pytest.mark.parametrize("mode", ["relative", "absolute"])
def test_action_round_trip(mode):
    stats = _stats()
    rng = np.random.default_rng(2)
    chunk = rng.normal(size=(3, 50, 7)).astype(np.float32)
    state = rng.normal(size=(3, 8)).astype(np.float32)
    env = model_chunk_to_env_actions(chunk, state, stats, mode)
    np.testing.assert_allclose(env_actions_to_model_chunk(env, state, stats, mode), chunk, atol=1e-4)


def test_unknown_action_mode_is_an_error():
    with pytest.raises(ValueError, match="action_mode"):
        model_chunk_to_env_actions(np.zeros((1, 50, 7)), np.zeros((1, 8)), _stats(), "delta")


# ---------------------------------------------------------------- norm stats files
def _write(tmp_path, payload, name="norm_stats.json"):
    path = tmp_path / name
    path.write_text(json.dumps(payload))
    return path


def _group(dim, offset=0.0, quantiles=False):
    g = {"mean": [offset + i for i in range(dim)], "std": [1.0 + i for i in range(dim)]}
    if quantiles:
        g.update(q01=[-5.0] * dim, q99=[5.0] * dim)
    return g


def test_load_openpi_nested_layout_is_sliced(tmp_path):
    # openpi pads state/actions to 32 dims; only the first 8 / 7 are real.
    path = _write(tmp_path, {"norm_stats": {"state": _group(32, quantiles=True), "actions": _group(32, 100.0)}})
    stats = load_norm_stats(path)
    assert stats.state_mean.shape == (8,) and stats.action_mean.shape == (7,)
    np.testing.assert_array_equal(stats.action_mean, 100.0 + np.arange(7))
    np.testing.assert_array_equal(stats.state_q99, [5.0] * 8)
    assert stats.action_q01 is None


def test_load_flat_layout_with_action_key(tmp_path):
    stats = load_norm_stats(_write(tmp_path, {"state": _group(8), "action": _group(7)}))
    np.testing.assert_array_equal(stats.action_std, 1.0 + np.arange(7))


def test_load_shared_libero_fixture(fixtures_dir):
    stats = load_norm_stats(fixtures_dir / "libero_norm_stats_flat.json")
    assert stats.state_dim == 8 and stats.action_dim == 7
    assert stats.action_q01 is not None and np.all(stats.action_q01 <= stats.action_q99)
    assert np.all(stats.state_std > 0)


def test_missing_file_and_keys_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_norm_stats(tmp_path / "nope.json")
    with pytest.raises(KeyError, match="'actions'"):
        load_norm_stats(_write(tmp_path, {"state": _group(8)}))
    with pytest.raises(KeyError, match="'state'"):
        load_norm_stats(_write(tmp_path, {"actions": _group(7)}))
    no_std = {"state": {"mean": [0.0] * 8}, "actions": _group(7)}
    with pytest.raises(KeyError, match="state.std"):
        load_norm_stats(_write(tmp_path, no_std))
    with pytest.raises(ValueError, match="actions.mean.*5 dims"):
        load_norm_stats(_write(tmp_path, {"state": _group(8), "actions": _group(5)}))
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match="broken.json"):
        load_norm_stats(tmp_path / "broken.json")


def test_non_finite_statistics_are_refused_but_padding_past_the_used_dims_is_not_read(tmp_path):
    action = _group(7)
    action["std"][2] = float("nan")
    with pytest.raises(ValueError, match=r"'action.std' holds NaN or inf at dims \[2\]"):
        load_norm_stats(_write(tmp_path, {"state": _group(8), "action": action}))
    padded = _group(32)
    padded["mean"][20] = float("inf")  # openpi pads to 32 dims; only the first 8 are used
    assert load_norm_stats(_write(tmp_path, {"state": padded, "action": _group(7)})).state_dim == 8


# ---------------------------------------------------------------- start-up sanity check
def test_norm_stats_check_passes_in_range_and_warns_out_of_range(caplog):
    stats = _stats()  # q01 = -1, q99 = 1 for every action dim
    assert check_norm_stats_against_chunk(stats, np.full((2, 50, 7), 0.5)) is None
    with caplog.at_level(logging.WARNING):
        msg = check_norm_stats_against_chunk(stats, np.full((2, 50, 7), 3.0))
    assert msg is not None and "NORM STATS MISMATCH" in msg and "q01..q99" in msg
    assert any("NORM STATS MISMATCH" in r.message for r in caplog.records)


def test_norm_stats_check_falls_back_to_std_and_checks_dims():
    stats = _stats()
    stats.action_q01 = stats.action_q99 = None
    # mean +- 4 std = mean +- 2.0: a value of mean + 1 is inside, mean + 3 outside.
    assert check_norm_stats_against_chunk(stats, stats.action_mean + np.ones((1, 50, 7))) is None
    assert "mean +- 4 std" in check_norm_stats_against_chunk(stats, stats.action_mean + 3 * np.ones((1, 50, 7)))
    assert "dims disagree" in check_norm_stats_against_chunk(stats, np.zeros((1, 50, 6)))
