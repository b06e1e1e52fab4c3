"""Shared pytest fixtures."""
from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES_DIR = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """``tests/fixtures``: the PI0 parity weights and LIBERO norm stats (see its README)."""
    return FIXTURES_DIR



@pytest.fixture(autouse=True, scope="module")
def single_torch_thread():
    """The suite's models are tiny and gain nothing from intra-op threads; on a shared 2-core box
    OpenMP spin-waiting made them up to 50x slower (and timings swing with the machine's other
    load). One thread per test module, restored afterwards; a training run started in-process sets
    its own (ript.training.loop)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
