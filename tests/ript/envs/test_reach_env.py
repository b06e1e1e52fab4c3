"""Spec tests for the fast 2-D reach environment (ript/envs/reach_env.py)."""
from __future__ import annotations

import logging
import time

import numpy as np
import pytest

from ript.envs import (
    PALETTE,
    ReachBenchmark,
    ReachEnv,
    ReachEnvConfig,
    ReachExpert,
    ReachVectorEnv,
    collect_demonstrations,
    reach_expert_action,
    sample_init_states,
)
from ript.envs.reach_env import AGENT_RGB, TABLE_RGB

logger = logging.getLogger(__name__)
NOOP = np.array([0, 0, 0, 0, 0, 0, -1.0])  # LIBERO's settle-down action: must not move the agent


def _state(agent, targets) -> np.ndarray:
    """Init state in the documented layout: agent xy, then one xy per colour (r, g, b, y)."""
    return np.concatenate([np.asarray(agent, float), np.asarray(targets, float).reshape(-1)])


FAR_TARGETS = [[0.6, 0.6], [-0.6, 0.6], [-0.6, -0.6], [0.6, -0.6]]  # red, green, blue, yellow


# ---------------------------------------------------------------- shapes, dtypes, config
@pytest.mark.parametrize("size", [56, 64])
def test_observation_keys_shapes_dtypes(size):
    env = ReachEnv("reach_red", ReachEnvConfig(image_size=size))
    for obs in (env.reset(), env.step(NOOP)[0]):
        assert obs["agentview_image"].shape == (size, size, 3)
        assert obs["robot0_eye_in_hand_image"].shape == (size, size, 3)
        assert obs["agentview_image"].dtype == np.uint8
        assert obs["robot0_eye_in_hand_image"].dtype == np.uint8
        assert obs["robot0_eef_pos"].shape == (3,)
        np.testing.assert_array_equal(obs["robot0_eef_quat"], [0, 0, 0, 1])  # identity, xyzw
        assert obs["robot0_gripper_qpos"].shape == (2,)
    assert env.render().shape == (size, size, 3)


def test_config_validation_names_key_value_and_fix():
    with pytest.raises(ValueError, match=r"max_speed=-1.*positive"):
        ReachEnvConfig(max_speed=-1)
    with pytest.raises(ValueError, match=r"colors=.*magenta.*use colours from"):
        ReachEnvConfig(colors=("red", "magenta"))
    with pytest.raises(ValueError, match=r"min_target_separation=0.1.*success_radius"):
        ReachEnvConfig(min_target_separation=0.1)
    with pytest.raises(ValueError, match="unknown"):
        ReachEnv("reach_orange")


def test_step_rejects_bad_actions_and_uninitialised_env():
    env = ReachEnv(0)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(NOOP)
    env.reset()
    with pytest.raises(ValueError, match="7 finite"):
        env.step(np.zeros(2))


# ---------------------------------------------------------------- dynamics
def test_agent_moves_as_commanded_and_ignores_unused_dims():
    cfg = ReachEnvConfig()
    env = ReachEnv(0, cfg)
    env.set_init_state(_state([0.0, 0.0], FAR_TARGETS))
    # dims 2..6 are ignored (documented subset); 0.5 * max_speed along x, -0.25 * along y
    obs, *_ = env.step(np.array([0.5, -0.25, 0.9, -0.9, 0.3, 0.3, 1.0]))
    np.testing.assert_allclose(obs["robot0_eef_pos"], [0.5 * cfg.max_speed, -0.25 * cfg.max_speed, cfg.eef_z])
    obs, *_ = env.step(NOOP)
    np.testing.assert_allclose(obs["robot0_eef_pos"][:2], [0.5 * cfg.max_speed, -0.25 * cfg.max_speed])


