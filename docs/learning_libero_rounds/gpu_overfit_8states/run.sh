#!/bin/bash
# The overfit test on the H200 (docs/learning_libero.md): CFG-Flow RL on 8 fixed training init states
# (K 8 = 64 episodes a round, 14 simulators), the shipped 10-demo ketchup start; training success per
# round is the policy's own success on those 8 states (fresh flow noise every round). Twice the CPU
# test's episodes a round (docs/learning_libero_rounds/cpu_overfit_4states/run.sh), ~28 s a round.
# Run it in a device call on a machine where docs/device_runs/scripts/device_libero_round3.sh has set
# LIBERO up (its repo copy is /tmp/r3/repo, the carried demo pack /tmp/r3/in/gpu_inputs/...):
#   bash docs/learning_libero_rounds/gpu_overfit_8states/run.sh alpha0 --rl-override algo.cfg_uncond_weight=0
# Output: $OUT/<name>.metrics.jsonl (and .log); 14 rounds fit in one 600 s call.
set -uo pipefail
export PYTHONPATH=$PWD:/tmp/gl/site MUJOCO_GL=egl PYOPENGL_PLATFORM=egl OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
vendor=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
[ -f $vendor ] && export __EGL_VENDOR_LIBRARY_FILENAMES=$vendor
name=$1; shift
OUT=${OUT:-/tmp/overfit_gpu}; mkdir -p $OUT
# max_states_per_task 16, num_val 8: the training split is 8 of the first 16 shipped states, all 8 every round.
timeout ${WALL_S:-535} python3 scripts/bench_learning_libero.py --task 4 --seed 0 --work-dir /tmp/ovf8_$name \
  --sft-dir ript/assets/checkpoints/pi0_small_libero_object_ketchup --num-envs 14 --stages rl --sampler=cuda_graph \
  --rl-steps ${ROUNDS:-14} --save-every 50 --init-states-per-round 8 --rloo 8 --mini-batch-size 16 \
  --rl-lr 1e-5 --num-epochs 4 --rl-override algo.policy.train_expert_only=true \
  --rl-override algo.episode_weighting=episode --rl-override algo.clip_labels=false \
  --rl-override ++task.dataset.max_states_per_task=16 --rl-override ++task.dataset.num_val=8 \
  --rl-override algo.demo_replay_path=/tmp/r3/in/gpu_inputs/libero_object_task4_10demos.npz \
  --rl-override algo.demo_replay_num_demos=10 --rl-override algo.demo_probe_windows=32 "$@" > $OUT/$name.log 2>&1
echo "rc $?"
cp /tmp/ovf8_$name/rl/metrics.jsonl $OUT/$name.metrics.jsonl
