#!/bin/bash
# Device call 2: training profile (one file) + issue-5 learning run (full protocol, new settings).
export PYTHONPATH=$PWD/.devdeps:$PWD
T0=$(date +%s)
timeout 100 python scripts/bench_pi0.py --device cuda:0 --sections none --profile-dir /tmp/prof > /tmp/prof.log 2>&1
cat /tmp/prof/profile_train_plain.txt /tmp/prof/profile_train_cfg_shared_il.txt > $OUT/profile_train.txt 2>/dev/null
echo "profile done $(( $(date +%s) - T0 )) s"; tail -3 /tmp/prof.log
W=runs/bl
C="--device cuda --heldout-trials 0 --threads-per-job 1"
NEW="--weight-mode binary --num-epochs 4 --mini-batch-size 16"
timeout 130 python scripts/bench_learning.py $C --seeds 0 1 2 --jobs 3 --stages sft --work-dir $W/sft --out-dir $W/sft > $OUT/sft.log 2>&1
echo "sft done $(( $(date +%s) - T0 )) s"
REM=$(( 560 - ($(date +%s) - T0) ))
timeout $REM python scripts/bench_learning.py $C --seeds 0 1 2 --jobs 6 --sft-dir $W/sft --stages rl bc --work-dir $W/new --out-dir $W/new $NEW > $OUT/new.log 2>&1 &
timeout $REM python scripts/bench_learning.py $C --seeds 0 1 2 --jobs 3 --sft-dir $W/sft --stages rl --work-dir $W/lr3 --out-dir $W/lr3 $NEW --rl-lr 3e-4 > $OUT/lr3.log 2>&1 &
wait
echo "rl done $(( $(date +%s) - T0 )) s"
tar czf $OUT/results.tgz $(find runs/bl -name '*.json' -o -name '*.log' -o -name 'metrics.jsonl' | grep -v checkpoint)
ls -la $OUT; tail -3 $W/new/seed*_rl.log $W/lr3/seed*_rl.log 2>/dev/null | tail -30
