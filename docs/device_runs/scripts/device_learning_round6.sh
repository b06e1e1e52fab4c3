#!/bin/bash
# Device call (issue 5, round 6): the round-4 "wide" settings (the new bench_learning defaults) on
# fresh seeds 3, 4, 5: SFT, RL and the BC ablation. Carry .devdeps.
export PYTHONPATH=$PWD/.devdeps:$PWD
T0=$(date +%s)
W=runs/bl6
mkdir -p $W
C="--device cuda --heldout-trials 0 --threads-per-job 1 --seeds 3 4 5 --jobs 3"
WIDE="--weight-mode binary --num-epochs 4 --mini-batch-size 16 --rl-steps 38 --init-states-per-round 12"
timeout 120 python scripts/bench_learning.py $C --stages sft --work-dir $W/sft --out-dir $W/sft > $W.sft.log 2>&1
echo "sft done $(( $(date +%s) - T0 )) s"
REM=$(( 490 - ($(date +%s) - T0) ))
timeout $REM python scripts/bench_learning.py $C $WIDE --sft-dir $W/sft --stages rl --work-dir $W/rl --out-dir $W/rl > $W.rl.log 2>&1 &
timeout $REM python scripts/bench_learning.py $C $WIDE --sft-dir $W/sft --stages bc --work-dir $W/bc --out-dir $W/bc > $W.bc.log 2>&1 &
wait
echo "rl done $(( $(date +%s) - T0 )) s"
tar czf $OUT/results.tgz runs/bl6.*.log $(find $W -name '*.json' -o -name '*.log' -o -name 'metrics.jsonl' | grep -v checkpoint)
for v in rl bc; do echo == $v; tail -n 4 $W.$v.log; done
