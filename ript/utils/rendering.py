"""Headless OpenGL backend selection for MuJoCo / robosuite (LIBERO).

robosuite reads ``MUJOCO_GL`` when it is first imported, and PyOpenGL reads
``PYOPENGL_PLATFORM`` likewise, so :func:`configure_headless_rendering` must run before anything
imports ``libero``/``robosuite``. It never runs at import time of this module.

Order: a user's explicit choice wins; else EGL (NVIDIA's driver on GPU machines, Mesa's
software EGL on CPU machines); else OSMesa. Each candidate is probed in a subprocess that
creates a real MuJoCo GL context, because a shared library that loads can still fail to give a
context (no device, missing DRI driver), and a failed probe must not poison this process's GL
state.
"""
from __future__ import annotations

import functools
import logging
import os
import subprocess
import sys
from typing import Callable

logger = logging.getLogger(__name__)

# The backends we choose between automatically, in preference order.
_CANDIDATES = ("egl", "osmesa")

# PyOpenGL's platform name for each MuJoCo backend (glfw needs no override).
_PYOPENGL_FOR = {"egl": "egl", "osmesa": "osmesa"}

_INSTALL_HINT = (
    "install an offscreen OpenGL backend: on Debian/Ubuntu "
    "`apt-get install -y libegl1 libegl-mesa0 libgl1` (EGL; also what NVIDIA GPUs use) or "
    "`apt-get install -y libosmesa6` (OSMesa); or set MUJOCO_GL yourself (e.g. MUJOCO_GL=glfw "
    "with a display)"
)

# Child-process probe: a real context, made current, is the only trustworthy test.
_PROBE_CODE = """
import mujoco
ctx = mujoco.GLContext(16, 16)
ctx.make_current()
ctx.free()
"""

# Fallback probe when mujoco itself is not importable: can the library at least be loaded?
_LIBS = {"egl": ("libEGL.so.1", "libEGL.so"), "osmesa": ("libOSMesa.so.8", "libOSMesa.so.6", "libOSMesa.so")}


def _ctypes_probe(backend: str) -> bool:
    import ctypes

    for name in _LIBS.get(backend, ()):
        try:
            ctypes.CDLL(name)
            return True
        except OSError:
            continue
    return False


def probe_backend(backend: str, timeout_s: float = 60.0) -> bool:
    """True if a MuJoCo GL context can be created with ``MUJOCO_GL=backend`` (in a subprocess)."""
    env = dict(os.environ, MUJOCO_GL=backend)
    if backend in _PYOPENGL_FOR:
        env["PYOPENGL_PLATFORM"] = _PYOPENGL_FOR[backend]
    try:
        import importlib.util

        has_mujoco = importlib.util.find_spec("mujoco") is not None
    except (ImportError, ValueError):
        has_mujoco = False
    if not has_mujoco:
        return _ctypes_probe(backend)
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _PROBE_CODE],
            env=env, capture_output=True, timeout=timeout_s, check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        logger.debug("GL probe for %s failed to run: %s", backend, exc)
        return False
    if proc.returncode != 0:
        tail = proc.stderr.decode(errors="replace").strip().splitlines()[-1:]
        logger.debug("GL probe for %s failed: %s", backend, tail)
    return proc.returncode == 0


@functools.lru_cache(maxsize=None)
def _cached_probe(backend: str) -> bool:
    # Probing costs ~0.5 s (a Python start-up); the answer cannot change within one process.
    return probe_backend(backend)


def configure_headless_rendering(probe: Callable[[str], bool] | None = None) -> str:
    """Set ``MUJOCO_GL`` (and ``PYOPENGL_PLATFORM``) for offscreen rendering; return the backend.

    * ``MUJOCO_GL`` already set: kept as is; ``PYOPENGL_PLATFORM`` filled in to match if unset.
    * only ``PYOPENGL_PLATFORM`` set (egl/osmesa): ``MUJOCO_GL`` follows it.
    * neither: the first of egl, osmesa whose probe succeeds.

    Args:
        probe: ``backend -> works?``; defaults to a cached subprocess probe (tests inject one).

    Raises:
        RuntimeError: neither EGL nor OSMesa works; the message says what to install.
    """
    user_gl = os.environ.get("MUJOCO_GL", "").strip().lower()
    user_pyopengl = os.environ.get("PYOPENGL_PLATFORM", "").strip().lower()
    if user_gl:
        if not user_pyopengl and user_gl in _PYOPENGL_FOR:
            os.environ["PYOPENGL_PLATFORM"] = _PYOPENGL_FOR[user_gl]
        logger.info("rendering: using user-set MUJOCO_GL=%s", user_gl)
        return user_gl
    if user_pyopengl in _CANDIDATES:
        os.environ["MUJOCO_GL"] = user_pyopengl
        logger.info("rendering: MUJOCO_GL=%s (follows user-set PYOPENGL_PLATFORM)", user_pyopengl)
        return user_pyopengl

    check = probe or _cached_probe
    for backend in _CANDIDATES:
        if check(backend):
            os.environ["MUJOCO_GL"] = backend
            os.environ["PYOPENGL_PLATFORM"] = _PYOPENGL_FOR[backend]
            logger.info("rendering: MUJOCO_GL=%s (auto-detected)", backend)
            return backend
    raise RuntimeError(
        f"no headless OpenGL backend works (tried MUJOCO_GL in {list(_CANDIDATES)}); "
        f"{_INSTALL_HINT}"
    )


def worker_thread_env() -> dict[str, str]:
    """Environment for simulator worker processes: one render/BLAS thread each.

    Measured on a 2-core machine: two LIBERO workers took 1.1 s per vectorised step with default
    threading and 0.39 s with these set -- llvmpipe (LP_) and BLAS thread pools oversubscribe
    the cores otherwise.
    """
    return {
        "LP_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
    }
