"""Spec tests for ChunkedRunner's lockstep loop with a fake vectorised env and a fake policy (no simulator).

The fake env encodes "how many steps has this env taken, wait steps included" in
``robot0_eef_pos[0]``, so a test can tell exactly which observation the policy saw.
"""
from __future__ import annotations

import logging

import numpy as np
import pytest

from ript.env_runner.chunked_runner import NOOP_ACTION, ChunkedRunner, RecoverableVectorEnv
from ript.env_runner.pi0_runner_utils import NormStats, model_chunk_to_env_actions
from ript.types import Episode

WAIT = 3


def _stats() -> NormStats:
    return NormStats(state_mean=np.zeros(8), state_std=np.ones(8),
                     action_mean=np.zeros(7), action_std=np.full(7, 0.1))


class FakeVectorEnv:
    """n envs; env i reports done after ``success_at[i]`` steps (wait steps included).

    With ``on_demand`` it declares ``renders_on_demand`` like LiberoVectorEnv: a call with
    ``render=False`` returns observations without camera images, and every call's flag is logged
    in ``render_log`` as (method, steps taken by env 0 after the call, render). Without it, the
    runner must never pass the flag (LIBERO's own vector envs would reject it).
    """

    def __init__(self, n, success_at=None, fail_at_step_call=None, error=EOFError, on_demand=False):
        self.n = n
        self.renders_on_demand = on_demand
        self.render_log = []
        self.success_at = success_at or {}
        self.fail_at_step_call = fail_at_step_call  # raise on this (1-based) step() call
        self.error = error
        self.steps = np.zeros(n, dtype=int)
        self.step_calls = 0
        self.executed = [[] for _ in range(n)]  # every action received, wait steps included
        self.closed = False

    def __len__(self):
        return self.n

    def _obs(self, i, render=True):
        img = np.full((4, 4, 3), self.steps[i] % 255, dtype=np.uint8)
        img[0, 0] = 7  # not constant, so the rotation is observable
        obs = {"robot0_eef_pos": np.array([float(self.steps[i]), 0.0, 1.0]),
               "robot0_eef_quat": np.array([0.0, 0.0, 0.0, 1.0]),
               "robot0_gripper_qpos": np.array([0.04, -0.04])}
        if render:
            obs.update(agentview_image=img, robot0_eye_in_hand_image=img.copy())
        return obs

    def _render_flag(self, method, kw):
        assert self.renders_on_demand or not kw, f"{method}{kw} sent to an env without render on demand"
        render = kw.get("render", True)
        self.render_log.append((method, int(self.steps[0]), render))
        return render

    def reset(self, id=None, **kw):  # noqa: A002
        ids = range(self.n) if id is None else id
        for i in ids:
            self.steps[i] = 0
            self.executed[i] = []
        render = self._render_flag("reset", kw)
        return [self._obs(i, render) for i in ids]

    def set_init_state(self, states, id=None, **kw):  # noqa: A002
        render = self._render_flag("set_init_state", kw)
        return [self._obs(i, render) for i in (range(self.n) if id is None else id)]

    def step(self, actions, id=None, **kw):  # noqa: A002
        self.step_calls += 1
        if self.fail_at_step_call is not None and self.step_calls >= self.fail_at_step_call:
            raise self.error("worker died")
        ids = list(range(self.n)) if id is None else list(id)
        assert len(actions) == len(ids)
        dones = []
        for a, i in zip(actions, ids):
            self.steps[i] += 1
            self.executed[i].append(np.asarray(a))
            dones.append(self.steps[i] >= self.success_at.get(i, 10**9))
        render = self._render_flag("step", kw)
        return [self._obs(i, render) for i in ids], np.asarray(dones, float), np.asarray(dones), [{}] * len(ids)

    def close(self):
        self.closed = True


