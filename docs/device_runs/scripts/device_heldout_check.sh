#!/bin/bash
# Why do GPU sweeps of the start score higher than GPU sweeps of RL checkpoints, when on the CPU the
# start, an RL checkpoint and a random step of the same size all score alike (docs/learning_libero.md,
# "The held-out measurement")? One device call on a machine where device_libero_round3.sh has set
# LIBERO up (calls 1 and 2 of that script's header), carrying the slim checkpoints (weights + config,
# 4.6 MB each; made from the final_<run> pieces with ript.training.checkpointing):
#   bash docs/device_runs/scripts/device_heldout_check.sh                            (carry .r3_finals/slim_anc1; ~7 min)
#   SAMPLERS=eager VARIANTS=start bash docs/device_runs/scripts/device_heldout_check.sh  (the next call; ~4 min)
# Every number: the 25 held-out states x env seeds $SEEDS at cfg 1 (~100 s per 100 episodes), written
# to $OUT as it arrives.
#   start_path_<sampler>: the start as bench_learning_libero.py --sweep-from start builds it;
#   <run>_<sampler>.json: diagnose_heldout_drop.py's start / rl / random through the checkpoint's config.
# Reading it: the CPU scored the start 37/100 through both paths and the anchored run 38/100; the GPU
# scored the start 49/100 through its own path and the anchored run 38/100. If the GPU's start through
# the checkpoint's config (or eager) scores ~38, a path or sampler difference made the GPU start number.
# Knobs: SEEDS ("0 1000 2000 3000"), RUNS ("anc1"), SAMPLERS ("cuda_graph"), VARIANTS ("start rl random"), NENV (14).
set -uo pipefail
. docs/device_runs/scripts/gpu_libero_env.sh  # LIBERO from /tmp/gl/site, NVIDIA EGL
OUT=${OUT:-/tmp/heldout_check}; mkdir -p $OUT
SEEDS=${SEEDS:-"0 1000 2000 3000"}; RUNS=${RUNS:-anc1}; SAMPLERS=${SAMPLERS:-cuda_graph}; VARIANTS=${VARIANTS:-"start rl random"}; NENV=${NENV:-14}
START=ript/assets/checkpoints/pi0_small_libero_object_ketchup
[ -d /tmp/gl/site/robosuite ] || { echo "LIBERO is not set up: run device_libero_round3.sh's calls 1 and 2 first"; exit 1; }
for sampler in $SAMPLERS; do
  python3 scripts/bench_learning_libero.py --task 4 --seed 0 --work-dir /tmp/heldout_check_start_$sampler \
    --sft-dir $START --num-envs $NENV --sampler=$sampler --eval-split heldout --eval-states 50 --cfg-scales 1 \
    --eval-seeds $SEEDS --stages sweep --sweep-from start --sweep-name start > $OUT/start_path_$sampler.log 2>&1
  cp /tmp/heldout_check_start_$sampler/results.json $OUT/start_path_$sampler.json
  for run in $RUNS; do
    python3 scripts/diagnose_heldout_drop.py --checkpoint .r3_finals/slim_$run/checkpoints/step_12 --sft-dir $START \
      --sampler $sampler --num-envs $NENV --eval-seeds $SEEDS --variants $VARIANTS --out $OUT/${run}_$sampler.json > $OUT/${run}_$sampler.log 2>&1
    grep -h "diagnose_heldout_drop: " $OUT/${run}_$sampler.log | tail -3
  done
  grep -h "sweep start" $OUT/start_path_$sampler.log
done
