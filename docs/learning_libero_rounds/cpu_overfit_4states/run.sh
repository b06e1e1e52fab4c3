#!/bin/bash
# The overfit test of docs/learning_libero.md: CFG-Flow RL on STATES fixed training init states (K 8, the
# shipped 10-demo ketchup start), all of them every round; training success per round is the policy's
# own success on those states (fresh flow noise every round).
#   bash docs/learning_libero_rounds/cpu_overfit_4states/run.sh strong --rl-lr 1e-5 --num-epochs 4 --rl-override algo.clip_labels=false
# Needs LIBERO (scripts/install.sh) and the demo pack for the forgetting probe:
#   PYTHONPATH=$PWD python scripts/sft_libero.py record --task 4 --max-demos 10 --out gpu_inputs/libero_object_task4_10demos.npz
# Defaults are the CPU test (4 states, 2 simulators, 15 rounds; ~103-131 s a round here, 26-33 min a run);
# docs/learning_libero_rounds/gpu_overfit_8states/run.sh sets the knobs for the H200. Knobs: STATES (4),
# NENV (2), ROUNDS (15), SAVE_EVERY (5), SAMPLER (eager), PACK (the pack above), WORK_ROOT (/tmp/overfit),
# SFT_DIR (the start: model.safetensors + norm_stats.json; default the shipped 10-demo start).
# Output: $WORK_ROOT/<name>/rl/metrics.jsonl and $WORK_ROOT/<name>.log
set -euo pipefail
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} MUJOCO_GL=${MUJOCO_GL:-osmesa} PYOPENGL_PLATFORM=${PYOPENGL_PLATFORM:-osmesa}
name=$1; shift
STATES=${STATES:-4}; WORK_ROOT=${WORK_ROOT:-/tmp/overfit}
mkdir -p $WORK_ROOT
# max_states_per_task 2 x STATES, num_val STATES: the training split is STATES of the first 2 x STATES
# shipped states, all of them every round. exec: a timeout around this script stops the run itself.
exec python3 scripts/bench_learning_libero.py --task 4 --seed 0 --work-dir $WORK_ROOT/$name \
  --sft-dir ${SFT_DIR:-ript/assets/checkpoints/pi0_small_libero_object_ketchup} --num-envs ${NENV:-2} --stages rl \
  --rl-steps ${ROUNDS:-15} --save-every ${SAVE_EVERY:-5} --init-states-per-round $STATES --rloo 8 \
  --mini-batch-size 16 --sampler=${SAMPLER:-eager} \
  --rl-override algo.policy.train_expert_only=true --rl-override algo.episode_weighting=episode \
  --rl-override ++task.dataset.max_states_per_task=$((2 * STATES)) --rl-override ++task.dataset.num_val=$STATES \
  --rl-override algo.demo_replay_path=${PACK:-$PWD/gpu_inputs/libero_object_task4_10demos.npz} \
  --rl-override algo.demo_replay_num_demos=10 --rl-override algo.demo_probe_windows=32 "$@" > $WORK_ROOT/$name.log 2>&1
