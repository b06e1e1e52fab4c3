"""The pure helpers of the training loop: task split, per-step batch stream, eval merge.

They decide which rank rolls out which task, which init states a step sees (and therefore what a
resumed run sees), and what rank zero logs after evaluation -- no model or simulator involved.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ript.datasets.init_state_dataset import InitStateDataset
from ript.training.loop import StepBatchStream, merge_eval_results, split_tasks_across_ranks

TASKS = ["t0", "t1", "t2", "t3", "t4"]


# --------------------------------------------------------------------------- split_tasks_across_ranks


@pytest.mark.parametrize("world_size", [1, 2, 3, 5])
def test_tasks_are_split_into_a_disjoint_cover(world_size):
    shares = [split_tasks_across_ranks(TASKS, rank, world_size) for rank in range(world_size)]

    assert sorted(t for share in shares for t in share) == sorted(TASKS)  # every task, exactly once
    assert all(share for share in shares)  # no rank idles
    # Strided, so the shares differ in size by at most one task.
    assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_split_is_strided_by_rank():
    # Rank r takes tasks r, r+W, ...: the documented assignment that logs and resumes rely on.
    assert split_tasks_across_ranks(TASKS, 0, 2) == ["t0", "t2", "t4"]
    assert split_tasks_across_ranks(TASKS, 1, 2) == ["t1", "t3"]


def test_fewer_tasks_than_ranks_share_round_robin():
    shares = [split_tasks_across_ranks(["a", "b"], rank, 5) for rank in range(5)]
    assert shares == [["a"], ["b"], ["a"], ["b"], ["a"]]


def test_no_tasks_is_an_error_naming_the_config_key():
    with pytest.raises(ValueError, match="task_names_to_use"):
        split_tasks_across_ranks([], 0, 1)


# --------------------------------------------------------------------------- StepBatchStream


def _dataset() -> InitStateDataset:
    # Two tasks with different state sizes, as LIBERO scenes with different objects have.
    return InitStateDataset([
        (3, "short", np.arange(12, dtype=np.float64).reshape(4, 3)),  # 4 states of 3 dims
        (7, "long", 100 + np.arange(20, dtype=np.float64).reshape(4, 5)),  # 4 states of 5 dims
    ])


def _take(stream: StepBatchStream, step: int, n: int) -> list[dict]:
    iterator = stream.for_step(step)
    return [next(iterator) for _ in range(n)]


def _fingerprint(batches: list[dict]) -> list[tuple]:
    return [(tuple(b["task_id"].tolist()), b["init_state"]["states"].numpy().tobytes()) for b in batches]


def test_batches_have_the_collate_layout():
    (batch,) = _take(StepBatchStream(_dataset(), batch_size=8, seed=0, rank=0), step=0, n=1)

    assert batch["task_id"].dtype == torch.long and batch["task_id"].shape == (8,)
    assert isinstance(batch["task_name"], list) and len(batch["task_name"]) == 8
    states, mask = batch["init_state"]["states"], batch["init_state"]["pad_mask"]
    assert states.dtype == torch.float64 and states.shape == (8, 5)  # padded to the widest task
    assert mask.dtype == torch.bool and mask.shape == (8, 5)
    for i, name in enumerate(batch["task_name"]):
        width = 3 if name == "short" else 5
        assert batch["task_id"][i].item() == (3 if name == "short" else 7)
        assert mask[i].tolist() == [True] * width + [False] * (5 - width)
        assert torch.all(states[i, width:] == 0)
    # batch_size equal to the dataset size: every init state exactly once.
    assert sorted(map(tuple, states.tolist())) == sorted(
        tuple(row) + (0.0,) * (5 - len(row)) for name in ("short", "long")
        for row in _dataset().states_by_task[name].tolist()
    )


def test_same_seed_rank_and_step_give_the_same_batches():
    """A resumed run rebuilds step N's stream and must see the batches the original run saw."""
    first = _take(StepBatchStream(_dataset(), batch_size=3, seed=5, rank=1), step=4, n=6)
    again = _take(StepBatchStream(_dataset(), batch_size=3, seed=5, rank=1), step=4, n=6)
    assert _fingerprint(first) == _fingerprint(again)
    assert [b["task_name"] for b in first] == [b["task_name"] for b in again]


def test_different_steps_ranks_and_seeds_give_different_batches():
    def prints(seed=5, rank=1, step=4):
        return _fingerprint(_take(StepBatchStream(_dataset(), batch_size=3, seed=seed, rank=rank), step, n=4))

    base = prints()
    assert prints(step=5) != base
    assert prints(rank=0) != base
    assert prints(seed=6) != base


