"""RolloutGenerator against a fake env runner (no simulator): RIPT's sampling rules.

The fake runner's outcome is a function of the init state: ``state[0]`` encodes the group's
pattern -- 0: every rollout fails, 1: every rollout succeeds, 2: rollouts alternate
success/failure (a "mixed" group, the only kind dynamic sampling keeps).
"""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from multiprocess_helpers import free_port, run_forked
from ript.algos.rl_optimizers.file_counter import FileCounter
from ript.algos.rl_optimizers.rollout_generator import RolloutGenerator, init_state_hash
from ript.datasets.init_state_dataset import InitStateDataset, collate_init_states
from ript.types import Episode

FAIL, SUCCEED, MIXED = 0.0, 1.0, 2.0
K = 4
D = 5


class _FakeEnv:
    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


class FakeRunner:
    """Runner contract: create_env / run_policy_in_env yielding (success, reward, Episode)."""

    def __init__(self, delay_s: float = 0.0, on_group=None) -> None:
        self.created: list[str] = []
        self.calls: list[tuple[str, np.ndarray, object]] = []  # (task, init states, created_env)
        self.delay_s = delay_s
        self.on_group = on_group  # hook called once per group (e.g. "another rank" adds)

    def create_env(self, task_name: str):
        self.created.append(task_name)
        return _FakeEnv(), len(self.created) - 1, K

    def run_policy_in_env(self, env_name, policy, all_init_states, render=False,
                          created_env=None, random_init=False):
        self.calls.append((env_name, np.array(all_init_states), created_env))
        if self.on_group is not None:
            self.on_group()
        for i, state in enumerate(all_init_states):
            time.sleep(self.delay_s)
            pattern = state[0]
            success = bool(pattern == SUCCEED or (pattern == MIXED and i % 2 == 0))
            ep = Episode(
                task_name=env_name, task_description=env_name.replace("_", " "), task_id=0,
                success=success, total_reward=float(success),
                actions=np.zeros((3, 7), np.float32),
                chunk_start_steps=np.zeros((1,), np.int64), chunk_observations=[],
                sampled_chunks=np.zeros((1, 50, 7), np.float32),
            )
            yield success, float(success), ep


def _states(patterns, offset=0.0) -> np.ndarray:
    """(N, D): row i has pattern patterns[i] and a unique tail, so hashes differ."""
    rows = np.zeros((len(patterns), D))
    rows[:, 0] = patterns
    rows[:, 1] = np.arange(len(patterns)) + offset
    return rows


def _loader(patterns, batch_size, task="task_a", task_id=0, held_out=None) -> DataLoader:
    ds = InitStateDataset([(task_id, task, _states(patterns))], held_out=held_out)
    return DataLoader(ds, batch_size=batch_size, shuffle=False, collate_fn=collate_init_states)


def _round(gen: RolloutGenerator, loader: DataLoader):
    it = iter(loader)
    return gen.generate_rollouts(model=None, batch=next(it), data_iterator=it, dataloader=loader)


def _gen(runner, demo, **kw) -> RolloutGenerator:
    kw.setdefault("use_tqdm", False)
    return RolloutGenerator(runner, rloo_batch_size=K, demo_batch_size=demo, **kw)


def test_same_init_state_for_all_k_rollouts_and_env_reused():
    runner = FakeRunner()
    loader = _loader([MIXED, MIXED, MIXED], batch_size=3)
    gen = _gen(runner, demo=3)
    episodes, task_ids, valid, checked = _round(gen, loader)
    assert checked == 3 and len(runner.calls) == 3
    expected = _states([MIXED] * 3)
    for (task, init_states, env), row in zip(runner.calls, expected):
        assert init_states.shape == (K, D)
        np.testing.assert_array_equal(init_states, np.repeat(row[None], K, 0))
        assert env is runner.calls[0][2]  # one env per task, created once, reused
    assert runner.created == ["task_a"]
    # Episodes come grouped K by K, each tagged with its group's init state.
    for g in range(3):
        for ep in episodes[g * K:(g + 1) * K]:
            np.testing.assert_array_equal(ep.init_state, expected[g])
            assert ep.extra["init_hash"] == init_state_hash(expected[g])
    assert task_ids == [0] * 3 * K and all(valid)
    gen.close()
    assert runner.calls[0][2][0].closed


