"""The rollout scheduler: every simulator busy, episode after episode, across RLOO groups.

Why. The lockstep loop (:meth:`ChunkedRunner.run_policy_in_env` with ``scheduler="lockstep"``)
runs a batch of episodes until the slowest one ends and one RLOO group at a time, so a simulator
whose episode succeeded early waits; on LIBERO a round kept its simulators busy about a third of
the time (docs/benchmarks.md, "Rollout scheduler"). Here each simulator takes the next queued
episode the moment its own episode ends, whatever group that episode belongs to.

How.
* Episodes are queued as :class:`EpisodeSpec` (task, init state, identity); :meth:`RolloutScheduler.run`
  yields each finished episode as it ends, and the caller may queue more in between (the rollout
  generator queues a replacement when dynamic sampling drops a group).
* Each simulator (one worker of a task's vectorised env) walks through its own phases: reset
  (seeded), set the init state, the settle steps, then the policy steps. Envs keep their own chunk
  clock, so at any moment only some need a new chunk: one ``select_action`` serves exactly those.
  With worker processes it runs in a background thread while the other workers keep being served,
  and the chunks that fall due during a call share the next one.
* With worker processes (LIBERO) every worker gets its next request the moment it answers; other
  envs (the reach env, one in-process LIBERO env, test fakes) are driven by one vectorised call
  per phase per pass, the same requests in lockstep.
* Randomness belongs to the episode, not to the simulator: the env's reset seed and the flow noise
  of chunk ``c`` are drawn from :func:`derive_seed` of ``(base_seed, key[, c])``, so an episode's
  actions do not depend on which simulator ran it or what else was in the batch (up to floating
  point batch effects of the policy).
* Rendering stays on demand: only steps whose observation the policy reads are rendered.
* A simulator fault retries only the episodes that lost their simulator: with worker processes,
  the one episode on the dead worker (the worker is replaced alone); otherwise every episode of
  that vectorised env (it is rebuilt whole). After ``max_env_retries`` retries an episode is
  returned as ``valid=False`` and counted in ``fault_counts["episodes_dropped"]``.
"""
from __future__ import annotations

import collections
import concurrent.futures
import hashlib
import inspect
import logging
import os
import time
from dataclasses import dataclass, field
from multiprocessing.connection import wait as wait_for_connections
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from ript.env_runner.pi0_runner_utils import CAMERA_KEY_TO_SLOT, NOOP_ACTION, EnvFault
from ript.types import ChunkObservation, Episode

if TYPE_CHECKING:  # the runner imports this module; only type hints go the other way
    from ript.env_runner.chunked_runner import ChunkedRunner, RecoverableVectorEnv

logger = logging.getLogger(__name__)


