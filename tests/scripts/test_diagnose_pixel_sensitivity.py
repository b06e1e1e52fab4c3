"""scripts/diagnose_pixel_sensitivity.py on a tiny start trained here: the clean row is the start's
plain demo loss, perturbed rows differ from it by their frames alone, and a bad path names the fix."""
from __future__ import annotations

import numpy as np
import pytest

from demo_fakes import synthetic_demo
from ript.datasets.demo_pack import save_demo_pack


@pytest.fixture(scope="module")
def tiny_start(tmp_path_factory, script_loader):
    """A tiny-preset start (a few SFT steps) and its synthetic 56-px demo pack."""
    root = tmp_path_factory.mktemp("pixel")
    rng = np.random.default_rng(1)
    pack = save_demo_pack([synthetic_demo(rng, n, i, image_size=56) for i, n in enumerate((40, 55))],
                          root / "pack.npz", info={"image_stride": 10})
    script_loader("sft_libero").main(["train", "--pack", str(pack), "--out", str(root / "start"), "--preset", "tiny",
                                      "--device", "cpu", "--steps", "3", "--batch-size", "4", "--no-progress",
                                      "--weights-dtype", "float32"])
    return root / "start", pack


def test_rows_differ_by_their_frames_alone(tiny_start, script_loader, tmp_path):
    pixel = script_loader("diagnose_pixel_sensitivity")
    start, pack = tiny_start
    report = pixel.main(["--start", str(start), "--pack", str(pack), "--preset", "tiny", "--stride", "10",
                         "--out", str(tmp_path / "r.json")])
    rows = {r["perturbation"]: r["demo_fm_loss"] for r in report["rows"]}
    assert len(rows) == len(pixel.PERTURBATIONS) and report["windows"] == 4 + 6
    clean = rows["recorded frames"]
    assert np.isfinite(clean) and clean > 0
    # Same windows, noise and time: only the frames change the loss, and the full augmentation does.
    assert rows["openpi's training augmentation (all of it)"] != pytest.approx(clean, rel=1e-6)
    again = pixel.main(["--start", str(start), "--pack", str(pack), "--preset", "tiny", "--stride", "10"])
    assert [r["demo_fm_loss"] for r in again["rows"]] == [r["demo_fm_loss"] for r in report["rows"]]
    assert (tmp_path / "r.json").exists()


def test_a_missing_start_names_what_it_needs(script_loader, tmp_path):
    pixel = script_loader("diagnose_pixel_sensitivity")
    with pytest.raises(SystemExit, match="model.safetensors and norm_stats.json"):
        pixel.main(["--start", str(tmp_path / "nowhere"), "--pack", str(tmp_path / "p.npz")])
