"""RIPT-VLA's rollout collection: K rollouts per init state, dynamic sampling, global early stop.

Behaviour follows RIPT-VLA's ``RolloutGenerator.generate_rollouts`` (see docs/ARCHITECTURE.md), re-written:

* every batch sample (one init state of one task) gets ``K = rloo_batch_size`` rollouts, all
  reset to that same init state, so RLOO compares like with like;
* dynamic sampling drops a sample whose K successes are all 0 or all 1 -- its leave-one-out
  advantages are all zero, so it would only cost compute in the update;
* rollout-stats tracking remembers each init state's recent successes (keyed by a hash of the
  state) and skips states whose last K rollouts all succeeded; after ``skip_threshold`` skips
  the memory is dropped so the state is tried again (the policy may have regressed);
* collection continues, pulling more batches, until this rank accepted ``demo_batch_size``
  samples or all ranks together accepted ``early_stop_percentage * demo_batch_size *
  world_size`` (a store/file counter -- no collective, so a rank that accepts nothing never
  blocks the others); output is padded to ``demo_batch_size * K`` episodes with ``valid=False``.

Differences from RIPT, on purpose: rounds use fresh counter keys instead of a racy reset (see
``file_counter``); a rank also stops after ``max_sample_attempts`` sampled groups so a policy that
fails (or succeeds) everywhere cannot spin forever; envs are created lazily per task and reused.
"""
from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import math
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import torch
from tqdm import tqdm

from ript.algos.rl_optimizers.file_counter import GlobalCounter, make_global_counter
from ript.env_runner.rollout_scheduler import EpisodeSpec
from ript.types import Episode
from ript.utils import distributed as du

logger = logging.getLogger(__name__)


def init_state_hash(state: Any) -> str:
    """sha256 of the state's float64 bytes (dtype-stable: float32 copies hash the same)."""
    arr = np.ascontiguousarray(_to_numpy(state), dtype=np.float64).reshape(-1)
    return hashlib.sha256(arr.tobytes()).hexdigest()


def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


@contextlib.contextmanager
def _noise_temperature(model: Any, temperature: float) -> Iterator[None]:
    """Scale the policy's flow noise for the rollouts run inside (``model.noise_temperature``).

    Temperature 1 leaves the model untouched, so policies without the attribute work as before."""
    if temperature == 1.0:
        yield
        return
    if not hasattr(model, "noise_temperature"):
        raise ValueError(f"noise_temperature={temperature}: the policy {type(model).__name__} has no "
                         "noise_temperature attribute to scale its sampling noise; use 1.0")
    before = model.noise_temperature
    model.noise_temperature = float(temperature)
    try:
        yield
    finally:
        model.noise_temperature = before


# --------------------------------------------------------------------------- bookkeeping


@dataclass
class _OpenGroup:
    """A group whose K episodes are queued or running (scheduled collection)."""

    index: int  # draw order within the round: accepted groups are returned in this order
    task_id: int
    task_name: str
    key: str | None  # rollout-stats key of its init state
    episodes: list[Episode | None]


@dataclass
class RoundStats:
    """What happened in one ``generate_rollouts`` call on this rank."""

    samples_checked: int = 0  # samples drawn from the data (including skipped ones)
    groups_run: int = 0  # samples whose K rollouts were actually run
    accepted: int = 0
    skipped_all_success: int = 0  # rollout-stats tracking skips
    dropped_uniform: int = 0  # dynamic sampling drops (all 0 / all 1)
    global_accepted: int = 0  # the cross-rank counter when this rank stopped
    early_stopped: bool = False  # stopped because the global threshold was reached
    hit_attempt_limit: bool = False
    task_rollouts: dict[str, int] = field(default_factory=dict)
    task_successes: dict[str, int] = field(default_factory=dict)

    def record(self, task_name: str, successes: list[bool]) -> None:
        self.task_rollouts[task_name] = self.task_rollouts.get(task_name, 0) + len(successes)
        self.task_successes[task_name] = self.task_successes.get(task_name, 0) + sum(successes)

    def metrics(self) -> dict[str, float]:
        """Scalars under ``rollout/`` (per-task success over every rollout run, accepted or not)."""
        out = {
            "rollout/samples_checked": float(self.samples_checked),
            "rollout/groups_run": float(self.groups_run),
            "rollout/accepted": float(self.accepted),
            "rollout/skipped_all_success": float(self.skipped_all_success),
            "rollout/dropped_uniform": float(self.dropped_uniform),
            "rollout/global_accepted": float(self.global_accepted),
            "rollout/early_stopped": float(self.early_stopped),
        }
        total = sum(self.task_rollouts.values())
        if total:
            out["rollout/train_success_rate"] = sum(self.task_successes.values()) / total
        for name, n in self.task_rollouts.items():
            out[f"rollout/train_success_rate/{name}"] = self.task_successes[name] / n
        return out


