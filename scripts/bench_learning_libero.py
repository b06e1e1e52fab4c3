"""Real LIBERO-Object: scripted demos -> SFT of a small PI0 -> CFG-Flow RL -> evaluation.

For one LIBERO-Object task (name or index) and seed:

  1. ``demos``: the scripted expert (``ript.envs.libero_object_expert``, with action noise and
     mistakes) records ``--demos-per-state`` demos from each *training* init state; norm stats
     (absolute / LIBERO-delta actions) are computed from them.
  2. ``sft``: ``ript.algos.sft_warm_start`` trains the ``--preset`` PI0 (default ``small``) on the demos' windows.
  3. ``eval``: the SFT policy on all 50 shipped init states (reported: held-out part and all 50).
  4. ``rl`` then ``rl_eval``: CFG-Flow RL through the training entry point (``train_ript_openvla_oft.run_training``
     on ``task=libero_object_rl`` restricted to this task, ``algo.policy.pretrained_path=<SFT
     weights>``, the demos' norm stats, the init-state dataset's training split), then the same
     evaluation of its final checkpoint.
  5. ``sweep``: the held-out guidance curve of one policy (``--sweep-from``: ``start`` = the SFT
     weights, or a training checkpoint / run directory): every held-out init state x each
     ``--eval-seeds`` env seed, at each ``--cfg-scales``; stored as ``results["sweeps"][--sweep-name]``,
     saved after every (seed, scale) so a cut-short call keeps what finished.

``--resume-rl`` continues ``<work-dir>/rl`` from its newest checkpoint (a run in legs or on a new
machine) instead of starting it afresh.

The train / held-out split is ``LiberoInitStateDataset``'s (``num_val`` states held out,
permutation seeded by ``--split-seed``), so demos, RL rollouts and evaluation agree.

Rendering: evaluation and RL use the standard ``Pi0LiberoRunner``, which renders the cameras only
where the policy looks (``render_on_demand``).

Example (one task, one seed; each stage reads the previous stages' files from --work-dir)::

    PYTHONPATH=$PWD nice python scripts/bench_learning_libero.py --task 0 --seed 0
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
for p in (REPO_ROOT, REPO_ROOT / "scripts"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import numpy as np  # noqa: E402

logger = logging.getLogger("bench_learning_libero")

BENCHMARK = "libero_object"
STAGES = ("demos", "sft", "eval", "rl", "rl_eval", "sweep")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", required=True, help="LIBERO-Object task name or index (0..9)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work-dir", default=None, help="default: runs/bench_learning_libero/task<i>_seed<s>")
    p.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    p.add_argument("--num-val", type=int, default=25, help="held-out init states (of 50)")
    p.add_argument("--sft-dir", default=None,
                   help="an SFT output dir (model.safetensors + norm_stats.json, e.g. scripts/sft_libero.py "
                        "train --out); default: <work-dir>/sft and <work-dir>/norm_stats.json")
    p.add_argument("--num-envs", type=int, default=1, help="parallel simulators for RL rounds and evaluation")
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--sampler", default="eager", choices=["eager", "cuda_graph"],
                   help="how select_action runs in RL rounds and sweeps (cuda_graph: GPU only, same numbers)")
    g = p.add_argument_group("demos")
    g.add_argument("--demos-per-state", type=int, default=1)
    g.add_argument("--demo-noise", type=float, default=0.2, help="expert action noise std")
    g.add_argument("--demo-mistake-prob", type=float, default=0.2)
    g.add_argument("--carry-clearance", type=float, default=0.05,
                   help="expert: object bottom above the basket rim while carrying (larger = more tolerant demos)")
    g.add_argument("--clean-labels", action="store_true",
                   help="label with the expert's pre-noise actions (DART); default: the executed actions")
    g.add_argument("--camera-size", type=int, default=256, help="task=libero_object_rl's camera_size")
    g.add_argument("--preset", default="small", choices=["small", "tiny"],
                   help="PI0 preset; demos are recorded at its input size, converted as the runner converts")
    g = p.add_argument_group("SFT")
    g.add_argument("--sft-steps", type=int, default=300)
    g.add_argument("--sft-batch-size", type=int, default=16)
    g.add_argument("--sft-lr", type=float, default=1e-3)
    g.add_argument("--sft-stride", type=int, default=10, help="window stride (the demos' image stride)")
    g = p.add_argument_group("RL (through run_training)")
    g.add_argument("--rl-steps", type=int, default=8, help="training.n_steps (RIPT rounds)")
    g.add_argument("--init-states-per-round", type=int, default=4)
    g.add_argument("--rloo", type=int, default=4)
    g.add_argument("--rl-lr", type=float, default=2.5e-5,
                   help="1e-4 wrecked a few-demo start within a round; <= 2.5e-5 did not (docs/learning_libero.md)")
    g.add_argument("--save-every", type=int, default=0,
                   help="checkpoint every N rounds (0: at the end); rl_eval evaluates the newest one")
    g.add_argument("--mini-batch-size", type=int, default=16)
    g.add_argument("--weight-mode", default="binary", help="the reach benchmark's setting (docs/learning.md)")
    g.add_argument("--num-epochs", type=int, default=4, help="passes over each round's windows")
    g.add_argument("--short-window", default="pad", choices=["pad", "skip"])
    g.add_argument("--cond-layer-modulation", action=argparse.BooleanOptionalAction, default=True,
                   help="algo.policy.cond_layer_modulation (the per-layer CFG condition; the default since issue 26)")
    g.add_argument("--cond-lr-scale", type=float, default=10.0,
                   help="algo.cond_lr_scale; 10 with the per-layer condition lifted unseen reach seeds +34.7 "
                        "points (docs/learning.md)")
    g.add_argument("--rl-override", action="append", default=[], help="extra Hydra override (repeatable)")
    g.add_argument("--resume-rl", action="store_true",
                   help="continue <work-dir>/rl from its newest checkpoint (training.resume=true) instead of a fresh run")
    g = p.add_argument_group("evaluation")
    g.add_argument("--eval-states", type=int, default=50, help="evaluate on the first N of the 50 states")
    g.add_argument("--eval-split", default="all", choices=["all", "heldout"],
                   help="heldout: only the init states RL never trains on (the number to report)")
    g.add_argument("--sweep-from", default="start",
                   help="sweep stage: 'start' (the SFT weights) or a training checkpoint / run directory")
    g.add_argument("--sweep-name", default="start", help="sweep stage: the key in results['sweeps']")
    g.add_argument("--cfg-scales", type=float, nargs="+", default=[1.0, 1.5, 2.0, 3.0])
    g.add_argument("--eval-seeds", type=int, nargs="+", default=None,
                   help="sweep stage: env seeds (default: --seed and --seed + 1000)")
    return p.parse_args(argv)


# ------------------------------------------------------------------------------ helpers
def task_identity(task: str) -> tuple[int, str]:
    from ript.envs.libero_env import load_benchmark

    names = list(load_benchmark(BENCHMARK).get_task_names())
    if task.isdigit() and int(task) < len(names):
        return int(task), names[int(task)]
    if task not in names:
        raise ValueError(f"--task {task!r} is neither an index < {len(names)} nor a task name of {BENCHMARK}: {names}")
    return names.index(task), task


def split_rows(num_states: int, num_val: int, seed: int) -> tuple[list[int], list[int]]:
    """(train rows, held-out rows) exactly as LiberoInitStateDataset(num_val=..., seed=...) splits."""
    from ript.datasets.init_state_dataset import split_train_val_rows

    train, val = split_train_val_rows(num_states, num_val, seed)
    return [int(i) for i in train], [int(i) for i in val]


PRESET_IMAGE_SIZE = {"small": 112, "tiny": 56}  # openpi_pytorch_ori/pi0/configuration_pi0.py presets


def sft_policy(norm_stats_path: Path, preset: str = "small") -> Any:
    """A fresh PI0 (no weights loaded) for the SFT stage, everything but the frozen parts trainable."""
    from ript.algos.policies.pi0_oft_policy import PI0_OFT_Policy

    return PI0_OFT_Policy(norm_stats_path=str(norm_stats_path), preset=preset, dtype="float32",
                          freeze_vision_encoder=False)


def start_policy(args: argparse.Namespace, task_name: str, work: Path) -> Any:
    """The start as RL round 0 rolls it out: the RL run's own policy config (attention, per-layer
    condition, dtype, sampler) with the SFT weights. A sweep of the start and a sweep of an RL
    checkpoint (built from that checkpoint's saved config) then differ in the weights alone."""
    from eval_cfg_sweep import build_policy, compose_config

    return build_policy(compose_config(None, rl_overrides(args, task_name, work, work / "rl")), None, {})


def evaluation_runner(task_name: str, num_envs: int, camera_size: int, seed: int) -> Any:
    """The runner every evaluation here uses: 50-step chunks open loop, absolute actions, soft
    resets; ``seed`` keys the episodes' flow noise. It renders the cameras only where the policy
    looks (render_on_demand, its default)."""
    from ript.env_runner.pi0_libero_runner import Pi0LiberoRunner

    return Pi0LiberoRunner(benchmark_name=BENCHMARK, task_names_to_use=[task_name], num_parallel_envs=num_envs,
                           open_loop=50, n_action_steps=50, action_mode="absolute", camera_height=camera_size,
                           camera_width=camera_size, seed=seed, hard_reset=False)


def task_init_states(task_name: str) -> Any:
    """The task's shipped init states (LIBERO-Object)."""
    from ript.envs.libero_env import load_benchmark

    benchmark = load_benchmark(BENCHMARK)
    return benchmark.get_task_init_states(list(benchmark.get_task_names()).index(task_name))


def evaluate(policy: Any, task_name: str, rows: Sequence[int], val_rows: Sequence[int], seed: int,
             camera_size: int, num_envs: int = 1, cfg_scale: float = 1.0) -> dict[str, Any]:
    """Success per shipped init state (open loop 50, the suite's 280 steps) at ``cfg_scale``."""
    runner = evaluation_runner(task_name, num_envs, camera_size, seed)
    states = task_init_states(task_name)
    policy.eval()
    t0 = time.time()
    per_state = {}
    for first in range(0, len(rows), num_envs):
        group = list(rows[first:first + num_envs])
        results = runner.run_policy_in_env(task_name, policy, [states[r] for r in group], cfg_scale=cfg_scale)
        for row, (success, _, ep) in zip(group, results):
            per_state[int(row)] = bool(success) if ep.valid else None
            logger.info("eval state %d: %s (%d steps)", row, success, ep.num_steps)
    runner.close()
    held = [per_state[r] for r in rows if r in set(val_rows) and per_state[r] is not None]
    every = [v for v in per_state.values() if v is not None]
    out = {"heldout_success": float(np.mean(held)) if held else None, "heldout_episodes": len(held),
           "all_success": float(np.mean(every)) if every else None, "all_episodes": len(every),
           "per_state": per_state, "time_s": time.time() - t0}
    logger.info("eval: held-out %s over %d, all %s over %d (%.0f s)", out["heldout_success"], len(held),
                out["all_success"], len(every), out["time_s"])
    return out


# ------------------------------------------------------------------------------ stages
def demos_stage(args: argparse.Namespace, task_id: int, train_rows: list[int], work: Path) -> dict[str, Any]:
    from ript.algos.sft_warm_start import norm_stats_from_demonstrations, write_norm_stats_json
    from ript.envs.libero_object_demos import record_demonstrations, save_demonstrations
    from ript.envs.libero_object_expert import ExpertConfig

    t0 = time.time()
    config = ExpertConfig(action_noise=args.demo_noise, mistake_prob=args.demo_mistake_prob,
                          carry_clearance=args.carry_clearance)
    rows = [r for r in train_rows for _ in range(args.demos_per_state)]
    demos = record_demonstrations(task_id, rows, config, seed=args.seed, camera_size=args.camera_size,
                                  image_stride=args.sft_stride, clean_labels=args.clean_labels,
                                  image_size=PRESET_IMAGE_SIZE[args.preset])
    save_demonstrations(demos, work / "demos.pkl")
    write_norm_stats_json(norm_stats_from_demonstrations(demos), work / "norm_stats.json")
    info = {"num_demos": len(demos), "demo_success_rate": float(np.mean([d["success"] for d in demos])),
            "mean_steps": float(np.mean([len(d["actions"]) for d in demos])), "time_s": time.time() - t0}
    logger.info("demos: %s", info)
    return info


def sft_stage(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import torch

    from openpi_pytorch_ori.pi0.checkpoint import save_pi0_weights
    from ript.algos.sft_warm_start import demonstration_windows, sft_warm_start
    from ript.envs.libero_object_demos import load_demonstrations

    t0 = time.time()
    demos = load_demonstrations(work / "demos.pkl")
    torch.manual_seed(args.seed)
    policy = sft_policy(work / "norm_stats.json", preset=args.preset)
    windows = demonstration_windows(demos, policy.norm_stats, stride=args.sft_stride, action_mode="absolute")
    losses = sft_warm_start(policy, windows, num_steps=args.sft_steps, batch_size=args.sft_batch_size,
                            lr=args.sft_lr, seed=args.seed)
    save_pi0_weights(policy.pi0, work / "sft" / "model.safetensors")
    info = {"num_windows": len(windows), "loss_first": losses[0], "loss_last20": float(np.mean(losses[-20:])),
            "loss_curve": losses, "time_s": time.time() - t0}
    logger.info("SFT: %d windows, loss %.4f -> %.4f, %.0f s", len(windows), losses[0], info["loss_last20"],
                info["time_s"])
    return info


def rl_overrides(args: argparse.Namespace, task_name: str, work: Path, run_dir: Path) -> list[str]:
    return [
        "task=libero_object_rl", f"task.task_names_to_use=[{task_name}]", f"seed={args.seed}",
        f"output_dir={run_dir}", "++task.env_runner.hard_reset=false",
        f"++task.dataset.num_val={args.num_val}", f"++task.dataset.seed={args.split_seed}",
        f"task.camera_size={args.camera_size}",
        f"algo.policy.pretrained_path={sft_weights(args, work)}",
        f"algo.policy.norm_stats_path={sft_norm_stats(args, work)}", f"algo.policy.preset={args.preset}",
        "algo.policy.dtype=float32", "algo.policy.freeze_vision_encoder=false", "algo.action_mode=absolute",
        f"training.n_steps={args.rl_steps}", f"training.save_every_n_steps={args.save_every or args.rl_steps}",
        "training.keep_last_checkpoints=1", f"train_dataloader.batch_size={args.init_states_per_round}",
        f"algo.rloo_batch_size={args.rloo}", f"algo.num_parallel_envs={args.num_envs}",
        f"algo.lr={args.rl_lr}", f"algo.header_lr={args.rl_lr}", f"algo.mini_batch_size={args.mini_batch_size}",
        f"algo.weight_mode={args.weight_mode}", f"algo.short_window={args.short_window}",
        f"+algo.rl_optimizer_factory.num_epochs={args.num_epochs}",
        "rollout.enabled=false", "logging.mode=disabled", "algo.rollout_generator_factory.use_tqdm=false",
        f"algo.policy.cond_layer_modulation={str(args.cond_layer_modulation).lower()}",
        f"algo.cond_lr_scale={args.cond_lr_scale}", f"algo.policy.sampler={args.sampler}",
        # --resume-rl: the same run from its newest checkpoint (metrics.jsonl continues its record).
        *(["training.resume=true"] if args.resume_rl else []),
        *args.rl_override,
    ]


def sft_weights(args: argparse.Namespace, work: Path) -> Path:
    return Path(args.sft_dir) / "model.safetensors" if args.sft_dir else work / "sft" / "model.safetensors"


def sft_norm_stats(args: argparse.Namespace, work: Path) -> Path:
    return Path(args.sft_dir) / "norm_stats.json" if args.sft_dir else work / "norm_stats.json"


def rl_curve(run_dir: Path) -> list[dict[str, Any]]:
    """Every round's metrics (metrics.jsonl), as the training loop logged them; [] before any round."""
    from ript.training.run_summary import read_metrics

    return read_metrics(run_dir) if (run_dir / "metrics.jsonl").exists() else []


def rl_stage(args: argparse.Namespace, task_name: str, work: Path) -> dict[str, Any]:
    from eval_cfg_sweep import compose_config
    from train_ript_openvla_oft import run_training

    run_dir = work / "rl"
    if not args.resume_rl:
        shutil.rmtree(run_dir, ignore_errors=True)  # metrics.jsonl appends: never mix two runs
    t0 = time.time()
    run_training(compose_config(None, rl_overrides(args, task_name, work, run_dir)))
    info = {"curve": rl_curve(run_dir), "time_s": time.time() - t0}
    logger.info("RL: %d rounds in %.0f s", len(info["curve"]), info["time_s"])
    return info


def sweep_policy(args: argparse.Namespace, task_name: str, work: Path) -> tuple[Any, dict[str, Any]]:
    """The policy ``--sweep-from`` names, and what it is (for the record)."""
    if args.sweep_from == "start":
        return start_policy(args, task_name, work), {"from": "start", "path": str(sft_weights(args, work))}
    from eval_cfg_sweep import load_policy_and_config

    policy, _, info = load_policy_and_config(args.sweep_from, overrides=checkpoint_sweep_overrides(args))
    return policy, {"from": info["path"], "step": info.get("step")}


def checkpoint_sweep_overrides(args: argparse.Namespace) -> list[str]:
    """A training checkpoint is swept with its own config and this call's sampler (it changes speed,
    not numbers). With ``--sft-dir`` the start's weights and norm stats come from there instead of
    the paths the run saved, so a checkpoint made on another machine (the GPU's /tmp/r3/...) can be
    swept here."""
    return [f"algo.policy.sampler={args.sampler}", *(start_overrides(Path(args.sft_dir)) if args.sft_dir else [])]


def start_overrides(sft_dir: Path) -> list[str]:
    """The start's weights and norm stats from an SFT output dir (model.safetensors + norm_stats.json)."""
    return [f"algo.policy.pretrained_path={sft_dir / 'model.safetensors'}",
            f"algo.policy.norm_stats_path={sft_dir / 'norm_stats.json'}"]


def sweep_stage(args: argparse.Namespace, task_name: str, val_rows: list[int], work: Path,
                results: dict[str, Any], save) -> dict[str, Any]:
    """Success at each cfg scale over the held-out states ``val_rows`` x env seeds (results so far kept)."""
    policy, info = sweep_policy(args, task_name, work)
    seeds = args.eval_seeds or [args.seed, args.seed + 1000]
    entry = results.setdefault("sweeps", {}).setdefault(args.sweep_name, {})
    if entry.get("info", info) != info:  # another policy under this name: start the record again
        entry.clear()
    entry["info"] = info
    runs = entry.setdefault("runs", {})
    for env_seed in seeds:
        for scale in args.cfg_scales:
            key = f"seed{env_seed}_cfg{scale:g}"
            if key in runs:
                continue  # done in an earlier, cut-short call
            r = evaluate(policy, task_name, val_rows, val_rows, env_seed, args.camera_size, args.num_envs, scale)
            runs[key] = {"env_seed": env_seed, "cfg_scale": scale, "per_state": r["per_state"]}
            save()
    entry["by_cfg"] = pool_sweep(runs)
    save()
    logger.info("sweep %s: %s", args.sweep_name, {k: f"{v['successes']}/{v['episodes']}" for k, v in entry["by_cfg"].items()})
    return entry


def cell_counts(run: dict[str, Any]) -> tuple[int, int]:
    """(successes, valid episodes) of one (env seed, cfg) cell of a sweep; an invalid episode is None."""
    outcomes = [v for v in run["per_state"].values() if v is not None]
    return int(sum(outcomes)), len(outcomes)


def pool_sweep(runs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per cfg scale: successes / valid episodes pooled over env seeds, with a 95 % Wilson interval."""
    from ript.training.run_summary import wilson_interval

    pooled: dict[str, dict[str, Any]] = {}
    for run in runs.values():
        successes, episodes = cell_counts(run)
        cell = pooled.setdefault(f"{run['cfg_scale']:g}", {"successes": 0, "episodes": 0})
        cell["successes"] += successes
        cell["episodes"] += episodes
    for cell in pooled.values():
        cell["rate"] = cell["successes"] / cell["episodes"] if cell["episodes"] else None
        cell["wilson95"] = list(wilson_interval(cell["successes"], cell["episodes"])) if cell["episodes"] else None
    return pooled


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    task_id, task_name = task_identity(args.task)
    work = Path(args.work_dir or REPO_ROOT / "runs" / "bench_learning_libero" / f"task{task_id}_seed{args.seed}")
    work.mkdir(parents=True, exist_ok=True)
    results_path = work / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    results.update(task_id=task_id, task_name=task_name, seed=args.seed, args=vars(args))
    train_rows, val_rows = split_rows(50, args.num_val, args.split_seed)
    results.update(train_rows=train_rows, val_rows=val_rows)
    eval_rows = list(range(min(50, args.eval_states)))
    if args.eval_split == "heldout":
        eval_rows = [r for r in eval_rows if r in set(val_rows)]

    def save() -> None:
        results_path.write_text(json.dumps(results, indent=1) + "\n")

    if "demos" in args.stages:
        results["demos"] = demos_stage(args, task_id, train_rows, work)
        save()
    if "sft" in args.stages:
        results["sft"] = sft_stage(args, work)
        save()
    if "eval" in args.stages:
        policy = start_policy(args, task_name, work)
        results["sft_eval"] = evaluate(policy, task_name, eval_rows, val_rows, args.seed, args.camera_size,
                                       args.num_envs)
        save()
    if "rl" in args.stages:
        results["rl"] = rl_stage(args, task_name, work)
        save()
    if "rl_eval" in args.stages:
        from eval_cfg_sweep import load_policy_and_config

        policy, _, _ = load_policy_and_config(work / "rl")  # the newest checkpoint of the run
        results.setdefault("rl", {})["curve"] = rl_curve(work / "rl")
        results["rl_eval"] = evaluate(policy, task_name, eval_rows, val_rows, args.seed, args.camera_size,
                                      args.num_envs)
        save()
    if "sweep" in args.stages:  # always the held-out states (the first --eval-states of the 50)
        held_out = [r for r in range(min(50, args.eval_states)) if r in set(val_rows)]
        sweep_stage(args, task_name, held_out, work, results, save)
    for key in ("sft_eval", "rl_eval"):
        if key in results:
            r = results[key]
            print(f"{key}: held-out {r['heldout_success']} ({r['heldout_episodes']} eps), "
                  f"all {r['all_success']} ({r['all_episodes']} eps)")
    return results


if __name__ == "__main__":
    main()
