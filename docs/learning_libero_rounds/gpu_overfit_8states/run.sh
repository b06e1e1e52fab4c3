#!/bin/bash
# The overfit test on the H200 (docs/learning_libero.md): the CPU test's script
# (docs/learning_libero_rounds/cpu_overfit_4states/run.sh) with 8 fixed training init states (K 8 = 64
# episodes a round, twice the CPU test's), 14 simulators, the CUDA-graph sampler, 14 rounds (~28 s a
# round), and lr 1e-5, 4 epochs, labels not clipped built in.
# Run it in a device call on a machine where docs/device_runs/scripts/device_libero_round3.sh has set
# LIBERO up (LIBERO in /tmp/gl/site, the carried demo pack under /tmp/r3/in/gpu_inputs/):
#   bash docs/learning_libero_rounds/gpu_overfit_8states/run.sh alpha0 --rl-override algo.cfg_uncond_weight=0
# Output: $OUT/<name>.metrics.jsonl and $OUT/<name>.log; 14 rounds fit in one 600 s call (WALL_S 535);
# with algo.anchor_output (a second forward pass for the start's velocities) ~40 s a round: ROUNDS=12.
set -uo pipefail
. docs/device_runs/scripts/gpu_libero_env.sh  # LIBERO from /tmp/gl/site, NVIDIA EGL
name=$1; shift
OUT=${OUT:-/tmp/overfit_gpu}; mkdir -p $OUT
export STATES=8 NENV=14 ROUNDS=${ROUNDS:-14} SAVE_EVERY=50 SAMPLER=cuda_graph WORK_ROOT=/tmp/overfit \
  PACK=/tmp/r3/in/gpu_inputs/libero_object_task4_10demos.npz
timeout ${WALL_S:-535} bash docs/learning_libero_rounds/cpu_overfit_4states/run.sh $name \
  --rl-lr 1e-5 --num-epochs 4 --rl-override algo.clip_labels=false "$@"
echo "rc $?"
cp /tmp/overfit/$name.log $OUT/$name.log
cp /tmp/overfit/$name/rl/metrics.jsonl $OUT/$name.metrics.jsonl
