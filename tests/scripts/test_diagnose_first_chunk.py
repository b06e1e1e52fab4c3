"""scripts/diagnose_first_chunk.py: the first chunk's noise is the chosen one, the rest is fresh, and
the variance share and its permutation test read a signal where there is one and none where not."""
from __future__ import annotations

import collections

import numpy as np
import pytest

from ript.env_runner.rollout_scheduler import derive_seed
from scheduler_fakes import ObservationPolicy, ScriptedRunner, scripted_states


@pytest.fixture(scope="module")
def first_chunk(script_loader):
    return script_loader("diagnose_first_chunk")


def test_between_group_share_is_one_when_the_group_decides_and_zero_when_it_does_not(first_chunk):
    between_group_share = first_chunk.between_group_share
    decided = np.array([[1, 1, 1], [0, 0, 0]])
    assert between_group_share(decided)[1] == pytest.approx(1.0)
    undecided = np.array([[1, 0, 1, 0], [0, 1, 0, 1]])
    assert between_group_share(undecided)[1] == pytest.approx(0.0)
    assert between_group_share(np.ones((3, 4)))[1] == 0.0  # no variance at all


def test_permutation_test_finds_a_first_chunk_that_decides_and_none_in_coin_flips(first_chunk):
    permutation_test = first_chunk.permutation_test
    rng = np.random.default_rng(1)
    decides = [np.repeat(rng.integers(0, 2, (8, 1)), 6, axis=1) for _ in range(3)]  # group = outcome
    strong = permutation_test(decides, permutations=500)
    assert strong["eta2"] == pytest.approx(1.0) and strong["p_value"] < 0.01
    coins = [rng.integers(0, 2, (8, 6)) for _ in range(3)]  # the group says nothing
    weak = permutation_test(coins, permutations=500)
    assert weak["p_value"] > 0.05 and weak["eta2"] < 0.4
    # shuffled labels give the share that chance alone gives M - 1 of M N - 1 degrees of freedom
    assert weak["eta2_shuffled_mean"] == pytest.approx(7 / 47, abs=0.03)


def test_run_state_gives_each_first_chunk_group_its_seed_and_every_later_chunk_fresh_noise(first_chunk):
    runner = ScriptedRunner(max_len=35)  # 4 chunks of 10 steps, never a success on state [0, ...]
    policy = ObservationPolicy(record_seeds=True)
    try:
        outcomes = first_chunk.run_state(runner, policy, "task_a", scripted_states([0])[0], row=7, first_chunks=3,
                             continuations=2, noise_seed=11)
    finally:
        runner.close()
    assert outcomes.shape == (3, 2) and not outcomes.any()
    counts = collections.Counter(seed for call in policy.seeds for seed in call)
    chosen = [derive_seed(11, "first_chunk", 7, m) for m in range(3)]
    assert [counts[s] for s in chosen] == [2, 2, 2]  # one first chunk per group member
    later = {s: n for s, n in counts.items() if s not in chosen}
    assert len(later) == 6 * 3 and set(later.values()) == {1}  # 6 episodes x 3 later chunks, all distinct


def test_summary_and_figure_of_a_report(first_chunk, tmp_path):
    report = {"continuations": 2, "outcomes": {"3": [[1, 1], [0, 0]], "21": [[1, 0], [0, 1]]}}
    report["summary"] = first_chunk.summarize(report, permutations=200)
    states = report["summary"]["states"]
    assert states["3"] == {"success": 0.5, "per_first_chunk": [1.0, 0.0], "eta2": pytest.approx(1.0)}
    assert states["21"]["eta2"] == pytest.approx(0.0)
    assert report["summary"]["pooled"]["eta2"] == pytest.approx(0.5)  # 2 of the 4 units of variance
    first_chunk.plot_report(report, tmp_path / "first_chunk.png")
    assert (tmp_path / "first_chunk.png").stat().st_size > 10_000


def test_a_report_is_continued_only_with_the_settings_that_made_it(first_chunk):
    report = {"checkpoint": "/ck/step_5", "variant": "start", "first_chunks": 8, "continuations": 6, "outcomes": {}}
    same = {"checkpoint": "/ck/step_5", "variant": "start", "first_chunks": 8, "continuations": 6}
    assert first_chunk.conflicting_settings(report, same) == {}
    assert first_chunk.conflicting_settings(report, {**same, "continuations": 4}) == {"continuations": (6, 4)}
    assert first_chunk.conflicting_settings({}, same) == {}  # a new report
