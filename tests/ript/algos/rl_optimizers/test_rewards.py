"""Binary success reward: 1 for success, 0 otherwise; padding scores 0; Hydra-instantiable."""
from __future__ import annotations

import numpy as np
import pytest

from ript.algos.rl_optimizers.rewards import BinarySuccessReward
from ript.types import Episode


def _episode(success: bool) -> Episode:
    ep = Episode.padding("t", 0)
    ep.valid, ep.success = True, success
    return ep


def test_binary_reward_values_and_batch():
    reward = BinarySuccessReward()
    assert reward(_episode(True)) == 1.0
    assert reward(_episode(False)) == 0.0
    pad = Episode.padding()
    pad.success = True  # a padding entry never earns reward, whatever its flag says
    assert reward(pad) == 0.0
    out = reward.batch([_episode(True), _episode(False), pad])
    assert out.dtype == np.float32 and out.tolist() == [1.0, 0.0, 0.0]


def test_hydra_instantiate_and_validation():
    from hydra.utils import instantiate

    reward = instantiate({"_target_": "ript.algos.rl_optimizers.rewards.BinarySuccessReward"})
    assert isinstance(reward, BinarySuccessReward)
    with pytest.raises(ValueError, match="success_value"):
        BinarySuccessReward(success_value=0.0, failure_value=1.0)
