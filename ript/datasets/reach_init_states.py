"""Init-state dataset of the fast reach environment (the benchmark's fixed 50 states per task)."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from ript.datasets.init_state_dataset import InitStateDataset
from ript.envs.reach_env import ReachBenchmark, ReachEnvConfig


class ReachInitStateDataset(InitStateDataset):
    """``{task_id, task_name, init_state: {states}}`` items over the reach tasks."""

    def __init__(self, task_names_to_use: Sequence[str] | None = None,
                 env_config: Mapping[str, Any] | ReachEnvConfig | None = None) -> None:
        if not isinstance(env_config, ReachEnvConfig):
            env_config = ReachEnvConfig(**dict(env_config or {}))
        benchmark = ReachBenchmark(env_config)
        all_tasks = benchmark.get_task_names()
        if isinstance(task_names_to_use, str):
            task_names_to_use = [task_names_to_use]
        names = list(task_names_to_use) if task_names_to_use else all_tasks
        unknown = [t for t in names if t not in all_tasks]
        if unknown:
            raise ValueError(f"task_names_to_use={list(names)}: unknown reach tasks {unknown}; "
                             f"valid task names: {all_tasks}")
        super().__init__([(benchmark.get_task_id(t), t, benchmark.get_task_init_states(t)) for t in names])
