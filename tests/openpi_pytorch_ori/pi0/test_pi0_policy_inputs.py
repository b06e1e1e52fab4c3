"""PI0Policy input handling: image/state/prompt preparation, and clear errors for bad input."""

from __future__ import annotations

import pytest
import torch

from openpi_pytorch_ori.pi0 import PI0Config, PI0Policy, build_tiny_tokenizer, load_tokenizer
from openpi_pytorch_ori.pi0.modeling_pi0 import resize_with_pad
from openpi_pytorch_ori.pi0.tokenizer import LIBERO_WORDS, tokenize_prompts

BATCH = 2


@pytest.fixture(scope="module")
def policy():
    torch.manual_seed(0)
    return PI0Policy(PI0Config.preset("tiny"))


def observation(**changes):
    """A valid tiny-preset observation (two cameras, raw sizes unlike the model's on purpose)."""
    gen = torch.Generator().manual_seed(0)
    obs = {
        "image.base_0_rgb": torch.randint(0, 256, (BATCH, 3, 64, 96), dtype=torch.uint8, generator=gen),
        "image.left_wrist_0_rgb": torch.randint(0, 256, (BATCH, 3, 48, 36), dtype=torch.uint8, generator=gen),
        "state": torch.randn(BATCH, 8, generator=gen),
        "prompt": ["open the middle drawer of the cabinet", "put the wine bottle on the rack"],
    }
    obs.update(changes)
    return obs


# ---------------------------------------------------------------------------- images


def test_resize_with_pad_keeps_aspect_and_pads_left_and_top_with_minus_one():
    # A 2x4 (H x W) image into 4x4: ratio = max(4/4, 2/4) = 1, so it keeps its size and the two
    # missing rows are padded on TOP with -1 (the reference pads left/top only).
    image = torch.arange(8, dtype=torch.float32).reshape(1, 1, 2, 4) / 8
    padded = resize_with_pad(image, width=4, height=4)
    assert padded.shape == (1, 1, 4, 4)
    assert torch.all(padded[..., :2, :] == -1) and torch.equal(padded[..., 2:, :], image)
    # A tall 4x2 image into 4x4: two columns of -1 on the LEFT.
    tall = resize_with_pad(image.transpose(-1, -2), width=4, height=4)
    assert torch.all(tall[..., :, :2] == -1) and torch.equal(tall[..., :, 2:], image.transpose(-1, -2))


def test_images_become_minus_one_to_one_with_missing_slots_masked(policy):
    images, img_masks = policy.prepare_images(observation())
    assert images.shape == (BATCH, 3, 3, 56, 56) and images.dtype == torch.float32
    assert images.min() >= -1 and images.max() <= 1
    assert img_masks.tolist() == [[True, True, False]] * BATCH
    assert torch.all(images[:, 2] == -1)  # missing right wrist camera: a -1 image, masked out


def test_present_cameras_come_first_like_the_reference(policy):
    # Only the wrist camera: it takes the first position; both missing slots follow, masked.
    obs = observation()
    del obs["image.base_0_rgb"]
    images, img_masks = policy.prepare_images(obs)
    assert img_masks.tolist() == [[True, False, False]] * BATCH
    assert not torch.all(images[:, 0] == -1)


def test_numpy_inputs_are_accepted(policy):
    obs = {k: (v.numpy() if isinstance(v, torch.Tensor) else v) for k, v in observation().items()}
    actions = policy.select_action(obs)
    assert actions.shape == (BATCH, 50, 32)


@pytest.mark.parametrize(
    "image, message",
    [
        (torch.zeros(BATCH, 3, 64, 96, dtype=torch.float32), r"image.base_0_rgb must be uint8.*got dtype torch.float32"),
        (torch.zeros(BATCH, 64, 96, 3, dtype=torch.uint8), r"must have shape \(B, 3, H, W\), got \(2, 64, 96, 3\).*channel-last"),
        (torch.zeros(3, 64, 96, dtype=torch.uint8), r"must have shape \(B, 3, H, W\), got \(3, 64, 96\)"),
        (torch.zeros(BATCH + 1, 3, 64, 96, dtype=torch.uint8), r"image.left_wrist_0_rgb has batch size 2, other cameras have 3"),
    ],
)
def test_bad_images_are_rejected_with_the_field_named(policy, image, message):
    with pytest.raises(ValueError, match=message):
        policy.select_action(observation(**{"image.base_0_rgb": image}))