class FakePolicy:
    """Returns normalised chunk c (0-based call index) filled with 0.01 * (c + 1) + step / 1000."""

    def __init__(self, horizon=50, fail=False):
        self.norm_stats = _stats()
        self.horizon, self.fail = horizon, fail
        self.calls = []  # batch size of every select_action call

    def select_action(self, obs, cfg_scale=1.0):
        if self.fail:
            raise ValueError("policy bug")
        b = len(obs["prompt"])
        assert obs["image.base_0_rgb"].shape[:2] == (b, 3) and obs["state"].shape == (b, 8)
        self.calls.append(b)
        c = len(self.calls)
        chunk = 0.01 * c + np.arange(self.horizon)[None, :, None] / 1000.0
        return np.broadcast_to(chunk, (b, self.horizon, 7)).astype(np.float32).copy()


class FakeRunner(ChunkedRunner):
    def __init__(self, env_kwargs_per_creation=None, max_len=120, tasks=("task_a",), **kw):
        kw.setdefault("num_steps_wait", WAIT)
        kw.setdefault("num_parallel_envs", 2)
        # These specs pin the lockstep loop (batch composition, per-batch retries); the
        # continuous scheduler has its own in test_rollout_scheduler.py.
        kw.setdefault("scheduler", "lockstep")
        super().__init__(**kw)
        self.env_kwargs = list(env_kwargs_per_creation or [{}])
        self.created: list[FakeVectorEnv] = []
        self.max_len, self.tasks = max_len, list(tasks)

    def _make_vector_env(self, task_name, n):
        kwargs = self.env_kwargs[min(len(self.created), len(self.env_kwargs) - 1)]
        self.created.append(FakeVectorEnv(n, **kwargs))
        return self.created[-1]

    def _task_description(self, task_name):
        return task_name.replace("_", " ")

    def _task_names(self):
        return self.tasks

    def _init_states(self, task_name):
        return np.arange(4, dtype=np.float32)[:, None].repeat(3, axis=1)

    def _max_episode_length(self, task_name):
        return self.max_len


def _run(runner, policy, n_states=2, **kw):
    states = runner._init_states("task_a")[:n_states]
    return list(runner.run_policy_in_env("task_a", policy, states, **kw))


def test_chunk_boundaries_one_select_action_per_chunk_and_wait_steps_not_recorded():
    runner, policy = FakeRunner(max_len=120), FakePolicy()
    out = _run(runner, policy)
    assert policy.calls == [2, 2, 2]  # steps 0, 50, 100: one call for both envs per chunk
    env = runner.created[0]
    for success, reward, ep in out:
        assert isinstance(ep, Episode) and ep.valid and not success and reward == 0.0
        assert ep.actions.shape == (120, 7)
        np.testing.assert_array_equal(ep.chunk_start_steps, [0, 50, 100])
        assert ep.sampled_chunks.shape == (3, 50, 7) and len(ep.chunk_observations) == 3
        # the observation of chunk c was taken after WAIT no-op steps + 50 c policy steps
        seen = [obs.raw_state[0] for obs in ep.chunk_observations]
        np.testing.assert_allclose(seen, [WAIT, WAIT + 50, WAIT + 100])
        assert ep.chunk_observations[0].images["base_0_rgb"].shape == (3, 4, 4)
        assert ep.task_description == "task a" and ep.init_state is not None
    for i in range(2):
        # the env really got WAIT no-ops (gripper open) before the recorded actions
        np.testing.assert_array_equal(env.executed[i][:WAIT], [NOOP_ACTION] * WAIT)
        np.testing.assert_allclose(env.executed[i][WAIT:], out[i][2].actions)


