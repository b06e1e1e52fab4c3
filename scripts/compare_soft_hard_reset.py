"""Soft vs hard LIBERO reset, per task: do the rollouts from a shipped init state agree?

For each checked task: the same 2 shipped init states and random actions are rolled out once
with hard resets and once with soft resets (one in-process env each, cameras off); prints the max
|difference| of the simulator state (plus reward and done) over all steps (0 = identical). The
first task of every scene is checked in libero_10 / libero_90, three tasks in the other suites.
Results of a run: docs/benchmarks.md ("Soft reset vs hard reset").

    nice python scripts/compare_soft_hard_reset.py [--suites libero_spatial,libero_10] [--out scan.json]
"""
from __future__ import annotations

import argparse
import json
import re
import time

import numpy as np

from ript.envs.libero_env import LiberoEnv, LiberoEnvFn, load_benchmark

ALL_SUITES = "libero_spatial,libero_object,libero_goal,libero_10,libero_90"


def tasks_to_check(suite: str, names: list[str]) -> list[int]:
    if suite in ("libero_spatial", "libero_object", "libero_goal"):  # one scene layout per suite
        return [0, 4, 9]
    first_of_scene: dict[str, int] = {}
    for i, name in enumerate(names):  # "KITCHEN_SCENE6_put_..." -> KITCHEN_SCENE6
        match = re.match(r"([A-Z_]+SCENE\d+)", name)
        first_of_scene.setdefault(match.group(1) if match else name, i)
    return list(first_of_scene.values())


def rollout(bddl: str, hard_reset: bool, states: np.ndarray, actions: np.ndarray) -> np.ndarray:
    env = LiberoEnv(LiberoEnvFn(bddl, 64, 64, seed=0, hard_reset=hard_reset))
    log = []
    try:
        for state, episode_actions in zip(states, actions):
            env.reset(render=False)
            env.set_init_state(state, render=False)
            for action in episode_actions:
                _, reward, done, _ = env.step(action, render=False)
                log.append(np.r_[env.env.get_sim_state(), reward, done])
    finally:
        env.close()
    return np.asarray(log)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suites", default=ALL_SUITES)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", default=None, help="JSON file for {suite/task: max difference}")
    args = parser.parse_args()
    results: dict[str, float] = {}
    for suite in args.suites.split(","):
        bench = load_benchmark(suite)
        names = list(bench.get_task_names())
        for task_id in tasks_to_check(suite, names):
            started = time.perf_counter()
            bddl = bench.get_task_bddl_file_path(task_id)
            states = np.asarray(bench.get_task_init_states(task_id))[:2]
            actions = np.random.default_rng(task_id).uniform(-1.0, 1.0, (len(states), args.steps, 7))
            actions[..., 6] = np.sign(actions[..., 6])
            hard, soft = (rollout(bddl, hard_reset, states, actions) for hard_reset in (True, False))
            results[f"{suite}/{names[task_id]}"] = difference = float(np.abs(hard - soft).max())
            print(f"{suite} {task_id:3d} {names[task_id][:60]:60s} max diff {difference:.3g} "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)
            if args.out:
                with open(args.out, "w") as f:
                    json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
