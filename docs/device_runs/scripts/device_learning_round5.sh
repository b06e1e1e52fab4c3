#!/bin/bash
# Device call (issue 5, round 5): the "wide" protocol of round 4 (every scene every round, 38
# rounds, binary weights, 4 epochs, mini-batch 16) with stabilisers, from round 4's SFT weights
# (carry runs/bl4/sft and .devdeps):
#   frozen: vision tower frozen during RL only
#   lr5:    lr 5e-5
#   both:   frozen vision + lr 5e-5
export PYTHONPATH=$PWD/.devdeps:$PWD
T0=$(date +%s)
W=runs/bl5
mkdir -p $W
C="--device cuda --heldout-trials 0 --threads-per-job 1 --sft-dir runs/bl4/sft --stages rl --seeds 0 1 2 --jobs 3"
WIDE="--weight-mode binary --num-epochs 4 --mini-batch-size 16 --rl-steps 38 --init-states-per-round 12"
FROZEN="--rl-override algo.policy.freeze_vision_encoder=true"
REM=560
timeout $REM python scripts/bench_learning.py $C $WIDE $FROZEN --work-dir $W/frozen --out-dir $W/frozen > $W.frozen.log 2>&1 &
timeout $REM python scripts/bench_learning.py $C $WIDE --rl-lr 5e-5 --work-dir $W/lr5 --out-dir $W/lr5 > $W.lr5.log 2>&1 &
timeout $REM python scripts/bench_learning.py $C $WIDE $FROZEN --rl-lr 5e-5 --work-dir $W/both --out-dir $W/both > $W.both.log 2>&1 &
wait
echo "rl done $(( $(date +%s) - T0 )) s"
tar czf $OUT/results.tgz runs/bl5.*.log $(find $W -name '*.json' -o -name '*.log' -o -name 'metrics.jsonl' | grep -v checkpoint)
for v in frozen lr5 both; do echo == $v; tail -n 3 $W.$v.log; done
