#!/bin/bash
# One-seed CPU probe: round 1's setting plus algo.uncond_scope=successes, task 4, 5-demo start, seed 12.
# SFT_DIR: the 5-demo task-4 start of round 1 (scripts/sft_libero.py train --num-demos 5, weights + norm_stats.json).
cd "$(dirname "$0")/../../.."   # the repository root
SFT_DIR=${SFT_DIR:?set SFT_DIR to the SFT output dir}
export PYTHONPATH=$PWD OMP_NUM_THREADS=1
python scripts/bench_learning_libero.py --task 4 --seed 12 --work-dir runs/libero_probe_t4_s12 \
    --sft-dir "$SFT_DIR" --stages eval rl rl_eval --eval-split heldout --num-envs 2 --rl-steps 5 \
    --save-every 1 --init-states-per-round 8 --rloo 4 --mini-batch-size 16 --num-epochs 1 --rl-lr 2.5e-5 \
    --rl-override algo.clip_labels=true --rl-override algo.episode_weighting=episode \
    --rl-override algo.uncond_scope=successes > runs/libero_probe_t4_s12.log 2>&1
echo "EXIT $?" >> runs/libero_probe_t4_s12.log