def test_executed_actions_are_unnormalised_chunk_plus_chunk_start_state():
    runner, policy = FakeRunner(max_len=100), FakePolicy()
    ep = _run(runner, policy)[0][2]
    for c, start in enumerate(ep.chunk_start_steps):
        expect = model_chunk_to_env_actions(ep.sampled_chunks[c][None], ep.chunk_start_raw_states[c][None],
                                            policy.norm_stats, "relative")[0]
        np.testing.assert_allclose(ep.actions[start:start + 50], expect, atol=1e-6)
    # relative mode: dim 0 carries the chunk-start eef x (WAIT + 50 c); the gripper does not.
    assert ep.actions[50, 0] == pytest.approx(WAIT + 50 + 0.1 * 0.02, abs=1e-5)
    assert ep.actions[50, 6] == pytest.approx(0.1 * 0.02, abs=1e-6)


def test_stop_on_done_and_finished_envs_are_not_stepped():
    # env 0 succeeds 30 policy steps in, env 1 after 70 (both counts include the WAIT steps).
    runner = FakeRunner(env_kwargs_per_creation=[{"success_at": {0: WAIT + 30, 1: WAIT + 70}}])
    policy = FakePolicy()
    (s0, r0, ep0), (s1, r1, ep1) = _run(runner, policy)
    assert s0 and ep0.success and ep0.num_steps == 30 and r0 == 1.0
    np.testing.assert_array_equal(ep0.chunk_start_steps, [0])
    assert s1 and ep1.num_steps == 70
    np.testing.assert_array_equal(ep1.chunk_start_steps, [0, 50])
    assert policy.calls == [2, 1]  # the second chunk is sampled for the one env still running
    assert runner.created[0].steps.tolist() == [WAIT + 30, WAIT + 70]


def test_replan_protocol_executes_the_first_actions_of_each_chunk():
    runner, policy = FakeRunner(max_len=12), FakePolicy()
    ep = _run(runner, policy, replan_steps=5)[0][2]
    np.testing.assert_array_equal(ep.chunk_start_steps, [0, 5, 10])
    assert ep.sampled_chunks.shape == (3, 50, 7)  # the full chunk is still recorded
    expect = model_chunk_to_env_actions(ep.sampled_chunks[1][None], ep.chunk_start_raw_states[1][None],
                                        policy.norm_stats, "relative")[0, :5]
    np.testing.assert_allclose(ep.actions[5:10], expect, atol=1e-6)


def test_run_reports_rates_and_protocol():
    runner = FakeRunner(env_kwargs_per_creation=[{"success_at": {0: WAIT + 10}}], max_len=20,
                        tasks=("task_a", "task_b"), replan_steps=5)
    result = runner.run(FakePolicy(), num_trials_per_task=4)
    # per task: 4 states in 2 batches of 2 envs; env 0 of each batch succeeds -> 0.5
    assert result["rollout/success_rate/task_a"] == 0.5 and result["rollout/success_rate/task_b"] == 0.5
    assert result["rollout/overall_success_rate"] == 0.5 and result["rollout/num_episodes"] == 8
    assert result["rollout/protocol"] == "replan_5_of_50"
    assert FakeRunner(max_len=5).run(FakePolicy(), num_trials_per_task=1)["rollout/protocol"] == "open_loop_50"
    # one pooled env per task, kept alive after the evaluation until the runner is closed
    assert len(runner.created) == 2 and not any(env.closed for env in runner.created)
    runner.close()
    assert all(env.closed for env in runner.created) and runner.env_pool == {}


def test_run_saves_videos_through_callback():
    saved = []
    runner = FakeRunner(max_len=6)
    runner.run(FakePolicy(), n_video=1, num_trials_per_task=2,
               save_video_fn=lambda frames, task, idx, ok: saved.append((len(frames), task, idx, ok)))
    assert saved == [(6, "task_a", 0, False)]


