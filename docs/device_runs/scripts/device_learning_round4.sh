#!/bin/bash
# Device call (issue 5, round 4): same rollout budget spent two ways, from one SFT per seed:
#   long: 56 rounds x 8 init states x K=8 (3584 rollouts)
#   wide: 38 rounds x 12 init states (every scene every round) x K=8 (3648 rollouts)
# Flags of round 3's winner: binary weights, 4 epochs, mini-batch 16, lr 1e-4. BC not re-run.
# Run on the device machine with carry [".devdeps"]. Brings back SFT weights for later sessions.
export PYTHONPATH=$PWD/.devdeps:$PWD
T0=$(date +%s)
W=runs/bl4
mkdir -p $W
C="--device cuda --heldout-trials 0 --threads-per-job 1"
NEW="--weight-mode binary --num-epochs 4 --mini-batch-size 16"
timeout 130 python scripts/bench_learning.py $C --seeds 0 1 2 --jobs 3 --stages sft --work-dir $W/sft --out-dir $W/sft > $W.sft.log 2>&1
echo "sft done $(( $(date +%s) - T0 )) s"
REM=$(( 565 - ($(date +%s) - T0) ))
timeout $REM python scripts/bench_learning.py $C --seeds 0 1 2 --jobs 3 --sft-dir $W/sft --stages rl --work-dir $W/long --out-dir $W/long $NEW --rl-steps 56 > $W.long.log 2>&1 &
timeout $REM python scripts/bench_learning.py $C --seeds 0 1 2 --jobs 3 --sft-dir $W/sft --stages rl --work-dir $W/wide --out-dir $W/wide $NEW --rl-steps 38 --init-states-per-round 12 > $W.wide.log 2>&1 &
wait
echo "rl done $(( $(date +%s) - T0 )) s"
tar czf $OUT/results.tgz runs/bl4.*.log $(find $W -name '*.json' -o -name '*.log' -o -name 'metrics.jsonl' -o -name '*.safetensors' | grep -v checkpoint)
ls -la $OUT; tail -2 $W/long/seed*_rl.log $W/wide/seed*_rl.log 2>/dev/null | tail -20
