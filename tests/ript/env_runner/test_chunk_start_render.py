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
