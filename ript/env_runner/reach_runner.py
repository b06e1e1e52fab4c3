"""ReachRunner: the fast in-tree 2-D reach environment behind the same runner interface as LIBERO.

Everything above the backend (open-loop chunks, episode records, fault recovery, evaluation) is
the shared :class:`ChunkedRunner`, so a learning curve here exercises the exact code path that
LIBERO training uses, in minutes of CPU time instead of GPU-days.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from ript.env_runner.chunked_runner import ChunkedRunner, Scheduler
from ript.env_runner.pi0_runner_utils import ActionMode
from ript.envs.reach_env import ReachBenchmark, ReachEnvConfig, ReachVectorEnv


class ReachRunner(ChunkedRunner):
    """PI0 rollouts on :class:`ReachEnv` tasks (one task per goal colour)."""

    def __init__(self, task_names_to_use: Sequence[str] | None = None, num_parallel_envs: int = 8,
                 max_episode_length: int | None = None, num_steps_wait: int = 0, open_loop: int = 50,
                 action_mode: ActionMode = "absolute", rotate_images_180: bool = True,
                 replan_steps: int | None = None, max_env_retries: int = 2, seed: int = 0,
                 n_action_steps: int | None = 50, allow_open_loop_mismatch: bool = False,
                 env_config: Mapping[str, Any] | ReachEnvConfig | None = None,
                 video_dir: str | None = None, scheduler: Scheduler = "continuous",
                 **unused: Any) -> None:
        # Reach actions are per-step moves, so "absolute" (executed as predicted) is the natural
        # convention; "relative" would add the chunk-start position to every move.
        super().__init__(num_parallel_envs=num_parallel_envs, num_steps_wait=num_steps_wait,
                         open_loop=open_loop, action_mode=action_mode,
                         rotate_images_180=rotate_images_180, replan_steps=replan_steps,
                         max_env_retries=max_env_retries, n_action_steps=n_action_steps,
                         allow_open_loop_mismatch=allow_open_loop_mismatch, video_dir=video_dir,
                         scheduler=scheduler)
        if not isinstance(env_config, ReachEnvConfig):
            env_config = ReachEnvConfig(**dict(env_config or {}))
        self.env_config = env_config
        self.benchmark = ReachBenchmark(env_config)
        all_tasks = self.benchmark.get_task_names()
        if isinstance(task_names_to_use, str):
            task_names_to_use = [task_names_to_use]
        unknown = [t for t in (task_names_to_use or []) if t not in all_tasks]
        if unknown or (task_names_to_use is not None and not task_names_to_use):
            raise ValueError(f"task_names_to_use={task_names_to_use}: unknown reach tasks {unknown}; "
                             f"valid task names: {all_tasks}")
        self.task_names = list(task_names_to_use) if task_names_to_use else list(all_tasks)
        self.max_episode_length = max_episode_length or env_config.max_episode_length
        self.seed = seed

    def _task_names(self) -> list[str]:
        return self.task_names

    def _task_id(self, task_name: str) -> int:
        return self.benchmark.get_task_id(task_name)

    def _task_description(self, task_name: str) -> str:
        return self.benchmark.get_task(task_name).language

    def _init_states(self, task_name: str) -> np.ndarray:
        return self.benchmark.get_task_init_states(task_name)

    def _max_episode_length(self, task_name: str) -> int:
        return self.max_episode_length

    def _make_vector_env(self, task_name: str, n: int) -> ReachVectorEnv:
        return ReachVectorEnv(n, task=task_name, config=self.env_config, seed=self.seed)
