"""The issue-19/20 options inside a CFG-Flow round (fake policy, no simulator)."""
from __future__ import annotations

import pytest
import torch

from cfg_flow_test_utils import make_episode, make_norm_stats
from test_cfg_flow_optimizer_pi0 import FakePolicy, episodes_k2, make_optimizer, sgd


def _round_windows(opt, episodes, policy):
    windows, _ = opt.make_windows(episodes, opt.score_episodes(episodes, [True] * len(episodes)).weights, policy)
    opt.assign_window_weights(windows)
    return windows


def test_default_alpha_is_the_scalar_and_window_weights_are_unchanged():
    # K=2, [success 100 steps (2 windows), failure 150 steps (3 windows)]: binary w = [1, 0].
    episodes = episodes_k2(lengths=(100, 150))
    opt = make_optimizer(episodes, weight_mode="binary")
    windows = _round_windows(opt, episodes, FakePolicy())
    assert [w.weight for w in windows] == [1, 1, 0, 0, 0]
    assert [w.uncond_weight for w in windows] == pytest.approx([0.1] * 5)


def test_per_episode_weighting_and_alpha_on_successes_hand_values():
    # n_bar = 5 windows / 2 episodes = 2.5: success windows x 2.5/2 = 1.25, failure windows x 2.5/3.
    episodes = episodes_k2(lengths=(100, 150))
    opt = make_optimizer(episodes, weight_mode="binary", episode_weighting="episode")
    windows = _round_windows(opt, episodes, FakePolicy())
    assert [w.weight for w in windows] == pytest.approx([1.25, 1.25, 0, 0, 0])
    assert [w.uncond_weight for w in windows] == pytest.approx([0.125, 0.125] + [0.1 * 2.5 / 3] * 3)
    opt = make_optimizer(episodes, weight_mode="binary", uncond_scope="successes")
    windows = _round_windows(opt, episodes, FakePolicy())
    assert [w.uncond_weight for w in windows] == pytest.approx([0.1, 0.1, 0, 0, 0])


def test_round_logs_the_failed_share_of_windows_and_alpha():
    episodes = episodes_k2(lengths=(100, 150))
    policy = FakePolicy()
    m = make_optimizer(episodes).optimize(policy, None, sgd(policy, lr=0.0))
    assert m["train/failed_window_share"] == pytest.approx(3 / 5)
    assert m["train/failed_alpha_share"] == pytest.approx(3 / 5)
    m = make_optimizer(episodes, episode_weighting="episode").optimize(policy, None, sgd(policy, lr=0.0))
    assert m["train/failed_alpha_share"] == pytest.approx(0.5)  # each episode weighs the same


def test_alpha_on_successes_means_failures_never_reach_the_unconditional_loss(monkeypatch):
    # With w = 0 for the failure and alpha = 0 for its windows, the failure contributes nothing:
    # the gradient equals that of a round with the success alone (normalised by the same count).
    episodes = episodes_k2(lengths=(100, 100))
    policy = FakePolicy()
    opt = make_optimizer(episodes, weight_mode="binary", uncond_scope="successes", mini_batch_size=8)
    windows = _round_windows(opt, episodes, policy)
    assert sum(w.uncond_weight > 0 for w in windows if not w.success) == 0


def test_l2_anchor_pulls_back_towards_the_first_rounds_weights():
    # SGD lr 1 on a round whose loss gradient is zeroed (alpha 0, no positive window):
    # theta_1 = theta_0 - lr * anchor * (theta_0 - theta_0) = theta_0 at the first step; after a
    # manual displacement d the next step moves by -anchor * d exactly.
    episodes = episodes_k2(successes=(False, False), lengths=(100, 100))
    policy = FakePolicy()
    opt = make_optimizer(episodes, cfg_uncond_weight=0.0, anchor_l2=0.5, num_epochs=1, mini_batch_size=8)
    opt.optimize(policy, None, sgd(policy, lr=0.0))  # round 0 stores theta_0
    start = policy.backbone.weight.detach().clone()
    with torch.no_grad():
        policy.backbone.weight.add_(1.0)
    m = opt.optimize(policy, None, sgd(policy, lr=1.0))  # 1 step: theta <- theta - 0.5 * 1.0
    torch.testing.assert_close(policy.backbone.weight.detach(), start + 0.5)
    # penalty logged: 0.5/2 * ||d||^2 with d = 1 on the 7x8 weight = 0.25 * 56 = 14.
    assert m["loss/anchor_penalty"] == pytest.approx(14.0)