def test_stream_is_endless_and_covers_each_epoch():
    # 8 items, batch 4: every consecutive pair of batches is one permutation of the dataset
    # (extra pulls by dynamic sampling keep going into further epochs).
    batches = _take(StepBatchStream(_dataset(), batch_size=4, seed=0, rank=0), step=0, n=6)
    for epoch in range(3):
        pair = batches[2 * epoch : 2 * epoch + 2]
        rows = [tuple(r) for b in pair for r in b["init_state"]["states"].tolist()]
        assert len(set(rows)) == 8


def test_shuffle_false_keeps_dataset_order():
    (batch,) = _take(StepBatchStream(_dataset(), batch_size=4, seed=0, rank=0, shuffle=False), step=3, n=1)
    assert batch["task_name"] == ["short"] * 4
    assert batch["init_state"]["states"][:, :3].tolist() == np.arange(12.0).reshape(4, 3).tolist()


def test_batch_larger_than_dataset_is_an_error_not_a_hang():
    # Without a check, for_step would loop forever without yielding.
    with pytest.raises(ValueError, match="batch_size"):
        stream = StepBatchStream(_dataset(), batch_size=9, seed=0, rank=0)
        next(stream.for_step(0))


# --------------------------------------------------------------------------- merge_eval_results


def _rank_result(rates: dict[str, float], episodes_per_task: int) -> dict:
    result = {f"rollout/success_rate/{task}": rate for task, rate in rates.items()}
    result["rollout/num_episodes"] = episodes_per_task * len(rates)
    result["rollout/overall_success_rate"] = float(np.mean(list(rates.values())))
    result["rollout/protocol"] = "open_loop_50"
    return result


def test_merge_weights_the_overall_rate_by_episodes():
    # Rank 0: 2 tasks x 10 episodes, rates 1.0 and 0.5 -> 15 successes of 20.
    # Rank 1: 1 task x 10 episodes, rate 0.0 -> 0 successes of 10.
    # Overall = 15 / 30 = 0.5 (an unweighted mean of the rank rates would give 0.375).
    merged = merge_eval_results([
        _rank_result({"a": 1.0, "b": 0.5}, episodes_per_task=10),
        _rank_result({"c": 0.0}, episodes_per_task=10),
    ])
    assert merged["rollout/num_episodes"] == 30
    assert merged["rollout/overall_success_rate"] == pytest.approx(0.5)
    assert merged["rollout/success_rate/a"] == 1.0
    assert merged["rollout/success_rate/b"] == 0.5
    assert merged["rollout/success_rate/c"] == 0.0
    assert merged["rollout/protocol"] == "open_loop_50"


def test_merge_of_a_single_rank_is_its_result():
    only = _rank_result({"a": 0.25}, episodes_per_task=4)
    merged = merge_eval_results([only])
    for key in ("rollout/success_rate/a", "rollout/num_episodes", "rollout/overall_success_rate"):
        assert merged[key] == only[key]


def test_merge_with_no_episodes_does_not_divide_by_zero():
    merged = merge_eval_results([{"rollout/num_episodes": 0, "rollout/overall_success_rate": 0.0}])
    assert merged["rollout/overall_success_rate"] == 0.0 and merged["rollout/num_episodes"] == 0


def test_merge_averages_a_task_evaluated_on_several_ranks():
    # Fewer tasks than ranks: both ranks evaluate task "a" with the same number of trials, so its
    # rate is the mean of the two, not whichever rank came last.
    merged = merge_eval_results([_rank_result({"a": 1.0}, 2), _rank_result({"a": 0.0}, 2)])
    assert merged["rollout/success_rate/a"] == pytest.approx(0.5)
    assert merged["rollout/overall_success_rate"] == pytest.approx(0.5)


def test_merge_sums_env_fault_counts():
    # README: dropped samples are counted in the metrics; a rank's faults must not vanish.
    results = [_rank_result({"a": 1.0}, 2), _rank_result({"b": 1.0}, 2)]
    results[0]["rollout/num_env_faults"], results[1]["rollout/num_env_faults"] = 1, 2
    assert merge_eval_results(results)["rollout/num_env_faults"] == 3


# --------------------------------------------------------------------------- eval_init_states


def _run_with_held_out(held_out):
    from types import SimpleNamespace

    dataset = SimpleNamespace(held_out_states_by_task=held_out)
    return SimpleNamespace(batches=SimpleNamespace(dataset=dataset), task_names=["t0"])