def test_speed_capped_with_direction_kept():
    cfg = ReachEnvConfig()
    env = ReachEnv(0, cfg)
    env.set_init_state(_state([0.0, 0.0], FAR_TARGETS))
    obs, *_ = env.step(np.array([30.0, 40.0, 0, 0, 0, 0, 0]))  # 50x over the limit, direction (3, 4)/5
    np.testing.assert_allclose(obs["robot0_eef_pos"][:2], [0.6 * cfg.max_speed, 0.8 * cfg.max_speed])


def test_agent_clipped_at_arena_bounds():
    cfg = ReachEnvConfig()
    env = ReachEnv(0, cfg)
    env.set_init_state(_state([0.98, -0.98], FAR_TARGETS))
    for _ in range(5):
        obs, *_ = env.step(np.array([1.0, -1.0, 0, 0, 0, 0, 0]))
    np.testing.assert_allclose(obs["robot0_eef_pos"][:2], [cfg.arena_half_extent, -cfg.arena_half_extent])


# ---------------------------------------------------------------- success
def test_success_within_radius_sets_done_and_reward():
    cfg = ReachEnvConfig()
    env = ReachEnv("reach_green", cfg)
    green = np.array(FAR_TARGETS[1])
    # start 3 steps of full speed (plus a bit) left of green, moving right
    start = green - [3 * cfg.max_speed + cfg.success_radius + 0.01, 0.0]
    env.set_init_state(_state(start, FAR_TARGETS))
    right = np.array([1.0, 0, 0, 0, 0, 0, 0])
    for _ in range(3):  # after 3 steps the distance is success_radius + 0.01: not yet
        _, reward, done, info = env.step(right)
        assert (reward, done, info["success"]) == (0.0, False, False)
    _, reward, done, info = env.step(right)  # now inside the radius
    assert (reward, done, info["success"]) == (1.0, True, True)
    assert env.check_success() and info["goal_distance"] <= cfg.success_radius


def test_reaching_a_distractor_is_not_success():
    env = ReachEnv("reach_red")
    env.set_init_state(_state(FAR_TARGETS[2], FAR_TARGETS))  # sitting on blue
    _, reward, done, _ = env.step(NOOP)
    assert (reward, done) == (0.0, False)
    env.set_task("reach_blue")
    assert env.check_success()


# ---------------------------------------------------------------- init states and seeding
def test_set_init_state_is_exact_and_roundtrips():
    states = sample_init_states(5, seed=3)
    assert states.shape == (5, ReachEnvConfig().state_dim) == (5, 10)
    env = ReachEnv(0)
    for s in states:
        obs = env.set_init_state(s)
        np.testing.assert_array_equal(obs["robot0_eef_pos"][:2], s[:2])
        np.testing.assert_array_equal(env.get_sim_state(), s)
        for i, c in enumerate(env.config.colors):
            np.testing.assert_array_equal(env.target_positions[c], s[2 + 2 * i: 4 + 2 * i])
    with pytest.raises(ValueError, match=r"expected \(10,\)"):
        env.set_init_state(np.zeros(4))


def test_sampled_init_states_respect_geometry():
    cfg = ReachEnvConfig()
    states = ReachEnv.sample_init_states(200, seed=0)
    agent, targets = states[:, :2], states[:, 2:].reshape(200, -1, 2)
    lim = cfg.arena_half_extent - cfg.spawn_margin
    assert np.all(np.abs(states) <= lim)
    pair = np.linalg.norm(targets[:, :, None] - targets[:, None, :], axis=-1)
    pair[:, np.arange(4), np.arange(4)] = np.inf
    assert pair.min() >= cfg.min_target_separation
    assert np.linalg.norm(targets - agent[:, None], axis=-1).min() >= cfg.min_start_distance


