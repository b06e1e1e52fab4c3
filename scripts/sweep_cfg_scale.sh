#!/usr/bin/env bash
# Hydra multirun sweep over the guidance scale of training rollouts and the advantage clip.
# Each combination gets its own run directory under multirun/<date>/<time>/<job number>/.
# Add your checkpoint/task overrides after the script name, e.g.
#   bash scripts/sweep_cfg_scale.sh task=libero_goal_rl algo.policy.pretrained_path=/ckpt/pi0_libero
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec python3 train_ript_openvla_oft.py -m algo.cfg_scale=1.0,2.0,3.0 algo.a_max=1,5 "$@"