def test_raising_worker_is_recreated_and_the_batch_retried():
    # first env dies at its 5th step() call (a killed worker surfaces as EOFError); the rebuilt one works
    runner = FakeRunner(env_kwargs_per_creation=[{"fail_at_step_call": 5}, {}], max_len=60)
    created = runner.create_env("task_a")
    env = created[0]
    # RIPT's rollout generator passes create_env's whole tuple back as created_env
    out = list(runner.run_policy_in_env("task_a", FakePolicy(), runner._init_states("task_a")[:2],
                                        created_env=created))
    assert [ep.valid for _, _, ep in out] == [True, True]
    assert all(ep.num_steps == 60 for _, _, ep in out)
    assert len(runner.created) == 2 and runner.created[0].closed
    assert runner.fault_counts["env_errors"] == 1 and runner.fault_counts["episodes_dropped"] == 0
    assert env.inner is runner.created[1]  # the caller's handle now points at the rebuilt env


def test_persistent_fault_drops_the_samples_and_counts_them(caplog):
    runner = FakeRunner(env_kwargs_per_creation=[{"fail_at_step_call": 1, "error": BrokenPipeError}],
                        max_env_retries=2)
    with caplog.at_level(logging.WARNING):
        out = _run(runner, FakePolicy())
    assert len(out) == 2
    for success, reward, ep in out:
        assert not success and reward == 0.0 and not ep.valid and ep.extra["env_fault"]
        assert ep.task_name == "task_a" and ep.init_state is not None
    assert len(runner.created) == 3  # first try + 2 retries
    assert runner.fault_counts["env_errors"] == 3 and runner.fault_counts["episodes_dropped"] == 2
    # training continues: the run after the fault uses a fresh env
    runner.env_kwargs.append({})
    assert all(ep.valid for _, _, ep in _run(runner, FakePolicy()))


def test_eval_excludes_dropped_episodes():
    runner = FakeRunner(env_kwargs_per_creation=[{"fail_at_step_call": 1}], max_env_retries=0, max_len=5)
    result = runner.run(FakePolicy(), num_trials_per_task=2)
    assert result["rollout/num_env_faults"] == 2 and result["rollout/num_episodes"] == 0


def test_policy_errors_are_not_mistaken_for_simulator_faults():
    runner = FakeRunner()
    with pytest.raises(ValueError, match="policy bug"):
        _run(runner, FakePolicy(fail=True))
    assert runner.fault_counts["env_errors"] == 0


def test_wrong_chunk_length_is_an_error():
    with pytest.raises(ValueError, match="open_loop"):
        _run(FakeRunner(), FakePolicy(horizon=10))


def test_config_validation():
    with pytest.raises(ValueError, match="n_action_steps"):
        FakeRunner(open_loop=25)
    FakeRunner(open_loop=25, allow_open_loop_mismatch=True)
    with pytest.raises(ValueError, match="replan_steps"):
        FakeRunner(replan_steps=60)
    with pytest.raises(ValueError, match="action_mode"):
        FakeRunner(action_mode="delta")


def test_norm_stats_check_runs_once_on_the_first_chunk(caplog):
    class LoudPolicy(FakePolicy):
        def select_action(self, obs, cfg_scale=1.0):
            return super().select_action(obs) + 50.0  # 50 std away from the mean

    runner = FakeRunner(max_len=5)
    with caplog.at_level(logging.WARNING):
        _run(runner, LoudPolicy())
    assert runner.norm_stats_warning and "NORM STATS MISMATCH" in runner.norm_stats_warning
    assert FakeRunner(max_len=5).norm_stats_warning is None


def test_random_init_and_recoverable_env_len():
    runner = FakeRunner(max_len=3)
    out = _run(runner, FakePolicy(), random_init=True)
    assert all(ep.init_state is None and ep.valid for _, _, ep in out)
    env = RecoverableVectorEnv(lambda: FakeVectorEnv(3), env_num=3)
    assert len(env) == 3


