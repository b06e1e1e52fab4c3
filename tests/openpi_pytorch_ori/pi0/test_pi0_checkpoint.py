"""Checkpoint I/O in the reference key layout: round trips, missing CFG-condition parameters
(zero-filled, one log line, also under strict), strict mode, sharded checkpoints, layout remapping
and clear errors."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from safetensors.torch import load_file, save_file

from openpi_pytorch_ori.pi0 import (
    CheckpointKeyMismatchError, PI0Config, PI0Policy, load_pi0_weights, save_pi0_weights,
)

REFERENCE_VLM = "model.paligemma_with_expert.paligemma.language_model.model."
REFERENCE_TIED_HEAD = "model.paligemma_with_expert.paligemma.language_model.lm_head.weight"
REFERENCE_EXPERT_HEAD = "model.paligemma_with_expert.gemma_expert.lm_head.weight"
COND_EMBED = "model.cond_embed.weight"
COND_LAYER_MOD = "model.cond_layer_mod"


def tiny_policy(seed: int, **overrides) -> PI0Policy:
    torch.manual_seed(seed)
    policy = PI0Policy(PI0Config.preset("tiny", **overrides))
    with torch.no_grad():  # a "fine-tuned" policy: non-zero CFG condition
        policy.model.cond_embed.weight.normal_()
    return policy.eval()


@pytest.fixture(scope="module")
def batch():
    gen = torch.Generator().manual_seed(0)
    return {
        "image.base_0_rgb": torch.randint(0, 256, (2, 3, 64, 80), dtype=torch.uint8, generator=gen),
        "state": torch.randn(2, 8, generator=gen),
        "prompt": ["put the bowl on the plate", "turn on the stove"],
        "action": torch.randn(2, 50, 7, generator=gen),
        "noise": torch.randn(2, 50, 32, generator=gen),
        "time": torch.tensor([0.3, 0.8]),
    }


def outputs(policy, batch):
    with torch.no_grad():
        losses = policy(batch, branches="cfg")
        actions = policy.select_action(batch, cfg_scale=2.0, noise=batch["noise"])
    return losses["losses_pos"], losses["losses_uncond"], actions


def assert_same_outputs(policy_a, policy_b, batch):
    for a, b in zip(outputs(policy_a, batch), outputs(policy_b, batch)):
        assert torch.equal(a, b)


def test_save_then_load_reproduces_outputs_exactly(tmp_path, batch):
    trained, fresh = tiny_policy(seed=0), tiny_policy(seed=1)
    save_pi0_weights(trained, tmp_path / "ckpt")
    report = load_pi0_weights(fresh, tmp_path / "ckpt")  # directory holding model.safetensors
    assert report.missing == [] and report.unexpected == []
    assert_same_outputs(trained, fresh, batch)


def test_saved_file_uses_the_reference_key_layout(tmp_path):
    save_pi0_weights(tiny_policy(seed=0), tmp_path / "weights.safetensors")
    saved = load_file(str(tmp_path / "weights.safetensors"))
    assert any(k.startswith(REFERENCE_VLM + "layers.0.") for k in saved)
    assert "model.paligemma_with_expert.paligemma.vision_tower.vision_model.post_layernorm.weight" in saved
    assert "model.paligemma_with_expert.paligemma.multi_modal_projector.linear.weight" in saved
    assert "model.paligemma_with_expert.gemma_expert.model.norm.weight" in saved
    assert "model.state_proj.weight" in saved and COND_EMBED in saved
    # The tied lm_head is stored too (the reference stores both names), as an equal copy.
    assert torch.equal(saved[REFERENCE_TIED_HEAD], saved[REFERENCE_VLM + "embed_tokens.weight"])
    assert not any(".paligemma.model." in k for k in saved)  # no transformers-5.x names leak out


def test_reference_fixture_weights_survive_a_save(tmp_path, fixtures_dir):
    # Loading the reference checkpoint and saving it again gives back every reference weight
    # unchanged, except the expert lm_head, which PI0 never uses and this port does not keep.
    doc = json.loads((fixtures_dir / "pi0_tiny_reference.json").read_text())
    reference = {k: v for k, v in load_file(str(fixtures_dir / "pi0_tiny_reference.safetensors")).items()
                 if k.startswith("model.")}
    policy = PI0Policy(PI0Config.from_reference_json(doc))
    load_pi0_weights(policy, fixtures_dir / "pi0_tiny_reference.safetensors")
    save_pi0_weights(policy, tmp_path / "again.safetensors")
    saved = load_file(str(tmp_path / "again.safetensors"))
    assert set(saved) == (set(reference) - {REFERENCE_EXPERT_HEAD}) | {COND_EMBED}
    for key in set(reference) - {REFERENCE_EXPERT_HEAD}:
        assert torch.equal(saved[key], reference[key]), key


def test_checkpoint_without_cond_embed_loads_reports_it_and_zeroes_it(tmp_path, batch):
    # A pretrained PI0 checkpoint has no cond_embed: it must load, say so, and leave the
    # condition at zero so both CFG branches reproduce the pretrained policy.
    source, target = tiny_policy(seed=0), tiny_policy(seed=1)
    save_pi0_weights(source, tmp_path / "full.safetensors")
    tensors = load_file(str(tmp_path / "full.safetensors"))
    del tensors[COND_EMBED]
    save_file(tensors, str(tmp_path / "pretrained.safetensors"))

    report = load_pi0_weights(target, tmp_path / "pretrained.safetensors", strict=True)
    assert report.zero_filled == [COND_EMBED] and report.missing == [] and report.unexpected == []
    assert torch.count_nonzero(target.model.cond_embed.weight) == 0
    losses_pos, losses_uncond, _ = outputs(target, batch)
    torch.testing.assert_close(losses_pos, losses_uncond, rtol=1e-5, atol=1e-5)  # interleaved layout: equal to rounding


def _modulated(seed: int) -> PI0Policy:
    policy = tiny_policy(seed, cond_layer_modulation=True)
    with torch.no_grad():  # as if trained: the zero-fill must really overwrite it
        policy.model.cond_layer_mod.normal_(std=0.5)
    return policy


def test_checkpoint_without_the_per_layer_condition_loads_zero_filled_with_one_log_line(tmp_path, batch, caplog):
    # A checkpoint saved without cond_layer_modulation (the shipped one, any pretrained PI0) into the
    # default model (modulation on): strict load passes, the modulation is zero, so every output equals
    # the same checkpoint loaded into a model without modulation; one INFO line names the keys.
    source = tiny_policy(seed=0)
    save_pi0_weights(source, tmp_path / "plain.safetensors")
    target = _modulated(seed=1)
    with caplog.at_level(logging.INFO, logger="openpi_pytorch_ori.pi0.checkpoint"):
        report = load_pi0_weights(target, tmp_path / "plain.safetensors", strict=True)
    assert report.zero_filled == [COND_LAYER_MOD] and report.missing == [] and report.unexpected == []
    assert torch.count_nonzero(target.model.cond_layer_mod) == 0
    lines = [r.getMessage() for r in caplog.records if "zero-filled" in r.getMessage()]
    assert len(lines) == 1 and COND_LAYER_MOD in lines[0]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]  # nothing else to warn about
    assert_same_outputs(source, target, batch)


def test_checkpoint_with_the_per_layer_condition_keeps_it(tmp_path, batch):
    trained, fresh = _modulated(seed=0), _modulated(seed=1)
    save_pi0_weights(trained, tmp_path / "mod.safetensors")
    report = load_pi0_weights(fresh, tmp_path / "mod.safetensors", strict=True)
    assert report.zero_filled == [] and report.missing == []
    assert torch.equal(fresh.model.cond_layer_mod, trained.model.cond_layer_mod)
    assert_same_outputs(trained, fresh, batch)


def test_strict_mode_fails_listing_missing_and_unexpected_keys_and_loads_nothing(tmp_path):
    # Only the CFG-condition keys are zero-filled; any other missing or unexpected key still fails
    # a strict load, named in the error, before any weight is touched.
    source, target = tiny_policy(seed=0), _modulated(seed=1)
    save_pi0_weights(source, tmp_path / "full.safetensors")
    tensors = load_file(str(tmp_path / "full.safetensors"))
    del tensors[COND_EMBED]
    del tensors["model.state_proj.bias"]
    tensors["model.some_head_we_do_not_have.weight"] = torch.zeros(3)
    save_file(tensors, str(tmp_path / "odd.safetensors"))
    before = {k: v.clone() for k, v in target.state_dict().items()}

    with pytest.raises(CheckpointKeyMismatchError) as error:
        load_pi0_weights(target, tmp_path / "odd.safetensors", strict=True)
    assert "model.state_proj.bias" in str(error.value) and "model.some_head_we_do_not_have.weight" in str(error.value)
    assert error.value.missing == ["model.state_proj.bias"]
    assert error.value.unexpected == ["model.some_head_we_do_not_have.weight"]
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())


def test_strict_mode_refuses_a_per_layer_condition_the_model_does_not_have(tmp_path):
    # The other direction is a real mismatch: a trained per-layer condition would be dropped.
    save_pi0_weights(_modulated(seed=0), tmp_path / "mod.safetensors")
    with pytest.raises(CheckpointKeyMismatchError) as error:
        load_pi0_weights(tiny_policy(seed=1), tmp_path / "mod.safetensors", strict=True)
    assert error.value.unexpected == [COND_LAYER_MOD] and error.value.missing == []


def test_strict_mode_accepts_known_unused_reference_keys(tmp_path):
    # The expert lm_head of reference checkpoints is known-unused: reported as ignored, never a failure.
    source, target = tiny_policy(seed=0), tiny_policy(seed=1)
    save_pi0_weights(source, tmp_path / "full.safetensors")
    tensors = load_file(str(tmp_path / "full.safetensors"))
    tensors[REFERENCE_EXPERT_HEAD] = torch.zeros(512, 32)
    save_file(tensors, str(tmp_path / "with_head.safetensors"))
    report = load_pi0_weights(target, tmp_path / "with_head.safetensors", strict=True)
    assert REFERENCE_EXPERT_HEAD in report.ignored


def test_sharded_checkpoint_with_index_loads(tmp_path, batch):
    trained, fresh = tiny_policy(seed=0), tiny_policy(seed=1)
    written = save_pi0_weights(trained, tmp_path / "sharded", max_shard_bytes=200_000)
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and all((tmp_path / "sharded" / name).is_file() for name in shards)
    assert len(written) == len(shards) + 1
    report = load_pi0_weights(fresh, tmp_path / "sharded")
    assert len(report.files) == len(shards) and report.missing == []
    assert_same_outputs(trained, fresh, batch)


def test_keys_in_transformers_5_or_unprefixed_layouts_are_accepted(tmp_path, batch):
    # openpi's own PyTorch export has no "model." prefix and uses transformers-5 style names.
    trained, fresh = tiny_policy(seed=0), tiny_policy(seed=1)
    unprefixed = {k: v.contiguous() for k, v in trained.model.state_dict().items()
                  if k != "paligemma_with_expert.paligemma.lm_head.weight"}
    save_file(unprefixed, str(tmp_path / "openpi_style.safetensors"))
    report = load_pi0_weights(fresh.model, tmp_path / "openpi_style.safetensors", strict=True)
    assert report.missing == [] and report.unexpected == []
    assert_same_outputs(trained, fresh, batch)


def test_bfloat16_model_loads_a_float32_checkpoint_in_its_own_dtype(tmp_path):
    save_pi0_weights(tiny_policy(seed=0), tmp_path / "fp32.safetensors")
    bf16 = tiny_policy(seed=1, dtype="bfloat16")
    load_pi0_weights(bf16, tmp_path / "fp32.safetensors")
    assert bf16.model.paligemma_with_expert.dtype == torch.bfloat16
    assert bf16.model.state_proj.weight.dtype == torch.float32  # heads stay float32


def test_missing_path_says_what_to_pass(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.safetensors.index.json"):
        load_pi0_weights(tiny_policy(seed=0), tmp_path / "nope")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(FileNotFoundError, match="No model.safetensors"):
        load_pi0_weights(tiny_policy(seed=0), tmp_path / "empty_dir")


def test_truncated_or_foreign_files_are_value_errors_naming_the_file(tmp_path):
    save_pi0_weights(tiny_policy(seed=0), tmp_path / "tiny.safetensors")
    raw = (tmp_path / "tiny.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="cut.safetensors is not a readable safetensors file"):
        load_pi0_weights(tiny_policy(seed=0), tmp_path / "cut.safetensors")
    save_file({"bert.encoder.weight": torch.zeros(2, 2)}, str(tmp_path / "bert.safetensors"))
    with pytest.raises(ValueError, match="bert.safetensors holds no PI0 parameter"):
        load_pi0_weights(tiny_policy(seed=0), tmp_path / "bert.safetensors")


def test_shape_mismatch_names_the_key_and_both_shapes(tmp_path):
    save_pi0_weights(tiny_policy(seed=0), tmp_path / "tiny.safetensors")
    wider_state = tiny_policy(seed=0, max_state_dim=16)
    with pytest.raises(ValueError, match=r"model.state_proj.weight: checkpoint \(32, 32\) vs model \(32, 16\)"):
        load_pi0_weights(wider_state, tmp_path / "tiny.safetensors")
