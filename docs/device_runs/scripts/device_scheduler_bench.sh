#!/bin/bash
# Device calls (issue 25, the rollout scheduler): one RIPT round of 8 init states x K 8 on
# LIBERO-Object task 4 with the shipped small PI0 on the GPU, lockstep vs continuous scheduler on
# the same simulators and states (scripts/bench_rollout.py --parts scheduler).
#
#   call 1 (carry .gpu_libero/part1 .devdeps):  bash THIS part1
#   call 2 (carry .gpu_libero/part2 .devdeps):  bash THIS bench "7:lockstep,continuous 14:continuous"
set -uo pipefail
MODE=${1:?part1 | bench CASES}
GL=/tmp/gl
export PYTHONUNBUFFERED=1
if [ "$MODE" = part1 ]; then
  mkdir -p $GL/in && cp -r .gpu_libero/part1/. $GL/in/ && ls $GL/in && exit 0
fi
bash .gpu_libero/part2/setup.sh $GL .gpu_libero/part2 2>&1 | tail -n 2
export PYTHONPATH=$PWD:$PWD/.devdeps:$GL/site MUJOCO_GL=egl PYOPENGL_PLATFORM=egl OMP_NUM_THREADS=1
vendor=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
[ -f $vendor ] && export __EGL_VENDOR_LIBRARY_FILENAMES=$vendor
nproc; nvidia-smi --query-gpu=name --format=csv,noheader
for case in ${2:-"7:lockstep,continuous 14:continuous"}; do
  n=${case%%:*}; schedulers=${case#*:}
  python3 scripts/bench_rollout.py --parts scheduler --states 8 --k 8 --num-envs $n \
    --schedulers $schedulers --out-md $OUT/scheduler_n$n.md --out-json $OUT/scheduler_n$n.json 2>&1 \
    | grep -v -e WARNING -e "^\[info\]"
done
