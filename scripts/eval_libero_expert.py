"""Success rate of the scripted LIBERO-Object expert over the shipped init states.

Cameras off (state-only, ~10 ms per step), no robosuite hard reset, settle steps and the step
budget of the runner (10 + 280). Example (the table in docs/learning_libero.md)::

    PYTHONPATH=$PWD nice python scripts/eval_libero_expert.py --out docs/libero_expert_success.json
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ript.envs.libero_object_expert import ExpertConfig, LiberoObjectExpert, make_libero_object_env, run_expert_episode

logger = logging.getLogger("eval_libero_expert")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, nargs="*", default=None, help="task ids (default: all 10)")
    parser.add_argument("--num-init-states", type=int, default=50, help="first N shipped init states per task")
    parser.add_argument("--init-state-offset", type=int, default=0)
    parser.add_argument("--action-noise", type=float, default=0.0)
    parser.add_argument("--mistake-prob", type=float, default=0.0)
    parser.add_argument("--carry-clearance", type=float, default=0.05)
    parser.add_argument("--max-steps", type=int, default=280)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=str, default=None, help="JSON file for per-task results")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    config = ExpertConfig(action_noise=args.action_noise, mistake_prob=args.mistake_prob,
                          carry_clearance=args.carry_clearance)
    _, bench = make_libero_object_env(0) if args.tasks is None else (None, None)
    task_ids = args.tasks if args.tasks is not None else list(range(bench.get_num_tasks()))
    results: dict = {"config": vars(args), "tasks": {}}
    start = time.time()
    for task_id in task_ids:
        env, bench = make_libero_object_env(task_id, seed=args.seed)
        init_states = bench.get_task_init_states(task_id)
        ids = list(range(args.init_state_offset, min(len(init_states), args.init_state_offset + args.num_init_states)))
        expert = LiberoObjectExpert(env, config, seed=args.seed * 1000 + task_id)
        name = bench.get_task_names()[task_id]
        per_state = []
        for i in tqdm(ids, desc=f"task {task_id}", leave=False):
            ep = run_expert_episode(env, expert, init_states[i], max_steps=args.max_steps)
            per_state.append({"init_state": i, "success": ep.success, "steps": ep.num_steps,
                              "final_phase": ep.final_phase, "mistake": ep.mistake})
        env.close()
        ok = [r for r in per_state if r["success"]]
        results["tasks"][name] = {
            "task_id": task_id, "episodes": len(per_state), "successes": len(ok),
            "success_rate": len(ok) / max(1, len(per_state)),
            "mean_steps_success": float(np.mean([r["steps"] for r in ok])) if ok else None,
            "failed_init_states": [r["init_state"] for r in per_state if not r["success"]],
            "failed_phases": [r["final_phase"] for r in per_state if not r["success"]],
            "per_state": per_state,
        }
        logger.info("task %d %s: %d/%d (%.0f%%), %.0f s so far", task_id, name, len(ok), len(per_state),
                    100 * len(ok) / max(1, len(per_state)), time.time() - start)
        if args.out:
            Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    print(f"\n{'task':<62} {'success':>10} {'steps':>6}")
    total_ok = total = 0
    for name, r in results["tasks"].items():
        total_ok, total = total_ok + r["successes"], total + r["episodes"]
        steps = f"{r['mean_steps_success']:.0f}" if r["mean_steps_success"] else "-"
        print(f"{r['task_id']:>2} {name:<59} {r['successes']:>3}/{r['episodes']:<3} {steps:>6}")
    print(f"{'all':<62} {total_ok:>3}/{total:<3} ({100 * total_ok / max(1, total):.1f}%), {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
