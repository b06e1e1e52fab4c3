#!/usr/bin/env bash
# Idempotent installer: system libraries for headless rendering, then this package and its deps.
# Safe to run again: every step checks first and skips what is already there.
set -euo pipefail
repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python_bin=${PYTHON:-python3}

# Headless rendering for LIBERO/MuJoCo without a display: Mesa EGL (osmesa as the fallback).
apt_packages=(libegl1 libegl-mesa0 libgl1 libosmesa6)
missing=()
for pkg in "${apt_packages[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null 2>&1; then
    sudo_cmd=""; [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
    echo "[install] apt packages missing: ${missing[*]}"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}"
  else
    echo "[install] WARNING: no apt-get; make sure EGL (libegl1, Mesa) or OSMesa is installed" >&2
  fi
fi

# PyTorch: keep an existing install (e.g. a CUDA build on a GPU machine); otherwise take the
# pinned release so that pip does not pick an arbitrary multi-GB build.
if ! "$python_bin" -c "import torch" >/dev/null 2>&1; then
  echo "[install] installing torch"
  "$python_bin" -m pip install -q "torch==${TORCH_VERSION:-2.13.0}"
fi

if ! "$python_bin" -c "import ript, openpi_pytorch_ori, hydra, libero, pytest, xdist" >/dev/null 2>&1 \
   || [ "${FORCE_REINSTALL:-0}" = 1 ]; then
  echo "[install] installing ript-pi0 and its dependencies"
  "$python_bin" -m pip install -q -e "${repo_root}[test]"
fi

# Exact pins of setup.py (mujoco==3.2.3: the simulator openpi's numbers came from). pip keeps an
# already-installed package of another version when nothing forces it, so check each pin whose
# marker applies and install the pinned version over a mismatch.
mismatched=$("$python_bin" - "${repo_root}/setup.py" <<'PY'
import re
import sys
from importlib.metadata import PackageNotFoundError, version

from packaging.requirements import Requirement

pattern = r"'([A-Za-z0-9_.-]+==[^']+)'" + '|' + r'"([A-Za-z0-9_.-]+==[^"]+)"'
for single, double in re.findall(pattern, open(sys.argv[1]).read()):
    req = Requirement(single or double)
    if req.marker is not None and not req.marker.evaluate():
        continue
    try:
        installed = version(req.name)
    except PackageNotFoundError:
        installed = None
    if installed is None or installed not in req.specifier:
        print(f"{req.name}{req.specifier}")
PY
)
if [ -n "${mismatched}" ]; then
  for pin in ${mismatched}; do
    echo "[install] ${pin%%=*} is not at the pinned version; installing ${pin}"
    "$python_bin" -m pip install -q "${pin}"
  done
fi
echo "[install] done"
