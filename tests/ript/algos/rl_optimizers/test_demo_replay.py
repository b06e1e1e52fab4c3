"""SFT demos replayed into the conditional branch as positives (``algo.demo_replay_*``, issue 26):
which demos a round replays, that failed demos never are, and the windows the optimizer adds."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ript.algos.rl_optimizers.cfg_flow_optimizer_pi0 import DEMO_EPISODE_INDEX_OFFSET
from ript.algos.rl_optimizers.demo_replay import DemoReplay, load_successful_demos
from ript.datasets.demo_pack import save_demo_pack
from test_cfg_flow_optimizer_pi0 import FakePolicy, episodes_k2, make_optimizer, sgd

from demo_fakes import synthetic_demo


def _demo(rng: np.random.Generator, num_steps: int, index: int, success: bool) -> dict:
    """4-px frames like the fake rollouts' (cfg_flow_test_utils), so both collate together."""
    return synthetic_demo(rng, num_steps, index, image_size=4, success=success)


@pytest.fixture()
def pack(tmp_path):
    # Demos 0, 2, 4 succeeded (100 steps: 2 aligned windows each); 1 and 3 failed.
    rng = np.random.default_rng(0)
    demos = [_demo(rng, 100, i, success=i % 2 == 0) for i in range(5)]
    return save_demo_pack(demos, tmp_path / "demos.npz")


def test_only_successful_demos_are_replayed(pack):
    assert [d["init_state_index"] for d in load_successful_demos(pack)] == [0, 2, 4]
    # A 3-demo start replays only what it was trained on: the successes among the first 3 demos.
    assert [d["init_state_index"] for d in load_successful_demos(pack, num_demos=3)] == [0, 2]
    assert DemoReplay(pack, per_round=9, num_demos=3).indices_for_round(0) == [0, 1]


def test_a_round_draws_the_same_demos_whenever_it_runs(pack):
    replay = DemoReplay(pack, per_round=2, seed=3)
    assert replay.indices_for_round(5) == DemoReplay(pack, per_round=2, seed=3).indices_for_round(5)  # a resumed run
    assert all(len(replay.indices_for_round(r)) == 2 for r in range(10))
    assert {i for r in range(10) for i in replay.indices_for_round(r)} == {0, 1, 2}  # every success, in time
    assert DemoReplay(pack, per_round=9).indices_for_round(0) == [0, 1, 2]  # capped at what there is


def test_a_pack_without_successes_names_the_key(tmp_path):
    rng = np.random.default_rng(1)
    path = save_demo_pack([_demo(rng, 60, 0, success=False)], tmp_path / "failed.npz")
    with pytest.raises(ValueError, match="demo_replay_path=.*none of its 1 demos succeeded"):
        load_successful_demos(path)


def test_replayed_demo_windows_are_positives_with_their_weight(pack):
    # K=2 round [success, failure] (binary w = [1, 0]) plus 1 replayed demo of 100 steps: 2 aligned
    # windows of weight 0.5, counted as successes, with their own episode index.
    episodes = episodes_k2(lengths=(100, 100))
    policy = FakePolicy()
    opt = make_optimizer(episodes, weight_mode="binary", demo_replay_path=str(pack), demo_replay_per_round=1,
                         demo_replay_weight=0.5)
    windows = []
    assert opt._add_demo_windows(windows, policy) == 2
    assert [w.weight for w in windows] == [0.5, 0.5] and all(w.success for w in windows)
    assert {w.episode_index for w in windows} == {DEMO_EPISODE_INDEX_OFFSET}
    demo = load_successful_demos(pack)[opt.demo_replay.indices_for_round(0)[0]]
    assert windows[0].action.shape == (50, 7) and windows[0].prompt == demo["task_description"]
    metrics = opt.optimize(policy, None, sgd(policy, lr=0.0))
    assert metrics["train/demo_windows"] == 2
    assert metrics["train/windows_used"] == 4 + 2  # the round's own 4 windows plus the demo's 2


def test_demo_replay_needs_its_path():
    with pytest.raises(ValueError, match="demo_replay_path"):
        make_optimizer(episodes_k2(), demo_replay_per_round=1)


def test_the_demo_probe_logs_the_loss_on_the_sft_demos_without_training_on_them(pack):
    # Probe only (no replay): the 3 successful demos give 6 aligned windows, 4 of them probed.
    policy = FakePolicy()
    opt = make_optimizer(episodes_k2(lengths=(100, 100)), weight_mode="binary", demo_replay_path=str(pack),
                         demo_probe_windows=4)
    frozen = opt.optimize(policy, None, sgd(policy, lr=0.0))
    assert frozen["train/demo_windows"] == 0 and frozen["train/windows_used"] == 4  # nothing added to training
    assert frozen["train/demo_fm_loss"] > 0
    # Round 1 also logs the loss before any update; with lr 0 nothing moved.
    assert frozen["train/demo_fm_loss_before"] == pytest.approx(frozen["train/demo_fm_loss"])
    # The same windows and noise every round: an unchanged policy scores the same in round 2.
    assert opt.optimize(policy, None, sgd(policy, lr=0.0))["train/demo_fm_loss"] == pytest.approx(
        frozen["train/demo_fm_loss"])
    assert len(opt._demo_probe) == 4 and all(w.success for w in opt._demo_probe)

    # Training on the rollouts moves the policy, and the probe sees it.
    moved_policy = FakePolicy()
    moving = make_optimizer(episodes_k2(lengths=(100, 100)), weight_mode="binary", demo_replay_path=str(pack),
                            demo_probe_windows=4)
    metrics = moving.optimize(moved_policy, None, sgd(moved_policy, lr=0.5))
    assert metrics["train/demo_fm_loss_before"] == pytest.approx(frozen["train/demo_fm_loss_before"])
    assert abs(metrics["train/demo_fm_loss"] - metrics["train/demo_fm_loss_before"]) > 1e-4
    assert "train/demo_fm_loss_before" not in moving.optimize(moved_policy, None, sgd(moved_policy, lr=0.5))


def test_the_demo_probe_cuts_the_same_windows_whatever_the_training_windows(tmp_path):
    # Demos whose gripper never switches: gripper windows would find none of them, but the
    # forgetting probe must stay the same windows in every run, so it cuts aligned ones.
    rng = np.random.default_rng(0)
    demos = [_demo(rng, 100, i, success=True) for i in range(3)]
    for demo in demos:
        for key in ("actions", "executed_actions"):
            demo[key][:, -1] = -1.0  # open throughout
    pack = save_demo_pack(demos, tmp_path / "demos.npz")
    policy = FakePolicy()
    probed = {}
    for mode in ("aligned", "gripper"):
        opt = make_optimizer(episodes_k2(lengths=(100, 100)), weight_mode="binary", demo_replay_path=str(pack),
                             demo_probe_windows=4, window_mode=mode)
        loss = opt.optimize(policy, None, sgd(policy, lr=0.0))["train/demo_fm_loss"]
        probed[mode] = (loss, [(w.episode_index, w.start_step) for w in opt._demo_probe])
    assert len(probed["gripper"][1]) == 4 and probed["gripper"][1] == probed["aligned"][1]
    assert probed["gripper"][0] == pytest.approx(probed["aligned"][0])


def test_the_demo_probe_needs_the_demos():
    with pytest.raises(ValueError, match="demo_replay_path.*demo_probe_windows > 0"):
        make_optimizer(episodes_k2(), demo_probe_windows=4)
