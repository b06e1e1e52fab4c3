"""The cross-rank counter never loses an increment, and rounds start from zero.

Both backends are exercised by real concurrent processes: the flock file (several processes on
one machine) and the process-group store (a 3-process gloo group, as under torchrun).
"""
from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist

from multiprocess_helpers import free_port, run_forked
from ript.algos.rl_optimizers.file_counter import (
    FileCounter,
    StoreCounter,
    make_global_counter,
)

N_PROCS = 4
ADDS_PER_PROC = 400


def _file_worker(path: str, n: int) -> None:
    counter = FileCounter(path, owner=False)
    for _ in range(n):
        counter.add(1)


def test_file_counter_concurrent_processes_lose_nothing():
    counter = FileCounter()
    run_forked(_file_worker, [(counter.path, ADDS_PER_PROC)] * N_PROCS)
    assert counter.value() == N_PROCS * ADDS_PER_PROC
    counter.close()


def test_file_counter_add_returns_total_and_rounds_reset():
    counter = FileCounter()
    assert counter.add(2) == 2
    assert counter.add(3) == 5
    counter.reset()  # new round: a fresh key, starts at zero
    assert counter.value() == 0
    assert counter.add(1) == 1
    counter.close()


def test_file_counter_prunes_old_rounds():
    counter = FileCounter(keep_rounds=2)
    for _ in range(10):
        counter.add(1)
        counter.reset()
    with open(counter.path) as fh:
        text = fh.read()
    # Rounds 0..7 were dropped; only the last keep_rounds (+ the current) can remain.
    assert '"0"' not in text and '"7"' not in text
    counter.close()


def test_file_counter_close_removes_owned_file_only():
    owner = FileCounter()
    other = FileCounter(owner.path, owner=False)
    other.close()
    assert os.path.exists(owner.path)
    owner.close()
    assert not os.path.exists(owner.path)
    owner.close()  # idempotent


def test_file_counter_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        FileCounter(str(tmp_path / "nope.json"))


def test_store_counter_without_group_is_a_clear_error():
    assert not dist.is_initialized()
    with pytest.raises(RuntimeError, match="process group"):
        StoreCounter()


def test_make_global_counter_single_process_uses_file():
    counter = make_global_counter()
    assert isinstance(counter, FileCounter)
    counter.close()
    with pytest.raises(ValueError, match="backend"):
        make_global_counter("redis")  # type: ignore[arg-type]


def _store_worker(rank: int, world: int, port: int, n: int) -> None:
    torch.set_num_threads(1)  # forked child: keep ATen off the parent's OpenMP pool
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    try:
        counter = make_global_counter()  # auto -> the group's store
        assert isinstance(counter, StoreCounter), type(counter)
        for _ in range(n):
            counter.add(1)
        dist.barrier()
        assert counter.value() == world * n, counter.value()
        dist.barrier()
        counter.reset()  # every rank enters round 1: its key starts at zero
        assert counter.value() == 0
        dist.barrier()  # nobody adds to round 1 before everyone has seen it start at zero
        counter.add(rank + 1)
        dist.barrier()
        assert counter.value() == sum(range(1, world + 1))
        counter.close()
    finally:
        dist.destroy_process_group()


def test_store_counter_concurrent_gloo_ranks_lose_nothing():
    world, port = 3, free_port()
    run_forked(_store_worker, [(r, world, port, ADDS_PER_PROC) for r in range(world)])