class RolloutStatsTracker:
    """Recent successes per init-state hash, and how often each was skipped since."""

    def __init__(self, rloo_batch_size: int, skip_threshold: int = 3) -> None:
        self.k = rloo_batch_size
        self.skip_threshold = skip_threshold  # RIPT's value: retry a state after 3 skips
        self.history: dict[str, list[int]] = {}
        self.skip_counts: dict[str, int] = {}

    def should_skip(self, key: str) -> bool:
        recent = self.history.get(key, [])[-self.k:]
        if len(recent) < self.k or not all(recent):
            return False
        self.skip_counts[key] = self.skip_counts.get(key, 0) + 1
        if self.skip_counts[key] > self.skip_threshold:
            # Forget it: the next time this state comes up, it is rolled out again.
            self.history.pop(key, None)
            self.skip_counts.pop(key, None)
        return True

    def record(self, key: str, successes: list[bool]) -> None:
        hist = self.history.setdefault(key, [])
        hist.extend(int(s) for s in successes)
        del hist[: max(0, len(hist) - 4 * self.k)]  # only the last K matter; keep a little more
        self.skip_counts[key] = 0

    def state_dict(self) -> dict[str, Any]:
        return {"history": {k: list(v) for k, v in self.history.items()},
                "skip_counts": dict(self.skip_counts)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "history" in state:
            self.history = {k: [int(s) for s in v] for k, v in state["history"].items()}
            self.skip_counts = {k: int(v) for k, v in state.get("skip_counts", {}).items()}
        else:  # RIPT-VLA's file layout: a bare {hash: [successes]} mapping
            self.history = {k: [int(s) for s in v] for k, v in state.items()}
            self.skip_counts = {}

    def save(self, path: str) -> None:
        """Atomic write (temp file + rename): a crash never leaves a truncated json behind."""
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".rollout_stats_", suffix=".tmp")
        with os.fdopen(fd, "w") as fh:
            json.dump(self.state_dict(), fh)
        os.replace(tmp, path)


def resolve_stats_path(path: str | None, rank: int, world_size: int) -> str | None:
    """Per-rank stats file: ``{rank}`` in the path is filled in; otherwise, with several ranks,
    ``_rank<r>`` goes before the extension (ranks hold different tasks, so their stats differ)."""
    if path is None:
        return None
    if "{rank}" in path:
        return path.format(rank=rank)
    if world_size <= 1:
        return path
    stem, ext = os.path.splitext(path)
    return f"{stem}_rank{rank}{ext}"


class _BatchCursor:
    """Walks the samples of ``batch``, then of further batches; restarts exhausted iterators."""

    def __init__(self, batch: dict[str, Any], iterator: Iterator | None, dataloader: Any) -> None:
        self.batch, self.iterator, self.dataloader = batch, iterator, dataloader
        self.index = 0

    def _size(self) -> int:
        return len(self.batch["task_id"])

    def next_sample(self) -> tuple[int, str | None, np.ndarray]:
        """(task_id, task_name or None, unpadded init state (D,))."""
        if self.index >= self._size():
            self.batch = self._next_batch()
            self.index = 0
        b, i = self.batch, self.index
        self.index += 1
        states = b["init_state"]["states"]
        state = _to_numpy(states[i]).reshape(-1)
        if "pad_mask" in b["init_state"]:
            state = state[_to_numpy(b["init_state"]["pad_mask"][i]).reshape(-1).astype(bool)]
        names = b.get("task_name")
        return int(_to_numpy(b["task_id"][i])), (names[i] if names is not None else None), state

    def _next_batch(self) -> dict[str, Any]:
        if self.iterator is not None:
            try:
                return next(self.iterator)
            except StopIteration:
                pass
        if self.dataloader is None:
            raise RuntimeError(
                "rollout generator ran out of batches and dataloader=None; pass the dataloader "
                "so the data iterator can be re-created"
            )
        self.iterator = iter(self.dataloader)
        try:
            return next(self.iterator)
        except StopIteration as exc:
            raise RuntimeError("the dataloader yields no batches (empty dataset?)") from exc


