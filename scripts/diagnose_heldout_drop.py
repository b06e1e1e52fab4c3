#!/usr/bin/env python
"""Is an RL checkpoint's held-out drop caused by what RL learned, or by any change of that size?

On the GPU every seed-0 RL checkpoint of ``docs/learning_libero.md`` scored below the start on the
held-out init states, even one whose outputs moved by about the spread between the policy's own
samples. This script scores, on one machine, the same held-out states and env seeds, at cfg 1:

* ``start``: the checkpoint's own policy config with the start's weights (what RL round 1 rolls out);
* ``rl``: the checkpoint;
* ``random``: the start moved as far as the checkpoint, tensor by tensor (the same L2 norm of the
  change in every trained tensor), in a random direction (``--perturbation-seed``).

If ``random`` falls as far as ``rl``, the start is fragile to any change of that size and RL's
direction is no worse than chance; if ``random`` holds and ``rl`` falls, what RL learned on its
training states is what hurts the held-out ones. The checkpoint comes from a training run
(``<run>/rl/checkpoints/step_N``, or the folder that the device script's ``final_<run>`` pieces
unpack to); its saved config names the task and the start's weights, which ``--sft-dir`` replaces.

Command (CPU, 2 simulators: ~70 s per 25 episodes, 14 min for the 300 below)::

    PYTHONPATH=$PWD python scripts/diagnose_heldout_drop.py --checkpoint /tmp/anc1ck/step_12 \\
        --eval-seeds 0 1000 2000 3000 --num-envs 2 --out /tmp/heldout_drop.json
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
for path in (REPO_ROOT, REPO_ROOT / "scripts"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import torch  # noqa: E402

logger = logging.getLogger("diagnose_heldout_drop")

SHIPPED_START = REPO_ROOT / "ript" / "assets" / "checkpoints" / "pi0_small_libero_object_ketchup"
VARIANTS = ("start", "rl", "random")


def random_direction_like(start: Mapping[str, torch.Tensor], moved: Mapping[str, torch.Tensor],
                          generator: torch.Generator) -> dict[str, torch.Tensor]:
    """``start`` moved by a random direction with the norm of ``moved - start``, tensor by tensor.

    A tensor that did not move stays bit-identical; every other one moves exactly as far as in
    ``moved`` (L2 norm of the change), along a Gaussian direction drawn from ``generator``."""
    missing = sorted(set(moved) - set(start))
    if missing:
        raise KeyError(f"moved has tensors the start lacks: {missing[:5]}")
    out: dict[str, torch.Tensor] = {}
    for name, start_value in start.items():
        if name not in moved:
            out[name] = start_value.clone()
            continue
        delta_norm = (moved[name].double() - start_value.double()).norm()
        if float(delta_norm) == 0.0:
            out[name] = start_value.clone()
            continue
        direction = torch.randn(start_value.shape, generator=generator, dtype=torch.float64)
        step = direction * (delta_norm / direction.norm())
        out[name] = (start_value.double() + step).to(start_value.dtype)
    return out


def change_norms(start: Mapping[str, torch.Tensor], other: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Overall L2 norm of ``other - start`` and of ``start`` (the trained tensors), for the record."""
    delta = sum(float((other[n].double() - start[n].double()).pow(2).sum()) for n in other)
    size = sum(float(start[n].double().pow(2).sum()) for n in other)
    return {"change_l2": delta ** 0.5, "start_l2": size ** 0.5, "relative": (delta / size) ** 0.5 if size else 0.0}


