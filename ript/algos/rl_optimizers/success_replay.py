"""Replay of earlier successes: the newest successful rollouts of each init state, kept across rounds.

Why (docs/learning.md, "Why runs declined"): RLOO gives an advantage only to groups whose K
rollouts are mixed. A scene whose rollouts all succeed gets no conditional-branch signal at all,
and a scene that slid into all-failure has no positive example left to climb back with; the
policy keeps training on the other scenes and can forget both. Replaying each init state's
newest stored successes in the conditional branch (with a fixed weight, as if they had a
positive advantage) keeps every scene that ever succeeded anchored to a way of solving it.

The buffer holds whole :class:`~ript.types.Episode` records (the observations at chunk starts
and the executed actions), so replayed windows are cut exactly as fresh ones are. Memory: one
episode keeps its chunk-start images (two 224x224 RGB frames per chunk for LIBERO, ~1 MB per
episode), times ``per_state`` times the number of init states seen.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Iterable, Sequence

import numpy as np

from ript.types import Episode


def init_state_key(episode: Episode) -> str | None:
    """A stable key for the episode's init state (task + hash of the state's bytes); None if unknown."""
    if episode.init_state is None:
        return None
    state = np.ascontiguousarray(np.asarray(episode.init_state, dtype=np.float64))
    return f"{episode.task_name}:{hashlib.sha1(state.tobytes()).hexdigest()[:16]}"


class SuccessReplay:
    """The ``per_state`` newest successful episodes of every init state seen.

    ``add`` stores this round's successes; ``replay`` returns the stored successes of the given
    init states that were collected in an *earlier* round (this round's own successes already
    take part through their advantage).
    """

    def __init__(self, per_state: int):
        if int(per_state) != per_state or per_state < 1:
            raise ValueError(f"success_replay_per_state={per_state!r} must be an integer >= 1 "
                             "(0 in the config turns replay off)")
        self.per_state = int(per_state)
        self._episodes: dict[str, OrderedDict[int, Episode]] = {}
        self._round_added: dict[int, int] = {}
        self._next_id = 0

    def __len__(self) -> int:
        return sum(len(v) for v in self._episodes.values())

    @property
    def num_states(self) -> int:
        return len(self._episodes)

    def add(self, episodes: Iterable[Episode], round_index: int) -> int:
        """Store the valid successful episodes (newest ``per_state`` per init state); returns how many."""
        added = 0
        for ep in episodes:
            key = init_state_key(ep)
            if not (ep.valid and ep.success) or key is None:
                continue
            slot = self._episodes.setdefault(key, OrderedDict())
            slot[self._next_id] = ep
            self._round_added[self._next_id] = round_index
            self._next_id += 1
            added += 1
            while len(slot) > self.per_state:  # drop the oldest
                old_id, _ = slot.popitem(last=False)
                del self._round_added[old_id]
        return added

    def replay(self, episodes: Sequence[Episode], round_index: int) -> list[Episode]:
        """Stored successes (from rounds before ``round_index``) of the init states in ``episodes``."""
        keys = []
        for ep in episodes:
            key = init_state_key(ep)
            if ep.valid and key is not None and key not in keys:
                keys.append(key)
        out = []
        for key in keys:
            for ep_id, ep in self._episodes.get(key, {}).items():
                if self._round_added[ep_id] < round_index:
                    out.append(ep)
        return out

    def state_dict(self) -> dict:
        """Everything needed to resume with the same buffer (episodes are pickled with the checkpoint)."""
        return {"per_state": self.per_state, "next_id": self._next_id,
                "entries": [(key, ep_id, self._round_added[ep_id], ep)
                            for key, slot in self._episodes.items() for ep_id, ep in slot.items()]}

    def load_state_dict(self, state: dict) -> None:
        self._episodes, self._round_added = {}, {}
        self._next_id = int(state.get("next_id", 0))
        for key, ep_id, round_added, ep in state.get("entries", []):
            self._episodes.setdefault(key, OrderedDict())[int(ep_id)] = ep
            self._round_added[int(ep_id)] = int(round_added)


__all__ = ["SuccessReplay", "init_state_key"]
