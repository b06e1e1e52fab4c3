"""scripts/summarize_learning_libero.py: pooled held-out counts, Wilson intervals, the table and plot."""
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import summarize_learning_libero as summary_script  # noqa: E402


def test_wilson_interval_matches_hand_computed_values():
    # z = 1.96, n = 10: z^2/n = 0.38416, denominator 1.38416.
    # 0/10: centre = (0 + 0.19208) / 1.38416 = 0.13877 = half width -> (0, 0.2775).
    low, high = summary_script.wilson_interval(0, 10)
    assert low == pytest.approx(0.0, abs=1e-9)
    assert high == pytest.approx(0.2775, abs=1e-4)
    # 5/10: centre 0.5; half = 1.96 * sqrt(0.025 + 0.009604) / 1.38416 = 0.2634.
    low, high = summary_script.wilson_interval(5, 10)
    assert (low, high) == pytest.approx((0.2366, 0.7634), abs=1e-4)


def _run_dir(root: Path, task_id: int, seed: int, start: float, after: float, curve: list[float]) -> Path:
    run = root / f"rl_t{task_id}_s{seed}"
    (run / "rl").mkdir(parents=True)
    result = {"task_id": task_id, "task_name": f"task_{task_id}", "seed": seed,
              "sft_eval": {"heldout_success": start, "heldout_episodes": 25},
              "rl_eval": {"heldout_success": after, "heldout_episodes": 25}}
    (run / "results.json").write_text(json.dumps(result))
    (run / "rl" / "metrics.jsonl").write_text("".join(json.dumps({"rollout/mean_scores": c}) + "\n" for c in curve))
    return run


def test_runs_are_pooled_per_task_and_the_plot_is_written(tmp_path, capsys):
    dirs = [_run_dir(tmp_path, 4, 11, 0.12, 0.16, [0.1, 0.2]),   # 3 -> 4 of 25
            _run_dir(tmp_path, 4, 12, 0.20, 0.40, [0.2, 0.3]),   # 5 -> 10 of 25
            _run_dir(tmp_path, 1, 11, 0.0, 0.0, [0.0])]
    summary_script.main([str(d) for d in dirs] + ["--out-dir", str(tmp_path / "out")])
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["4"]["start"] == [8, 50] and summary["4"]["rl"] == [14, 50]
    assert summary["4"]["change_points"] == pytest.approx(12.0)
    assert summary["1"]["start"] == [0, 25]
    assert (tmp_path / "out" / "learning_libero.png").stat().st_size > 1000
    assert "3→4, 5→10" in capsys.readouterr().out


def test_unfinished_runs_are_refused(tmp_path):
    run = tmp_path / "rl_t4_s11"
    run.mkdir()
    (run / "results.json").write_text(json.dumps({"task_id": 4, "task_name": "t", "seed": 11}))
    with pytest.raises(SystemExit, match="no finished runs"):
        summary_script.main([str(run)])


def _sweep_dir(root: Path, seed: int, cells: dict, gaps: list[float], train: list[float] | None = None) -> Path:
    """A bench work dir with held-out sweeps: cells = {name: {cfg: (successes, episodes)}}."""
    run = root / f"n5_s{seed}" / "work"
    (run / "rl").mkdir(parents=True)
    sweeps = {name: {"by_cfg": {cfg: {"successes": k, "episodes": n} for cfg, (k, n) in by_cfg.items()}}
              for name, by_cfg in cells.items()}
    result = {"task_id": 4, "task_name": "task_4", "seed": seed, "args": {"sft_dir": "/tmp/r3/start_n5"},
              "sweeps": sweeps}
    (run / "results.json").write_text(json.dumps(result))
    train = train or [0.5] * len(gaps)
    (run / "rl" / "metrics.jsonl").write_text("".join(json.dumps({"train/branch_gap": g, "rollout/mean_scores": s}) + "\n"
                                                      for g, s in zip(gaps, train)))
    return run


def test_guidance_sweeps_are_pooled_over_seeds_per_start_and_checkpoint(tmp_path, capsys):
    dirs = [_sweep_dir(tmp_path, 11, {"start": {"1": (4, 50), "3": (2, 50)}, "after": {"1": (10, 50), "3": (12, 50)}},
                       gaps=[0.01, 0.02], train=[0.4, 0.7]),
            _sweep_dir(tmp_path, 12, {"start": {"1": (6, 50), "3": (3, 50)}, "after": {"1": (20, 50), "3": (25, 50)}},
                       gaps=[0.03], train=[0.6])]
    summary_script.main([str(d) for d in dirs] + ["--sweeps", "--out-dir", str(tmp_path / "out")])
    groups = json.loads((tmp_path / "out" / "sweeps.json").read_text())
    group = groups["task 4, start_n5"]
    assert group["sweeps"]["start"] == {"1": [10, 100], "3": [5, 100]}
    assert group["sweeps"]["after"] == {"1": [30, 100], "3": [37, 100]}
    # Branch gap per round: round 1 mean(0.01, 0.03) = 0.02; round 2 only seed 11 ran it: 0.02.
    assert group["gap_per_round"] == pytest.approx([0.02, 0.02])
    assert group["train_per_round"] == pytest.approx([0.5, 0.7])  # the plot's lower panel, same pooling
    table = (tmp_path / "out" / "sweeps.md").read_text()
    # 30/100: Wilson 95 % = 21.9-39.6 %; rows in the order start, after.
    assert "| task 4, start_n5 | after | 11,12 | 30/100 (30 %, 22–40) | 37/100 (37 %, 28–47) |" in table
    assert table.index("| start |") < table.index("| after |")
    assert (tmp_path / "out" / "guidance_curves.png").is_file()