def test_dynamic_sampling_drops_all_zero_and_all_one_groups():
    runner = FakeRunner()
    loader = _loader([FAIL, SUCCEED, MIXED, FAIL, MIXED], batch_size=5)
    gen = _gen(runner, demo=2, enable_dynamic_sampling=True)
    episodes, _, valid, checked = _round(gen, loader)
    # FAIL and SUCCEED are dropped; the two MIXED groups fill the quota at the 5th sample.
    assert checked == 5
    assert gen.last_round_stats.dropped_uniform == 3
    assert all(valid) and len(episodes) == 2 * K
    assert [ep.init_state[0] for ep in episodes] == [MIXED] * (2 * K)
    # Without dynamic sampling the first two groups are taken as they come.
    gen2 = _gen(FakeRunner(), demo=2)
    episodes2, _, _, checked2 = _round(gen2, loader)
    assert checked2 == 2 and [ep.init_state[0] for ep in episodes2[::K]] == [FAIL, SUCCEED]


def test_pulls_more_batches_and_recreates_exhausted_iterator():
    runner = FakeRunner()
    loader = _loader([FAIL, MIXED], batch_size=1)  # 2 batches of 1; quota 3 needs 6 samples
    gen = _gen(runner, demo=3, enable_dynamic_sampling=True)
    episodes, _, valid, checked = _round(gen, loader)
    assert checked == 6 and all(valid) and len(episodes) == 3 * K
    assert gen.last_data_iterator is not None


def test_padding_to_demo_batch_times_k_with_invalid_entries():
    runner = FakeRunner()
    loader = _loader([MIXED, FAIL, FAIL, FAIL], batch_size=4)
    gen = _gen(runner, demo=3, enable_dynamic_sampling=True, max_sample_attempts=4)
    episodes, task_ids, valid, _ = _round(gen, loader)
    assert len(episodes) == len(task_ids) == len(valid) == 3 * K
    assert valid == [True] * K + [False] * (2 * K)
    assert all(not ep.valid for ep in episodes[K:])
    assert task_ids[K:] == [-1] * (2 * K)
    assert gen.last_round_stats.hit_attempt_limit


def test_rollout_stats_tracking_skips_all_success_init_states(tmp_path):
    stats_path = tmp_path / "rollout_stats.json"
    loader = _loader([SUCCEED, MIXED], batch_size=2)
    runner = FakeRunner()
    gen = _gen(runner, demo=1, enable_rollout_stats_tracking=True,
               rollout_stats_path=str(stats_path))
    _round(gen, loader)  # round 1: SUCCEED is new, so it is rolled out (all K succeed)
    assert len(runner.calls) == 1 and runner.calls[0][1][0, 0] == SUCCEED
    episodes, _, valid, checked = _round(gen, loader)  # round 2: it is skipped
    assert checked == 2 and gen.last_round_stats.skipped_all_success == 1
    assert runner.calls[-1][1][0, 0] == MIXED and len(runner.calls) == 2
    assert all(valid) and episodes[0].init_state[0] == MIXED
    # Persisted each round, and reloaded by a new generator (resume): it skips at once.
    saved = json.loads(stats_path.read_text())
    assert saved["history"][init_state_hash(_states([SUCCEED])[0])] == [1] * K
    runner3 = FakeRunner()
    gen3 = _gen(runner3, demo=1, enable_rollout_stats_tracking=True,
                rollout_stats_path=str(stats_path))
    _round(gen3, loader)
    assert runner3.calls[0][1][0, 0] == MIXED
    # state_dict round trip (checkpointing)
    gen4 = _gen(FakeRunner(), demo=1, enable_rollout_stats_tracking=True)
    gen4.load_state_dict(gen.state_dict())
    assert gen4.stats_tracker.history == gen.stats_tracker.history


def test_skipped_state_is_retried_after_skip_threshold():
    loader = _loader([SUCCEED], batch_size=1)
    runner = FakeRunner()
    gen = _gen(runner, demo=1, enable_rollout_stats_tracking=True, skip_threshold=1)
    _round(gen, loader)  # rolled out: K successes recorded
    # next round: skipped once (count 1), then again (count 2 > threshold: memory dropped,
    # still skipped), then rolled out again and accepted.
    _, _, _, checked = _round(gen, loader)
    assert checked == 3 and len(runner.calls) == 2


