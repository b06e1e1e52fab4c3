#!/usr/bin/env bash
# One-GPU/CPU smoke test of the whole loop: tiny PI0 (or pass algo.policy.preset=full ...),
# one LIBERO task, 2 parallel envs, short episodes, 2 optimisation steps, evaluation at the end.
# Checks that 50-step chunks are generated and executed and windows are built, with no key/shape errors.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PYTHONUNBUFFERED=1
run_dir=${RUN_DIR:-runs/smoke_$(date +%Y%m%d_%H%M%S)}
python3 train_ript_openvla_oft.py task=libero_smoke training.n_steps=2 \
  algo.rloo_batch_size=2 algo.num_parallel_envs=2 task.max_episode_length=50 \
  rollout.num_trials_per_task=2 logging.mode=disabled hydra.run.dir="$run_dir" "$@"
test -s "$run_dir/metrics.jsonl"
ls "$run_dir"/checkpoints/step_2/trainable.safetensors >/dev/null
echo "smoke test OK: $run_dir"