def test_curves_compare_runs_round_by_round_with_the_demo_loss_from_before_the_first_update(tmp_path, capsys):
    drifting = tmp_path / "drifting.metrics.jsonl"
    drifting.write_text("".join(json.dumps(row) + "\n" for row in [
        {"rollout/mean_scores": 0.5, "train/demo_fm_loss": 0.022, "train/demo_fm_loss_before": 0.020},
        {"rollout/mean_scores": 0.7, "train/demo_fm_loss": 0.026},
        {"rollout/mean_scores": 0.8, "train/demo_fm_loss": 0.028},
        {"rollout/mean_scores": 0.6, "train/demo_fm_loss": 0.029},
        {"rollout/mean_scores": 0.3, "train/demo_fm_loss": 0.030},
        {"rollout/mean_scores": 0.1, "train/demo_fm_loss": 0.035}]))
    no_probe = tmp_path / "run_b" / "work" / "rl"  # a bench work dir: metrics.jsonl in rl/, no probe logged
    no_probe.mkdir(parents=True)
    (no_probe / "metrics.jsonl").write_text(json.dumps({"rollout/mean_scores": 0.25}) + "\n")
    summary_script.main([str(drifting), str(no_probe.parent), "--curves", "--out-dir", str(tmp_path / "out")])
    table = (tmp_path / "out" / "curves.md").read_text()
    # Thirds (0.5, 0.7) -> (0.8, 0.6) -> (0.3, 0.1): the lift that came and went; round 1 is the
    # start's own success; the demo loss from before the first update, 0.020.
    assert "| drifting | 6 | 0.50 | 0.60 -> 0.70 -> 0.20 | 0.0200 -> 0.0350 (+75 %) |" in table
    assert "| run_b | 1 | 0.25 | 0.25 | — |" in table
    assert (tmp_path / "out" / "curves.png").is_file()
    with pytest.raises(SystemExit, match="no metrics.jsonl rows"):
        summary_script.main([str(tmp_path / "empty_dir"), "--curves", "--out-dir", str(tmp_path / "out")])


def _cells_dir(root: Path, run_name: str, sweeps: dict) -> Path:
    """A work dir whose sweeps keep their (env seed, cfg) cells: sweeps = {name: {(seed, cfg): outcomes}}."""
    run = root / "runs" / run_name / "work"
    run.mkdir(parents=True)
    result = {"task_id": 4, "task_name": "task_4", "seed": 0, "args": {"sft_dir": "/x/ketchup"}, "sweeps": {
        name: {"runs": {f"seed{seed}_cfg{cfg:g}": {"env_seed": seed, "cfg_scale": cfg,
                                                    "per_state": {str(i): o for i, o in enumerate(outcomes)}}
                        for (seed, cfg), outcomes in cells.items()}}
        for name, cells in sweeps.items()}}
    (run / "results.json").write_text(json.dumps(result))
    return run


def test_recipes_pool_apart_cut_sweeps_count_their_cells_and_a_start_cell_counts_once(tmp_path):
    start_cells = {(0, 1.0): [True, True, False, None], (1000, 1.0): [True, False, False, False]}
    dirs = [
        # "slow": its after sweep was cut short (no by_cfg): the one finished cell counts, the None does not.
        _cells_dir(tmp_path, "n10_s0.slow", {"start": start_cells, "after": {(0, 1.0): [True, None, False, False]}}),
        # "hot" measured the same start cells again (one experiment) plus one new env seed.
        _cells_dir(tmp_path, "n10_s0.hot", {"start": {**start_cells, (2000, 1.0): [True, True, True, True]},
                                            "after": {(0, 1.0): [False, False, False, False]}}),
    ]
    groups = summary_script.load_sweeps([str(d) for d in dirs])
    assert set(groups) == {"task 4, ketchup, slow", "task 4, ketchup, hot"}
    assert groups["task 4, ketchup, slow"]["sweeps"]["after"] == {"1": [1, 3]}
    assert groups["task 4, ketchup, hot"]["sweeps"]["start"] == {"1": [7, 11]}
    # Start cells: seed 0 (2/3) and seed 1000 (1/4) once, seed 2000 (4/4): 7/11, not 10/18.
    assert summary_script.pooled_starts(groups, "1") == {"task 4, ketchup": [7, 11]}
    table = summary_script.sweeps_table(groups)
    assert "| task 4, ketchup | every start sweep, each env seed once | | 7/11 (64 %, 35–85) |" in table
    summary_script.plot_heldout(groups, tmp_path / "heldout.png")
    assert (tmp_path / "heldout.png").is_file()


def test_a_run_name_tag_is_the_variant():
    assert summary_script._variant(Path("/r3/runs/n10_s11.slow/work")) == "slow"
    assert summary_script._variant(Path("/r3/runs/t1n5_s12/work")) == ""
    assert summary_script._variant(Path("/anywhere/else")) == ""