def test_relative_mode_with_commands_outside_the_action_range_warns():
    # relative mode adds the chunk-start state; the fake env's eef x grows with the step count
    # (WAIT = 3 -> x = 3 at the first chunk), so every x command is ~3: far outside [-1, 1]
    # (1 of the 6 arm dims = 17% of the values, above a 10% threshold).
    runner = FakeRunner(max_len=5, norm_stats_check_threshold=0.1)
    _run(runner, FakePolicy())
    assert runner.norm_stats_warning and "ACTION MODE" in runner.norm_stats_warning
    absolute = FakeRunner(max_len=5, action_mode="absolute", norm_stats_check_threshold=0.1)
    _run(absolute, FakePolicy())
    assert absolute.norm_stats_warning is None


def test_frames_are_resized_to_the_policys_image_size():
    """A policy with ``image_size`` gets frames resized to it (openpi's resize, before PI0), and the
    training record keeps exactly what the policy saw."""
    policy = FakePolicy()
    policy.image_size = 8  # the 4-px fake frames are upscaled to it
    seen = []
    select_action = policy.select_action
    policy.select_action = lambda obs, cfg_scale=1.0: (seen.append(obs["image.base_0_rgb"]), select_action(obs))[1]
    ep = _run(FakeRunner(max_len=50), policy)[0][2]
    assert seen[0].shape == (2, 3, 8, 8)
    np.testing.assert_array_equal(ep.chunk_observations[0].images["base_0_rgb"], seen[0][0])


# ---------------------------------------------------------------------------- render on demand


def _steps_rendered(env):
    """Env steps (counted with the settle steps) whose observation came with images."""
    return [n for method, n, render in env.render_log if method == "step" and render]


def test_images_are_asked_for_only_where_the_policy_reads_the_observation():
    runner = FakeRunner(env_kwargs_per_creation=[{"on_demand": True}], max_len=120)
    policy = FakePolicy()
    out = _run(runner, policy)
    env = runner.created[0]
    # the last settle step (obs of chunk 0) and the steps ending at chunk starts 50 and 100;
    # the reset and set_init_state observations are overwritten by the settle steps.
    assert _steps_rendered(env) == [WAIT, WAIT + 50, WAIT + 100]
    assert [(m, r) for m, _, r in env.render_log[:2]] == [("reset", False), ("set_init_state", False)]
    assert policy.calls == [2, 2, 2] and all(ep.valid and ep.num_steps == 120 for _, _, ep in out)
    assert runner.timing["rendered_vector_steps"] == 2


def test_replan_and_no_settle_steps_render_where_each_chunk_starts():
    runner = FakeRunner(env_kwargs_per_creation=[{"on_demand": True}], max_len=12, num_steps_wait=0)
    _run(runner, FakePolicy(), replan_steps=5)
    env = runner.created[0]
    # without settle steps chunk 0 reads the set_init_state observation; the step ending at
    # t = 12 = max_len starts no chunk, so it is not rendered
    assert [(m, r) for m, _, r in env.render_log[:2]] == [("reset", False), ("set_init_state", True)]
    assert _steps_rendered(env) == [5, 10]
    runner = FakeRunner(env_kwargs_per_creation=[{"on_demand": True}], max_len=12, num_steps_wait=0)
    _run(runner, FakePolicy(), random_init=True)
    assert runner.created[0].render_log[0] == ("reset", 0, True)  # random init reads the reset obs


def test_video_episodes_and_the_off_switch_render_every_step():
    saved = []
    runner = FakeRunner(env_kwargs_per_creation=[{"on_demand": True}], max_len=6)
    runner.run(FakePolicy(), n_video=1, num_trials_per_task=2,
               save_video_fn=lambda frames, task, idx, ok: saved.append(len(frames)))
    assert saved == [6] and _steps_rendered(runner.created[0]) == [WAIT] + list(range(WAIT + 1, WAIT + 7))
    runner = FakeRunner(env_kwargs_per_creation=[{"on_demand": True}], max_len=60, render_on_demand=False)
    _run(runner, FakePolicy())
    assert all(render for _, _, render in runner.created[0].render_log)


