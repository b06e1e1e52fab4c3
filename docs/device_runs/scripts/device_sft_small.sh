#!/bin/bash
# Device call (issue 19, phase 1): few-demo SFT of the `small` PI0 (8.0 M params, 112 px) from demo packs,
# six runs side by side on one GPU (tasks 4, 1, 0 x budgets 5, 10 demos; seed 0; 2000 steps, batch 32,
# lr 3e-4, window stride 10, bf16 autocast), plus a timing of the preset. Needs no LIBERO/Hydra.
# Run at the repo root with the packs in gpu_inputs/ (carry it):
#   gpu_inputs/libero_object_task{4,1,0}_25demos.npz   (scripts/sft_libero.py record)
# Comes back (<= 8 files, <= 64 MiB): $OUT/results.tgz (every run's norm_stats.json, sft_info.json, log;
# timing.json; driver log), and bf16 weights (16.2 MB each) of the runs named in RETURN_WEIGHTS only
# (three fit the 64 MiB limit): $OUT/<run>/model.safetensors. Runs are named t<task>_n<demos>.
set -euo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD:$PWD/.devdeps OMP_NUM_THREADS=2
OUT=${OUT:?set OUT}
RETURN_WEIGHTS=${RETURN_WEIGHTS:-"t4_n10 t1_n10 t4_n5"}
STEPS=${STEPS:-2000}; BATCH=${BATCH:-32}; LR=${LR:-3e-4}; DEVICE=${DEVICE:-cuda}
TASKS=${TASKS:-"4 1 0"}; BUDGETS=${BUDGETS:-"5 10"}; LIMIT=${LIMIT:-360}; PACKS=${PACKS:-gpu_inputs}
TIMING_ARGS=${TIMING_ARGS:-}
W=runs/device_sft_small
mkdir -p $W
T0=$(date +%s)
log() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a $OUT/driver.log; }

pack_results() {  # re-tar every small result (atomic: tmp + rename), callable after each run
  local tmp=$OUT/.results.$1.tgz
  (cd $W && tar czf - $(find . \( -name '*.json' -o -name '*.log' \) -print | sort)) > $tmp 2>/dev/null || true
  cp $OUT/driver.log $W/driver.log 2>/dev/null || true
  mv -f $tmp $OUT/results.tgz
}

run_one() {  # task budget
  local name=t$1_n$2
  mkdir -p $W/$name
  if timeout $LIMIT python scripts/sft_libero.py train --pack $PACKS/libero_object_task$1_25demos.npz \
      --num-demos $2 --steps $STEPS --batch-size $BATCH --lr $LR --stride 10 --seed 0 --device $DEVICE \
      --save-every 500 --no-progress --out $W/$name > $W/$name/train.log 2>&1; then
    log "$name done: $(python -c "import json;i=json.load(open('$W/$name/sft_info.json'));print('loss',round(i['loss_first'],3),'->',round(i['loss_last20'],4),i['train_time_s'],'s',i['ms_per_step'],'ms/step')")"
    if [[ " $RETURN_WEIGHTS " == *" $name "* ]]; then
      mkdir -p $OUT/$name && cp $W/$name/model.safetensors $OUT/$name/model.safetensors
    fi
  else
    log "$name FAILED (rc $?): $(tail -n 3 $W/$name/train.log | tr '\n' ' ')"
  fi
  pack_results $name
}

log "start: tasks [$TASKS] budgets [$BUDGETS] steps $STEPS batch $BATCH lr $LR; return weights of [$RETURN_WEIGHTS]"
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader | tee -a $OUT/driver.log || true
ls -la $PACKS/ | tee -a $OUT/driver.log
for t in $TASKS; do for n in $BUDGETS; do run_one $t $n & done; done
# The timing runs after the SFTs, alone on the GPU (timing while six runs share it would be unfair).
wait
mkdir -p $W/timing
timeout 90 python scripts/sft_libero.py timing --device $DEVICE --out $W/timing/timing.json $TIMING_ARGS \
    > $W/timing/timing.log 2>&1 || log "timing FAILED: $(tail -n 3 $W/timing/timing.log | tr '\n' ' ')"
log "timing: $(cat $W/timing/timing.json 2>/dev/null | tr -d '\n ')"
pack_results final
log "all done"
ls -la $OUT $OUT/* | tee -a $OUT/driver.log
