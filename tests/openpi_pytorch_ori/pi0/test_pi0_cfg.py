"""The CFG condition: zero init, shared-prefix two-branch training, guided sampling.

Runs on the tiny preset with random weights. `cond_embed` is filled with non-zero values where
the test needs the two branches to differ (at zero init they are identical by design).
"""

from __future__ import annotations

import torch

from openpi_pytorch_ori.pi0 import PI0Config, PI0FlowMatching
from openpi_pytorch_ori.pi0.modeling_pi0 import euler_times
from pi0_test_inputs import BATCH, tiny_inputs



def tiny_model(seed: int = 0, conditioned: bool = True) -> PI0FlowMatching:
    """Tiny PI0 with every parameter trainable; `conditioned` gives cond_embed non-zero rows."""
    torch.manual_seed(seed)
    model = PI0FlowMatching(PI0Config.preset("tiny", freeze_vision_encoder=False))
    if conditioned:
        with torch.no_grad():
            model.cond_embed.weight.normal_(std=0.5)
    return model


def training_draw(model: PI0FlowMatching, seed: int = 2) -> dict[str, torch.Tensor]:
    cfg, gen = model.config, torch.Generator().manual_seed(seed)
    shape = (BATCH, cfg.chunk_size, cfg.max_action_dim)
    return dict(actions=torch.randn(shape, generator=gen), noise=torch.randn(shape, generator=gen),
                time=torch.rand(BATCH, generator=gen) * 0.98 + 0.01)


def prefix_args(inputs):
    return {k: inputs[k] for k in ("images", "img_masks", "lang_tokens", "lang_masks")}


class CallCounter:
    """Wraps a bound method and records the batch size of its first tensor argument per call."""

    def __init__(self, method):
        self.method, self.batch_sizes = method, []

    def __call__(self, *args, **kwargs):
        first_tensor = next(a for a in args if isinstance(a, torch.Tensor))
        self.batch_sizes.append(first_tensor.shape[0])
        return self.method(*args, **kwargs)


# ---------------------------------------------------------------------------- zero init


def test_fresh_cond_embed_is_zero_so_both_branches_equal_the_unconditioned_model():
    # A freshly built (or freshly loaded) model must behave exactly as the pretrained policy
    # for is_positive 0 and 1: the RL run starts from the pretrained policy, not a perturbed one.
    model = tiny_model(conditioned=False)
    assert model.cond_embed.weight.shape == (2, model.config.proj_width)
    assert torch.count_nonzero(model.cond_embed.weight) == 0
    inputs, draw = tiny_inputs(model.config), training_draw(model)
    with torch.no_grad():
        losses_pos = model(**inputs, **draw, is_positive=1)
        losses_uncond = model(**inputs, **draw, is_positive=0)
    assert torch.equal(losses_pos, losses_uncond)


