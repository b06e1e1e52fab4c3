"""Parity with the reference PI0 (openpi_pytorch port, transformers 4.48) on the tiny fixture.

The fixture (`tests/fixtures/pi0_tiny_reference.{json,safetensors}`, see its README) stores a tiny reference
model's weights in the reference key layout, the call inputs and the reference outputs. We build
our model from the JSON's config numbers, load the weights through the normal checkpoint loader,
and must reproduce the outputs within the JSON's tolerance (atol 1e-4, rtol 0, float32).
`cond_embed` is absent from the reference, so it stays at its zero init: both CFG branch values
must then reproduce the reference exactly.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from openpi_pytorch_ori.pi0 import PI0Config, PI0Policy, load_pi0_weights
from openpi_pytorch_ori.pi0.modeling_pi0 import euler_times
from openpi_pytorch_ori.pi0.paligemma_with_expert import make_att_2d_masks

INPUT_PREFIX, OUTPUT_PREFIX = "fixture.inputs.", "fixture.outputs."


@pytest.fixture(scope="module")
def reference(fixtures_dir):
    doc = json.loads((fixtures_dir / "pi0_tiny_reference.json").read_text())
    tensors = load_file(str(fixtures_dir / "pi0_tiny_reference.safetensors"))
    inputs = {k[len(INPUT_PREFIX):]: v for k, v in tensors.items() if k.startswith(INPUT_PREFIX)}
    outputs = {k[len(OUTPUT_PREFIX):]: v for k, v in tensors.items() if k.startswith(OUTPUT_PREFIX)}
    return {"doc": doc, "inputs": inputs, "outputs": outputs, "atol": doc["tolerances"]["atol"],
            "path": fixtures_dir / "pi0_tiny_reference.safetensors"}


def _build_policy(reference, **overrides):
    config = PI0Config.from_reference_json(reference["doc"], **overrides)
    policy = PI0Policy(config)
    report = load_pi0_weights(policy, reference["path"])
    return policy.eval(), report


@pytest.fixture(scope="module")
def policy(reference):
    return _build_policy(reference)[0]


@pytest.fixture(scope="module")
def model_inputs(reference):
    """Policy-prepared inputs, taken from the fixture so the core model is tested on its own."""
    out, inp = reference["outputs"], reference["inputs"]
    return dict(images=out["images"], img_masks=out["img_masks"], lang_tokens=inp["lang_tokens"],
                lang_masks=inp["lang_masks"], state=out["state_padded"])


def assert_close(actual, expected, atol, where=None):
    """|actual - expected| <= atol elementwise (rtol 0, as the fixture's JSON specifies)."""
    if where is not None:
        actual, expected = actual[where], expected[where]
    diff = (actual.detach().float() - expected.float()).abs().max().item()
    assert diff <= atol, f"max abs diff {diff:.3g} > atol {atol}"


def test_config_built_from_reference_numbers(reference, policy):
    cfg, doc = policy.config, reference["doc"]
    assert (cfg.tokenizer_max_length, cfg.proj_width, cfg.vision.image_size) == (16, 32, 56)
    assert (cfg.vlm.hidden_size, cfg.expert.hidden_size, cfg.vlm.vocab_size) == (64, 32, 300)
    assert cfg.prefix_length == doc["derived"]["prefix_len"]
    assert cfg.suffix_length == doc["derived"]["suffix_len"]


def test_loader_reports_reference_checkpoint(reference):
    _, report = _build_policy(reference)
    # cond_embed is ours (not in the reference): zero-filled, not a missing key.
    assert report.zero_filled == ["model.cond_embed.weight"] and report.missing == []
    # The expert's LM head is never used by PI0 and not instantiated; the tied VLM lm_head is a
    # duplicate of embed_tokens. Both are known and reported as ignored, not as failures.
    assert "model.paligemma_with_expert.gemma_expert.lm_head.weight" in report.ignored
    assert "model.paligemma_with_expert.paligemma.language_model.lm_head.weight" in report.ignored
    # The fixture file also stores its inputs/outputs; those are the only unknown keys.
    assert report.unexpected and all(k.startswith("fixture.") for k in report.unexpected)
    assert "model.paligemma_with_expert.paligemma.language_model.model.layers.0.mlp.up_proj.weight" in report.remapped


def test_prepare_images_and_state_match_reference(reference, policy):
    images, img_masks = policy.prepare_images(reference["inputs"])
    assert torch.equal(img_masks, reference["outputs"]["img_masks"])
    assert_close(images, reference["outputs"]["images"], 1e-6)
    assert torch.equal(policy.prepare_state(reference["inputs"]), reference["outputs"]["state_padded"])
    actions, raw_dim = policy.prepare_action(reference["inputs"])
    assert raw_dim == 7 and torch.equal(actions, reference["outputs"]["actions_padded"])


def test_prefix_and_suffix_embeddings_match_reference(reference, policy, model_inputs):
    out = reference["outputs"]
    with torch.no_grad():
        embs, pad, att = policy.model.embed_prefix(**{k: model_inputs[k] for k in
                                                      ("images", "img_masks", "lang_tokens", "lang_masks")})
        suffix, suffix_pad, suffix_att = policy.model.embed_suffix(
            model_inputs["state"], out["x_t"], reference["inputs"]["time"], is_positive=1)
    assert torch.equal(pad, out["prefix_pad_masks"]) and torch.equal(att, out["prefix_att_masks"])
    # Padded (masked-camera) positions never reach any output; compare the real tokens.
    assert_close(embs, out["prefix_embs"], reference["atol"], where=pad)
    assert torch.equal(suffix_pad, out["suffix_pad_masks"]) and torch.equal(suffix_att, out["suffix_att_masks"])
    assert_close(suffix, out["suffix_embs"], reference["atol"])
    # The 2-D masks and positions of the training pass.
    full_pad, full_att = torch.cat([pad, suffix_pad], 1), torch.cat([att, suffix_att], 1)
    assert torch.equal(make_att_2d_masks(full_pad, full_att), out["train_att_2d_masks"])
    assert torch.equal(torch.cumsum(full_pad.long(), 1) - 1, out["train_position_ids"])


@pytest.mark.parametrize("is_positive", [0, 1])
def test_training_losses_match_reference_for_both_branches(reference, policy, model_inputs, is_positive):
    inp, out = reference["inputs"], reference["outputs"]
    with torch.no_grad():
        losses = policy.model(**model_inputs, actions=out["actions_padded"], noise=inp["noise"],
                              time=inp["time"], is_positive=is_positive)
        v_t = policy.model.predict_velocity(**model_inputs, x_t=out["x_t"], time=inp["time"],
                                            is_positive=is_positive)
    assert losses.shape == (2, 50, 32)
    assert_close(losses, out["losses"], reference["atol"])
    assert_close(v_t, out["train_v_t"], reference["atol"])


def test_policy_forward_matches_reference_policy_loss(reference, policy):
    with torch.no_grad():
        result = policy(reference["inputs"])  # noise/time come from the batch, as in the reference
    assert result["losses"].shape == (2, 50, 7)
    assert_close(result["losses"], reference["outputs"]["policy_losses"], reference["atol"])
    assert_close(result["loss"], reference["outputs"]["policy_loss"], reference["atol"])


def test_cfg_branches_with_zero_cond_embed_both_equal_reference(reference, policy):
    # One shared-prefix pass computing both branches: with cond_embed at zero both equal the
    # reference's (unconditioned) policy losses.
    with torch.no_grad():
        result = policy(reference["inputs"], branches="cfg")
    for key in ("losses_pos", "losses_uncond"):
        assert_close(result[key], reference["outputs"]["policy_losses"], reference["atol"])


def test_prefix_kv_cache_matches_reference(reference, policy, model_inputs):
    out = reference["outputs"]
    with torch.no_grad():
        cache = policy.model.build_prefix_cache(**{k: model_inputs[k] for k in
                                                   ("images", "img_masks", "lang_tokens", "lang_masks")})
    pad = out["prefix_pad_masks"]
    for layer in range(2):
        # Layout (B, prefix_len, kv_heads, head_dim), keys after RoPE; padded rows are garbage by design.
        assert cache.key_states[layer].shape == out[f"kv_cache.{layer}.key_states"].shape
        assert_close(cache.key_states[layer], out[f"kv_cache.{layer}.key_states"], reference["atol"], where=pad)
        assert_close(cache.value_states[layer], out[f"kv_cache.{layer}.value_states"], reference["atol"], where=pad)


def test_euler_times_are_the_reference_float32_accumulation(reference):
    assert torch.equal(torch.stack(euler_times(10)), reference["outputs"]["sample_times"])


def test_every_denoising_velocity_matches_reference(reference, policy, model_inputs):
    # Replays the sampler with the public pieces (one cache, then one suffix pass per Euler step)
    # so a mismatch points at the step where it starts.
    out, dt = reference["outputs"], torch.tensor(-0.1, dtype=torch.float32)
    with torch.no_grad():
        cache = policy.model.build_prefix_cache(**{k: model_inputs[k] for k in
                                                   ("images", "img_masks", "lang_tokens", "lang_masks")})
        x_t = reference["inputs"]["noise"].clone()
        for step, time in enumerate(euler_times(10)):
            v_t = policy.model.denoise_step(cache, model_inputs["state"], x_t, time, is_positive=1)
            assert_close(v_t, out["sample_v_t"][step], reference["atol"])
            x_t = x_t + dt * v_t
    assert_close(x_t, out["actions"], reference["atol"])


def test_sampled_actions_match_reference(reference, policy):
    # cfg_scale=1 runs only the conditional branch; with cond_embed at zero that is the reference.
    noise = reference["inputs"]["noise"].clone()
    actions = policy.select_action(reference["inputs"], cfg_scale=1.0, noise=noise)
    assert actions.shape == (2, 50, 32)  # padded dims included, like the reference
    assert_close(actions, reference["outputs"]["actions"], reference["atol"])
    # Unlike the reference, the sampler does not integrate in place on the caller's noise.
    assert torch.equal(noise, reference["inputs"]["noise"])


def test_sdpa_attention_also_matches_reference(reference):
    # Joint attention (and SigLIP) through F.scaled_dot_product_attention: same numbers to rounding.
    policy, _ = _build_policy(reference, attention_implementation="sdpa")
    with torch.no_grad():
        result = policy(reference["inputs"])
        actions = policy.select_action(reference["inputs"])
    assert_close(result["losses"], reference["outputs"]["policy_losses"], reference["atol"])
    assert_close(actions, reference["outputs"]["actions"], reference["atol"])
