"""scripts/soak.py: the fault schedule, the report block, and one real quick soak (~2 min on 2 cores:
a reach run restarted 5 times plus its uninterrupted twin, a 2-round LIBERO run, a 2-rank gloo run)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import soak  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("quick", [True, False])
def test_the_schedule_has_every_kind_spaced_apart_and_is_seeded(quick):
    plan = soak.make_plan(seed=3, quick=quick, env="reach")
    kinds = {f.kind for f in plan.main}
    assert kinds == {*soak.PROCESS_FAULTS, soak.NONFINITE, soak.WRITE_FAILS}
    assert plan.worker_kill_rounds and soak.RANK_KILL in plan.rank_faults
    total = len(plan.main) + len(plan.worker_kill_rounds) + len(plan.rank_faults)
    assert total == 8 if quick else total >= 20  # the goal for a full soak
    rounds = sorted(f.round for f in plan.main)
    # Two rounds between faults (a kill right after a failed write would lose two rounds); the
    # first after two checkpoints (a truncated newest one needs an older one); all inside the run.
    assert all(b - a >= 2 for a, b in zip(rounds, rounds[1:]))
    assert rounds[0] >= 3 and rounds[-1] < plan.rounds
    assert soak.make_plan(3, quick, "reach") == plan
    assert soak.make_plan(4, quick, "reach") != plan


def test_the_report_replaces_only_its_own_block(tmp_path):
    report = tmp_path / "reliability.md"
    report.write_text(f"# Reliability\n\nhand-written intro\n\n{soak.REPORT_BEGIN}\nold table\n{soak.REPORT_END}\n\n"
                      "## Bad input\nhand-written too\n")
    soak.write_report(report, "new table\n")
    text = report.read_text()
    assert "old table" not in text and "new table" in text
    assert "hand-written intro" in text and "## Bad input\nhand-written too" in text
    soak.write_report(tmp_path / "fresh.md", "a table\n")
    assert "a table" in (tmp_path / "fresh.md").read_text()


@pytest.mark.slow
def test_quick_soak_injects_every_kind_of_fault_and_survives_them(tmp_path):
    report = tmp_path / "reliability.md"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "soak.py"), "--quick", "--workdir",
                             str(tmp_path / "work"), "--report", str(report)],
                            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    table = report.read_text()
    for label in soak.KIND_LABELS.values():
        if label == soak.KIND_LABELS[soak.RANK_FREEZE]:
            continue  # full soak only
        row = re.search(rf"\| {re.escape(label)} \| (\d+) \| (\d+) \| (\S+)", table)
        assert row, (label, table)
        injected, survived, lost = row.groups()
        assert int(injected) >= 1 and survived == injected, row.group(0)
        assert lost.startswith("n/a") or int(lost) <= 1, row.group(0)
    assert table.count("| yes |") == 6  # bit-exact final weights for every deterministic fault
    assert "exactly once: main: yes, workers: yes" in table
    assert "corrupted checkpoints left on disk (every `step_*` loaded at the end): 0." in table
    assert "goals met: yes" in table
