"""Episode rewards for RLOO.

RIPT-VLA trains on the binary task-success signal only (1 if the episode reached the goal,
else 0); the advantage is that reward minus the mean of the other K-1 rollouts from the same
init state. Configs instantiate the reward with Hydra, e.g.::

    reward_fn:
      _target_: ript.algos.rl_optimizers.rewards.BinarySuccessReward
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ript.types import Episode


@dataclass
class BinarySuccessReward:
    """``success_value`` for a successful episode, ``failure_value`` otherwise.

    Padding episodes (``valid=False``) score ``failure_value``; the optimizer masks them anyway.
    """

    success_value: float = 1.0
    failure_value: float = 0.0

    def __post_init__(self) -> None:
        if not self.success_value > self.failure_value:
            raise ValueError(
                f"success_value ({self.success_value}) must exceed failure_value "
                f"({self.failure_value}) or success would be penalised; swap them"
            )

    def __call__(self, episode: Episode) -> float:
        if episode.valid and bool(episode.success):
            return float(self.success_value)
        return float(self.failure_value)

    def batch(self, episodes: Sequence[Episode]) -> np.ndarray:
        """float32 (N,) rewards, in episode order."""
        return np.asarray([self(ep) for ep in episodes], dtype=np.float32)