def test_a_resumed_run_keeps_pulling_towards_the_runs_start_weights():
    # Round 0 stores theta_0; the run is saved, the weights move by d = 1, and a new optimizer
    # resumed from the saved state pulls back by -anchor * d (towards theta_0, not to where it resumed).
    episodes = episodes_k2(successes=(False, False), lengths=(100, 100))
    policy = FakePolicy()
    opt = make_optimizer(episodes, cfg_uncond_weight=0.0, anchor_l2=0.5, num_epochs=1, mini_batch_size=8)
    opt.optimize(policy, None, sgd(policy, lr=0.0))
    start = policy.backbone.weight.detach().clone()
    state = opt.state_dict()
    with torch.no_grad():
        policy.backbone.weight.add_(1.0)
    resumed = make_optimizer(episodes, cfg_uncond_weight=0.0, anchor_l2=0.5, num_epochs=1, mini_batch_size=8)
    resumed.load_state_dict(state)
    resumed.optimize(policy, None, sgd(policy, lr=1.0))
    torch.testing.assert_close(policy.backbone.weight.detach(), start + 0.5)


def test_cond_lr_scale_multiplies_only_the_condition_update():
    episodes = episodes_k2(lengths=(100, 100))

    def run(scale):
        policy = FakePolicy(seed=0)
        policy.condition_parameters = lambda: list(policy.cond_embed.parameters())
        before = {n: p.detach().clone() for n, p in policy.named_parameters()}
        make_optimizer(episodes, cond_lr_scale=scale, num_epochs=1, mini_batch_size=8).optimize(
            policy, None, sgd(policy, lr=0.1))
        return {n: p.detach() - before[n] for n, p in policy.named_parameters()}

    one, ten = run(1.0), run(10.0)
    torch.testing.assert_close(ten["cond_embed.weight"], 10 * one["cond_embed.weight"])
    torch.testing.assert_close(ten["backbone.weight"], one["backbone.weight"])
    torch.testing.assert_close(ten["out.weight"], one["out.weight"])


def test_cond_lr_scale_needs_condition_parameters():
    episodes = episodes_k2()
    policy = FakePolicy()
    with pytest.raises(ValueError, match="condition_parameters"):
        make_optimizer(episodes, cond_lr_scale=2.0).optimize(policy, None, sgd(policy))


def test_clip_labels_reach_the_windows():
    ns = make_norm_stats()
    ep = make_episode(100, ns, seed=1)
    ep.actions = ep.actions * 5.0
    plain = make_optimizer([ep, ep]).make_windows([ep], torch.ones(1), FakePolicy())[0]
    clipped = make_optimizer([ep, ep], clip_labels=True).make_windows([ep], torch.ones(1), FakePolicy())[0]
    assert not torch.allclose(torch.tensor(plain[0].action), torch.tensor(clipped[0].action))


def _trained_batches(**kw):
    episodes = episodes_k2(lengths=(100, 100))
    policy = FakePolicy()
    make_optimizer(episodes, num_epochs=2, mini_batch_size=8, **kw).optimize(policy, None, sgd(policy, lr=0.0))
    return [call["batch"] for call in policy.calls]


def test_image_augmentation_changes_only_the_frames_the_update_sees():
    plain, augmented = _trained_batches(), _trained_batches(image_augmentation=True)
    assert len(plain) == len(augmented) == 2  # one micro-batch per epoch
    for before, after in zip(plain, augmented):
        torch.testing.assert_close(after["action"], before["action"])
        torch.testing.assert_close(after["state"], before["state"])
        for slot in ("image.base_0_rgb", "image.left_wrist_0_rgb"):
            assert after[slot].shape == before[slot].shape and not torch.equal(after[slot], before[slot])
    # Fresh per epoch: the same window is augmented differently in its second pass ...
    assert not torch.equal(augmented[0]["image.base_0_rgb"], augmented[1]["image.base_0_rgb"])
    # ... and exactly as before when the run is repeated (an exact resume).
    again = _trained_batches(image_augmentation=True)
    assert all(torch.equal(a["image.base_0_rgb"], b["image.base_0_rgb"]) for a, b in zip(augmented, again))


@pytest.mark.parametrize("kw,key", [({"episode_weighting": "traj"}, "episode_weighting"),
                                    ({"uncond_scope": "x"}, "uncond_scope"),
                                    ({"anchor_l2": -1.0}, "anchor_l2"), ({"cond_lr_scale": 0.0}, "cond_lr_scale"),
                                    ({"image_augmentation": "yes"}, "image_augmentation"),
                                    ({"uncond_scope": "successes", "cfg_uncond_weight": 0.0}, "uncond_scope")])
def test_option_validation(kw, key):
    with pytest.raises(ValueError, match=key):
        make_optimizer(episodes_k2(), **kw)
