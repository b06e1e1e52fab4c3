#!/usr/bin/env python
"""LIBERO rollout throughput on this machine's CPUs: render on demand and the worker pool.

Three parts (``--parts``, default all), each printed as a markdown table:

* ``throughput``: env steps/s of ``Pi0LiberoRunner.run_policy_in_env`` with ``render_on_demand``
  off (every step renders both cameras, LIBERO's behaviour) and on, at each ``--sizes`` camera
  size, for open loop 50 (training) and replan 5 (openpi's evaluation). One batch of
  ``--num-envs`` episodes per case, same init states and the same seeded random action chunks in
  every case, hard resets (LIBERO's default) plus, with ``--soft-reset``, the "on" cases again
  with ``hard_reset=False``. Env steps count the settle steps. Two rates:
  ``stepping`` = env steps / time inside ``env.step`` (what the switch changes) and
  ``all-in`` = env steps / wall time of the batch (resets, policy and observation conversion
  included). Per worker = / num_envs; per core = / the machine's cores.
* ``round``: wall time of one RIPT round (``train_one_step``: rollouts + update) on the smoke task
  (config/task/libero_smoke.yaml, tiny PI0, 2 workers): the first round (builds the workers) and
  the second (pooled workers); then one evaluation with the pool and one with
  ``reuse_envs=false`` (builds and closes its workers, the old behaviour of evaluation).
* ``scheduler``: one RIPT round of ``--states`` init states x K ``--k`` episodes on LIBERO-Object's
  ketchup task with the shipped small PI0 checkpoint (a real policy, so episodes end raggedly),
  collected by the rollout generator with the ``lockstep`` loop and with the ``continuous``
  scheduler, on the same ``--num-envs`` simulators and the same states. Prints wall time,
  episodes/min and simulator utilisation (the workers' own busy seconds / simulators x wall).
* ``profile``: cProfile of one in-process env taking render-on-demand steps (physics only) at the
  largest size: where the remaining time goes.

  nice python scripts/bench_rollout.py --out-md /tmp/rollout.md --out-json /tmp/rollout.json
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))


class RandomChunkPolicy:
    """Seeded normalised chunks (call c uses seed c): the arm moves, every case gets the same actions."""

    def __init__(self, norm_stats: Any, n_action_steps: int = 50, scale: float = 0.5):
        self.norm_stats, self.n_action_steps, self.scale = norm_stats, n_action_steps, scale
        self.calls = 0

    def select_action(self, observation: Any, cfg_scale: float = 1.0) -> np.ndarray:
        rng = np.random.default_rng(self.calls)
        self.calls += 1
        return self.scale * rng.standard_normal((len(observation["state"]), self.n_action_steps, 7)).astype(np.float32)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="throughput,round,profile")
    parser.add_argument("--benchmark", default="libero_goal")
    parser.add_argument("--task", default="put_the_bowl_on_the_stove")
    parser.add_argument("--num-envs", type=int, default=2)
    parser.add_argument("--sizes", default="128,256", help="camera sizes (square)")
    parser.add_argument("--max-episode-length", type=int, default=100)
    parser.add_argument("--num-steps-wait", type=int, default=10)
    parser.add_argument("--soft-reset", action="store_true", help="also run the 'on' cases with hard_reset=False")
    parser.add_argument("--profile-steps", type=int, default=100)
    parser.add_argument("--states", type=int, default=8, help="scheduler part: init states per round")
    parser.add_argument("--k", type=int, default=8, help="scheduler part: rollouts per init state")
    parser.add_argument("--schedulers", default="lockstep,continuous")
    parser.add_argument("--sampler", default="eager",
                        help="scheduler part: how select_action runs, comma-separated cases of eager | cuda_graph "
                             "(CUDA graphs per batch size; GPU only, eager elsewhere)")
    parser.add_argument("--repeats", type=int, default=1, help="scheduler part: timed rounds per case")
    parser.add_argument("--warmup", action="store_true",
                        help="scheduler part: one untimed round per sampler first (workers, graph captures)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out-json", default=None)
    parser.add_argument("--out-md", default=None)
    args = parser.parse_args(argv)
    for sampler in args.sampler.split(","):
        if sampler not in ("eager", "cuda_graph"):
            parser.error(f"--sampler: {sampler!r} is not a sampler; use eager, cuda_graph or both, comma-separated")
    return args


# ------------------------------------------------------------------------------------ throughput


def run_throughput_case(runner: Any, env: Any, task: str, policy: RandomChunkPolicy, replan: int | None,
                        on_demand: bool, states: np.ndarray) -> dict[str, Any]:
    runner.render_on_demand = on_demand
    runner.timing.clear()
    policy.calls = 0
    t0 = time.perf_counter()
    episodes = list(runner.run_policy_in_env(task, policy, states, created_env=env, replan_steps=replan))
    total_s = time.perf_counter() - t0
    timing = runner.timing
    steps = timing["env_steps"] + timing["settle_steps"]
    stepping_s = timing["env_step_time_s"] + timing["settle_time_s"]
    return {"episodes": len(episodes), "valid": all(ep.valid for _, _, ep in episodes), "env_steps": steps,
            "total_s": total_s, "stepping_s": stepping_s, "reset_s": timing["reset_time_s"],
            # settle steps: all rendered when off, only the last one when on
            "rendered_vector_steps": timing["rendered_vector_steps"] + (min(1, runner.num_steps_wait) if on_demand
                                                                        else runner.num_steps_wait),
            "vector_steps": timing["vector_steps"] + runner.num_steps_wait}


def throughput(args: argparse.Namespace, norm_stats: Any, cores: int) -> list[dict[str, Any]]:
    from ript.env_runner.pi0_libero_runner import Pi0LiberoRunner

    cases = []
    configs = [(int(size), True) for size in args.sizes.split(",")]
    if args.soft_reset:
        configs.append((max(size for size, _ in configs), False))
    for size, hard_reset in configs:
        runner = Pi0LiberoRunner(args.benchmark, task_names_to_use=[args.task], num_parallel_envs=args.num_envs,
                                 max_episode_length=args.max_episode_length, num_steps_wait=args.num_steps_wait,
                                 camera_height=size, camera_width=size, action_mode="absolute",
                                 hard_reset=hard_reset)
        states = runner._init_states(args.task)[: args.num_envs]
        t0 = time.perf_counter()
        env, _, _ = runner.create_env(args.task)
        build_s = time.perf_counter() - t0
        try:
            for replan, protocol in ((None, "open_loop_50"), (5, "replan_5")):
                for on_demand in ((True,) if not hard_reset else (False, True)):
                    record = {"size": size, "protocol": protocol, "render_on_demand": on_demand,
                              "reset": "hard" if hard_reset else "soft", "env_build_s": build_s}
                    record.update(run_throughput_case(runner, env, args.task, RandomChunkPolicy(norm_stats),
                                                      replan, on_demand, states))
                    for rate, seconds in (("stepping", record["stepping_s"]), ("all_in", record["total_s"])):
                        record[f"{rate}_steps_per_s"] = record["env_steps"] / seconds
                        record[f"{rate}_per_worker"] = record[f"{rate}_steps_per_s"] / args.num_envs
                        record[f"{rate}_per_core"] = record[f"{rate}_steps_per_s"] / cores
                    print(json.dumps(record), flush=True)
                    cases.append(record)
        finally:
            runner.close()
    for record in cases:  # speed-up against "off" at the same size and protocol
        base = next(c for c in cases if c["size"] == record["size"] and c["protocol"] == record["protocol"]
                    and not c["render_on_demand"])
        record["stepping_speedup"] = record["stepping_steps_per_s"] / base["stepping_steps_per_s"]
        record["all_in_speedup"] = record["all_in_steps_per_s"] / base["all_in_steps_per_s"]
    return cases


def throughput_markdown(cases: list[dict[str, Any]], args: argparse.Namespace, cores: int) -> str:
    lines = [f"LIBERO `{args.benchmark}` / `{args.task}`, {args.num_envs} worker processes on {cores} cores "
             f"(shared with other jobs), one batch of {args.num_envs} episodes per case: "
             f"{args.num_steps_wait} settle + {args.max_episode_length} policy steps each, seeded random "
             f"action chunks. Env steps/s: stepping = inside env.step; all-in = batch wall time "
             f"(resets + policy + conversion included).", "",
             "| Size | Protocol | Render on demand | Reset | Rendered / vector steps | Stepping steps/s "
             "(per worker, per core) | Speed-up | All-in steps/s (per worker, per core) | Speed-up | "
             "Resets s | Total s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in cases:
        lines.append(
            f"| {r['size']} | {r['protocol']} | {'on' if r['render_on_demand'] else 'off'} | {r['reset']} | "
            f"{r['rendered_vector_steps']} / {r['vector_steps']} | {r['stepping_steps_per_s']:.1f} "
            f"({r['stepping_per_worker']:.1f}, {r['stepping_per_core']:.1f}) | {r['stepping_speedup']:.1f}x | "
            f"{r['all_in_steps_per_s']:.1f} ({r['all_in_per_worker']:.1f}, {r['all_in_per_core']:.1f}) | "
            f"{r['all_in_speedup']:.1f}x | {r['reset_s']:.1f} | {r['total_s']:.1f} |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------ RIPT round


def _smoke_run(tmp: str, reuse_envs: bool) -> tuple[Any, Any]:
    from hydra import compose, initialize_config_dir

    from ript.training.loop import build_training_run
    from ript.utils.distributed import setup_distributed

    overrides = ["task=libero_smoke", f"output_dir={tmp}", "logging.mode=disabled",
                 f"task.env_runner.reuse_envs={str(reuse_envs).lower()}"]
    with initialize_config_dir(config_dir=str(REPO_ROOT / "config"), version_base=None):
        cfg = compose(config_name="train_base_rl_openvla_oft", overrides=overrides)
    return cfg, build_training_run(cfg, setup_distributed())


def ript_round(args: argparse.Namespace) -> list[dict[str, Any]]:
    from ript.training.loop import evaluate, train_one_step

    rows = []

    def timed(label: str, fn: Any, run: Any) -> None:
        pids_before = run.env_runner.env_pool.get(run.task_names[0])
        t0 = time.perf_counter()
        fn()
        rows.append({"what": label, "wall_s": time.perf_counter() - t0,
                     "workers_reused": bool(pids_before and pids_before.worker_pids())})
        print(json.dumps(rows[-1]), flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        cfg, run = _smoke_run(tmp, reuse_envs=True)
        try:
            timed("round 1 (builds the 2 workers)", lambda: train_one_step(cfg, run), run)
            run.step += 1
            timed("round 2 (pooled workers)", lambda: train_one_step(cfg, run), run)
            run.step += 1
            timed("evaluation, pool (2 episodes)", lambda: evaluate(cfg, run), run)
        finally:
            run.close()
    with tempfile.TemporaryDirectory() as tmp:
        cfg, run = _smoke_run(tmp, reuse_envs=False)
        try:
            timed("evaluation, reuse_envs=false (builds + closes 2 workers)", lambda: evaluate(cfg, run), run)
        finally:
            run.close()
    return rows


def round_markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["Smoke task (config/task/libero_smoke.yaml: tiny PI0 on CPU, K=4 rollouts of 10 + 100 steps, "
             "2 workers, render on demand on):", "", "| What | Wall s |", "|---|---|"]
    lines += [f"| {r['what']} | {r['wall_s']:.1f} |" for r in rows]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------ scheduler

KETCHUP = "pick_up_the_ketchup_and_place_it_in_the_basket"  # LIBERO-Object task 4


def scheduler_round(args: argparse.Namespace) -> list[dict[str, Any]]:
    """One round per scheduler on the same simulators, states and policy (see the module doc)."""
    from torch.utils.data import DataLoader

    from ript.algos.policies.pi0_oft_policy import PI0_OFT_Policy
    from ript.algos.rl_optimizers.rollout_generator import RolloutGenerator
    from ript.datasets.init_state_dataset import InitStateDataset, collate_init_states
    from ript.env_runner.pi0_libero_runner import Pi0LiberoRunner

    checkpoint = "builtin:pi0_small_libero_object_ketchup"
    policies = {}
    for requested in args.sampler.split(","):
        sampler = requested if torch.device(args.device).type == "cuda" else "eager"  # graphs need a GPU
        if sampler not in policies:
            policies[sampler] = PI0_OFT_Policy(device_id=args.device, pretrained_path=checkpoint,
                                               norm_stats_path=checkpoint, preset="small", strict_load=False,
                                               sampler=sampler).eval()
    # The main job's runner settings (config/experiment/libero_object_ketchup.yaml).
    runner = Pi0LiberoRunner("libero_object", task_names_to_use=[KETCHUP], num_parallel_envs=args.num_envs,
                             action_mode="absolute", hard_reset=False, seed=0)
    task_id = runner.benchmark.get_task_names().index(KETCHUP)
    states = runner._init_states(KETCHUP)[:args.states]
    loader = DataLoader(InitStateDataset([(task_id, KETCHUP, states)]), batch_size=args.states,
                        collate_fn=collate_init_states)
    env, _, _ = runner.create_env(KETCHUP)  # built once: every case uses the same workers

    def one_round(scheduler: str, sampler: str) -> dict[str, Any]:
        runner.scheduler = scheduler
        generator = RolloutGenerator(runner, rloo_batch_size=args.k, demo_batch_size=args.states,
                                     use_tqdm=False, task_names_to_use=[KETCHUP], seed=0)
        batches = iter(loader)
        busy_before = sum(env.busy_seconds() or [0.0])
        started = time.perf_counter()
        episodes, _, _, _ = generator.generate_rollouts(policies[sampler], next(batches), batches, loader)
        wall = time.perf_counter() - started
        busy = sum(env.busy_seconds() or [0.0]) - busy_before
        steps = [ep.num_steps for ep in episodes if ep.valid]
        stats = generator.last_scheduler.stats if generator.last_scheduler is not None else None
        return {"scheduler": scheduler, "sampler": sampler, "simulators": args.num_envs, "episodes": len(steps),
                "successes": int(sum(ep.success for ep in episodes if ep.valid)),
                "mean_steps": float(np.mean(steps)), "wall_s": wall, "episodes_per_min": 60.0 * len(steps) / wall,
                "utilization": busy / (args.num_envs * wall),
                "policy_calls": stats.policy_calls if stats else None,
                "inference_s": stats.inference_s if stats else None}

    rows = []
    try:
        # Untimed rounds first: the workers' first episodes and the samplers' CUDA graph captures
        # (one per batch size) are start-up costs that a run pays once, not every round.
        for sampler in policies if args.warmup else ():
            print(f"[bench] warm-up {one_round('continuous', sampler)}", flush=True)
        for _ in range(args.repeats):  # cases alternate, so drift on the machine hits them alike
            for scheduler in args.schedulers.split(","):
                for sampler in policies:
                    rows.append(one_round(scheduler, sampler))
                    print(f"[bench] {rows[-1]}", flush=True)
    finally:
        runner.close()
    return rows


def scheduler_markdown(rows: list[dict[str, Any]], args: argparse.Namespace, cores: int) -> str:
    lines = [f"One round of {args.states} init states x K {args.k} on LIBERO-Object task 4 (shipped small "
             f"PI0 checkpoint on {args.device}, {args.num_envs} simulators, {cores} cores):", "",
             "| Scheduler | Sampler | Episodes (successes) | Mean steps | Wall s | Episodes/min | Utilisation | "
             "Policy calls (s) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        calls = "-" if r["policy_calls"] is None else f"{r['policy_calls']} ({r['inference_s']:.1f})"
        lines.append(f"| {r['scheduler']} | {r['sampler']} | {r['episodes']} ({r['successes']}) | "
                     f"{r['mean_steps']:.0f} | {r['wall_s']:.1f} | {r['episodes_per_min']:.1f} | "
                     f"{r['utilization']:.2f} | {calls} |")
    by_name = {r["scheduler"]: r for r in rows}
    if {"lockstep", "continuous"} <= set(by_name):
        lines += ["", f"Speed-up (wall): {by_name['lockstep']['wall_s'] / by_name['continuous']['wall_s']:.2f}x"]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------ profile


def profile(args: argparse.Namespace) -> str:
    from ript.env_runner.pi0_libero_runner import Pi0LiberoRunner
    from ript.envs.libero_env import LiberoEnv, LiberoEnvFn

    size = max(int(s) for s in args.sizes.split(","))
    runner = Pi0LiberoRunner(args.benchmark, task_names_to_use=[args.task], num_parallel_envs=1)
    bddl = runner.benchmark.get_task_bddl_file_path(runner._task_id(args.task))
    env = LiberoEnv(LiberoEnvFn(bddl, size, size, seed=0))
    try:
        env.reset(render=False)
        env.set_init_state(runner._init_states(args.task)[0], render=False)
        actions = 0.3 * np.random.default_rng(0).standard_normal((args.profile_steps, 7))
        t0 = time.perf_counter()
        for action in actions[:10]:
            env.step(action, render=True)
        render_ms = 1e3 * (time.perf_counter() - t0) / 10
        profiler = cProfile.Profile()
        t0 = time.perf_counter()
        profiler.enable()
        for action in actions:
            env.step(action, render=False)
        profiler.disable()
        physics_ms = 1e3 * (time.perf_counter() - t0) / len(actions)
    finally:
        env.close()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(12)
    return (f"One in-process env at {size} px: {render_ms:.1f} ms per step rendering both cameras, "
            f"{physics_ms:.1f} ms per step without (cProfile on, {len(actions)} steps). "
            f"Top functions by own time:\n\n```\n" + _trim_profile(text.getvalue()) + "```\n")


def _trim_profile(text: str) -> str:
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if "ncalls" in line), 0)
    return "\n".join(line.replace(str(Path(sys.prefix)), "<prefix>") for line in lines[start:] if line.strip()) + "\n"


# ------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(1)
    from ript.algos.policies.pi0_oft_policy import PI0_OFT_Policy

    cores = os.cpu_count() or 1
    parts = args.parts.split(",")
    report: dict[str, Any] = {"cores": cores, "args": vars(args), "torch": torch.__version__}
    sections = []
    if "throughput" in parts:
        report["throughput"] = throughput(args, PI0_OFT_Policy._load_norm_stats("builtin:libero"), cores)
        sections.append(throughput_markdown(report["throughput"], args, cores))
    if "round" in parts:
        report["round"] = ript_round(args)
        sections.append(round_markdown(report["round"]))
    if "scheduler" in parts:
        report["scheduler"] = scheduler_round(args)
        sections.append(scheduler_markdown(report["scheduler"], args, cores))
    if "profile" in parts:
        report["profile"] = profile(args)
        sections.append(report["profile"])
    text = "\n".join(sections)
    if args.out_json:
        Path(args.out_json).write_text(json.dumps(report, indent=1, default=str))
    if args.out_md:
        Path(args.out_md).write_text(text)
    print(text)
    return report


if __name__ == "__main__":
    main()
