#!/usr/bin/env python
"""LIBERO rollout throughput on this machine's CPUs: env steps/s versus num_parallel_envs.

For each (policy, num_parallel_envs, limit_worker_threads) case, runs `rounds` batches of short
episodes through `Pi0LiberoRunner.run_policy_in_env` and splits the wall time into
  * env step   : `runner.timing["env_step_time_s"]`, the vectorised `env.step` calls of episode
                 steps (MuJoCo simulation + camera rendering in the workers, plus the pipe round trip);
  * policy     : wall time inside `policy.select_action` (observation -> action chunk);
  * other      : the rest (resets, `num_steps_wait` settle steps, observation conversion).
Env construction (worker start-up) is timed separately and excluded from steps/s.

Policies: "tiny" = PI0_OFT_Policy(preset="tiny", norm_stats_path="builtin:libero") on CPU;
"zero" = a stub returning zero (normalised) actions, i.e. pure simulator speed.

  python scripts/bench_rollout.py --out-json /tmp/rollout.json --out-md /tmp/rollout.md
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


class TimedPolicy:
    """Forwards to a policy and accumulates the wall time of `select_action`."""

    def __init__(self, policy: Any):
        self.policy, self.seconds, self.calls = policy, 0.0, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.policy, name)

    def select_action(self, observation: Any, cfg_scale: float = 1.0) -> Any:
        t0 = time.perf_counter()
        try:
            return self.policy.select_action(observation, cfg_scale=cfg_scale)
        finally:
            self.seconds += time.perf_counter() - t0
            self.calls += 1


class ZeroPolicy:
    """Zero normalised action chunks (k, n_action_steps, 7): measures the simulator alone."""

    def __init__(self, norm_stats: Any, n_action_steps: int = 50):
        self.norm_stats, self.n_action_steps = norm_stats, n_action_steps

    def select_action(self, observation: Any, cfg_scale: float = 1.0) -> np.ndarray:
        return np.zeros((len(observation["state"]), self.n_action_steps, 7), dtype=np.float32)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--benchmark", default="libero_goal")
    parser.add_argument("--task-index", type=int, default=0)
    parser.add_argument("--num-envs", default="1,2,4")
    parser.add_argument("--policies", default="tiny,zero")
    parser.add_argument("--limit-threads", default="on,off", help="limit_worker_threads values to try")
    parser.add_argument("--max-episode-length", type=int, default=50)
    parser.add_argument("--num-steps-wait", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2, help="batches of num_parallel_envs episodes per case")
    parser.add_argument("--policy-threads", type=int, default=1, help="torch threads of the main process")
    parser.add_argument("--out-json", default=None)
    parser.add_argument("--out-md", default=None)
    return parser.parse_args(argv)


def make_policy(kind: str, norm_stats: Any) -> Any:
    if kind == "zero":
        return ZeroPolicy(norm_stats)
    from ript.algos.policies.pi0_oft_policy import PI0_OFT_Policy

    policy = PI0_OFT_Policy(device_id="cpu", preset="tiny", norm_stats_path="builtin:libero")
    policy.eval()
    return policy


def run_case(args: argparse.Namespace, policy_kind: str, num_envs: int, limit: bool, policies: dict) -> dict:
    from ript.env_runner.pi0_libero_runner import Pi0LiberoRunner

    runner = Pi0LiberoRunner(benchmark_name=args.benchmark, num_parallel_envs=num_envs,
                             max_episode_length=args.max_episode_length, num_steps_wait=args.num_steps_wait,
                             limit_worker_threads=limit)
    task = runner._task_names()[args.task_index]
    init_states = runner._init_states(task)[: num_envs * args.rounds]
    policy = TimedPolicy(policies[policy_kind])
    t0 = time.perf_counter()
    env, _, _ = runner.create_env(task)
    create_s = time.perf_counter() - t0
    try:
        t0 = time.perf_counter()
        episodes = list(runner.run_policy_in_env(task, policy, init_states, created_env=env))
        total_s = time.perf_counter() - t0
    finally:
        env.close()
    steps = runner.timing["env_steps"]
    env_s = runner.timing["env_step_time_s"]
    return {
        "task": task, "episodes": len(episodes), "env_steps": steps, "env_create_s": create_s,
        "total_s": total_s, "env_steps_per_s": steps / total_s, "env_step_s": env_s,
        "policy_s": policy.seconds, "policy_calls": policy.calls,
        "other_s": total_s - env_s - policy.seconds,
        "env_step_ms_per_vector_step": 1e3 * env_s / max(1, runner.timing["vector_steps"]),
    }


def markdown(report: dict) -> str:
    lines = [f"Machine: {report['cpus']} CPUs visible ({report['note']}); LIBERO `{report['benchmark']}` task "
             f"{report['task_index']}, episodes capped at {report['max_episode_length']} steps, "
             f"{report['num_steps_wait']} settle steps, {report['rounds']} batches per case.", "",
             "| Policy | Envs | Worker thread limit | Env steps/s | Env step s | Policy s | Other s | Total s | "
             "ms per vector step | Env start s | Note |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["cases"]:
        f = lambda k, spec=".1f": "—" if r.get(k) is None else format(r[k], spec)
        lines.append(f"| {r['policy']} | {r['num_envs']} | {r['limit_worker_threads']} | {f('env_steps_per_s')} | "
                     f"{f('env_step_s')} | {f('policy_s')} | {f('other_s')} | {f('total_s')} | "
                     f"{f('env_step_ms_per_vector_step')} | {f('env_create_s')} | {r.get('error', '')[:60]} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.policy_threads)
    from ript.env_runner.pi0_libero_runner import Pi0LiberoRunner  # noqa: F401 -- fail early without libero
    from ript.algos.policies.pi0_oft_policy import PI0_OFT_Policy

    norm_stats = PI0_OFT_Policy._load_norm_stats("builtin:libero")
    kinds = args.policies.split(",")
    policies = {kind: make_policy(kind, norm_stats) for kind in kinds}
    cases = []
    for kind in kinds:
        for limit in [v == "on" for v in args.limit_threads.split(",")]:
            for num_envs in [int(n) for n in args.num_envs.split(",")]:
                record: dict[str, Any] = {"policy": kind, "num_envs": num_envs, "limit_worker_threads": limit}
                try:
                    record.update(run_case(args, kind, num_envs, limit, policies))
                except Exception as error:  # noqa: BLE001 -- recorded, the run goes on
                    record["error"] = f"{type(error).__name__}: {str(error)[:300]}"
                    record["traceback_tail"] = traceback.format_exc()[-1200:]
                print(json.dumps({k: v for k, v in record.items() if k != "traceback_tail"}), flush=True)
                cases.append(record)
    report = {"benchmark": args.benchmark, "task_index": args.task_index, "cpus": os.cpu_count(),
              "note": "shared, noisy machine", "max_episode_length": args.max_episode_length,
              "num_steps_wait": args.num_steps_wait, "rounds": args.rounds, "torch": torch.__version__,
              "cases": cases}
    text = markdown(report)
    if args.out_json:
        Path(args.out_json).write_text(json.dumps(report, indent=1, default=str))
    if args.out_md:
        Path(args.out_md).write_text(text)
    print(text)
    return report


if __name__ == "__main__":
    main()
