"""Spec tests for the continuous rollout scheduler on a scripted env (no simulator).

Episodes of the scripted env depend on the init state only (tests/scheduler_fakes.py), so the
scheduler must give exactly the episodes of the lockstep loop while refilling each simulator as
soon as its episode ends. Real-LIBERO tests of the scheduler (ragged ends, a killed worker) are in
test_pi0_libero_runner.py.
"""
from __future__ import annotations

import numpy as np
import pytest

from ript.env_runner.rollout_scheduler import EpisodeSpec, derive_seed
from scheduler_fakes import WAIT, ObservationPolicy, ScriptedRunner, scripted_states


def _episodes(runner, states, policy=None):
    policy = policy or ObservationPolicy()
    return [ep for _, _, ep in runner.run_policy_in_env("task_a", policy, states)], policy


def _same_episode(a, b):
    assert a.success == b.success and a.num_steps == b.num_steps
    np.testing.assert_array_equal(a.actions, b.actions)
    np.testing.assert_array_equal(a.chunk_start_steps, b.chunk_start_steps)
    np.testing.assert_array_equal(a.sampled_chunks, b.sampled_chunks)
    np.testing.assert_array_equal(a.chunk_start_raw_states, b.chunk_start_raw_states)
    for oa, ob in zip(a.chunk_observations, b.chunk_observations):
        for slot in oa.images:
            np.testing.assert_array_equal(oa.images[slot], ob.images[slot])


def test_continuous_gives_the_lockstep_episodes_in_state_order():
    # ragged ends: successes after 5, 12 and 25 steps, one failure at the 40-step cap
    states = scripted_states([5, 0, 12, 25, 3])
    lockstep, _ = _episodes(ScriptedRunner(scheduler="lockstep"), states)
    continuous, _ = _episodes(ScriptedRunner(scheduler="continuous"), states)
    assert [ep.success for ep in continuous] == [True, False, True, True, True]
    assert [ep.num_steps for ep in continuous] == [5, 40, 12, 25, 3]
    for a, b in zip(lockstep, continuous):
        _same_episode(a, b)
        np.testing.assert_array_equal(a.init_state, b.init_state)


def test_a_free_simulator_takes_the_next_episode_at_once():
    # 2 simulators, episodes of 5, 40 (cap) and 5 steps: the third starts on the simulator the
    # first one freed, long before the second ends -- lockstep would wait for the 40-step one.
    runner = ScriptedRunner(scheduler="continuous")
    episodes, _ = _episodes(runner, scripted_states([5, 0, 5]))
    env = runner.created[0]
    resets = [(i, ids) for i, (method, ids, _) in enumerate(env.log) if method == "reset"]
    assert [ids for _, ids in resets] == [[0, 1], [0]]
    steps_before_second_reset = sum(1 for method, _, _ in env.log[:resets[1][0]] if method == "step")
    assert steps_before_second_reset == WAIT + 5  # right after episode 0's last step
    assert [ep.num_steps for ep in episodes] == [5, 40, 5]


def test_one_policy_call_serves_exactly_the_envs_whose_chunk_starts():
    # open_loop 10; env 0 restarts at step 7 of env 1, so their chunk clocks differ afterwards
    runner, policy = ScriptedRunner(scheduler="continuous"), ObservationPolicy()
    _episodes(runner, scripted_states([7, 0, 0]), policy)
    assert policy.calls[0] == 2  # both start together
    assert 1 in policy.calls  # later, the two clocks are apart: one env per call
    assert sum(policy.calls) == 1 + 4 + 4  # chunks: 7 steps -> 1, 40 steps -> 4, 40 steps -> 4


def test_only_steps_whose_observation_is_read_are_rendered():
    runner = ScriptedRunner(scheduler="continuous", max_len=25)
    _episodes(runner, scripted_states([0]))
    renders = [(method, render) for method, ids, render in runner.created[0].log]
    policy_steps = [render for method, render in renders[2 + WAIT:]]
    # reset, set_init_state unrendered, WAIT settle steps of which the last renders
    assert renders[:2] == [("reset", False), ("set_init_state", False)]
    assert [render for _, render in renders[2:2 + WAIT]] == [False] * (WAIT - 1) + [True]
    # the steps before chunk starts 10 and 20 render; the last step (25) is never read
    assert [i + 1 for i, render in enumerate(policy_steps) if render] == [10, 20]


