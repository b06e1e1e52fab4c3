"""The one place that knows about ``torch.distributed``.

Everything else asks this module for the rank, the device, the unwrapped model or a reduced
metric dict, so the training code reads the same under ``torchrun`` (NCCL on CUDA, gloo on CPU)
and as a plain single process (no process group at all).

Nothing here touches the environment or starts a process group at import time: callers do it
explicitly through :func:`setup_distributed`.
"""
from __future__ import annotations

import datetime
import logging
import os
import re
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

T = TypeVar("T")

# torchrun always exports these four; a plain `python` run has none of them.
_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job."""

    is_distributed: bool  # True when a process group is up (world_size > 1 under torchrun)
    rank: int
    world_size: int
    local_rank: int
    device: torch.device


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ValueError(
            f"environment variable {name}={raw!r} is not an integer; torchrun sets it to the "
            f"process's {name.lower()} -- unset it for a single-process run"
        ) from exc


def is_dist_ready() -> bool:
    """True when a default process group exists (collectives may be used)."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_dist_ready() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_dist_ready() else 1


def is_rank_zero() -> bool:
    return get_rank() == 0


def _pick_device(local_rank: int, device: str | None) -> torch.device:
    if device is not None and device != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        # One GPU per local rank is torchrun's convention.
        return torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
    return torch.device("cpu")


def setup_distributed(
    backend: str | None = None, device: str | None = None, timeout_s: float = 1800.0
) -> DistInfo:
    """Initialise the default process group when launched by torchrun, else run single-process.

    Args:
        backend: "nccl" / "gloo"; default NCCL when the device is CUDA, gloo otherwise.
        device: "auto"/None picks ``cuda:<local_rank>`` when CUDA exists, else CPU.
        timeout_s: collective timeout. Rollout rounds can be long (minutes of simulation between
            two collectives), so the default is generous.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    dev = _pick_device(local_rank, device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)

    if is_dist_ready():  # someone (a test, a launcher) already set the group up: reuse it
        return DistInfo(True, dist.get_rank(), dist.get_world_size(), local_rank, dev)
    if world_size <= 1:
        return DistInfo(False, 0, 1, 0, dev)

    missing = [v for v in (*_TORCHRUN_VARS, "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise RuntimeError(
            f"WORLD_SIZE={world_size} but {missing} are not set; launch with "
            f"`torchrun --nproc_per_node=N ...` or unset WORLD_SIZE for a single process"
        )
    chosen = backend or ("nccl" if dev.type == "cuda" else "gloo")
    dist.init_process_group(
        backend=chosen,
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=timeout_s),
    )
    logger.info(
        "process group up: backend=%s rank=%d/%d local_rank=%d device=%s",
        chosen, rank, world_size, local_rank, dev,
    )
    return DistInfo(True, rank, world_size, local_rank, dev)


def cleanup_distributed() -> None:
    """Tear down the default process group if one is up (safe to call twice)."""
    if is_dist_ready():
        dist.destroy_process_group()


# What gloo / NCCL say when the other end of a collective is gone (killed: the socket closes) or
# stopped answering (frozen, or a network partition: the collective timeout expires).
_PEER_LOST = re.compile(r"closed by peer|reset by peer|broken pipe|timed out|timeout|communicator was aborted",
                        re.IGNORECASE)


class PeerLostError(RuntimeError):
    """A collective failed because another rank died or stopped answering; the message is one line."""


def peer_failure_reason(error: BaseException) -> str | None:
    """One line describing ``error`` if it is a collective that lost a peer, else None."""
    dist_error = getattr(dist, "DistError", ())
    if not isinstance(error, RuntimeError) or not (isinstance(error, dist_error) or _PEER_LOST.search(str(error))):
        return None
    lines = str(error).strip().splitlines()
    first = lines[0] if lines else type(error).__name__
    first = re.sub(r"^\[[^\]]*\]\s*", "", first)  # drop gloo's "[/path/pair.cc:553] " prefix
    return re.split(r"\.\s", first)[0][:300]  # the first sentence; gloo appends advice and an emoji


def unwrap(model: T) -> T:
    """The module under a DDP/FSDP-style wrapper (anything exposing ``.module``), else itself."""
    from torch.nn.parallel import DistributedDataParallel

    inner: Any = model
    while isinstance(inner, DistributedDataParallel) or (
        isinstance(inner, torch.nn.Module) and type(inner).__name__ == "FullyShardedDataParallel"
    ):
        inner = inner.module
    return inner


def barrier() -> None:
    """Barrier across ranks; a no-op without a process group."""
    if is_dist_ready():
        dist.barrier()


def _collective_device() -> torch.device:
    # NCCL only reduces CUDA tensors; gloo wants CPU ones.
    if is_dist_ready() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_mean_dict(metrics: dict[str, float]) -> dict[str, float]:
    """Average scalar metrics across ranks.

    Ranks may report different keys (tasks are split across ranks, so per-task success rates
    exist only on some): each key is averaged over the ranks that reported it. Every rank must
    call this the same number of times (it is a collective). Identity without a process group.
    """
    out = {k: float(v) for k, v in metrics.items()}
    if not is_dist_ready() or dist.get_world_size() == 1:
        return out
    # Agree on the union of keys first, so the reduced vector lines up element by element.
    key_lists: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(key_lists, sorted(out))
    keys = sorted({k for ks in key_lists for k in ks})
    values = torch.zeros(2, len(keys), dtype=torch.float64, device=_collective_device())
    for i, k in enumerate(keys):
        if k in out:
            values[0, i] = out[k]
            values[1, i] = 1.0
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    sums, counts = values.cpu().tolist()
    return {k: s / c for k, s, c in zip(keys, sums, counts) if c > 0}


def broadcast_object(obj: T, src: int = 0) -> T:
    """Rank ``src``'s ``obj`` on every rank (picklable objects); identity without a group."""
    if not is_dist_ready() or dist.get_world_size() == 1:
        return obj
    box = [obj if dist.get_rank() == src else None]
    dist.broadcast_object_list(box, src=src, device=_collective_device())
    return box[0]


def log_rank_zero(log: logging.Logger, msg: str, *args: Any, level: int = logging.INFO) -> None:
    """``log.log(level, msg, *args)`` on rank 0 only (avoids N copies of every line)."""
    if is_rank_zero():
        log.log(level, msg, *args)


class RankZeroFilter(logging.Filter):
    """A logging filter that drops records on ranks other than 0 (attach to console handlers)."""

    def filter(self, record: logging.LogRecord) -> bool:  # noqa: A003 - logging API name
        return is_rank_zero()
