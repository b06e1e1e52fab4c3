"""The pieces of the training entry point: build a run from the config, one RIPT step, evaluation.

Everything is built from Hydra ``_target_`` nodes, so swapping the policy, the runner or the
optimizer is a config change. Tasks are split across ranks (rank r takes tasks r, r+W, ...).
"""
from __future__ import annotations

import logging
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from ript.algos.rl_optimizers.cfg_flow_optimizer_pi0 import stored_start_copies
from ript.datasets.init_state_dataset import collate_init_states
from ript.training.checkpointing import (
    TrainingState,
    capture_rng_state,
    describe_load_error,
    checkpoint_metrics,
    checkpoint_size_bytes,
    estimate_checkpoint_bytes,
    UNREADABLE_CHECKPOINT_ERRORS,
    load_checkpoint,
    load_latest_valid_checkpoint,
    preserved_rng_state,
    restore_rng_state,
    save_checkpoint_or_keep_previous,
)
from ript.training.config_checks import ConfigError, building
from ript.training.fault_injection import install_fault_injection
from ript.training.metrics_logger import MetricsLogger
from ript.utils.distributed import DistInfo, is_dist_ready

logger = logging.getLogger(__name__)


def split_tasks_across_ranks(task_names: list[str], rank: int, world_size: int) -> list[str]:
    """Rank r takes tasks r, r+W, ...; with fewer tasks than ranks, ranks share tasks round-robin."""
    if not task_names:
        raise ValueError("no tasks to train on: task.task_names_to_use selected nothing")
    if len(task_names) < world_size:
        return [task_names[rank % len(task_names)]]
    return task_names[rank::world_size]


class StepBatchStream:
    """An endless stream of init-state batches that is a pure function of (seed, rank, step).

    The rollout generator may pull extra batches (dynamic sampling); because the stream for step N
    is rebuilt from its seed, a resumed run sees exactly the batches an uninterrupted one would.
    """

    def __init__(self, dataset, batch_size: int, seed: int, rank: int, shuffle: bool = True) -> None:
        # Batches never straddle epochs, so a batch larger than the dataset would make
        # for_step spin forever without yielding.
        if not 1 <= batch_size <= len(dataset):
            raise ValueError(
                f"init-state batch_size={batch_size} per rank must be between 1 and the {len(dataset)} "
                "init states this rank holds; lower train_dataloader.batch_size or use more tasks"
            )
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed, self.rank, self.shuffle = seed, rank, shuffle

    def for_step(self, step: int) -> Iterator[dict]:
        rng = np.random.default_rng([self.seed, self.rank, step])
        while True:
            order = rng.permutation(len(self.dataset)) if self.shuffle else np.arange(len(self.dataset))
            for start in range(0, len(order) - self.batch_size + 1, self.batch_size):
                items = [self.dataset[int(i)] for i in order[start : start + self.batch_size]]
                yield collate_init_states(items)


