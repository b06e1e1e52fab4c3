#!/usr/bin/env bash
# The README's test command: installs what is missing, then runs the whole suite on CPU.
set -euo pipefail
repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "${repo_root}/scripts/install.sh"
cd "${repo_root}"
export PYTHONUNBUFFERED=1
# One worker per core (pytest-xdist), a test file's tests on one worker (they share module fixtures:
# LIBERO envs, models). PYTEST_WORKERS=0 runs in this process.
exec "${PYTHON:-python3}" -m pytest tests -q -p no:cacheprovider --durations=15 \
  -n "${PYTEST_WORKERS:-auto}" --dist loadfile "$@"