def test_camera_batch_must_match_the_state_batch(policy):
    obs = observation(**{"image.base_0_rgb": torch.zeros(BATCH + 1, 3, 64, 96, dtype=torch.uint8)})
    del obs["image.left_wrist_0_rgb"]
    with pytest.raises(ValueError, match=r"camera images have batch size 3 but state has 2 rows"):
        policy.select_action(obs)


def test_no_camera_or_unknown_camera_key_is_an_error(policy):
    obs = observation()
    del obs["image.base_0_rgb"], obs["image.left_wrist_0_rgb"]
    with pytest.raises(ValueError, match="No camera image in batch"):
        policy.prepare_images(obs)
    with pytest.raises(ValueError, match=r"Unknown camera keys \['image.wrist'\]"):
        policy.prepare_images(observation(**{"image.wrist": torch.zeros(BATCH, 3, 8, 8, dtype=torch.uint8)}))


# ---------------------------------------------------------------------------- state


def test_state_is_zero_padded_to_max_state_dim(policy):
    obs = observation()
    state = policy.prepare_state(obs)
    assert state.shape == (BATCH, 32)
    assert torch.equal(state[:, :8], obs["state"]) and torch.all(state[:, 8:] == 0)


@pytest.mark.parametrize(
    "state, message",
    [
        (torch.zeros(BATCH, 40), r"state has 40 dims, wider than max_state_dim=32"),
        (torch.tensor([[float("nan")] * 8, [0.0] * 8]), r"state contains NaN or inf"),
        (torch.zeros(BATCH, 2, 8), r"state must have shape \(B, state_dim\)"),
    ],
)
def test_bad_state_is_rejected(policy, state, message):
    with pytest.raises(ValueError, match=message):
        policy.select_action(observation(state=state))


# ---------------------------------------------------------------------------- language


def test_prompts_are_bos_task_newline_right_padded(policy):
    tokens, masks = policy.prepare_language({"prompt": ["Turn on the stove", "put the bowl on the plate"]})
    tok = policy.tokenizer
    expected_first = [tok.bos_token_id, *tok.encode("turn on the stove\n", add_special_tokens=False)]
    assert tokens.shape == masks.shape == (2, policy.config.tokenizer_max_length)
    assert tokens[0, : len(expected_first)].tolist() == expected_first
    assert masks[0].sum() == len(expected_first) and not masks[0, len(expected_first):].any()
    assert torch.all(tokens[~masks] == tok.pad_token_id)  # right padding with <pad> = 0
    assert tok.convert_ids_to_tokens(tokens[0, : len(expected_first)].tolist())[-1] == "\n"


def test_pretokenised_language_is_used_as_given(policy):
    tokens = torch.tensor([[2, 5, 6, 0], [2, 7, 0, 0]])
    masks = tokens != 0
    out_tokens, out_masks = policy.prepare_language({"lang_tokens": tokens, "lang_masks": masks})
    assert torch.equal(out_tokens, tokens) and torch.equal(out_masks, masks)


def test_prompt_list_length_must_match_the_batch(policy):
    with pytest.raises(ValueError, match=r"prompt list has 1 entries but state has 2 rows"):
        policy.select_action(observation(prompt=["turn on the stove"]))
    with pytest.raises(ValueError, match=r"prompt must be a list of strings"):
        policy.select_action(observation(prompt="turn on the stove"))


def test_prompts_without_a_tokenizer_say_to_pass_tokenizer_path():
    policy = PI0Policy(PI0Config.preset("tiny", tokenizer_path=None))
    with pytest.raises(ValueError, match="tokenizer_path"):
        policy.prepare_language({"prompt": ["turn on the stove"]})