def test_seeding_is_deterministic_and_seeds_differ():
    np.testing.assert_array_equal(sample_init_states(8, 1), sample_init_states(8, 1))
    assert not np.allclose(sample_init_states(8, 1), sample_init_states(8, 2))

    def images(seed):
        env = ReachEnv(0, seed=seed)
        return [env.reset()["agentview_image"] for _ in range(3)]

    for a, b in zip(images(7), images(7)):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(images(7), images(8)))
    env = ReachEnv(0, seed=7)
    first = env.reset()["robot0_eye_in_hand_image"]
    env.seed(7)
    np.testing.assert_array_equal(env.reset()["robot0_eye_in_hand_image"], first)


def test_benchmark_metadata_and_fixed_init_states():
    bench = ReachBenchmark()
    assert bench.n_tasks == 4
    assert bench.get_task_names() == ["reach_red", "reach_green", "reach_blue", "reach_yellow"]
    assert bench.get_task(2).language == "reach the blue target"
    assert bench.max_episode_length == ReachEnvConfig().max_episode_length
    s0 = bench.get_task_init_states(0)
    assert s0.shape == (50, 10)
    np.testing.assert_array_equal(s0, ReachBenchmark().get_task_init_states("reach_red"))  # fixed
    assert not np.allclose(s0, bench.get_task_init_states(1))  # per-task sets differ


# ---------------------------------------------------------------- language and rendering
@pytest.mark.parametrize("task_id", range(4))
def test_instruction_names_goal_and_goal_visible_at_encoded_position(task_id):
    env = ReachEnv(task_id)
    color = env.config.colors[task_id]
    assert env.language == f"reach the {color} target" and color in env.language
    for s in ReachBenchmark().get_task_init_states(task_id)[:10]:
        obs = env.set_init_state(s)
        img = obs["agentview_image"]
        for i, c in enumerate(env.config.colors):  # every disc (goal and distractors) is drawn
            r, col = env.world_to_pixel(s[2 + 2 * i: 4 + 2 * i])
            np.testing.assert_array_equal(img[r, col], PALETTE[c])
        r, col = env.world_to_pixel(env.goal_position)
        np.testing.assert_array_equal(img[r, col], PALETTE[color])
        r, col = env.world_to_pixel(s[:2])
        np.testing.assert_array_equal(img[r, col], AGENT_RGB)
        # the wrist view is centred on the agent
        wrist = obs["robot0_eye_in_hand_image"]
        h = wrist.shape[0] // 2
        np.testing.assert_array_equal(wrist[h, h], AGENT_RGB)


