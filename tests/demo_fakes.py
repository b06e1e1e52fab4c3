"""Synthetic recorded demos (the format ript.envs.libero_object_demos writes) for the demo-pack, SFT
and demo-replay tests."""
from __future__ import annotations

import numpy as np

STRIDE = 10


def synthetic_demo(rng: np.random.Generator, num_steps: int, index: int, image_size: int = 112,
                   success: bool | None = None) -> dict:
    """A demo dict as ript.envs.libero_object_demos records it (images converted, at image steps only);
    ``success`` defaults to even indices."""
    quat = rng.normal(size=(num_steps, 4))
    demo = {"robot0_eef_pos": rng.normal(size=(num_steps, 3)),
            "robot0_eef_quat": quat / np.linalg.norm(quat, axis=1, keepdims=True),
            "robot0_gripper_qpos": rng.normal(size=(num_steps, 2)),
            "actions": rng.uniform(-1, 1, (num_steps, 7)).astype(np.float32),
            "executed_actions": rng.uniform(-1, 1, (num_steps, 7)).astype(np.float32),
            "init_state": rng.normal(size=77), "task_name": "pick_up_the_ketchup_and_place_it_in_the_basket",
            "task_id": 4, "task_description": "pick up the ketchup and place it in the basket",
            "init_state_index": index, "success": bool(index % 2 == 0) if success is None else success,
            "mistake": "none",
            "image_stride": STRIDE, "camera_size": 256, "image_size": image_size, "images_converted": True}
    for key in ("agentview_image", "robot0_eye_in_hand_image"):
        demo[key] = [rng.integers(0, 256, (image_size, image_size, 3), dtype=np.uint8) if t % STRIDE == 0 else None
                     for t in range(num_steps)]
    return demo
