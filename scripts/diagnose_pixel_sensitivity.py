"""How much a PI0 start's actions hang on exact pixels: its flow-matching loss on its own SFT demos,
with the frames as recorded and perturbed (colour jitter, a crop shift, a rotation) at growing strength.

A policy whose loss on its own demos jumps when the camera image moves by a pixel has learned the
pixels of its few training scenes rather than where things are; RL updates on such a policy do not
carry from one init state to another (docs/learning_libero.md, "Why RL on the few-demo start does not
reach held-out states"). Each perturbation is drawn per window from a fixed seed, and every row uses
the same windows, noise and flow time, so the rows differ in the frames alone. Example::

    PYTHONPATH=$PWD python scripts/diagnose_pixel_sensitivity.py \\
        --start ript/assets/checkpoints/pi0_small_libero_object_ketchup \\
        --pack gpu_inputs/libero_object_task4_10demos.npz --num-demos 10 --out report.json
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ript.algos.rl_optimizers.cfg_flow_optimizer_pi0 import conditional_loss_sum
from ript.utils.images import Augmentation, augment_camera_batch

logger = logging.getLogger("diagnose_pixel_sensitivity")

_NONE = dict(crop_side_fraction=1.0, max_rotation_deg=0.0, brightness=0.0, contrast=0.0, saturation=0.0)
# (row name, perturbation): each alone, from barely visible to openpi's training augmentation.
PERTURBATIONS: list[tuple[str, Augmentation]] = [
    ("recorded frames", Augmentation(**_NONE)),
    *[(f"colour jitter x{s:g} of openpi's", Augmentation(**{**_NONE, "brightness": 0.3 * s, "contrast": 0.4 * s,
                                                             "saturation": 0.5 * s})) for s in (0.05, 0.1, 0.25, 1.0)],
    *[(f"crop {c:g} of each side (shift <= {(1 - c) * 56:.1f} px at 112 px)",
       Augmentation(**{**_NONE, "crop_side_fraction": c})) for c in (0.99, 0.98, 0.95)],
    *[(f"rotation within +-{r:g} deg", Augmentation(**{**_NONE, "max_rotation_deg": r})) for r in (1.0, 2.0, 5.0)],
    ("openpi's training augmentation (all of it)", Augmentation()),
]


def demo_loss(policy: Any, windows: Sequence[Any], strength: Augmentation, seed: int = 0,
              batch_size: int = 16) -> float:
    """Conditional-branch flow-matching loss (element mean over real steps and the 7 action dims) on
    ``windows``, their frames perturbed by ``strength``; noise, time and perturbation seeded per window."""
    def window_seed(window: Any, stream: int = 0) -> int:  # stream 1: the frames' perturbation
        entropy = [seed, window.episode_index, window.start_step] + ([stream] if stream else [])
        return int(np.random.SeedSequence(entropy).generate_state(1)[0])

    def perturb(batch: dict[str, Any], chunk: list[Any]) -> None:
        augment_camera_batch(batch, [window_seed(w, stream=1) for w in chunk], strength)

    total, count = conditional_loss_sum(policy, windows, window_seed, int(policy.config.max_action_dim), batch_size,
                                        prepare_batch=perturb)
    return total / count


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--start", type=Path, required=True,
                        help="a start's folder: model.safetensors + norm_stats.json")
    parser.add_argument("--pack", type=Path, required=True, help="its SFT demo pack (scripts/sft_libero.py record)")
    parser.add_argument("--num-demos", type=int, default=None, help="the first N demos (the start's); default all")
    parser.add_argument("--stride", type=int, default=50, help="window stride over each demo")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="JSON report")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for path in (args.start / "model.safetensors", args.start / "norm_stats.json", args.pack):
        if not path.exists():
            raise SystemExit(f"Config error: {path} does not exist; --start needs model.safetensors and "
                             f"norm_stats.json (an sft_libero.py train output), --pack a demo pack")

    from ript.algos.policies.pi0_oft_policy import PI0_OFT_Policy
    from ript.algos.sft_warm_start import demonstration_windows
    from ript.datasets.demo_pack import load_demo_pack

    policy = PI0_OFT_Policy(device_id=args.device, norm_stats_path=str(args.start / "norm_stats.json"),
                            pretrained_path=str(args.start / "model.safetensors"), preset=args.preset, dtype="float32")
    policy.eval()
    demos = load_demo_pack(args.pack, args.num_demos)
    windows = demonstration_windows(demos, policy.norm_stats, stride=args.stride, action_mode="absolute")
    rows = []
    for name, strength in PERTURBATIONS:
        loss = demo_loss(policy, windows, strength, seed=args.seed)
        rows.append({"perturbation": name, "strength": vars(strength), "demo_fm_loss": loss})
        logger.info("%-58s demo loss %.4f (x%.1f)", name, loss, loss / rows[0]["demo_fm_loss"])
    report = {"start": str(args.start), "pack": str(args.pack), "num_demos": args.num_demos, "windows": len(windows),
              "rows": rows}
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
