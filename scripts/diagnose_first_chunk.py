#!/usr/bin/env python
"""How much of an episode's outcome does its first chunk decide?

``algo.window_mode=first`` trains only each episode's first chunk, the one window whose observation
an RLOO group shares. It can only lift success if the first chunk's flow noise changes the odds of
success; if the outcome is decided later (the grasp, the place) the first chunk carries no signal.

This script measures that on the real simulator. For each init state it draws ``--first-chunks`` M
first-chunk noises and, for each, runs ``--continuations`` N episodes whose later chunks get fresh
noise. The policy is deterministic given the observation and the noise, and LIBERO-Object's episode
depends on the state and the actions only, so the M groups differ in the first chunk alone. The
share of the outcome variance between the groups (η², the one-way ANOVA's between-group sum of
squares over the total) is compared with its value under shuffled group labels (a permutation test,
pooled over the states by summing each state's between-group sum of squares):

* η² near its shuffled value: the first chunk does not decide the outcome; the rest of the episode does.
* η² well above it: some first chunks succeed more often than others, a signal a per-chunk update
  at the shared observation can learn from.

Command (CPU, 2 simulators, ~3 s an episode; 3 states x 8 x 6 = 144 episodes, ~7 min)::

    PYTHONPATH=$PWD python scripts/diagnose_first_chunk.py --checkpoint <run>/rl/checkpoints/step_N \\
        --variant start --rows 3 21 34 --first-chunks 8 --continuations 6 --out /tmp/first_chunk.json \\
        --plot /tmp/first_chunk.png

Run again with the same ``--out``, it redraws the figure from the report without new episodes.

The checkpoint only supplies the policy config (and, with ``--variant rl``, its weights), as in
``diagnose_heldout_drop.py``.
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

import numpy as np  # noqa: E402

from ript.env_runner.rollout_scheduler import EpisodeSpec, derive_seed  # noqa: E402

logger = logging.getLogger("diagnose_first_chunk")


class FirstChunkNoise:
    """Wraps a policy so that chosen episodes' first chunks use a chosen flow-noise seed.

    ``replace`` maps the seed the scheduler derives for an episode's first chunk to the seed to use
    instead; every other chunk keeps the scheduler's own seed (fresh noise per episode).
    """

    def __init__(self, policy: Any, replace: Mapping[int, int]):
        self.policy = policy
        self.replace = dict(replace)

    def __getattr__(self, name: str) -> Any:  # image_size, norm_stats, ... of the wrapped policy
        return getattr(self.policy, name)

    def select_action(self, obs: Any, cfg_scale: float = 1.0, noise_seeds: Sequence[int] | None = None) -> Any:
        if noise_seeds is None:
            raise ValueError("FirstChunkNoise needs a scheduler that passes noise_seeds")
        seeds = [self.replace.get(int(seed), int(seed)) for seed in noise_seeds]
        return self.policy.select_action(obs, cfg_scale=cfg_scale, noise_seeds=seeds)


def between_group_share(outcomes: np.ndarray) -> tuple[float, float]:
    """(between-group sum of squares, η² = that / total sum of squares) of a (groups, n) 0/1 array."""
    y = np.asarray(outcomes, dtype=np.float64)
    total = float(((y - y.mean()) ** 2).sum())
    between = float((y.shape[1] * (y.mean(axis=1) - y.mean()) ** 2).sum())
    return between, (between / total if total > 0 else 0.0)


def permutation_test(per_state: Sequence[np.ndarray], permutations: int = 2000, seed: int = 0) -> dict[str, float]:
    """Pooled over states: the summed between-group sum of squares against the same statistic with
    each state's outcomes shuffled across its groups. Returns the observed pooled η², its mean under
    the shuffles, and the one-sided p-value (share of shuffles at least as large)."""
    rng = np.random.default_rng(seed)
    arrays = [np.asarray(a, dtype=np.float64) for a in per_state]
    totals = sum(float(((a - a.mean()) ** 2).sum()) for a in arrays)
    observed = sum(between_group_share(a)[0] for a in arrays)
    null = np.empty(permutations)
    for p in range(permutations):
        null[p] = sum(between_group_share(rng.permutation(a.ravel()).reshape(a.shape))[0] for a in arrays)
    share = (lambda x: x / totals if totals > 0 else 0.0)
    return {"eta2": share(observed), "eta2_shuffled_mean": share(float(null.mean())),
            "p_value": float((1 + (null >= observed - 1e-12).sum()) / (1 + permutations))}


def run_state(runner: Any, policy: Any, task_name: str, init_state: np.ndarray, row: int, first_chunks: int,
              continuations: int, noise_seed: int) -> np.ndarray:
    """(first_chunks, continuations) outcomes (NaN for an invalid episode) of one init state.

    Episode i (key ``("first_chunk", row, i)``) starts with first chunk ``i // continuations``: the
    scheduler derives each chunk's noise seed from the episode's key, and the first chunk's is
    swapped for its group's; every later chunk keeps its own."""
    n = first_chunks * continuations
    keys = [("first_chunk", row, i) for i in range(n)]
    base_seed = int(getattr(runner, "seed", 0))
    group_seed = {derive_seed(base_seed, *key, "chunk", 0): derive_seed(noise_seed, "first_chunk", row, i // continuations)
                  for i, key in enumerate(keys)}
    scheduler = runner.make_scheduler(FirstChunkNoise(policy, group_seed), base_seed=base_seed)
    for key in keys:
        scheduler.submit(EpisodeSpec(task_name, np.asarray(init_state), key=key))
    episodes = {spec.key: episode for spec, episode in scheduler.run()}
    outcomes = np.array([float(episodes[key].success) if episodes[key].valid else np.nan for key in keys])
    return outcomes.reshape(first_chunks, continuations)


def conflicting_settings(report: Mapping[str, Any], this_run: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Settings in which an existing report differs from this call: {key: (in the report, now)}.
    A report is finished or redrawn only with the settings that made it."""
    return {key: (report[key], value) for key, value in this_run.items() if key in report and report[key] != value}


def summarize(report: Mapping[str, Any], permutations: int = 2000) -> dict[str, Any]:
    per_state = {row: np.asarray(v, dtype=np.float64) for row, v in report["outcomes"].items()}
    complete = [a for a in per_state.values() if not np.isnan(a).any()]
    rows = {row: {"success": float(np.nanmean(a)), "per_first_chunk": np.nanmean(a, axis=1).round(3).tolist(),
                  "eta2": between_group_share(a)[1] if not np.isnan(a).any() else None}
            for row, a in per_state.items()}
    return {"states": rows, "pooled": permutation_test(complete, permutations) if complete else None}


def plot_report(report: Mapping[str, Any], path: Path) -> None:
    """One panel per state: success of each first chunk (sorted, over its N continuations) against
    the state's mean, with the state's η² in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    states = report["summary"]["states"]
    fig, axes = plt.subplots(1, len(states), figsize=(3.2 * len(states), 2.8), sharey=True, squeeze=False)
    for ax, (row, entry) in zip(axes[0], states.items()):
        rates = sorted(entry["per_first_chunk"], reverse=True)
        ax.bar(range(len(rates)), rates, color="C0")
        ax.axhline(entry["success"], color="k", linestyle="--", linewidth=1, label="state's mean")
        eta2 = entry["eta2"]
        ax.set_title(f"state {row}" + (f": η² {eta2:.2f}" if eta2 is not None else ""), fontsize=9)
        ax.set_xticks(range(len(rates)), [""] * len(rates))
        ax.set_xlabel(f"first chunks (each over {report['continuations']} episodes)", fontsize=8)
        ax.set_ylim(0, 1.05)
    axes[0][0].set_ylabel("success")
    axes[0][0].legend(fontsize=7, loc="upper right")
    pooled = report["summary"]["pooled"]
    if pooled:
        fig.suptitle(f"pooled η² {pooled['eta2']:.2f} (shuffled {pooled['eta2_shuffled_mean']:.2f}, "
                     f"p = {pooled['p_value']:.2g})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    from bench_learning_libero import evaluation_runner, task_init_states
    from diagnose_heldout_drop import SHIPPED_START, build_variants

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True, help="a training checkpoint dir (step_N)")
    parser.add_argument("--variant", choices=["start", "rl"], default="start")
    parser.add_argument("--sft-dir", type=Path, default=SHIPPED_START, help="the start's weights + norm stats")
    parser.add_argument("--rows", type=int, nargs="+", default=[3, 21, 34],
                        help="shipped init states (default: held-out states the start solves about half the time)")
    parser.add_argument("--first-chunks", type=int, default=8, help="M first-chunk noises per state")
    parser.add_argument("--continuations", type=int, default=6, help="N episodes per first chunk")
    parser.add_argument("--noise-seed", type=int, default=0)
    parser.add_argument("--num-envs", type=int, default=2)
    parser.add_argument("--camera-size", type=int, default=256)
    parser.add_argument("--out", type=Path, required=True, help="JSON report (rewritten after every state; "
                        "states already in it are not run again)")
    parser.add_argument("--plot", type=Path, help="the figure (png): success per first chunk, state by state")
    args = parser.parse_args(argv)
    if args.first_chunks < 2 or args.continuations < 2:
        parser.error("--first-chunks and --continuations must be >= 2 (the test compares groups)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    policy, weights, info = build_variants(args.checkpoint, args.sft_dir, "eager", 0)
    policy.load_trainable_state_dict(weights[args.variant])
    policy.eval()
    task = info["task_name"]
    states = task_init_states(task)
    bad_rows = [row for row in args.rows if not 0 <= row < len(states)]
    if bad_rows:
        parser.error(f"--rows {bad_rows}: task {task!r} ships {len(states)} init states (0-{len(states) - 1})")
    report: dict[str, Any] = json.loads(args.out.read_text()) if args.out.exists() else {}
    this_run = {"checkpoint": str(args.checkpoint), "variant": args.variant, "task": task,
                "first_chunks": args.first_chunks, "continuations": args.continuations}
    differing = conflicting_settings(report, this_run)
    if differing:
        parser.error(f"--out {args.out} holds another run's states ({differing}, as (in the report, now)): "
                     "pass a new --out, or the same settings to finish or redraw it")
    report.update(this_run)
    runner = evaluation_runner(task, args.num_envs, args.camera_size, args.noise_seed)
    outcomes = report.setdefault("outcomes", {})
    try:
        for row in args.rows:
            if str(row) in outcomes:
                continue  # done in an earlier, cut-short call
            t0 = time.time()
            result = run_state(runner, policy, task, states[row], row, args.first_chunks, args.continuations,
                               args.noise_seed)
            outcomes[str(row)] = result.tolist()
            logger.info("state %d: success %.2f, per first chunk %s (%.0f s)", row, np.nanmean(result),
                        np.nanmean(result, axis=1).round(2).tolist(), time.time() - t0)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(report, indent=1))
    finally:
        runner.close()
    report["summary"] = summarize(report)
    pooled = report["summary"]["pooled"]
    if pooled:
        logger.info("pooled: η² %.3f (shuffled %.3f), p = %.3g", pooled["eta2"], pooled["eta2_shuffled_mean"],
                    pooled["p_value"])
    args.out.write_text(json.dumps(report, indent=1))
    if args.plot:
        plot_report(report, args.plot)
    return report


if __name__ == "__main__":
    main()
