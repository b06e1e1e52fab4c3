"""Helpers for the end-to-end tests that launch the training CLI as a user does."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from ript.training.run_summary import read_metrics  # noqa: F401 -- re-exported for the CLI tests

REPO_ROOT = Path(__file__).resolve().parents[1]


def run_training_cli(args: list[str], timeout_s: float, launcher: list[str] | None = None,
                     extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``train_ript_openvla_oft.py`` the way a user does (a fresh process, Hydra CLI)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", WANDB_MODE="disabled", **(extra_env or {}))
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    command = (launcher or [sys.executable]) + [str(REPO_ROOT / "train_ript_openvla_oft.py"), *args]
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout_s)
    return result

