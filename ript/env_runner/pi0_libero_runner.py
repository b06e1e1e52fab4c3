"""LIBERO backend of :class:`ChunkedRunner`: PI0 rollouts on a LIBERO suite.

The environments themselves -- construction, cameras rendered on demand, reset options, worker
processes -- live one floor down in :mod:`ript.envs.libero_env`, the only module that imports
``libero``; this module picks tasks, init states and episode lengths and hands the envs to the
chunked rollout loop.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Any, Iterator, Sequence

import numpy as np

from ript.env_runner.chunked_runner import ChunkedRunner, Scheduler, EnvFault, RecoverableVectorEnv
from ript.env_runner.pi0_runner_utils import ActionMode
from ript.envs.libero_env import LiberoEnvFn, LiberoVectorEnv, load_benchmark
from ript.utils.rendering import worker_thread_env

logger = logging.getLogger(__name__)

# Max policy steps per episode (wait steps come on top). Figures used by RIPT-VLA and openpi's
# LIBERO evaluation: each is a little above the longest human demo of the suite.
SUITE_MAX_STEPS: dict[str, int] = {
    "libero_spatial": 220,  # longest training demo: 193 steps
    "libero_object": 280,  # longest training demo: 254 steps
    "libero_goal": 300,  # longest training demo: 270 steps
    "libero_10": 520,  # longest training demo: 505 steps
    "libero_90": 400,  # longest training demo: 373 steps
}

class Pi0LiberoRunner(ChunkedRunner):
    """PI0 rollouts on a LIBERO suite ; see :class:`ChunkedRunner` for the loop.

    Args (beyond :class:`ChunkedRunner`'s):
        benchmark_name: a LIBERO suite (``libero_goal``, ``libero_spatial``, ...).
        task_names_to_use: subset of the suite's task names; None = all.
        max_episode_length: policy steps per episode; None = the suite's default
            (:data:`SUITE_MAX_STEPS`). Wait steps come on top.
        camera_height, camera_width: render size of both cameras (256: what openpi rendered and
            evaluated at; the observation conversion resizes to the policy's input size).
        seed: worker ``i`` is seeded ``seed + i``.
        use_subprocess: None = worker processes iff ``num_parallel_envs > 1``.
        limit_worker_threads: start workers with one render/BLAS thread each (about 3x faster on 2 cores).
        step_timeout_s: a worker that does not answer a request in time counts as crashed.
        hard_reset: robosuite's hard reset (model rebuilt on every reset), LIBERO's default.
        render_on_demand: render the cameras only on steps whose observation is read (chunk
            starts, the last settle step, video); images there are identical (:class:`CameraSwitch`).
        reuse_envs: keep each task's worker processes alive across rounds and evaluations
            (:meth:`close` ends them); False builds and closes workers per evaluation.
        max_pooled_tasks: at most this many tasks' workers alive at once (~1.6 GB per worker);
            None = every task this rank uses.
        scheduler: ``continuous`` (each simulator takes the next queued episode as soon as its
            own ends; :mod:`ript.env_runner.rollout_scheduler`) or ``lockstep`` (the earlier loop).
        **unused: extra config keys (RIPT runner configs carry a few); logged and ignored.
    """

    def __init__(self, benchmark_name: str = "libero_goal", task_names_to_use: Sequence[str] | None = None,
                 num_parallel_envs: int | None = 1, max_episode_length: int | None = None,
                 num_steps_wait: int = 10, open_loop: int = 50, action_mode: ActionMode = "relative",
                 rotate_images_180: bool = True, camera_height: int = 256, camera_width: int = 256,
                 replan_steps: int | None = None, max_env_retries: int = 2, seed: int = 0,
                 n_action_steps: int | None = 50, allow_open_loop_mismatch: bool = False,
                 use_subprocess: bool | None = None, limit_worker_threads: bool = True,
                 step_timeout_s: float | None = 120.0, hard_reset: bool = True,
                 video_dir: str | None = None, render_on_demand: bool = True,
                 reuse_envs: bool = True, max_pooled_tasks: int | None = None,
                 scheduler: Scheduler = "continuous", **unused: Any):
        if unused:
            # RIPT's runner configs carry extra keys (e.g. rank, world_size); accept, but say so.
            logger.info("Pi0LiberoRunner: ignoring config keys %s", sorted(unused))
        super().__init__(num_parallel_envs=num_parallel_envs, num_steps_wait=num_steps_wait,
                         open_loop=open_loop, action_mode=action_mode,
                         rotate_images_180=rotate_images_180, replan_steps=replan_steps,
                         max_env_retries=max_env_retries, n_action_steps=n_action_steps,
                         allow_open_loop_mismatch=allow_open_loop_mismatch, video_dir=video_dir,
                         render_on_demand=render_on_demand, reuse_envs=reuse_envs,
                         max_pooled_tasks=max_pooled_tasks, scheduler=scheduler)
        if camera_height < 1 or camera_width < 1:
            raise ValueError(f"camera_height/camera_width ({camera_height}x{camera_width}) must be positive")
        if max_episode_length is not None and max_episode_length < 1:
            raise ValueError(f"max_episode_length ({max_episode_length}) must be >= 1 or None "
                             f"(suite default {SUITE_MAX_STEPS})")
        self.benchmark_name = benchmark_name
        self.benchmark = self._load_benchmark(benchmark_name)
        all_tasks = list(self.benchmark.get_task_names())
        self._all_task_names = all_tasks
        self.task_names = self._validate_tasks(task_names_to_use, all_tasks)
        self.max_episode_length = max_episode_length or self._suite_default_max_steps(benchmark_name)
        self.camera_height, self.camera_width = camera_height, camera_width
        self.seed = seed
        # One env in-process avoids IPC and a second simulator copy; crashes then hit the caller,
        # so workers are used whenever there are several envs or the caller asks for isolation.
        self.use_subprocess = self.num_parallel_envs > 1 if use_subprocess is None else use_subprocess
        self.limit_worker_threads = limit_worker_threads
        self.step_timeout_s = step_timeout_s
        # robosuite's hard reset rebuilds the MuJoCo model on every reset (LIBERO's default, what
        # RIPT/openpi ran): 2-10 s per reset on 2 loaded cores. A soft reset takes ~10 ms and
        # (LiberoEnv: gripper command and solver warm start reset) rolls out bit for bit like a hard
        # one on most scenes, but not on all: where LIBERO's reset places fixtures at random (not
        # part of the init state), a hard reset redraws them every episode and a soft one keeps
        # them -- libero_spatial's wooden cabinet and stove, the microwave of KITCHEN_SCENE6/7
        # (libero_10, libero_90). So hard stays the default (docs/benchmarks.md, "Soft reset").
        self.hard_reset = hard_reset

    # ------------------------------------------------------------------ construction helpers
    @staticmethod
    def _load_benchmark(benchmark_name: str) -> Any:
        return load_benchmark(benchmark_name)

    def _validate_tasks(self, requested: Sequence[str] | None, all_tasks: list[str]) -> list[str]:
        if requested is None:
            return list(all_tasks)
        if isinstance(requested, str):
            requested = [requested]
        unknown = [t for t in requested if t not in all_tasks]
        if unknown or not requested:
            raise ValueError(f"task_names_to_use {list(requested)} has unknown/no tasks {unknown} for "
                             f"benchmark {self.benchmark_name!r}; valid task names: {all_tasks}")
        return list(requested)

    @staticmethod
    def _suite_default_max_steps(benchmark_name: str) -> int:
        # LIBERO-PRO variants ("libero_goal_with_mug") inherit their base suite's horizon.
        for suite in sorted(SUITE_MAX_STEPS, key=len, reverse=True):
            if benchmark_name.lower().startswith(suite):
                return SUITE_MAX_STEPS[suite]
        raise ValueError(f"no default max_episode_length for benchmark {benchmark_name!r}; "
                         f"pass max_episode_length (suite defaults: {SUITE_MAX_STEPS})")

    # ------------------------------------------------------------------ ChunkedRunner hooks
    def _task_names(self) -> list[str]:
        return self.task_names

    def _task_id(self, task_name: str) -> int:
        # RIPT keys tasks by their index in the benchmark, not in the subset being used.
        return self._all_task_names.index(task_name)

    def _task_description(self, task_name: str) -> str:
        return self.benchmark.get_task(self._task_id(task_name)).language

    def _init_states(self, task_name: str) -> np.ndarray:
        """The benchmark's shipped initial states for the task, float (num_states, state_dim)."""
        return np.asarray(self.benchmark.get_task_init_states(self._task_id(task_name)))

    def _max_episode_length(self, task_name: str) -> int:
        return self.max_episode_length

    @contextlib.contextmanager
    def _evaluation_scope(self, env: RecoverableVectorEnv) -> Iterator[None]:
        """Evaluate from the RNG a freshly built worker has, then hand the training rollouts their
        own RNG back. LIBERO's reset places some fixtures at random (numpy's global RNG; the
        shipped init states do not cover them), so a pooled worker that already ran training
        episodes would otherwise show other scenes than the fresh workers evaluation used to get."""
        training_rng = env.call("swap_rng", [self.seed + i for i in range(env.env_num)])
        try:
            yield
        finally:
            try:
                env.call("swap_rng", training_rng)
            except EnvFault as exc:  # the workers were lost; rebuilt ones start from their seed
                logger.warning("could not give the workers their training RNG back: %s", exc)

    def _make_vector_env(self, task_name: str, n: int) -> LiberoVectorEnv:
        if task_name not in self._all_task_names:
            raise ValueError(f"unknown task {task_name!r} for {self.benchmark_name!r}; valid: {self._all_task_names}")
        bddl = self.benchmark.get_task_bddl_file_path(self._task_id(task_name))
        # Thread limits only go to subprocess workers: in-process they would change the caller's env.
        thread_env = worker_thread_env() if (self.limit_worker_threads and self.use_subprocess) else None
        fns = [LiberoEnvFn(bddl, self.camera_height, self.camera_width, self.seed + i, self.hard_reset)
               for i in range(n)]
        return LiberoVectorEnv(fns, use_subprocess=self.use_subprocess, thread_env=thread_env,
                               timeout_s=self.step_timeout_s)


__all__ = ["Pi0LiberoRunner", "SUITE_MAX_STEPS"]
