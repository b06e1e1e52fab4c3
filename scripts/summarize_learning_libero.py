"""Table and plot of LIBERO learning runs: held-out success before/after RL, pooled per task.

Reads the work dirs that ``scripts/bench_learning_libero.py`` writes (``results.json`` with
``sft_eval`` / ``rl_eval`` and the run's ``metrics.jsonl``; the metrics file may sit in ``rl/`` or
beside ``results.json``), one dir per (task, seed), and writes a markdown table (stdout and
``--out-dir/summary.md``), ``summary.json`` and ``learning_libero.png``: held-out success of the
start and after RL per task (pooled over seeds, 95 % Wilson intervals) and the training rollouts'
success per round.

    python scripts/summarize_learning_libero.py docs/learning_libero_rounds/round1/rl_t* \
        --out-dir docs/learning_libero_rounds/round1
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from ript.training.run_summary import read_metrics, wilson_interval  # noqa: E402


def _count(evaluation: dict[str, Any] | None) -> tuple[int, int]:
    if not evaluation or evaluation.get("heldout_episodes") is None:
        return 0, 0
    n = int(evaluation["heldout_episodes"])
    return int(round(float(evaluation["heldout_success"] or 0.0) * n)), n


def _metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The run's metrics.jsonl: in ``rl/`` of a bench work dir, or beside results.json in a copy."""
    for folder in (run_dir / "rl", run_dir):
        if (folder / "metrics.jsonl").exists():
            return read_metrics(folder)
    return []


def load_runs(dirs: Sequence[str]) -> list[dict[str, Any]]:
    runs = []
    for d in dirs:
        path = Path(d) / "results.json"
        if not path.exists():
            continue
        result = json.loads(path.read_text())
        if "rl_eval" not in result:
            continue
        runs.append({
            "dir": str(d), "task_id": result["task_id"], "task_name": result["task_name"], "seed": result["seed"],
            "start": _count(result.get("sft_eval")), "rl": _count(result.get("rl_eval")),
            "curve": [row.get("rollout/mean_scores") for row in _metrics(Path(d))],
        })
    if not runs:
        raise SystemExit(f"no finished runs (results.json with rl_eval) in {list(dirs)}")
    return runs


def summarize(runs: list[dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    by_task: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        by_task[run["task_id"]].append(run)
    lines = ["| task | seeds | held-out start | after RL | change | per seed (start → RL) | rounds |",
             "|---|---|---:|---:|---:|---|---:|"]
    summary: dict[str, Any] = {}
    for task_id, task_runs in sorted(by_task.items()):
        ks, ns = sum(r["start"][0] for r in task_runs), sum(r["start"][1] for r in task_runs)
        kr, nr = sum(r["rl"][0] for r in task_runs), sum(r["rl"][1] for r in task_runs)
        lo_s, hi_s = wilson_interval(ks, ns)
        lo_r, hi_r = wilson_interval(kr, nr)
        change = 100 * (kr / nr - ks / ns) if ns and nr else float("nan")
        per_seed = ", ".join(f"{r['start'][0]}→{r['rl'][0]}" for r in sorted(task_runs, key=lambda r: r["seed"]))
        rounds = "/".join(str(len(r["curve"])) for r in task_runs)
        lines.append(f"| {task_id} `{task_runs[0]['task_name']}` | {','.join(str(r['seed']) for r in task_runs)} "
                     f"| {ks}/{ns} ({100 * ks / ns:.0f} %, {100 * lo_s:.0f}–{100 * hi_s:.0f}) "
                     f"| {kr}/{nr} ({100 * kr / nr:.0f} %, {100 * lo_r:.0f}–{100 * hi_r:.0f}) "
                     f"| {change:+.1f} | {per_seed} | {rounds} |")
        summary[str(task_id)] = {"task_name": task_runs[0]["task_name"], "start": [ks, ns], "rl": [kr, nr],
                                 "change_points": change, "runs": task_runs}
    return "\n".join(lines), summary


def plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted(summary, key=int)
    fig, (ax_bar, ax_curve) = plt.subplots(1, 2, figsize=(11, 4))
    for i, task in enumerate(tasks):
        for j, (key, colour) in enumerate((("start", "tab:gray"), ("rl", "tab:blue"))):
            k, n = summary[task][key]
            lo, hi = wilson_interval(k, n)
            ax_bar.bar(i + (j - 0.5) * 0.38, k / n, 0.36, color=colour, yerr=[[k / n - lo], [hi - k / n]],
                       capsize=4, label=("SFT start" if key == "start" else "after RL") if i == 0 else None)
        for run in summary[task]["runs"]:
            ax_curve.plot(range(1, len(run["curve"]) + 1), run["curve"], marker="o", ms=3,
                          color=f"C{i}", alpha=0.7, label=f"task {task}" if run is summary[task]["runs"][0] else None)
    ax_bar.set_xticks(range(len(tasks)), [f"task {t}" for t in tasks])
    ax_bar.set_ylabel("held-out success (pooled over seeds, 95 % CI)")
    ax_bar.set_ylim(0, 1)
    ax_bar.legend()
    ax_curve.set_xlabel("RL round")
    ax_curve.set_ylabel("training rollouts' success")
    ax_curve.set_ylim(0, 1)
    ax_curve.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+", help="bench_learning_libero work dirs (one per task and seed)")
    parser.add_argument("--out-dir", default=".", help="summary.md, summary.json and learning_libero.png go here")
    args = parser.parse_args(argv)
    table, summary = summarize(load_runs(args.run_dirs))
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.md").write_text(table + "\n")
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    plot(summary, out / "learning_libero.png")
    print(table)
    print(f"plot: {out / 'learning_libero.png'}")


if __name__ == "__main__":
    main()
