"""ReachRunner with the real tiny PI0: episode records, open-loop chunks, stop on success, eval."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ript.env_runner.pi0_runner_utils import model_chunk_to_env_actions
from ript.env_runner.reach_runner import ReachRunner
from ript.envs.reach_env import ReachBenchmark, ReachEnvConfig, reach_expert_action

ENV = dict(max_speed=0.015, max_episode_length=120, num_init_states_per_task=2)


@pytest.fixture(scope="module")
def policy():
    from ript.algos.policies.pi0_oft_policy import PI0_OFT_Policy

    torch.manual_seed(0)
    return PI0_OFT_Policy(device_id="cpu", norm_stats_path="builtin:reach", preset="tiny", dtype="float32")


def _runner(**kw) -> ReachRunner:
    return ReachRunner(task_names_to_use=["reach_red"], num_parallel_envs=2, env_config=ENV, **kw)


def test_episode_records_with_the_tiny_pi0(policy):
    runner = _runner()
    states = runner.benchmark.get_task_init_states("reach_red")
    episodes = [ep for _, _, ep in runner.run_policy_in_env("reach_red", policy, states)]
    assert len(episodes) == 2
    for ep, state in zip(episodes, states):
        T = ep.num_steps
        assert T == 120 or ep.success  # only success ends an episode before the cap
        starts = list(range(0, T, 50))
        assert ep.chunk_start_steps.tolist() == starts  # one select_action every 50 steps
        assert len(ep.chunk_observations) == len(starts) and ep.sampled_chunks.shape == (len(starts), 50, 7)
        np.testing.assert_array_equal(ep.init_state, state)
        assert ep.task_description == "reach the red target" and ep.extra["action_mode"] == "absolute"
        for c, t in enumerate(starts):
            obs = ep.chunk_observations[c]
            assert obs.images["base_0_rgb"].shape == (3, 56, 56) and obs.images["base_0_rgb"].dtype == np.uint8
            np.testing.assert_allclose(policy.norm_stats.normalize_state(obs.raw_state), obs.state, atol=1e-6)
            # executed actions = the sampled normalised chunk, unnormalised (absolute mode), open loop
            env_chunk = model_chunk_to_env_actions(ep.sampled_chunks[c][None], obs.raw_state[None],
                                                   policy.norm_stats, "absolute")[0]
            n = min(50, T - t)
            np.testing.assert_allclose(ep.actions[t:t + n], env_chunk[:n], atol=1e-6)
        # the first chunk observation is the init state itself (no wait steps in reach)
        np.testing.assert_allclose(ep.chunk_observations[0].raw_state[:2], state[:2], atol=1e-6)


class _ExpertPolicy:
    """Wraps the tiny PI0 (for its norm stats) but plans the expert's moves from the chunk-start
    state, so episodes succeed and the stop-on-success path is exercised."""

    def __init__(self, inner, goal):
        self.norm_stats, self.goal = inner.norm_stats, goal

    def select_action(self, observation, cfg_scale=1.0):
        raw = self.norm_stats.unnormalize_state(observation["state"])  # (B, 8)
        chunks = []
        for s in raw:
            pos, acts = s[:2].astype(np.float64), []
            for _ in range(50):  # open-loop plan: integrate the expert's own moves
                a = reach_expert_action(pos, self.goal, ENV["max_speed"])
                acts.append(a)
                pos = pos + a[:2] * ENV["max_speed"]
            chunks.append(self.norm_stats.normalize_action(np.stack(acts)))
        return torch.from_numpy(np.stack(chunks))


def test_stops_on_success(policy):
    runner = _runner()
    bench = ReachBenchmark(ReachEnvConfig(**ENV))
    state = bench.get_task_init_states("reach_red")[0]
    goal = state[2:4]  # red is colour 0
    expected = int(np.ceil((np.linalg.norm(goal - state[:2]) - 0.1) / ENV["max_speed"]))
    (success, reward, ep), = list(runner.run_policy_in_env("reach_red", _ExpertPolicy(policy, goal), [state]))
    assert success and ep.success and reward >= 1.0
    assert abs(ep.num_steps - expected) <= 2  # stopped at the first successful step, not at the cap
    assert ep.chunk_start_steps.tolist() == list(range(0, ep.num_steps, 50))


def test_run_reports_success_rates_per_task(policy):
    runner = ReachRunner(task_names_to_use=["reach_red", "reach_green"], num_parallel_envs=1,
                         env_config=dict(ENV, max_episode_length=50))
    out = runner.run(policy, num_trials_per_task=1, cfg_scale=2.0)
    assert set(out) >= {"rollout/overall_success_rate", "rollout/success_rate/reach_red",
                        "rollout/success_rate/reach_green", "rollout/protocol"}
    assert out["rollout/num_episodes"] == 2 and out["rollout/cfg_scale"] == 2.0
    assert out["rollout/protocol"] == "open_loop_50"