# ---------------------------------------------------------------------------- tokenizer


def test_missing_tokenizer_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer_path.*PaliGemma"):
        load_tokenizer(tmp_path / "no_such_dir")
    with pytest.raises(FileNotFoundError, match="tokenizer_path"):
        load_tokenizer(None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no tokenizer.json or tokenizer.model"):
        load_tokenizer(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="tokenizer_path"):
        PI0Policy(PI0Config.preset("tiny", tokenizer_path=str(tmp_path / "no_such_dir")))


def test_shipped_tiny_tokenizer_has_gemma_special_ids_and_whole_libero_words(policy):
    tok = policy.tokenizer
    assert (tok.pad_token_id, tok.eos_token_id, tok.bos_token_id) == (0, 1, 2)
    for word in LIBERO_WORDS.split():  # every LIBERO task word is a single, known token
        ids = tok.encode(word, add_special_tokens=False)
        assert len(ids) == 1 and ids[0] != tok.unk_token_id, word
    # The longest LIBERO instruction fits the tiny preset's 24 tokens without truncation.
    longest = "put the white mug on the left plate and put the yellow and white mug on the right plate"
    _, masks = tokenize_prompts(tok, [longest], policy.config.tokenizer_max_length)
    assert masks.sum() < policy.config.tokenizer_max_length


def test_building_the_tiny_tokenizer_reproduces_the_shipped_one(tmp_path, policy):
    rebuilt = load_tokenizer(build_tiny_tokenizer(tmp_path / "tok"))
    assert rebuilt.get_vocab() == policy.tokenizer.get_vocab()


# ---------------------------------------------------------------------------- training batch


def test_training_batch_losses_mask_padded_steps_and_slice_to_the_action_dim(policy):
    gen = torch.Generator().manual_seed(3)
    is_pad = torch.zeros(BATCH, 50, dtype=torch.bool)
    is_pad[1, 40:] = True
    batch = observation(action=torch.randn(BATCH, 50, 7, generator=gen), action_is_pad=is_pad,
                        noise=torch.randn(BATCH, 50, 32, generator=gen), time=torch.tensor([0.2, 0.9]))
    single = policy(batch)
    assert single["losses"].shape == (BATCH, 50, 7)
    assert torch.all(single["losses"][1, 40:] == 0) and torch.all(single["losses"][0] > 0)
    # The mean counts padded steps as zeros, as the reference does.
    assert torch.isclose(single["loss"], single["losses"].sum() / single["losses"].numel())
    both = policy(batch, branches="cfg")
    assert set(both) == {"losses_pos", "losses_uncond", "velocities_pos", "velocities_uncond"}
    assert torch.all(both["losses_uncond"][1, 40:] == 0)
    torch.testing.assert_close(both["losses_pos"], single["losses"], rtol=0, atol=1e-5)


def test_action_chunk_of_the_wrong_length_is_rejected(policy):
    with pytest.raises(ValueError, match=r"action must have shape \(B, chunk_size=50"):
        policy(observation(action=torch.zeros(BATCH, 10, 7)))
    with pytest.raises(ValueError, match=r"branches must be 'single' or 'cfg'"):
        policy(observation(action=torch.zeros(BATCH, 50, 7)), branches="both")


def test_noise_and_time_of_the_wrong_shape_are_rejected_not_broadcast(policy):
    batch = observation(action=torch.zeros(BATCH, 50, 7))
    with pytest.raises(ValueError, match=r"noise must have the padded action shape \(2, 50, 32\), got \(1, 50, 32\)"):
        policy(batch, noise=torch.zeros(1, 50, 32))
    with pytest.raises(ValueError, match=r"time must have shape \(2,\), got \(\)"):
        policy(batch, time=torch.tensor(0.5))
    with pytest.raises(ValueError, match=r"noise must have shape \(2, 50, 32\)"):
        policy.select_action(observation(), noise=torch.zeros(2, 50, 7))
