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


class _StepFailsOnce:
    """A vectorised env whose first ``step`` raises like a crashed simulator worker."""

    def __init__(self, inner, runner):
        self.inner, self.runner = inner, runner

    def step(self, *args, **kwargs):
        if not self.runner.fault_injected:
            self.runner.fault_injected = True
            raise EOFError("injected: the simulator worker died")
        return self.inner.step(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __len__(self):
        return len(self.inner)


class ReachRunnerFaultingOnce(ReachRunner):
    """A reach runner whose first env step of the run fails once; the rebuilt env works."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fault_injected = False

    def _make_vector_env(self, task_name, n):
        env = super()._make_vector_env(task_name, n)
        return env if self.fault_injected else _StepFailsOnce(env, self)