@dataclass
class TrainingRun:
    """Everything the loop touches, built once by :func:`build_training_run`."""

    cfg: DictConfig
    dist_info: DistInfo
    run_dir: Path
    policy: Any
    env_runner: Any
    rollout_generator: Any
    rl_optimizer: Any
    optimizers: list[torch.optim.Optimizer]
    schedulers: list[Any]
    batches: StepBatchStream
    metrics: MetricsLogger
    task_names: list[str]
    step: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def save(self) -> Path | None:
        if self.dist_info.rank != 0:
            return None
        state = TrainingState(
            step=self.step,
            optimizers=[opt.state_dict() for opt in self.optimizers],
            schedulers=[sched.state_dict() for sched in self.schedulers],
            rng=capture_rng_state(),
            rollout_stats=self.rollout_generator.state_dict() if hasattr(self.rollout_generator, "state_dict") else None,
            extra={
                "config": OmegaConf.to_container(self.cfg, resolve=True),
                # The RL optimizer's round counter (seeds its noise draws) and non-finite streak.
                "rl_optimizer": self.rl_optimizer.state_dict() if hasattr(self.rl_optimizer, "state_dict") else None,
            },
        )
        shard_mb = self.cfg.training.get("checkpoint_shard_mb")
        # A failed write (full disk) keeps the previous checkpoint and the run going.
        path = save_checkpoint_or_keep_previous(self.run_dir, self.policy.trainable_state_dict(), state,
                                                keep_last=self.cfg.training.keep_last_checkpoints,
                                                max_file_bytes=None if shard_mb is None else int(shard_mb * 2**20),
                                                metrics_path=self.metrics.path)
        if path is None:
            return None
        budget_mb = self.cfg.training.get("checkpoint_budget_mb")
        size_mb = checkpoint_size_bytes(path) / 2**20
        if budget_mb is not None and size_mb > budget_mb:
            # The run goes on (its checkpoints are complete), but they cannot leave the machine in one
            # transfer: say so on every save rather than discover it when the machine is gone.
            logger.error("checkpoint %s is %.1f MB, over training.checkpoint_budget_mb=%s: it will not fit "
                         "the transfer; train fewer parameters (algo.policy.train_expert_only=true) or lower "
                         "algo.success_replay_per_state", path, size_mb, budget_mb)
        return path

    def close(self) -> None:
        """End of the run: logs, the generator's envs and counter, the runner's pooled workers."""
        self.metrics.close()
        for owner in (self.rollout_generator, self.env_runner):
            close = getattr(owner, "close", None)
            if callable(close):
                close()


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _limit_cpu_threads(cfg: DictConfig, dist_info: DistInfo) -> None:
    """On CPU, torch's default of one thread per core fights the simulator workers for the same
    cores; measured here on 2 cores, the tiny model ran many times slower oversubscribed."""
    if dist_info.device.type != "cpu":
        return
    threads = cfg.training.get("torch_num_threads")
    if threads is None:
        threads = max(1, (os.cpu_count() or 2) // (2 * dist_info.world_size))
    torch.set_num_threads(int(threads))


def build_training_run(cfg: DictConfig, dist_info: DistInfo, raw_cfg: DictConfig | None = None) -> TrainingRun:
    """Dataset -> runner -> policy -> optimizers -> generator -> RL optimizer, then resume.

    Bad input met while building a component (a ValueError/TypeError from its constructor) is
    raised as a :class:`ConfigError` naming the key; ``raw_cfg`` (the config before resolution,
    default ``cfg``) lets the message name the key the user set rather than the interpolated one.
    """
    _seed_everything(cfg.seed + dist_info.rank)
    _limit_cpu_threads(cfg, dist_info)
    if cfg.training.get("deterministic", False):
        torch.use_deterministic_algorithms(True, warn_only=True)
    run_dir = Path(cfg.output_dir)
    raw_cfg = cfg if raw_cfg is None else raw_cfg
    with building(raw_cfg, "task.dataset"):
        all_tasks = instantiate(cfg.task.dataset).task_names
        task_names = split_tasks_across_ranks(list(all_tasks), dist_info.rank, dist_info.world_size)
        dataset = instantiate(cfg.task.dataset, task_names_to_use=task_names)
    _check_parallel_envs(cfg, dataset)
    with building(raw_cfg, "algo.env_runner"):
        env_runner = instantiate(cfg.algo.env_runner, task_names_to_use=task_names)
    with building(raw_cfg, "algo.policy"):
        policy = instantiate(cfg.algo.policy)
    with building(raw_cfg, "algo.optimizer_factory"):
        model_optimizer = instantiate(cfg.algo.optimizer_factory)(params=policy.trainable_params["model"])
    with building(raw_cfg, "algo.header_optimizer_factory"):
        header_optimizer = instantiate(cfg.algo.header_optimizer_factory)(params=policy.trainable_params["header"])
    optimizers = [model_optimizer, header_optimizer]
    with building(raw_cfg, "algo.scheduler_factory"):
        schedulers = [instantiate(cfg.algo.scheduler_factory)(optimizer=opt) for opt in optimizers]
    with building(raw_cfg, "algo.rollout_generator_factory"):
        rollout_generator = instantiate(cfg.algo.rollout_generator_factory)(
            env_runner=env_runner, task_names_to_use=task_names,
            demo_batch_size=cfg.train_dataloader.batch_size // dist_info.world_size,
        )
    with building(raw_cfg, "algo.rl_optimizer_factory"):
        rl_optimizer = instantiate(cfg.algo.rl_optimizer_factory)(
            rollout_generator=rollout_generator, reward_function=instantiate(cfg.algo.reward_function),
        )
    metrics = MetricsLogger(
        run_dir, enabled=dist_info.rank == 0, wandb_mode=cfg.logging.mode, project=cfg.logging.project,
        run_name=cfg.logging.name, config=OmegaConf.to_container(cfg, resolve=True),
    )
    with building(raw_cfg, "train_dataloader"):
        batches = StepBatchStream(dataset, cfg.train_dataloader.batch_size // dist_info.world_size,
                                  seed=cfg.seed, rank=dist_info.rank, shuffle=cfg.train_dataloader.shuffle)
    run = TrainingRun(cfg, dist_info, run_dir, policy, env_runner, rollout_generator, rl_optimizer,
                      optimizers, schedulers, batches, metrics, task_names)
    check_checkpoint_budget(cfg, policy, optimizers)
    install_fault_injection(run)  # test/soak hooks; nothing unless debug.fault_injection lists rounds
    _maybe_resume(run)
    logger.info("rank %d trains on tasks %s; run dir %s", dist_info.rank, task_names, run_dir)
    return run


def check_checkpoint_budget(cfg: DictConfig, policy: Any, optimizers: list[torch.optim.Optimizer]) -> None:
    """``training.checkpoint_budget_mb``: fail before the first round if a checkpoint (trainable
    weights + optimizer moments, at full precision: a resume must be exact; plus a copy of the
    start's trainable weights for ``algo.anchor_output``, and one for ``algo.anchor_l2`` or
    ``algo.track_weight_distance``) cannot fit."""
    budget_mb = cfg.training.get("checkpoint_budget_mb")
    if budget_mb is None:
        return
    params = [p for group in policy.trainable_params.values() for p in group]
    algo = cfg.get("algo", {})
    start_copies = stored_start_copies(float(algo.get("anchor_output", 0.0) or 0.0),
                                       float(algo.get("anchor_l2", 0.0) or 0.0),
                                       bool(algo.get("track_weight_distance", False)))
    start_bytes = start_copies * sum(p.numel() * p.element_size() for p in params)
    estimate_mb = (estimate_checkpoint_bytes(params, optimizers) + start_bytes) / 2**20
    if estimate_mb > budget_mb:
        raise ConfigError(
            f"training.checkpoint_budget_mb={budget_mb!r}: a checkpoint of this run needs at least "
            f"{estimate_mb:.1f} MB ({sum(p.numel() for p in params) / 1e6:.2f} M trainable parameters, their "
            "optimizer moments included); train fewer parameters (algo.policy.freeze_vision_encoder=true, "
            "algo.policy.train_expert_only=true) or raise the budget")
    logger.info("checkpoint estimate %.1f MB (weights + optimizer moments) within training.checkpoint_budget_mb=%s",
                estimate_mb, budget_mb)


def _check_parallel_envs(cfg: DictConfig, dataset: Any) -> None:
    """A rollout round runs ``rloo_batch_size`` episodes of each init state it draws, so a task can
    never fill more than ``rloo_batch_size x`` its init states envs: the extra simulators would
    never run an episode, and on LIBERO each holds ~1.6 GB. (Fewer init states than envs is fine:
    scripts/bench_learning.py runs 3 scenes on rloo_batch_size envs.)"""
    n_envs, rloo = cfg.algo.get("num_parallel_envs"), cfg.algo.get("rloo_batch_size")
    counts = {name: len(states) for name, states in getattr(dataset, "states_by_task", {}).items()}
    if not isinstance(n_envs, int) or not isinstance(rloo, int) or not counts:
        return
    task, fewest = min(counts.items(), key=lambda item: item[1])
    if n_envs > rloo * fewest:
        raise ConfigError(f"algo.num_parallel_envs={n_envs}: more parallel envs than algo.rloo_batch_size x init "
                          f"states of task {task} ({rloo} x {fewest} = {rloo * fewest}), so some would never run "
                          f"an episode; use algo.num_parallel_envs<={rloo * fewest}")


def _maybe_resume(run: TrainingRun) -> None:
    found = _find_checkpoint(run)
    if found is None:
        if run.cfg.training.resume:
            # Rows of an attempt that died before its first checkpoint are logged again.
            run.metrics.restore(None, up_to_step=-1)
        return
    checkpoint_dir, weights, state = found
    _check_same_model(run, checkpoint_dir, weights)
    run.policy.load_trainable_state_dict(weights)
    for optimizer, optimizer_state in zip(run.optimizers, state.optimizers):
        optimizer.load_state_dict(optimizer_state)
    for scheduler, scheduler_state in zip(run.schedulers, state.schedulers):
        scheduler.load_state_dict(scheduler_state)
    if state.rollout_stats is not None and hasattr(run.rollout_generator, "load_state_dict"):
        run.rollout_generator.load_state_dict(state.rollout_stats)
    if state.extra.get("rl_optimizer") is not None and hasattr(run.rl_optimizer, "load_state_dict"):
        run.rl_optimizer.load_state_dict(state.extra["rl_optimizer"])
    if run.dist_info.world_size == 1:
        restore_rng_state(state.rng)  # other ranks keep their own seeded streams
    run.step = state.step
    # metrics.jsonl continues the checkpoint's record: its rows (or, for a checkpoint saved without
    # them, this run dir's) up to the checkpoint's step; later rows are logged again by this run.
    dropped = run.metrics.restore(checkpoint_metrics(checkpoint_dir), up_to_step=run.step)
    logger.info("resumed from %s at step %d (%d metrics rows after it dropped)", checkpoint_dir, run.step, dropped)


def _find_checkpoint(run: TrainingRun) -> tuple[Path, dict[str, torch.Tensor], TrainingState] | None:
    """``training.resume_from`` (must load: it is the user's input) or, with ``training.resume``,
    the newest checkpoint of the run directory that loads (a damaged newest one is skipped)."""
    cfg = run.cfg.training
    resume_from = cfg.get("resume_from")
    if resume_from:
        try:
            weights, state = load_checkpoint(resume_from)
        except FileNotFoundError as error:
            raise ConfigError(f"training.resume_from={str(resume_from)!r}: {error}") from error
        except UNREADABLE_CHECKPOINT_ERRORS as error:
            raise ConfigError(f"training.resume_from={str(resume_from)!r}: unreadable checkpoint "
                              f"({describe_load_error(error)}); pass an intact "
                              "<run_dir>/checkpoints/step_<N>") from error
        return Path(resume_from), weights, state
    if not cfg.resume:
        return None
    found = load_latest_valid_checkpoint(run.run_dir)
    if found is None:
        logger.warning("training.resume=true but no usable checkpoint in %s: starting fresh", run.run_dir)
    return found


def _check_same_model(run: TrainingRun, checkpoint_dir: Path, weights: dict[str, torch.Tensor]) -> None:
    """A checkpoint of another preset / model fails here in one line, not deep in a tensor copy."""
    module = getattr(run.policy, "pi0", None)  # all parameters: a frozen-then-unfrozen one is not foreign
    named = module.named_parameters() if module is not None else run.policy.trainable_state_dict().items()
    params = {name: value.shape for name, value in named}
    unknown = sorted(set(weights) - set(params))
    mismatched = [(k, tuple(v.shape), tuple(params[k])) for k, v in weights.items()
                  if k in params and tuple(v.shape) != tuple(params[k])]
    if not unknown and not mismatched:
        return
    key = "training.resume_from" if run.cfg.training.get("resume_from") else "training.resume"
    what = (f"{len(unknown)} parameters this policy lacks (e.g. {unknown[0]})" if unknown else
            f"{mismatched[0][0]} has shape {mismatched[0][1]}, this policy {mismatched[0][2]}")
    preset = run.cfg.algo.policy.get("preset")
    raise ConfigError(f"{key}={str(checkpoint_dir)!r}: a checkpoint of another model ({what}); resume with the "
                      f"algo.policy settings it was trained with (this run: preset={preset}) or start a new run dir")


def train_one_step(cfg: DictConfig, run: TrainingRun) -> dict[str, Any]:
    """One RIPT round: rollouts + CFG-Flow update (inside the RL optimizer), then the LR schedule."""
    run.policy.train()
    if run.dist_info.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(run.dist_info.device)
    started = time.perf_counter()
    rebuilds_before = env_rebuilds(run.env_runner)
    retries_before = env_fault_count(run.env_runner, "episode_retries")
    data_iterator = run.batches.for_step(run.step)
    batch = next(data_iterator)
    metrics = run.rl_optimizer.optimize(run.policy, batch, run.optimizers, data_iterator, run.batches)
    for scheduler in run.schedulers:
        scheduler.step()
    metrics = dict(metrics)
    # Recovered faults leave no dropped episode (rollout/env_faults stays 0); count the rebuilds,
    # summed over ranks, so a long run's simulator health is in metrics.jsonl.
    metrics["rollout/env_rebuilds"] = float(sum(_gather_from_ranks(env_rebuilds(run.env_runner) - rebuilds_before)))
    retries = env_fault_count(run.env_runner, "episode_retries") - retries_before
    metrics["rollout/episode_retries"] = float(sum(_gather_from_ranks(retries)))
    metrics["train/step_time_s"] = time.perf_counter() - started
    metrics["train/lr_model"] = run.optimizers[0].param_groups[0]["lr"]
    metrics["train/lr_header"] = run.optimizers[1].param_groups[0]["lr"]
    if run.dist_info.device.type == "cuda":
        peak_gib = torch.cuda.max_memory_allocated(run.dist_info.device) / 2**30
        for rank, rank_peak in enumerate(_gather_from_ranks(peak_gib)):
            metrics[f"train/peak_gpu_memory_gib/rank{rank}"] = rank_peak
    if cfg.training.get("log_param_checksum", False):
        metrics.update(_param_checksums_across_ranks(run))
    return metrics


def env_rebuilds(env_runner: Any) -> int:
    """Simulator envs the runner has rebuilt after a fault so far (0 for runners that do not count)."""
    return env_fault_count(env_runner, "env_recreated")


def env_fault_count(env_runner: Any, key: str) -> int:
    """One of the runner's fault counters so far (``episode_retries``: episodes started again after
    their simulator failed); 0 for runners that do not count."""
    counts = getattr(env_runner, "fault_counts", None)
    return int(counts.get(key, 0)) if counts is not None else 0


def _param_checksums_across_ranks(run: TrainingRun) -> dict[str, float]:
    """Replicas must stay identical: gradients averaged exactly once, same update on every rank."""
    with torch.no_grad():
        checksum = sum(float(p.double().sum()) for group in run.policy.trainable_params.values() for p in group)
    per_rank = _gather_from_ranks(checksum)
    return {
        "train/param_checksum": checksum,
        "train/param_checksum_max_rank_diff": max(per_rank) - min(per_rank),
    }


def evaluate(cfg: DictConfig, run: TrainingRun) -> dict[str, Any]:
    """Each rank evaluates its own tasks; results are merged so rank zero logs every task."""
    run.policy.eval()
    rebuilds_before = env_rebuilds(run.env_runner)
    with preserved_rng_state():
        local = run.env_runner.run(
            run.policy, n_video=cfg.rollout.n_video, do_tqdm=run.dist_info.rank == 0,
            cfg_scale=cfg.rollout.cfg_scale, num_trials_per_task=cfg.rollout.num_trials_per_task,
            init_states_by_task=eval_init_states(cfg, run),
        )
    local = dict(local, **{"rollout/num_env_rebuilds": env_rebuilds(run.env_runner) - rebuilds_before})
    run.policy.train()
    merged = merge_eval_results(_gather_from_ranks(local))
    # The named protocol (eval=<name>) next to the runner's execution protocol (replan_5_of_50).
    merged["rollout/eval_protocol"] = str(cfg.rollout.get("protocol", "training"))
    return merged


def eval_init_states(cfg: DictConfig, run: TrainingRun) -> dict[str, Any] | None:
    """``rollout.init_states``: ``shipped`` (None: the runner's shipped states, first
    ``num_trials_per_task`` of them) or ``heldout`` (the init-state dataset's held-out split, which
    RL never trains on; ``task.dataset.num_val`` or ``val_fraction`` sets its size)."""
    mode = cfg.rollout.get("init_states", "shipped")
    if mode == "shipped":
        return None
    held_out = getattr(run.batches.dataset, "held_out_states_by_task", None) or {}
    missing = [name for name in run.task_names if len(held_out.get(name, ())) == 0]
    if missing:
        raise ValueError(f"rollout.init_states={mode!r} but the dataset holds no states out for {missing}; "
                         "set task.dataset.num_val (or val_fraction) > 0")
    return {name: held_out[name] for name in run.task_names}


def _gather_from_ranks(obj: Any) -> list[Any]:
    """Every rank's ``obj`` in rank order (just ``[obj]`` without a process group)."""
    if not is_dist_ready():
        return [obj]
    gathered: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, obj)
    return gathered


