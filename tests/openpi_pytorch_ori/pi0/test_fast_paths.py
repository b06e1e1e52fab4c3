"""Correctness of the PI0 performance fast paths against the eager reference path (CPU, tiny).

Fast paths and the tolerance each must meet:
  * RoPE tables built once per forward == per-layer `apply_rope`: bitwise (same float32 ops).
  * SDPA with the query heads folded per KV head and a prebuilt additive bias == eager
    attention (float32 logits) on every row that has a visible key: atol 1e-5 in float32.
    (Rows with no visible key are padding queries nobody reads; eager makes them uniform,
    SDPA attends every key. They are compared only through the model outputs, which never read them.)
  * Whole model with attention_implementation="sdpa" == "eager" in float32: losses, gradients and
    sampled actions within 1e-4 (the fixture's parity tolerance); bf16: relative error < 3e-2.
  * Sampler with masks/RoPE built once per call == Euler loop of public per-step `denoise_step`:
    bitwise (atol 0).
  * `compile_sampler` (torch.compile, aot_eager backend on CPU to keep the test fast) == eager:
    atol 1e-5.
  * CUDA-graph sampler == eager: atol 1e-5 float32 (runs only where CUDA exists; on CPU the
    policy falls back to the eager sampler, which is checked to be exactly the eager result).
  * Interleaved shared-prefix CFG step (`forward_cfg(shared_prefix="interleaved")`: both branches'
    suffixes folded into the query length, expert layers run between the VLM layers) == the
    sequential shared-prefix path and the naive two-pass path, eager and sdpa, float32: losses
    atol 1e-5, gradients rtol 1e-4 / atol 1e-6 (the shared-vs-naive tolerance of test_pi0_cfg);
    with gradient checkpointing == without (rtol 1e-4 / atol 1e-6); bf16 rel. err < 3e-2.
    Its folded mask is block-diagonal over branches, each block equal to the one-branch mask.
  * `PaliGemmaWithExpert.compile_layers()` (one torch.compile'd graph per layer call pattern):
    the graph count does not grow with depth and undoing it restores eager; the real inductor
    compile (scalar C++ kernels on CPU) == eager layers: losses rtol 1e-5, gradients rtol 1e-4 /
    atol 1e-6, with and without gradient checkpointing.
"""

from __future__ import annotations

import pytest
import torch
import torch._inductor.config as inductor_config
from torch._inductor.cpu_vec_isa import valid_vec_isa_list

from openpi_pytorch_ori.pi0 import PI0Config, PI0FlowMatching, PI0Policy
from openpi_pytorch_ori.pi0.modeling_pi0 import CUDAGraphSampler, _two_branch_ids, euler_times
from openpi_pytorch_ori.pi0.paligemma_with_expert import (
    _sdpa_grouped,
    apply_rope,
    apply_rope_tables,
    joint_attention,
    rope_tables,
    sdpa_grouped_bias,
)
from pi0_test_inputs import BATCH, tiny_inputs



