"""The output anchor (``anchor_output``): a pull of both CFG branches' velocities towards the start
policy's at the same x_t and time, on the real tiny PI0 wrapper (CPU, no simulator)."""
from __future__ import annotations

import pytest
import torch

from cfg_flow_test_utils import make_episode
from ript.algos.policies.pi0_oft_policy import PI0_OFT_Policy
from ript.algos.rl_optimizers.cfg_flow_math import collate_windows, draw_noise_time, masked_window_mse
from ript.algos.rl_optimizers.cfg_flow_optimizer_pi0 import stored_start_copies
from test_cfg_flow_optimizer_pi0 import make_optimizer, sgd


def tiny_policy() -> PI0_OFT_Policy:
    torch.manual_seed(0)
    return PI0_OFT_Policy(norm_stats_path="builtin:libero", device_id="cpu")


def failed_pair(policy):
    """K 2, both failed: binary weights 0, so with alpha 0 the flow loss has no gradient and every
    change a round makes comes from the anchor."""
    return [make_episode(50, policy.norm_stats, success=False, seed=i) for i in range(2)]


def displace_(policy, amount: float = 0.05) -> None:
    """Move the action head as an earlier update would have (its outputs change everywhere)."""
    with torch.no_grad():
        policy.pi0.model.action_out_proj.bias.add_(amount)


def distance_to(policy, reference, windows) -> float:
    """Mean ||v_pos - v_ref||^2 of the conditional branch on fixed noise and time."""
    batch = collate_windows(windows)
    noise, time = draw_noise_time(list(range(len(windows))), batch["action"].shape[1], policy.config.max_action_dim)
    v_pos, _ = policy.cfg_velocities(batch, noise=noise, time=time)
    v_ref, _ = reference.cfg_velocities(batch, noise=noise, time=time)
    return float(masked_window_mse((v_pos - v_ref) ** 2, batch["action_is_pad"]).mean())


def test_the_model_returns_the_velocities_its_losses_are_made_of():
    policy = tiny_policy()
    episodes = failed_pair(policy)
    opt = make_optimizer(episodes, cfg_uncond_weight=0.0)
    windows, _ = opt.make_windows(episodes, torch.zeros(2), policy)
    batch = collate_windows(windows)
    noise, time = draw_noise_time([0, 1], batch["action"].shape[1], policy.config.max_action_dim)
    out = policy.cfg_flow_losses(batch, noise=noise, time=time)
    target = noise[..., :7] - torch.as_tensor(batch["action"])  # u = noise - action
    torch.testing.assert_close(out["losses_pos"], (out["velocities_pos"] - target) ** 2)
    torch.testing.assert_close(out["losses_uncond"], (out["velocities_uncond"] - target) ** 2)
    assert out["velocities_pos"].requires_grad


def test_the_anchor_is_zero_at_the_start_and_pulls_moved_outputs_back():
    policy = tiny_policy()
    start = policy.frozen_copy()
    episodes = failed_pair(policy)
    opt = make_optimizer(episodes, cfg_uncond_weight=0.0, anchor_output=1.0, mini_batch_size=4)
    windows, _ = opt.make_windows(episodes, torch.zeros(2), policy)
    before = {n: p.detach().clone() for n, p in policy.pi0.named_parameters()}
    m = opt.optimize(policy, None, sgd(policy, lr=1.0))  # round 0: the policy is its own start
    # Zero up to rounding: training folds both branches into one pass, the reference runs them apart.
    assert m["loss/output_anchor"] < 1e-12
    for name, p in policy.pi0.named_parameters():
        torch.testing.assert_close(p.detach(), before[name], rtol=0, atol=1e-6)
    displace_(policy)
    moved = distance_to(policy, start, windows)
    m = opt.optimize(policy, None, sgd(policy, lr=0.03))  # one step
    assert m["loss/output_anchor"] == pytest.approx(2 * moved, rel=0.05)  # both branches moved alike
    assert distance_to(policy, start, windows) < 0.5 * moved


def test_without_the_anchor_the_same_round_leaves_the_moved_policy_where_it_is():
    policy = tiny_policy()
    episodes = failed_pair(policy)
    opt = make_optimizer(episodes, cfg_uncond_weight=0.0, mini_batch_size=4)
    opt.optimize(policy, None, sgd(policy, lr=1.0))
    displace_(policy)
    moved = {n: p.detach().clone() for n, p in policy.pi0.named_parameters()}
    m = opt.optimize(policy, None, sgd(policy, lr=0.03))
    assert "loss/output_anchor" not in m
    assert all(torch.equal(p, moved[n]) for n, p in policy.pi0.named_parameters())


