#!/bin/bash
# The overfit test of docs/learning_libero.md: CFG-Flow RL on 4 fixed training init states (K 8, 15
# rounds, the shipped 10-demo ketchup start, 2 simulators on the CPU); training success per round is
# the policy's own success on those states (fresh flow noise every round).
#   bash docs/learning_libero_rounds/cpu_overfit_4states/run.sh strong --rl-lr 1e-5 --num-epochs 4 --rl-override algo.clip_labels=false
# Needs LIBERO (scripts/install.sh) and the demo pack for the forgetting probe:
#   PYTHONPATH=$PWD python scripts/sft_libero.py record --task 4 --max-demos 10 --out gpu_inputs/libero_object_task4_10demos.npz
# ~131 s a round here (2 cores): ~33 min a run. Output: /tmp/overfit/<name>/rl/metrics.jsonl
set -euo pipefail
export PYTHONPATH=$PWD MUJOCO_GL=${MUJOCO_GL:-osmesa} PYOPENGL_PLATFORM=${PYOPENGL_PLATFORM:-osmesa}
name=$1; shift
mkdir -p /tmp/overfit
# max_states_per_task 8, num_val 4: the training split is 4 of the first 8 shipped states, all 4 every round.
python3 scripts/bench_learning_libero.py --task 4 --seed 0 --work-dir /tmp/overfit/$name \
  --sft-dir ript/assets/checkpoints/pi0_small_libero_object_ketchup --num-envs 2 --stages rl \
  --rl-steps 15 --save-every 5 --init-states-per-round 4 --rloo 8 --mini-batch-size 16 --sampler=eager \
  --rl-override algo.policy.train_expert_only=true --rl-override algo.episode_weighting=episode \
  --rl-override ++task.dataset.max_states_per_task=8 --rl-override ++task.dataset.num_val=4 \
  --rl-override algo.demo_replay_path=$PWD/gpu_inputs/libero_object_task4_10demos.npz \
  --rl-override algo.demo_replay_num_demos=10 --rl-override algo.demo_probe_windows=32 "$@" > /tmp/overfit/$name.log 2>&1
