"""Shared pytest fixtures."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_fixtures_dir() -> Path:
    """``<repo>/../shared/fixtures`` (parity weights, LIBERO norm stats); RIPT_SHARED_DIR overrides ``<repo>/../shared``."""
    shared = Path(os.environ.get("RIPT_SHARED_DIR", REPO_ROOT.parent / "shared"))
    fixtures = shared / "fixtures"
    if not fixtures.is_dir():
        pytest.fail(f"shared fixtures not found at {fixtures}; set RIPT_SHARED_DIR to the folder holding fixtures/")
    return fixtures

