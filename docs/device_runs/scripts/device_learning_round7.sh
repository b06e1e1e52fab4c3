#!/bin/bash
# Device call (issue 15, round 7, TUNING seeds 10-12): two SFT recipes x {no replay, success replay},
# 60 RL rounds (longer than the ~25-round peak of earlier runs, to see a late decline), diagnostics
# logged every round. No BC here (tuning only). Carry .devdeps.
export PYTHONPATH=$PWD/.devdeps:$PWD
T0=$(date +%s)
W=runs/bl7
mkdir -p $W
C="--device cuda --heldout-trials 0 --threads-per-job 1 --seeds 10 11 12 --jobs 3"
RL="--rl-steps 60"
timeout 200 python scripts/bench_learning.py $C --stages sft --work-dir $W/sftA --out-dir $W/sftA > $W/sftA.log 2>&1 &
timeout 200 python scripts/bench_learning.py $C --stages sft --sft-failed-cond-weight 0 --sft-uncond-weight 1 \
    --work-dir $W/sftB --out-dir $W/sftB > $W/sftB.log 2>&1 &
wait
echo "sft done $(( $(date +%s) - T0 )) s"
REM=$(( 575 - ($(date +%s) - T0) ))
for arm in A_base A_replay B_base B_replay; do
  sft=${arm%%_*}; extra=""
  [[ $arm == *replay ]] && extra="--replay-per-state 2"
  timeout $REM python scripts/bench_learning.py $C $RL $extra --sft-dir $W/sft$sft --stages rl \
      --work-dir $W/$arm --out-dir $W/$arm > $W/$arm.log 2>&1 &
done
wait
echo "rl done $(( $(date +%s) - T0 )) s"
tar czf $OUT/results.tgz $(find $W -name '*.json' -o -name '*.log' -o -name 'metrics.jsonl' -o -name '*.md' | grep -v checkpoint)
for f in $W/*.log; do echo "== $f"; tail -n 6 $f; done