def test_per_row_is_positive_selects_each_rows_branch():
    model = tiny_model()
    inputs, draw = tiny_inputs(model.config), training_draw(model)
    mixed = torch.tensor([1, 0, 1])
    with torch.no_grad():
        losses_mixed = model(**inputs, **draw, is_positive=mixed)
        losses_pos = model(**inputs, **draw, is_positive=1)
        losses_uncond = model(**inputs, **draw, is_positive=0)
    assert not torch.allclose(losses_pos, losses_uncond)  # the condition matters once trained
    torch.testing.assert_close(losses_mixed[[0, 2]], losses_pos[[0, 2]], rtol=0, atol=1e-6)
    torch.testing.assert_close(losses_mixed[1], losses_uncond[1], rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------- shared-prefix training


def test_shared_prefix_two_branch_losses_and_gradients_equal_the_naive_two_pass_path():
    # Tolerance: the two paths do the same maths in a different order (prefix K/V computed once and
    # repeated for a 2B suffix batch vs two full joint passes), so they agree to float32 rounding:
    # losses within 1e-5 absolute, gradients within rtol 1e-4 / atol 1e-6.
    model = tiny_model()
    inputs, draw = tiny_inputs(model.config), training_draw(model)
    weights = torch.tensor([2.0, 0.5, 0.0])  # advantage-style weights on the conditional branch
    params = [p for p in model.parameters() if p.requires_grad]

    def losses_and_grads(shared_prefix: bool):
        losses_pos, losses_uncond = model.forward_cfg(**inputs, **draw, shared_prefix=shared_prefix)
        objective = (weights[:, None, None] * losses_pos).mean() + 0.1 * losses_uncond.mean()
        return losses_pos, losses_uncond, torch.autograd.grad(objective, params, allow_unused=True)  # None = unused

    shared_pos, shared_uncond, shared_grads = losses_and_grads(shared_prefix=True)
    naive_pos, naive_uncond, naive_grads = losses_and_grads(shared_prefix=False)
    assert not torch.allclose(shared_pos, shared_uncond)  # the two branches really differ
    torch.testing.assert_close(shared_pos, naive_pos, rtol=0, atol=1e-5)
    torch.testing.assert_close(shared_uncond, naive_uncond, rtol=0, atol=1e-5)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    for name, shared, naive in zip(names, shared_grads, naive_grads):
        # Every trainable parameter takes part in both graphs (the VLM parts no output depends on are
        # frozen at construction), so DDP needs no find_unused_parameters.
        assert shared is not None and naive is not None, name
        torch.testing.assert_close(shared, naive, rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")
    # The gradient reaches the prefix (vision tower included) through the single prefix pass.
    vision_grad = shared_grads[names.index(
        "paligemma_with_expert.paligemma.model.vision_tower.embeddings.patch_embedding.weight")]
    assert vision_grad is not None and torch.count_nonzero(vision_grad) > 0


def test_shared_prefix_runs_the_vlm_prefix_once_and_the_suffix_at_double_batch(monkeypatch):
    model = tiny_model()
    pwe = model.paligemma_with_expert
    images = CallCounter(pwe.embed_image)
    prefix, joint, suffix = CallCounter(pwe.forward_prefix), CallCounter(pwe.forward_joint), CallCounter(pwe.forward_suffix)
    for name, counter in [("embed_image", images), ("forward_prefix", prefix),
                          ("forward_joint", joint), ("forward_suffix", suffix)]:
        monkeypatch.setattr(pwe, name, counter)
    model.forward_cfg(**tiny_inputs(model.config), **training_draw(model), shared_prefix=True)
    assert len(images.batch_sizes) == 1 and prefix.batch_sizes == [BATCH] and joint.batch_sizes == []
    assert suffix.batch_sizes == [2 * BATCH]  # both branches in one expert pass


def test_forward_cfg_uses_the_same_noise_and_time_for_both_branches_when_drawn_internally():
    # With no explicit noise/time, one draw must serve both branches: at zero cond_embed the two
    # branches are then the same computation and their losses equal (to float rounding: the
    # default interleaved layout folds both branches into one attention call; a second noise
    # draw would differ by O(1)).
    model = tiny_model(conditioned=False)
    draw = training_draw(model)
    losses_pos, losses_uncond = model.forward_cfg(**tiny_inputs(model.config), actions=draw["actions"])
    torch.testing.assert_close(losses_pos, losses_uncond, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------- sampling


def manual_sampler(model, inputs, noise, velocity_fn):
    """Reference Euler loop built from public pieces: one prefix cache, dt = -1/N, float32 times."""
    cache = model.build_prefix_cache(**prefix_args(inputs))
    dt = torch.tensor(-1.0 / model.config.num_steps)
    x_t = noise.clone()
    for time in euler_times(model.config.num_steps):
        x_t = x_t + dt * velocity_fn(cache, x_t, time)
    return x_t


def test_cfg_scale_1_equals_the_conditional_only_sampler_and_runs_one_branch(monkeypatch):
    model = tiny_model()
    inputs = tiny_inputs(model.config)
    noise = torch.randn(BATCH, model.config.chunk_size, model.config.max_action_dim)
    with torch.no_grad():
        expected = manual_sampler(
            model, inputs, noise, lambda cache, x, t: model.denoise_step(cache, inputs["state"], x, t, is_positive=1))
        counter = CallCounter(model.paligemma_with_expert.forward_suffix)
        monkeypatch.setattr(model.paligemma_with_expert, "forward_suffix", counter)
        actions = model.sample_actions(**inputs, noise=noise, cfg_scale=1.0)
    torch.testing.assert_close(actions, expected, rtol=0, atol=1e-6)
    assert counter.batch_sizes == [BATCH] * model.config.num_steps  # no unconditional rows computed


def test_cfg_scale_2_equals_the_guidance_formula_from_two_separate_passes(monkeypatch):
    # v = v_uncond + s * (v_cond - v_uncond), each branch computed in its own batch-B pass here;
    # the sampler computes both in one 2B pass against one prefix cache. Rounding-level agreement.
    model, scale = tiny_model(), 2.0
    inputs = tiny_inputs(model.config)
    noise = torch.randn(BATCH, model.config.chunk_size, model.config.max_action_dim)

    def guided_velocity(cache, x_t, time):
        v_cond = model.denoise_step(cache, inputs["state"], x_t, time, is_positive=1)
        v_uncond = model.denoise_step(cache, inputs["state"], x_t, time, is_positive=0)
        return v_uncond + scale * (v_cond - v_uncond)

    with torch.no_grad():
        expected = manual_sampler(model, inputs, noise, guided_velocity)
        conditional_only = model.sample_actions(**inputs, noise=noise, cfg_scale=1.0)
        prefix = CallCounter(model.paligemma_with_expert.forward_prefix)
        monkeypatch.setattr(model.paligemma_with_expert, "forward_prefix", prefix)
        actions = model.sample_actions(**inputs, noise=noise, cfg_scale=scale)
    torch.testing.assert_close(actions, expected, rtol=0, atol=1e-5)
    assert prefix.batch_sizes == [BATCH]  # one prefix cache, reused by every step and both branches
    assert (actions - conditional_only).abs().max() > 1e-3  # guidance changes the result


def test_sampler_draws_noise_when_none_given_and_returns_the_chunk_shape():
    model = tiny_model()
    with torch.no_grad():
        actions = model.sample_actions(**tiny_inputs(model.config))
    assert actions.shape == (BATCH, model.config.chunk_size, model.config.max_action_dim)
    assert torch.isfinite(actions).all()


# ---------------------------------------------------------------------------- training-time draws


def test_training_time_is_a_true_beta_1_5_1_scaled_into_0_001_1():
    # Beta(1.5, 1): mean 0.6, median 0.5**(1/1.5) = 0.63; after *0.999 + 0.001: 0.6004 and 0.6303.
    # (The PyTorch port's sampler, which we deliberately do not copy, has mean 0.558.)
    torch.manual_seed(0)
    time = tiny_model(conditioned=False).sample_time(200_000, "cpu")
    assert time.dtype == torch.float32 and time.shape == (200_000,)
    assert time.min() >= 0.001 and time.max() <= 1.0
    assert abs(time.mean().item() - 0.6004) < 3e-3
    assert abs(time.median().item() - 0.6303) < 5e-3


# ------------------------------------------------------------------- branch-gap diagnostic


def test_cfg_velocities_are_the_two_branches_at_one_noisy_action_and_equal_at_zero_init():
    # PI0Policy.cfg_velocities feeds train/branch_gap: v_pos and v_uncond must be the model's two
    # branch velocities at the same x_t = t*noise + (1-t)*actions, sliced to the real action dims.
    from openpi_pytorch_ori.pi0 import PI0Policy

    n = 2
    torch.manual_seed(0)
    policy = PI0Policy(PI0Config.preset("tiny"))
    cfg, gen = policy.config, torch.Generator().manual_seed(3)
    batch = {
        "image.base_0_rgb": torch.randint(0, 256, (n, 3, 56, 56), dtype=torch.uint8, generator=gen),
        "state": torch.randn(n, 8, generator=gen),
        "prompt": ["pick up the bowl", "open the drawer"],
        "action": torch.randn(n, cfg.chunk_size, 7, generator=gen),
    }
    noise = torch.randn(n, cfg.chunk_size, cfg.max_action_dim, generator=gen)
    time = torch.tensor([0.3, 0.8])
    v_pos, v_uncond = policy.cfg_velocities(batch, noise=noise, time=time)
    assert v_pos.shape == v_uncond.shape == (n, cfg.chunk_size, 7)
    assert torch.equal(v_pos, v_uncond)  # zero-initialised cond_embed: one function
    with torch.no_grad():
        policy.model.cond_embed.weight.normal_(std=0.5)
    v_pos, v_uncond = policy.cfg_velocities(batch, noise=noise, time=time)
    inputs = policy._prepare_observation(batch)
    actions, _ = policy.prepare_action(batch)
    x_t = time[:, None, None] * noise + (1 - time[:, None, None]) * actions
    with torch.no_grad():
        expected_pos = policy.model.predict_velocity(*inputs, x_t, time, is_positive=1)[..., :7]
        expected_uncond = policy.model.predict_velocity(*inputs, x_t, time, is_positive=0)[..., :7]
    torch.testing.assert_close(v_pos, expected_pos)
    torch.testing.assert_close(v_uncond, expected_uncond)
    assert not torch.allclose(v_pos, v_uncond)
