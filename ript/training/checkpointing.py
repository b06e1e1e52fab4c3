"""Training checkpoints: atomic writes, keep-last-N, and everything a resume needs.

A checkpoint is a directory ``<run_dir>/checkpoints/step_<N>/`` holding
* ``trainable.safetensors``: the trainable PI0 weights (what training changes),
* ``state.pt``: both optimizers, both schedulers, the step counter, RNG states, rollout stats.

Each directory is written under a temporary name and renamed into place, so a run killed mid-save
leaves either the previous checkpoint or the new one, never a half-written one.
"""
from __future__ import annotations

import contextlib
import errno
import logging
import pickle
import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

logger = logging.getLogger(__name__)

_STEP_DIR = re.compile(r"^step_(\d+)$")
WEIGHTS_FILE = "trainable.safetensors"
STATE_FILE = "state.pt"


def capture_rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def preserved_rng_state() -> Iterator[None]:
    """Run a block (e.g. evaluation) without moving the training RNG streams, so a resumed run
    and an uninterrupted one draw the same numbers whether or not they evaluated in between."""
    state = capture_rng_state()
    try:
        yield
    finally:
        restore_rng_state(state)


@dataclass
class TrainingState:
    """What a resume restores besides the weights."""

    step: int
    optimizers: list[dict]
    schedulers: list[dict]
    rng: dict[str, Any]
    rollout_stats: dict[str, Any] | None
    extra: dict[str, Any]


def checkpoint_root(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints, oldest first (temporary directories are ignored)."""
    root = checkpoint_root(run_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    checkpoints = list_checkpoints(run_dir)
    return checkpoints[-1] if checkpoints else None


def save_checkpoint(
    run_dir: str | os.PathLike,
    weights: dict[str, torch.Tensor],
    state: TrainingState,
    keep_last: int = 3,
) -> Path:
    """Write ``step_<N>`` atomically, then delete all but the newest ``keep_last``."""
    root = checkpoint_root(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final_dir = root / f"step_{state.step}"
    tmp_dir = root / f".tmp_step_{state.step}_{os.getpid()}"
    for leftover in root.glob(".tmp_step_*"):  # from a run killed mid-save
        shutil.rmtree(leftover, ignore_errors=True)
    tmp_dir.mkdir()
    save_file({k: v.contiguous() for k, v in weights.items()}, str(tmp_dir / WEIGHTS_FILE))
    torch.save(state.__dict__, tmp_dir / STATE_FILE)
    if final_dir.exists():
        shutil.rmtree(final_dir)
    os.replace(tmp_dir, final_dir)
    for old in list_checkpoints(run_dir)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    logger.info("saved checkpoint %s", final_dir)
    return final_dir


def load_checkpoint(checkpoint_dir: str | os.PathLike) -> tuple[dict[str, torch.Tensor], TrainingState]:
    checkpoint_dir = Path(checkpoint_dir)
    weights_path, state_path = checkpoint_dir / WEIGHTS_FILE, checkpoint_dir / STATE_FILE
    if not weights_path.is_file() or not state_path.is_file():
        raise FileNotFoundError(
            f"{checkpoint_dir} is not a training checkpoint (expected {WEIGHTS_FILE} and {STATE_FILE}); "
            "pass training.resume_from=<run_dir>/checkpoints/step_<N>"
        )
    weights = load_file(str(weights_path))
    raw_state = torch.load(state_path, map_location="cpu", weights_only=False)
    return weights, TrainingState(**raw_state)


# What reading a damaged checkpoint raises: a short or garbled safetensors header, a truncated zip
# (torch.save's format), a truncated pickle, a state dict of another version.
UNREADABLE_CHECKPOINT_ERRORS = (SafetensorError, RuntimeError, EOFError, pickle.UnpicklingError, OSError,
                                KeyError, TypeError, ValueError)


def save_checkpoint_or_keep_previous(
    run_dir: str | os.PathLike,
    weights: dict[str, torch.Tensor],
    state: TrainingState,
    keep_last: int = 3,
) -> Path | None:
    """:func:`save_checkpoint`, but a write that fails (a full disk, a quota, an I/O error) does
    not end the run: the partial temporary directory is removed, the previous checkpoint is left
    as it was (it is only deleted after a newer one is in place), and one line says so. Returns
    None when nothing was written; training goes on and the next save tries again."""
    try:
        return save_checkpoint(run_dir, weights, state, keep_last=keep_last)
    except OSError as error:
        for partial in checkpoint_root(run_dir).glob(f".tmp_step_{state.step}_{os.getpid()}"):
            shutil.rmtree(partial, ignore_errors=True)  # give the space back
        previous = latest_checkpoint(run_dir)
        reason = errno.errorcode.get(error.errno, type(error).__name__) if error.errno else type(error).__name__
        kept = f"the previous checkpoint {previous} is intact" if previous else "no earlier checkpoint exists"
        logger.error("checkpoint step_%d not written (%s: %s); %s; training continues",
                     state.step, reason, error.strerror or error, kept)
        return None


def load_latest_valid_checkpoint(
    run_dir: str | os.PathLike,
) -> tuple[Path, dict[str, torch.Tensor], TrainingState] | None:
    """The newest checkpoint of ``run_dir`` that loads, with its contents; None if there is none.

    A checkpoint damaged on disk after it was written (a truncated file, a disk error) is skipped
    with a warning, and the one resumed from is named in the same line, so a resume loses the
    rounds since the previous checkpoint instead of failing the run."""
    unreadable: list[str] = []
    for checkpoint in reversed(list_checkpoints(run_dir)):
        try:
            weights, state = load_checkpoint(checkpoint)
        except (FileNotFoundError, *UNREADABLE_CHECKPOINT_ERRORS) as error:
            unreadable.append(f"{checkpoint.name} ({type(error).__name__}: {' '.join(str(error).split())[:200]})")
            continue
        if unreadable:
            logger.warning("unreadable checkpoint(s) %s; resuming from the previous one, %s",
                           ", ".join(unreadable), checkpoint)
        return checkpoint, weights, state
    if unreadable:
        logger.warning("no readable checkpoint in %s (unreadable: %s): starting fresh",
                       checkpoint_root(run_dir), ", ".join(unreadable))
    return None
