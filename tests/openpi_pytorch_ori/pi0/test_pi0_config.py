"""PI0Config: presets, validation messages, and the full model's exact size."""

from __future__ import annotations

import pytest
import torch

from openpi_pytorch_ori.pi0 import PI0Config, PI0FlowMatching, load_tokenizer

# The reference port (openpi_pytorch) counts 3,501,372,176 parameters, which includes the
# expert's language-model head (vocab 257152 x width 1024 = 263,323,648) that PI0 never uses.
# We do not instantiate that head, and we add cond_embed (2 x 1024).
REFERENCE_PORT_PARAMETERS = 3_501_372_176
EXPERT_LM_HEAD_PARAMETERS = 257_152 * 1024
COND_EMBED_PARAMETERS = 2 * 1024


def test_full_preset_on_meta_device_has_the_real_pi0_parameter_count():
    config = PI0Config.preset("full")
    with torch.device("meta"):  # no memory, no init cost
        model = PI0FlowMatching(config)
    # parameters() de-duplicates the tied VLM lm_head / embed_tokens, as the reference count does.
    count = sum(p.numel() for p in model.parameters())
    print(f"\nfull PI0 parameters (without the unused expert lm_head, with cond_embed): {count:,}")
    assert count == REFERENCE_PORT_PARAMETERS - EXPERT_LM_HEAD_PARAMETERS + COND_EMBED_PARAMETERS == 3_238_050_576
    pwe = model.paligemma_with_expert
    assert len(pwe.vision_tower.encoder.layers) == 27 and len(pwe.language_model.layers) == 18
    assert pwe.language_model.layers[0].mlp.up_proj.out_features == 16384
    assert pwe.expert_model.layers[0].mlp.up_proj.out_features == 4096


def test_full_preset_numbers_follow_the_spec():
    cfg = PI0Config.preset("full")
    assert (cfg.chunk_size, cfg.n_action_steps, cfg.num_steps) == (50, 50, 10)
    assert (cfg.max_state_dim, cfg.max_action_dim, cfg.state_dim, cfg.action_dim) == (32, 32, 8, 7)
    assert (cfg.tokenizer_max_length, cfg.resize_imgs_with_padding, cfg.proj_width) == (48, (224, 224), 1024)
    assert cfg.image_slots == ("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb")
    assert cfg.num_image_tokens == 256 and cfg.vlm.head_dim == cfg.expert.head_dim == 256


def test_tiny_preset_uses_the_shipped_tokenizer_and_its_vocab_fits():
    cfg = PI0Config.preset("tiny")
    tokenizer = load_tokenizer(cfg.tokenizer_path)
    assert len(tokenizer) <= cfg.vlm.vocab_size
    assert cfg.vision.image_size == 56 and cfg.vision.patch_size == 14
    assert 16 <= cfg.tokenizer_max_length <= 24


def test_preset_overrides_merge_into_sub_configs():
    cfg = PI0Config.preset("tiny", vlm={"num_hidden_layers": 1}, expert={"num_hidden_layers": 1}, num_steps=4)
    assert cfg.vlm.num_hidden_layers == cfg.expert.num_hidden_layers == 1
    assert cfg.vlm.hidden_size == 64 and cfg.num_steps == 4


def test_unknown_preset_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"Unknown PI0 preset 'huge'.*\['full', 'small', 'tiny'\]"):
        PI0Config.preset("huge")


def test_unknown_override_key_is_an_error_not_ignored():
    with pytest.raises(ValueError, match=r"Unknown PI0Config keys \['chunk_sise'\]"):
        PI0Config.preset("tiny", chunk_sise=10)
    with pytest.raises(ValueError, match=r"Unknown PI0Config.vlm keys \['hidden'\]"):
        PI0Config.preset("tiny", vlm={"hidden": 3})


@pytest.mark.parametrize(
    "overrides, message",
    [
        # Joint attention concatenates both streams' heads: shapes must agree.
        ({"expert": {"head_dim": 16}}, r"expert.head_dim=16: must equal vlm.head_dim \(32\).*Fix: set expert.head_dim=32"),
        ({"expert": {"num_attention_heads": 4}}, r"expert.num_attention_heads=4: must equal vlm.num_attention_heads"),
        ({"expert": {"num_key_value_heads": 2}}, r"expert.num_key_value_heads=2: must equal"),
        ({"expert": {"num_hidden_layers": 3}}, r"expert.num_hidden_layers=3: must equal vlm.num_hidden_layers"),
        ({"proj_width": 48}, r"proj_width=48: must equal expert.hidden_size \(32\)"),
        ({"proj_width": 33, "expert": {"hidden_size": 33}}, r"proj_width=33: must be even"),
        ({"n_action_steps": 60}, r"n_action_steps=60: cannot be greater than chunk_size \(50\)"),
        ({"state_dim": 40}, r"state_dim=40: exceeds max_state_dim \(32\)"),
        ({"resize_imgs_with_padding": (224, 224)}, r"resize_imgs_with_padding=\(224, 224\): must be .* \(56, 56\)"),
        ({"attention_implementation": "flash"}, r"attention_implementation='flash': must be 'eager' or 'sdpa'"),
        ({"dtype": "float16"}, r"dtype='float16': must be 'float32' or 'bfloat16'"),
        ({"num_steps": 0}, r"num_steps=0: must be a positive integer"),
    ],
)
def test_invalid_configs_fail_at_construction_naming_key_value_and_fix(overrides, message):
    with pytest.raises(ValueError, match=message) as error:
        PI0Config.preset("tiny", **overrides)
    assert "Fix:" in str(error.value)


def test_from_reference_json_reads_model_and_pi0_numbers():
    doc = {
        "model_config": {
            "vision": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                       "num_attention_heads": 2, "patch_size": 14, "image_size": 56},
            "vlm": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
                    "num_key_value_heads": 1, "head_dim": 32, "vocab_size": 300},
            "expert": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "num_key_value_heads": 1, "head_dim": 32, "vocab_size": 300},
        },
        # Keys this port does not model (ALOHA switches) are ignored.
        "pi0_config": {"tokenizer_max_length": 16, "proj_width": 32, "resize_imgs_with_padding": [56, 56],
                       "adapt_to_pi_aloha": False, "use_cache": True},
    }
    cfg = PI0Config.from_reference_json(doc, num_steps=5)
    assert (cfg.tokenizer_max_length, cfg.proj_width, cfg.vlm.vocab_size, cfg.num_steps) == (16, 32, 300, 5)
    assert cfg.resize_imgs_with_padding == (56, 56) and cfg.tokenizer_path is None