def test_eval_init_states_shipped_or_held_out():
    from omegaconf import OmegaConf

    from ript.training.loop import eval_init_states

    held = {"t0": np.ones((2, 3)), "t1": np.zeros((2, 3))}
    cfg = OmegaConf.create({"rollout": {"init_states": "shipped"}})
    assert eval_init_states(cfg, _run_with_held_out(held)) is None  # the runner's shipped states
    cfg.rollout.init_states = "heldout"
    assert list(eval_init_states(cfg, _run_with_held_out(held))) == ["t0"]  # this rank's tasks only
    with pytest.raises(ValueError, match="num_val"):
        eval_init_states(cfg, _run_with_held_out({}))


def test_merge_sums_env_rebuild_counts():
    # Recovered faults (rebuilt workers, no dropped sample) are summed over ranks too.
    results = [_rank_result({"a": 1.0}, 2), _rank_result({"b": 1.0}, 2)]
    results[0]["rollout/num_env_rebuilds"] = 2
    assert merge_eval_results(results)["rollout/num_env_rebuilds"] == 2
    assert merge_eval_results(results[1:])["rollout/num_env_rebuilds"] == 0


# --------------------------------------------------------------------------- checkpoint budget
# The small-preset LIBERO run (7.96 M parameters) against the GPU machine's 64 MB return budget:
# every trainable fp32 weight costs 12 bytes in a checkpoint (weight + AdamW's two moments).


def _small_policy_and_optimizers(**kwargs):
    from ript.algos.policies.pi0_oft_policy import PI0_OFT_Policy

    policy = PI0_OFT_Policy(norm_stats_path="builtin:pi0_small_libero_object_ketchup", preset="small",
                            dtype="float32", device_id="cpu", cond_layer_modulation=True, **kwargs)
    optimizers = [torch.optim.AdamW(policy.trainable_params[g], lr=1e-5) for g in ("model", "header")]
    return policy, optimizers


def _budget_cfg(mb, **algo):
    from omegaconf import OmegaConf

    return OmegaConf.create({"training": {"checkpoint_budget_mb": mb}, "algo": algo})


def test_a_fully_trainable_small_pi0_does_not_fit_64_mb_and_the_error_names_the_fix():
    from ript.training.config_checks import ConfigError
    from ript.training.loop import check_checkpoint_budget

    policy, optimizers = _small_policy_and_optimizers(freeze_vision_encoder=False)  # the SFT start's setting
    with pytest.raises(ConfigError) as info:
        check_checkpoint_budget(_budget_cfg(64), policy, optimizers)
    message = str(info.value)
    # 7.04 M trainable x 12 bytes = 80.6 MiB (the VLM's unused last-layer MLP and lm_head are frozen).
    assert message.startswith("training.checkpoint_budget_mb=64:") and "80.6 MB" in message
    assert "train_expert_only=true" in message
    check_checkpoint_budget(_budget_cfg(None), policy, optimizers)  # no budget: no check


def test_training_the_action_expert_only_fits_the_budget_of_one_run():
    from ript.training.checkpointing import estimate_checkpoint_bytes
    from ript.training.loop import check_checkpoint_budget

    policy, optimizers = _small_policy_and_optimizers(train_expert_only=True)
    params = [p for group in policy.trainable_params.values() for p in group]
    # 1.18 M trainable (expert 1.115 M + heads and the per-layer condition) x 12 bytes = 13.5 MiB.
    assert estimate_checkpoint_bytes(params, optimizers) / 2**20 == pytest.approx(13.5, abs=0.05)
    check_checkpoint_budget(_budget_cfg(30), policy, optimizers)  # two runs' checkpoints in 64 MB


def test_the_anchors_add_the_starts_weights_to_the_checkpoint_estimate():
    from ript.training.config_checks import ConfigError
    from ript.training.loop import check_checkpoint_budget

    policy, optimizers = _small_policy_and_optimizers(train_expert_only=True)
    check_checkpoint_budget(_budget_cfg(15), policy, optimizers)  # 13.5 MiB without an anchor
    # Each stored copy of the 1.18 M fp32 start weights adds 4.5 MiB.
    with pytest.raises(ConfigError, match="18.0 MB"):
        check_checkpoint_budget(_budget_cfg(15, anchor_output=1.0), policy, optimizers)
    with pytest.raises(ConfigError, match="18.0 MB"):
        check_checkpoint_budget(_budget_cfg(15, track_weight_distance=True), policy, optimizers)
    with pytest.raises(ConfigError, match="22.5 MB"):
        check_checkpoint_budget(_budget_cfg(15, anchor_output=1.0, anchor_l2=0.1), policy, optimizers)
