"""Synthetic episodes for the CFG-Flow tests (no simulator, no model).

An episode is built the way the runner builds one: sample normalised model-space chunks, turn
each into env actions with the runner's own ``model_chunk_to_env_actions`` and the chunk-start
raw state, and execute (record) only the steps before the episode ended.
"""
from __future__ import annotations

import numpy as np

from ript.env_runner.pi0_runner_utils import NormStats, model_chunk_to_env_actions
from ript.types import ChunkObservation, Episode

H = 50  # n_action_steps


def make_norm_stats() -> NormStats:
    # Non-trivial mean/std so a missing (de)normalisation or relative offset shows up.
    return NormStats(
        state_mean=np.linspace(-0.5, 0.5, 8), state_std=np.linspace(0.5, 1.5, 8),
        action_mean=np.linspace(-0.2, 0.3, 7), action_std=np.linspace(0.1, 0.7, 7),
    )


def make_obs(rng: np.random.Generator, norm_stats: NormStats, hw: int = 4) -> ChunkObservation:
    raw = rng.normal(size=8).astype(np.float32)
    return ChunkObservation(
        images={"base_0_rgb": rng.integers(0, 256, (3, hw, hw), dtype=np.uint8),
                "left_wrist_0_rgb": rng.integers(0, 256, (3, hw, hw), dtype=np.uint8)},
        state=norm_stats.normalize_state(raw),
        raw_state=raw,
    )


def make_episode(
    num_steps: int,
    norm_stats: NormStats,
    *,
    success: bool = True,
    seed: int = 0,
    task: str = "task_a",
    action_mode: str = "relative",
    step_observations: bool = False,
) -> Episode:
    """An episode of ``num_steps`` executed steps; chunks start every H steps."""
    rng = np.random.default_rng(seed)
    starts = np.arange(0, num_steps, H, dtype=np.int64)  # (C,)
    chunk_obs = [make_obs(rng, norm_stats) for _ in starts]
    chunks = rng.normal(size=(len(starts), H, 7)).astype(np.float32)  # (C, H, 7) normalised
    actions = []
    for c, t in enumerate(starts):
        env = model_chunk_to_env_actions(chunks[c][None], chunk_obs[c].raw_state[None], norm_stats, action_mode)[0]
        actions.append(env[: num_steps - t])  # the episode may end mid-chunk
    episode = Episode(
        task_name=task, task_description=f"do {task}", task_id=0, success=success,
        total_reward=float(success), actions=np.concatenate(actions).astype(np.float32),
        chunk_start_steps=starts, chunk_observations=chunk_obs, sampled_chunks=chunks,
    )
    if step_observations:
        # Per-step observations; at chunk starts they must be the chunk-start record itself.
        per_step = [make_obs(rng, norm_stats) for _ in range(num_steps)]
        for c, t in enumerate(starts):
            per_step[t] = chunk_obs[c]
        episode.extra["step_observations"] = per_step
    return episode