def derive_seed(base_seed: int, *key: Any) -> int:
    """A 63-bit seed from a base seed and an identity (stable across runs, platforms, processes)."""
    digest = hashlib.sha256(repr((int(base_seed),) + tuple(key)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@dataclass(frozen=True)
class EpisodeSpec:
    """One episode to run.

    ``key`` is the episode's identity -- ``(round, group, k)`` for training rollouts, ``("eval",
    task, index)`` for evaluation -- and seeds its randomness. ``init_state`` None resets randomly.
    """

    task_name: str
    init_state: np.ndarray | None
    key: tuple
    record_video: bool = False


@dataclass
class SchedulerStats:
    """Where the rollout time went (summed over :meth:`RolloutScheduler.run` calls)."""

    num_simulators: int = 0
    wall_s: float = 0.0  # time inside run()
    busy_s: float = 0.0  # simulators' summed time serving requests (stepping, resets, rendering)
    inference_s: float = 0.0  # time in policy.select_action
    episodes: int = 0
    env_steps: int = 0  # policy steps (settle steps not included)
    policy_calls: int = 0
    policy_batch_sum: int = 0  # sum of select_action batch sizes
    peak_running: int = 0  # most episodes running at once (at most num_simulators)

    @property
    def utilization(self) -> float:
        """Busy time / (simulators x wall time): 1 = no simulator ever waited."""
        capacity = self.num_simulators * self.wall_s
        return self.busy_s / capacity if capacity > 0 else 0.0

    @property
    def episodes_per_min(self) -> float:
        return 60.0 * self.episodes / self.wall_s if self.wall_s > 0 else 0.0

    def metrics(self, prefix: str = "rollout/") -> dict[str, float]:
        return {
            f"{prefix}simulator_utilization": self.utilization,
            f"{prefix}episodes_per_min": self.episodes_per_min,
            f"{prefix}rollout_time_s": self.wall_s,
            f"{prefix}inference_time_s": self.inference_s,
            f"{prefix}num_simulators": float(self.num_simulators),
            f"{prefix}mean_policy_batch": (self.policy_batch_sum / self.policy_calls
                                           if self.policy_calls else 0.0),
        }


@dataclass
class EpisodeRecord:
    """What one env records during an episode (the runner turns it into an :class:`Episode`)."""

    actions: list = field(default_factory=list)
    chunk_start_steps: list = field(default_factory=list)
    chunk_observations: list = field(default_factory=list)
    sampled_chunks: list = field(default_factory=list)
    frames: list = field(default_factory=list)
    total_reward: float = 0.0
    success: bool = False


@dataclass
class _Simulator:
    """One worker of a task's vectorised env and the episode it is running."""

    env: "RecoverableVectorEnv"
    task_name: str
    worker: int
    spec: EpisodeSpec | None = None
    attempt: int = 0  # failed attempts of the current episode
    phase: str = "idle"  # idle | reset | init | settle | step | chunk (due) | sampling (policy running)
    settle_left: int = 0
    t: int = 0  # policy steps taken
    obs: Any = None
    plan: np.ndarray | None = None  # (replan, 7) env actions of the current chunk
    record: EpisodeRecord = field(default_factory=EpisodeRecord)
    sent_at: float = 0.0
    pending_action: np.ndarray | None = None

    def start(self, spec: EpisodeSpec) -> None:
        self.spec, self.t, self.obs, self.plan = spec, 0, None, None
        self.record = EpisodeRecord()

    @property
    def busy(self) -> bool:
        return self.spec is not None


class _Requests:
    """The requests of one task's vectorised env, one outstanding per simulator.

    With worker processes each request goes out at once and is answered on its own; otherwise they
    are collected and sent as one vectorised call per command when the scheduler waits.
    """

    def __init__(self, env: "RecoverableVectorEnv"):
        self.env = env
        self.asynchronous = env.supports_async
        self.outstanding: dict[int, tuple[str, Any, bool]] = {}  # worker -> (cmd, data, render)

    def send(self, sim: _Simulator, cmd: str, data: Any, render: bool) -> None:
        self.outstanding[sim.worker] = (cmd, data, render)
        sim.sent_at = time.perf_counter()
        if self.asynchronous:
            self.env.send(sim.worker, cmd, data, render=render)

    def run_vectorised(self) -> tuple[list[tuple[int, Any]], float, Exception | None]:
        """Lockstep envs: every outstanding request, one vectorised call per command.
        -> ([(worker, answer)], seconds, the fault that stopped it or None)."""
        by_cmd: dict[str, list[int]] = collections.defaultdict(list)
        for worker, (cmd, _, _) in sorted(self.outstanding.items()):
            by_cmd[cmd].append(worker)
        answers: list[tuple[int, Any]] = []
        started = time.perf_counter()
        try:
            for cmd in ("reset", "set_init_state", "step"):
                ids = by_cmd.get(cmd)
                if not ids:
                    continue
                data = [self.outstanding[j][1] for j in ids]
                render = any(self.outstanding[j][2] for j in ids)  # images are identical either way
                if cmd == "reset":
                    obs = self.env.reset(id=ids, render=render, seeds=data)
                    answers += [(j, obs[i]) for i, j in enumerate(ids)]
                elif cmd == "set_init_state":
                    obs = self.env.set_init_state(np.stack(data), id=ids, render=render)
                    answers += [(j, obs[i]) for i, j in enumerate(ids)]
                else:
                    obs, rewards, dones, _ = self.env.step(np.stack(data), id=ids, render=render)
                    answers += [(j, (obs[i], float(rewards[i]), bool(dones[i]))) for i, j in enumerate(ids)]
                for j in ids:
                    del self.outstanding[j]
        except EnvFault as fault:
            return answers, time.perf_counter() - started, fault
        return answers, time.perf_counter() - started, None

    def receive(self, worker: int) -> Any:
        cmd, _, _ = self.outstanding.pop(worker)
        answer = self.env.receive(worker, cmd)
        if cmd == "step":
            obs, reward, done, _ = answer
            return obs, float(reward), bool(done)
        return answer


class RolloutScheduler:
    """Runs queued episodes on a runner's simulators, refilling each one as soon as it is free.

    Args:
        runner: the :class:`ChunkedRunner` whose envs, conversions and episode limits are used.
        policy: has ``select_action(obs, cfg_scale)`` (and optionally ``noise_seeds=``) and
            ``norm_stats``.
        cfg_scale: guidance scale of every chunk.
        replan_steps: actions executed per chunk (default: the runner's ``open_loop``).
        base_seed: with the episode keys, seeds every reset and every chunk's flow noise.
        num_simulators: how many simulators may run at once (default ``runner.num_parallel_envs``;
            one task's env has that many workers).
        envs: per task, a vectorised env to use instead of ``runner.create_env(task)``.
        threaded_inference: with worker processes, run ``select_action`` in a background thread
            while the workers keep being served (None: whenever an env has worker processes).
            Chunks that fall due during a call share the next one.
    """

    def __init__(self, runner: "ChunkedRunner", policy: Any, *, cfg_scale: float = 1.0,
                 replan_steps: int | None = None, base_seed: int = 0, num_simulators: int | None = None,
                 envs: dict[str, "RecoverableVectorEnv"] | None = None,
                 threaded_inference: bool | None = None):
        self.runner, self.policy = runner, policy
        self.cfg_scale = float(cfg_scale)
        self.replan = replan_steps or runner.open_loop
        self.base_seed = int(base_seed)
        self.threaded_inference = threaded_inference
        self._inference: concurrent.futures.Future | None = None  # the policy call in flight
        self._inference_sims: list[_Simulator] = []
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._wake_read = self._wake_write = -1  # the inference thread's "done" signal
        self.num_simulators = num_simulators or runner.num_parallel_envs
        if self.num_simulators < 1:
            raise ValueError(f"num_simulators ({self.num_simulators}) must be >= 1")
        self._given_envs = dict(envs or {})
        self._queue: collections.deque[EpisodeSpec] = collections.deque()
        self._sims: dict[str, list[_Simulator]] = {}
        self._requests: dict[str, _Requests] = {}
        self._busy_marks: dict[str, tuple[Any, list[float] | None]] = {}  # (inner env, seconds)
        self._dropped: list[tuple[EpisodeSpec, Episode]] = []  # given up after repeated faults
        self.stats = SchedulerStats(num_simulators=self.num_simulators)
        self._takes_noise_seeds = _accepts_keyword(policy.select_action, "noise_seeds")

    # ------------------------------------------------------------------ public API
    def submit(self, spec: EpisodeSpec) -> None:
        """Queue one episode (first in, first out)."""
        self._queue.append(spec)

    def env_of(self, task_name: str) -> "RecoverableVectorEnv | None":
        """The vectorised env this scheduler used for a task (None if it ran none of its episodes)."""
        requests = self._requests.get(task_name)
        return None if requests is None else requests.env

    @property
    def num_queued(self) -> int:
        return len(self._queue)

    @property
    def num_running(self) -> int:
        return sum(sim.busy for sims in self._sims.values() for sim in sims)

    def run(self) -> Iterator[tuple[EpisodeSpec, Episode]]:
        """Run until nothing is queued or running; yield ``(spec, episode)`` as episodes end.

        Episodes queued while the loop runs (between two yields) are run in the same call.
        """
        started = time.perf_counter()
        for task_name in self._sims:  # tasks of an earlier run() call of this scheduler
            self.runner.hold_task(task_name)
        try:
            while self._queue or self.num_running:
                self._fill_free_simulators()
                for finished in self._advance():
                    yield finished
        finally:
            self.stats.wall_s += time.perf_counter() - started
            self._collect_busy_time()
            self._stop_inference_thread()
            for task_name in self._sims:
                self.runner.hold_task(task_name, held=False)

    # ------------------------------------------------------------------ filling simulators
    def _simulators(self, task_name: str) -> list[_Simulator]:
        if task_name not in self._sims:
            env = self._given_envs.get(task_name)
            if env is None:
                env, _, _ = self.runner.create_env(task_name)
            self.runner.hold_task(task_name)  # the pool bound must not close it mid-episode
            self._sims[task_name] = [_Simulator(env, task_name, j) for j in range(len(env))]
            self._requests[task_name] = _Requests(env)
            self._busy_marks[task_name] = (env.inner, env.busy_seconds())
        return self._sims[task_name]

    def _fill_free_simulators(self) -> None:
        free = self.num_simulators - self.num_running
        skipped: list[EpisodeSpec] = []
        while free > 0 and self._queue:
            spec = self._queue.popleft()
            sim = next((s for s in self._simulators(spec.task_name) if not s.busy), None)
            if sim is None:  # this task's workers are all busy: a later episode may fit elsewhere
                skipped.append(spec)
                continue
            sim.attempt = 0
            self._begin(sim, spec)
            free -= 1
        self._queue.extendleft(reversed(skipped))
        self.stats.peak_running = max(self.stats.peak_running, self.num_running)

    def _begin(self, sim: _Simulator, spec: EpisodeSpec) -> None:
        """Start (or restart after a fault) ``spec`` on ``sim``: a reset seeded by the episode."""
        sim.start(spec)
        sim.phase = "reset"
        runner = self.runner
        read_now = runner.num_steps_wait == 0 and spec.init_state is None
        self._send(sim, "reset", derive_seed(self.base_seed, *spec.key, "env") % 2**32,
                   runner._render(read_now))

    def _send(self, sim: _Simulator, cmd: str, data: Any, render: bool) -> None:
        try:
            self._requests[sim.task_name].send(sim, cmd, data, render)
        except EnvFault as fault:  # a worker that died between requests fails on send
            self._requests[sim.task_name].outstanding.pop(sim.worker, None)
            self._on_fault(sim, fault)

    # ------------------------------------------------------------------ one pass
    def _advance(self) -> list[tuple[EpisodeSpec, Episode]]:
        """Wait for answers, move each simulator on, sample the chunks that are due."""
        answers = self._collect_answers()
        finished, self._dropped = self._dropped, []
        for sim, answer in answers:
            done = self._on_answer(sim, answer)
            if done is not None:
                finished.append(done)
        self._take_inference_result()
        due = [sim for sims in self._sims.values() for sim in sims if sim.phase == "chunk"]
        if due and self._threaded:
            if self._inference is None:  # the due ones that arrive meanwhile share the next call
                self._start_inference(due)
        elif due:
            self._apply_chunks(due, self._compute_chunks(due))
        return finished

    def _collect_answers(self) -> list[tuple[_Simulator, Any]]:
        answers: list[tuple[_Simulator, Any]] = []
        for task_name, requests in self._requests.items():
            if requests.asynchronous or not requests.outstanding:
                continue
            in_call = len(requests.outstanding)
            done, seconds, fault = requests.run_vectorised()
            if self._busy_marks[task_name][1] is None:  # the env cannot count: a call busies all in it
                self.stats.busy_s += seconds * in_call
            if fault is not None:  # the env is rebuilt: every episode on it starts again
                self._on_env_fault(task_name, fault)
                continue
            answers += [(self._sims[task_name][j], answer) for j, answer in done]
        waiting: dict[Any, tuple[str, int] | None] = {
            requests.env.connection(j): (task_name, j)
            for task_name, requests in self._requests.items() if requests.asynchronous
            for j in requests.outstanding}
        if self._inference is not None:
            waiting[self._wake_read] = None  # the policy call ending also ends the wait
        if waiting:
            timeout = 0 if answers or self._inference_done() else self._wait_timeout()
            ready = wait_for_connections(list(waiting), timeout)
            for conn in ready:
                if waiting[conn] is None:
                    os.read(self._wake_read, 64)
                    continue
                answers.append(self._receive(*waiting[conn]))
            if not ready and not answers:
                self._fail_hung_workers()
        return [(sim, answer) for sim, answer in answers if sim is not None]

    def _receive(self, task_name: str, worker: int) -> tuple[_Simulator | None, Any]:
        sim = self._sims[task_name][worker]
        try:
            return sim, self._requests[task_name].receive(worker)
        except EnvFault as fault:
            self._on_fault(sim, fault)
            return None, None

    def _wait_timeout(self) -> float | None:
        timeout = getattr(self._any_env().inner, "timeout_s", None)
        sent = [sim.sent_at for sims in self._sims.values() for sim in sims
                if sim.worker in self._requests[sim.task_name].outstanding]
        if not timeout or not sent:
            return None
        return max(0.0, min(sent) + timeout - time.perf_counter())

    def _any_env(self) -> "RecoverableVectorEnv":
        return next(iter(self._requests.values())).env

    def _fail_hung_workers(self) -> None:
        now = time.perf_counter()
        for task_name, requests in self._requests.items():
            timeout = getattr(requests.env.inner, "timeout_s", None)
            for j in list(requests.outstanding):
                sim = self._sims[task_name][j]
                if timeout and now - sim.sent_at >= timeout:
                    cmd = requests.outstanding.pop(j)[0]
                    self._on_fault(sim, EnvFault(f"worker {j} did not answer {cmd!r} within {timeout} s"))

    def _on_answer(self, sim: _Simulator, answer: Any) -> tuple[EpisodeSpec, Episode] | None:
        runner, spec = self.runner, sim.spec
        assert spec is not None
        if sim.phase == "reset":
            if spec.init_state is not None:
                sim.phase = "init"
                self._send(sim, "set_init_state", np.asarray(spec.init_state),
                           runner._render(runner.num_steps_wait == 0))
                return None
            return self._settle(sim, answer, runner.num_steps_wait)
        if sim.phase == "init":
            return self._settle(sim, answer, runner.num_steps_wait)
        obs, reward, done = answer
        if sim.phase == "settle":
            return self._settle(sim, obs, sim.settle_left)
        # a policy step
        sim.obs = obs
        sim.record.actions.append(sim.pending_action)
        sim.record.total_reward += reward
        sim.t += 1
        self.stats.env_steps += 1
        if spec.record_video:
            # LIBERO renders upside down; flip so the video is upright.
            sim.record.frames.append(np.asarray(obs["agentview_image"])[::-1, ::-1].copy())
        max_len = runner._max_episode_length(sim.task_name)
        if done or sim.t >= max_len:
            sim.record.success = bool(done)
            return self._finish(sim)
        if sim.t % self.replan == 0:
            sim.phase = "chunk"
            return None
        self._step(sim)
        return None

    def _settle(self, sim: _Simulator, obs: Any, steps_left: int) -> None:
        """Noop steps that let objects settle (not part of the episode), then the first chunk."""
        sim.obs = obs
        if steps_left <= 0:
            sim.phase = "chunk"
            return None
        sim.phase, sim.settle_left = "settle", steps_left - 1
        self._send(sim, "step", NOOP_ACTION, self.runner._render(sim.settle_left == 0))
        return None

    def _step(self, sim: _Simulator) -> None:
        sim.phase = "step"
        sim.pending_action = sim.plan[sim.t % self.replan]
        max_len = self.runner._max_episode_length(sim.task_name)
        # The next step's observation is read if a chunk starts there (or for the video).
        next_read = (sim.t + 1) % self.replan == 0 and sim.t + 1 < max_len
        self._send(sim, "step", sim.pending_action, self.runner._render(sim.spec.record_video or next_read))

    # ------------------------------------------------------------------ the policy
    @property
    def _threaded(self) -> bool:
        if self.threaded_inference is not None:
            return self.threaded_inference
        return any(requests.asynchronous for requests in self._requests.values())

    def _compute_chunks(self, due: list[_Simulator]) -> tuple:
        """One ``select_action`` for ``due`` (in the inference thread when threaded)."""
        import torch  # the policy's framework; no gradients in rollouts, in whichever thread

        runner = self.runner
        descriptions = [runner._task_description(sim.task_name) for sim in due]
        seeds = ([derive_seed(self.base_seed, *sim.spec.key, "chunk", len(sim.record.chunk_start_steps)) for sim in due]
                 if self._takes_noise_seeds else None)  # each chunk's flow noise, keyed by episode and chunk
        # Batch-invariant mode: one call per episode, so an episode's chunk is bit for bit the same
        # whatever else fell due with it (batched matmuls may round differently by batch size).
        groups = [[j] for j in range(len(due))] if runner.batch_invariant_inference else [list(range(len(due)))]
        started = time.perf_counter()
        parts = []
        with torch.no_grad():
            for group in groups:
                parts.append(runner._sample_chunks(
                    self.policy, [due[j].obs for j in group], [descriptions[j] for j in group],
                    self.cfg_scale, self.replan, noise_seeds=None if seeds is None else [seeds[j] for j in group]))
        chunks = parts[0] if len(parts) == 1 else _concatenate_chunks(parts)
        self.stats.inference_s += time.perf_counter() - started
        self.stats.policy_calls += len(groups)
        self.stats.policy_batch_sum += len(due)
        return chunks

    def _apply_chunks(self, due: list[_Simulator], chunks: tuple) -> None:
        """Record each due simulator's chunk and send its first action."""
        pi0_obs, raw, norm_chunk, env_chunk = chunks
        for j, sim in enumerate(due):
            sim.record.chunk_start_steps.append(sim.t)
            sim.record.chunk_observations.append(ChunkObservation(
                images={slot: pi0_obs[f"image.{slot}"][j] for slot in CAMERA_KEY_TO_SLOT.values()},
                state=pi0_obs["state"][j], raw_state=raw[j]))
            sim.record.sampled_chunks.append(norm_chunk[j])
            sim.plan = env_chunk[j, :self.replan]
            self._step(sim)

    def _start_inference(self, due: list[_Simulator]) -> None:
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="policy")
            self._wake_read, self._wake_write = os.pipe()
        for sim in due:
            sim.phase = "sampling"
        self._inference_sims = due

        self._inference = self._executor.submit(self._compute_chunks, due)
        # The callback runs once the future is done (result or error set), so a woken loop finds
        # it done.
        self._inference.add_done_callback(lambda _: os.write(self._wake_write, b"x"))

    def _inference_done(self) -> bool:
        return self._inference is not None and self._inference.done()

    def _take_inference_result(self) -> None:
        """Apply a finished policy call (its errors are raised here: policy bugs propagate)."""
        if not self._inference_done():
            return
        future, due = self._inference, self._inference_sims
        self._inference, self._inference_sims = None, []
        self._apply_chunks(due, future.result())

    def _stop_inference_thread(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            os.close(self._wake_read)
            os.close(self._wake_write)
        self._executor, self._inference, self._inference_sims = None, None, []
        self._wake_read = self._wake_write = -1

    def _finish(self, sim: _Simulator) -> tuple[EpisodeSpec, Episode]:
        spec = sim.spec
        episode = self.runner._episode_from_record(spec.task_name, sim.record, spec.init_state)
        sim.spec, sim.phase = None, "idle"
        self.stats.episodes += 1
        return spec, episode

    # ------------------------------------------------------------------ faults
    def _on_fault(self, sim: _Simulator, fault: Exception) -> None:
        """A worker died or hung under ``sim``: replace that worker, retry its episode only."""
        counts = self.runner.fault_counts
        counts["env_errors"] += 1
        counts["env_recreated"] += 1
        logger.warning("task %s: simulator %d failed (%s); replacing it and retrying its episode",
                       sim.task_name, sim.worker, fault)
        try:
            sim.env.restart_worker(sim.worker)
        except EnvFault as restart_fault:
            logger.warning("task %s: restarting simulator %d failed (%s)", sim.task_name, sim.worker,
                           restart_fault)
        self._retry(sim, fault)

    def _on_env_fault(self, task_name: str, fault: Exception) -> None:
        """A lockstep env failed: it is rebuilt whole, so every episode on it starts again."""
        counts = self.runner.fault_counts
        counts["env_errors"] += 1
        counts["env_recreated"] += 1
        requests = self._requests[task_name]
        failed = set(requests.outstanding)
        requests.outstanding.clear()
        logger.warning("task %s: simulator fault (%s); rebuilding the env and retrying its %d "
                       "running episodes", task_name, fault, sum(s.busy for s in self._sims[task_name]))
        requests.env.discard()
        for sim in self._sims[task_name]:
            if sim.busy:
                self._retry(sim, fault, counts_as_attempt=sim.worker in failed)

    def _retry(self, sim: _Simulator, fault: Exception, counts_as_attempt: bool = True) -> None:
        spec = sim.spec
        if spec is None:
            return
        sim.attempt += int(counts_as_attempt)
        if sim.attempt <= self.runner.max_env_retries:
            self.runner.fault_counts["episode_retries"] += 1
            self._begin(sim, spec)
            return
        self.runner.fault_counts["episodes_dropped"] += 1
        logger.error("task %s: dropping episode %s after %d failed attempts (last error: %s); it "
                     "is returned as valid=False", sim.task_name, spec.key, sim.attempt, fault)
        sim.spec, sim.phase = None, "idle"
        self._dropped.append((spec, self.runner._faulted_episode(
            spec.task_name, spec.init_state, spec.init_state is None, fault)))

    def _collect_busy_time(self) -> None:
        """Add the workers' own busy seconds since the last mark (envs that count them)."""
        for task_name, requests in self._requests.items():
            (inner, before), now = self._busy_marks[task_name], requests.env.busy_seconds()
            if before is None or now is None:
                continue
            # A rebuilt env counts from zero; the dead one's last seconds are lost (faults are rare).
            self.stats.busy_s += sum(now) - (sum(before) if requests.env.inner is inner else 0.0)
            self._busy_marks[task_name] = (requests.env.inner, now)


def _concatenate_chunks(parts: list[tuple]) -> tuple:
    """Join per-episode ``(pi0 obs, raw, norm chunk, env chunk)`` results along the batch."""
    pi0_obs = {key: (sum((list(p[0][key]) for p in parts), []) if isinstance(parts[0][0][key], list)
                     else np.concatenate([p[0][key] for p in parts]))
               for key in parts[0][0]}
    return (pi0_obs, *(np.concatenate([p[i] for p in parts]) for i in (1, 2, 3)))


def _accepts_keyword(fn: Any, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


__all__ = ["EpisodeRecord", "EpisodeSpec", "RolloutScheduler", "SchedulerStats", "derive_seed"]