def test_noise_and_env_seeds_belong_to_the_episode_not_the_simulator():
    states = scripted_states([0, 0, 0])

    def seeds_by_chunk(num_envs):
        runner = ScriptedRunner(scheduler="continuous", num_parallel_envs=num_envs)
        policy = ObservationPolicy(record_seeds=True)
        scheduler = runner.make_scheduler(policy, base_seed=7)
        for i, state in enumerate(states):
            scheduler.submit(EpisodeSpec("task_a", state, key=("r", 0, i)))
        list(scheduler.run())
        return sorted(seed for call in policy.seeds for seed in call)

    expected = sorted(derive_seed(7, "r", 0, i, "chunk", c) for i in range(3) for c in range(4))
    assert seeds_by_chunk(1) == seeds_by_chunk(3) == expected
    assert derive_seed(7, "r", 0, 1) != derive_seed(7, "r", 0, 2) != derive_seed(8, "r", 0, 2)


def test_episodes_queued_while_running_join_the_same_run():
    runner = ScriptedRunner(scheduler="continuous")
    scheduler = runner.make_scheduler(ObservationPolicy())
    scheduler.submit(EpisodeSpec("task_a", scripted_states([3])[0], key=(0,)))
    seen = []
    for spec, ep in scheduler.run():
        seen.append((spec.key, ep.num_steps))
        if spec.key == (0,):
            scheduler.submit(EpisodeSpec("task_a", scripted_states([4])[0], key=(1,)))
    assert seen == [((0,), 3), ((1,), 4)]
    assert scheduler.stats.episodes == 2 and scheduler.stats.env_steps == 7


def test_a_lockstep_env_fault_restarts_the_running_episodes_and_counts_one_attempt():
    # the 4th step call dies (a settle step): the env is rebuilt, both running episodes restart
    runner = ScriptedRunner(scheduler="continuous", env_kwargs={"fail_on_step_call": 4})
    faulty, _ = _episodes(runner, scripted_states([5, 8, 3]))
    clean, _ = _episodes(ScriptedRunner(scheduler="continuous"), scripted_states([5, 8, 3]))
    assert runner.fault_counts["env_errors"] == 1 and runner.fault_counts["env_recreated"] == 1
    assert runner.fault_counts["episodes_dropped"] == 0
    assert len(runner.created) == 2 and runner.created[0].closed
    for a, b in zip(faulty, clean):
        _same_episode(a, b)


def test_an_episode_failing_every_attempt_is_returned_invalid():
    class AlwaysFailing(ScriptedRunner):
        def _make_vector_env(self, task_name, n):
            env = super()._make_vector_env(task_name, n)
            env.fail_on_step_call = 1
            return env

    runner = AlwaysFailing(scheduler="continuous", max_env_retries=1)
    episodes, _ = _episodes(runner, scripted_states([5, 5]))
    assert [ep.valid for ep in episodes] == [False, False]
    assert all(ep.extra.get("env_fault") for ep in episodes)
    assert runner.fault_counts["episodes_dropped"] == 2
    np.testing.assert_array_equal(episodes[1].init_state, scripted_states([5, 5])[1])


def test_evaluation_matches_lockstep_on_a_fixed_state_list():
    states = {"task_a": scripted_states([5, 0, 12]), "task_b": scripted_states([0, 0, 4, 9])}
    results = {}
    for scheduler in ("lockstep", "continuous"):
        runner = ScriptedRunner(scheduler=scheduler, tasks=("task_a", "task_b"))
        results[scheduler] = runner.run(ObservationPolicy(), init_states_by_task=states)
    for key in ("rollout/success_rate/task_a", "rollout/success_rate/task_b",
                "rollout/overall_success_rate", "rollout/num_episodes"):
        assert results["continuous"][key] == results["lockstep"][key], key
    assert results["continuous"]["rollout/num_episodes"] == 7
    assert results["continuous"]["rollout/success_rate/task_b"] == pytest.approx(0.5)
    assert 0 < results["continuous"]["rollout/simulator_utilization"] <= 1.0 + 1e-9


