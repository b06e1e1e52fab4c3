"""Headless GL backend choice: user overrides win, egl before osmesa, a helpful error."""
from __future__ import annotations

import importlib.util
import os

import pytest

from ript.utils.rendering import configure_headless_rendering, worker_thread_env


@pytest.fixture
def clean_gl_env():
    saved = {k: os.environ.get(k) for k in ("MUJOCO_GL", "PYOPENGL_PLATFORM")}
    for k in saved:
        os.environ.pop(k, None)
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _never(backend: str) -> bool:
    raise AssertionError(f"probed {backend} although the user chose")


def test_user_mujoco_gl_is_respected(clean_gl_env):
    os.environ["MUJOCO_GL"] = "osmesa"
    assert configure_headless_rendering(probe=_never) == "osmesa"
    assert os.environ["PYOPENGL_PLATFORM"] == "osmesa"  # filled in to match


def test_user_pyopengl_platform_is_respected(clean_gl_env):
    os.environ["PYOPENGL_PLATFORM"] = "egl"
    assert configure_headless_rendering(probe=_never) == "egl"
    assert os.environ["MUJOCO_GL"] == "egl"


def test_egl_preferred_then_osmesa(clean_gl_env):
    assert configure_headless_rendering(probe=lambda b: True) == "egl"
    for k in ("MUJOCO_GL", "PYOPENGL_PLATFORM"):
        os.environ.pop(k)
    assert configure_headless_rendering(probe=lambda b: b == "osmesa") == "osmesa"
    assert os.environ["MUJOCO_GL"] == os.environ["PYOPENGL_PLATFORM"] == "osmesa"


def test_nothing_works_says_what_to_install(clean_gl_env):
    with pytest.raises(RuntimeError) as err:
        configure_headless_rendering(probe=lambda b: False)
    assert "libegl1 libegl-mesa0 libgl1" in str(err.value) and "libosmesa6" in str(err.value)
    assert "MUJOCO_GL" not in os.environ


@pytest.mark.skipif(importlib.util.find_spec("mujoco") is None, reason="mujoco not installed")
def test_real_probe_finds_a_backend(clean_gl_env):
    # This machine has Mesa's EGL (the README's install step provides it).
    assert configure_headless_rendering() in ("egl", "osmesa")


def test_worker_thread_env_pins_one_thread():
    env = worker_thread_env()
    assert set(env) == {"LP_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"}
    assert set(env.values()) == {"1"}
