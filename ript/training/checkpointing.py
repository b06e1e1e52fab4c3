"""Training checkpoints: atomic writes, keep-last-N, and everything a resume needs.

A checkpoint is a directory ``<run_dir>/checkpoints/step_<N>/`` holding
* ``trainable.safetensors``: the trainable PI0 weights (what training changes),
* ``state.pt``: both optimizers, both schedulers, the step counter, RNG states, rollout stats,
* ``metrics.jsonl``: the run's metrics rows up to this step, so a resume (on another machine, in
  another directory) continues the same record: rows logged after the checkpoint are dropped.

With ``max_file_bytes`` (``training.checkpoint_shard_mb``) a file larger than that is stored as
byte pieces ``<name>.part001of003`` ...: a transfer that limits each file's size (the GPU
machine returns files of at most 16 MB) carries the checkpoint unchanged, and loading joins them
back, bit-exact. Nothing is compressed or converted.

Each directory is written under a temporary name and renamed into place, so a run killed mid-save
leaves either the previous checkpoint or the new one, never a half-written one.
"""
from __future__ import annotations

import contextlib
import errno
import io
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
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save_file

logger = logging.getLogger(__name__)

_STEP_DIR = re.compile(r"^step_(\d+)$")
WEIGHTS_FILE = "trainable.safetensors"
STATE_FILE = "state.pt"
METRICS_FILE = "metrics.jsonl"
_PART = re.compile(r"^(?P<name>.+)\.part(?P<index>\d{3})of(?P<count>\d{3})$")


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
    max_file_bytes: int | None = None,
    metrics_path: str | os.PathLike | None = None,
) -> Path:
    """Write ``step_<N>`` atomically, then delete all but the newest ``keep_last``.

    ``max_file_bytes``: split every larger file into pieces of at most that size (None: never).
    ``metrics_path``: the run's metrics.jsonl, copied in (a resume restores the record from it).
    """
    root = checkpoint_root(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final_dir = root / f"step_{state.step}"
    tmp_dir = root / f".tmp_step_{state.step}_{os.getpid()}"
    for leftover in root.glob(".tmp_step_*"):  # from a run killed mid-save
        shutil.rmtree(leftover, ignore_errors=True)
    tmp_dir.mkdir()
    save_file({k: v.contiguous() for k, v in weights.items()}, str(tmp_dir / WEIGHTS_FILE))
    torch.save(state.__dict__, tmp_dir / STATE_FILE)
    if metrics_path is not None and Path(metrics_path).is_file():
        shutil.copyfile(metrics_path, tmp_dir / METRICS_FILE)
    if max_file_bytes is not None:
        for path in sorted(tmp_dir.iterdir()):
            split_file(path, max_file_bytes)
    if final_dir.exists():
        shutil.rmtree(final_dir)
    os.replace(tmp_dir, final_dir)
    for old in list_checkpoints(run_dir)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    logger.info("saved checkpoint %s (%.1f MB)", final_dir, checkpoint_size_bytes(final_dir) / 2**20)
    return final_dir


def split_file(path: Path, max_bytes: int) -> list[Path]:
    """``path`` larger than ``max_bytes`` -> ``<name>.part001ofN`` pieces (the original removed)."""
    if max_bytes < 1:
        raise ValueError(f"max_bytes={max_bytes} must be >= 1")
    size = path.stat().st_size
    if size <= max_bytes:
        return [path]
    count = -(-size // max_bytes)
    if count > 999:
        raise ValueError(f"{path.name} ({size} bytes) would need {count} pieces of {max_bytes} bytes (at most 999); "
                         "raise training.checkpoint_shard_mb")
    pieces = []
    with path.open("rb") as source:
        for index in range(1, count + 1):
            piece = path.with_name(f"{path.name}.part{index:03d}of{count:03d}")
            piece.write_bytes(source.read(max_bytes))
            pieces.append(piece)
    path.unlink()
    return pieces


def _has_file(directory: Path, name: str) -> bool:
    return (directory / name).is_file() or any(directory.glob(f"{name}.part001of*"))


def read_checkpoint_file(directory: str | os.PathLike, name: str) -> bytes:
    """A checkpoint file's bytes, whole or joined from its pieces; an incomplete set is an error."""
    directory = Path(directory)
    if (directory / name).is_file():
        return (directory / name).read_bytes()
    pieces = sorted(p for p in directory.glob(f"{name}.part*") if (m := _PART.match(p.name)) and m["name"] == name)
    counts = {int(_PART.match(p.name)["count"]) for p in pieces}
    indices = [int(_PART.match(p.name)["index"]) for p in pieces]
    if len(counts) != 1 or indices != list(range(1, next(iter(counts)) + 1)):
        raise FileNotFoundError(
            f"{directory}: pieces of {name} are incomplete ({[p.name for p in pieces]}); copy every "
            f"{name}.partXXXofNNN file of the checkpoint")
    return b"".join(p.read_bytes() for p in pieces)


def checkpoint_size_bytes(checkpoint_dir: str | os.PathLike) -> int:
    """Bytes on disk of one checkpoint (what a transfer of it moves)."""
    return sum(p.stat().st_size for p in Path(checkpoint_dir).iterdir() if p.is_file())


def checkpoint_metrics(checkpoint_dir: str | os.PathLike) -> str | None:
    """The metrics.jsonl rows saved with a checkpoint (None for checkpoints written without them)."""
    checkpoint_dir = Path(checkpoint_dir)
    if not _has_file(checkpoint_dir, METRICS_FILE):
        return None
    return read_checkpoint_file(checkpoint_dir, METRICS_FILE).decode()


def estimate_checkpoint_bytes(params: list[torch.nn.Parameter], optimizers: list[torch.optim.Optimizer]) -> int:
    """Trainable weights plus optimizer state, before any step has created the state: Adam-family
    optimizers (``betas`` in their defaults) keep two moments per weight, momentum SGD one.
    The success-replay buffer and the config add to it (measured after each save)."""
    weight_bytes = sum(p.numel() * p.element_size() for p in params)
    state_bytes = 0
    for optimizer in optimizers:
        per_weight = 2 if "betas" in optimizer.defaults else int(bool(optimizer.defaults.get("momentum")))
        state_bytes += per_weight * sum(p.numel() * p.element_size()
                                        for group in optimizer.param_groups for p in group["params"])
    return weight_bytes + state_bytes


def load_checkpoint(checkpoint_dir: str | os.PathLike) -> tuple[dict[str, torch.Tensor], TrainingState]:
    checkpoint_dir = Path(checkpoint_dir)
    if not _has_file(checkpoint_dir, WEIGHTS_FILE) or not _has_file(checkpoint_dir, STATE_FILE):
        raise FileNotFoundError(
            f"{checkpoint_dir} is not a training checkpoint (expected {WEIGHTS_FILE} and {STATE_FILE}); "
            "pass training.resume_from=<run_dir>/checkpoints/step_<N>"
        )
    weights = load_safetensors_bytes(read_checkpoint_file(checkpoint_dir, WEIGHTS_FILE))
    raw_state = torch.load(io.BytesIO(read_checkpoint_file(checkpoint_dir, STATE_FILE)), map_location="cpu",
                           weights_only=False)
    return weights, TrainingState(**raw_state)


def save_evaluation_copy(checkpoint_dir: str | os.PathLike, run_dir: str | os.PathLike) -> Path:
    """``<run_dir>/checkpoints/step_<N>`` with the trained weights and the config alone: what an
    evaluation needs (``scripts/eval_cfg_sweep.py``, ``bench_learning_libero.py --sweep-from``), a
    fraction of a full checkpoint (no optimizer moments, replay buffer or anchor copies), so that a
    finished run's weights leave a GPU machine in one small file pair. It cannot resume a run."""
    weights, state = load_checkpoint(checkpoint_dir)
    if state.extra.get("config") is None:
        raise ValueError(f"{checkpoint_dir}/{STATE_FILE} has no extra['config']: an evaluation copy needs "
                         "the config that rebuilds the policy")
    slim = TrainingState(step=state.step, optimizers=[], schedulers=[], rng={}, rollout_stats=None,
                         extra={"config": state.extra["config"]})
    return save_checkpoint(run_dir, weights, slim, keep_last=1)


def is_training_checkpoint(path: str | os.PathLike) -> bool:
    """A ``step_<N>`` directory (whole files or pieces), as opposed to PI0 weights."""
    path = Path(path)
    return path.is_dir() and _has_file(path, WEIGHTS_FILE) and _has_file(path, STATE_FILE)


# What reading a damaged checkpoint raises: a short or garbled safetensors header, a truncated zip
# (torch.save's format), a truncated pickle, a state dict of another version.
UNREADABLE_CHECKPOINT_ERRORS = (SafetensorError, RuntimeError, EOFError, pickle.UnpicklingError, OSError,
                                KeyError, TypeError, ValueError)


def save_checkpoint_or_keep_previous(
    run_dir: str | os.PathLike,
    weights: dict[str, torch.Tensor],
    state: TrainingState,
    keep_last: int = 3,
    **save_options: Any,
) -> Path | None:
    """:func:`save_checkpoint`, but a write that fails (a full disk, a quota, an I/O error) does
    not end the run: the partial temporary directory is removed, the previous checkpoint is left
    as it was (it is only deleted after a newer one is in place), and one line says so. Returns
    None when nothing was written; training goes on and the next save tries again.
    ``save_options``: :func:`save_checkpoint`'s (``max_file_bytes``, ``metrics_path``)."""
    try:
        return save_checkpoint(run_dir, weights, state, keep_last=keep_last, **save_options)
    except OSError as error:
        for partial in checkpoint_root(run_dir).glob(f".tmp_step_{state.step}_{os.getpid()}"):
            shutil.rmtree(partial, ignore_errors=True)  # give the space back
        previous = latest_checkpoint(run_dir)
        reason = errno.errorcode.get(error.errno, type(error).__name__) if error.errno else type(error).__name__
        kept = f"the previous checkpoint {previous} is intact" if previous else "no earlier checkpoint exists"
        logger.error("checkpoint step_%d not written (%s: %s); %s; training continues",
                     state.step, reason, error.strerror or error, kept)
        return None


def describe_load_error(error: BaseException) -> str:
    """``Type: message`` on one line, at most 200 characters of message: a damaged file's error can
    be a page of bytes, and it goes into a log line or a config error."""
    return f"{type(error).__name__}: {' '.join(str(error).split())[:200]}"


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
            unreadable.append(f"{checkpoint.name} ({describe_load_error(error)})")
            continue
        if unreadable:
            logger.warning("unreadable checkpoint(s) %s; resuming from the previous one, %s",
                           ", ".join(unreadable), checkpoint)
        return checkpoint, weights, state
    if unreadable:
        logger.warning("no readable checkpoint in %s (unreadable: %s): starting fresh",
                       checkpoint_root(run_dir), ", ".join(unreadable))
    return None
