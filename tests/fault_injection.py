"""Test-only components that fail on purpose, plugged in through Hydra ``_target_`` overrides."""
from __future__ import annotations

import os

from ript.env_runner.reach_runner import ReachRunner


class RunnerFailingOnRank1(ReachRunner):
    """A reach runner whose construction raises on rank 1 only (rank 0 proceeds normally)."""

    def __init__(self, *args, **kwargs):
        if int(os.environ.get("RANK", "0")) == 1:
            raise RuntimeError("injected failure on rank 1")
        super().__init__(*args, **kwargs)


def kill_env_worker(env, index: int) -> int:
    """SIGKILL worker ``index`` of a runner's env (our own child process); return its pid.

    The next request to that worker fails like a crashed simulator (EOF on its pipe).
    """
    import signal
    import time

    pid = env.worker_pids()[index]
    os.kill(pid, signal.SIGKILL)
    time.sleep(0.5)  # let the kernel close the worker's end of the pipe
    return pid
