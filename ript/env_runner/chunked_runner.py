"""Backend-independent open-loop chunk execution over vectorised environments.

:class:`ChunkedRunner` owns the rollout loop shared by every backend (LIBERO, the in-tree reach
env): settle-down wait steps, one ``policy.select_action`` per chunk for all still-running envs,
open-loop execution, per-env :class:`~ript.types.Episode` records, evaluation, and recovery from
crashed simulator workers. Subclasses only say how to build envs and where tasks come from.

Vectorised env protocol (LIBERO's ``SubprocVectorEnv`` already has it; fakes in tests mimic it):
``reset(id=None) -> obs``, ``set_init_state(states, id=None) -> obs``,
``step(actions (k, 7), id=None) -> (obs, rewards, dones, infos)``, ``close()``, where ``obs`` is
indexable per env and holds LIBERO-style observation dicts and ``id`` lists the env indices
addressed (finished envs are simply not stepped any more). An env whose class sets
``renders_on_demand = True`` also takes ``render=False`` on those calls and then skips its camera
rendering; the runner asks for images only on the steps whose observation it reads.
"""
from __future__ import annotations

import collections
import contextlib
import logging
import os
import time
from typing import Any, Callable, Iterator, Literal, Mapping, Sequence

import numpy as np

from ript.env_runner.pi0_runner_utils import (
    ACTION_DIM, ACTION_MODES, CAMERA_KEY_TO_SLOT, NOOP_ACTION, ActionMode, EnvFault, NormStats,
    check_norm_stats_against_chunk, env_obs_to_pi0_observation, model_chunk_to_env_actions,
    to_numpy,
)
from ript.env_runner.rollout_scheduler import EpisodeRecord, EpisodeSpec, RolloutScheduler
from ript.types import ChunkObservation, Episode

logger = logging.getLogger(__name__)

def default_num_simulators(cores: int | None = None) -> int:
    """Simulators to run when ``num_parallel_envs`` is not set: every core on a small machine, all
    but two (the trainer and the policy's host work) on a larger one, at most 16."""
    cores = cores or os.cpu_count() or 1
    return max(1, cores if cores <= 4 else min(16, cores - 2))


Scheduler = Literal["continuous", "lockstep"]
SCHEDULERS = ("continuous", "lockstep")


