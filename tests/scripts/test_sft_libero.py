"""scripts/sft_libero.py: the small preset samples on CPU, SFT resumes exactly, and training from a
pack imports no simulator or Hydra (the GPU machine has neither)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
from demo_fakes import synthetic_demo  # noqa: E402

from ript.datasets.demo_pack import save_demo_pack  # noqa: E402


@pytest.fixture()
def tiny_pack(tmp_path) -> Path:
    """Two synthetic demos with 56-px frames (the tiny preset's input size)."""
    rng = np.random.default_rng(1)
    return save_demo_pack([synthetic_demo(rng, n, i, image_size=56) for i, n in enumerate((40, 55))],
                          tmp_path / "pack.npz", info={"image_stride": 10})


def _train(pack: Path, out: Path, steps: int, *extra: str) -> dict:
    sys.path.insert(0, str(REPO / "scripts"))
    import sft_libero

    return sft_libero.main(["train", "--pack", str(pack), "--out", str(out), "--preset", "tiny", "--device", "cpu",
                            "--steps", str(steps), "--batch-size", "4", "--lr", "1e-3", "--no-progress",
                            "--weights-dtype", "float32", *extra])


def test_small_preset_samples_a_finite_chunk_on_cpu():
    from ript.algos.policies.pi0_oft_policy import PI0_OFT_Policy

    torch.manual_seed(0)
    policy = PI0_OFT_Policy(device_id="cpu", preset="small", dtype="float32")
    assert policy.image_size == 112
    assert 7.5e6 < sum(p.numel() for p in policy.pi0.parameters()) < 8.5e6
    obs = {"image.base_0_rgb": np.zeros((1, 3, 112, 112), np.uint8),
           "image.left_wrist_0_rgb": np.full((1, 3, 112, 112), 128, np.uint8),
           "state": np.zeros((1, 8), np.float32), "prompt": ["pick up the ketchup and place it in the basket"]}
    chunk = policy.select_action(obs)
    assert chunk.shape == (1, 50, 7) and torch.isfinite(chunk).all()


def test_resume_continues_the_same_run(tiny_pack, tmp_path):
    """4 steps straight == 2 steps, then --resume to 4: same step count, loss curve and weights."""
    from safetensors.torch import load_file

    full = _train(tiny_pack, tmp_path / "full", 4)
    _train(tiny_pack, tmp_path / "cut", 2, "--save-every", "2")
    resumed = _train(tiny_pack, tmp_path / "cut", 4, "--resume", "--save-every", "2")
    assert resumed["resumed_from_step"] == 2 and resumed["steps_done"] == full["steps_done"] == 4
    np.testing.assert_allclose(resumed["loss_curve"], full["loss_curve"], rtol=1e-4, atol=1e-5)
    a, b = load_file(str(tmp_path / "full" / "model.safetensors")), load_file(str(tmp_path / "cut" / "model.safetensors"))
    assert set(a) == set(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
    info = json.loads((tmp_path / "cut" / "sft_info.json").read_text())
    assert info["num_windows"] == 4 + 6 and (tmp_path / "cut" / "norm_stats.json").exists()


BLOCKER = """
import importlib.abc, runpy, sys
BLOCKED = ("libero", "robosuite", "hydra", "omegaconf", "mujoco", "bddl", "gym", "gymnasium")
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is not installed on the GPU machine")
sys.meta_path.insert(0, Block())
sys.argv = ["scripts/sft_libero.py"] + sys.argv[1:]
runpy.run_path("scripts/sft_libero.py", run_name="__main__")
assert not [m for m in sys.modules if m.split(".")[0] in BLOCKED]
"""


def test_train_from_pack_imports_no_simulator_or_hydra(tiny_pack, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-c", BLOCKER, "train", "--pack", str(tiny_pack), "--out", str(out),
                           "--preset", "tiny", "--device", "cpu", "--steps", "1", "--batch-size", "2",
                           "--no-progress"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "model.safetensors").exists() and (out / "sft_info.json").exists()


def test_init_weights_starts_from_an_earlier_start_and_augment_is_recorded(tiny_pack, tmp_path):
    """--init-weights loads an earlier start (one step at lr ~0 leaves its weights), --augment is in sft_info."""
    from safetensors.torch import load_file

    _train(tiny_pack, tmp_path / "first", 3)
    first = tmp_path / "first" / "model.safetensors"
    info = _train(tiny_pack, tmp_path / "again", 1, "--lr", "1e-12", "--init-weights", str(first), "--augment")
    a, b = load_file(str(first)), load_file(str(tmp_path / "again" / "model.safetensors"))
    assert set(a) == set(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    assert info["args"]["init_weights"] == str(first) and info["args"]["augment"] is True
