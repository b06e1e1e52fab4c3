"""Typed records passed between pipeline stages.

An :class:`Episode` is what a runner hands to the optimizer: everything needed to rebuild the
50-step training windows that match what was executed open loop.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class ChunkObservation:
    """The observation the policy saw when it sampled one chunk (one environment)."""

    images: dict[str, np.ndarray]  # slot name ("base_0_rgb", ...) -> uint8 (3, H, W)
    state: np.ndarray  # float32 (8,) normalised state fed to the model
    raw_state: np.ndarray  # float32 (8,) un-normalised state (eef pos, axis-angle, gripper)


@dataclass
class Episode:
    """One finished rollout of one environment.

    Step indices count policy steps only: the settle-down wait steps before the first chunk are
    not part of ``actions``.
    """

    task_name: str
    task_description: str
    task_id: int
    success: bool
    total_reward: float
    actions: np.ndarray  # float32 (T, 7) env actions as executed (absolute convention)
    chunk_start_steps: np.ndarray  # int64 (C,) index into ``actions`` where each chunk started
    chunk_observations: list[ChunkObservation]  # length C, observation at each chunk start
    sampled_chunks: np.ndarray  # float32 (C, n_action_steps, 7) normalised model-space chunks
    valid: bool = True  # False for padding entries added by the rollout generator
    init_state: np.ndarray | None = None  # the initial state the episode was reset to
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_steps(self) -> int:
        return int(len(self.actions))

    @property
    def chunk_start_raw_states(self) -> np.ndarray:
        """float32 (C, 8): raw state at each chunk start."""
        if not self.chunk_observations:
            return np.zeros((0, 8), dtype=np.float32)
        return np.stack([obs.raw_state for obs in self.chunk_observations]).astype(np.float32)

    @classmethod
    def padding(cls, task_name: str = "", task_id: int = -1) -> "Episode":
        """An empty ``valid=False`` placeholder (RIPT pads batches to a fixed size)."""
        return cls(
            task_name=task_name,
            task_description="",
            task_id=task_id,
            success=False,
            total_reward=0.0,
            actions=np.zeros((0, 7), dtype=np.float32),
            chunk_start_steps=np.zeros((0,), dtype=np.int64),
            chunk_observations=[],
            sampled_chunks=np.zeros((0, 0, 7), dtype=np.float32),
            valid=False,
        )
