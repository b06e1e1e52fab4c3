"""Table and plot of LIBERO learning runs: held-out success before/after RL, pooled per task.

Reads the work dirs that ``scripts/bench_learning_libero.py`` writes (``results.json`` with
``sft_eval`` / ``rl_eval`` and the run's ``metrics.jsonl``; the metrics file may sit in ``rl/`` or
beside ``results.json``), one dir per (task, seed), and writes a markdown table (stdout and
``--out-dir/summary.md``), ``summary.json`` and ``learning_libero.png``: held-out success of the
start and after RL per task (pooled over seeds, 95 % Wilson intervals) and the training rollouts'
success per round.

    python scripts/summarize_learning_libero.py docs/learning_libero_rounds/round1/rl_t* \
        --out-dir docs/learning_libero_rounds/round1

``--sweeps`` summarises the held-out guidance curves instead (``bench_learning_libero.py --stages
sweep``, as ``docs/device_runs/scripts/device_libero_round3.sh`` runs them): per task and start (the
SFT dir) and per evaluated checkpoint (start / mid / after), success at each cfg scale pooled over
seeds with 95 % Wilson intervals, and the branch gap per round (mean over seeds); runs pool per
variant, the tag of their name (``n10_s0.slow`` and ``n10_s11.slow`` pool, ``n10_s0.hot`` apart); a sweep
cut short counts the cells it finished. Writes ``sweeps.md``, ``sweeps.json``, ``guidance_curves.png``
and ``heldout_cfg1.png`` (every sweep at cfg 1 with its interval, over the start's pooled band)::

    python scripts/summarize_learning_libero.py runs/r3/*/work --sweeps --out-dir docs/learning_libero_rounds/round3

``--curves`` compares runs round by round from their ``metrics.jsonl`` alone (a run dir, or the
file itself; labelled by the name before ``.metrics.jsonl`` or the dir name): training success and,
where logged, the forgetting probe ``train/demo_fm_loss``; writes ``curves.md`` and ``curves.png``::

    python scripts/summarize_learning_libero.py docs/learning_libero_rounds/cpu_drift_seed0/*.jsonl \
        --curves --out-dir docs/learning_libero_rounds/cpu_drift_seed0
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
for _path in (REPO_ROOT, REPO_ROOT / "scripts"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from bench_learning_libero import cell_counts, pool_sweep  # noqa: E402
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


SWEEP_ORDER = ("start", "mid", "after")


def _sweep_names(group: dict[str, Any]) -> list[str]:
    """A group's sweeps in the order start, mid, after, then any others by name."""
    return sorted(group["sweeps"], key=lambda n: (SWEEP_ORDER.index(n) if n in SWEEP_ORDER else 99, n))


RUN_NAME = re.compile(r"^[A-Za-z0-9]+_s\d+(?:\.(?P<tag>[A-Za-z0-9_-]+))?$")


def _variant(run_dir: Path) -> str:
    """The tag of the run name a work dir sits under (``runs/n10_s0.slow/work`` -> ``slow``; no tag: '')."""
    for part in reversed(run_dir.resolve().parts):
        match = RUN_NAME.match(part)
        if match:
            return match.group("tag") or ""
    return ""


def _pooled_cells(entry: dict[str, Any]) -> dict[str, list[int]]:
    """{cfg: [successes, valid episodes]} of one sweep, from its (env seed, cfg) cells, so that a sweep
    cut short by its call still counts what it finished; ``by_cfg`` where the cells were not kept."""
    by_cfg = pool_sweep(entry["runs"]) if entry.get("runs") else entry.get("by_cfg") or {}
    return {cfg: [int(c["successes"]), int(c["episodes"])] for cfg, c in by_cfg.items()}


