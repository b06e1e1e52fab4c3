"""RIPT training entry point for PI0 with the advantage-weighted CFG flow-matching loss.

    python train_ript_openvla_oft.py                       # embedded default: tiny PI0, one LIBERO task
    torchrun --nproc_per_node=N train_ript_openvla_oft.py task=libero_goal_rl \
        algo.policy.pretrained_path=/ckpt/pi0_libero algo.policy.norm_stats_path=/ckpt/norm_stats.json

The stages: ``setup`` builds everything from the Hydra config (after pre-flight checks), ``train``
runs rollout -> CFG-Flow update -> log -> save -> evaluate, ``cleanup`` closes envs and the group.
"""
from __future__ import annotations

import copy
import logging
import os
import signal
import sys
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from ript.training.config_checks import ConfigError, check_config
from ript.training.loop import TrainingRun, build_training_run, evaluate, train_one_step
from ript.utils.distributed import PeerLostError, cleanup_distributed, peer_failure_reason, setup_distributed

logger = logging.getLogger("train_ript_openvla_oft")

CONFIG_ERROR_EXIT_CODE = 2  # a usage error, as argparse exits; other failures exit 1


class StopRequest:
    """First SIGINT/SIGTERM: finish the current step, save, exit. Second: stop at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = {}

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:  # noqa: ARG002
        if self.requested:
            raise KeyboardInterrupt(f"second signal {signum}: stopping without a final checkpoint")
        self.requested = True
        logger.warning("signal %d: finishing this step, saving a checkpoint, then exiting", signum)


def train(cfg: DictConfig, run: TrainingRun, stop: StopRequest) -> dict[str, Any]:
    """The RIPT loop; returns the final evaluation (empty if evaluation is disabled)."""
    final_eval: dict[str, Any] = {}
    if cfg.rollout.enabled and cfg.rollout.eval_at_start and run.step == 0:
        run.metrics.log(0, evaluate(cfg, run))
    progress = tqdm(total=cfg.training.n_steps, initial=run.step, desc="training steps",
                    disable=run.dist_info.rank != 0, dynamic_ncols=True)
    while run.step < cfg.training.n_steps:
        metrics = train_one_step(cfg, run)
        run.step += 1
        progress.update(1)
        if run.step % cfg.logging.log_every_n_steps == 0:
            run.metrics.log(run.step, metrics)
        last_step = run.step == cfg.training.n_steps
        # training.stop_after_step ends this process after that round without touching the run's
        # schedule (n_steps): a long run in legs, e.g. to evaluate a middle checkpoint.
        leg_end = run.step == cfg.training.get("stop_after_step")
        if cfg.rollout.enabled and (run.step % cfg.rollout.every_n_steps == 0 or last_step):
            final_eval = evaluate(cfg, run)
            run.metrics.log(run.step, final_eval)
        # Saved after the round's evaluation, so a checkpoint's metrics hold every row of its step.
        saved = None
        if run.step % cfg.training.save_every_n_steps == 0 or last_step or leg_end or stop.requested:
            saved = run.save()  # None on ranks > 0, and where the write failed (said in the log)
        if _stop_requested_anywhere(stop):
            logger.warning("stopping at step %d on request (%s)", run.step,
                           "checkpoint saved" if saved is not None or run.dist_info.rank != 0
                           else "checkpoint NOT saved, see above; the previous one is kept")
            break
        if leg_end:
            logger.info("training.stop_after_step=%d reached (checkpoint saved)", run.step)
            break
    progress.close()
    return final_eval


def _stop_requested_anywhere(stop: StopRequest) -> bool:
    """A signal to one rank stops all ranks together at the same step."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return stop.requested
    flag = torch.tensor([float(stop.requested)])
    if torch.distributed.get_backend() == "nccl":
        flag = flag.cuda()
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return bool(flag.item() > 0)


def run_training(cfg: DictConfig) -> dict[str, Any]:
    """setup -> train -> cleanup; usable from Python and tests as well as the Hydra CLI."""
    # A dead or frozen rank fails the next collective within this time instead of hanging forever.
    timeout_s = _collective_timeout_s(cfg)
    try:
        dist_info = setup_distributed(timeout_s=timeout_s)
    except RuntimeError as error:
        reason = peer_failure_reason(error)
        if reason is None:
            raise
        raise PeerLostError(f"rank {os.environ.get('RANK', '?')}: the process group did not form ({reason}) within "
                            f"training.collective_timeout_s={timeout_s}; did every rank start?") from None
    _configure_logging(dist_info.rank)
    stop = StopRequest()
    run = None
    raw_cfg = copy.deepcopy(cfg)  # before resolution: error messages name the key the user sets
    try:
        check_config(cfg, world_size=dist_info.world_size)
        run = build_training_run(cfg, dist_info, raw_cfg=raw_cfg)
        stop.install()
        final_eval = train(cfg, run, stop)
        if dist_info.rank == 0 and final_eval:
            logger.info("final success rate: %s", _format_success(final_eval))
        return final_eval
    except ConfigError:
        raise  # a user error, reported in one line by main(); no traceback
    except RuntimeError as error:
        reason = peer_failure_reason(error) if dist_info.is_distributed else None
        if reason is None:
            logger.exception("rank %d failed; tearing down the process group", dist_info.rank)
            raise
        raise PeerLostError(
            f"rank {dist_info.rank}: a collective failed ({reason}): another rank died or stopped answering "
            f"(training.collective_timeout_s={timeout_s}); see its log"
        ) from None
    except BaseException:
        logger.exception("rank %d failed; tearing down the process group", dist_info.rank)
        raise
    finally:
        stop.uninstall()
        if run is not None:
            run.close()
        cleanup_distributed()


def _collective_timeout_s(cfg: DictConfig) -> float:
    """Read before the pre-flight checks (the process group comes first), so checked here."""
    value = cfg.training.get("collective_timeout_s", 1800.0)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ConfigError(f"training.collective_timeout_s={value!r}: must be a number of seconds > 0, e.g. 600")
    return float(value)


def _format_success(eval_metrics: dict[str, Any]) -> str:
    parts = [f"overall={eval_metrics.get('rollout/overall_success_rate', float('nan')):.3f}"]
    parts += [f"{k.split('/')[-1]}={v:.3f}" for k, v in sorted(eval_metrics.items())
              if k.startswith("rollout/success_rate/")]
    return " ".join(parts)


def _configure_logging(rank: int) -> None:
    level = logging.INFO if rank == 0 else logging.WARNING
    logging.basicConfig(level=level, format=f"[%(asctime)s][rank{rank}][%(name)s][%(levelname)s] %(message)s",
                        force=True)


@hydra.main(version_base=None, config_path="config", config_name="train_base_rl_openvla_oft")
def main(cfg: DictConfig) -> None:
    logger.debug("config:\n%s", OmegaConf.to_yaml(cfg))
    try:
        run_training(cfg)
    except ConfigError as error:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise  # Hydra prints the full traceback
        # stderr directly: logging may not be configured yet, and Hydra would add a traceback.
        sys.stderr.write(f"Config error: {error} (HYDRA_FULL_ERROR=1 shows the traceback)\n")
        sys.exit(CONFIG_ERROR_EXIT_CODE)
    except PeerLostError as error:
        sys.stderr.write(f"Distributed error: {error}\n")
        sys.exit(1)


if __name__ == "__main__":
    main()
