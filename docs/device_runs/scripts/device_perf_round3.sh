#!/bin/bash
# Device call (issue 6, round 3): training step with torch.compile'd layers vs eager, a profile of
# the compiled step, and a GPU smoke of the RL loop with algo.policy.compile_layers=true.
# Run on the device machine with carry [".devdeps"] (Hydra is not installed there).
export PYTHONPATH=$PWD/.devdeps:$PWD
T0=$(date +%s)
mkdir -p /tmp/r3
timeout 420 python scripts/bench_pi0.py --device cuda:0 --sections train --compile-train \
  --train-variants plain,cfg_shared_il --time-budget-s 380 --profile-dir /tmp/r3/profile \
  --out-json /tmp/r3/bench_pi0_round3.json --out-md /tmp/r3/bench_pi0_round3.md > /tmp/r3/bench.log 2>&1
echo "bench rc=$? $(( $(date +%s) - T0 )) s"
REM=$(( 560 - ($(date +%s) - T0) ))
timeout $REM python train_ript_openvla_oft.py task=reach_rl output_dir=/tmp/r3/rl training.n_steps=2 \
  logging.mode=disabled algo.policy.preset=tiny algo.policy.compile_layers=true \
  train_dataloader.batch_size=2 algo.rloo_batch_size=4 algo.num_parallel_envs=4 algo.short_window=pad \
  rollout.num_trials_per_task=1 > /tmp/r3/rl_smoke.log 2>&1
echo "rl smoke rc=$? $(( $(date +%s) - T0 )) s"
cp /tmp/r3/rl/metrics.jsonl /tmp/r3/rl_smoke_metrics.jsonl 2>/dev/null
rm -rf /tmp/r3/rl
tar czf $OUT/perf_round3.tgz -C /tmp r3
cat /tmp/r3/bench_pi0_round3.md; tail -5 /tmp/r3/bench.log | cut -c1-400; tail -5 /tmp/r3/rl_smoke.log
