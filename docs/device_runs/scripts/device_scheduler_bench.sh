#!/bin/bash
# Device calls (issue 25, the rollout scheduler): one RIPT round of 8 init states x K 8 on
# LIBERO-Object task 4 with the shipped small PI0 on the GPU, lockstep vs continuous scheduler on
# the same simulators and states (scripts/bench_rollout.py --parts scheduler).
#
#   call 1 (carry .gpu_libero/part1 .devdeps):  bash THIS part1
#   call 2 (carry .gpu_libero/part2 .devdeps):  bash THIS bench "7:lockstep,continuous 14:continuous" [rl]
#          a case is SIMULATORS:SCHEDULERS[:SAMPLERS], e.g. "14:continuous:eager,cuda_graph" (default eager);
#          BENCH_ARGS="--warmup --repeats 2": untimed warm-up rounds first, then each case twice, alternating
#   call 3 (no carry, machine still warm):       bash THIS poll WAIT_S
# With "rl", call 2 then starts (setsid, in the background) a CFG-Flow RL run from the shipped
# 10-demo ketchup checkpoint on the continuous scheduler: 8 states x K 8 a round, 14 simulators,
# lr 1e-5, per-layer condition; call 3 waits and copies its metrics.jsonl to $OUT.
set -uo pipefail
MODE=${1:?part1 | bench CASES [rl] | poll WAIT_S}
W=/tmp/rl
GL=/tmp/gl
export PYTHONUNBUFFERED=1
if [ "$MODE" = poll ]; then
  sleep "${2:-500}"; cp $W/run/metrics.jsonl $OUT/ 2>/dev/null; tail -c 3000 $W/train.log
  grep -o '"rollout/mean_scores": [0-9.]*' $W/run/metrics.jsonl; exit 0
fi
if [ "$MODE" = part1 ]; then
  mkdir -p $GL/in && cp -r .gpu_libero/part1/. $GL/in/ && ls $GL/in && exit 0
fi
bash .gpu_libero/part2/setup.sh $GL .gpu_libero/part2 2>&1 | tail -n 2
export PYTHONPATH=$PWD:$PWD/.devdeps:$GL/site MUJOCO_GL=egl PYOPENGL_PLATFORM=egl OMP_NUM_THREADS=1
vendor=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
[ -f $vendor ] && export __EGL_VENDOR_LIBRARY_FILENAMES=$vendor
nproc; nvidia-smi --query-gpu=name --format=csv,noheader
for case in ${2:-"7:lockstep,continuous 14:continuous"}; do
  n=${case%%:*}; rest=${case#*:}; schedulers=${rest%%:*}; sampler=eager
  [ "$rest" != "$schedulers" ] && sampler=${rest#*:}
  python3 scripts/bench_rollout.py --parts scheduler --states 8 --k 8 --num-envs $n --sampler $sampler ${BENCH_ARGS:-} \
    --schedulers $schedulers --out-md $OUT/scheduler_n${n}_${sampler/,/_}.md --out-json $OUT/scheduler_n${n}_${sampler/,/_}.json 2>&1 \
    | grep -v -e WARNING -e "^\[info\]"
done
if [ "${3:-}" = rl ]; then
  mkdir -p $W
  setsid nohup python3 train_ript_openvla_oft.py experiment=libero_object_ketchup hydra.run.dir=$W/run \
    algo.num_parallel_envs=14 train_dataloader.batch_size=8 algo.rloo_batch_size=8 \
    algo.lr=1e-5 algo.header_lr=1e-5 algo.policy.cond_layer_modulation=true algo.cond_lr_scale=10 \
    algo.policy.strict_load=false training.n_steps=24 training.save_every_n_steps=1 \
    rollout.enabled=false > $W/train.log 2>&1 < /dev/null &
  sleep 20; tail -n 5 $W/train.log
fi
