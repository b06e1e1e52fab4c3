#!/bin/bash
# Device calls (issue 19, LIBERO round 1): few-demo SFT of the `small` PI0 -> held-out evaluation of
# the starts -> CFG-Flow RL (3 report seeds per task, 16 simulators shared) -> held-out evaluation.
# Everything runs in the background (setsid) under /tmp/w while the machine stays warm; each call
# starts or polls it and copies a snapshot of the results to $OUT.
#
#   call 1  (carry gpu_inputs .gpu_libero/part1):  bash THIS phase1
#   call 2  (carry .gpu_libero/part2):             bash THIS phase2 WAIT_S
#   call 3+ (no carry):                            bash THIS poll WAIT_S [stop_rl_at_s]
#
# Settings (chosen before this run from the CEO's measured findings on seeds 0 and 1 -- lr <= 2.5e-5
# did no harm, 1e-4 wrecked the start -- never tuned on the report seeds 11-13 used here):
#   SFT: 2000 steps, batch 32, lr 3e-4, stride 10, 5 or 10 demos (one per training init state).
#   RL:  8 init states x K 4 a round, lr 2.5e-5, 1 epoch/round, mini-batch 16, alpha 0.1, success
#        replay 2, labels clipped to what LIBERO executed, per-episode weights; 2 simulators per run.
set -uo pipefail
MODE=${1:?phase1 | phase2 WAIT_S | poll WAIT_S [STOP_AT_S]}
W=/tmp/w; GL=/tmp/gl; REPO=/tmp/repo
TASKS=${TASKS:-"4 1"}; BUDGETS=${BUDGETS:-"5 10"}; SEEDS=${SEEDS:-"11 12 13"}
mkdir -p $W
log() { echo "[$(date +%H:%M:%S)] $*" | tee -a $W/driver.log; }
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1

