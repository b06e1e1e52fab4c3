"""LIBERO-Object few-demo SFT in two places: record a demo pack here, train from it on a GPU.

  record  (needs LIBERO; CPU): the scripted expert records one demo per *training* init state
          (``split_train_val_rows(50, num_val, split_seed)``'s order, so ``--num-demos N`` later
          takes N distinct states), rendered and converted exactly as the runner shows the policy
          (camera 256 px -> the policy's input size), into one compressed pack (``ript.datasets.demo_pack``).
  timing  ms per select_action (batch 1/8) and per SFT step (batch 16/32) of a preset.
  train   (torch + numpy + PIL + safetensors only: no LIBERO, robosuite or Hydra is imported):
          the first ``--num-demos`` demos of a pack -> norm stats (absolute actions) -> the project's
          ``sft_warm_start`` on the ``small`` PI0 -> ``model.safetensors`` + ``norm_stats.json`` +
          ``sft_info.json`` in ``--out``; checkpoints every ``--save-every`` steps, ``--resume`` continues.

Examples::

    PYTHONPATH=$PWD nice python scripts/sft_libero.py record --task 4 --out gpu_inputs/object_task4.npz
    PYTHONPATH=$PWD python scripts/sft_libero.py train --pack gpu_inputs/object_task4.npz --num-demos 5 \\
        --steps 2000 --batch-size 32 --lr 3e-4 --device cuda --out runs/sft_task4_n5
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402

logger = logging.getLogger("sft_libero")

CHECKPOINT_NAME = "sft_checkpoint.pt"


# ------------------------------------------------------------------------------ record
def record(args: argparse.Namespace) -> dict[str, Any]:
    from ript.datasets.demo_pack import save_demo_pack
    from ript.datasets.init_state_dataset import split_train_val_rows
    from ript.envs.libero_object_demos import record_demonstrations
    from ript.envs.libero_object_expert import ExpertConfig

    t0 = time.time()
    train_rows = [int(r) for r in split_train_val_rows(50, args.num_val, args.split_seed)[0]]
    rows = train_rows[: args.max_demos] if args.max_demos else train_rows
    config = ExpertConfig(action_noise=args.noise, mistake_prob=args.mistake_prob)
    demos = record_demonstrations(int(args.task), rows, config, seed=args.seed, camera_size=args.camera_size,
                                  image_stride=args.image_stride, clean_labels=not args.executed_labels,
                                  image_size=args.image_size)
    info = {"command": " ".join(sys.argv), "benchmark": "libero_object", "task_id": int(args.task),
            "train_rows": rows, "num_val": args.num_val, "split_seed": args.split_seed, "seed": args.seed,
            "action_noise": args.noise, "mistake_prob": args.mistake_prob,
            "labels": "executed" if args.executed_labels else "clean (expert pre-noise actions)",
            "camera_size": args.camera_size, "image_size": args.image_size, "image_stride": args.image_stride,
            "norm_stats_source": "none stored: sft_libero.py train computes them from the demos it uses "
                                 "(absolute actions)",
            "record_time_s": round(time.time() - t0, 1)}
    path = save_demo_pack(demos, args.out, info)
    size = path.stat().st_size
    summary = {"path": str(path), "bytes": size, "bytes_per_demo": size / len(demos), "num_demos": len(demos),
               "success": int(sum(d["success"] for d in demos)), "time_s": round(time.time() - t0, 1)}
    logger.info("pack: %s", summary)
    print(json.dumps(summary))
    return summary


# ------------------------------------------------------------------------------ train
def _cast_safetensors(path: Path, dtype_name: str) -> None:
    """Re-save a safetensors file with its floating tensors in ``dtype_name`` (bf16: half the bytes)."""
    import torch
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path))
    dtype = getattr(torch, dtype_name)
    save_file({k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in tensors.items()}, str(path),
              metadata={"format": "pt"})


def _save_checkpoint(out: Path, policy: Any, optimizer: Any, step: int, losses: list[float]) -> None:
    """Weights + optimizer + step + loss curve so far, written atomically (tmp file, then rename)."""
    import torch

    tmp = out / (CHECKPOINT_NAME + ".tmp")
    torch.save({"step": step, "model": policy.pi0.state_dict(), "optimizer": optimizer.state_dict(),
                "losses": losses}, tmp)
    tmp.replace(out / CHECKPOINT_NAME)
    logger.info("checkpoint at step %d -> %s", step, out / CHECKPOINT_NAME)


def _load_demos(args: argparse.Namespace) -> tuple[list[dict], dict]:
    from ript.datasets.demo_pack import load_demo_pack, read_pack_header

    header = read_pack_header(args.pack)
    demos = load_demo_pack(args.pack, args.num_demos)
    strides = {int(d["image_stride"]) for d in demos}
    if any(args.stride % s for s in strides):
        raise SystemExit(f"Config error: --stride={args.stride}: must be a multiple of the pack's image stride "
                         f"{sorted(strides)} (images exist only there); fix: --stride {max(strides)}")
    return demos, header


def train(args: argparse.Namespace) -> dict[str, Any]:
    """SFT from a pack; see the module docstring. Imports nothing of LIBERO, robosuite or Hydra."""
    import torch

    from openpi_pytorch_ori.pi0.checkpoint import save_pi0_weights
    from ript.algos.policies.pi0_oft_policy import PI0_OFT_Policy
    from ript.algos.sft_warm_start import (demonstration_windows, norm_stats_from_demonstrations, sft_warm_start,
                                           write_norm_stats_json)

    t0 = time.time()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    demos, header = _load_demos(args)
    norm_path = write_norm_stats_json(norm_stats_from_demonstrations(demos), out / "norm_stats.json")
    torch.manual_seed(args.seed)
    policy = PI0_OFT_Policy(device_id=args.device, norm_stats_path=str(norm_path), preset=args.preset,
                            dtype="float32", freeze_vision_encoder=False,
                            pretrained_path=args.init_weights)
    demo_sizes = {d.get("image_size") for d in demos}
    if demo_sizes != {policy.image_size}:
        raise SystemExit(f"Config error: --preset={args.preset}: its image size {policy.image_size} differs from the "
                         f"pack's frames {sorted(map(str, demo_sizes))}; record the pack with --image-size "
                         f"{policy.image_size} or pick the matching preset")
    windows = demonstration_windows(demos, policy.norm_stats, stride=args.stride, action_mode="absolute")
    start, optimizer_state, losses = 0, None, []
    ckpt = out / CHECKPOINT_NAME
    if args.resume and ckpt.exists():
        state = torch.load(ckpt, map_location=policy.device, weights_only=False)
        policy.pi0.load_state_dict(state["model"])
        start, optimizer_state, losses = int(state["step"]), state["optimizer"], list(state["losses"])
        logger.info("resuming from step %d (%s)", start, ckpt)
    elif args.resume:
        logger.info("--resume: no checkpoint in %s, starting at step 0", out)
    amp = torch.bfloat16 if args.amp == "bf16" and policy.device.type == "cuda" else None
    logger.info("SFT: %d demos (%d successful), %d windows, steps %d..%d, batch %d, lr %g, device %s, amp %s",
                len(demos), sum(d["success"] for d in demos), len(windows), start, args.steps, args.batch_size,
                args.lr, policy.device, amp)
    done = losses[:]

    def checkpoint(step: int, optimizer: Any, new: list[float]) -> None:
        _save_checkpoint(out, policy, optimizer, step, done[:start] + new)

    def log(step: int, loss: float) -> None:
        if step % 100 == 0 or step == args.steps:
            logger.info("step %d/%d loss %.4f (%.0f s)", step, args.steps, loss, time.time() - t0)

    t_train = time.time()
    new = sft_warm_start(policy, windows, num_steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                         uncond_weight=args.uncond_weight, seed=args.seed, progress=not args.no_progress,
                         start_step=start, optimizer_state=optimizer_state, checkpoint_every=args.save_every,
                         on_checkpoint=checkpoint, autocast_dtype=amp, on_log=log,
                         image_augmentation=args.augment)
    train_s = time.time() - t_train
    losses = done[:start] + new
    weights = out / "model.safetensors"
    save_pi0_weights(policy.pi0, weights)
    if args.weights_dtype != "float32":
        _cast_safetensors(weights, args.weights_dtype)
    info = {"command": " ".join(sys.argv), "args": vars(args), "pack": str(args.pack),
            "pack_info": header["info"], "task_name": demos[0]["task_name"],
            "demos": [{"init_state_index": d["init_state_index"], "success": bool(d["success"]),
                       "steps": len(d["actions"])} for d in demos],
            "num_windows": len(windows), "action_mode": "absolute", "preset": args.preset,
            "image_size": policy.image_size, "device": str(policy.device), "amp": str(amp),
            "resumed_from_step": start, "steps_done": len(losses),
            "loss_first": losses[0] if losses else None,
            "loss_last20": float(np.mean(losses[-20:])) if losses else None,
            "train_time_s": round(train_s, 1), "ms_per_step": round(1000 * train_s / max(1, len(new)), 2),
            "time_s": round(time.time() - t0, 1), "weights_bytes": weights.stat().st_size,
            "loss_curve": [round(x, 5) for x in losses]}
    (out / "sft_info.json").write_text(json.dumps(info, indent=1) + "\n")
    logger.info("SFT done: loss %s -> %s, %.0f s, weights %s (%d bytes)", info["loss_first"], info["loss_last20"],
                info["time_s"], weights, info["weights_bytes"])
    return info


# ------------------------------------------------------------------------------ timing
def _synthetic_batch(batch_size: int, image_size: int, horizon: int = 50) -> dict[str, Any]:
    """A PI0 training batch of random frames/states/labels (timing only)."""
    import torch

    g = torch.Generator().manual_seed(0)
    batch: dict[str, Any] = {f"image.{slot}": torch.randint(0, 256, (batch_size, 3, image_size, image_size),
                                                             generator=g, dtype=torch.uint8)
                             for slot in ("base_0_rgb", "left_wrist_0_rgb")}
    batch["state"] = torch.randn(batch_size, 8, generator=g)
    batch["prompt"] = ["pick up the ketchup and place it in the basket"] * batch_size
    batch["action"] = torch.randn(batch_size, horizon, 7, generator=g)
    batch["action_is_pad"] = torch.zeros(batch_size, horizon, dtype=torch.bool)
    return batch


def timing(args: argparse.Namespace) -> dict[str, Any]:
    """ms per ``select_action`` (batch sizes ``--act-batches``) and per SFT step (``--train-batches``)."""
    import torch

    from ript.algos.policies.pi0_oft_policy import PI0_OFT_Policy
    from ript.algos.rl_optimizers.cfg_flow_math import weighted_cfg_flow_loss

    policy = PI0_OFT_Policy(device_id=args.device, norm_stats_path=None, preset=args.preset, dtype="float32",
                            freeze_vision_encoder=False)
    cuda = policy.device.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def clock(fn: Any, reps: int) -> float:
        fn()  # warm-up
        sync()
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        sync()
        return 1000 * (time.perf_counter() - t) / reps

    n_params = sum(p.numel() for p in policy.pi0.parameters())
    out: dict[str, Any] = {"preset": args.preset, "device": str(policy.device), "parameters": n_params,
                           "image_size": policy.image_size, "select_action_ms": {}, "train_step_ms": {}}
    if cuda:
        out["gpu"] = torch.cuda.get_device_name(policy.device)
    for b in args.act_batches:
        obs = {k: v for k, v in _synthetic_batch(b, policy.image_size).items() if k not in ("action", "action_is_pad")}
        out["select_action_ms"][b] = round(clock(lambda: policy.select_action(obs), args.reps), 2)
    params = [p for p in policy.pi0.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    amp = torch.bfloat16 if args.amp == "bf16" and cuda else None
    policy.train()
    for b in args.train_batches:
        batch = _synthetic_batch(b, policy.image_size)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device_type=policy.device.type, dtype=amp or torch.float32, enabled=amp is not None):
                o = policy.cfg_flow_losses(batch)
            loss, _ = weighted_cfg_flow_loss(o["losses_pos"].float(), o["losses_uncond"].float(),
                                             torch.ones(b, device=policy.device),
                                             batch["action_is_pad"].to(policy.device), 0.1)
            loss.backward()
            opt.step()

        out["train_step_ms"][b] = round(clock(step, args.reps), 2)
    logger.info("timing: %s", out)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out))
    return out


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("record", help="record a demo pack (needs LIBERO)")
    r.add_argument("--task", type=int, required=True, help="LIBERO-Object task index (0..9)")
    r.add_argument("--out", required=True, help="pack path (.npz)")
    r.add_argument("--num-val", type=int, default=25, help="held-out init states (of 50): demos use the rest")
    r.add_argument("--split-seed", type=int, default=0)
    r.add_argument("--max-demos", type=int, default=0, help="first N training states only (0: all)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--noise", type=float, default=0.1, help="expert action noise std")
    r.add_argument("--mistake-prob", type=float, default=0.0)
    r.add_argument("--executed-labels", action="store_true", help="label with executed (noisy) actions")
    r.add_argument("--camera-size", type=int, default=256, help="task=libero_object_rl's camera_size")
    r.add_argument("--image-size", type=int, default=112, help="the policy's input size (small preset: 112)")
    r.add_argument("--image-stride", type=int, default=10)
    add_train_parser(sub)
    m = sub.add_parser("timing", help="ms per select_action / SFT step of a preset (random inputs)")
    m.add_argument("--preset", default="small")
    m.add_argument("--device", default="cuda")
    m.add_argument("--act-batches", type=int, nargs="+", default=[1, 8])
    m.add_argument("--train-batches", type=int, nargs="+", default=[16, 32])
    m.add_argument("--reps", type=int, default=10)
    m.add_argument("--amp", default="bf16", choices=["bf16", "none"])
    m.add_argument("--out", default=None, help="write the numbers as JSON here")
    return p.parse_args(argv)


def add_train_parser(sub: Any) -> None:
    t = sub.add_parser("train", help="SFT the small PI0 from a pack (no LIBERO needed)")
    t.add_argument("--pack", required=True)
    t.add_argument("--out", required=True, help="output dir: model.safetensors, norm_stats.json, sft_info.json")
    t.add_argument("--num-demos", type=int, default=None, help="the first N demos of the pack (default: all)")
    t.add_argument("--steps", type=int, default=4000)
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--lr", type=float, default=3e-4)
    t.add_argument("--stride", type=int, default=10, help="window stride (a multiple of the pack's image stride)")
    t.add_argument("--uncond-weight", type=float, default=0.1)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--preset", default="small")
    t.add_argument("--device", default="cuda", help="cuda | cpu | cuda:N")
    t.add_argument("--amp", default="bf16", choices=["bf16", "none"], help="autocast on cuda (master weights fp32)")
    t.add_argument("--save-every", type=int, default=500, help="checkpoint (weights + optimizer + step) period")
    t.add_argument("--resume", action="store_true", help="continue from --out's checkpoint")
    t.add_argument("--weights-dtype", default="bfloat16", choices=["bfloat16", "float32"])
    t.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave)")
    t.add_argument("--no-progress", action="store_true")
    t.add_argument("--init-weights", default=None,
                   help="start from these weights (e.g. an earlier start's model.safetensors) instead of the preset's init")
    t.add_argument("--augment", action="store_true",
                   help="augment the frames at every step (openpi's crop, rotation, colour jitter; ript.utils.images): "
                        "without it the few-demo policy keys on exact pixels (docs/learning_libero.md)")


def main(argv: Sequence[str] | None = None) -> Any:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "record":
        return record(args)
    if args.command == "timing":
        return timing(args)
    return train(args)


if __name__ == "__main__":
    main()