def merge_eval_results(per_rank: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-task rates from every rank; the overall rate is the episode-weighted mean.

    A task evaluated on several ranks (fewer tasks than ranks) gets the mean of their rates: every
    rank runs the same number of trials per task, so that is its episode-weighted rate too.
    Env-fault and env-rebuild counts are summed so no rank's faults disappear from the log.
    """
    merged: dict[str, Any] = {}
    per_task: dict[str, list[float]] = {}
    total_episodes, total_successes, faults, rebuilds = 0, 0.0, 0, 0
    for result in per_rank:
        episodes = int(result.get("rollout/num_episodes", 0))
        total_episodes += episodes
        total_successes += float(result.get("rollout/overall_success_rate", 0.0)) * episodes
        faults += int(result.get("rollout/num_env_faults", 0))
        rebuilds += int(result.get("rollout/num_env_rebuilds", 0))
        for key, value in result.items():
            if key.startswith("rollout/success_rate/"):
                per_task.setdefault(key, []).append(float(value))
        for key in ("rollout/protocol", "rollout/cfg_scale"):
            if key in result:
                merged[key] = result[key]
    merged.update({key: sum(rates) / len(rates) for key, rates in per_task.items()})
    merged["rollout/num_episodes"] = total_episodes
    merged["rollout/num_env_faults"] = faults
    merged["rollout/num_env_rebuilds"] = rebuilds
    merged["rollout/overall_success_rate"] = total_successes / max(total_episodes, 1)
    return merged