def build_variants(checkpoint: Path, sft_dir: Path, sampler: str, perturbation_seed: int
                   ) -> tuple[Any, dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
    """(policy holding the start, trainable weights per variant, the checkpoint's info)."""
    from bench_learning_libero import start_overrides
    from eval_cfg_sweep import build_policy, load_config

    overrides = [*start_overrides(sft_dir), f"algo.policy.sampler={sampler}", "algo.policy.dtype=float32"]
    cfg, rl_weights, info = load_config(checkpoint, overrides=overrides)
    tasks = list(cfg.task.task_names_to_use or [])
    if len(tasks) != 1:
        raise ValueError(f"{checkpoint} was trained on task.task_names_to_use={tasks}; this diagnostic "
                         "scores one task's held-out states: pass a single-task run's checkpoint")
    info["task_name"] = tasks[0]
    policy = build_policy(cfg, None, info)  # the start: pretrained weights, the run's policy config
    start = policy.trainable_state_dict()
    generator = torch.Generator().manual_seed(perturbation_seed)
    weights = {"start": start, "rl": {n: rl_weights[n].to(start[n].dtype) for n in start},
               "random": random_direction_like(start, rl_weights, generator)}
    return policy, weights, info


def episode_outcomes(cells: Mapping[str, Any]) -> dict[str, dict[tuple[int, str], bool]]:
    """A report's cells as {variant: {(env seed, state): success}} (invalid episodes left out)."""
    outcomes: dict[str, dict[tuple[int, str], bool]] = {}
    for cell in cells.values():
        for state, ok in cell["per_state"].items():
            if ok is not None:
                outcomes.setdefault(cell["variant"], {})[(int(cell["env_seed"]), str(state))] = bool(ok)
    return outcomes


def summarize_cells(cells: Mapping[str, Any], start: Mapping[tuple[int, str], bool] | None = None
                    ) -> dict[str, dict[str, Any]]:
    """Per variant: successes / valid episodes over every cell of a report, its 95 % Wilson interval,
    and, against the start on the same (env seed, state), how many episodes it gained and lost.
    ``start``: the start's outcomes when the report has none of its own (another report's, on the
    same machine: the CPU path is deterministic)."""
    from ript.training.run_summary import wilson_interval

    outcomes = episode_outcomes(cells)
    start = outcomes.get("start", start or {})
    summary = {}
    for variant, by_episode in outcomes.items():
        successes, episodes = sum(by_episode.values()), len(by_episode)
        low, high = wilson_interval(successes, episodes)
        entry = {"successes": successes, "episodes": episodes, "low": low, "high": high}
        shared = [k for k in by_episode if k in start]
        if variant != "start" and shared:
            entry["gained"] = sum(by_episode[k] and not start[k] for k in shared)
            entry["lost"] = sum(start[k] and not by_episode[k] for k in shared)
        summary[variant] = entry
    return summary


def plot_reports(named: Sequence[tuple[str, Mapping[str, Any]]], path: Path) -> None:
    """One row per (report, variant): success with its Wilson interval, the first report's start as
    the band behind."""
    from summarize_learning_libero import plot_success_rows

    rows = [(f"{name}: {variant}", e["successes"], e["episodes"]) for name, summary in named
            for variant, e in summary.items()]
    start = named[0][1].get("start") if named else None
    bands = [("start, 95 % interval", start["successes"], start["episodes"])] if start else []
    plot_success_rows(rows, bands, path, "held-out success at cfg 1 (95 % Wilson interval)")


def summarize_main(reports: Sequence[str], plot: Path | None) -> list[tuple[str, dict[str, Any]]]:
    """``NAME=report.json`` ...: a markdown table (printed) and, with ``plot``, the figure. Reports
    from one machine: a report without start cells is compared with the previous report's start."""
    named, start = [], None
    for item in reports:
        name, sep, file = item.partition("=")
        if not sep:
            raise SystemExit(f"--summarize {item!r}: give NAME=report.json")
        cells = json.loads(Path(file).read_text())["cells"]
        start = episode_outcomes(cells).get("start", start)  # a report without a start uses the one before
        named.append((name, summarize_cells(cells, start)))
    print("| report | variant | success | 95 % interval | gained / lost against the start |")
    print("|---|---|---:|---:|---:|")
    for name, summary in named:
        for variant, e in summary.items():
            change = f"{e['gained']} / {e['lost']}" if "gained" in e else "—"
            print(f"| {name} | {variant} | {e['successes']}/{e['episodes']} | "
                  f"{100 * e['low']:.0f}–{100 * e['high']:.0f} % | {change} |")
    if plot is not None:
        plot_reports(named, plot)
    return named


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    from bench_learning_libero import evaluate, split_rows

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, help="a training checkpoint dir (step_N)")
    parser.add_argument("--sft-dir", type=Path, default=SHIPPED_START, help="the start's weights + norm stats")
    parser.add_argument("--eval-seeds", type=int, nargs="+", default=[0, 1000])
    parser.add_argument("--num-val", type=int, default=25, help="held-out init states (the run's split)")
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--num-envs", type=int, default=2)
    parser.add_argument("--camera-size", type=int, default=256)
    parser.add_argument("--sampler", default="eager", choices=["eager", "cuda_graph"])
    parser.add_argument("--perturbation-seed", type=int, default=0)
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--out", type=Path, help="JSON report (rewritten after every cell)")
    parser.add_argument("--summarize", nargs="+", metavar="NAME=REPORT",
                        help="no evaluation: a table (and --plot) of earlier reports; the first one's start is the band")
    parser.add_argument("--plot", type=Path, help="with --summarize: the figure (png)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.summarize:
        return {"summaries": summarize_main(args.summarize, args.plot)}
    if args.checkpoint is None or args.out is None:
        parser.error("--checkpoint and --out are required (or --summarize NAME=REPORT ...)")

    policy, weights, info = build_variants(args.checkpoint, args.sft_dir, args.sampler, args.perturbation_seed)
    _, val_rows = split_rows(50, args.num_val, args.split_seed)
    report: dict[str, Any] = json.loads(args.out.read_text()) if args.out.exists() else {}
    report.update(checkpoint=str(args.checkpoint), step=info.get("step"), task=info["task_name"],
                  val_rows=val_rows,
                  change={v: change_norms(weights["start"], weights[v]) for v in ("rl", "random")})
    cells = report.setdefault("cells", {})
    # Seed by seed, every variant: a run cut short still compares the variants on the same seeds.
    for env_seed in args.eval_seeds:
        for variant in args.variants:
            key = f"{variant}_seed{env_seed}"
            if key in cells:
                continue  # done in an earlier, cut-short call
            policy.load_trainable_state_dict(weights[variant])
            t0 = time.time()
            result = evaluate(policy, info["task_name"], val_rows, val_rows, env_seed, args.camera_size,
                              args.num_envs, 1.0)
            cells[key] = {"variant": variant, "env_seed": env_seed, "per_state": result["per_state"],
                          "time_s": time.time() - t0}
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(report, indent=1))
    report["summary"] = summarize_cells(cells)
    for variant, e in report["summary"].items():
        logger.info("%-6s %3d/%3d (%2.0f %%, %2.0f-%2.0f)", variant, e["successes"], e["episodes"],
                    100 * e["successes"] / max(e["episodes"], 1), 100 * e["low"], 100 * e["high"])
    args.out.write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
