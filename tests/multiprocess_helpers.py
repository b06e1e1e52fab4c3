"""Helpers for tests that run several processes (ranks of a gloo group, concurrent writers)."""
from __future__ import annotations

import multiprocessing as mp
import socket
from typing import Any, Callable, Sequence

DEFAULT_TIMEOUT_S = 120


def free_port() -> int:
    """A free TCP port on the loopback interface (for a gloo rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_forked(target: Callable[..., None], args_per_proc: Sequence[tuple], timeout_s: float = DEFAULT_TIMEOUT_S,
               with_results: bool = False) -> dict[Any, Any]:
    """Run ``target(*args)`` in one forked process per ``args`` tuple; fail on a hang or an error.

    fork, not spawn: a spawned child re-imports torch (seconds each on 2 cores); the parent has
    started no process group or threads the children could inherit half-locked. With
    ``with_results`` a shared dict is appended to each call's arguments and returned.
    """
    ctx = mp.get_context("fork")
    results = ctx.Manager().dict() if with_results else None
    procs = [ctx.Process(target=target, args=(*args, results) if with_results else args) for args in args_per_proc]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout_s)
    hung = [proc for proc in procs if proc.is_alive()]
    for proc in hung:
        proc.terminate()
    assert not hung, f"{len(hung)} process(es) hung: a collective deadlocked or a rank never finished"
    assert [proc.exitcode for proc in procs] == [0] * len(procs), [proc.exitcode for proc in procs]
    return dict(results) if with_results else {}
