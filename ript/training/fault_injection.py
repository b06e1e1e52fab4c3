"""Faults injected on purpose, for the fault tests and ``scripts/soak.py`` only.

Everything here is driven by the ``debug.fault_injection`` config group, whose lists are empty by
default: a normal run installs nothing. Faults that come from outside the trainer (SIGTERM,
SIGKILL, a damaged checkpoint file, a killed simulator worker or rank) are the soak's job and
need no hook. The two here happen inside a round:

* ``nonfinite_loss_rounds``: in each listed round the first mini-batch's losses are multiplied by
  NaN, the way a bad batch or an overflow would poison them; the optimizer must skip that step.
* ``checkpoint_write_fails_rounds``: the checkpoint written after each listed round fails half-way
  with ``OSError(ENOSPC)``, as on a full disk; the previous checkpoint must survive.

Rounds count from 1 (the round that ends with ``run.step == r``). A resumed run that repeats a
round meets its fault again, so a run with faults stays a deterministic function of its config.
"""
from __future__ import annotations

import errno
import logging
import os
from typing import Any

from omegaconf import OmegaConf

from ript.training import checkpointing

logger = logging.getLogger(__name__)


def _rounds(cfg: Any, key: str) -> set[int]:
    rounds = OmegaConf.select(cfg, f"debug.fault_injection.{key}", default=None) or []
    if isinstance(rounds, int) or not all(isinstance(r, int) and not isinstance(r, bool) for r in rounds):
        raise ValueError(f"debug.fault_injection.{key}={rounds!r}: must be a list of round numbers, e.g. [3, 7]")
    return set(rounds)


def install_fault_injection(run: Any) -> None:
    """Wrap ``run``'s policy loss and checkpoint save for the configured rounds (no-op by default)."""
    nonfinite = _rounds(run.cfg, "nonfinite_loss_rounds")
    write_fails = _rounds(run.cfg, "checkpoint_write_fails_rounds")
    if nonfinite:
        _poison_first_loss_of(run, nonfinite)
    if write_fails:
        _fail_checkpoint_writes_after(run, write_fails)
    if nonfinite or write_fails:
        logger.warning("fault injection on: non-finite loss in rounds %s, failed checkpoint writes after rounds %s",
                       sorted(nonfinite), sorted(write_fails))


def _poison_first_loss_of(run: Any, rounds: set[int]) -> None:
    original = run.policy.cfg_flow_losses
    poisoned_in: set[int] = set()  # per process: a repeated round (after a resume) is poisoned again

    def cfg_flow_losses(batch, *args, **kwargs):
        out = original(batch, *args, **kwargs)
        current = run.step + 1  # run.step counts finished rounds
        if current in rounds and current not in poisoned_in:
            poisoned_in.add(current)
            logger.warning("fault injection: non-finite loss in round %d", current)
            out = dict(out, losses_pos=out["losses_pos"] * float("nan"))
        return out

    run.policy.cfg_flow_losses = cfg_flow_losses


def _fill_the_disk(tensors: dict, filename: str, *args, **kwargs) -> None:
    """Write half a file, then fail the way a full disk does."""
    with open(filename, "wb") as handle:
        handle.write(b"\0" * (sum(t.numel() * t.element_size() for t in tensors.values()) // 2))
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)


def _fail_checkpoint_writes_after(run: Any, rounds: set[int]) -> None:
    original = run.save

    def save():
        if run.step not in rounds:
            return original()
        logger.warning("fault injection: the checkpoint write after round %d meets a full disk", run.step)
        real_save_file = checkpointing.save_file
        checkpointing.save_file = _fill_the_disk
        try:
            return original()
        finally:
            checkpointing.save_file = real_save_file

    run.save = save