def test_scheduler_name_is_validated():
    with pytest.raises(ValueError, match="scheduler .*'async'.* must be one of"):
        ScriptedRunner(scheduler="async")


def test_unset_num_parallel_envs_takes_the_cores():
    from ript.env_runner.chunked_runner import default_num_simulators

    assert [default_num_simulators(c) for c in (1, 2, 4, 8, 16, 64)] == [1, 2, 4, 6, 14, 16]
    assert ScriptedRunner(num_parallel_envs=None).num_parallel_envs == default_num_simulators()


def test_threaded_inference_gives_the_same_episodes_and_batches_what_falls_due_meanwhile():
    import threading
    import time

    class SlowPolicy(ObservationPolicy):
        """Takes 20 ms per call and records the thread it ran in."""

        def __init__(self):
            super().__init__()
            self.threads = set()

        def select_action(self, obs, cfg_scale=1.0):
            self.threads.add(threading.current_thread().name)
            time.sleep(0.02)
            return self._chunks(obs)

    states = scripted_states([5, 0, 12, 25, 3, 0])
    reference, _ = _episodes(ScriptedRunner(scheduler="lockstep", num_parallel_envs=3), states)
    runner, policy = ScriptedRunner(num_parallel_envs=3), SlowPolicy()
    scheduler = runner.make_scheduler(policy)
    scheduler.threaded_inference = True
    for i, state in enumerate(states):
        scheduler.submit(EpisodeSpec("task_a", state, key=("call", 0, i)))
    by_index = {spec.key[2]: ep for spec, ep in scheduler.run()}
    for i, ep in enumerate(reference):
        _same_episode(ep, by_index[i])
    assert policy.threads and all(name.startswith("policy") for name in policy.threads)
    assert scheduler.stats.policy_calls == len(policy.calls) and sum(policy.calls) == sum(
        len(ep.chunk_start_steps) for ep in reference)


def test_batch_invariant_inference_samples_each_episode_alone():
    states = scripted_states([5, 0, 12, 3])
    reference, batched_policy = _episodes(ScriptedRunner(num_parallel_envs=3), states)
    alone, policy = _episodes(ScriptedRunner(num_parallel_envs=3, batch_invariant_inference=True), states)
    assert max(batched_policy.calls) > 1 and set(policy.calls) == {1}
    assert len(policy.calls) == sum(len(ep.chunk_start_steps) for ep in reference)
    for a, b in zip(reference, alone):
        _same_episode(a, b)


def test_the_pool_bound_never_closes_a_task_whose_episodes_are_running():
    runner = ScriptedRunner(tasks=("task_a", "task_b"), max_pooled_tasks=1)
    scheduler = runner.make_scheduler(ObservationPolicy())
    for task in ("task_a", "task_b", "task_a", "task_b"):  # both tasks' episodes run side by side
        scheduler.submit(EpisodeSpec(task, scripted_states([0])[0], key=(task, scheduler.num_queued)))
    episodes = [ep for _, ep in scheduler.run()]
    assert all(ep.valid and ep.num_steps == 40 for ep in episodes) and len(episodes) == 4
    assert len(runner.created) == 2 and not any(env.closed for env in runner.created)
    assert runner.fault_counts["env_errors"] == 0
    # once the run is over the bound applies again: using task_a closes task_b's workers
    runner.create_env("task_a")
    assert runner.created[1].closed and not runner.created[0].closed


def test_evaluation_videos_are_saved_in_queue_order_not_finishing_order():
    saved = []
    runner = ScriptedRunner(tasks=("task_a",), max_len=30)
    # the first state's episode runs to the cap, the second succeeds after 3 steps and ends first
    runner.run(ObservationPolicy(), n_video=2, init_states_by_task={"task_a": scripted_states([0, 3])},
               save_video_fn=lambda frames, task, index, success: saved.append((index, len(frames), success)))
    assert saved == [(0, 30, False), (1, 3, True)]
