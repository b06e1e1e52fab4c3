"""``builtin:<name>`` resolution of the files shipped in ``ript/assets``."""
from __future__ import annotations

from pathlib import Path

import pytest

from ript.utils.assets import (
    CHECKPOINTS_DIR,
    NORM_STATS_DIR,
    bundled_checkpoints,
    resolve_checkpoint_path,
    resolve_norm_stats_path,
)


def test_norm_stats_names():
    assert resolve_norm_stats_path("builtin:libero") == str(NORM_STATS_DIR / "libero_norm_stats.json")
    # a bundled checkpoint's name gives that checkpoint's own stats
    name = "pi0_small_libero_object_ketchup"
    assert resolve_norm_stats_path(f"builtin:{name}") == str(CHECKPOINTS_DIR / name / "norm_stats.json")
    assert resolve_norm_stats_path("/some/file.json") == "/some/file.json"
    with pytest.raises(FileNotFoundError, match="reach"):
        resolve_norm_stats_path("builtin:nope")


def test_checkpoint_names():
    assert "pi0_small_libero_object_ketchup" in bundled_checkpoints()
    resolved = Path(resolve_checkpoint_path("builtin:pi0_small_libero_object_ketchup"))
    assert resolved.is_dir() and (resolved / "model.safetensors").is_file()
    assert resolve_checkpoint_path(None) is None
    assert resolve_checkpoint_path("/ckpt/pi0_libero") == "/ckpt/pi0_libero"
    with pytest.raises(FileNotFoundError, match="pi0_small_libero_object_ketchup"):
        resolve_checkpoint_path("builtin:nope")


def test_assets_are_package_data():
    # setup.py ships ript/assets/**/* ; the checkpoint must live under it to be installed
    setup = (Path(__file__).resolve().parents[3] / "setup.py").read_text()
    assert '"ript": ["assets/**/*"]' in setup
    assert CHECKPOINTS_DIR.is_relative_to(Path(__file__).resolve().parents[3] / "ript" / "assets")
