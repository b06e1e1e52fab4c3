"""Training switches: freeze_vision_encoder, train_expert_only, gradient checkpointing, bf16."""

from __future__ import annotations

import torch

from openpi_pytorch_ori.pi0 import PI0Config, PI0Policy

BATCH = 2
HEAD_PREFIXES = ("model.state_proj", "model.action_in_proj", "model.action_out_proj",
                 "model.action_time_mlp_in", "model.action_time_mlp_out", "model.cond_embed")
VISION = "model.paligemma_with_expert.paligemma.model.vision_tower."
PROJECTOR = "model.paligemma_with_expert.paligemma.model.multi_modal_projector."
VLM = "model.paligemma_with_expert.paligemma.model.language_model."
EXPERT = "model.paligemma_with_expert.gemma_expert."


def tiny_policy(seed: int = 0, **overrides) -> PI0Policy:
    torch.manual_seed(seed)
    policy = PI0Policy(PI0Config.preset("tiny", **overrides))
    with torch.no_grad():
        policy.model.cond_embed.weight.normal_()
    return policy


def training_batch():
    gen = torch.Generator().manual_seed(0)
    return {
        "image.base_0_rgb": torch.randint(0, 256, (BATCH, 3, 56, 56), dtype=torch.uint8, generator=gen),
        "image.left_wrist_0_rgb": torch.randint(0, 256, (BATCH, 3, 56, 56), dtype=torch.uint8, generator=gen),
        "state": torch.randn(BATCH, 8, generator=gen),
        "prompt": ["put the bowl on the stove", "open the top drawer and put the bowl inside"],
        "action": torch.randn(BATCH, 50, 7, generator=gen),
        "noise": torch.randn(BATCH, 50, 32, generator=gen),
        "time": torch.tensor([0.25, 0.75]),
    }


def trainable_names(policy):
    return {name for name, p in policy.named_parameters() if p.requires_grad}


def test_freeze_vision_encoder_freezes_only_siglip():
    names = trainable_names(tiny_policy(freeze_vision_encoder=True, train_expert_only=False))
    assert not any(n.startswith(VISION) for n in names)
    assert any(n.startswith(PROJECTOR) for n in names) and any(n.startswith(VLM) for n in names)
    assert any(n.startswith(EXPERT) for n in names)
    assert all(any(n.startswith(p) for n in names) for p in HEAD_PREFIXES)


def test_train_expert_only_trains_the_expert_and_the_pi0_heads():
    names = trainable_names(tiny_policy(train_expert_only=True))
    assert names and all(n.startswith(EXPERT) or n.startswith(HEAD_PREFIXES) for n in names)
    assert all(any(n.startswith(p) for n in names) for p in HEAD_PREFIXES)


def test_every_trainable_parameter_receives_a_gradient():
    # VLM parts no output depends on (last layer's query/MLP, final norm) are frozen at
    # construction, so DDP can run without find_unused_parameters.
    policy = tiny_policy(freeze_vision_encoder=False)
    result = policy(training_batch(), branches="cfg")
    (result["losses_pos"].mean() + 0.1 * result["losses_uncond"].mean()).backward()
    no_grad = [n for n, p in policy.named_parameters() if p.requires_grad and p.grad is None]
    assert no_grad == []


def test_gradient_checkpointing_gives_the_same_losses_and_gradients():
    batch = training_batch()

    def losses_and_grads(checkpointing: bool):
        policy = tiny_policy(gradient_checkpointing=checkpointing, freeze_vision_encoder=False).train()
        result = policy(batch, branches="cfg")
        loss = result["losses_pos"].mean() + 0.1 * result["losses_uncond"].mean()
        loss.backward()
        return loss.detach(), {n: p.grad for n, p in policy.named_parameters() if p.requires_grad}

    loss_plain, grads_plain = losses_and_grads(False)
    loss_ckpt, grads_ckpt = losses_and_grads(True)
    # Recomputation repeats the exact same ops: identical up to float32 nondeterminism (none on CPU).
    torch.testing.assert_close(loss_ckpt, loss_plain, rtol=0, atol=1e-6)
    assert grads_ckpt.keys() == grads_plain.keys()
    for name in grads_plain:
        torch.testing.assert_close(grads_ckpt[name], grads_plain[name], rtol=1e-5, atol=1e-7)


def test_bfloat16_backbone_trains_and_samples_close_to_float32(tmp_path):
    from openpi_pytorch_ori.pi0 import load_pi0_weights, save_pi0_weights

    fp32 = tiny_policy()
    save_pi0_weights(fp32, tmp_path / "w.safetensors")
    bf16 = tiny_policy(seed=1, dtype="bfloat16")
    load_pi0_weights(bf16, tmp_path / "w.safetensors")
    pwe = bf16.model.paligemma_with_expert
    assert pwe.language_model.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16
    assert pwe.vision_tower.embeddings.patch_embedding.weight.dtype == torch.bfloat16
    assert bf16.model.action_out_proj.weight.dtype == torch.float32  # heads and losses stay float32

    batch = training_batch()
    result = bf16(batch)
    assert result["losses"].dtype == torch.float32 and torch.isfinite(result["losses"]).all()
    result["loss"].backward()
    assert torch.isfinite(bf16.model.action_in_proj.weight.grad).all()
    # bf16 keeps ~3 significant digits: the mean loss agrees with float32 within a few percent.
    reference_loss = fp32(batch)["loss"].detach()
    assert abs(result["loss"].item() - reference_loss.item()) < 0.05 * reference_loss.item()
    actions = bf16.select_action(batch, cfg_scale=2.0)
    assert actions.dtype == torch.float32 and torch.isfinite(actions).all()
