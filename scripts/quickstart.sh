#!/usr/bin/env bash
# The README's main-job command: installs what is missing, then runs CFG-Flow RL on the embedded
# default (tiny PI0, one LIBERO task; CPU when there is no GPU). Extra args are Hydra overrides.
set -euo pipefail
repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "${repo_root}/scripts/install.sh"
cd "${repo_root}"
export PYTHONUNBUFFERED=1
exec "${PYTHON:-python3}" train_ript_openvla_oft.py "$@"
