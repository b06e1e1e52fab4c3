"""The success replay buffer: what it keeps, what it hands back, and that it survives a checkpoint."""
from __future__ import annotations

import numpy as np
import pytest

from cfg_flow_test_utils import make_episode, make_norm_stats
from ript.algos.rl_optimizers.success_replay import SuccessReplay, init_state_key
from ript.types import Episode


def episode(state_id: int, success: bool, seed: int = 0, task: str = "task_a") -> Episode:
    ep = make_episode(60, make_norm_stats(), success=success, seed=seed, task=task)
    ep.init_state = np.full(4, float(state_id))
    return ep


def test_key_depends_on_task_and_state_and_is_none_without_a_state():
    assert init_state_key(episode(1, True)) == init_state_key(episode(1, False, seed=3))
    assert init_state_key(episode(1, True)) != init_state_key(episode(2, True))
    assert init_state_key(episode(1, True)) != init_state_key(episode(1, True, task="task_b"))
    no_state = episode(1, True)
    no_state.init_state = None
    assert init_state_key(no_state) is None


def test_keeps_only_valid_successes_newest_per_state():
    replay = SuccessReplay(per_state=2)
    padding = Episode.padding("task_a")
    stored = replay.add([episode(1, True, seed=0), episode(1, False, seed=1), padding], round_index=0)
    assert stored == 1 and len(replay) == 1
    newer = [episode(1, True, seed=2), episode(1, True, seed=3)]
    replay.add(newer, round_index=1)
    assert len(replay) == 2  # the oldest success of state 1 was dropped
    got = replay.replay([episode(1, False)], round_index=2)
    assert [g.actions.tolist() for g in got] == [n.actions.tolist() for n in newer]


def test_replays_only_earlier_rounds_and_only_the_rounds_states():
    replay = SuccessReplay(per_state=3)
    replay.add([episode(1, True, seed=0), episode(2, True, seed=1)], round_index=0)
    replay.add([episode(1, True, seed=2)], round_index=1)
    # In round 1 only round 0's success of state 1 is replayed (round 1's own one has its advantage).
    assert len(replay.replay([episode(1, False)], round_index=1)) == 1
    assert len(replay.replay([episode(1, False)], round_index=2)) == 2
    assert len(replay.replay([episode(3, False)], round_index=2)) == 0  # never succeeded
    # a group of K rollouts of one state asks once, not K times
    assert len(replay.replay([episode(2, False), episode(2, False)], round_index=2)) == 1


def test_state_dict_round_trip_replays_the_same_episodes():
    replay = SuccessReplay(per_state=2)
    replay.add([episode(1, True, seed=0), episode(2, True, seed=1)], round_index=0)
    restored = SuccessReplay(per_state=2)
    restored.load_state_dict(replay.state_dict())
    ask = [episode(1, False), episode(2, False)]
    assert ([e.actions.tolist() for e in restored.replay(ask, 1)]
            == [e.actions.tolist() for e in replay.replay(ask, 1)])
    restored.add([episode(1, True, seed=4)], round_index=1)  # ids keep counting after a resume
    assert len(restored) == 3


@pytest.mark.parametrize("bad", [0, -1, 1.5])
def test_rejects_a_non_positive_size(bad):
    with pytest.raises(ValueError, match="success_replay_per_state"):
        SuccessReplay(bad)
