"""scripts/bench_rollout.py, scheduler part: one real LIBERO round per (scheduler, sampler) case on
the same simulators and states, with the numbers docs/benchmarks.md quotes."""
from __future__ import annotations

import json

import pytest


def test_scheduler_part_times_every_case_on_the_same_states(script_loader, tmp_path):
    bench = script_loader("bench_rollout")
    out_json, out_md = tmp_path / "round.json", tmp_path / "round.md"
    report = bench.main(["--parts", "scheduler", "--states", "1", "--k", "2", "--num-envs", "2",
                         "--schedulers", "lockstep,continuous", "--sampler", "eager",
                         "--device", "cpu", "--out-json", str(out_json), "--out-md", str(out_md)])
    rows = report["scheduler"]
    assert [r["scheduler"] for r in rows] == ["lockstep", "continuous"]
    for row in rows:
        assert row["episodes"] == 2 and row["simulators"] == 2 and row["sampler"] == "eager"
        assert 0 < row["utilization"] <= 1.0
        assert row["wall_s"] > 0 and row["episodes_per_min"] == 60.0 * 2 / row["wall_s"]
    # Only the continuous scheduler counts its policy calls; every episode needs at least one.
    assert rows[0]["policy_calls"] is None and rows[1]["policy_calls"] >= 2
    assert json.loads(out_json.read_text())["scheduler"] == json.loads(json.dumps(rows))
    table = out_md.read_text()
    assert "| lockstep | eager | 2 (" in table and "| continuous | eager | 2 (" in table
    assert "Speed-up (wall)" in table


def test_an_unknown_sampler_is_refused_by_name(script_loader, capsys):
    bench = script_loader("bench_rollout")
    with pytest.raises(SystemExit) as exit_:
        bench.parse_args(["--sampler", "eager,graphs"])
    assert exit_.value.code == 2
    assert "'graphs' is not a sampler" in capsys.readouterr().err
