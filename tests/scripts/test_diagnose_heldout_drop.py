"""scripts/diagnose_heldout_drop.py: the random control moves the start exactly as far as RL did."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def drop(script_loader):
    return script_loader("diagnose_heldout_drop")


def _weights(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"expert.w": torch.randn(8, 4, generator=g), "cond": torch.zeros(2, 3), "head.b": torch.randn(5, generator=g)}


def test_the_random_control_moves_every_tensor_as_far_as_rl_in_another_direction(drop):
    start = _weights(0)
    moved = {"expert.w": start["expert.w"] + 0.01 * torch.randn(8, 4), "cond": torch.full((2, 3), 0.2),
             "head.b": start["head.b"].clone()}  # the head did not move
    control = drop.random_direction_like(start, moved, torch.Generator().manual_seed(1))
    for name in ("expert.w", "cond"):
        rl_step, random_step = moved[name] - start[name], control[name] - start[name]
        assert torch.isclose(random_step.norm(), rl_step.norm(), rtol=1e-5)
        cosine = float((random_step.flatten() @ rl_step.flatten()) / (random_step.norm() * rl_step.norm()))
        assert abs(cosine) < 0.9  # not RL's direction
    assert torch.equal(control["head.b"], start["head.b"])  # what RL left alone stays bit-identical
    again = drop.random_direction_like(start, moved, torch.Generator().manual_seed(1))
    assert all(torch.equal(again[n], control[n]) for n in start)  # the seed fixes the direction


def test_change_norms_report_the_overall_step_relative_to_the_start(drop):
    start = {"a": torch.tensor([3.0, 0.0]), "b": torch.tensor([0.0, 4.0])}
    other = {"a": torch.tensor([3.0, 1.0]), "b": torch.tensor([0.0, 4.0])}
    norms = drop.change_norms(start, other)
    assert norms == pytest.approx({"change_l2": 1.0, "start_l2": 5.0, "relative": 0.2})


def test_a_checkpoint_with_tensors_the_start_lacks_is_refused(drop):
    with pytest.raises(KeyError, match="start lacks"):
        drop.random_direction_like({"a": torch.zeros(2)}, {"a": torch.ones(2), "b": torch.ones(2)},
                                   torch.Generator().manual_seed(0))


def _cell(variant, seed, outcomes):
    return {"variant": variant, "env_seed": seed, "per_state": dict(outcomes)}


def test_the_summary_pools_seeds_and_counts_episodes_gained_and_lost_against_the_start(drop):
    cells = {"start_seed0": _cell("start", 0, {"1": True, "2": False, "3": True}),
             "rl_seed0": _cell("rl", 0, {"1": False, "2": True, "3": True}),
             "start_seed9": _cell("start", 9, {"1": True, "2": None}),  # an invalid episode is left out
             "rl_seed9": _cell("rl", 9, {"1": False, "2": True})}
    summary = drop.summarize_cells(cells)
    assert (summary["start"]["successes"], summary["start"]["episodes"]) == (3, 4)
    assert (summary["rl"]["successes"], summary["rl"]["episodes"]) == (3, 5)
    assert (summary["rl"]["gained"], summary["rl"]["lost"]) == (1, 2)  # state 2 seed 0; states 1 (both seeds)
    assert "gained" not in summary["start"]
    # A report without start cells is compared with a start given from another report.
    other = drop.summarize_cells({"rl_seed0": _cell("rl", 0, {"1": True, "2": True})},
                                 start=drop.episode_outcomes(cells)["start"])
    assert (other["rl"]["gained"], other["rl"]["lost"]) == (1, 0)


def test_summarize_prints_a_table_and_draws_the_figure(drop, tmp_path, capsys):
    import json

    first = {"start_seed0": _cell("start", 0, {"1": True, "2": False}), "rl_seed0": _cell("rl", 0, {"1": True, "2": True})}
    second = {"rl_seed0": _cell("rl", 0, {"1": False, "2": False})}
    (tmp_path / "a.json").write_text(json.dumps({"cells": first}))
    (tmp_path / "b.json").write_text(json.dumps({"cells": second}))
    drop.main(["--summarize", f"anchored={tmp_path / 'a.json'}", f"alpha0={tmp_path / 'b.json'}",
               "--plot", str(tmp_path / "fig.png")])
    table = capsys.readouterr().out
    assert "| anchored | rl | 2/2 |" in table and "| alpha0 | rl | 0/2 |" in table
    assert "| 0 / 1 |" in table  # alpha0 lost state 1 against the first report's start
    assert (tmp_path / "fig.png").stat().st_size > 0
    with pytest.raises(SystemExit):
        drop.main(["--out", str(tmp_path / "r.json")])  # no checkpoint, no --summarize