def test_a_resumed_run_anchors_to_the_runs_start_not_to_where_it_resumed():
    policy = tiny_policy()
    start = policy.frozen_copy()
    episodes = failed_pair(policy)
    opt = make_optimizer(episodes, cfg_uncond_weight=0.0, anchor_output=1.0, mini_batch_size=4)
    opt.optimize(policy, None, sgd(policy, lr=0.0))
    state = opt.state_dict()
    assert set(state["output_anchor_start"]) == set(policy.trainable_state_dict())
    displace_(policy)  # the weights the run resumes from
    resumed = make_optimizer(episodes, cfg_uncond_weight=0.0, anchor_output=1.0, mini_batch_size=4)
    resumed.load_state_dict(state)
    windows, _ = opt.make_windows(episodes, torch.zeros(2), policy)
    moved = distance_to(policy, start, windows)
    m = resumed.optimize(policy, None, sgd(policy, lr=0.0))
    assert m["loss/output_anchor"] == pytest.approx(2 * moved, rel=0.05)  # measured against the start
    assert moved > 0


@pytest.mark.parametrize("anchor_output,anchor_l2,track", [(0.0, 0.0, False), (1.0, 0.0, False),
                                                          (0.0, 0.5, False), (0.0, 0.0, True), (1.0, 0.5, True)])
def test_the_checkpoint_budget_counts_the_start_copies_the_optimizer_stores(anchor_output, anchor_l2, track):
    # check_checkpoint_budget runs before the optimizer exists and counts with stored_start_copies.
    policy = tiny_policy()
    episodes = failed_pair(policy)
    opt = make_optimizer(episodes, cfg_uncond_weight=0.0, anchor_output=anchor_output, anchor_l2=anchor_l2,
                         track_weight_distance=track, mini_batch_size=4)
    opt.optimize(policy, None, sgd(policy, lr=0.0))
    state = opt.state_dict()
    stored = int(state.get("output_anchor_start") is not None) + int(state.get("start_weights") is not None)
    assert stored == stored_start_copies(anchor_output, anchor_l2, track)


def test_the_frozen_copy_does_not_follow_the_live_policy():
    policy = tiny_policy()
    snapshot = policy.frozen_copy()
    assert not any(p.requires_grad for p in snapshot.pi0.parameters())
    assert snapshot.trainable_params == {"model": [], "header": []}
    displace_(policy)
    assert not torch.equal(snapshot.pi0.model.action_out_proj.bias, policy.pi0.model.action_out_proj.bias)


@pytest.mark.parametrize("kw,match", [({"anchor_output": -1.0}, ">= 0"),
                                      ({"anchor_output": 1.0, "seeded_noise": False}, "seeded_noise=true")])
def test_bad_anchor_settings_are_refused_with_the_fix(kw, match):
    with pytest.raises(ValueError, match=match):
        make_optimizer(failed_pair(tiny_policy()), **kw)


def test_credit_on_the_first_window_leaves_the_others_to_the_anchor():
    """algo.credit_windows=first: an episode's weight rides on its first window only (unscaled by the
    per-episode factor), the later windows keep their alpha term and are the only ones anchored."""
    policy = tiny_policy()
    episodes = [make_episode(150, policy.norm_stats, success=s, seed=i) for i, s in enumerate((True, False))]
    opt = make_optimizer(episodes, cfg_uncond_weight=0.1, anchor_output=1.0, mini_batch_size=8,
                         credit_windows="first", episode_weighting="episode")
    windows, _ = opt.make_windows(episodes, torch.tensor([1.0, 0.0]), policy)
    opt.assign_window_weights(windows)
    by_start = {(w.episode_index, w.start_step): w for w in windows}
    assert sorted(by_start) == [(0, 0), (0, 50), (0, 100), (1, 0), (1, 50), (1, 100)]
    assert [by_start[(0, t)].weight for t in (0, 50, 100)] == [1.0, 0.0, 0.0]
    assert [by_start[(0, t)].credited for t in (0, 50, 100)] == [True, False, False]
    assert all(w.uncond_weight == pytest.approx(0.1) for w in windows)  # alpha on every window
    # Demos replayed as positives stay credited on every window; per episode, the conditional term
    # then counts credited windows (a demo's 3 share what a rollout's first window carries alone).
    demo_windows, _ = opt.make_windows(episodes[:1], torch.ones(1), policy, first_index=9, credit_windows="all")
    mixed = [*windows[:3], *demo_windows]  # rollout 0 (weight 1 on its first window) + the demo
    for w in mixed:
        w.weight = 1.0 if w.credited else 0.0
    opt.assign_window_weights(mixed)
    rollout, demo = [w.weight for w in mixed[:3]], [w.weight for w in mixed[3:]]
    assert rollout[1:] == [0.0, 0.0] and demo == pytest.approx([rollout[0] / 3] * 3)
    assert sum(rollout) + sum(demo) == pytest.approx(4.0)  # the factors keep the 4 credited windows' total
    assert sum(w.uncond_weight for w in mixed[:3]) == pytest.approx(sum(w.uncond_weight for w in mixed[3:]))
    # The anchor holds exactly the uncredited windows: moved outputs, then one round's anchor term.
    opt.optimize(policy, None, sgd(policy, lr=0.0))  # round 0 fixes the start
    displace_(policy)
    held = [w for w in windows if not w.credited]
    m = opt.optimize(policy, None, sgd(policy, lr=0.0))
    n = len(windows)
    assert m["loss/output_anchor"] == pytest.approx(2 * distance_to(policy, opt._start_policy, held) * len(held) / n,
                                                    rel=0.05)