def load_sweeps(dirs: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per (task, start, variant): each sweep's cells pooled over seeds, and the per-round branch gap.
    The variant is the run name's tag (``n10_s0.slow``): runs of one recipe pool, different recipes do not."""
    groups: dict[str, dict[str, Any]] = {}
    for d in dirs:
        path = Path(d) / "results.json"
        if not path.exists():
            continue
        result = json.loads(path.read_text())
        start = Path(str((result.get("args") or {}).get("sft_dir") or "own SFT")).name
        task_start = f"task {result['task_id']}, {start}"
        variant = _variant(Path(d))
        group = groups.setdefault(f"{task_start}, {variant}" if variant else task_start,
                                  {"task_start": task_start, "seeds": [], "sweeps": {}, "start_cells": {}, "gaps": [],
                                   "train": []})
        group["seeds"].append(result["seed"])
        for name, entry in (result.get("sweeps") or {}).items():
            if name.startswith("start"):
                for cell in (entry.get("runs") or {}).values():
                    group["start_cells"].setdefault(f"seed{cell['env_seed']}_cfg{float(cell['cfg_scale']):g}",
                                                    list(cell_counts(cell)))
            for cfg, (k, n) in _pooled_cells(entry).items():
                pooled = group["sweeps"].setdefault(name, {}).setdefault(cfg, [0, 0])
                pooled[0] += k
                pooled[1] += n
        rows = _metrics(Path(d))
        group["gaps"].append([row["train/branch_gap"] for row in rows if "train/branch_gap" in row])
        group["train"].append([row["rollout/mean_scores"] for row in rows if "rollout/mean_scores" in row])
    if not any(g["sweeps"] for g in groups.values()):
        raise SystemExit(f"no guidance sweeps (results.json with 'sweeps') in {list(dirs)}")
    for group in groups.values():
        group["gap_per_round"] = _mean_per_round(group["gaps"])
        group["train_per_round"] = _mean_per_round(group["train"])
    return groups


def _mean_per_round(per_seed: list[list[float]]) -> list[float]:
    """Round i's mean over the seeds that reached round i."""
    rounds = max((len(values) for values in per_seed), default=0)
    return [sum(v[i] for v in per_seed if len(v) > i) / sum(len(v) > i for v in per_seed) for i in range(rounds)]


def sweeps_table(groups: dict[str, dict[str, Any]]) -> str:
    scales = sorted({cfg for g in groups.values() for cells in g["sweeps"].values() for cfg in cells}, key=float)
    lines = ["| task, start | checkpoint | seeds | " + " | ".join(f"cfg {c}" for c in scales) + " |",
             "|---|---|---|" + "---:|" * len(scales)]
    for label, group in groups.items():
        names = _sweep_names(group)
        for name in names:
            cells = []
            for cfg in scales:
                k, n = group["sweeps"][name].get(cfg, (0, 0))
                lo, hi = wilson_interval(k, n)
                cells.append(f"{k}/{n} ({100 * k / n:.0f} %, {100 * lo:.0f}–{100 * hi:.0f})" if n else "—")
            lines.append(f"| {label} | {name} | {','.join(map(str, sorted(group['seeds'])))} | " + " | ".join(cells) + " |")
        gaps = ", ".join(f"{100 * g:.2f}" for g in group["gap_per_round"])
        lines.append(f"| {label} | branch gap per round (%) | | {gaps or '—'} |" + " |" * (len(scales) - 1))
    for task_start in dict.fromkeys(g["task_start"] for g in groups.values()):
        cells = []
        for cfg in scales:
            k, n = pooled_starts(groups, cfg).get(task_start, (0, 0))
            lo, hi = wilson_interval(k, n)
            cells.append(f"{k}/{n} ({100 * k / n:.0f} %, {100 * lo:.0f}–{100 * hi:.0f})" if n else "—")
        if any(c != "—" for c in cells):
            lines.append(f"| {task_start} | every start sweep, each env seed once | | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_sweeps(groups: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(groups), figsize=(5 * len(groups), 7.5), squeeze=False)
    for ax, curve_ax, (label, group) in zip(axes[0], axes[1], groups.items()):
        for j, name in enumerate(n for n in SWEEP_ORDER if n in group["sweeps"]):
            cells = sorted(group["sweeps"][name].items(), key=lambda kv: float(kv[0]))
            x = [float(c) for c, _ in cells]
            rates = [k / n for _, (k, n) in cells]
            intervals = [wilson_interval(k, n) for _, (k, n) in cells]
            ax.errorbar(x, rates, yerr=[[r - lo for r, (lo, _) in zip(rates, intervals)],
                                        [hi - r for r, (_, hi) in zip(rates, intervals)]],
                        marker="o", capsize=3, color=f"C{j}", label=name)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("cfg scale")
        ax.set_ylabel("held-out success (pooled, 95 % CI)")
        ax.set_ylim(0, 1)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
        rounds = range(1, len(group["train_per_round"]) + 1)
        curve_ax.plot(rounds, group["train_per_round"], marker="o", ms=3, color="C0", label="training success")
        curve_ax.set_xlabel("RL round")
        curve_ax.set_ylabel("training rollouts' success (mean over seeds)")
        curve_ax.set_ylim(0, 1)
        gap_ax = curve_ax.twinx()
        gap_ax.plot(range(1, len(group["gap_per_round"]) + 1), [100 * g for g in group["gap_per_round"]],
                    color="C3", ls="--", label="branch gap")
        gap_ax.set_ylabel("branch gap (%)", color="C3")
        gap_ax.set_ylim(bottom=0)
        curve_ax.legend(loc="upper left")
        gap_ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def pooled_starts(groups: dict[str, dict[str, Any]], cfg: str) -> dict[str, list[int]]:
    """Per (task, start): [successes, episodes] at ``cfg`` over every sweep of the untrained start
    (names beginning ``start``) in any run, each (env seed, cfg) cell once: the same cell measured
    twice is one experiment, not two."""
    cells: dict[str, dict[str, list[int]]] = {}
    for group in groups.values():
        for cell_key, counts in group["start_cells"].items():
            if cell_key.endswith(f"_cfg{cfg}"):
                cells.setdefault(group["task_start"], {}).setdefault(cell_key, counts)
    return {task_start: [sum(c[0] for c in by_key.values()), sum(c[1] for c in by_key.values())]
            for task_start, by_key in cells.items()}


def plot_heldout(groups: dict[str, dict[str, Any]], path: Path, cfg: str = "1") -> None:
    """One row per (group, sweep): held-out success at ``cfg`` with its 95 % Wilson interval, over a
    band for each start: its sweeps (names beginning ``start``) pooled, each (env seed, cfg) cell once."""
    rows = [(f"{label.split(', ', 2)[-1] if label.count(', ') > 1 else label}: {name}", *group["sweeps"][name][cfg])
            for label, group in groups.items() for name in _sweep_names(group) if cfg in group["sweeps"][name]]
    bands = [(f"{task_start}: all start sweeps, {k}/{n}", k, n) for task_start, (k, n) in pooled_starts(groups, cfg).items()]
    plot_success_rows(rows, bands, path, f"held-out success at cfg {cfg} (pooled over seeds, 95 % Wilson interval)")


def plot_success_rows(rows: Sequence[tuple[str, int, int]], bands: Sequence[tuple[str, int, int]], path: Path,
                      xlabel: str) -> None:
    """One row per ``(label, successes, episodes)``, top to bottom: the rate with its 95 % Wilson
    interval and the count beside it, over a shaded interval per ``(label, successes, episodes)``
    band (the starts). Nothing is drawn without rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not rows:
        return
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.6))
    for j, (label, k, n) in enumerate(bands):
        lo, hi = wilson_interval(k, n)
        ax.axvspan(lo, hi, color=f"C{j}", alpha=0.15, label=label)
    for i, (_, k, n) in enumerate(rows):
        lo, hi = wilson_interval(k, n)
        ax.errorbar(k / n, i, xerr=[[k / n - lo], [hi - k / n]], marker="o", capsize=3, color="k")
        ax.annotate(f"{k}/{n}", (hi, i), xytext=(4, -3), textcoords="offset points", fontsize=8)
    ax.set_yticks(range(len(rows)), [label for label, _, _ in rows], fontsize=8)
    ax.set_ylim(len(rows) - 0.5, -1.5)  # top to bottom, a free row above for the legend
    ax.set_xlim(0, 1)
    ax.set_xlabel(xlabel)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


CURVES = (("rollout/mean_scores", "training success"), ("train/demo_fm_loss", "loss on the start's SFT demos"))


def load_curves(paths: Sequence[str]) -> dict[str, dict[str, list[float]]]:
    """{run label: {metric: per-round values}} for the metrics in CURVES that the run logged."""
    curves = {}
    for p in map(Path, paths):
        rows = read_metrics(p) if p.is_file() else _metrics(p)
        if not rows:
            raise SystemExit(f"{p}: no metrics.jsonl rows (a run dir, its rl/ dir, or the file itself)")
        # A file: its name before .metrics.jsonl; a bench work dir (<run>/work): the run's name.
        label = (p.name.removesuffix(".jsonl").removesuffix(".metrics") if p.is_file()
                 else p.parent.name if p.name == "work" else p.name)
        curves[label] = {key: [row[key] for row in rows if key in row] for key, _ in CURVES}
        # The probe before any update (round 1 of a fresh run logs it): the start of the demo-loss curve.
        before = rows[0].get("train/demo_fm_loss_before")
        if before is not None and curves[label]["train/demo_fm_loss"]:
            curves[label]["train/demo_fm_loss"].insert(0, before)
    return curves


def curves_table(curves: dict[str, dict[str, list[float]]]) -> str:
    """One row a run: round 1 (the start's own rollouts, before any update), training success by
    thirds of the run (a lift that comes and goes shows in the middle third) and the demo-loss drift."""
    lines = ["| run | rounds | round 1 (the start) | training success by thirds of the run "
             "| demo loss, before -> last |", "|---|---:|---:|---|---|"]
    for label, c in curves.items():
        success, demo = c["rollout/mean_scores"], c["train/demo_fm_loss"]
        if len(success) >= 3:
            bounds = [round(i * len(success) / 3) for i in range(4)]
            trend = " -> ".join(f"{sum(success[a:b]) / (b - a):.2f}" for a, b in zip(bounds, bounds[1:]))
        else:
            trend = " ".join(f"{v:.2f}" for v in success) or "—"
        first = f"{success[0]:.2f}" if success else "—"
        drift = f"{demo[0]:.4f} -> {demo[-1]:.4f} ({100 * (demo[-1] / demo[0] - 1):+.0f} %)" if demo else "—"
        # (demo[0] is the loss before any update when the run logged it, else after round 1)
        lines.append(f"| {label} | {len(success)} | {first} | {trend} | {drift} |")
    return "\n".join(lines)


def plot_curves(curves: dict[str, dict[str, list[float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(CURVES), figsize=(5.5 * len(CURVES), 4))
    for ax, (key, title) in zip(axes, CURVES):
        for i, (label, c) in enumerate(curves.items()):
            if c[key]:  # the demo loss starts at round 0 (before any update) when that was logged
                first = 1 - (len(c[key]) - len(c["rollout/mean_scores"]))
                ax.plot(range(first, first + len(c[key])), c[key], marker="o", ms=3, color=f"C{i}", label=label)
        ax.set_xlabel("RL round")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7, ncol=2)
    axes[0].set_ylim(0, 1)
    axes[1].set_yscale("log")  # drifts differ by orders of magnitude between recipes
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+", help="bench_learning_libero work dirs (one per task and seed)")
    parser.add_argument("--out-dir", default=".", help="summary.md, summary.json and learning_libero.png go here")
    parser.add_argument("--sweeps", action="store_true", help="the held-out guidance curves (sweeps.md/.json/.png)")
    parser.add_argument("--curves", action="store_true",
                        help="round-by-round training success and demo loss from metrics.jsonl (curves.md/.png)")
    args = parser.parse_args(argv)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if args.curves:
        curves = load_curves(args.run_dirs)
        table = curves_table(curves)
        (out / "curves.md").write_text(table + "\n")
        plot_curves(curves, out / "curves.png")
        print(table)
        return
    if args.sweeps:
        groups = load_sweeps(args.run_dirs)
        table = sweeps_table(groups)
        (out / "sweeps.md").write_text(table + "\n")
        (out / "sweeps.json").write_text(json.dumps(groups, indent=1) + "\n")
        plot_sweeps(groups, out / "guidance_curves.png")
        plot_heldout(groups, out / "heldout_cfg1.png")
        print(table)
        return
    table, summary = summarize(load_runs(args.run_dirs))
    (out / "summary.md").write_text(table + "\n")
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    plot(summary, out / "learning_libero.png")
    print(table)
    print(f"plot: {out / 'learning_libero.png'}")


if __name__ == "__main__":
    main()
