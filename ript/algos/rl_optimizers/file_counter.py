"""Cross-rank counter behind RIPT's global early stop.

Each rank adds the number of init states it accepted; every rank stops collecting once the
global total reaches a threshold. RIPT-VLA keeps that number in a file under /tmp guarded by a
lock, which only works when all ranks share one filesystem. Here:

* :class:`StoreCounter` -- when a process group is up, the number lives in the group's
  key-value store (``store.add`` is atomic on the store's server), so ranks on different nodes
  see the same count and nobody blocks on a collective.
* :class:`FileCounter` -- for a single process (or ranks on one node that prefer a file), a
  JSON file updated under ``fcntl.flock`` (atomic read-modify-write); removed at exit.

Rounds instead of resets: RIPT zeroes the shared counter at the start of every rollout round,
which races with a faster rank that has already started adding for the new round. Here every
rank counts its own rounds (all ranks call :meth:`GlobalCounter.reset` once per round, so their
round numbers agree) and each round uses a fresh key that starts at 0 -- a reset writes nothing
shared, so it cannot erase anybody's increments. Keys older than ``keep_rounds`` rounds are
deleted; ranks are kept within one round of each other by the optimizer's collectives, so the
default of 2 never deletes a key a slow rank still reads.

The module name is the one RIPT-VLA's design uses.
"""
from __future__ import annotations

import abc
import atexit
import fcntl
import json
import logging
import os
import tempfile
from typing import Any, Literal

logger = logging.getLogger(__name__)

CounterBackend = Literal["auto", "store", "file"]


class GlobalCounter(abc.ABC):
    """A per-round integer shared by all ranks."""

    def __init__(self, keep_rounds: int = 2) -> None:
        if keep_rounds < 1:
            raise ValueError(f"keep_rounds={keep_rounds} must be >= 1 (older rounds are pruned)")
        self.keep_rounds = keep_rounds
        self.round = 0

    @abc.abstractmethod
    def add(self, n: int = 1) -> int:
        """Atomically add ``n`` to this round's count; return the new total."""

    @abc.abstractmethod
    def value(self) -> int:
        """This round's count (every rank's additions so far)."""

    def reset(self) -> None:
        """Start a new round whose count is 0. Every rank must call it once per round."""
        self.round += 1
        stale = self.round - self.keep_rounds - 1
        if stale >= 0:
            self._drop_round(stale)

    @abc.abstractmethod
    def _drop_round(self, round_idx: int) -> None:
        """Forget a finished round's count (best effort)."""

    def close(self) -> None:
        """Release resources (files); the counter must not be used afterwards."""


class StoreCounter(GlobalCounter):
    """Counter in a ``torch.distributed`` key-value store (default: the process group's)."""

    def __init__(self, store: Any = None, name: str = "early_stop", keep_rounds: int = 2) -> None:
        super().__init__(keep_rounds)
        if store is None:
            import torch.distributed as dist

            if not (dist.is_available() and dist.is_initialized()):
                raise RuntimeError(
                    "StoreCounter(store=None) needs an initialised process group for its "
                    "key-value store; call setup_distributed() first or use FileCounter"
                )
            store = dist.distributed_c10d._get_default_store()
        self.store = store
        # The name keeps two counters in one job (e.g. train and eval) from sharing keys.
        self.prefix = f"ript/global_counter/{name}"

    def _key(self, round_idx: int) -> str:
        return f"{self.prefix}/round{round_idx}"

    def add(self, n: int = 1) -> int:
        return int(self.store.add(self._key(self.round), int(n)))

    def value(self) -> int:
        # add(key, 0) reads without blocking; store.get would wait for a key nobody set yet.
        return int(self.store.add(self._key(self.round), 0))

    def _drop_round(self, round_idx: int) -> None:
        try:
            self.store.delete_key(self._key(round_idx))
        except (RuntimeError, NotImplementedError):  # e.g. FileStore lacks delete on old torch
            pass

    def close(self) -> None:
        # Keys die with the process group's store; deleting them here could race a slower rank
        # still reading its last round.
        pass


class FileCounter(GlobalCounter):
    """Counter in a JSON file ``{"<round>": count}`` updated under an exclusive ``flock``.

    Args:
        path: the shared file. None creates a fresh temporary file owned by this process.
        owner: remove the file at :meth:`close` / interpreter exit. Defaults to True when this
            instance created the file.
    """

    def __init__(self, path: str | None = None, owner: bool | None = None, keep_rounds: int = 2) -> None:
        super().__init__(keep_rounds)
        created = path is None
        if path is None:
            fd, path = tempfile.mkstemp(prefix="ript_counter_", suffix=".json")
            with os.fdopen(fd, "w") as fh:
                fh.write("{}")
        elif not os.path.exists(path):
            raise FileNotFoundError(
                f"counter file path={path!r} does not exist; create it on one process with "
                f"FileCounter() and pass its .path to the others"
            )
        self.path = path
        self.owner = created if owner is None else owner
        self._closed = False
        if self.owner:
            atexit.register(self.close)

    def _update(self, round_idx: int, delta: int, drop: bool = False) -> int:
        """Read-modify-write under an exclusive lock; returns the round's new count."""
        with open(self.path, "r+") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                text = fh.read()
                counts: dict[str, int] = json.loads(text) if text.strip() else {}
                key = str(round_idx)
                if drop:
                    counts.pop(key, None)
                    total = 0
                else:
                    total = counts.get(key, 0) + int(delta)
                    counts[key] = total
                fh.seek(0)
                fh.truncate()
                fh.write(json.dumps(counts))
                # flush before unlocking so the next lock holder reads the new value (no fsync:
                # readers share the page cache; durability across crashes is not needed)
                fh.flush()
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        return total

    def add(self, n: int = 1) -> int:
        return self._update(self.round, n)

    def value(self) -> int:
        with open(self.path) as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_SH)
            try:
                text = fh.read()
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        counts = json.loads(text) if text.strip() else {}
        return int(counts.get(str(self.round), 0))

    def _drop_round(self, round_idx: int) -> None:
        self._update(round_idx, 0, drop=True)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.owner:
            try:
                os.remove(self.path)
            except FileNotFoundError:
                pass


def make_global_counter(
    backend: CounterBackend = "auto", name: str = "early_stop", path: str | None = None
) -> GlobalCounter:
    """The counter fitting the current process layout.

    ``auto``: the process-group store when a group with several ranks is up, else a file.
    ``file`` under a process group: rank 0 creates the file and broadcasts its path (all ranks
    must call this together -- it is a collective; the ranks must share a filesystem).
    """
    from ript.utils import distributed as du

    if backend not in ("auto", "store", "file"):
        raise ValueError(f"counter backend={backend!r} is not one of 'auto', 'store', 'file'")
    multi = du.is_dist_ready() and du.get_world_size() > 1
    if backend == "store" or (backend == "auto" and multi):
        return StoreCounter(name=name)
    if multi:
        mine = FileCounter(path) if du.is_rank_zero() else None
        shared = du.broadcast_object(mine.path if mine is not None else None)
        return mine if mine is not None else FileCounter(shared, owner=False)
    return FileCounter(path)
