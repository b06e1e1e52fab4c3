"""Multi-GPU scaling of CFG-Flow RL: the same run on 1 and N GPUs (torchrun, NCCL).

Runs ``train_ript_openvla_oft.py`` with the full PI0 preset (random weights, bf16, gradient
checkpointing) on the fast reach environment with a fixed per-rank batch (weak scaling), and
reports step time, windows/s, scaling efficiency, peak memory per GPU, and the cross-rank weight
checksum difference after every step (0 when gradients are averaged exactly once everywhere).

    python scripts/bench_multi_gpu.py --gpus 1 2 --steps 4 --out-dir $OUT
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def run_config(num_gpus: int, args: argparse.Namespace, run_dir: Path) -> dict:
    overrides = [
        "task=reach_rl", f"algo.policy.preset={args.preset}",
        f"algo.policy.gradient_checkpointing={str(args.preset == 'full').lower()}",
        f"algo.policy.tokenizer_path={REPO_ROOT / 'openpi_pytorch_ori/pi0/assets/tiny_tokenizer'}",
        f"training.n_steps={args.steps}", "training.save_every_n_steps=1000000", "training.keep_last_checkpoints=1",
        "training.log_param_checksum=true", "rollout.enabled=false", "logging.mode=disabled",
        f"train_dataloader.batch_size={args.init_states_per_gpu * num_gpus}",
        f"algo.rloo_batch_size={args.rloo_batch_size}", f"algo.num_parallel_envs={args.rloo_batch_size}",
        f"algo.mini_batch_size={args.mini_batch_size}", f"hydra.run.dir={run_dir}",
    ]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={num_gpus}",
               str(REPO_ROOT / "train_ript_openvla_oft.py"), *overrides]
    env = dict(os.environ, PYTHONUNBUFFERED="1", NCCL_NVLS_ENABLE="0", TORCH_SYMM_MEM_DISABLE_MULTICAST="1")
    log_path = run_dir.with_suffix(".log")
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as log:
        returncode = subprocess.run(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    if returncode != 0:
        return {"gpus": num_gpus, "error": f"exit {returncode}; see {log_path.name}"}
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    timed = records[1:] or records  # the first step includes CUDA/cuDNN warm-up
    step_times = [r["train/step_time_s"] for r in timed]
    windows = [r["train/windows_used"] for r in timed]
    return {
        "gpus": num_gpus,
        "median_step_time_s": statistics.median(step_times),
        "windows_per_step": statistics.mean(windows),
        "windows_per_s": sum(windows) / sum(step_times),
        "peak_gpu_memory_gib": {k.split("/")[-1]: max(r[k] for r in records)
                                for k in records[0] if k.startswith("train/peak_gpu_memory_gib/")},
        "max_param_checksum_rank_diff": max(abs(r["train/param_checksum_max_rank_diff"]) for r in records),
        "fm_loss": [r["loss/fm_loss"] for r in records],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpus", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--preset", default="full", help="full (GPU benchmark) or tiny (a CPU dry run)")
    parser.add_argument("--init-states-per-gpu", type=int, default=2)
    parser.add_argument("--rloo-batch-size", type=int, default=4)
    parser.add_argument("--mini-batch-size", type=int, default=8)
    parser.add_argument("--out-dir", type=Path, default=REPO_ROOT / "runs" / "bench_multi_gpu")
    args = parser.parse_args()
    results = [run_config(n, args, args.out_dir / f"gpus{n}") for n in args.gpus]
    base = next((r for r in results if r.get("gpus") == 1 and "error" not in r), None)
    for result in results:
        if base and "error" not in result:
            result["scaling_efficiency"] = result["windows_per_s"] / (result["gpus"] * base["windows_per_s"])
    (args.out_dir / "multi_gpu.json").write_text(json.dumps(results, indent=2))
    json.dump(results, sys.stdout, indent=2)


if __name__ == "__main__":
    main()