def test_early_stop_at_global_threshold_counts_other_ranks():
    counter = FileCounter()
    # Simulate the other ranks: while this rank runs its first group, they accept 3 samples.
    added = []

    def other_ranks_accept():
        if not added:
            added.append(True)
            counter.add(3)

    runner = FakeRunner(on_group=other_ranks_accept)
    gen = _gen(runner, demo=4, counter=counter)  # threshold = 1.0 * 4 * world(1) = 4
    episodes, _, valid, checked = _round(gen, _loader([MIXED] * 4, batch_size=4))
    assert checked == 1 and sum(valid) == K  # 3 (others) + 1 (mine) = 4 reached: stop
    assert gen.last_round_stats.early_stopped and gen.last_round_stats.global_accepted == 4
    assert len(episodes) == 4 * K
    # The next round starts from zero (fresh key), not from 4.
    added.append(True)
    _, _, valid2, _ = _round(gen, _loader([MIXED] * 4, batch_size=4))
    assert sum(valid2) == 4 * K
    counter.close()


def test_early_stop_percentage_threshold_single_rank():
    gen = _gen(FakeRunner(), demo=4, early_stop_percentage=0.5)
    assert gen.global_threshold == 2
    _, _, valid, checked = _round(gen, _loader([MIXED] * 4, batch_size=4))
    assert checked == 2 and sum(valid) == 2 * K


def test_val_init_draws_from_held_out_pool():
    held = _states([MIXED, MIXED, MIXED], offset=100.0)
    loader = _loader([MIXED, MIXED], batch_size=2, held_out=[(0, "task_a", held)])
    runner = FakeRunner()
    gen = _gen(runner, demo=2, use_val_init=True, seed=0)
    _round(gen, loader)
    for _, init_states, _ in runner.calls:
        assert init_states[0, 1] >= 100.0  # from the held-out pool, not the batch
        assert (init_states == init_states[0]).all()  # still one state per group
    runner2 = FakeRunner()
    gen2 = _gen(runner2, demo=2, use_val_init=True, mix_val_init_in_rloo=True, seed=0)
    _round(gen2, loader)
    mixed_rows = np.concatenate([c[1] for c in runner2.calls])
    assert (mixed_rows[:, 1] >= 100.0).all()
    assert len({tuple(r) for r in mixed_rows}) > 1  # K different held-out states per group


def test_config_errors_name_the_value():
    with pytest.raises(ValueError, match="mix_val_init_in_rloo"):
        _gen(FakeRunner(), demo=1, mix_val_init_in_rloo=True)
    with pytest.raises(ValueError, match="early_stop_percentage=1.5"):
        _gen(FakeRunner(), demo=1, early_stop_percentage=1.5)
    gen = _gen(FakeRunner(), demo=1, task_names_to_use=["task_b"])
    with pytest.raises(ValueError, match="task_a.*task_names_to_use"):
        _round(gen, _loader([MIXED], batch_size=1))


# --------------------------------------------------------------------------- 2 ranks (gloo)


def _two_rank_worker(rank: int, port: int, results) -> None:
    torch.set_num_threads(1)  # forked child: keep ATen off the parent's OpenMP pool
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2)
    try:
        out = {}
        # Round 1: rank 1's policy fails everywhere, so dynamic sampling rejects all its groups;
        # rank 0 accepts 2 = ceil(0.5 * 2 * 2) = the global threshold. Rank 1 must see it,
        # stop with zero accepted samples, and not deadlock anyone.
        pattern = MIXED if rank == 0 else FAIL
        runner = FakeRunner(delay_s=0.005)
        gen = RolloutGenerator(runner, rloo_batch_size=K, demo_batch_size=2, use_tqdm=False,
                               early_stop_percentage=0.5, enable_dynamic_sampling=True,
                               max_sample_attempts=100_000)
        loader = _loader([pattern] * 4, batch_size=2, task=f"task_{rank}", task_id=rank)
        _, _, valid, _ = _round(gen, loader)
        s = gen.last_round_stats
        out["r1"] = (sum(valid), s.accepted, s.early_stopped, s.global_accepted)
        # Round 2: both ranks accept; quota 4 each, threshold ceil(0.5 * 4 * 2) = 4 in all.
        gen.demo_batch_size = 4
        assert gen.global_threshold == 4
        loader = _loader([MIXED] * 8, batch_size=4, task=f"task_{rank}", task_id=rank)
        _, _, valid, _ = _round(gen, loader)
        s = gen.last_round_stats
        out["r2"] = (sum(valid), s.accepted, s.early_stopped, s.global_accepted)
        # A collective after the rounds: completes only if every rank finished its round.
        from ript.utils.distributed import all_reduce_mean_dict
        out["mean"] = all_reduce_mean_dict({"accepted": float(s.accepted)})["accepted"]
        gen.close()
        results[rank] = out
    finally:
        dist.destroy_process_group()


