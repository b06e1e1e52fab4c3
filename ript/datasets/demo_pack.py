"""Demo packs: recorded demonstrations in one compressed file that travels to a GPU machine.

A pack is an ``.npz`` (``np.savez_compressed``) holding, per demo, every step's proprioception
(``robot0_eef_pos`` / ``robot0_eef_quat`` / ``robot0_gripper_qpos``), labels (``actions``) and
executed actions, the init state, and the camera frames of the image steps only (every
``image_stride``-th step: where SFT windows and rollout chunks start), each frame PNG-encoded
(lossless; ~2x smaller than deflate on raw pixels). Metadata (task, init-state index, success,
camera size, image size, image stride, recording settings) is one JSON entry.

Loading gives back the demo dicts of :mod:`ript.envs.libero_object_demos` bit for bit (images
None off the image steps), so :func:`ript.algos.sft_warm_start.demonstration_windows` cuts the
same windows from a pack as from the recording. Only numpy and PIL are needed: no simulator.
"""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

FORMAT = "ript-demo-pack/1"
ARRAY_KEYS = ("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos", "actions", "executed_actions",
              "init_state")
IMAGE_KEYS = ("agentview_image", "robot0_eye_in_hand_image")
META_KEYS = ("task_name", "task_id", "task_description", "init_state_index", "success", "mistake",
             "image_stride", "camera_size", "image_size", "images_converted")


def _png(img: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(img)).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def _unpng(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def save_demo_pack(demos: Sequence[Mapping[str, Any]], path: str | Path, info: Mapping[str, Any] | None = None
                   ) -> Path:
    """Write ``demos`` (recorded demo dicts) to ``path`` (.npz); ``info``: extra metadata (settings)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    metas = []
    for i, demo in enumerate(demos):
        num_steps = len(demo["actions"])
        steps = [t for t in range(num_steps) if demo[IMAGE_KEYS[0]][t] is not None]
        for key in IMAGE_KEYS:
            if [t for t in range(num_steps) if demo[key][t] is not None] != steps:
                raise ValueError(f"demo {i}: cameras rendered at different steps; cannot pack")
            blobs = [_png(demo[key][t]) for t in steps]
            arrays[f"{i}/{key}"] = np.frombuffer(b"".join(blobs), np.uint8)
            arrays[f"{i}/{key}.offsets"] = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
        for key in ARRAY_KEYS:
            if demo.get(key) is not None:
                arrays[f"{i}/{key}"] = np.asarray(demo[key])
        meta = {k: demo.get(k) for k in META_KEYS}
        meta.update(num_steps=num_steps, image_steps=steps)
        metas.append(meta)
    header = {"format": FORMAT, "num_demos": len(metas), "demos": metas, "info": dict(info or {})}
    arrays["meta.json"] = np.frombuffer(json.dumps(header).encode("utf-8"), np.uint8)
    with open(path, "wb") as f:  # a file object: np.savez would append ".npz" to another suffix
        np.savez_compressed(f, **arrays)
    return path


def read_pack_header(path: str | Path) -> dict[str, Any]:
    """The pack's metadata (``format``, ``num_demos``, per-demo ``demos``, recording ``info``)."""
    with np.load(path, allow_pickle=False) as z:
        header = json.loads(z["meta.json"].tobytes().decode("utf-8"))
    if header.get("format") != FORMAT:
        raise ValueError(f"{path} is not a demo pack of format {FORMAT!r} (found {header.get('format')!r}); "
                         "write it with ript.datasets.demo_pack.save_demo_pack")
    return header


def load_demo_pack(path: str | Path, num_demos: int | None = None) -> list[dict[str, Any]]:
    """The first ``num_demos`` (all if None) demos of a pack as demo dicts."""
    header = read_pack_header(path)
    n = header["num_demos"] if num_demos is None else int(num_demos)
    if not 1 <= n <= header["num_demos"]:
        raise ValueError(f"num_demos={num_demos}: the pack {path} holds {header['num_demos']} demos; "
                         f"ask for 1..{header['num_demos']}")
    demos = []
    with np.load(path, allow_pickle=False) as z:
        for i, meta in enumerate(header["demos"][:n]):
            demo: dict[str, Any] = {k: meta[k] for k in META_KEYS}
            for key in ARRAY_KEYS:
                if f"{i}/{key}" in z:
                    demo[key] = z[f"{i}/{key}"]
            for key in IMAGE_KEYS:
                blob, offsets = z[f"{i}/{key}"].tobytes(), z[f"{i}/{key}.offsets"]
                frames: list[np.ndarray | None] = [None] * meta["num_steps"]
                for j, t in enumerate(meta["image_steps"]):
                    frames[t] = _unpng(blob[offsets[j]:offsets[j + 1]])
                demo[key] = frames
            demos.append(demo)
    return demos


__all__ = ["FORMAT", "load_demo_pack", "read_pack_header", "save_demo_pack"]
