"""SFT demos replayed into the conditional branch as positives ("if the lift stalls", issue 26).

Why: from a few-demo start most RLOO groups are all-failure (docs/learning_libero.md: 50-88 % of
groups on LIBERO task 4), so most rounds give the conditional branch no positive at all, and the
success replay (success_replay.py) has nothing to replay for a state that never succeeded. The
successful demos the start was trained on are positives for exactly those states. Each round,
``per_round`` of them (drawn by a generator seeded with the round, so a resumed run draws the
same) re-enter the conditional branch with a fixed weight, like replayed successes.

The demos are read once from a demo pack (``scripts/sft_libero.py record``, ``.npz``) or a
``demos.pkl`` (``scripts/bench_learning_libero.py``'s demos stage) and turned into the
:class:`~ript.types.Episode` a runner would have recorded (``demo_to_episode``), so their windows
are cut exactly as rollout windows are. Failed demos are never replayed.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ript.types import Episode


def load_successful_demos(path: str | Path, num_demos: int | None = None) -> list[dict[str, Any]]:
    """The successful demos among the first ``num_demos`` (None: all) of a pack (.npz) or a
    demos.pkl -- the ones the start was trained on (``scripts/sft_libero.py train --num-demos``),
    so replay adds no demonstration the start never had. An error names the key if none succeeded."""
    path = Path(path)
    if path.suffix == ".npz":
        from ript.datasets.demo_pack import load_demo_pack

        demos = load_demo_pack(path, num_demos)
    else:
        from ript.envs.libero_object_demos import load_demonstrations

        demos = load_demonstrations(path)[:num_demos]
    successes = [d for d in demos if d["success"]]
    if not successes:
        raise ValueError(f"demo_replay_path={str(path)!r}: none of its {len(demos)} demos succeeded; "
                         "replay needs successful demos (or set demo_replay_per_round=0)")
    return successes


class DemoReplay:
    """``per_round`` successful demos a round, as episodes; a pure function of (seed, round)."""

    def __init__(self, path: str | Path, per_round: int, seed: int = 0, num_demos: int | None = None) -> None:
        self.path, self.per_round, self.seed, self.num_demos = Path(path), int(per_round), int(seed), num_demos
        self._demos: list[dict[str, Any]] | None = None
        self._episodes: dict[int, Episode] = {}  # demo index -> episode (built once; norm stats fixed)

    @property
    def demos(self) -> list[dict[str, Any]]:
        if self._demos is None:
            self._demos = load_successful_demos(self.path, self.num_demos)
        return self._demos

    def indices_for_round(self, round_index: int) -> list[int]:
        """Which demos round ``round_index`` replays: without replacement, sorted."""
        count = min(self.per_round, len(self.demos))
        rng = np.random.default_rng([self.seed, round_index])
        return sorted(int(i) for i in rng.choice(len(self.demos), size=count, replace=False))

    def episodes_for_round(self, round_index: int, norm_stats: Any, n_action_steps: int) -> list[Episode]:
        return [self._episode(i, norm_stats, n_action_steps) for i in self.indices_for_round(round_index)]

    def all_episodes(self, norm_stats: Any, n_action_steps: int) -> list[Episode]:
        """Every successful demo, in pack order (the optimizer's demo-loss probe)."""
        return [self._episode(i, norm_stats, n_action_steps) for i in range(len(self.demos))]

    def _episode(self, index: int, norm_stats: Any, n_action_steps: int) -> Episode:
        from ript.algos.sft_warm_start import demo_to_episode  # the SFT path's conversion, not a copy

        if index not in self._episodes:
            self._episodes[index] = demo_to_episode(self.demos[index], norm_stats, [], n_action_steps)
        return self._episodes[index]


__all__ = ["DemoReplay", "load_successful_demos"]
