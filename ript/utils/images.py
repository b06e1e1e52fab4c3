"""Camera frames as the policy sees them: openpi's flip and resize-with-pad, per frame.

The LIBERO runner's observation conversion (``ript.env_runner.pi0_runner_utils``) and the demo
recorder (``ript.envs.libero_object_demos``) both call this, so SFT frames and rollout frames are
the same pixels; it lives on the lowest floor so that environments need not import the runner.
"""
from __future__ import annotations

import numpy as np


def resize_with_pad_like_openpi(img: np.ndarray, size: int) -> np.ndarray:
    """uint8 (H, W, 3) -> uint8 (size, size, 3), as openpi's client resizes LIBERO frames.

    Aspect-preserving PIL bilinear resize on uint8 (PIL antialiases when it downscales: its
    bilinear filter widens with the scale factor), then centred black padding for a non-square
    frame. pi0_libero was trained and published on 256-px renders resized this way; PI0's own
    tensor resize (plain bilinear on floats, padding at the top-left) gives visibly different
    pixels, so the conversion does it before PI0 and PI0's resize then sees the target size.
    """
    from PIL import Image  # Pillow: only needed when a resize happens

    height, width = img.shape[:2]
    if (height, width) == (size, size):
        return img
    ratio = max(width / size, height / size)
    new_height, new_width = int(height / ratio), int(width / ratio)
    resized = np.asarray(Image.fromarray(img).resize((new_width, new_height), resample=Image.BILINEAR))
    if (new_height, new_width) == (size, size):
        return resized
    padded = np.zeros((size, size, 3), dtype=np.uint8)
    top, left = (size - new_height) // 2, (size - new_width) // 2
    padded[top:top + new_height, left:left + new_width] = resized
    return padded


def camera_frame_for_policy(img: np.ndarray, rotate_180: bool = True, image_size: int | None = None) -> np.ndarray:
    """uint8 (H, W, 3) render -> the frame the policy reads: flipped (LIBERO renders upside down
    relative to the data PI0 was trained on), then resized to ``image_size`` (None: kept)."""
    if rotate_180:
        img = img[::-1, ::-1]
    if image_size is not None:
        img = resize_with_pad_like_openpi(np.ascontiguousarray(img), image_size)
    return img


__all__ = ["camera_frame_for_policy", "resize_with_pad_like_openpi"]
