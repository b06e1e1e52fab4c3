#!/usr/bin/env bash
# The README's main job: installs what is missing, then runs CFG-Flow RL on LIBERO-Object's ketchup
# task from the shipped few-demo SFT checkpoint of the small PI0 (experiment=libero_object_ketchup),
# evaluating on held-out init states before and after, and prints both plus the plot's path.
# Extra args are Hydra overrides (e.g. training.n_steps=8). RUN_DIR sets the run directory.
# The random-weights smoke run (tiny PI0, no checkpoint) is `python train_ript_openvla_oft.py`.
set -euo pipefail
repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "${repo_root}/scripts/install.sh"
cd "${repo_root}"
export PYTHONUNBUFFERED=1
python="${PYTHON:-python3}"
run_dir="${RUN_DIR:-outputs/main_job/$(date +%Y-%m-%d_%H-%M-%S)}"
start=${SECONDS}
"${python}" train_ript_openvla_oft.py experiment=libero_object_ketchup "hydra.run.dir=${run_dir}" "$@"
echo "== main job: ${run_dir} ($(( (SECONDS - start) / 60 )) min $(( (SECONDS - start) % 60 )) s)"
"${python}" -m ript.training.run_summary "${run_dir}"
