#!/bin/bash
# Round 9 report seeds 30-35 (never used for choosing), run on the 2-core CPU workstation because the
# session's device time went to the LIBERO round (docs/learning_libero.md): 12 RL rounds instead of
# the device script's 24, 2 evaluation passes (24 episodes per seed per number). Three arms share one
# SFT per seed: the chosen options, the defaults, and the BC ablation (chosen options, w = 1).
set -e
export PYTHONPATH=$PWD OMP_NUM_THREADS=1
W=runs/bl9cpu
B="python scripts/bench_learning.py --device cpu --heldout-trials 0 --threads-per-job 1 --eval-repeats 2 --rl-steps 12"
CHOSEN="--rl-override algo.policy.cond_layer_modulation=true --rl-override algo.cond_lr_scale=10"
$B --seeds 30 31 32 33 34 35 --jobs 2 --stages sft --work-dir $W/sft --out-dir $W/sft
$B --seeds 30 31 32 33 34 35 --jobs 2 --sft-dir $W/sft --stages rl $CHOSEN --cfg-scales 1 1.5 2 3 \
   --work-dir $W/rl --out-dir $W/rl
$B --seeds 30 31 32 --jobs 2 --sft-dir $W/sft --stages bc $CHOSEN --cfg-scales 1 2 --work-dir $W/bc --out-dir $W/bc
$B --seeds 30 31 32 33 34 35 --jobs 2 --sft-dir $W/sft --stages rl --cfg-scales 1 2 3 \
   --work-dir $W/defaults --out-dir $W/defaults
