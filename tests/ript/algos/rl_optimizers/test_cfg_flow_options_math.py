"""Hand-derived tests of the issue-19/20 options' maths: per-episode weighting, the alpha scope,
labels clipped to what LIBERO executes, the L2 anchor and the separate condition learning rate."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cfg_flow_test_utils import H, make_episode, make_norm_stats
from ript.algos.rl_optimizers.cfg_flow_math import (
    clip_to_executed,
    collate_windows,
    cut_windows,
    episode_window_scales,
    failed_weight_share,
    l2_anchor_,
    scale_update_,
    weighted_cfg_flow_loss,
    window_alphas,
)
from ript.env_runner.pi0_runner_utils import env_actions_to_model_chunk


def test_episode_window_scales_hand_values():
    # Episode 0 has 3 windows, episode 7 has 1: N = 4, E = 2, n_bar = 2.
    #   episode 0: 2/3 each (sum 2); episode 7: 2/1 = 2 (sum 2). Total 4 = N.
    s = episode_window_scales([0, 0, 0, 7])
    torch.testing.assert_close(s, torch.tensor([2 / 3, 2 / 3, 2 / 3, 2.0]))
    assert float(s.sum()) == pytest.approx(4.0)
    # Equal-length episodes: every factor is 1 (per-window weighting unchanged).
    torch.testing.assert_close(episode_window_scales([3, 3, 5, 5]), torch.ones(4))
    assert episode_window_scales([]).numel() == 0


def test_window_alphas_scope():
    ok = [True, False, True]
    torch.testing.assert_close(window_alphas(ok, 0.1, "all"), torch.full((3,), 0.1))
    torch.testing.assert_close(window_alphas(ok, 0.1, "successes"), torch.tensor([0.1, 0.0, 0.1]))
    with pytest.raises(ValueError, match="uncond_scope"):
        window_alphas(ok, 0.1, "demos")


def test_failed_weight_share():
    # alpha weights [1, 1, 2] on windows (fail, success, fail): failures hold (1 + 2) / 4 = 0.75.
    assert failed_weight_share(torch.tensor([1.0, 1.0, 2.0]), torch.tensor([False, True, False])) == 0.75
    assert failed_weight_share(torch.zeros(2), torch.tensor([False, True])) == 0.0


def test_loss_with_per_window_alphas_hand_values():
    # L_pos = 2, L_uncond = 4; w = [3, 0], alphas = [0.1, 0]: (3*2 + 0.4) + (0 + 0) = 6.4, mean 3.2.
    lp, lu = torch.full((2, H, 7), 2.0), torch.full((2, H, 7), 4.0)
    pad = torch.zeros(2, H, dtype=torch.bool)
    loss, m = weighted_cfg_flow_loss(lp, lu, torch.tensor([3.0, 0.0]), pad, torch.tensor([0.1, 0.0]))
    assert loss.item() == pytest.approx(3.2) and m["fm_loss"] == pytest.approx(3.2)
    # A scalar alpha equals the same alpha repeated per window.
    a, _ = weighted_cfg_flow_loss(lp, lu, torch.tensor([3.0, 0.0]), pad, 0.1)
    b, _ = weighted_cfg_flow_loss(lp, lu, torch.tensor([3.0, 0.0]), pad, torch.tensor([0.1, 0.1]))
    assert a.item() == pytest.approx(b.item())
    with pytest.raises(ValueError, match="alphas"):
        weighted_cfg_flow_loss(lp, lu, torch.tensor([3.0, 0.0]), pad, torch.tensor([-0.1, 0.1]))


def test_clip_to_executed_hand_values():
    a = np.array([[1.5, -2.0, 0.3, 1.0, -1.0, 0.99, 0.2], [0, 0, 0, 0, 0, 0, -0.01], [0, 0, 0, 0, 0, 0, 0]],
                 dtype=np.float32)
    out = clip_to_executed(a)
    np.testing.assert_array_equal(out[0], np.float32([1.0, -1.0, 0.3, 1.0, -1.0, 0.99, 1.0]))
    assert out[1, 6] == -1.0 and out[2, 6] == 0.0
    assert a[0, 0] == 1.5  # the input is not modified


@pytest.mark.parametrize("action_mode", ["relative", "absolute"])
def test_clipped_labels_are_the_clipped_env_actions_through_the_inverse(action_mode):
    # The labels of a window are env_actions_to_model_chunk(clip(executed), chunk-start state):
    # clipping happens in env space (after the relative offset is added back), not in model space.
    ns = make_norm_stats()
    ep = make_episode(100, ns, action_mode=action_mode, seed=11)
    ep.actions = ep.actions * 3.0  # overshooting commands and non-unit grippers
    plain, _ = cut_windows(ep, 1.0, ns, action_mode=action_mode)
    clipped, _ = cut_windows(ep, 1.0, ns, action_mode=action_mode, clip_labels=True)
    for w_plain, w, c in zip(plain, clipped, range(2)):
        raw = ep.chunk_observations[c].raw_state
        executed = ep.actions[c * H:(c + 1) * H]
        want = env_actions_to_model_chunk(clip_to_executed(executed)[None], raw[None], ns, action_mode)[0]
        np.testing.assert_allclose(w.action, want, atol=1e-6)
        assert not np.allclose(w.action, w_plain.action)
        assert w.success is True


def test_collate_carries_per_window_alphas_only_when_all_are_set():
    ns = make_norm_stats()
    windows, _ = cut_windows(make_episode(100, ns, seed=2), 1.0, ns)
    assert "uncond_weights" not in collate_windows(windows)
    windows[0].uncond_weight, windows[1].uncond_weight = 0.1, 0.0
    torch.testing.assert_close(collate_windows(windows)["uncond_weights"], torch.tensor([0.1, 0.0]))


def test_l2_anchor_hand_values():
    # theta = [1, 2], theta_0 = [0, 0], coef 0.5: grad += 0.5 * [1, 2]; penalty 0.25 * 5 = 1.25.
    p = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    p.grad = torch.tensor([10.0, 0.0])
    pen = l2_anchor_([p], [torch.zeros(2)], 0.5)
    assert pen == pytest.approx(1.25)
    torch.testing.assert_close(p.grad, torch.tensor([10.5, 1.0]))
    q = torch.nn.Parameter(torch.tensor([3.0]))  # no grad yet: created
    assert l2_anchor_([q], [torch.tensor([1.0])], 1.0) == pytest.approx(2.0)
    torch.testing.assert_close(q.grad, torch.tensor([2.0]))
    with pytest.raises(ValueError, match="anchor_l2"):
        l2_anchor_([q], [torch.tensor([1.0])], -1.0)


def test_scale_update_equals_adam_at_a_scaled_lr():
    # before 1.0, after 1.1 (an update of 0.1), scale 10 -> 1.0 + 10 * 0.1 = 2.0.
    p = torch.nn.Parameter(torch.tensor([1.1]))
    scale_update_([p], [torch.tensor([1.0])], 10.0)
    torch.testing.assert_close(p.detach(), torch.tensor([2.0]))
    # Adam at lr 1e-3 then scaled by 5 == Adam at lr 5e-3 (same moments, update linear in lr).
    torch.manual_seed(0)
    g = torch.randn(4)
    a = torch.nn.Parameter(torch.ones(4))
    b = torch.nn.Parameter(torch.ones(4))
    oa, ob = torch.optim.AdamW([a], lr=1e-3, weight_decay=1e-10), torch.optim.AdamW([b], lr=5e-3, weight_decay=1e-10)
    for _ in range(3):
        a.grad, b.grad = g.clone(), g.clone()
        before = [a.detach().clone()]
        oa.step()
        scale_update_([a], before, 5.0)
        ob.step()
    # Moments are the same for both (same grads); only the step size differs, so they agree.
    torch.testing.assert_close(a.detach(), b.detach(), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="cond_lr_scale"):
        scale_update_([a], before, 0.0)
