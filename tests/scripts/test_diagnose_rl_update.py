"""scripts/diagnose_rl_update.py: the pure helpers (the LIBERO run itself is a manual diagnostic)."""
from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="module")
def diag(script_loader):
    return script_loader("diagnose_rl_update")


def _obs(seed: int = 0):
    rng = np.random.default_rng(seed)
    images = {s: rng.integers(0, 256, (3, 8, 8), dtype=np.uint8) for s in ("base_0_rgb", "left_wrist_0_rgb")}
    return images, rng.standard_normal(8).astype(np.float32), "pick up the ketchup"


def test_observation_diffs_identical_and_each_kind_of_difference(diag):
    images, state, prompt = _obs()
    same = diag.observation_diffs(images, state, prompt, {k: v.copy() for k, v in images.items()}, state.copy(), prompt)
    assert same == {"image_max_abs": 0.0, "state_max_abs": 0.0, "prompt_equal": True, "identical": True}
    other = {k: v.copy() for k, v in images.items()}
    other["base_0_rgb"][0, 0, 0] ^= 3  # uint8 differences must not wrap around
    d = diag.observation_diffs(images, state, prompt, other, state, prompt)
    assert not d["identical"] and d["image_max_abs"] == abs(int(images["base_0_rgb"][0, 0, 0]) - int(other["base_0_rgb"][0, 0, 0]))
    d = diag.observation_diffs(images, state, prompt, images, state + np.float32(1e-7), prompt)
    assert not d["identical"] and 0 < d["state_max_abs"] < 1e-6
    d = diag.observation_diffs(images, state, prompt, images, state, prompt + " ")
    assert not d["identical"] and not d["prompt_equal"]
    d = diag.observation_diffs(images, state, prompt, {"base_0_rgb": images["base_0_rgb"]}, state, prompt)
    assert d["image_max_abs"] == float("inf")


def test_clip_label_changes_counts_only_real_steps(diag):
    labels = np.zeros((1, 4, 7), np.float32)
    labels[0, :, 6] = [0.3, -0.2, 0.7, 5.0]  # last step is padding: never counted
    clipped = labels.copy()
    clipped[0, :, 6] = [0.78, 0.1, 0.7, -9.0]  # moved 0.48 (no), flipped sign 0.3 (no), unchanged
    clipped[0, 0, 1] = 0.25  # one arm entry changed by 0.25
    is_pad = np.array([[False, False, False, True]])
    out = diag.clip_label_changes(labels, clipped, is_pad)
    assert out["gripper_moved_gt_0.5"] == 0.0
    assert out["gripper_sign_flip"] == pytest.approx(1 / 3)
    assert out["gripper_mean_abs_change"] == pytest.approx((0.48 + 0.3 + 0.0) / 3, abs=1e-6)
    assert out["arm_changed_frac"] == pytest.approx(1 / 18)
    assert out["arm_max_abs_change"] == pytest.approx(0.25)
    clipped[0, 1, 6] = 0.9  # moved 1.1 and flipped
    out = diag.clip_label_changes(labels, clipped, is_pad)
    assert out["gripper_moved_gt_0.5"] == pytest.approx(1 / 3)


def test_sample_spread_and_drift_ratio(diag):
    samples = np.stack([np.full((2, 3), v) for v in (0.0, 2.0)])  # (M=2, H, A): std 1 everywhere
    assert diag.sample_spread(samples) == pytest.approx(1.0)
    assert diag.sample_spread(samples[:1]) == 0.0
    before = np.zeros((2, 5, 2, 3))
    out = diag.drift_ratio(before, before + 0.5, spread=0.25)
    assert out == {"rms_change": pytest.approx(0.5), "spread": 0.25, "ratio": pytest.approx(2.0)}
    assert diag.drift_ratio(before, before, 0.0)["ratio"] == float("inf")
