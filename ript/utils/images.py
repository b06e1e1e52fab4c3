"""Camera frames as the policy sees them: openpi's flip and resize-with-pad, per frame.

The LIBERO runner's observation conversion (``ript.env_runner.pi0_runner_utils``) and the demo
recorder (``ript.envs.libero_object_demos``) both call this, so SFT frames and rollout frames are
the same pixels; it lives on the lowest floor so that environments need not import the runner.

:func:`augment_frames` is the training-time augmentation of those frames (``algo.image_augmentation``,
``sft_libero.py train --augment``): by default the magnitudes openpi's PI0 fine-tuning uses (a random
crop keeping 95 % of each side, resized back, a rotation within +-5 degrees, colour jitter of
brightness 0.3, contrast 0.4, saturation 0.5; the wrist camera gets the colour jitter only), written
here in torch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F


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


@dataclass(frozen=True)
class Augmentation:
    """How strong :func:`augment_frames` is; the defaults are openpi's PI0 fine-tuning magnitudes.

    ``crop_side_fraction``: each side of the random crop (then resized back), 1 = no crop;
    ``max_rotation_deg``: rotation drawn in +-this; ``brightness`` / ``contrast`` / ``saturation``:
    factors drawn in 1 +- this (torchvision's ColorJitter convention).
    """

    crop_side_fraction: float = 0.95
    max_rotation_deg: float = 5.0
    brightness: float = 0.3
    contrast: float = 0.4
    saturation: float = 0.5

    def __post_init__(self) -> None:
        if not 0 < self.crop_side_fraction <= 1:
            raise ValueError(f"crop_side_fraction={self.crop_side_fraction} must be in (0, 1] (1 = no crop)")
        for key in ("max_rotation_deg", "brightness", "contrast", "saturation"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key}={getattr(self, key)} must be >= 0 (0 = off)")


OPENPI_AUGMENTATION = Augmentation()
_GRAY = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as torchvision's grayscale


def augment_frames(frames: torch.Tensor, seeds: Sequence[int], spatial: bool = True,
                   strength: Augmentation = OPENPI_AUGMENTATION) -> torch.Tensor:
    """A randomly augmented copy of uint8 frames (N, 3, H, W), frame i drawn from ``seeds[i]``.

    ``spatial``: crop + resize + rotate (one bilinear resampling), then colour jitter; False (the
    wrist camera: its view is fixed to the gripper) applies the colour jitter only. The same seed
    gives the same frame, so a resumed run repeats its augmentations exactly.
    """
    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(f"augment_frames expects uint8 (N, 3, H, W) frames, got {frames.dtype} {tuple(frames.shape)}")
    if len(seeds) != frames.shape[0]:
        raise ValueError(f"augment_frames got {len(seeds)} seeds for {frames.shape[0]} frames; pass one per frame")
    # (N, 6): crop centre x/y in [-1, 1] units of the free margin, angle, brightness, contrast, saturation.
    draws = torch.stack([torch.rand(6, generator=torch.Generator().manual_seed(int(s)), dtype=torch.float64)
                         for s in seeds]).to(torch.float32)
    out = frames.to(torch.float32)
    if spatial:
        out = _crop_and_rotate(out, strength.crop_side_fraction, draws[:, 0] * 2 - 1, draws[:, 1] * 2 - 1,
                               (draws[:, 2] * 2 - 1) * math.radians(strength.max_rotation_deg))
    out = _colour_jitter(out, 1 + (draws[:, 3] * 2 - 1) * strength.brightness,
                         1 + (draws[:, 4] * 2 - 1) * strength.contrast, 1 + (draws[:, 5] * 2 - 1) * strength.saturation)
    return out.round().clamp(0, 255).to(torch.uint8)


def augment_camera_batch(batch: dict, seeds: Sequence[int], strength: Augmentation = OPENPI_AUGMENTATION) -> None:
    """Replace every ``image.<slot>`` of a PI0 training batch by an augmented copy, in place; the
    wrist camera, which moves with the gripper, gets the colour jitter only."""
    for key in [k for k in batch if k.startswith("image.")]:
        batch[key] = augment_frames(batch[key], seeds, spatial="wrist" not in key, strength=strength)


def _crop_and_rotate(frames: torch.Tensor, scale: float, shift_x: torch.Tensor, shift_y: torch.Tensor,
                     angle: torch.Tensor) -> torch.Tensor:
    """Each output pixel samples the input at centre + R(angle) * (scale * p): the crop of side
    ``scale`` (its centre shifted within the free margin) resized back and rotated."""
    margin = 1 - scale  # normalised coordinates span [-1, 1]: the crop centre moves within +-margin
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack([torch.stack([scale * cos, -scale * sin, shift_x * margin], dim=1),
                         torch.stack([scale * sin, scale * cos, shift_y * margin], dim=1)], dim=1)  # (N, 2, 3)
    grid = F.affine_grid(theta, list(frames.shape), align_corners=False)
    return F.grid_sample(frames, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _colour_jitter(frames: torch.Tensor, brightness: torch.Tensor, contrast: torch.Tensor,
                   saturation: torch.Tensor) -> torch.Tensor:
    """Brightness, then contrast (about the frame's mean grey), then saturation (about each pixel's
    grey); factors (N,), clamped to [0, 255] after each as torchvision does."""
    weights = torch.tensor(_GRAY, dtype=frames.dtype).view(1, 3, 1, 1)
    out = (frames * brightness.view(-1, 1, 1, 1)).clamp(0, 255)
    mean_grey = (out * weights).sum(dim=1, keepdim=True).mean(dim=(2, 3), keepdim=True)  # (N, 1, 1, 1)
    out = (mean_grey + (out - mean_grey) * contrast.view(-1, 1, 1, 1)).clamp(0, 255)
    grey = (out * weights).sum(dim=1, keepdim=True)  # (N, 1, H, W)
    return (grey + (out - grey) * saturation.view(-1, 1, 1, 1)).clamp(0, 255)


__all__ = ["OPENPI_AUGMENTATION", "Augmentation", "augment_camera_batch", "augment_frames", "camera_frame_for_policy",
           "resize_with_pad_like_openpi"]
