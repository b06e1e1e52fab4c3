"""The per-layer CFG condition (``cond_layer_modulation``, issue 20).

A loaded checkpoint must behave exactly as before: with the zero-initialised modulation both
branches' losses and sampled actions are bit-identical to the same checkpoint without it (the
parity fixture, so "before" is the reference PI0). Once trained, the modulation separates the
branches token by token, also when both branches are folded into one expert pass.
"""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from openpi_pytorch_ori.pi0 import PI0Config, PI0FlowMatching
from openpi_pytorch_ori.pi0.checkpoint import load_pi0_weights
from openpi_pytorch_ori.pi0.modeling_pi0 import PI0Policy
from pi0_test_inputs import BATCH, tiny_inputs

INPUT_PREFIX = "fixture.inputs."


@pytest.fixture(scope="module")
def fixture_doc(fixtures_dir):
    doc = json.loads((fixtures_dir / "pi0_tiny_reference.json").read_text())
    tensors = load_file(str(fixtures_dir / "pi0_tiny_reference.safetensors"))
    inputs = {k[len(INPUT_PREFIX):]: v for k, v in tensors.items() if k.startswith(INPUT_PREFIX)}
    return doc, inputs, fixtures_dir / "pi0_tiny_reference.safetensors"


def _loaded(fixture_doc, **overrides) -> PI0Policy:
    doc, _, path = fixture_doc
    policy = PI0Policy(PI0Config.from_reference_json(doc, **overrides))
    report = load_pi0_weights(policy, path)
    if overrides.get("cond_layer_modulation"):
        assert "model.cond_layer_mod" in report.zero_filled  # reported, zero-filled, not "missing"
    return policy.eval()


def test_loaded_checkpoint_is_bit_identical_for_both_branches_with_zero_init_modulation(fixture_doc):
    _, inputs, _ = fixture_doc
    plain, modulated = _loaded(fixture_doc), _loaded(fixture_doc, cond_layer_modulation=True)
    assert torch.count_nonzero(modulated.model.cond_layer_mod) == 0
    with torch.no_grad():
        for branches in ("cfg",):
            a, b = plain(inputs, branches=branches), modulated(inputs, branches=branches)
            for key in ("losses_pos", "losses_uncond"):
                assert torch.equal(a[key], b[key]), key
        for is_positive in (0, 1):
            a = plain(inputs, branches="single", is_positive=is_positive)
            b = modulated(inputs, branches="single", is_positive=is_positive)
            assert torch.equal(a["losses"], b["losses"])
        for scale in (1.0, 2.0):
            noise = inputs["noise"].clone()
            assert torch.equal(plain.select_action(inputs, cfg_scale=scale, noise=noise),
                               modulated.select_action(inputs, cfg_scale=scale, noise=noise)), scale


def _modulated_tiny(branch_rows=(0, 1), seed=0) -> PI0FlowMatching:
    torch.manual_seed(seed)
    model = PI0FlowMatching(PI0Config.preset("tiny", freeze_vision_encoder=False, cond_layer_modulation=True))
    with torch.no_grad():
        for b in branch_rows:
            model.cond_layer_mod[:, b].normal_(std=0.3)
    return model


def _draw(model, seed=2):
    cfg, gen = model.config, torch.Generator().manual_seed(seed)
    shape = (BATCH, cfg.chunk_size, cfg.max_action_dim)
    return dict(actions=torch.randn(shape, generator=gen), noise=torch.randn(shape, generator=gen),
                time=torch.rand(BATCH, generator=gen) * 0.98 + 0.01)


def test_conditional_only_modulation_leaves_the_unconditional_branch_untouched_in_every_path():
    # Only branch 1's rows are non-zero: the unconditional branch must equal a model whose
    # modulation is all zero, in the folded (interleaved), shared-prefix and naive paths alike --
    # this checks each token gets its own branch's row.
    model = _modulated_tiny(branch_rows=(1,))
    inputs, draw = tiny_inputs(model.config), _draw(model)
    reference = _modulated_tiny(branch_rows=())
    reference.load_state_dict({k: v for k, v in model.state_dict().items() if k != "cond_layer_mod"}, strict=False)
    with torch.no_grad():
        want_uncond = reference(**inputs, **draw, is_positive=0)
        for shared_prefix in ("interleaved", True, False):
            pos, uncond = model.forward_cfg(**inputs, **draw, shared_prefix=shared_prefix)
            torch.testing.assert_close(uncond, want_uncond, rtol=0, atol=1e-5, msg=str(shared_prefix))
            assert not torch.allclose(pos, uncond, atol=1e-4)


def test_modulated_paths_agree_on_losses_and_gradients():
    model = _modulated_tiny()
    inputs, draw = tiny_inputs(model.config), _draw(model)
    params = [p for p in model.parameters() if p.requires_grad]
    weights = torch.tensor([2.0, 0.5, 0.0])

    def grads(shared_prefix):
        pos, unc = model.forward_cfg(**inputs, **draw, shared_prefix=shared_prefix)
        obj = (weights[:, None, None] * pos).mean() + 0.1 * unc.mean()
        return pos, unc, torch.autograd.grad(obj, params, allow_unused=True)

    fast, naive = grads("interleaved"), grads(False)
    torch.testing.assert_close(fast[0], naive[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(fast[1], naive[1], rtol=0, atol=1e-5)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    g_fast = dict(zip(names, fast[2]))
    torch.testing.assert_close(g_fast["cond_layer_mod"], dict(zip(names, naive[2]))["cond_layer_mod"],
                               rtol=1e-4, atol=1e-6)


def test_zero_init_modulation_gets_a_gradient_for_both_branches():
    model = _modulated_tiny(branch_rows=())
    inputs, draw = tiny_inputs(model.config), _draw(model)
    pos, unc = model.forward_cfg(**inputs, **draw)
    (pos.mean() + 0.1 * unc.mean()).backward()
    grad = model.cond_layer_mod.grad  # (L, 2, 2, W)
    assert grad is not None and torch.count_nonzero(grad[:, 0]) > 0 and torch.count_nonzero(grad[:, 1]) > 0


def test_guided_sampling_with_modulation_is_the_guidance_formula():
    model = _modulated_tiny().eval()
    inputs = tiny_inputs(model.config)
    shape = (BATCH, model.config.chunk_size, model.config.max_action_dim)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        guided = model.sample_actions(**inputs, noise=noise, cfg_scale=2.0)
        # Manual Euler with the two branches run as separate batches.
        cache = model.build_prefix_cache(inputs["images"], inputs["img_masks"], inputs["lang_tokens"],
                                         inputs["lang_masks"])
        from openpi_pytorch_ori.pi0.modeling_pi0 import euler_times

        x, dt = noise.clone(), float(torch.tensor(-1.0 / model.config.num_steps, dtype=torch.float32))
        for t in euler_times(model.config.num_steps):
            v_c = model.denoise_step(cache, inputs["state"], x, t, is_positive=1)
            v_u = model.denoise_step(cache, inputs["state"], x, t, is_positive=0)
            x = x + dt * (v_u + 2.0 * (v_c - v_u))
    torch.testing.assert_close(guided, x, rtol=0, atol=1e-5)