def test_wrist_view_shows_nearby_disc_and_table():
    cfg = ReachEnvConfig()
    env = ReachEnv(0, cfg)
    # agent 0.25 right of red: red appears left of centre in the wrist view (half extent 0.5)
    obs = env.set_init_state(_state([0.85, 0.6], FAR_TARGETS))
    wrist = obs["robot0_eye_in_hand_image"]
    s = cfg.image_size
    col = int((0.6 - 0.85 + cfg.wrist_half_extent) / (2 * cfg.wrist_half_extent) * s)
    np.testing.assert_array_equal(wrist[s // 2, col], PALETTE["red"])
    assert (wrist == np.array(TABLE_RGB, np.uint8)).all(-1).any()


# ---------------------------------------------------------------- vector env
def test_vector_env_matches_libero_return_types():
    venv = ReachVectorEnv(3, task="reach_blue")
    states = ReachBenchmark().get_task_init_states(2)[:3]
    obs = venv.set_init_state(list(states))
    assert isinstance(obs, np.ndarray) and obs.dtype == object and obs.shape == (3,)
    np.testing.assert_array_equal(obs[1]["robot0_eef_pos"][:2], states[1][:2])
    obs, rewards, dones, infos = venv.step(np.tile(NOOP, (3, 1)))
    assert obs.shape == (3,) and isinstance(obs[0], dict)
    assert rewards.dtype == np.float64 and rewards.shape == (3,)
    assert dones.dtype == bool and dones.shape == (3,)
    assert [info["env_id"] for info in infos] == [0, 1, 2]
    assert venv.reset().shape == (3,) and len(venv) == 3
    # the vector env steps exactly like independent envs
    env = ReachEnv("reach_blue")
    env.set_init_state(states[2])
    single = env.step(np.array([0.3, 0.2, 0, 0, 0, 0, 0]))[0]
    venv.set_init_state(list(states))
    batch = venv.step(np.tile([0.3, 0.2, 0, 0, 0, 0, 0], (3, 1)))[0]
    np.testing.assert_array_equal(batch[2]["agentview_image"], single["agentview_image"])
    venv.close()
    with pytest.raises(RuntimeError, match="closed"):
        venv.reset()


# ---------------------------------------------------------------- expert and demos
def test_expert_solves_at_least_95_percent():
    bench = ReachBenchmark()
    env = ReachEnv(0)
    solved = total = 0
    for task_id in range(bench.n_tasks):
        env.set_task(task_id)
        expert = ReachExpert(env)
        for s in bench.get_task_init_states(task_id)[:25]:  # 100 episodes in all
            obs = env.set_init_state(s)
            expert.reset()
            for _ in range(bench.max_episode_length):
                obs, _, done, _ = env.step(expert.act(obs))
                if done:
                    break
            solved += int(done)
            total += 1
    assert solved / total >= 0.95, f"expert solved {solved}/{total}"


def test_expert_action_layout():
    a = reach_expert_action(np.array([0.0, 0.0, 0.0]), np.array([1.0, 0.0]), max_speed=0.04)
    np.testing.assert_allclose(a, [1, 0, 0, 0, 0, 0, -1])  # full speed toward goal, gripper open
    a = reach_expert_action(np.array([0.0, 0.0, 0.0]), np.array([0.02, 0.0]), max_speed=0.04)
    np.testing.assert_allclose(a[:2], [0.5, 0.0])  # slows down to land on the goal


def test_collect_demonstrations_layout_and_determinism():
    demos = collect_demonstrations(["reach_red", "reach_yellow"], n_per_task=3, seed=0)
    assert len(demos) == 6 and all(d["success"] for d in demos)
    d = demos[0]
    t = len(d["actions"])
    assert d["actions"].shape == (t, 7) and d["actions"].dtype == np.float32
    assert d["agentview_image"].shape == (t, 56, 56, 3) and d["agentview_image"].dtype == np.uint8
    assert d["robot0_eye_in_hand_image"].shape == (t, 56, 56, 3)
    assert d["robot0_eef_pos"].shape == (t, 3) and d["robot0_eef_quat"].shape == (t, 4)
    assert d["robot0_gripper_qpos"].shape == (t, 2)
    assert d["task_description"] == "reach the red target" and demos[3]["task_name"] == "reach_yellow"
    np.testing.assert_array_equal(d["robot0_eef_pos"][0, :2], d["init_state"][:2])  # obs[t] before act[t]
    # demos start from states disjoint from the benchmark's evaluation set
    bench = ReachBenchmark().get_task_init_states(0)
    assert not any(np.allclose(d["init_state"], b) for b in bench)
    again = collect_demonstrations(["reach_red", "reach_yellow"], n_per_task=3, seed=0)
    np.testing.assert_array_equal(d["actions"], again[0]["actions"])
    noisy = collect_demonstrations(["reach_red"], n_per_task=20, seed=0, noise=0.5, wrong_target_prob=0.5)
    assert 0 < sum(x["success"] for x in noisy) < 20  # mediocre: some fail, some succeed


# ---------------------------------------------------------------- speed (logged, not asserted)
def test_steps_per_second_logged(caplog):
    env = ReachEnv(0)
    env.reset()
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, size=(2000, 7))
    start = time.perf_counter()
    for a in actions:
        env.step(a)
    rate = len(actions) / (time.perf_counter() - start)
    with caplog.at_level(logging.INFO):
        logger.info("ReachEnv: %.0f steps/s at 56x56 with both views rendered", rate)
    assert rate > 0