snapshot() {  # every small result (json/log/metrics) in one tar, plus the driver log
  (cd $W && tar czf $OUT/results.tgz --exclude='*.safetensors' --exclude='*.pt' --exclude='checkpoints' \
      $(ls -d */ 2>/dev/null) driver.log 2>/dev/null) || true
  cp $W/driver.log $OUT/driver.log 2>/dev/null || true
  for f in $W/*/results.json; do [ -f "$f" ] && python3 - "$f" <<'PY' 2>/dev/null; done
import json, sys
r = json.load(open(sys.argv[1]))
s, e = r.get("sft_eval") or {}, r.get("rl_eval") or {}
curve = [round(c.get("rollout/mean_scores", float("nan")), 2) for c in (r.get("rl") or {}).get("curve", [])]
print(sys.argv[1].split("/")[-2], "start", s.get("heldout_success"), s.get("heldout_episodes"),
      "rl", e.get("heldout_success"), e.get("heldout_episodes"), "rounds", curve)
PY
}

if [ "$MODE" = phase1 ]; then
  rm -rf $REPO && mkdir -p $REPO $GL/in && tar -C . --exclude=.gpu_libero --exclude=.git -cf - . | tar -C $REPO -xf -
  cp -r .gpu_libero/part1/. $GL/in/
  cd $REPO
  for t in $TASKS; do for n in $BUDGETS; do
    mkdir -p $W/sft_t${t}_n${n}
    setsid nohup python3 scripts/sft_libero.py train --pack gpu_inputs/libero_object_task${t}_25demos.npz \
      --num-demos $n --steps 2000 --batch-size 32 --lr 3e-4 --stride 10 --seed 0 --device cuda \
      --save-every 500 --no-progress --out $W/sft_t${t}_n${n} > $W/sft_t${t}_n${n}/train.log 2>&1 < /dev/null &
  done; done
  log "phase1: SFT launched for tasks [$TASKS] budgets [$BUDGETS]"
  sleep 45; tail -n 2 $W/sft_*/train.log; nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv
  exit 0
fi

setup_env() {
  export PYTHONPATH=$REPO:$GL/site MUJOCO_GL=egl PYOPENGL_PLATFORM=egl OMP_NUM_THREADS=1
  local vendor=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
  [ -f $vendor ] && export __EGL_VENDOR_LIBRARY_FILENAMES=$vendor
}

if [ "$MODE" = phase2 ]; then
  bash .gpu_libero/part2/setup.sh $GL .gpu_libero/part2 2>&1 | tail -n 3 | tee -a $W/driver.log
  setup_env
  cat > $W/pipeline.sh <<'EOF'
#!/bin/bash
# Per task: wait for its SFTs, evaluate each start on the 25 held-out states, pick the weakest start
# inside [15 %, 60 %] (else the one nearest 35 %), then RL with every seed, checkpointing every round.
set -uo pipefail
t=$1; W=/tmp/w; cd /tmp/repo
for n in $BUDGETS; do
  while [ ! -f $W/sft_t${t}_n${n}/sft_info.json ]; do sleep 5; done
  python3 scripts/bench_learning_libero.py --task $t --seed 0 --work-dir $W/eval_t${t}_n${n} \
    --sft-dir $W/sft_t${t}_n${n} --stages eval --eval-split heldout --num-envs 4 > $W/eval_t${t}_n${n}.log 2>&1 &
done
wait
pick=$(python3 - $t $BUDGETS <<'PY'
import json, sys
t, budgets = sys.argv[1], sys.argv[2:]
rates = {n: json.load(open(f"/tmp/w/eval_t{t}_n{n}/results.json"))["sft_eval"]["heldout_success"] for n in budgets}
inside = [n for n in budgets if 0.15 <= rates[n] <= 0.60]
print(min(inside, key=int) if inside else min(budgets, key=lambda n: abs(rates[n] - 0.35)))
PY
)
echo "task $t: starts $(for n in $BUDGETS; do python3 -c "import json;print('n$n', json.load(open('$W/eval_t${t}_n${n}/results.json'))['sft_eval']['heldout_success'], end=' ')"; done) -> RL from n$pick" >> $W/driver.log
for s in $SEEDS; do
  mkdir -p $W/rl_t${t}_s${s}
  # Each seed evaluates the start itself (same env seed as its final evaluation), then trains.
  python3 scripts/bench_learning_libero.py --task $t --seed $s --work-dir $W/rl_t${t}_s${s} \
    --sft-dir $W/sft_t${t}_n${pick} --stages eval rl --eval-split heldout --num-envs 2 --rl-steps 40 --save-every 1 \
    --init-states-per-round 8 --rloo 4 --mini-batch-size 16 --num-epochs 1 --rl-lr 2.5e-5 \
    --rl-override algo.clip_labels=true --rl-override algo.episode_weighting=episode \
    > $W/rl_t${t}_s${s}/rl.log 2>&1 &
  echo $! > $W/rl_t${t}_s${s}/pid
done
wait
EOF
  chmod +x $W/pipeline.sh
  export BUDGETS SEEDS
  for t in $TASKS; do setsid nohup bash $W/pipeline.sh $t > $W/pipeline_t$t.log 2>&1 < /dev/null & done
  log "phase2: LIBERO set up; pipelines launched for tasks [$TASKS]"
fi

if [ "$MODE" = phase2 ] || [ "$MODE" = poll ]; then
  setup_env
  WAIT_S=${2:-60}; STOP_AT=${3:-0}; T0=$(date +%s)
  while [ $(( $(date +%s) - T0 )) -lt $WAIT_S ]; do sleep 20; done
  if [ "$STOP_AT" != 0 ]; then
    # SIGTERM: the training loop finishes the current round, checkpoints and exits; then evaluate
    # each run's newest checkpoint on the held-out states.
    for p in $W/rl_t*_s*/pid; do kill -TERM $(cat $p) 2>/dev/null; done
    log "stop: SIGTERM sent to the RL runs"
    for p in $W/rl_t*_s*/pid; do while kill -0 $(cat $p) 2>/dev/null; do sleep 3; done; done
    cd $REPO
    for d in $W/rl_t*_s*; do
      t=$(basename $d | sed 's/rl_t\([0-9]*\)_s.*/\1/'); s=$(basename $d | sed 's/.*_s//')
      sd=$(python3 -c "import json;print(json.load(open('$d/results.json'))['args']['sft_dir'] or '')" 2>/dev/null)
      python3 scripts/bench_learning_libero.py --task $t --seed $s --work-dir $d --sft-dir $W/$(basename $sd) \
        --stages rl_eval --eval-split heldout --num-envs 2 > $d/rl_eval.log 2>&1 &
    done
    wait
    log "stop: held-out evaluations done"
  fi
  # At most 8 files come back: the weights of task 4's starts (the shipped-checkpoint candidates);
  # every norm_stats.json / sft_info.json travels in results.tgz.
  for n in $BUDGETS; do d=$W/sft_t4_n$n; [ -f $d/model.safetensors ] && mkdir -p $OUT/sft_t4_n$n && \
    cp $d/model.safetensors $OUT/sft_t4_n$n/; done
  snapshot
  grep -h "rollout/mean_scores" -c $W/rl_t*/rl/metrics.jsonl 2>/dev/null | tr '\n' ' '; echo " rounds logged"
  tail -n 30 $W/driver.log
fi
