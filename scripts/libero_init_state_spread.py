"""How far apart a LIBERO task's shipped init states are: each object's position and yaw range over them.

RL trains on some of a task's 50 shipped init states and is scored on the others; this says how
different those scenes are. Example (the table in docs/libero_facts.md)::

    PYTHONPATH=$PWD python scripts/libero_init_state_spread.py --task 4 --out spread.json
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from ript.envs.libero_object_expert import make_libero_object_env

logger = logging.getLogger("libero_init_state_spread")


def object_poses(env, init_states: np.ndarray) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(names, (S, O, 3) world positions in metres, (S, O) yaw in degrees) right after each
    ``set_init_state``, before any settle step: the task's objects, then the robot's end effector
    ("robot0_eef", whose start pose varies with robosuite's joint initialisation noise)."""
    problem = env.env
    names = list(problem.objects_dict) + ["robot0_eef"]
    positions, yaws = [], []
    for state in init_states:
        env.set_init_state(state)
        eef_body = problem.sim.model.site_bodyid[problem.robots[0].eef_site_id]
        ids = [problem.obj_body_id[name] for name in names[:-1]] + [eef_body]
        positions.append(problem.sim.data.body_xpos[ids].copy())
        w, x, y, z = problem.sim.data.body_xquat[ids].T  # MuJoCo quaternions are (w, x, y, z)
        yaws.append(np.degrees(np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))))
    return names, np.asarray(positions), np.asarray(yaws)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", type=int, default=4, help="task id in the benchmark (LIBERO-Object 4: ketchup)")
    parser.add_argument("--benchmark", default="libero_object")
    parser.add_argument("--out", type=Path, default=None, help="JSON file with each object's range")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    env, bench = make_libero_object_env(args.task, benchmark_name=args.benchmark)
    init_states = np.asarray(bench.get_task_init_states(args.task))
    names, positions, yaws = object_poses(env, init_states)
    report = {"benchmark": args.benchmark, "task": bench.get_task(args.task).name, "num_states": len(init_states),
              "objects": {}}
    for j, name in enumerate(names):
        low, high = positions[:, j].min(axis=0), positions[:, j].max(axis=0)
        report["objects"][name] = {"min_xyz_m": low.round(4).tolist(), "max_xyz_m": high.round(4).tolist(),
                                   "max_xy_spread_cm": round(float(np.max(high[:2] - low[:2])) * 100, 2),
                                   "yaw_range_deg": round(float(np.ptp(yaws[:, j])), 2)}
        logger.info("%-20s x %+.3f..%+.3f  y %+.3f..%+.3f  spread %.1f cm, yaw range %.1f deg", name, low[0],
                    high[0], low[1], high[1], report["objects"][name]["max_xy_spread_cm"],
                    report["objects"][name]["yaw_range_deg"])
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))
    print(json.dumps({n: [o["max_xy_spread_cm"], o["yaw_range_deg"]] for n, o in report["objects"].items()}))


if __name__ == "__main__":
    main()