def test_two_rank_global_early_stop_and_zero_accept_rank_does_not_deadlock():
    # A hang here means the early stop was not seen or a collective deadlocked.
    port = free_port()
    results = run_forked(_two_rank_worker, [(rank, port) for rank in range(2)], with_results=True)
    r0, r1 = results[0], results[1]
    assert r0["r1"][:2] == (2 * K, 2)  # rank 0 filled its quota: global reached 2
    assert r1["r1"][:3] == (0, 0, True)  # rank 1: nothing accepted, stopped by the global count
    assert r1["r1"][3] >= 2
    # Round 2: the global threshold (4) is reached; a rank short of its own quota (4) must
    # have stopped because of it; each rank overshoots by at most its one in-flight group.
    total = r0["r2"][1] + r1["r2"][1]
    assert 4 <= total <= 5
    for r in (r0, r1):
        assert r["r2"][1] == 4 or r["r2"][2]
    assert r0["mean"] == r1["mean"] == total / 2


class _SamplingRecorder(FakeRunner):
    """Records the cfg_scale each group was run with and the policy's noise temperature then."""

    def __init__(self) -> None:
        super().__init__()
        self.scales: list[float] = []
        self.temperatures: list[float | None] = []

    def run_policy_in_env(self, env_name, policy, all_init_states, render=False, created_env=None,
                          random_init=False, cfg_scale=1.0):
        self.scales.append(cfg_scale)
        self.temperatures.append(getattr(policy, "noise_temperature", None))
        yield from super().run_policy_in_env(env_name, policy, all_init_states, render, created_env, random_init)


class _Policy:
    noise_temperature = 1.0


def test_training_rollouts_use_the_configured_cfg_scale_and_noise_temperature():
    # RL_LIBERO_FINDINGS #8: algo.cfg_scale never reached run_policy_in_env (always cfg 1).
    runner = _SamplingRecorder()
    loader = _loader([MIXED, MIXED], batch_size=2)
    gen = _gen(runner, demo=2, cfg_scale=2.5, noise_temperature=1.5)
    policy = _Policy()
    it = iter(loader)
    gen.generate_rollouts(model=policy, batch=next(it), data_iterator=it, dataloader=loader)
    assert runner.scales == [2.5, 2.5]
    assert runner.temperatures == [1.5, 1.5]
    assert policy.noise_temperature == 1.0  # restored after the rollouts (evaluation samples at 1)


def test_default_sampling_leaves_runner_and_policy_alone():
    runner = _SamplingRecorder()
    loader = _loader([MIXED], batch_size=1)
    gen = _gen(runner, demo=1)
    it = iter(loader)
    gen.generate_rollouts(model=None, batch=next(it), data_iterator=it, dataloader=loader)
    assert runner.scales == [1.0] and runner.temperatures == [None]


@pytest.mark.parametrize("kw", [{"cfg_scale": -1.0}, {"noise_temperature": 0.0}])
def test_bad_sampling_options_are_refused(kw):
    with pytest.raises(ValueError, match=next(iter(kw))):
        _gen(FakeRunner(), demo=1, **kw)


def test_noise_temperature_needs_a_policy_that_can_scale_its_noise():
    loader = _loader([MIXED], batch_size=1)
    gen = _gen(FakeRunner(), demo=1, noise_temperature=2.0)
    it = iter(loader)
    with pytest.raises(ValueError, match="noise_temperature"):
        gen.generate_rollouts(model=object(), batch=next(it), data_iterator=it, dataloader=loader)


