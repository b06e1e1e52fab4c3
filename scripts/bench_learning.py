#!/usr/bin/env python
"""Does CFG-Flow RL learn? SFT warm start -> RL (and the BC ablation) on the reach env, over seeds.

Per seed:
  1. collect a FEW mediocre scripted demos (action noise + a chance of reaching the wrong colour),
  2. flow-matching SFT of the tiny PI0 on them (both CFG branches) -> a mediocre start; its
     weights are saved with ``save_pi0_weights``,
  3. evaluate the SFT policy on its training scenes (``--eval-repeats`` stochastic passes),
  4. RL: ``training.n_steps`` CFG-Flow rounds through the real training stack
     (``train_ript_openvla_oft.run_training`` on ``task=reach_rl``, ``algo.policy.pretrained_path``
     = the SFT weights), logging mean_scores / mean_advantage / fm_loss to metrics.jsonl,
  5. evaluate the RL policy over the cfg_scale grid,
  6. the same RL run with ``algo.bc_ablation=true`` (w = 1 for every rollout), evaluated alike.

The scenes are a fixed set (``--scenes-per-task`` init states per colour, the LIBERO analogue of
a task's shipped init states); ``--heldout-trials`` adds a cfg-1 check on unseen scenes. RL
defaults are the best measured in docs/learning.md (chosen on tuning seeds in round 7): every
scene in every round, 2 replayed successes per scene, binary weights, 4 epochs, mini-batch 16.
Writes ``<out>/learning_results.json``, ``learning_curves.png``, ``learning_cfg_scale.png``,
``learning_bars.png``, ``learning_diagnostics.png`` (per-round diagnostics) and
``learning_table.md`` (with each seed's retention: final success / best rounds); prints the table.

    python scripts/bench_learning.py --seeds 0 1 2 --out-dir docs                 # sequential, CPU
    python scripts/bench_learning.py --seeds 20 21 22 23 24 25 --jobs 6 --device cuda --out-dir out  # docs/learning.md
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
for p in (REPO_ROOT, REPO_ROOT / "scripts"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import numpy as np  # noqa: E402

logger = logging.getLogger("bench_learning")
CURVE_KEYS = ("rollout/mean_scores", "rollout/mean_advantage", "loss/fm_loss")
# Per-round diagnostics (docs/learning.md): kept in the curves and drawn in learning_diagnostics.png.
DIAGNOSTIC_KEYS = ("train/positive_window_ratio", "train/branch_gap", "rollout/groups_mixed",
                   "rollout/groups_all_fail", "rollout/groups_all_success", "rollout/chunk_diversity",
                   "train/weight_distance", "train/replayed_windows", "train/failed_window_share",
                   "train/failed_alpha_share")


# ------------------------------------------------------------------------------ arguments
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out-dir", default="docs", help="where the results json / plots / table go")
    p.add_argument("--work-dir", default="runs/bench_learning", help="per-seed runs, checkpoints")
    p.add_argument("--device", default=None, help="cpu / cuda (default: auto)")
    p.add_argument("--jobs", type=int, default=1, help=">1: one subprocess per seed, this many at a time")
    p.add_argument("--threads-per-job", type=int, default=None,
                   help="OMP/MKL threads of each --jobs subprocess (default: cpu_count / jobs)")
    p.add_argument("--sft-dir", default=None,
                   help="read the SFT stage (seed*/sft.json + weights) from this work dir instead of --work-dir "
                        "(several RL variants from one SFT start)")
    p.add_argument("--aggregate-only", action="store_true", help="only combine existing per-seed results")
    p.add_argument("--skip-bc", action="store_true", help="no BC ablation run")
    p.add_argument("--stages", nargs="+", default=["sft", "rl", "bc"], choices=["sft", "rl", "bc"],
                   help="run only these stages (later stages read the earlier ones' files)")
    g = p.add_argument_group("demos + SFT")
    g.add_argument("--scenes-per-task", type=int, default=3,
                   help="init states (scenes) per task: demos, RL rollouts and the main evaluation use these")
    g.add_argument("--demos-per-scene", type=int, default=3)
    g.add_argument("--demo-noise", type=float, default=0.3)
    g.add_argument("--demo-wrong-target-prob", type=float, default=0.5)
    g.add_argument("--sft-steps", type=int, default=1500)
    g.add_argument("--sft-batch-size", type=int, default=32)
    g.add_argument("--sft-lr", type=float, default=1e-3)
    g.add_argument("--sft-stride", type=int, default=10)
    g.add_argument("--sft-failed-cond-weight", type=float, default=1.0,
                   help="conditional-branch weight of failed demos in SFT (0 = CFGRL's offline recipe: the "
                        "conditional branch learns from successes only, the unconditional one from all)")
    g.add_argument("--sft-uncond-weight", type=float, default=0.1, help="alpha of the SFT loss")
    g.add_argument("--train-vision", action="store_true", default=True,
                   help="train the (random-init, tiny) vision tower in SFT and RL (default on)")
    g.add_argument("--freeze-vision", dest="train_vision", action="store_false")
    g = p.add_argument_group("RL (CFG-Flow, through run_training)")
    g.add_argument("--rl-steps", type=int, default=38, help="training.n_steps (RIPT rounds)")
    g.add_argument("--init-states-per-round", type=int, default=12, help="train_dataloader.batch_size")
    g.add_argument("--rloo", type=int, default=8, help="algo.rloo_batch_size (K)")
    g.add_argument("--rl-lr", type=float, default=1e-4)
    g.add_argument("--mini-batch-size", type=int, default=16)
    g.add_argument("--a-max", type=float, default=5.0)
    g.add_argument("--weight-mode", default="binary")
    g.add_argument("--short-window", default="pad", choices=["pad", "skip"])
    g.add_argument("--num-epochs", type=int, default=4, help="passes over each round's windows")
    g.add_argument("--dynamic-sampling", action="store_true")
    g.add_argument("--replay-per-state", type=int, default=2,
                   help="algo.success_replay_per_state: replay each scene's newest N earlier successes (0 = off)")
    g.add_argument("--replay-weight", type=float, default=1.0, help="algo.success_replay_weight")
    g.add_argument("--cond-layer-modulation", action=argparse.BooleanOptionalAction, default=True,
                   help="algo.policy.cond_layer_modulation (the per-layer CFG condition; the default since issue 26)")
    g.add_argument("--cond-lr-scale", type=float, default=10.0,
                   help="algo.cond_lr_scale; 10 with the per-layer condition lifted unseen reach seeds +34.7 "
                        "points (docs/learning.md)")
    g.add_argument("--rl-override", action="append", default=[], help="extra Hydra override (repeatable)")
    g = p.add_argument_group("evaluation")
    g.add_argument("--cfg-scales", type=float, nargs="+", default=[1.0, 1.5, 2.0, 3.0])
    g.add_argument("--eval-repeats", type=int, default=8,
                   help="evaluation passes over the scenes (sampling is stochastic; more episodes)")
    g.add_argument("--heldout-trials", type=int, default=25,
                   help="also evaluate (cfg 1) on this many unseen scenes per task; 0 = skip")
    g.add_argument("--heldout-init-seed", type=int, default=1000, help="init-state seed of the unseen scenes")
    return p.parse_args(argv)


# ------------------------------------------------------------------------------ one seed
def reach_env_config(args: argparse.Namespace, heldout: bool = False):
    """reach_rl's env settings (max_speed 0.015, 200 steps) restricted to ``--scenes-per-task``
    scenes per task; ``heldout``: as many other scenes (another init-state seed) instead."""
    import dataclasses

    from ript.algos.sft_warm_start import reach_env_config_from_task_yaml

    cfg = reach_env_config_from_task_yaml([f"++task.env_config.num_init_states_per_task={args.scenes_per_task}"])
    if heldout:
        cfg = dataclasses.replace(cfg, init_state_seed=args.heldout_init_seed,
                                  num_init_states_per_task=max(args.heldout_trials, 1))
    return cfg


def eval_runner(args: argparse.Namespace, seed: int, heldout: bool = False):
    from ript.env_runner.reach_runner import ReachRunner

    env_cfg = reach_env_config(args, heldout)
    return ReachRunner(num_parallel_envs=env_cfg.num_init_states_per_task, action_mode="absolute",
                       max_episode_length=env_cfg.max_episode_length, env_config=env_cfg, seed=seed)


def evaluate_policy(args: argparse.Namespace, policy: Any, seed: int, scales: Sequence[float]) -> dict[str, Any]:
    """Success on the training scenes (``--eval-repeats`` passes per cfg_scale, pooled) and, at
    cfg 1, on unseen scenes."""
    from eval_cfg_sweep import sweep

    runner = eval_runner(args, seed)
    passes = [sweep(policy, runner, scales, None) for _ in range(args.eval_repeats)]
    pooled = {}
    for s in passes[0]:
        n = sum(p[s]["num_episodes"] for p in passes)
        pooled[s] = {"overall": sum(p[s]["overall"] * p[s]["num_episodes"] for p in passes) / n,
                     "per_task": {t: float(np.mean([p[s]["per_task"][t] for p in passes]))
                                  for t in passes[0][s]["per_task"]},
                     "num_episodes": n}
    out = {"scenes": pooled}
    if args.heldout_trials > 0:
        out["heldout"] = sweep(policy, eval_runner(args, seed, heldout=True), [1.0], None)
    return out


def collect_scene_demos(args: argparse.Namespace, seed: int) -> list[dict[str, Any]]:
    """``--demos-per-scene`` scripted demos from every training scene (noisy expert that heads for
    the wrong colour with ``--demo-wrong-target-prob``): mediocre, multi-modal data."""
    from ript.envs.reach_env import ReachBenchmark, ReachEnv, ReachExpert, expert_episode

    env_cfg = reach_env_config(args)
    bench = ReachBenchmark(env_cfg)
    demos = []
    for task_id, name in enumerate(bench.get_task_names()):
        env = ReachEnv(name, env_cfg, seed=seed)
        expert = ReachExpert(env, args.demo_noise, args.demo_wrong_target_prob, seed=1000 * seed + task_id)
        for state in bench.get_task_init_states(name):
            for _ in range(args.demos_per_scene):
                demos.append(expert_episode(env, expert, state))
    return demos


def sft_stage(args: argparse.Namespace, seed: int, seed_dir: Path) -> tuple[Path, dict[str, Any]]:
    """Demos -> SFT -> saved weights + SFT evaluation."""
    import torch

    from openpi_pytorch_ori.pi0.checkpoint import save_pi0_weights
    from ript.algos.policies.pi0_oft_policy import PI0_OFT_Policy
    from ript.algos.sft_warm_start import demonstration_windows, sft_warm_start

    t0 = time.time()
    demos = collect_scene_demos(args, seed)
    torch.manual_seed(seed)
    policy = PI0_OFT_Policy(device_id=args.device, norm_stats_path="builtin:reach", preset="tiny",
                            dtype="float32", freeze_vision_encoder=not args.train_vision)
    windows = demonstration_windows(demos, policy.norm_stats, stride=args.sft_stride, action_mode="absolute",
                                    failed_cond_weight=args.sft_failed_cond_weight)
    losses = sft_warm_start(policy, windows, num_steps=args.sft_steps, batch_size=args.sft_batch_size,
                            lr=args.sft_lr, uncond_weight=args.sft_uncond_weight, seed=seed, progress=False)
    path = seed_dir / "sft" / "model.safetensors"
    save_pi0_weights(policy.pi0, path)
    sft_time = time.time() - t0
    evals = evaluate_policy(args, policy.eval(), seed, args.cfg_scales)
    info = {"demo_success_rate": float(np.mean([d["success"] for d in demos])), "num_demos": len(demos),
            "num_windows": len(windows), "loss_curve": losses, "time_s": sft_time, "eval": evals}
    logger.info("seed %d SFT: demos %.2f success, %d windows, eval SR %.3f (%.0f s)", seed,
                info["demo_success_rate"], len(windows), evals["scenes"]["1"]["overall"], sft_time)
    return path, info


def rl_overrides(args: argparse.Namespace, seed: int, sft_path: Path, run_dir: Path, bc: bool) -> list[str]:
    device = "null" if args.device is None else args.device
    return [
        "task=reach_rl", f"seed={seed}", f"output_dir={run_dir}",
        f"algo.policy.pretrained_path={sft_path}", "algo.policy.preset=tiny", "algo.policy.dtype=float32",
        f"algo.policy.device_id={device}", f"algo.policy.freeze_vision_encoder={str(not args.train_vision).lower()}",
        f"training.n_steps={args.rl_steps}", f"training.save_every_n_steps={args.rl_steps}",
        "training.keep_last_checkpoints=1", f"train_dataloader.batch_size={args.init_states_per_round}",
        f"algo.rloo_batch_size={args.rloo}", f"algo.num_parallel_envs={args.rloo}",
        f"algo.lr={args.rl_lr}", f"algo.header_lr={args.rl_lr}", f"algo.mini_batch_size={args.mini_batch_size}",
        f"algo.a_max={args.a_max}", f"algo.weight_mode={args.weight_mode}", f"algo.short_window={args.short_window}",
        f"+algo.rl_optimizer_factory.num_epochs={args.num_epochs}",
        f"algo.enable_dynamic_sampling={str(args.dynamic_sampling).lower()}",
        f"algo.bc_ablation={str(bc).lower()}", "rollout.enabled=false", "logging.mode=disabled",
        f"algo.success_replay_per_state={args.replay_per_state}", f"algo.success_replay_weight={args.replay_weight}",
        "algo.track_weight_distance=true",
        f"algo.policy.cond_layer_modulation={str(args.cond_layer_modulation).lower()}",
        f"algo.cond_lr_scale={args.cond_lr_scale}",
        "algo.rollout_generator_factory.use_tqdm=false",
        f"++task.env_config.num_init_states_per_task={args.scenes_per_task}", *args.rl_override,
    ]


def rl_stage(args: argparse.Namespace, seed: int, sft_path: Path, run_dir: Path, bc: bool) -> dict[str, Any]:
    """One RL run through run_training, then the cfg_scale evaluation of its final checkpoint."""
    from eval_cfg_sweep import compose_config, load_policy_and_config
    from train_ript_openvla_oft import run_training

    t0, cpu0 = time.time(), time.process_time()
    # A fresh run: metrics.jsonl appends and checkpoints of an older run would mix into this one.
    shutil.rmtree(run_dir, ignore_errors=True)
    cfg = compose_config(None, rl_overrides(args, seed, sft_path, run_dir, bc))
    run_training(cfg)
    train_time, train_cpu = time.time() - t0, time.process_time() - cpu0
    curve = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    policy, _, _ = load_policy_and_config(run_dir, device=args.device)
    evals = evaluate_policy(args, policy, seed, args.cfg_scales)
    logger.info("seed %d %s: %s (train %.0f s)", seed, "BC" if bc else "RL",
                " ".join(f"cfg{s}={r['overall']:.3f}" for s, r in evals["scenes"].items()), train_time)
    per_task = sorted(k for k in (curve[-1] if curve else {}) if k.startswith("rollout/success_rate/"))
    keep = ("step", *CURVE_KEYS, *DIAGNOSTIC_KEYS, "rollout/valid_episodes", "rollout/non_zero_adv_ratio",
            "rollout/rollout_checked", "train/windows_used", "train/windows_skipped", "train/optimizer_steps",
            *per_task)
    return {"curve": [{k: r.get(k) for k in keep} for r in curve], "time_s": train_time, "cpu_time_s": train_cpu,
            "eval": evals}


def run_stage(args: argparse.Namespace, seed: int, stage: str) -> dict[str, Any]:
    """``sft``: demos + SFT + eval -> sft.json; ``rl`` / ``bc``: RL from the saved SFT weights -> rl.json /
    bc.json. Stages of one seed share only files, so RL and BC can run in parallel processes."""
    seed_dir = Path(args.work_dir) / f"seed{seed}"
    seed_dir.mkdir(parents=True, exist_ok=True)
    if stage == "sft":
        sft_path, info = sft_stage(args, seed, seed_dir)
        info["weights"] = str(sft_path)
    else:
        sft_seed_dir = Path(args.sft_dir or args.work_dir) / f"seed{seed}"
        sft_path = Path(json.loads((sft_seed_dir / "sft.json").read_text())["weights"])
        info = rl_stage(args, seed, sft_path, seed_dir / stage, bc=stage == "bc")
    (seed_dir / f"{stage}.json").write_text(json.dumps(info) + "\n")
    return info


def load_seed_result(work_dir: str | Path, seed: int, sft_dir: str | Path | None = None) -> dict[str, Any]:
    result: dict[str, Any] = {"seed": seed}
    for stage in ("sft", "rl", "bc"):
        seed_dir = Path(sft_dir if stage == "sft" and sft_dir else work_dir) / f"seed{seed}"
        if (seed_dir / f"{stage}.json").is_file():
            result[stage] = json.loads((seed_dir / f"{stage}.json").read_text())
    return result


# --------------------------------------------------------------------------- aggregation
def _mean_std(values: Sequence[float]) -> dict[str, float]:
    arr = np.asarray(values, dtype=float)
    return {"mean": float(arr.mean()), "std": float(arr.std()), "values": [float(v) for v in arr]}


def aggregate(results: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    """Mean +- std over seeds of every success rate; per-iteration curves."""
    summary: dict[str, Any] = {"sft": _mean_std([r["sft"]["eval"]["scenes"]["1"]["overall"] for r in results])}
    sft_scales = [s for s in results[0]["sft"]["eval"]["scenes"] if all(s in r["sft"]["eval"]["scenes"] for r in results)]
    summary["sft_cfg"] = {s: _mean_std([r["sft"]["eval"]["scenes"][s]["overall"] for r in results]) for s in sft_scales}
    for arm in ("rl", "bc"):
        if all(arm in r for r in results):
            scales = list(results[0][arm]["eval"]["scenes"])
            summary[arm] = {s: _mean_std([r[arm]["eval"]["scenes"][s]["overall"] for r in results]) for s in scales}
            summary[f"{arm}_curve"] = {
                key: _mean_std_per_step([[row.get(key) for row in r[arm]["curve"]] for r in results])
                for key in (*CURVE_KEYS, *DIAGNOSTIC_KEYS)}
            summary[f"{arm}_retention"] = _mean_std([retention(r[arm]) for r in results])
            summary[f"{arm}_branch_gap_last"] = _mean_std([last_value(r[arm], "train/branch_gap") for r in results])
            summary[f"{arm}_spread_ratio"] = _mean_std([spread_ratio(r[arm]) for r in results])
    summary["heldout_cfg1"] = {arm: _mean_std([r[arm]["eval"]["heldout"]["1"]["overall"] for r in results])
                               for arm in ("sft", "rl", "bc")
                               if all(arm in r and "heldout" in r[arm]["eval"] for r in results)}
    summary["time_s"] = {st: float(np.mean([r[st]["time_s"] for r in results]))
                         for st in ("sft", "rl", "bc") if all(st in r for r in results)}
    for arm in ("rl", "bc"):
        if arm in summary:
            summary[f"{arm}_gain_points_cfg1"] = 100 * (summary[arm]["1"]["mean"] - summary["sft"]["mean"])
            summary[f"{arm}_best_scale"] = max(summary[arm], key=lambda s: summary[arm][s]["mean"])
    return {"config": {k: v for k, v in vars(args).items() if k not in ("aggregate_only",)},
            "summary": summary, "per_seed": results}


def moving_average(values: Sequence[float | None], window: int = 5) -> np.ndarray:
    """Trailing mean over ``window`` rounds (fewer at the start); None counts as missing."""
    x = np.asarray([np.nan if v is None else v for v in values], dtype=float)
    return np.asarray([np.nanmean(x[max(0, i - window + 1):i + 1]) for i in range(len(x))])


def retention(arm_result: dict[str, Any], window: int = 5) -> float:
    """Final policy's success (cfg 1 evaluation) / the best ``window``-round mean of the training
    rollouts' success: >= 0.9 means the run kept what it learned (no late decline). The best
    round is taken from a moving average, so one lucky round does not set the bar."""
    best = float(np.nanmax(moving_average([row["rollout/mean_scores"] for row in arm_result["curve"]], window)))
    return arm_result["eval"]["scenes"]["1"]["overall"] / max(best, 1e-9)


def last_value(arm_result: dict[str, Any], key: str) -> float:
    """The metric at the last round that logged it (nan if none did)."""
    vals = [row.get(key) for row in arm_result["curve"] if row.get(key) is not None]
    return float(vals[-1]) if vals else float("nan")


def spread_ratio(arm_result: dict[str, Any]) -> float:
    """Last round's first-chunk spread of the K rollouts / the first round's (issue 20: >= 0.5)."""
    vals = [row.get("rollout/chunk_diversity") for row in arm_result["curve"]
            if row.get("rollout/chunk_diversity") is not None]
    return float(vals[-1] / vals[0]) if len(vals) >= 2 and vals[0] > 0 else float("nan")


def _mean_std_per_step(curves: list[list[float]]) -> dict[str, list[float]]:
    n = min(len(c) for c in curves)
    arr = np.asarray([[np.nan if v is None else v for v in c[:n]] for c in curves], dtype=float)
    return {"mean": np.nanmean(arr, axis=0).tolist(), "std": np.nanstd(arr, axis=0).tolist()}


# --------------------------------------------------------------------------------- output
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(summary: dict[str, Any], path: Path) -> None:
    """mean_scores / mean_advantage / fm_loss per RL round, mean +- std over seeds (RL and BC)."""
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, key in zip(axes, CURVE_KEYS):
        for arm, color in (("rl", "tab:blue"), ("bc", "tab:orange")):
            if f"{arm}_curve" not in summary:
                continue
            c = summary[f"{arm}_curve"][key]
            x = np.arange(1, len(c["mean"]) + 1)
            m, s = np.asarray(c["mean"]), np.asarray(c["std"])
            ax.plot(x, m, color=color, label="CFG-Flow RL" if arm == "rl" else "BC ablation")
            ax.fill_between(x, m - s, m + s, color=color, alpha=0.2)
        ax.set_title(key.split("/")[-1])
        ax.set_xlabel("RL round")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_diagnostics(summary: dict[str, Any], path: Path) -> None:
    """The per-round diagnostics of docs/learning.md, mean +- std over seeds (RL and BC)."""
    plt = _plt()
    panels = [("rollout/mean_scores", "rollout success"), ("train/positive_window_ratio", "positive-window ratio"),
              ("rollout/groups_mixed", "mixed groups (carry RLOO signal)"),
              ("rollout/groups_all_fail", "all-fail groups"), ("rollout/chunk_diversity", "first-chunk std over K"),
              ("train/branch_gap", "branch gap |v_c - v_u| / |v_c|"), ("train/weight_distance", "|w - w_0| / |w_0|"),
              ("train/replayed_windows", "replayed windows")]
    fig, axes = plt.subplots(2, 4, figsize=(16, 6.4))
    for ax, (key, title) in zip(axes.ravel(), panels):
        for arm, color in (("rl", "tab:blue"), ("bc", "tab:orange")):
            c = summary.get(f"{arm}_curve", {}).get(key)
            if not c or np.all(np.isnan(np.asarray(c["mean"], dtype=float))):
                continue
            x = np.arange(1, len(c["mean"]) + 1)
            m, s = np.asarray(c["mean"], dtype=float), np.asarray(c["std"], dtype=float)
            ax.plot(x, m, color=color, label="CFG-Flow RL" if arm == "rl" else "BC ablation")
            ax.fill_between(x, m - s, m + s, color=color, alpha=0.2)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("RL round")
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_cfg_scale(summary: dict[str, Any], path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for arm, color, label in (("rl", "tab:blue", "after RL"), ("bc", "tab:orange", "after BC ablation")):
        if arm not in summary:
            continue
        scales = [float(s) for s in summary[arm]]
        m = np.asarray([100 * v["mean"] for v in summary[arm].values()])
        s = np.asarray([100 * v["std"] for v in summary[arm].values()])
        ax.errorbar(scales, m, yerr=s, marker="o", capsize=3, color=color, label=label)
    sft = summary.get("sft_cfg", {})
    if len(sft) > 1:
        ax.errorbar([float(k) for k in sft], [100 * v["mean"] for v in sft.values()],
                    yerr=[100 * v["std"] for v in sft.values()], marker="s", capsize=3, color="gray",
                    ls="--", label="SFT start")
    else:
        ax.axhline(100 * summary["sft"]["mean"], color="gray", ls="--", label="SFT start (cfg 1)")
    ax.set_xlabel("cfg_scale")
    ax.set_ylabel("success rate (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_bars(summary: dict[str, Any], path: Path) -> None:
    plt = _plt()
    names, means, stds = ["SFT"], [summary["sft"]["mean"]], [summary["sft"]["std"]]
    for arm, label in (("rl", "RL"), ("bc", "BC")):
        if arm in summary:
            names.append(f"{label} cfg1")
            means.append(summary[arm]["1"]["mean"])
            stds.append(summary[arm]["1"]["std"])
            best = summary[f"{arm}_best_scale"]
            if best != "1":
                names.append(f"{label} cfg{best}")
                means.append(summary[arm][best]["mean"])
                stds.append(summary[arm][best]["std"])
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.bar(names, 100 * np.asarray(means), yerr=100 * np.asarray(stds), capsize=4,
           color=["gray"] + ["tab:blue" if n.startswith("RL") else "tab:orange" for n in names[1:]])
    ax.set_ylabel("success rate (%)")
    ax.set_ylim(0, 100)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _cell(v: dict[str, float]) -> str:
    return f"{100 * v['mean']:.1f} ± {100 * v['std']:.1f}"


def markdown_table(doc: dict[str, Any]) -> str:
    summary, seeds = doc["summary"], doc["per_seed"]
    scales = list(summary.get("rl", {"1": None}))
    lines = ["| policy | " + " | ".join(f"cfg {s}" for s in scales) + " | per seed (cfg 1) |",
             "|---|" + "---:|" * len(scales) + "---|"]
    sft_seeds = ", ".join(f"{100 * r['sft']['eval']['scenes']['1']['overall']:.0f}" for r in seeds)
    sft = summary.get("sft_cfg", {})
    lines.append("| SFT start | " + " | ".join(_cell(sft[s]) if s in sft else "—" for s in scales)
                 + f" | {sft_seeds} |")
    for arm, label in (("rl", "CFG-Flow RL"), ("bc", "BC ablation (w = 1)")):
        if arm in summary:
            per = ", ".join(f"{100 * r[arm]['eval']['scenes']['1']['overall']:.0f}" for r in seeds)
            lines.append(f"| {label} | " + " | ".join(_cell(summary[arm][s]) for s in scales) + f" | {per} |")
    for arm, label in (("rl", "RL"), ("bc", "BC")):
        if f"{arm}_retention" in summary:
            vals = ", ".join(f"{v:.2f}" for v in summary[f"{arm}_retention"]["values"])
            lines.append(f"\n{label} retention (final cfg-1 success / best 5-round mean of training success): {vals}")
        if f"{arm}_branch_gap_last" in summary:
            gaps = ", ".join(f"{100 * v:.2f}" for v in summary[f"{arm}_branch_gap_last"]["values"])
            spread = ", ".join(f"{v:.2f}" for v in summary[f"{arm}_spread_ratio"]["values"])
            lines.append(f"\n{label} branch gap at the last round (%): {gaps}; K-rollout spread last/first round: {spread}")
    held = summary.get("heldout_cfg1", {})
    if held:
        lines += ["", "Unseen scenes (generalisation check, cfg 1): " + ", ".join(
            f"{name} {_cell(held[arm])}" for arm, name in (("sft", "SFT"), ("rl", "RL"), ("bc", "BC")) if arm in held)]
    return "\n".join(lines)


def write_outputs(doc: dict[str, Any], out_dir: Path) -> str:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "learning_results.json").write_text(json.dumps(doc, indent=1) + "\n")
    plot_curves(doc["summary"], out_dir / "learning_curves.png")
    plot_cfg_scale(doc["summary"], out_dir / "learning_cfg_scale.png")
    plot_diagnostics(doc["summary"], out_dir / "learning_diagnostics.png")
    plot_bars(doc["summary"], out_dir / "learning_bars.png")
    table = markdown_table(doc)
    (out_dir / "learning_table.md").write_text(table + "\n")
    return table


# ----------------------------------------------------------------------------------- main
def _run_parallel(args: argparse.Namespace, argv: Sequence[str], jobs: list[tuple[int, str]]) -> None:
    """One subprocess per (seed, stage), ``--jobs`` at a time, threads split between them."""
    pending, running = list(jobs), []
    log_dir = Path(args.work_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    threads = str(args.threads_per_job or max(1, (os.cpu_count() or 1) // max(1, min(args.jobs, len(jobs)))))
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    base = _strip_args(argv, ("--seeds", "--jobs", "--stages"))
    while pending or running:
        while pending and len(running) < args.jobs:
            seed, stage = pending.pop(0)
            cmd = [sys.executable, __file__, *base, "--seeds", str(seed), "--stages", stage, "--no-aggregate"]
            log = open(log_dir / f"seed{seed}_{stage}.log", "w")
            running.append(((seed, stage), subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)))
        time.sleep(1)
        for key, proc in list(running):
            if proc.poll() is None:
                continue
            running.remove((key, proc))
            if proc.returncode != 0:
                raise RuntimeError(f"seed {key[0]} stage {key[1]} failed (exit {proc.returncode}); "
                                   f"see {log_dir}/seed{key[0]}_{key[1]}.log")


def _strip_args(argv: Sequence[str], names: Sequence[str]) -> list[str]:
    """``argv`` without the given options and their values."""
    out, skip = [], False
    for a in argv:
        if a in names:
            skip = True
            continue
        if skip and not a.startswith("--"):
            continue
        skip = False
        out.append(a)
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any] | None:
    argv = list(sys.argv[1:] if argv is None else argv)
    no_aggregate = "--no-aggregate" in argv
    argv = [a for a in argv if a != "--no-aggregate"]
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] %(message)s")
    # The checkpoint load report lists every remapped key (hundreds of lines per policy build).
    logging.getLogger("ript.algos.policies.pi0_oft_policy").setLevel(logging.WARNING)
    stages = [s for s in args.stages if not (s == "bc" and args.skip_bc)]
    if not args.aggregate_only:
        if args.jobs > 1:  # SFT of every seed first: the RL / BC stages start from its weights
            for group in (["sft"], ["rl", "bc"]):
                jobs = [(seed, st) for st in group for seed in args.seeds if st in stages]
                if jobs:
                    _run_parallel(args, argv, jobs)
        else:
            for seed in args.seeds:
                for stage in stages:
                    run_stage(args, seed, stage)
    if no_aggregate:
        return None
    doc = aggregate([load_seed_result(args.work_dir, s, args.sft_dir) for s in args.seeds], args)
    table = write_outputs(doc, Path(args.out_dir))
    print(table)  # the script's final table
    return doc


if __name__ == "__main__":
    main()