# --------------------------------------------------------------------------- generator


class RolloutGenerator:
    """Collects RLOO groups of rollouts from an env runner (RIPT semantics; module docstring).

    Construct it after ``setup_distributed()``: the rank, the world size and the counter
    backend (process-group store vs file) are fixed at construction.

    Args:
        env_runner: has ``create_env(task_name) -> (env, task_id, env_num)`` and
            ``run_policy_in_env(task_name, policy, all_init_states=..., created_env=...)``
            yielding ``(success, total_reward, Episode)`` per init state.
        rloo_batch_size: K, rollouts per init state.
        demo_batch_size: init states (groups) each rank accepts per round.
        early_stop_percentage: every rank stops once all ranks together accepted
            ``ceil(early_stop_percentage * demo_batch_size * world_size)`` groups.
        enable_dynamic_sampling: drop groups whose K successes are all equal.
        task_names_to_use: if given, batches must only hold these tasks (a mismatch means the
            dataset and the generator were configured differently); also maps ``task_id`` to a
            name for batches without ``task_name`` (RIPT's convention).
        use_val_init: ignore the batch's init state and draw one from a held-out pool:
            ``val_init_states[task_name]`` if given, else the dataset's
            ``held_out_states_by_task``, else the runner's ``benchmark.get_task_init_states``.
        mix_val_init_in_rloo: with ``use_val_init``, draw K different held-out states per group
            (no stats tracking for such groups: they have no single init state).
        rollout_stats_path: json file the tracker is loaded from / saved to each round
            (per rank: see :func:`resolve_stats_path`).
        enable_rollout_stats_tracking: skip init states whose last K rollouts all succeeded.
        max_sample_attempts: groups a rank may run per round before giving up on filling its
            quota (default ``10 * demo_batch_size``).
        counter: the cross-rank counter; default :func:`make_global_counter` (process-group
            store under torchrun, a file otherwise).
        cfg_scale: guidance scale of the training rollouts (``algo.cfg_scale``), passed to
            ``run_policy_in_env``; 1 = conditional branch only.
        noise_temperature: scale of the sampler's initial flow noise during training rollouts
            (``algo.rollout_noise_temperature``); > 1 spreads the K rollouts of a group.
    """

    def __init__(
        self,
        env_runner: Any,
        rloo_batch_size: int,
        demo_batch_size: int,
        use_tqdm: bool = True,
        early_stop_percentage: float = 1.0,
        enable_dynamic_sampling: bool = False,
        task_names_to_use: list[str] | None = None,
        use_val_init: bool = False,
        mix_val_init_in_rloo: bool = False,
        rollout_stats_path: str | None = None,
        enable_rollout_stats_tracking: bool = False,
        max_sample_attempts: int | None = None,
        counter: GlobalCounter | None = None,
        val_init_states: dict[str, np.ndarray] | None = None,
        skip_threshold: int = 3,
        seed: int | None = None,
        cfg_scale: float = 1.0,
        noise_temperature: float = 1.0,
    ) -> None:
        self._validate(rloo_batch_size, demo_batch_size, early_stop_percentage,
                       use_val_init, mix_val_init_in_rloo, max_sample_attempts)
        self._validate_sampling(cfg_scale, noise_temperature)
        self.env_runner = env_runner
        self.rloo_batch_size = rloo_batch_size
        self.demo_batch_size = demo_batch_size
        self.use_tqdm = use_tqdm
        self.early_stop_percentage = early_stop_percentage
        self.enable_dynamic_sampling = enable_dynamic_sampling
        self.task_names_to_use = list(task_names_to_use) if task_names_to_use else None
        self.use_val_init = use_val_init
        self.mix_val_init_in_rloo = mix_val_init_in_rloo
        self.enable_rollout_stats_tracking = enable_rollout_stats_tracking
        self.max_sample_attempts = max_sample_attempts or 10 * demo_batch_size
        self.val_init_states = val_init_states
        self.rng = np.random.default_rng(seed)
        # Sampling of the training rollouts (docs/learning.md, issue 20): the guidance scale
        # (algo.cfg_scale; 1 = conditional branch only) and the flow-noise temperature
        # (x_1 = temperature * eps; 1 = the policy's own distribution).
        self.cfg_scale = float(cfg_scale)
        self.noise_temperature = float(noise_temperature)

        # Rank and world size are read once: construct the generator after setup_distributed().
        self.rank, self.world_size = du.get_rank(), du.get_world_size()
        self._owns_counter = counter is None
        self.counter = counter if counter is not None else make_global_counter()
        self.stats_tracker = RolloutStatsTracker(rloo_batch_size, skip_threshold)
        self.rollout_stats_path = resolve_stats_path(rollout_stats_path, self.rank, self.world_size)
        if self.rollout_stats_path and os.path.exists(self.rollout_stats_path):
            with open(self.rollout_stats_path) as fh:
                self.stats_tracker.load_state_dict(json.load(fh))
            logger.info("loaded rollout stats for %d init states from %s",
                        len(self.stats_tracker.history), self.rollout_stats_path)
        self.created_envs: dict[str, tuple[Any, int, int]] = {}
        # Runners with a scheduler (ChunkedRunner) run all groups of a round through it, unless
        # configured lockstep; RIPT-style runners get one run_policy_in_env call per group.
        self._scheduled = (hasattr(env_runner, "make_scheduler")
                           and getattr(env_runner, "scheduler", "continuous") != "lockstep")
        # Rounds run so far: with base_seed it seeds every episode (resets, flow noise), so it is
        # saved in checkpoints.
        self.round_index = 0
        self.base_seed = 0 if seed is None else int(seed)
        self.last_scheduler: Any = None  # the last round's RolloutScheduler (its timing stats)
        self.last_round_stats = RoundStats()
        self.last_data_iterator: Iterator | None = None

    @staticmethod
    def _validate(k: int, demo: int, pct: float, val: bool, mix: bool, attempts: int | None) -> None:
        if k < 1:
            raise ValueError(f"rloo_batch_size={k} must be >= 1 (K rollouts per init state)")
        if demo < 1:
            raise ValueError(f"demo_batch_size={demo} must be >= 1 (init states per round)")
        if not 0.0 < pct <= 1.0:
            raise ValueError(f"early_stop_percentage={pct} must be in (0, 1]")
        if mix and not val:
            raise ValueError("mix_val_init_in_rloo=True needs use_val_init=True (it mixes held-out states)")
        if attempts is not None and attempts < 1:
            raise ValueError(f"max_sample_attempts={attempts} must be >= 1 or None")

    @staticmethod
    def _validate_sampling(cfg_scale: float, noise_temperature: float) -> None:
        if cfg_scale < 0:
            raise ValueError(f"cfg_scale={cfg_scale} must be >= 0 (1.0 = conditional policy only)")
        if noise_temperature <= 0:
            raise ValueError(f"noise_temperature={noise_temperature} must be > 0 (1.0 = the policy's own noise)")

    @property
    def global_threshold(self) -> int:
        """Accepted groups, summed over ranks, at which every rank stops collecting."""
        # ceil: "reaches p * B * W" for a fractional product means the next whole group.
        exact = self.early_stop_percentage * self.demo_batch_size * self.world_size
        return max(1, math.ceil(exact - 1e-9))

    # ------------------------------------------------------------------ public API

    def generate_rollouts(
        self, model: Any, batch: dict[str, Any], data_iterator: Iterator | None, dataloader: Any
    ) -> tuple[list[Episode], list[int], list[bool], int]:
        """One round: ``(episodes, task_ids, valid_mask, samples_checked)``, each list of
        length ``demo_batch_size * rloo_batch_size``, grouped K by K per init state.

        The iterator this round ended with (re-created when exhausted) is
        :attr:`last_data_iterator`; per-task success stats are :attr:`last_round_stats`.
        """
        self.counter.reset()  # a fresh per-round key: nothing shared is zeroed (no race)
        stats = RoundStats()
        self.round_index += 1
        cursor = _BatchCursor(batch, data_iterator, dataloader)
        bar = tqdm(total=self.demo_batch_size, desc=f"rollouts[rank {self.rank}]",
                   disable=not self.use_tqdm, leave=False, dynamic_ncols=True)
        with torch.no_grad():
            if self._scheduled:
                episodes, task_ids = self._collect_scheduled(model, cursor, stats, bar)
            else:
                episodes, task_ids = self._collect_group_by_group(model, cursor, stats, bar)
        bar.close()
        self.last_data_iterator = cursor.iterator
        valid = [True] * len(episodes)
        self._pad(episodes, task_ids, valid)
        self._finish_round(stats)
        return episodes, task_ids, valid, stats.samples_checked

    def state_dict(self) -> dict[str, Any]:
        """Rollout stats and the round counter (it seeds the episodes) for checkpoints (this rank's)."""
        return {"rollout_stats": self.stats_tracker.state_dict(), "round_index": self.round_index}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stats_tracker.load_state_dict(state.get("rollout_stats", {}))
        self.round_index = int(state.get("round_index", self.round_index))

    # ------------------------------------------------------------------ the two collection loops

    def _collect_group_by_group(self, model: Any, cursor: "_BatchCursor", stats: RoundStats,
                                bar: Any) -> tuple[list[Episode], list[int]]:
        """RIPT's loop: one group at a time through ``run_policy_in_env`` (runners without a
        scheduler, and ``scheduler=lockstep``)."""
        episodes: list[Episode] = []
        task_ids: list[int] = []
        while stats.accepted < self.demo_batch_size and not self._should_stop(stats):
            group = self._next_group(cursor, stats, model)
            if group is None:
                continue
            episodes.extend(group[0])
            task_ids.extend([group[1]] * self.rloo_batch_size)
            self._accept(stats, bar)
        return episodes, task_ids

    def _collect_scheduled(self, model: Any, cursor: "_BatchCursor", stats: RoundStats,
                           bar: Any) -> tuple[list[Episode], list[int]]:
        """All groups through one :class:`RolloutScheduler`: every simulator takes the next queued
        episode as its own ends. Groups are queued while ``accepted + open < demo_batch_size``; a
        group is judged (stats, dynamic sampling) when its K-th episode ends, and a dropped one is
        replaced at once. Accepted groups are returned in the order they were drawn, K by K."""
        k = self.rloo_batch_size
        # The episode keys carry the round, so one base seed serves every round.
        scheduler = self.env_runner.make_scheduler(model, cfg_scale=self.cfg_scale, base_seed=self.base_seed)
        self.last_scheduler = scheduler
        open_groups: dict[int, _OpenGroup] = {}
        accepted: list[_OpenGroup] = []
        drawn = 0

        def queue_groups() -> None:
            nonlocal drawn
            while len(accepted) + len(open_groups) < self.demo_batch_size and not self._should_stop(stats):
                sample = self._draw_sample(cursor, stats)
                if sample is None:
                    continue
                task_id, task_name, init_states, key = sample
                group = _OpenGroup(drawn, task_id, task_name, key, [None] * k)
                open_groups[drawn] = group
                for i in range(k):
                    scheduler.submit(EpisodeSpec(task_name, init_states[i], key=(self.round_index, drawn, i)))
                stats.groups_run += 1
                drawn += 1

        with _noise_temperature(model, self.noise_temperature):
            queue_groups()
            for spec, episode in scheduler.run():
                _, group_index, i = spec.key
                group = open_groups[group_index]
                self._label(episode, spec.init_state, group.key)
                group.episodes[i] = episode
                if any(ep is None for ep in group.episodes):
                    continue
                del open_groups[group_index]
                if self._judge(group.task_name, group.key, group.episodes, stats):
                    accepted.append(group)
                    self._accept(stats, bar)
                queue_groups()
        accepted.sort(key=lambda g: g.index)
        episodes = [ep for g in accepted for ep in g.episodes]
        task_ids = [g.task_id for g in accepted for _ in range(k)]
        return episodes, task_ids

    def _accept(self, stats: RoundStats, bar: Any) -> None:
        stats.accepted += 1
        stats.global_accepted = self.counter.add(1)
        bar.update(1)
        bar.set_postfix(global_=f"{stats.global_accepted}/{self.global_threshold}")

    def close(self) -> None:
        """Close created envs and (if this generator made it) the counter."""
        for task_name, (env, _, _) in list(self.created_envs.items()):
            try:
                env.close()
            except Exception as exc:  # noqa: BLE001 - a dying worker must not block shutdown
                logger.warning("closing env for task %s failed: %s", task_name, exc)
        self.created_envs.clear()
        if self._owns_counter:
            self.counter.close()

    cleanup = close  # RIPT's name

    # ------------------------------------------------------------------ one round's steps

    def _should_stop(self, stats: RoundStats) -> bool:
        stats.global_accepted = self.counter.value()
        if stats.global_accepted >= self.global_threshold:
            stats.early_stopped = True
            return True
        if stats.groups_run >= self.max_sample_attempts:
            stats.hit_attempt_limit = True
            logger.warning(
                "rank %d: ran %d groups (max_sample_attempts) but accepted only %d/%d; stopping "
                "this round (dynamic sampling keeps dropping all-0/all-1 groups?)",
                self.rank, stats.groups_run, stats.accepted, self.demo_batch_size,
            )
            return True
        return False

    def _draw_sample(self, cursor: _BatchCursor, stats: RoundStats
                     ) -> tuple[int, str, np.ndarray, str | None] | None:
        """The next sample's ``(task_id, task_name, (K, D) init states, stats key)``; None when
        rollout-stats tracking skips it."""
        task_id, name, state = cursor.next_sample()
        stats.samples_checked += 1
        task_name = self._task_name(task_id, name)
        init_states, key = self._init_states_for(task_id, task_name, state, cursor.dataloader)
        if key is not None and self.enable_rollout_stats_tracking and self.stats_tracker.should_skip(key):
            stats.skipped_all_success += 1
            logger.debug("rank %d: skip all-success init state %s (%s)", self.rank, key[:12], task_name)
            return None
        return task_id, task_name, init_states, key

    def _judge(self, task_name: str, key: str | None, episodes: list[Episode], stats: RoundStats) -> bool:
        """Record a finished group's successes; False when dynamic sampling drops it."""
        successes = [bool(ep.success) for ep in episodes]
        stats.record(task_name, successes)
        if key is not None:
            self.stats_tracker.record(key, successes)
        if self.enable_dynamic_sampling and len(set(successes)) == 1:
            stats.dropped_uniform += 1
            logger.debug("rank %d: drop uniform group %s (%s)", self.rank, successes, task_name)
            return False
        return True

    def _next_group(
        self, cursor: _BatchCursor, stats: RoundStats, model: Any
    ) -> tuple[list[Episode], int] | None:
        """Draw one sample and roll it out; None when it was skipped or dropped."""
        sample = self._draw_sample(cursor, stats)
        if sample is None:
            return None
        task_id, task_name, init_states, key = sample
        stats.groups_run += 1
        episodes = self._run_group(model, task_name, init_states, key)
        if not self._judge(task_name, key, episodes, stats):
            return None
        return episodes, task_id

    def _task_name(self, task_id: int, name: str | None) -> str:
        if name is None:
            if self.task_names_to_use is None or not 0 <= task_id < len(self.task_names_to_use):
                raise ValueError(
                    f"batch has no 'task_name' and task_id={task_id} cannot be mapped through "
                    f"task_names_to_use={self.task_names_to_use}; use collate_init_states"
                )
            return self.task_names_to_use[task_id]
        if self.task_names_to_use is not None and name not in self.task_names_to_use:
            raise ValueError(
                f"batch task_name={name!r} is not in task_names_to_use={self.task_names_to_use}; "
                f"give the dataset and the rollout generator the same task list"
            )
        return name

    def _init_states_for(
        self, task_id: int, task_name: str, state: np.ndarray, dataloader: Any
    ) -> tuple[np.ndarray, str | None]:
        """(K, D) init states for one group and the stats key (None: not trackable)."""
        k = self.rloo_batch_size
        if not self.use_val_init:
            return np.repeat(state[None], k, axis=0), init_state_hash(state)
        pool = self._val_pool(task_id, task_name, dataloader)  # (N, D)
        if self.mix_val_init_in_rloo:
            return pool[self.rng.integers(0, len(pool), size=k)], None
        chosen = pool[int(self.rng.integers(0, len(pool)))]
        return np.repeat(chosen[None], k, axis=0), init_state_hash(chosen)

    def _val_pool(self, task_id: int, task_name: str, dataloader: Any) -> np.ndarray:
        if self.val_init_states is not None and task_name in self.val_init_states:
            return np.asarray(self.val_init_states[task_name])
        dataset = getattr(dataloader, "dataset", None)
        while dataset is not None and not hasattr(dataset, "held_out_states_by_task"):
            dataset = getattr(dataset, "dataset", None)  # unwrap torch Subset and friends
        held = getattr(dataset, "held_out_states_by_task", {}) if dataset is not None else {}
        if task_name in held and len(held[task_name]):
            return np.asarray(held[task_name])
        bench = getattr(self.env_runner, "benchmark", None)
        if bench is not None and hasattr(bench, "get_task_init_states"):
            return np.asarray(bench.get_task_init_states(task_id))  # RIPT's source
        raise ValueError(
            f"use_val_init=True but no held-out init states for task {task_name!r}: pass "
            f"val_init_states, build the dataset with num_val>0, or use a runner with a benchmark"
        )

    def _env_for(self, task_name: str) -> tuple[Any, int, int]:
        # Env creation spawns simulator workers (seconds each): once per task, then reused.
        if task_name not in self.created_envs:
            self.created_envs[task_name] = self.env_runner.create_env(task_name)
        return self.created_envs[task_name]

    def _run_group(
        self, model: Any, task_name: str, init_states: np.ndarray, key: str | None
    ) -> list[Episode]:
        k = self.rloo_batch_size
        # cfg_scale is passed only when it is not the default, so runners written against RIPT's
        # signature (no cfg_scale argument) keep working at cfg 1.
        kwargs = {"cfg_scale": self.cfg_scale} if self.cfg_scale != 1.0 else {}
        with _noise_temperature(model, self.noise_temperature):
            rollouts = self.env_runner.run_policy_in_env(
                task_name, model, all_init_states=init_states, created_env=self._env_for(task_name), **kwargs
            )
            results = list(itertools.islice(rollouts, k))
            if hasattr(rollouts, "close"):
                rollouts.close()
        if len(results) != k:
            raise RuntimeError(
                f"env runner yielded {len(results)} rollouts for task {task_name!r}, expected "
                f"rloo_batch_size={k} (one per init state passed)"
            )
        episodes = []
        for i, (success, total_reward, episode) in enumerate(results):
            episode.success = bool(success)
            episode.total_reward = float(total_reward)
            self._label(episode, init_states[i], key)
            episodes.append(episode)
        return episodes

    @staticmethod
    def _label(episode: Episode, init_state: np.ndarray, key: str | None) -> None:
        if episode.init_state is None:
            episode.init_state = np.asarray(init_state)
        episode.extra["init_hash"] = key

    def _pad(self, episodes: list[Episode], task_ids: list[int], valid: list[bool]) -> None:
        target = self.demo_batch_size * self.rloo_batch_size
        n_pad = target - len(episodes)
        episodes.extend(Episode.padding() for _ in range(n_pad))
        task_ids.extend([-1] * n_pad)  # -1: no task; consumers must honour valid_mask
        valid.extend([False] * n_pad)

    def _finish_round(self, stats: RoundStats) -> None:
        self.last_round_stats = stats
        if self.rollout_stats_path and self.enable_rollout_stats_tracking:
            self.stats_tracker.save(self.rollout_stats_path)
        logger.info(
            "rank %d rollouts: accepted %d/%d, checked %d, ran %d groups, skipped %d, dropped %d, "
            "global %d/%d%s", self.rank, stats.accepted, self.demo_batch_size,
            stats.samples_checked, stats.groups_run, stats.skipped_all_success,
            stats.dropped_uniform, stats.global_accepted, self.global_threshold,
            " (early stop)" if stats.early_stopped else "",
        )
