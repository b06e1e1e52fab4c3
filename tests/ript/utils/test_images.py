"""augment_frames: openpi-sized training augmentation of the policy's camera frames."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ript.utils.images import Augmentation, augment_frames


def _frames(n: int = 4, size: int = 112, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.integers(0, 256, (n, 3, size, size), dtype=np.uint8))


def _dot_frames(n: int, size: int = 112) -> torch.Tensor:
    """Black frames with one white 2x2 dot at the centre."""
    frames = torch.zeros(n, 3, size, size, dtype=torch.uint8)
    frames[:, :, size // 2 - 1:size // 2 + 1, size // 2 - 1:size // 2 + 1] = 255
    return frames


def _brightest(frame: torch.Tensor) -> np.ndarray:
    grey = frame.float().mean(dim=0)
    return np.array(np.unravel_index(int(grey.argmax()), grey.shape), dtype=float)


def test_a_seed_fixes_the_augmentation_and_other_seeds_give_other_frames():
    frames = _frames()
    out = augment_frames(frames, [1, 2, 3, 4])
    assert out.dtype == torch.uint8 and out.shape == frames.shape
    assert torch.equal(out, augment_frames(frames, [1, 2, 3, 4]))  # a resumed run repeats it
    assert not torch.equal(out, frames)
    other = augment_frames(frames, [5, 6, 7, 8])
    assert all(not torch.equal(out[i], other[i]) for i in range(4))


def test_frames_are_augmented_independently_of_their_batch():
    frames = _frames()
    batch = augment_frames(frames, [11, 12, 13, 14])
    alone = augment_frames(frames[2:3], [13])
    assert torch.equal(batch[2:3], alone)


def test_the_crop_and_rotation_move_content_by_at_most_openpis_margin():
    # The centre dot moves only with the crop's shift: |shift| <= 5 % of the half-width on each
    # axis, magnified by 1 / 0.95 -> at most ~4.2 px on a 112-px frame; rotation is about the centre.
    frames = _dot_frames(32)
    out = augment_frames(frames, list(range(32)))
    centre = _brightest(frames[0])
    moves = [np.linalg.norm(_brightest(out[i]) - centre) for i in range(32)]
    assert max(moves) <= 5.0
    assert sum(m >= 1.0 for m in moves) >= 8  # the crop does move it


def test_the_rotation_stays_within_five_degrees():
    # A horizontal bright line through the centre: its tilt after augmentation is at most 5 degrees
    # (plus a pixel of resampling), and some frames are visibly tilted.
    size = 112
    frames = torch.zeros(24, 3, size, size, dtype=torch.uint8)
    frames[:, :, size // 2, 8:-8] = 255
    out = augment_frames(frames, list(range(100, 124)))
    tilts = []
    for frame in out:
        grey = frame.float().mean(dim=0)
        left, right = grey[:, 30].argmax().item(), grey[:, size - 31].argmax().item()
        tilts.append(np.degrees(np.arctan2(abs(right - left), size - 61)))
    assert max(tilts) <= 5.0 + np.degrees(np.arctan2(1.5, size - 61))
    assert max(tilts) >= 2.0


def test_the_wrist_camera_keeps_its_geometry():
    # spatial=False: colour jitter only, which keeps every pixel where it is.
    frames = _dot_frames(16)
    out = augment_frames(frames, list(range(16)), spatial=False)
    centre = _brightest(frames[0])
    assert all(np.array_equal(_brightest(out[i]), centre) for i in range(16))
    assert not torch.equal(out, frames)  # ... and does change the colours


def test_colour_jitter_keeps_the_order_of_grey_levels():
    # On a grey frame saturation does nothing and brightness / contrast are increasing maps, so a
    # darker region never becomes brighter than a lighter one.
    frames = torch.full((16, 3, 8, 8), 64, dtype=torch.uint8)
    frames[:, :, :, 4:] = 192
    out = augment_frames(frames, list(range(16)), spatial=False).float()
    assert torch.all(out[:, :, :, 4:].mean(dim=(1, 2, 3)) >= out[:, :, :, :4].mean(dim=(1, 2, 3)))
    assert len({round(v, 1) for v in out[:, :, :, 4:].mean(dim=(1, 2, 3)).tolist()}) > 8  # factors differ per frame


@pytest.mark.parametrize("frames,seeds,match", [
    (torch.zeros(2, 3, 8, 8), [0, 1], "uint8"),
    (torch.zeros(2, 8, 8, 3, dtype=torch.uint8), [0, 1], r"\(N, 3, H, W\)"),
    (torch.zeros(2, 3, 8, 8, dtype=torch.uint8), [0], "one per frame"),
])
def test_bad_input_is_refused_with_the_fix(frames, seeds, match):
    with pytest.raises(ValueError, match=match):
        augment_frames(frames, seeds)


def test_zero_strength_is_the_identity_and_strength_is_validated():
    frames = _frames()
    off = Augmentation(crop_side_fraction=1.0, max_rotation_deg=0.0, brightness=0.0, contrast=0.0, saturation=0.0)
    assert torch.equal(augment_frames(frames, [1, 2, 3, 4], strength=off), frames)
    milder = Augmentation(crop_side_fraction=0.99, max_rotation_deg=1.0, brightness=0.03, contrast=0.04, saturation=0.05)
    default_change = (augment_frames(frames, [1, 2, 3, 4]).float() - frames.float()).abs().mean()
    mild_change = (augment_frames(frames, [1, 2, 3, 4], strength=milder).float() - frames.float()).abs().mean()
    assert 0 < mild_change < default_change
    for bad in ({"crop_side_fraction": 0.0}, {"crop_side_fraction": 1.2}, {"brightness": -0.1}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            Augmentation(**bad)