# --------------------------------------------------------------------------- with the scheduler
def _scripted_round(scheduler: str, demo: int = 3, k: int = 4, seed: int = 4):
    """A round on the scripted runner; K different held-out states per group so groups differ
    (the scripted episodes depend on the init state only; tests/scheduler_fakes.py)."""
    from ript.algos.rl_optimizers.cfg_flow_math import rloo_advantages
    from scheduler_fakes import ObservationPolicy, ScriptedRunner, scripted_states

    runner = ScriptedRunner(scheduler=scheduler, num_parallel_envs=3, max_len=30)
    pool = scripted_states([5, 0, 0, 0, 0, 0, 29, 12])  # seed 4 draws two all-fail groups
    gen = RolloutGenerator(runner, rloo_batch_size=k, demo_batch_size=demo, use_tqdm=False,
                           enable_dynamic_sampling=True, use_val_init=True, mix_val_init_in_rloo=True,
                           val_init_states={"task_a": pool}, seed=seed)
    n = 4 * demo
    batch = {"task_id": torch.zeros(n, dtype=torch.long), "task_name": ["task_a"] * n,
             "init_state": {"states": torch.zeros(n, 3)}}
    episodes, task_ids, valid, checked = gen.generate_rollouts(ObservationPolicy(), batch, iter(()), None)
    rewards = [float(ep.success) for ep in episodes]
    return gen, runner, episodes, task_ids, valid, checked, rloo_advantages(rewards, k, valid)


def test_scheduler_gives_the_lockstep_groups_advantages_and_episodes():
    old = _scripted_round("lockstep")
    new = _scripted_round("continuous")
    gen_old, gen_new = old[0], new[0]
    assert gen_new.last_round_stats.dropped_uniform == gen_old.last_round_stats.dropped_uniform >= 1
    assert gen_new.last_round_stats.groups_run == gen_old.last_round_stats.groups_run
    assert new[3:6] == old[3:6]  # task ids, valid mask, samples checked
    torch.testing.assert_close(new[6], old[6], rtol=0, atol=0)  # RLOO advantages
    for a, b in zip(old[2], new[2]):
        assert (a.success, a.num_steps) == (b.success, b.num_steps)
        np.testing.assert_array_equal(a.init_state, b.init_state)
        np.testing.assert_array_equal(a.actions, b.actions)
        np.testing.assert_array_equal(a.sampled_chunks, b.sampled_chunks)
    assert gen_new.last_scheduler is not None and gen_old.last_scheduler is None


def test_scheduler_replaces_a_group_dynamic_sampling_drops():
    gen, runner, episodes, task_ids, valid, checked, adv = _scripted_round("continuous", demo=2)
    stats = gen.last_round_stats
    assert stats.accepted == 2 and stats.dropped_uniform >= 1
    assert stats.groups_run == stats.accepted + stats.dropped_uniform  # one replacement per drop
    assert len(episodes) == 2 * 4 and all(valid)
    for group in range(2):  # every accepted group is mixed, K consecutive episodes
        successes = {ep.success for ep in episodes[4 * group:4 * group + 4]}
        assert successes == {True, False}
    assert gen.last_scheduler.stats.episodes == 4 * stats.groups_run


def test_scheduler_round_index_seeds_rounds_and_is_checkpointed():
    gen = _scripted_round("continuous")[0]
    assert gen.round_index == 1 and gen.state_dict()["round_index"] == 1
    fresh = RolloutGenerator(FakeRunner(), rloo_batch_size=K, demo_batch_size=1, use_tqdm=False)
    fresh.load_state_dict(gen.state_dict())
    assert fresh.round_index == 1


def test_scheduler_runs_groups_of_several_tasks_side_by_side():
    from scheduler_fakes import ObservationPolicy, ScriptedRunner, scripted_states

    runner = ScriptedRunner(tasks=("task_a", "task_b"), num_parallel_envs=2, max_len=20)
    pool = scripted_states([5, 0, 12, 0, 3, 9, 0, 8])
    gen = RolloutGenerator(runner, rloo_batch_size=2, demo_batch_size=4, use_tqdm=False,
                           use_val_init=True, mix_val_init_in_rloo=True, seed=1,
                           val_init_states={"task_a": pool, "task_b": pool[::-1]})
    names = ["task_a", "task_b", "task_b", "task_a"]
    batch = {"task_id": torch.tensor([0, 1, 1, 0]), "task_name": names, "init_state": {"states": torch.zeros(4, 3)}}
    episodes, task_ids, valid, _ = gen.generate_rollouts(ObservationPolicy(), batch, iter(()), None)
    assert [ep.task_name for ep in episodes] == [n for n in names for _ in range(2)]  # draw order, K by K
    assert task_ids == [0, 0, 1, 1, 1, 1, 0, 0] and all(valid)
    assert len(runner.created) == 2  # one vectorised env per task, both used in the same round
    # never more episodes running at once than num_parallel_envs, whatever the task
    assert gen.last_scheduler.stats.peak_running == 2 and gen.last_scheduler.stats.episodes == 8