@pytest.fixture(autouse=True, scope="module")
def single_torch_thread():
    """Tiny models gain nothing from intra-op threads on the shared 2-core box."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def tiny_pair(**overrides) -> tuple[PI0FlowMatching, PI0FlowMatching]:
    """Two tiny models with identical weights, eager and sdpa attention."""
    torch.manual_seed(0)
    eager = PI0FlowMatching(PI0Config.preset("tiny", freeze_vision_encoder=False, **overrides))
    with torch.no_grad():
        eager.cond_embed.weight.normal_(std=0.5)  # both CFG branches differ
    sdpa = PI0FlowMatching(PI0Config.preset("tiny", freeze_vision_encoder=False,
                                            attention_implementation="sdpa", **overrides))
    sdpa.load_state_dict(eager.state_dict())
    return eager, sdpa


def chunk_noise(config: PI0Config, seed: int = 2) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(BATCH, config.chunk_size, config.max_action_dim, generator=gen)


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.float() - expected.float()).norm() / expected.float().norm()).item()


# ---------------------------------------------------------------------------- building blocks


def test_rope_tables_reproduce_apply_rope_bitwise():
    x = torch.randn(2, 9, 4, 32)
    positions = torch.randint(0, 500, (2, 9))
    cos, sin = rope_tables(positions, 32)
    assert torch.equal(apply_rope_tables(x, cos, sin), apply_rope(x, positions))


@pytest.mark.parametrize("num_heads,kv_heads", [(2, 1), (4, 2), (4, 4)])
def test_grouped_sdpa_equals_eager_attention_on_rows_with_a_visible_key(num_heads, kv_heads):
    torch.manual_seed(3)
    batch, q_len, k_len, head_dim = 2, 7, 11, 16
    query = torch.randn(batch, q_len, num_heads, head_dim)
    key, value = torch.randn(2, batch, k_len, kv_heads, head_dim)
    mask = torch.rand(batch, q_len, k_len) > 0.4
    mask[0, 2] = False  # a padding query: no visible key
    bias = sdpa_grouped_bias(mask, num_heads // kv_heads, torch.float32)
    assert bias.shape == (batch, 1, q_len * num_heads // kv_heads, k_len)
    fast = _sdpa_grouped(query, key, value, bias)  # (B, Lq, H*D)
    eager = joint_attention(query, key, value, mask, "eager")
    sdpa_ref = joint_attention(query, key, value, mask, "sdpa")  # the original per-layer SDPA path
    rows = mask.any(dim=-1)  # (B, Lq)
    torch.testing.assert_close(fast[rows], eager[rows], rtol=0, atol=1e-5)
    torch.testing.assert_close(fast, sdpa_ref, rtol=0, atol=1e-5)  # padding rows too
    assert torch.isfinite(fast).all()


def test_two_branch_ids_built_on_device_are_conditional_rows_first():
    assert _two_branch_ids(3, torch.device("cpu")).tolist() == [1, 1, 1, 0, 0, 0]


# ---------------------------------------------------------------------------- whole model


def test_sdpa_model_matches_eager_losses_gradients_and_actions_float32():
    eager, sdpa = tiny_pair()
    inputs = tiny_inputs(eager.config)
    gen = torch.Generator().manual_seed(4)
    shape = (BATCH, eager.config.chunk_size, eager.config.max_action_dim)
    draw = dict(actions=torch.randn(shape, generator=gen), noise=torch.randn(shape, generator=gen),
                time=torch.rand(BATCH, generator=gen) * 0.98 + 0.01)
    results = {}
    for name, model in (("eager", eager), ("sdpa", sdpa)):
        single = model(**inputs, **draw, is_positive=1)
        pos, uncond = model.forward_cfg(**inputs, **draw, shared_prefix=True)
        (single.mean() + pos.mean() + 0.5 * uncond.mean()).backward()
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        with torch.no_grad():
            actions = model.sample_actions(**inputs, noise=draw["noise"], cfg_scale=2.0)
        results[name] = (single, pos, uncond, grads, actions)
    for fast, ref in zip(results["sdpa"][:3], results["eager"][:3]):
        torch.testing.assert_close(fast, ref, rtol=0, atol=1e-4)
    assert len(results["sdpa"][3]) == len(results["eager"][3])
    for fast, ref in zip(results["sdpa"][3], results["eager"][3]):
        torch.testing.assert_close(fast, ref, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(results["sdpa"][4], results["eager"][4], rtol=0, atol=1e-4)


def test_sdpa_model_matches_eager_in_bfloat16_to_bf16_rounding():
    eager, sdpa = tiny_pair(dtype="bfloat16")
    inputs, noise = tiny_inputs(eager.config), chunk_noise(eager.config)
    with torch.no_grad():
        expected = eager.sample_actions(**inputs, noise=noise, cfg_scale=2.0)
        actual = sdpa.sample_actions(**inputs, noise=noise, cfg_scale=2.0)
    assert torch.isfinite(actual).all()
    assert rel_err(actual, expected) < 3e-2


def test_sdpa_gradient_checkpointing_matches_plain_backward():
    _, plain = tiny_pair()
    torch.manual_seed(0)
    ckpt = PI0FlowMatching(plain.config.replace(gradient_checkpointing=True))
    ckpt.load_state_dict(plain.state_dict())
    inputs = tiny_inputs(plain.config)
    gen = torch.Generator().manual_seed(5)
    shape = (BATCH, plain.config.chunk_size, plain.config.max_action_dim)
    draw = dict(actions=torch.randn(shape, generator=gen), noise=torch.randn(shape, generator=gen),
                time=torch.rand(BATCH, generator=gen))
    for model in (plain, ckpt):
        model.train()
        pos, uncond = model.forward_cfg(**inputs, **draw, shared_prefix=True)
        (pos.mean() + uncond.mean()).backward()
    for a, b in zip(ckpt.parameters(), plain.parameters()):
        if b.grad is not None:
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("cfg_scale", [1.0, 2.5])
def test_sampler_with_plan_built_once_equals_per_step_denoise_bitwise(implementation, cfg_scale):
    eager, sdpa = tiny_pair()
    model = eager if implementation == "eager" else sdpa
    inputs, noise = tiny_inputs(model.config), chunk_noise(model.config)
    state = inputs["state"]
    with torch.no_grad():
        actions = model.sample_actions(**inputs, noise=noise, cfg_scale=cfg_scale)
        cache = model.build_prefix_cache(inputs["images"], inputs["img_masks"], inputs["lang_tokens"],
                                         inputs["lang_masks"])
        dt, x_t = torch.tensor(-1.0 / model.config.num_steps), noise.clone()
        for time in euler_times(model.config.num_steps):
            v_cond = model.denoise_step(cache, state, x_t, time, is_positive=1)  # masks rebuilt per step
            if cfg_scale != 1.0:
                v_uncond = model.denoise_step(cache, state, x_t, time, is_positive=0)
                v_cond = v_uncond + cfg_scale * (v_cond - v_uncond)
            x_t = x_t + dt * v_cond
    # cfg 2.5 computes both branches as one 2B batch: equal up to float32 rounding of the batch split.
    atol = 0.0 if cfg_scale == 1.0 else 1e-5
    torch.testing.assert_close(actions, x_t, rtol=0, atol=atol)


@pytest.mark.parametrize("cfg_scale", [1.0, 2.0])
def test_compiled_sampler_equals_eager(cfg_scale):
    torch._dynamo.reset()
    _, model = tiny_pair()
    inputs, noise = tiny_inputs(model.config), chunk_noise(model.config)
    with torch.no_grad():
        expected = model.sample_actions(**inputs, noise=noise, cfg_scale=cfg_scale)
        model.compile_sampler(backend="aot_eager")
        actual = model.sample_actions(**inputs, noise=noise, cfg_scale=cfg_scale)
        model.compile_sampler(enabled=False)
        restored = model.sample_actions(**inputs, noise=noise, cfg_scale=cfg_scale)
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-5)
    assert torch.equal(restored, expected)
    assert "_compiled_step" not in model.__dict__ and not any("compiled" in k for k in model.state_dict())


def policy_batch(policy: PI0Policy, batch_size: int = 2) -> dict:
    gen = torch.Generator().manual_seed(6)
    size = policy.config.vision.image_size
    lang = policy.config.tokenizer_max_length
    masks = torch.arange(lang)[None, :] < torch.tensor([5, 9][:batch_size])[:, None]
    return {
        "image.base_0_rgb": torch.randint(0, 256, (batch_size, 3, size, size), dtype=torch.uint8, generator=gen),
        "image.left_wrist_0_rgb": torch.randint(0, 256, (batch_size, 3, size, size), dtype=torch.uint8, generator=gen),
        "state": torch.randn(batch_size, policy.config.state_dim, generator=gen),
        "lang_tokens": torch.randint(3, 100, (batch_size, lang), generator=gen) * masks,
        "lang_masks": masks,
    }


def test_policy_compile_sampler_modes_and_cpu_fallback_of_cuda_graphs():
    torch.manual_seed(0)
    policy = PI0Policy(PI0Config.preset("tiny", attention_implementation="sdpa")).eval()
    batch = policy_batch(policy)
    noise = torch.randn(2, policy.config.chunk_size, policy.config.max_action_dim)
    expected = policy.select_action(batch, cfg_scale=2.0, noise=noise)
    assert policy.sampler_mode == "eager"
    policy.compile_sampler("cuda_graph")  # no CUDA here: select_action stays on the eager sampler
    assert policy.sampler_mode == "cuda_graph"
    assert torch.equal(policy.select_action(batch, cfg_scale=2.0, noise=noise), expected)
    policy.compile_sampler("eager")
    assert policy.sampler_mode == "eager"
    with pytest.raises(ValueError, match="compile_sampler mode"):
        policy.compile_sampler("graphs")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
@pytest.mark.parametrize("cfg_scale", [1.0, 2.0])
def test_cuda_graph_sampler_equals_eager_on_cuda(cfg_scale):
    _, model = tiny_pair()
    model = model.cuda()
    inputs = {k: v.cuda() for k, v in tiny_inputs(model.config).items()}
    sampler = CUDAGraphSampler(model)
    for seed in (2, 3):  # the second call replays the captured graph with new inputs
        noise = chunk_noise(model.config, seed).cuda()
        with torch.no_grad():
            expected = model.sample_actions(**inputs, noise=noise, cfg_scale=cfg_scale)
        actual = sampler(*inputs.values(), noise, cfg_scale)
        torch.testing.assert_close(actual, expected, rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------- interleaved shared-prefix CFG


def cfg_draw(config: PI0Config, seed: int = 7) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    shape = (BATCH, config.chunk_size, config.max_action_dim)
    return dict(actions=torch.randn(shape, generator=gen), noise=torch.randn(shape, generator=gen),
                time=torch.rand(BATCH, generator=gen) * 0.98 + 0.01)


def cfg_losses_and_grads(model: PI0FlowMatching, inputs: dict, draw: dict, shared_prefix):
    params = [p for p in model.parameters() if p.requires_grad]
    pos, uncond = model.forward_cfg(**inputs, **draw, shared_prefix=shared_prefix)
    objective = (torch.tensor([2.0, 0.5, 0.0])[:, None, None] * pos).mean() + 0.1 * uncond.mean()
    return pos, uncond, torch.autograd.grad(objective, params, allow_unused=True)


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_interleaved_folded_cfg_step_equals_sequential_shared_and_naive(implementation):
    eager, sdpa = tiny_pair()
    model = eager if implementation == "eager" else sdpa
    inputs, draw = tiny_inputs(model.config), cfg_draw(model.config)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    fast_pos, fast_uncond, fast_grads = cfg_losses_and_grads(model, inputs, draw, "interleaved")
    assert not torch.allclose(fast_pos, fast_uncond)  # the branches really differ
    for reference in (True, False):
        ref_pos, ref_uncond, ref_grads = cfg_losses_and_grads(model, inputs, draw, reference)
        torch.testing.assert_close(fast_pos, ref_pos, rtol=0, atol=1e-5)
        torch.testing.assert_close(fast_uncond, ref_uncond, rtol=0, atol=1e-5)
        for name, fast, ref in zip(names, fast_grads, ref_grads):
            assert fast is not None and ref is not None, name  # same parameters take part (DDP-safe)
            torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")


def test_interleaved_cfg_step_with_gradient_checkpointing_matches_plain_backward():
    _, plain = tiny_pair()
    ckpt = PI0FlowMatching(plain.config.replace(gradient_checkpointing=True))
    ckpt.load_state_dict(plain.state_dict())
    inputs, draw = tiny_inputs(plain.config), cfg_draw(plain.config)
    results = []
    for model in (plain, ckpt):
        model.train()
        results.append(cfg_losses_and_grads(model, inputs, draw, "interleaved"))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=0, atol=0)
    for a, b in zip(results[1][2], results[0][2]):
        if b is not None:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_interleaved_cfg_step_in_bfloat16_matches_sequential_to_bf16_rounding():
    _, model = tiny_pair(dtype="bfloat16")
    inputs, draw = tiny_inputs(model.config), cfg_draw(model.config)
    with torch.no_grad():
        fast = torch.cat(model.forward_cfg(**inputs, **draw, shared_prefix="interleaved"))
        ref = torch.cat(model.forward_cfg(**inputs, **draw, shared_prefix=True))
    assert torch.isfinite(fast).all()
    assert rel_err(fast, ref) < 3e-2


def test_folded_suffix_mask_is_block_diagonal_over_branches_with_repeated_positions():
    _, model = tiny_pair()
    pad = torch.tensor([[True, True, False, True], [True, False, False, False]])  # (B, Lp)
    one_mask, one_pos = model.suffix_mask_and_positions(pad)  # (B, Ls, Lp + Ls), (B, Ls)
    mask, pos = model.suffix_mask_and_positions(pad, branches=3)
    lp, ls = pad.shape[1], model.config.suffix_length
    assert mask.shape == (2, 3 * ls, lp + 3 * ls) and pos.shape == (2, 3 * ls)
    for i in range(3):
        rows = slice(i * ls, (i + 1) * ls)
        assert torch.equal(mask[:, rows, :lp], one_mask[:, :, :lp])
        for j in range(3):
            block = mask[:, rows, lp + j * ls: lp + (j + 1) * ls]
            assert torch.equal(block, one_mask[:, :, lp:] if i == j else torch.zeros_like(block))
        assert torch.equal(pos[:, rows], one_pos)
    assert one_pos[:, 0].tolist() == [3, 1]  # positions continue after the real prefix tokens


def test_interleaved_cfg_step_alternates_vlm_and_expert_layers_with_one_folded_expert_pass(monkeypatch):
    _, model = tiny_pair()
    pwe = model.paligemma_with_expert
    calls = []
    joint_layer = pwe._joint_layer

    def recording_layer(layer_idx, hiddens, plan, past, kv_only=False):
        stream = "vlm" if hiddens[0] is not None else "expert"
        calls.append((layer_idx, stream, hiddens[0 if stream == "vlm" else 1].shape[:2], kv_only))
        return joint_layer(layer_idx, hiddens, plan, past, kv_only)

    monkeypatch.setattr(pwe, "_joint_layer", recording_layer)
    for name in ("forward_prefix", "forward_suffix", "forward_joint"):
        monkeypatch.setattr(pwe, name, lambda *a, _name=name, **k: pytest.fail(f"{_name} called"))
    inputs = tiny_inputs(model.config)
    model.forward_cfg(**inputs, **cfg_draw(model.config), shared_prefix="interleaved")
    layers = model.config.vlm.num_hidden_layers
    prefix_len = calls[0][2][1]
    expected = []
    for layer in range(layers):
        expected.append((layer, "vlm", (BATCH, prefix_len), layer == layers - 1))
        expected.append((layer, "expert", (BATCH, 2 * model.config.suffix_length), False))
    assert calls == expected
    with pytest.raises(ValueError, match="shared_prefix"):
        model.forward_cfg(**inputs, **cfg_draw(model.config), shared_prefix="folded")


# ---------------------------------------------------------------------------- dropping missing cameras


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_dropping_missing_camera_slots_keeps_losses_gradients_and_actions(implementation):
    # Masked keys get exactly zero attention weight and pads do not advance positions, so running the
    # missing slot as padding or not at all differs only by float32 summation order.
    torch.manual_seed(0)
    config = PI0Config.preset("tiny", freeze_vision_encoder=False, attention_implementation=implementation)
    policy = PI0Policy(config)
    with torch.no_grad():
        policy.model.cond_embed.weight.normal_(std=0.5)
    batch = policy_batch(policy)  # base + left wrist present, right wrist missing
    gen = torch.Generator().manual_seed(8)
    shape = (2, config.chunk_size, config.max_action_dim)
    batch.update(action=torch.randn(2, config.chunk_size, config.action_dim, generator=gen),
                 noise=torch.randn(shape, generator=gen), time=torch.rand(2, generator=gen) * 0.98 + 0.01)
    params = [p for p in policy.parameters() if p.requires_grad]
    results = {}
    for drop in (False, True):
        policy.drop_missing_cameras = drop
        images, img_masks = policy._prepare_observation(batch)[:2]
        assert images.shape[1] == img_masks.shape[1] == (2 if drop else 3)
        out = policy(batch, branches="cfg")
        objective = out["losses_pos"].mean() + 0.3 * out["losses_uncond"].mean()
        grads = torch.autograd.grad(objective, params, allow_unused=True)
        actions = [policy.select_action(batch, cfg_scale=scale) for scale in (1.0, 2.0)]
        results[drop] = (out["losses_pos"], out["losses_uncond"], grads, actions)
    kept, dropped = results[False], results[True]
    torch.testing.assert_close(dropped[0], kept[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(dropped[1], kept[1], rtol=0, atol=1e-5)
    for a, b in zip(dropped[2], kept[2]):
        assert (a is None) == (b is None)
        if b is not None:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    for a, b in zip(dropped[3], kept[3]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    policy.drop_missing_cameras = True  # the default
    assert PI0Policy(config).drop_missing_cameras


def test_policy_cfg_forward_layouts_agree():
    torch.manual_seed(0)
    config = PI0Config.preset("tiny", attention_implementation="sdpa")
    policy = PI0Policy(config)
    with torch.no_grad():
        policy.model.cond_embed.weight.normal_(std=0.5)
    batch = policy_batch(policy)
    gen = torch.Generator().manual_seed(9)
    batch.update(action=torch.randn(2, config.chunk_size, config.action_dim, generator=gen),
                 noise=torch.randn(2, config.chunk_size, config.max_action_dim, generator=gen),
                 time=torch.rand(2, generator=gen))
    outs = {}
    for layout in (True, "interleaved"):
        policy.cfg_shared_prefix = layout
        with torch.no_grad():
            outs[layout] = policy(batch, branches="cfg")
    for key in ("losses_pos", "losses_uncond"):
        torch.testing.assert_close(outs["interleaved"][key], outs[True][key], rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------- compiled layers


def training_losses_and_grads(model: PI0FlowMatching, inputs: dict, draw: dict):
    """One plain flow-matching loss and one interleaved CFG objective, backward through both."""
    params = [p for p in model.parameters() if p.requires_grad]
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    plain = model(**inputs, **draw)
    pos, uncond = model.forward_cfg(**inputs, **draw, shared_prefix="interleaved")
    objective = plain.mean() + (torch.tensor([2.0, 0.5, 0.0])[:, None, None] * pos).mean() + 0.1 * uncond.mean()
    grads = torch.autograd.grad(objective, params, allow_unused=True)
    return torch.stack([plain.mean(), pos.mean(), uncond.mean()]).detach(), dict(zip(names, grads))


class CountingBackend:
    """A torch.compile backend that runs the captured graph eagerly, counting graphs and calls."""

    def __init__(self):
        self.graphs = 0
        self.calls = 0

    def __call__(self, graph_module, example_inputs):
        self.graphs += 1

        def run(*args):
            self.calls += 1
            return graph_module.forward(*args)

        return run


def test_compiled_layers_share_one_graph_per_call_pattern_across_all_layers():
    """Compiling cost must not grow with depth: a 4-layer model compiles as many graphs as a
    2-layer one (every layer reuses its call pattern's graph), with no graph breaks; undoing
    the compilation sends every layer back to eager."""
    graphs = {}
    for depth in (2, 4):
        torch._dynamo.reset()
        backend = CountingBackend()
        torch.manual_seed(0)
        model = PI0FlowMatching(PI0Config.preset(
            "tiny", freeze_vision_encoder=False, attention_implementation="sdpa",
            vlm={"num_hidden_layers": depth}, expert={"num_hidden_layers": depth},
            vision={"num_hidden_layers": depth}))
        model.train()
        pwe = model.paligemma_with_expert
        pwe.compile_layers(backend=backend)
        inputs, draw = tiny_inputs(model.config), cfg_draw(model.config)
        training_losses_and_grads(model, inputs, draw)
        graphs[depth] = backend.graphs
        # every VLM/expert layer of both passes and every SigLIP layer went through compiled code
        assert backend.calls >= 4 * depth, (depth, backend.calls)
        pwe.compile_layers(False)
        calls_before = backend.calls
        training_losses_and_grads(model, inputs, draw)
        assert backend.calls == calls_before and not pwe.layers_compiled
    torch._dynamo.reset()
    assert graphs[2] == graphs[4], graphs
    # joint (plain forward), prefix layer, prefix last layer (K/V only), suffix-with-cache, SigLIP layer
    assert graphs[2] <= 6, graphs


def test_compiled_layers_match_eager_losses_and_gradients_with_and_without_checkpointing():
    """The real inductor compile (what a GPU run uses) equals the eager layers to fusion rounding,
    also when gradient checkpointing recomputes the compiled layer in the backward.

    Inductor captures, decomposes, fuses and schedules the layers as on a GPU; only its last step
    differs by device (Triton there, C++ here). The C++ kernels are generated without SIMD
    (``cpp.vec_isa_ok=False``): a GPU run never uses the vectorised CPU code, and compiling ~70
    kernels against its headers took a third of this test's time (74 s CPU -> 50 s on 2 cores)."""
    torch._dynamo.reset()
    _, eager = tiny_pair()
    eager.train()
    inputs, draw = tiny_inputs(eager.config), cfg_draw(eager.config)
    ref_losses, ref_grads = training_losses_and_grads(eager, inputs, draw)
    compiled = PI0FlowMatching(eager.config.replace(gradient_checkpointing=True))
    compiled.load_state_dict(eager.state_dict())
    compiled.train()
    compiled.paligemma_with_expert.compile_layers()
    assert compiled.paligemma_with_expert.layers_compiled
    try:
        with inductor_config.patch({"cpp.vec_isa_ok": False}):  # scalar C++ kernels (docstring)
            for checkpointing in (True, False):
                compiled.paligemma_with_expert.gradient_checkpointing = checkpointing
                losses, grads = training_losses_and_grads(compiled, inputs, draw)
                torch.testing.assert_close(losses, ref_losses, rtol=1e-5, atol=1e-6)
                for name, ref in ref_grads.items():
                    assert (grads[name] is None) == (ref is None), name  # same parameters take part (DDP-safe)
                    if ref is not None:
                        torch.testing.assert_close(grads[name], ref, rtol=1e-4, atol=1e-6,
                                                   msg=lambda m: f"{name}: {m}")
    finally:
        valid_vec_isa_list.cache_clear()  # inductor cached the (empty) ISA list it probed under the patch
    compiled.paligemma_with_expert.compile_layers(False)
    assert not compiled.paligemma_with_expert.layers_compiled
    torch._dynamo.reset()