class RecoverableVectorEnv:
    """A vectorised env that can be rebuilt in place after a worker dies.

    The rollout generator keeps the object returned by ``create_env`` across calls, so a crash
    must not leave it holding a dead env: the inner env is replaced, the handle stays valid.
    Every failure of the inner env surfaces as :class:`EnvFault`, so the runner can tell
    simulator faults from bugs in the policy (which must propagate).
    """

    def __init__(self, factory: Callable[[], Any], env_num: int, inner: Any | None = None):
        self._factory = factory
        self.env_num = env_num
        self.inner = inner
        self.num_recreated = 0

    def _env(self) -> Any:
        if self.inner is None:
            try:
                self.inner = self._factory()
            except Exception as exc:  # noqa: BLE001 -- a worker failing to start is a fault too
                raise EnvFault(f"creating the vectorised env failed: {exc!r}") from exc
        return self.inner

    def _call(self, method: str, *args: Any, render: bool = True, **kwargs: Any) -> Any:
        env = self._env()
        if not render and getattr(env, "renders_on_demand", False):
            kwargs["render"] = False  # other envs (fakes, reach, LIBERO's own) always render
        try:
            return getattr(env, method)(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 -- EOFError, BrokenPipeError, MuJoCo errors...
            raise EnvFault(f"vectorised env {method}() failed: {exc!r}") from exc

    def reset(self, id: Sequence[int] | None = None, render: bool = True,  # noqa: A002 -- LIBERO's name
              seeds: Sequence[int] | None = None) -> Any:
        """``seeds``: per addressed env, the seed of the randomness its reset draws from; only
        envs that declare ``seeds_on_reset`` get it (the others' resets take no seed)."""
        if seeds is not None and getattr(self._env(), "seeds_on_reset", False):
            return self._call("reset", id=id, render=render, seeds=list(seeds))
        return self._call("reset", id=id, render=render)

    def set_init_state(self, init_states: Any, id: Sequence[int] | None = None,  # noqa: A002
                       render: bool = True) -> Any:
        return self._call("set_init_state", init_states, id=id, render=render)

    def step(self, actions: np.ndarray, id: Sequence[int] | None = None,  # noqa: A002
             render: bool = True) -> tuple:
        return self._call("step", actions, id=id, render=render)

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Any other method of the inner env, with the same fault handling."""
        return self._call(method, *args, **kwargs)

    # ---- one request per worker (envs with worker processes; see LiberoVectorEnv) ----
    @property
    def supports_async(self) -> bool:
        return bool(getattr(self._env(), "supports_async", False))

    def send(self, worker: int, cmd: str, data: Any = None, render: bool = True) -> None:
        self._call("send", worker, cmd, data, render=render)

    def connection(self, worker: int) -> Any:
        return self._env().connection(worker)

    def receive(self, worker: int, cmd: str) -> Any:
        return self._call("receive", worker, cmd)

    def restart_worker(self, worker: int) -> None:
        """Replace one dead or hung worker; the others keep their episodes."""
        self.num_recreated += 1
        self._call("restart_worker", worker)

    def busy_seconds(self) -> list[float] | None:
        """Seconds each worker spent serving requests, if the inner env counts them."""
        busy = getattr(self.inner, "busy_s", None)
        return None if busy is None else list(busy)

    def worker_pids(self) -> list[int]:
        """The inner env's worker process ids ([] when it has none or is not built)."""
        pids = getattr(self.inner, "worker_pids", None)
        return list(pids()) if callable(pids) else []

    def discard(self) -> None:
        """Close the inner env as well as a broken one allows; the next call builds a new one."""
        env, self.inner = self.inner, None
        if env is None:
            return
        self.num_recreated += 1
        try:
            env.close()
        except Exception as exc:  # noqa: BLE001 -- a dead worker makes close() fail; kill instead
            logger.debug("closing a faulted env failed (%r); terminating its workers", exc)
        kill = getattr(env, "kill", None)
        if callable(kill):
            kill()

    def close(self) -> None:
        env, self.inner = self.inner, None
        if env is not None:
            env.close()

    def __len__(self) -> int:
        return self.env_num


def save_episode_video(frames: Sequence[np.ndarray], path_stem: str, fps: int = 20) -> str:
    """Write frames as ``<stem>.mp4`` (imageio) or, without imageio, ``<stem>.npz``; return the path."""
    os.makedirs(os.path.dirname(path_stem) or ".", exist_ok=True)
    try:
        import imageio  # optional: videos are a convenience, not a requirement
    except ImportError:
        path = path_stem + ".npz"
        np.savez_compressed(path, frames=np.stack(frames))
        return path
    path = path_stem + ".mp4"
    imageio.mimsave(path, list(frames), fps=fps)
    return path


class ChunkedRunner:
    """Open-loop chunked rollouts over a vectorised env; subclasses supply the backend.

    Training protocol: a chunk of ``open_loop`` (= the model's ``n_action_steps``, 50) actions is
    executed open loop, so training windows cut at the same boundaries match what was executed.
    Evaluation may instead replan every ``replan_steps`` actions (openpi's published LIBERO
    protocol executes 5 actions of each 50-step chunk, then replans).

    ``render_on_demand``: ask the env for camera images only on steps whose observation is read
    (the last settle step, the step before each chunk/replan start, steps recorded to video);
    envs that cannot skip rendering ignore it. ``reuse_envs``: keep each task's simulator workers
    alive (a pool keyed by task) across rollout rounds and evaluations, rebuilt in place after a
    fault; :meth:`close` ends them. Without it, evaluation builds and closes an env per task.
    ``max_pooled_tasks`` bounds how many tasks' workers are alive at once (a LIBERO worker holds
    ~1.6 GB): using another task closes the least recently used one's workers, which are rebuilt
    when that task comes back. None keeps every task's workers.

    ``num_parallel_envs``: simulators per task (None: :func:`default_num_simulators`, from the
    machine's cores); with the continuous scheduler it may exceed K.
    ``batch_invariant_inference``: the continuous scheduler samples each episode's chunk in a call
    of its own, so rounds are bit for bit the same run to run (``training.deterministic``); by
    default chunks that fall due together share a call, equal up to floating-point batch effects.
    ``scheduler``: ``continuous`` (default) runs episodes through a :class:`RolloutScheduler`, which
    hands each simulator the next queued episode as soon as its own ends and samples chunks for
    exactly the envs whose chunk starts; ``lockstep`` is the earlier loop: batches of
    ``num_parallel_envs`` episodes, each batch until its slowest episode ends (kept for comparison,
    ``scripts/bench_rollout.py``).
    """

    def __init__(self, *, num_parallel_envs: int | None = 1, num_steps_wait: int = 10, open_loop: int = 50,
                 action_mode: ActionMode = "relative", rotate_images_180: bool = True,
                 replan_steps: int | None = None, max_env_retries: int = 2,
                 n_action_steps: int | None = 50, allow_open_loop_mismatch: bool = False,
                 video_dir: str | None = None, norm_stats_check_threshold: float = 0.2,
                 render_on_demand: bool = True, reuse_envs: bool = True,
                 max_pooled_tasks: int | None = None, scheduler: Scheduler = "continuous",
                 batch_invariant_inference: bool = False):
        problems = []
        if num_parallel_envs is None:
            num_parallel_envs = default_num_simulators()
        if scheduler not in SCHEDULERS:
            problems.append(f"scheduler ({scheduler!r}) must be one of {list(SCHEDULERS)}")
        if num_parallel_envs < 1:
            problems.append(f"num_parallel_envs ({num_parallel_envs}) must be >= 1")
        if num_steps_wait < 0:
            problems.append(f"num_steps_wait ({num_steps_wait}) must be >= 0")
        if open_loop < 1:
            problems.append(f"open_loop ({open_loop}) must be >= 1")
        if action_mode not in ACTION_MODES:
            problems.append(f"action_mode ({action_mode!r}) must be one of {list(ACTION_MODES)}")
        if replan_steps is not None and not 1 <= replan_steps <= open_loop:
            problems.append(f"replan_steps ({replan_steps}) must be in [1, open_loop={open_loop}] "
                            f"or None (replan every open_loop steps)")
        if max_pooled_tasks is not None and max_pooled_tasks < 1:
            problems.append(f"max_pooled_tasks ({max_pooled_tasks}) must be >= 1 or None (keep all)")
        if max_env_retries < 0:
            problems.append(f"max_env_retries ({max_env_retries}) must be >= 0")
        if n_action_steps is not None and open_loop != n_action_steps and not allow_open_loop_mismatch:
            problems.append(
                f"open_loop ({open_loop}) != the policy's n_action_steps ({n_action_steps}): the "
                f"training windows would not match what was executed; set them equal or pass "
                f"allow_open_loop_mismatch=True")
        if n_action_steps is not None and open_loop > n_action_steps:
            problems.append(f"open_loop ({open_loop}) cannot exceed n_action_steps ({n_action_steps})")
        if problems:
            raise ValueError(f"{type(self).__name__} config: " + "; ".join(problems))
        self.num_parallel_envs = num_parallel_envs
        self.num_steps_wait = num_steps_wait
        self.open_loop = open_loop
        self.action_mode = action_mode
        self.rotate_images_180 = rotate_images_180
        self.replan_steps = replan_steps
        self.max_env_retries = max_env_retries
        self.n_action_steps = n_action_steps
        self.allow_open_loop_mismatch = allow_open_loop_mismatch
        self.video_dir = video_dir
        self.norm_stats_check_threshold = norm_stats_check_threshold
        self.render_on_demand = bool(render_on_demand)
        self.reuse_envs = bool(reuse_envs)
        self.max_pooled_tasks = max_pooled_tasks
        self.scheduler = scheduler
        self.batch_invariant_inference = bool(batch_invariant_inference)
        self._scheduler_calls = 0  # run_policy_in_env calls: part of their episodes' identity
        # Least recently used first; a task's entry stays while its workers are closed by the bound.
        self._env_pool: collections.OrderedDict[str, RecoverableVectorEnv] = collections.OrderedDict()
        self._tasks_in_use: collections.Counter = collections.Counter()  # holds by running schedulers
        self.norm_stats_warning: str | None = None
        self._norm_stats_checked = False
        self._range_checked = False
        # env_errors: faults seen; env_recreated: envs rebuilt; episodes_dropped: samples given up.
        self.fault_counts: collections.Counter = collections.Counter()
        # env_steps / env_step_time_s (episode steps), settle_steps / settle_time_s, reset_time_s
        self.timing: collections.Counter = collections.Counter()

    # ------------------------------------------------------------------ backend hooks
    def _make_vector_env(self, task_name: str, n: int) -> Any:
        raise NotImplementedError

    def _task_description(self, task_name: str) -> str:
        raise NotImplementedError

    def _task_names(self) -> list[str]:
        raise NotImplementedError

    def _init_states(self, task_name: str) -> np.ndarray:
        raise NotImplementedError

    def _max_episode_length(self, task_name: str) -> int:
        raise NotImplementedError

    def _task_id(self, task_name: str) -> int:
        return self._task_names().index(task_name)

    # ------------------------------------------------------------------ public API
    @property
    def protocol(self) -> str:
        """Which execution protocol :meth:`run` uses (recorded in the eval output)."""
        return self.protocol_name(self.replan_steps)

    def protocol_name(self, replan_steps: int | None) -> str:
        if replan_steps is None or replan_steps == self.open_loop:
            return f"open_loop_{self.open_loop}"
        return f"replan_{replan_steps}_of_{self.open_loop}"

    def create_env(self, task_name: str) -> tuple[RecoverableVectorEnv, int, int]:
        """A recoverable vectorised env of ``num_parallel_envs`` workers for one task; with
        ``reuse_envs`` the task's pooled env (the same object, workers alive since last time)."""
        n = self.num_parallel_envs
        env = self._env_pool.get(task_name)
        if env is None:
            env = RecoverableVectorEnv(lambda: self._make_vector_env(task_name, n), env_num=n)
            if self.reuse_envs:
                self._env_pool[task_name] = env
        self._use_pooled(task_name)
        env._env()  # build now so construction errors surface here, not mid-rollout
        return env, self._task_id(task_name), n

    def _use_pooled(self, task_name: str) -> None:
        """Mark a pooled task as just used; close the least recently used workers over the bound
        (before this task's workers are built, so the bound holds at every moment)."""
        if task_name not in self._env_pool:
            return
        self._env_pool.move_to_end(task_name)
        if self.max_pooled_tasks is None:
            return
        live = [t for t, env in self._env_pool.items() if env.inner is not None and t != task_name]
        # Tasks a running scheduler holds keep their workers (their episodes are mid-flight); a
        # round with more tasks than the bound exceeds it until the round ends.
        evictable = [t for t in live if not self._tasks_in_use[t]]
        for stale in evictable[:max(0, len(live) - (self.max_pooled_tasks - 1))]:
            logger.info("env pool: closing the workers of task %s (max_pooled_tasks=%d)", stale,
                        self.max_pooled_tasks)
            self._env_pool[stale].close()
            self.timing["pool_evictions"] += 1

    def hold_task(self, task_name: str, held: bool = True) -> None:
        """Mark a task's pooled workers as in use (a scheduler runs episodes on them), so the
        ``max_pooled_tasks`` bound does not close them; ``held=False`` releases one hold."""
        self._tasks_in_use[task_name] += 1 if held else -1

    @property
    def env_pool(self) -> dict[str, RecoverableVectorEnv]:
        """The pooled env of each task used so far (empty without ``reuse_envs``)."""
        return dict(self._env_pool)

    def close(self) -> None:
        """End every pooled simulator worker (the end of a run); later calls build new ones."""
        envs, self._env_pool = self._env_pool, collections.OrderedDict()
        for task_name, env in envs.items():
            try:
                env.close()
            except Exception as exc:  # noqa: BLE001 -- a dying worker must not block shutdown
                logger.warning("closing the env of task %s failed (%r); terminating its workers",
                               task_name, exc)
                env.discard()

    def _release_env(self, task_name: str, env: RecoverableVectorEnv) -> None:
        """Close an env this runner created for one use, unless the pool keeps it."""
        if self._env_pool.get(task_name) is not env:
            env.close()

    def make_scheduler(self, policy: Any, *, cfg_scale: float = 1.0, replan_steps: int | None = None,
                       base_seed: int | None = None,
                       envs: Mapping[str, RecoverableVectorEnv] | None = None) -> RolloutScheduler:
        """A :class:`RolloutScheduler` over this runner's simulators (``num_parallel_envs`` at once);
        ``base_seed`` defaults to the runner's ``seed``."""
        seed = getattr(self, "seed", 0) if base_seed is None else base_seed
        return RolloutScheduler(self, policy, cfg_scale=cfg_scale, replan_steps=replan_steps,
                                base_seed=seed, envs=dict(envs or {}))

    def run_policy_in_env(self, env_name: str, policy: Any, all_init_states: Any, render: bool = False,
                          created_env: Any = None, random_init: bool = False, cfg_scale: float = 1.0,
                          replan_steps: int | None = None
                          ) -> Iterator[tuple[bool, float, Episode]]:
        """Roll ``policy`` out once per initial state; yield ``(success, total_reward, episode)``
        in the order of the states.

        ``replan_steps`` defaults to the training protocol (replan every ``open_loop`` steps),
        whatever ``self.replan_steps`` is. ``random_init`` resets the envs randomly instead (the
        states then only give the count). ``render`` records every step's agentview frame
        (``episode.extra["frames"]``) for videos.
        """
        states = list(all_init_states)
        if isinstance(created_env, tuple):  # RIPT passes create_env()'s (env, task_id, env_num)
            created_env = created_env[0]
        own_env = created_env is None
        if own_env:
            env, _, _ = self.create_env(env_name)
        elif isinstance(created_env, RecoverableVectorEnv):
            env = created_env
        else:  # a raw env from elsewhere: wrap it so a crash can still be recovered
            env = RecoverableVectorEnv(lambda: self._make_vector_env(env_name, len(created_env)),
                                       env_num=len(created_env), inner=created_env)
        replan = replan_steps or self.open_loop
        if self._env_pool.get(env_name) is env:
            self._use_pooled(env_name)  # the generator holds on to its env: count this use too
        try:
            if self.scheduler == "lockstep":
                yield from self._run_lockstep(env, env_name, states, policy, cfg_scale, replan, render,
                                              random_init)
                return
            # Each call's episodes get their own identity, so equal states in two calls differ.
            self._scheduler_calls += 1
            scheduler = self.make_scheduler(policy, cfg_scale=cfg_scale, replan_steps=replan,
                                            envs={env_name: env})
            for i, state in enumerate(states):
                scheduler.submit(EpisodeSpec(env_name, None if random_init else np.asarray(state),
                                             key=("call", self._scheduler_calls, i), record_video=render))
            by_index = {spec.key[2]: ep for spec, ep in scheduler.run()}
            for i in range(len(states)):
                ep = by_index[i]
                yield ep.success, ep.total_reward, ep
        finally:
            if own_env:
                self._release_env(env_name, env)

    def _run_lockstep(self, env: RecoverableVectorEnv, env_name: str, states: list, policy: Any,
                      cfg_scale: float, replan: int, render: bool, random_init: bool
                      ) -> Iterator[tuple[bool, float, Episode]]:
        for start in range(0, len(states), env.env_num):
            batch = states[start:start + env.env_num]
            episodes = self._rollout_with_retries(env, env_name, batch, policy, cfg_scale,
                                                  replan, render, random_init)
            for ep in episodes:
                yield ep.success, ep.total_reward, ep

    def run(self, policy: Any, n_video: int = 0, do_tqdm: bool = False,
            save_video_fn: Callable[..., Any] | None = None, cfg_scale: float = 1.0,
            num_trials_per_task: int | None = None,
            init_states_by_task: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Evaluate on every task with its shipped init states; return ``rollout/...`` metrics.

        ``init_states_by_task`` replaces a task's shipped states by the given ones (e.g. the
        init-state dataset's held-out split); ``num_trials_per_task`` then takes the first N of those.
        Episodes dropped after repeated simulator faults are left out of the success rates and
        reported as ``rollout/num_env_faults``. With the continuous scheduler every episode of every
        task is queued at once, and episode ``i`` of a task is seeded by ``(seed, "eval", task, i)``:
        the same states give the same scenes and flow noise in every evaluation.
        """
        replan = self.replan_steps or self.open_loop
        states_by_task = {}
        for task_name in self._task_names():
            given = None if init_states_by_task is None else init_states_by_task.get(task_name)
            states_by_task[task_name] = self._eval_init_states(task_name, num_trials_per_task, given)
        if self.scheduler == "lockstep":
            successes_by_task, faults = self._evaluate_lockstep(policy, states_by_task, n_video, do_tqdm,
                                                                save_video_fn, cfg_scale, replan)
            stats = None
        else:
            successes_by_task, faults, stats = self._evaluate_scheduled(
                policy, states_by_task, n_video, do_tqdm, save_video_fn, cfg_scale, replan)
        results: dict[str, Any] = {}
        successes = []
        for task_name, task_successes in successes_by_task.items():
            results[f"rollout/success_rate/{task_name}"] = float(np.mean(task_successes)) if task_successes else 0.0
            successes.extend(task_successes)
            logger.info("eval %s: success %.3f over %d episodes", task_name,
                        results[f"rollout/success_rate/{task_name}"], len(task_successes))
        results["rollout/overall_success_rate"] = float(np.mean(successes)) if successes else 0.0
        results["rollout/num_episodes"] = len(successes)
        results["rollout/num_env_faults"] = faults
        results["rollout/protocol"] = self.protocol_name(replan)
        results["rollout/cfg_scale"] = float(cfg_scale)
        if stats is not None:
            results.update(stats.metrics())
        return results

    def _evaluate_scheduled(self, policy: Any, states_by_task: dict[str, list], n_video: int,
                            do_tqdm: bool, save_video_fn: Callable[..., Any] | None, cfg_scale: float,
                            replan: int) -> tuple[dict[str, list[bool]], int, Any]:
        scheduler = self.make_scheduler(policy, cfg_scale=cfg_scale, replan_steps=replan)
        queue_position = {}
        for task_name, states in states_by_task.items():
            for i, state in enumerate(states):
                queue_position[(task_name, i)] = len(queue_position)
                scheduler.submit(EpisodeSpec(task_name, np.asarray(state), key=("eval", task_name, i),
                                             record_video=len(queue_position) <= n_video))
        bar = _progress(len(queue_position), "eval", do_tqdm)
        successes: dict[str, dict[int, bool]] = {task: {} for task in states_by_task}
        recorded: dict[int, Episode] = {}  # videos are saved in queue order, not in finishing order
        faults = 0
        try:
            for spec, ep in scheduler.run():
                if bar is not None:
                    bar.update(1)
                if not ep.valid:
                    faults += 1
                    continue
                successes[spec.task_name][spec.key[2]] = bool(ep.success)
                if spec.record_video and ep.extra.get("frames"):
                    recorded[queue_position[(spec.task_name, spec.key[2])]] = ep
                else:
                    ep.extra.pop("frames", None)
            for videos, position in enumerate(sorted(recorded)):
                self._save_video(recorded[position], videos, save_video_fn)
                recorded[position].extra.pop("frames", None)
        finally:
            if bar is not None:
                bar.close()
            if not self.reuse_envs:
                for task_name in states_by_task:
                    self._close_unpooled(task_name, scheduler)
        ordered = {task: [done[i] for i in sorted(done)] for task, done in successes.items()}
        return ordered, faults, scheduler.stats

    def _close_unpooled(self, task_name: str, scheduler: RolloutScheduler) -> None:
        env = scheduler.env_of(task_name)
        if env is not None:
            self._release_env(task_name, env)

    def _evaluate_lockstep(self, policy: Any, states_by_task: dict[str, list], n_video: int,
                           do_tqdm: bool, save_video_fn: Callable[..., Any] | None, cfg_scale: float,
                           replan: int) -> tuple[dict[str, list[bool]], int]:
        successes: dict[str, list[bool]] = {}
        faults = videos = 0
        for task_name, states in states_by_task.items():
            bar = _progress(len(states), f"eval {task_name}", do_tqdm)
            env, _, _ = self.create_env(task_name)
            task_successes = successes[task_name] = []
            try:
                with self._evaluation_scope(env):
                    for start in range(0, len(states), env.env_num):
                        render = videos < n_video
                        for success, _, ep in self.run_policy_in_env(
                                task_name, policy, states[start:start + env.env_num], render=render,
                                created_env=env, cfg_scale=cfg_scale, replan_steps=replan):
                            if bar is not None:
                                bar.update(1)
                            if not ep.valid:
                                faults += 1
                                continue
                            task_successes.append(bool(success))
                            if render and videos < n_video and ep.extra.get("frames"):
                                self._save_video(ep, videos, save_video_fn)
                                videos += 1
                            ep.extra.pop("frames", None)
            finally:
                self._release_env(task_name, env)
                if bar is not None:
                    bar.close()
        return successes, faults

    # ------------------------------------------------------------------ internals
    def _evaluation_scope(self, env: RecoverableVectorEnv) -> contextlib.AbstractContextManager:
        """Context around one task's evaluation on ``env`` (a backend may reseed pooled workers)."""
        return contextlib.nullcontext()

    def _eval_init_states(self, task_name: str, num_trials: int | None, states: Any = None) -> list:
        source = "ships" if states is None else "was given"
        states = list(self._init_states(task_name) if states is None else states)
        if num_trials is None:
            return states
        if not 1 <= num_trials <= len(states):
            raise ValueError(f"num_trials_per_task ({num_trials}) must be in [1, {len(states)}] "
                             f"(task {task_name!r} {source} {len(states)} initial states)")
        return states[:num_trials]

    def _save_video(self, ep: Episode, index: int, save_video_fn: Callable[..., Any] | None) -> None:
        frames = ep.extra["frames"]
        if save_video_fn is not None:
            save_video_fn(frames, ep.task_name, index, ep.success)
        elif self.video_dir:
            stem = os.path.join(self.video_dir, f"{ep.task_name}_{index:03d}_{'ok' if ep.success else 'fail'}")
            logger.info("saved video %s", save_episode_video(frames, stem))

    def _rollout_with_retries(self, env: RecoverableVectorEnv, task_name: str, batch: list,
                              policy: Any, cfg_scale: float, replan: int, record_video: bool,
                              random_init: bool) -> list[Episode]:
        """One batch; a simulator fault rebuilds the env and retries, then drops the batch."""
        last_error: EnvFault | None = None
        for attempt in range(self.max_env_retries + 1):
            try:
                return self._rollout_batch(env, task_name, batch, policy, cfg_scale, replan,
                                           record_video, random_init)
            except EnvFault as exc:
                last_error = exc
                self.fault_counts["env_errors"] += 1
                self.fault_counts["env_recreated"] += 1
                logger.warning("task %s: simulator fault on attempt %d/%d (%s); rebuilding the "
                               "env", task_name, attempt + 1, self.max_env_retries + 1, exc)
                env.discard()  # the next call builds fresh workers
        self.fault_counts["episodes_dropped"] += len(batch)
        logger.error("task %s: dropping %d episodes after %d failed attempts (last error: %s); "
                     "they are returned as valid=False", task_name, len(batch),
                     self.max_env_retries + 1, last_error)
        return [self._faulted_episode(task_name, s, random_init, last_error) for s in batch]

    def _faulted_episode(self, task_name: str, init_state: Any, random_init: bool,
                         error: Exception | None) -> Episode:
        ep = Episode.padding(task_name=task_name, task_id=self._task_id(task_name))
        ep.task_description = self._task_description(task_name)
        ep.init_state = None if random_init else np.asarray(init_state)
        ep.extra.update(env_fault=True, error=repr(error))
        return ep

    def _render(self, observation_is_read: bool) -> bool:
        """Whether a request must return camera images."""
        return observation_is_read or not self.render_on_demand

    def _reset_batch(self, env: RecoverableVectorEnv, ids: list[int], batch: list,
                     random_init: bool) -> list:
        # The policy reads the observation after the last settle step (after the reset itself
        # when there are none); the earlier ones need no images.
        first_obs_now = self.num_steps_wait == 0
        t0 = time.perf_counter()
        obs = env.reset(id=ids, render=self._render(first_obs_now and random_init))
        if not random_init:
            obs = env.set_init_state(np.stack([np.asarray(s) for s in batch]), id=ids,
                                     render=self._render(first_obs_now))
        obs = [obs[j] for j in range(len(ids))]
        t1 = time.perf_counter()
        noop = np.tile(NOOP_ACTION, (len(ids), 1))
        for k in range(self.num_steps_wait):  # let objects settle; not part of the episode
            step_obs, _, _, _ = env.step(noop, id=ids, render=self._render(k == self.num_steps_wait - 1))
            obs = [step_obs[j] for j in range(len(ids))]
        self.timing["reset_time_s"] += t1 - t0
        self.timing["settle_time_s"] += time.perf_counter() - t1
        self.timing["settle_steps"] += len(ids) * self.num_steps_wait
        return obs

    def _sample_chunks(self, policy: Any, obs: list, descriptions: list[str], cfg_scale: float,
                       replan: int, noise_seeds: list[int] | None = None
                       ) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray]:
        """One ``select_action`` for the given observations -> (pi0 obs, raw, norm chunk, env chunk).

        ``noise_seeds``: per observation, the seed of its flow noise (policies that take them)."""
        norm_stats: NormStats = policy.norm_stats
        # Frames are resized to the policy's input size openpi's way (None: as rendered).
        pi0_obs, raw = env_obs_to_pi0_observation(obs, descriptions, norm_stats,
                                                  rotate_180=self.rotate_images_180,
                                                  image_size=getattr(policy, "image_size", None))
        seeded = {} if noise_seeds is None else {"noise_seeds": noise_seeds}
        norm_chunk = to_numpy(policy.select_action(pi0_obs, cfg_scale=cfg_scale, **seeded))  # (k, T, 7)
        if norm_chunk.ndim != 3 or norm_chunk.shape[0] != len(obs) or norm_chunk.shape[2] != ACTION_DIM:
            raise ValueError(f"policy.select_action returned shape {norm_chunk.shape}; expected "
                             f"({len(obs)}, n_action_steps, {ACTION_DIM})")
        horizon = norm_chunk.shape[1]
        if horizon < replan or (horizon != self.open_loop and not self.allow_open_loop_mismatch):
            raise ValueError(f"policy chunks have {horizon} steps but open_loop={self.open_loop} "
                             f"(replan every {replan}); set open_loop to the policy's n_action_steps")
        if not self._norm_stats_checked:
            self._norm_stats_checked = True
            self.norm_stats_warning = check_norm_stats_against_chunk(
                norm_stats, norm_stats.unnormalize_action(norm_chunk),
                max_outside_fraction=self.norm_stats_check_threshold)
        env_chunk = model_chunk_to_env_actions(norm_chunk, raw, norm_stats, self.action_mode)
        if self.norm_stats_warning is None and not self._range_checked:
            self._range_checked = True
            self.norm_stats_warning = self._check_env_action_range(env_chunk)
        return pi0_obs, raw, norm_chunk, env_chunk

    def _check_env_action_range(self, env_chunk: np.ndarray) -> str | None:
        """LIBERO's OSC controller takes commands in [-1, 1]; most of a chunk outside it means the
        stats and ``action_mode`` disagree (e.g. stats of delta actions with ``relative``, which
        adds the eef pose, ~0.8 m / ~3 rad, to every command)."""
        outside = float(np.mean(np.abs(env_chunk[..., :6]) > 1.0 + 1e-3)) if env_chunk.size else 0.0
        if outside <= self.norm_stats_check_threshold:
            return None
        message = (f"ACTION MODE / NORM STATS MISMATCH? {outside:.0%} of the first chunk's executed "
                   f"arm commands lie outside the env's [-1, 1] action range with "
                   f"action_mode={self.action_mode!r}; the controller will saturate. Check that the "
                   f"norm stats were computed in the same action convention as action_mode.")
        logger.warning(message)
        return message

    def _rollout_batch(self, env: RecoverableVectorEnv, task_name: str, batch: list, policy: Any,
                       cfg_scale: float, replan: int, record_video: bool, random_init: bool
                       ) -> list[Episode]:
        """Run one batch of episodes (one env worker each) to success or the length cap."""
        ids = list(range(len(batch)))
        description = self._task_description(task_name)
        max_len = self._max_episode_length(task_name)
        obs = self._reset_batch(env, ids, batch, random_init)
        bufs = [EpisodeRecord() for _ in ids]
        running = np.ones(len(ids), dtype=bool)
        plans = np.zeros((len(ids), replan, ACTION_DIM), dtype=np.float32)
        t = 0
        while running.any() and t < max_len:
            live = [int(i) for i in np.flatnonzero(running)]
            if t % replan == 0:  # all live envs started together, so they replan together
                pi0_obs, raw, norm_chunk, env_chunk = self._sample_chunks(
                    policy, [obs[i] for i in live], [description] * len(live), cfg_scale, replan)
                for j, i in enumerate(live):
                    bufs[i].chunk_start_steps.append(t)
                    bufs[i].chunk_observations.append(ChunkObservation(
                        images={slot: pi0_obs[f"image.{slot}"][j] for slot in CAMERA_KEY_TO_SLOT.values()},
                        state=pi0_obs["state"][j], raw_state=raw[j]))
                    bufs[i].sampled_chunks.append(norm_chunk[j])
                    plans[i] = env_chunk[j, :replan]
            actions = plans[live, t % replan]  # (k, 7)
            # The next step's observation is read if a chunk starts there (or for the video).
            render = self._render(record_video or ((t + 1) % replan == 0 and t + 1 < max_len))
            t0 = time.perf_counter()
            step_obs, rewards, dones, _ = env.step(actions, id=live, render=render)
            self.timing["env_step_time_s"] += time.perf_counter() - t0
            self.timing["env_steps"] += len(live)
            self.timing["vector_steps"] += 1
            self.timing["rendered_vector_steps"] += int(render)
            for j, i in enumerate(live):
                obs[i] = step_obs[j]
                bufs[i].actions.append(actions[j])
                bufs[i].total_reward += float(rewards[j])
                if record_video:
                    # LIBERO renders upside down; flip so the video is upright.
                    bufs[i].frames.append(np.asarray(obs[i]["agentview_image"])[::-1, ::-1].copy())
                if bool(dones[j]):
                    bufs[i].success, running[i] = True, False
            t += 1
        return [self._episode_from_record(task_name, buf, None if random_init else batch[i])
                for i, buf in enumerate(bufs)]

    def _episode_from_record(self, task_name: str, record: EpisodeRecord, init_state: Any) -> Episode:
        """The :class:`Episode` of what one env recorded (both schedulers build it here)."""
        chunks = record.sampled_chunks
        horizon = chunks[0].shape[0] if chunks else (self.n_action_steps or self.open_loop)
        ep = Episode(
            task_name=task_name, task_description=self._task_description(task_name),
            task_id=self._task_id(task_name), success=record.success, total_reward=record.total_reward,
            actions=np.asarray(record.actions, dtype=np.float32).reshape(-1, ACTION_DIM),
            chunk_start_steps=np.asarray(record.chunk_start_steps, dtype=np.int64),
            chunk_observations=record.chunk_observations,
            sampled_chunks=(np.stack(chunks).astype(np.float32) if chunks
                            else np.zeros((0, horizon, ACTION_DIM), np.float32)),
            init_state=None if init_state is None else np.asarray(init_state),
        )
        ep.extra["action_mode"] = self.action_mode
        if record.frames:
            ep.extra["frames"] = record.frames
        return ep


def _progress(total: int, desc: str, enabled: bool) -> Any:
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc)


__all__ = ["ChunkedRunner", "EnvFault", "NOOP_ACTION", "RecoverableVectorEnv", "SCHEDULERS", "default_num_simulators",
           "save_episode_video"]
