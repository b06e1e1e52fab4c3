"""Hand-derived tests of the pure CFG-Flow maths (RLOO, weights, windows, loss)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cfg_flow_test_utils import H, make_episode, make_norm_stats
from ript.algos.rl_optimizers.cfg_flow_math import (
    STEP_OBSERVATIONS_KEY,
    advantage_weights,
    collate_windows,
    cut_windows,
    draw_noise_time,
    masked_window_mse,
    rloo_advantages,
    weighted_cfg_flow_loss,
)
from ript.env_runner.pi0_runner_utils import env_actions_to_model_chunk
from ript.types import Episode


# ---------------------------------------------------------------------------------- RLOO
def test_rloo_k4_hand_values():
    # K=4, r=[1,0,0,1], S=2. adv_i = r_i - (S - r_i)/3:
    #   r=1: 1 - 1/3 = 2/3 ;  r=0: 0 - 2/3 = -2/3
    adv = rloo_advantages([1.0, 0.0, 0.0, 1.0], rloo_batch_size=4)
    torch.testing.assert_close(adv, torch.tensor([2 / 3, -2 / 3, -2 / 3, 2 / 3]))


def test_rloo_groups_are_independent():
    # Two init states with K=2: [1,0] -> [1-0, 0-1] = [1,-1]; [1,1] -> [1-1, 1-1] = [0,0].
    adv = rloo_advantages(torch.tensor([1.0, 0.0, 1.0, 1.0]), rloo_batch_size=2)
    torch.testing.assert_close(adv, torch.tensor([1.0, -1.0, 0.0, 0.0]))


def test_rloo_valid_mask():
    # Group 1 (K=4): valid [T,T,T,F], r=[1,0,1,(9 padding)] -> n=3, S=2 (padding reward ignored):
    #   r=1: 1 - (2-1)/2 = 0.5 ; r=0: 0 - 2/2 = -1 ; padding: 0.
    # Group 2: only one valid rollout -> no leave-one-out baseline -> all 0.
    rewards = [1.0, 0.0, 1.0, 9.0, 1.0, 0.0, 0.0, 0.0]
    valid = [True, True, True, False, True, False, False, False]
    adv = rloo_advantages(rewards, 4, valid)
    torch.testing.assert_close(adv, torch.tensor([0.5, -1.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0]))


def test_rloo_errors():
    with pytest.raises(ValueError, match="rloo_batch_size"):
        rloo_advantages([1.0, 0.0], 1)
    with pytest.raises(ValueError, match="whole number of groups"):
        rloo_advantages([1.0, 0.0, 1.0], 2)


def test_rloo_all_equal_rewards_give_zero():
    # Every r_i equals the mean of the others -> adv = 0 exactly.
    assert torch.equal(rloo_advantages([1.0] * 8, 4), torch.zeros(8))
    assert torch.equal(rloo_advantages([0.0] * 8, 4), torch.zeros(8))


# ------------------------------------------------------------------------------- weights
ADV = torch.tensor([2 / 3, -2 / 3, -2 / 3, 2 / 3])


def test_weights_clip():
    # clip: w = clip(adv/T, 0, a_max); negatives -> 0.
    torch.testing.assert_close(advantage_weights(ADV, "clip"), torch.tensor([2 / 3, 0, 0, 2 / 3]))
    # T = 0.5 -> adv/T = 4/3.
    torch.testing.assert_close(advantage_weights(ADV, "clip", temperature=0.5), torch.tensor([4 / 3, 0, 0, 4 / 3]))
    # a_max = 1 caps 4/3 to 1.
    torch.testing.assert_close(advantage_weights(ADV, "clip", a_max=1.0, temperature=0.5),
                               torch.tensor([1.0, 0, 0, 1.0]))
    # K=4 rewards [10,0,0,0]: adv_0 = 10 - 0 = 10 -> clipped to a_max=5; others 0 - 10/3 < 0 -> 0.
    adv = rloo_advantages([10.0, 0.0, 0.0, 0.0], 4)
    torch.testing.assert_close(advantage_weights(adv, "clip", a_max=5.0), torch.tensor([5.0, 0, 0, 0]))


def test_weights_std_normalized():
    # Population std of [2/3,-2/3,-2/3,2/3] is 2/3 -> adv/std = [1,-1,-1,1] -> w = [1,0,0,1];
    # with T=2 -> [0.5, 0, 0, 0.5].
    torch.testing.assert_close(advantage_weights(ADV, "std_normalized"), torch.tensor([1.0, 0, 0, 1.0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(advantage_weights(ADV, "std_normalized", temperature=2.0),
                               torch.tensor([0.5, 0, 0, 0.5]), atol=1e-6, rtol=0)


def test_weights_binary_and_exp():
    torch.testing.assert_close(advantage_weights(ADV, "binary"), torch.tensor([1.0, 0, 0, 1.0]))
    # exp: e^(2/3) = 1.94773...; negatives 0.
    e = math.exp(2 / 3)
    torch.testing.assert_close(advantage_weights(ADV, "exp"), torch.tensor([e, 0, 0, e]))
    # Huge advantages: no overflow, capped at a_max.
    torch.testing.assert_close(advantage_weights(torch.tensor([1e4, -1e4]), "exp", a_max=3.0), torch.tensor([3.0, 0.0]))


def test_weights_signed_keep_the_failures_negative_and_sum_to_zero_per_group():
    # signed: w = clip(adv/T, -a_max, a_max); failures weigh against, so a group's weights cancel.
    torch.testing.assert_close(advantage_weights(ADV, "signed"), ADV)
    torch.testing.assert_close(advantage_weights(ADV, "signed", temperature=0.5, a_max=1.0),
                               torch.tensor([1.0, -1.0, -1.0, 1.0]))
    adv = rloo_advantages([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0], 4)  # two groups of K 4
    w = advantage_weights(adv, "signed")
    assert (w[[1, 2, 3, 7]] < 0).all() and (w[[0, 4, 5, 6]] > 0).all()
    torch.testing.assert_close(w.view(2, 4).sum(dim=1), torch.zeros(2), atol=1e-6, rtol=0)
    # Invalid (padding) episodes weigh nothing either way.
    w = advantage_weights(ADV, "signed", valid_mask=torch.tensor([True, False, True, True]))
    torch.testing.assert_close(w, torch.tensor([2 / 3, 0, -2 / 3, 2 / 3]))


@pytest.mark.parametrize("mode", ["clip", "std_normalized", "binary", "exp", "signed"])
def test_weights_all_equal_rewards_are_zero_and_finite(mode):
    adv = rloo_advantages([1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0], 4)  # all zero
    w = advantage_weights(adv, mode)
    assert torch.equal(w, torch.zeros(8))


def test_weights_invalid_entries_and_errors():
    w = advantage_weights(ADV, "clip", valid_mask=torch.tensor([False, True, True, True]))
    torch.testing.assert_close(w, torch.tensor([0.0, 0, 0, 2 / 3]))
    with pytest.raises(ValueError, match="weight_mode"):
        advantage_weights(ADV, "clipp")
    with pytest.raises(ValueError, match="a_max"):
        advantage_weights(ADV, "clip", a_max=0.0)
    with pytest.raises(ValueError, match="temperature"):
        advantage_weights(ADV, "clip", temperature=0.0)


# ------------------------------------------------------------------------------- windows
@pytest.mark.parametrize("action_mode", ["relative", "absolute"])
def test_aligned_window_labels_equal_sampled_chunks(action_mode):
    # 120 steps: chunks start at 0, 50, 100; the episode succeeded at step 120 (third chunk cut
    # after 20 of its 50 steps). Labels rebuilt from executed actions + chunk-start raw state
    # must reproduce the sampled normalised chunks; the short third window is skipped.
    ns = make_norm_stats()
    ep = make_episode(120, ns, action_mode=action_mode, seed=3)
    windows, skipped = cut_windows(ep, 0.7, ns, action_mode=action_mode, episode_index=5)
    assert [w.start_step for w in windows] == [0, 50] and skipped == 1
    for c, w in enumerate(windows):
        np.testing.assert_allclose(w.action, ep.sampled_chunks[c], atol=2e-5)
        assert not w.action_is_pad.any() and w.action.shape == (H, 7)
        np.testing.assert_array_equal(w.state, ep.chunk_observations[c].state)
        np.testing.assert_array_equal(w.images["base_0_rgb"], ep.chunk_observations[c].images["base_0_rgb"])
        assert w.weight == 0.7 and w.prompt == "do task_a" and w.episode_index == 5


def test_short_window_pad_mode():
    ns = make_norm_stats()
    ep = make_episode(120, ns, seed=4)
    windows, skipped = cut_windows(ep, 1.0, ns, short_window="pad")
    assert [w.start_step for w in windows] == [0, 50, 100] and skipped == 0
    last = windows[-1]
    # 20 executed steps are real labels; the other 30 are padding.
    np.testing.assert_array_equal(last.action_is_pad, np.arange(H) >= 20)
    np.testing.assert_allclose(last.action[:20], ep.sampled_chunks[2][:20], atol=2e-5)
    np.testing.assert_array_equal(last.action[20:], np.repeat(last.action[19:20], 30, axis=0))


def test_last_window_mode():
    ns = make_norm_stats()
    ep = make_episode(120, ns, seed=5)
    (w,), skipped = cut_windows(ep, 1.0, ns, window_mode="last")
    assert w.start_step == 50 and skipped == 1  # the last *full* window
    (w,), _ = cut_windows(ep, 1.0, ns, window_mode="last", short_window="pad")
    assert w.start_step == 100


def test_first_window_mode_keeps_only_the_episodes_first_chunk():
    ns = make_norm_stats()
    ep = make_episode(200, ns, seed=8)  # chunks at 0, 50, 100, 150
    (w,), skipped = cut_windows(ep, 0.5, ns, window_mode="first")
    assert w.start_step == 0 and skipped == 0 and w.weight == 0.5
    # The window kept is the aligned one, observation and labels alike.
    aligned = cut_windows(ep, 0.5, ns)[0][0]
    np.testing.assert_array_equal(w.action, aligned.action)
    np.testing.assert_array_equal(w.images["base_0_rgb"], ep.chunk_observations[0].images["base_0_rgb"])
    # credit_windows="first" keeps every window but credits the same first one alone.
    credited = cut_windows(ep, 0.5, ns, credit_windows="first")[0]
    assert [(c.start_step, c.weight, c.credited) for c in credited] == [
        (0, 0.5, True), (50, 0.0, False), (100, 0.0, False), (150, 0.0, False)]
    # An episode shorter than one chunk: skipped, or padded under short_window="pad".
    short = make_episode(30, ns, seed=9)
    assert cut_windows(short, 1.0, ns, window_mode="first") == ([], 1)
    (padded,), _ = cut_windows(short, 1.0, ns, window_mode="first", short_window="pad")
    assert padded.start_step == 0


def test_gripper_window_mode_keeps_the_windows_where_the_gripper_switches():
    ns = make_norm_stats()
    ep = make_episode(200, ns, seed=7)  # chunks at 0, 50, 100, 150
    gripper = np.full(200, -1.0, dtype=np.float32)  # open ...
    gripper[70:170] = 1.0  # ... grasp at step 70 (window 50), release at step 170 (window 150)
    ep.actions[:, -1] = gripper
    windows, _ = cut_windows(ep, 1.0, ns, window_mode="gripper")
    assert [w.start_step for w in windows] == [50, 150]
    # A switch right at a chunk start (step 99 open, step 100 closed) belongs to the window it starts.
    gripper[:] = -1.0
    gripper[100:] = 1.0
    ep.actions[:, -1] = gripper
    assert [w.start_step for w in cut_windows(ep, 1.0, ns, window_mode="gripper")[0]] == [100]
    # The windows kept are the aligned ones, labels and all.
    aligned = {w.start_step: w for w in cut_windows(ep, 1.0, ns)[0]}
    np.testing.assert_array_equal(cut_windows(ep, 1.0, ns, window_mode="gripper")[0][0].action, aligned[100].action)
    # No switch (a failure that never closed): no window.
    ep.actions[:, -1] = -1.0
    assert cut_windows(ep, 1.0, ns, window_mode="gripper") == ([], 0)


def test_stride_needs_step_observations():
    ns = make_norm_stats()
    ep = make_episode(120, ns, seed=6)
    with pytest.raises(ValueError, match=STEP_OBSERVATIONS_KEY):
        cut_windows(ep, 1.0, ns, window_mode="stride", window_stride=10)
    # A stride that is a multiple of the chunk length only hits chunk starts: no extra data needed.
    windows, skipped = cut_windows(ep, 1.0, ns, window_mode="stride", window_stride=100)
    assert [w.start_step for w in windows] == [0] and skipped == 1
    # aligned windows are the chunks: any other stride is a contradiction.
    with pytest.raises(ValueError, match="window_stride"):
        cut_windows(ep, 1.0, ns, window_mode="aligned", window_stride=10)


def test_stride_with_step_observations_uses_state_at_t():
    # Window at t=10 starts mid-chunk: its labels are the executed actions [10, 60) made relative
    # to the raw state observed at step 10 (not the chunk start), then normalised.
    ns = make_norm_stats()
    ep = make_episode(120, ns, seed=7, step_observations=True)
    windows, skipped = cut_windows(ep, 1.0, ns, window_mode="stride", window_stride=10)
    # starts 0..110 step 10; full windows need t <= 70 -> 8 kept, 4 skipped.
    assert [w.start_step for w in windows] == list(range(0, 80, 10)) and skipped == 4
    w10 = windows[1]
    obs10 = ep.extra[STEP_OBSERVATIONS_KEY][10]
    expected = ns.normalize_action(ep.actions[10:60] - np.concatenate([obs10.raw_state[:6], [0.0]]))
    np.testing.assert_allclose(w10.action, expected, atol=1e-5)
    np.testing.assert_array_equal(w10.state, obs10.state)
    # t=0 and t=50 are chunk starts -> equal the sampled chunks.
    np.testing.assert_allclose(windows[5].action, ep.sampled_chunks[1], atol=2e-5)


def test_invalid_episode_and_literal_errors():
    ns = make_norm_stats()
    assert cut_windows(Episode.padding(), 1.0, ns) == ([], 0)
    ep = make_episode(100, ns)
    with pytest.raises(ValueError, match="short_window"):
        cut_windows(ep, 1.0, ns, short_window="drop")
    with pytest.raises(ValueError, match="window_mode"):
        cut_windows(ep, 1.0, ns, window_mode="sliding")


def test_env_actions_to_model_chunk_is_the_documented_inverse():
    # Relative: subtract state[:6] from dims 0..5 (gripper absolute), then (x-mean)/(std+1e-6).
    ns = make_norm_stats()
    acts = np.ones((1, 2, 7), np.float32)
    state = np.arange(8, dtype=np.float32)[None]
    got = env_actions_to_model_chunk(acts, state, ns, "relative")[0]
    want = (np.array([1 - 0, 1 - 1, 1 - 2, 1 - 3, 1 - 4, 1 - 5, 1]) - ns.action_mean) / (ns.action_std + 1e-6)
    np.testing.assert_allclose(got, np.stack([want, want]), rtol=1e-6)


def test_collate_windows():
    ns = make_norm_stats()
    windows, _ = cut_windows(make_episode(120, ns, seed=8), 0.25, ns, short_window="pad")
    b = collate_windows(windows)
    assert b["image.base_0_rgb"].dtype == torch.uint8 and b["image.base_0_rgb"].shape == (3, 3, 4, 4)
    assert b["image.left_wrist_0_rgb"].shape == (3, 3, 4, 4)
    assert b["state"].shape == (3, 8) and b["state"].dtype == torch.float32
    assert b["prompt"] == ["do task_a"] * 3
    assert b["action"].shape == (3, H, 7) and b["action_is_pad"].dtype == torch.bool
    torch.testing.assert_close(b["weights"], torch.full((3,), 0.25))
    with pytest.raises(ValueError):
        collate_windows([])


# ---------------------------------------------------------------------------------- loss
def test_loss_hand_values():
    # Two windows; L_pos = 2 and L_uncond = 4 everywhere; w = [3, 0], alpha = 0.1:
    #   window 0: 3*2 + 0.1*4 = 6.4 ; window 1: 0*2 + 0.1*4 = 0.4 ; mean = 3.4.
    lp, lu = torch.full((2, H, 7), 2.0), torch.full((2, H, 7), 4.0)
    pad = torch.zeros(2, H, dtype=torch.bool)
    loss, m = weighted_cfg_flow_loss(lp, lu, torch.tensor([3.0, 0.0]), pad, 0.1)
    assert loss.item() == pytest.approx(3.4)
    assert m["fm_loss"] == pytest.approx(3.4)
    assert m["fm_loss_pos"] == pytest.approx(3.0)  # mean of w*L_pos = (6 + 0)/2
    assert m["fm_loss_pos_unweighted"] == pytest.approx(2.0)
    assert m["fm_loss_uncond"] == pytest.approx(4.0)
    assert m["positive_window_ratio"] == pytest.approx(0.5) and m["num_windows"] == 2
    # normalizer: the same sum divided by 4 (the window count of a bigger optimisation step).
    loss4, _ = weighted_cfg_flow_loss(lp, lu, torch.tensor([3.0, 0.0]), pad, 0.1, normalizer=4)
    assert loss4.item() == pytest.approx(6.8 / 4)


def test_loss_ignores_padding_steps_and_dims():
    g = torch.Generator().manual_seed(0)
    lp, lu = torch.rand(3, H, 7, generator=g), torch.rand(3, H, 7, generator=g)
    pad = torch.zeros(3, H, dtype=torch.bool)
    pad[2, 20:] = True
    w = torch.tensor([1.0, 0.5, 2.0])
    base, _ = weighted_cfg_flow_loss(lp, lu, w, pad)
    lp2, lu2 = lp.clone(), lu.clone()
    lp2[2, 20:] = float("inf")  # whatever the padded labels did to the padded steps
    lu2[2, 20:] = 123.0
    moved, _ = weighted_cfg_flow_loss(lp2, lu2, w, pad)
    assert moved.item() == base.item()
    # Extra (padding) action dims beyond 7 are ignored too.
    wide = torch.cat([lp, torch.full((3, H, 25), 1e6)], dim=-1)  # (3, H, 32)
    assert weighted_cfg_flow_loss(wide, lu, w, pad)[0].item() == pytest.approx(base.item())
    # Per-window MSE of the padded window averages over its 20 real steps only.
    assert masked_window_mse(lp, pad)[2].item() == pytest.approx(lp[2, :20].mean().item(), rel=1e-6)


def test_loss_equals_manual_recomputation_and_splits_additively():
    g = torch.Generator().manual_seed(1)
    n = 6
    lp, lu = torch.rand(n, H, 7, generator=g), torch.rand(n, H, 7, generator=g)
    pad = torch.rand(n, H, generator=g) > 0.8
    w = torch.tensor([0.0, 1.0, 5.0, 0.3, 0.0, 2.0])
    alpha = 0.1
    loss, _ = weighted_cfg_flow_loss(lp, lu, w, pad, alpha)
    manual = 0.0
    for i in range(n):
        keep = ~pad[i]
        manual += w[i] * lp[i][keep].mean() + alpha * lu[i][keep].mean()
    torch.testing.assert_close(loss, manual / n)
    # Micro-batching with the step's window count as normaliser sums to the big-batch loss.
    a, _ = weighted_cfg_flow_loss(lp[:4], lu[:4], w[:4], pad[:4], alpha, normalizer=n)
    b, _ = weighted_cfg_flow_loss(lp[4:], lu[4:], w[4:], pad[4:], alpha, normalizer=n)
    torch.testing.assert_close(a + b, loss)


def test_all_equal_rewards_zero_positive_loss():
    adv = rloo_advantages([1.0] * 4, 4)
    w = advantage_weights(adv, "clip")
    lp, lu = torch.rand(4, H, 7), torch.rand(4, H, 7)
    loss, m = weighted_cfg_flow_loss(lp, lu, w, torch.zeros(4, H, dtype=torch.bool), 0.1)
    assert m["fm_loss_pos"] == 0.0 and m["positive_window_ratio"] == 0.0
    assert all(math.isfinite(v) for v in m.values())
    assert loss.item() == pytest.approx(0.1 * lu.mean().item(), rel=1e-5)


def test_window_mask_drops_filler_entirely():
    lp, lu = torch.full((2, H, 7), 1.0), torch.full((2, H, 7), 1.0)
    lp[1] = float("nan")  # a filler's values never matter
    loss, m = weighted_cfg_flow_loss(lp, lu, torch.tensor([1.0, 1.0]), torch.zeros(2, H, dtype=torch.bool),
                                     0.1, window_mask=torch.tensor([True, False]))
    assert loss.item() == pytest.approx(1.1) and m["num_windows"] == 1


def test_non_finite_real_window_is_visible():
    # A NaN in a real window must surface (even with w=0) so the optimizer can skip the step.
    lp = torch.full((1, H, 7), float("nan"))
    loss, _ = weighted_cfg_flow_loss(lp, torch.ones(1, H, 7), torch.zeros(1), torch.zeros(1, H, dtype=torch.bool))
    assert not torch.isfinite(loss)


def test_loss_validation():
    with pytest.raises(ValueError, match="cfg_uncond_weight"):
        weighted_cfg_flow_loss(torch.ones(1, H, 7), torch.ones(1, H, 7), torch.ones(1),
                               torch.zeros(1, H, dtype=torch.bool), -0.1)


# ---------------------------------------------------------------------------- randomness
def test_draw_noise_time_is_per_window_and_beta_distributed():
    n1, t1 = draw_noise_time([11, 22, 33], H, 32)
    n2, t2 = draw_noise_time([33, 11], H, 32)  # other grouping/order, same seeds -> same draws
    assert n1.shape == (3, H, 32) and t1.shape == (3,)
    torch.testing.assert_close(n1[2], n2[0])
    torch.testing.assert_close(t1[0], t2[1])
    _, t = draw_noise_time(range(4000), 1, 1)
    assert (t >= 0.001).all() and (t <= 1.0).all()
    # E[0.001 + 0.999*Beta(1.5,1)] = 0.001 + 0.999*1.5/2.5 = 0.6004; sd(Beta) ~ 0.262, SE ~ 0.004.
    assert t.mean().item() == pytest.approx(0.6004, abs=0.02)


# --------------------------------------------------------------------------------- diagnostics
from ript.algos.rl_optimizers.cfg_flow_math import (  # noqa: E402 -- grouped with their tests
    first_chunk_diversity,
    group_outcomes,
    relative_branch_gap,
    relative_weight_distance,
)


def test_branch_gap_hand_values_ignore_pad_steps_and_padding_dims():
    # One window, H=2 steps, D=8 (7 real + 1 padding dim). Step 0: v_c = (3,4,0..), v_u = (3,0,0..)
    # -> diff (0,4,0..). Step 1 is padding and carries huge values that must not count; the
    # padding dim 7 differs too and must not count. gap = ||(0,4)|| / ||(3,4)|| = 4 / 5.
    v_c = torch.zeros(1, 2, 8)
    v_u = torch.zeros(1, 2, 8)
    v_c[0, 0, :2] = torch.tensor([3.0, 4.0])
    v_u[0, 0, 0] = 3.0
    v_c[0, 0, 7], v_u[0, 0, 7] = 100.0, -100.0
    v_c[0, 1], v_u[0, 1] = 1e6, -1e6
    pad = torch.tensor([[False, True]])
    torch.testing.assert_close(relative_branch_gap(v_c, v_u, pad), torch.tensor([0.8]))
    # identical branches (a zero cond_embed) -> no guidance direction at all
    assert relative_branch_gap(v_c, v_c.clone(), pad).item() == 0.0


def test_group_outcomes_count_groups_by_their_successes():
    # K=3: [1,1,1] all success; [0,0,0] all fail; [1,0,0] mixed; [1,(pad),(pad)] has 1 valid -> not counted.
    rewards = torch.tensor([1., 1, 1, 0, 0, 0, 1, 0, 0, 1, 0, 0])
    valid = torch.tensor([1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0], dtype=torch.bool)
    out = group_outcomes(rewards, 3, valid)
    assert out == {"groups": 3.0, "all_fail": pytest.approx(1 / 3), "mixed": pytest.approx(1 / 3),
                   "all_success": pytest.approx(1 / 3)}
    assert group_outcomes(torch.zeros(2), 2, torch.zeros(2, dtype=torch.bool))["groups"] == 0.0


def test_first_chunk_diversity_is_the_std_over_k_averaged():
    # Group 0 (K=2): chunks all 0 and all 2 -> population std 1 at every entry.
    # Group 1: one valid rollout only -> not counted. Group 2: identical chunks -> std 0.
    chunks = torch.zeros(3, 2, 4, 7)
    chunks[0, 1] = 2.0
    chunks[1, 0] = 5.0
    chunks[2] = 3.0
    valid = torch.tensor([[True, True], [True, False], [True, True]])
    assert first_chunk_diversity(chunks, valid) == pytest.approx(0.5)  # mean of 1 and 0
    assert first_chunk_diversity(chunks[1:2], valid[1:2]) == 0.0


def test_relative_weight_distance_hand_value():
    ref = [torch.tensor([3.0, 0.0]), torch.tensor([[4.0]])]  # ||ref|| = 5
    moved = [torch.tensor([3.0, 1.0]), torch.tensor([[4.0]])]  # ||diff|| = 1
    assert relative_weight_distance(moved, ref) == pytest.approx(0.2)
    assert relative_weight_distance(ref, ref) == 0.0
    with pytest.raises(ValueError):
        relative_weight_distance(moved[:1], ref)