# ---------------------------------------------------------------------------- env pool


def test_pool_reuses_one_env_per_task_until_closed():
    runner = FakeRunner(max_len=5, tasks=("task_a", "task_b"))
    env_a, _, _ = runner.create_env("task_a")
    assert runner.create_env("task_a")[0] is env_a
    _run(runner, FakePolicy())  # no created_env: takes the pooled one, leaves it open
    runner.run(FakePolicy(), num_trials_per_task=2)
    assert [len(runner.created), runner.created[0].closed] == [2, False]  # task_a + task_b
    assert env_a.inner is runner.created[0] and set(runner.env_pool) == {"task_a", "task_b"}
    runner.close()
    assert all(env.closed for env in runner.created)
    assert runner.create_env("task_a")[0] is not env_a  # a run after close() builds anew


def test_without_reuse_every_use_builds_and_closes_its_env():
    runner = FakeRunner(max_len=5, reuse_envs=False)
    runner.run(FakePolicy(), num_trials_per_task=2)
    _run(runner, FakePolicy())
    assert len(runner.created) == 2 and all(env.closed for env in runner.created)
    assert runner.env_pool == {}


def test_pooled_env_is_rebuilt_in_place_after_a_fault():
    runner = FakeRunner(env_kwargs_per_creation=[{"fail_at_step_call": 2}, {}], max_len=5)
    pooled, _, _ = runner.create_env("task_a")
    assert all(ep.valid for _, _, ep in _run(runner, FakePolicy()))
    assert runner.created[0].closed and pooled.inner is runner.created[1]
    assert runner.create_env("task_a")[0] is pooled and runner.env_pool["task_a"] is pooled


def test_pool_bound_closes_the_least_recently_used_task_and_rebuilds_it_on_return():
    runner = FakeRunner(max_len=5, tasks=("task_a", "task_b", "task_c"), max_pooled_tasks=2)
    env_a, _, _ = runner.create_env("task_a")
    env_b, _, _ = runner.create_env("task_b")
    first_a = env_a.inner
    # the generator keeps its handle and passes it back: that use counts (a is now the newest)
    _run(runner, FakePolicy(), created_env=env_a)
    env_c, _, _ = runner.create_env("task_c")  # over the bound: b (least recently used) closes
    assert runner.created[1].closed and env_b.inner is None
    assert not first_a.closed and env_a.inner is first_a and env_c.inner is not None
    # b comes back through the generator's handle: rebuilt, and a (now the oldest) closes
    states = runner._init_states("task_b")[:2]
    assert all(ep.valid for _, _, ep in runner.run_policy_in_env("task_b", FakePolicy(), states,
                                                                 created_env=env_b))
    assert first_a.closed and env_a.inner is None and env_b.inner is runner.created[-1]
    assert len(runner.created) == 4 and runner.timing["pool_evictions"] == 2
    assert sum(env.inner is not None for env in runner.env_pool.values()) == 2
    runner.close()
    assert all(env.closed for env in runner.created)
    with pytest.raises(ValueError, match="max_pooled_tasks"):
        FakeRunner(max_pooled_tasks=0)


def test_run_evaluates_on_given_init_states():
    # rollout.init_states=heldout hands the dataset's held-out states in place of the shipped ones
    held_out = {"task_a": np.full((3, 3), 7.0, np.float32)}
    result = FakeRunner(max_len=5).run(FakePolicy(), init_states_by_task=held_out)
    assert result["rollout/num_episodes"] == 3  # all 3 given states, not the 4 shipped ones
    result = FakeRunner(max_len=5).run(FakePolicy(), init_states_by_task=held_out, num_trials_per_task=2)
    assert result["rollout/num_episodes"] == 2
    with pytest.raises(ValueError, match="was given 3 initial states"):
        FakeRunner(max_len=5).run(FakePolicy(), init_states_by_task=held_out, num_trials_per_task=4)
