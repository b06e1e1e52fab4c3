"""PI0_OFT_Policy: RIPT's view of PI0 (param groups, actions, losses, DDP, checkpoints)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.distributed as dist

from ript.algos.policies.pi0_oft_policy import HEADER_MODULE_NAMES, PI0_OFT_Policy, split_trainable_params


@pytest.fixture(scope="module")
def policy() -> PI0_OFT_Policy:
    torch.manual_seed(0)
    return PI0_OFT_Policy(norm_stats_path="builtin:libero", device_id="cpu")


def observation(batch_size: int, height: int = 64) -> dict:
    rng = np.random.default_rng(0)
    return {
        "image.base_0_rgb": rng.integers(0, 255, (batch_size, 3, height, height), dtype=np.uint8),
        "image.left_wrist_0_rgb": rng.integers(0, 255, (batch_size, 3, height, height), dtype=np.uint8),
        "state": rng.standard_normal((batch_size, 8)).astype(np.float32),
        "prompt": ["put the bowl on the stove"] * batch_size,
    }


def training_batch(batch_size: int) -> dict:
    batch = observation(batch_size)
    batch["action"] = np.random.default_rng(1).standard_normal((batch_size, 50, 7)).astype(np.float32)
    batch["action_is_pad"] = np.zeros((batch_size, 50), dtype=bool)
    return batch


def test_without_a_checkpoint_the_cpu_sized_tiny_preset_is_built(policy):
    assert policy.preset == "tiny"
    assert policy.device == torch.device("cpu")
    assert policy.model is policy.pi0  # no process group -> no DDP wrapper


def test_trainable_params_split_into_non_empty_model_and_header_groups(policy):
    groups = policy.trainable_params
    assert groups["model"] and groups["header"]
    names = {id(p): n for n, p in policy.pi0.named_parameters()}
    header_names = [names[id(p)] for p in groups["header"]]
    assert all(any(part in HEADER_MODULE_NAMES for part in n.split(".")) for n in header_names)
    # cond_embed, the new CFG condition, is trained with the header optimizer.
    assert any("cond_embed" in n for n in header_names)
    # Every trainable parameter is in exactly one group; frozen ones (vision tower) in none.
    grouped = {id(p) for g in groups.values() for p in g}
    assert grouped == {id(p) for p in policy.pi0.parameters() if p.requires_grad}
    assert len(grouped) == len(groups["model"]) + len(groups["header"])


def test_an_empty_group_is_an_error_naming_the_fix():
    frozen = torch.nn.Linear(2, 2)
    frozen.requires_grad_(False)
    with pytest.raises(ValueError, match="freeze_vision_encoder"):
        split_trainable_params(frozen)


def test_select_action_returns_normalised_seven_dim_chunks(policy):
    actions = policy.select_action(observation(3), cfg_scale=1.0)
    assert actions.shape == (3, 50, 7) and actions.dtype == torch.float32
    assert torch.isfinite(actions).all()
    guided = policy.select_action(observation(3), cfg_scale=2.0)
    assert guided.shape == (3, 50, 7)
    with pytest.raises(ValueError, match="cfg_scale"):
        policy.select_action(observation(1), cfg_scale=-1.0)


def test_select_action_leaves_the_training_mode_as_it_was(policy):
    policy.train()
    policy.select_action(observation(1))
    assert policy.model.training


def test_cfg_flow_losses_share_noise_and_time_across_the_two_branches(policy):
    batch = training_batch(2)
    noise = torch.randn(2, 50, policy.config.max_action_dim)
    time = torch.tensor([0.3, 0.7])
    losses = policy.cfg_flow_losses(batch, noise=noise, time=time)
    assert losses["losses_pos"].shape == losses["losses_uncond"].shape == (2, 50, 7)
    # cond_embed starts at zero, so both branches see the same network: equal losses.
    torch.testing.assert_close(losses["losses_pos"], losses["losses_uncond"])
    # The same call through the single-branch path gives the same conditional loss.
    single = policy.flow_losses(batch, noise=noise, time=time, is_positive=1)
    torch.testing.assert_close(single["losses"], losses["losses_pos"], rtol=1e-5, atol=1e-5)


def test_trainable_state_dict_round_trip_and_unknown_keys(policy):
    state = policy.trainable_state_dict()
    other = PI0_OFT_Policy(norm_stats_path="builtin:libero", device_id="cpu")
    other.load_trainable_state_dict(state)
    assert all(torch.equal(other.trainable_state_dict()[k], v) for k, v in state.items())
    with pytest.raises(KeyError, match="not_a_parameter"):
        other.load_trainable_state_dict({"not_a_parameter": torch.zeros(1)})


def test_missing_norm_stats_file_is_a_clear_error(tmp_path):
    with pytest.raises((FileNotFoundError, ValueError), match="norm"):
        PI0_OFT_Policy(norm_stats_path=str(tmp_path / "missing.json"), device_id="cpu")


def test_under_a_process_group_the_model_is_ddp_wrapped_and_no_grad_sync_works(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        policy = PI0_OFT_Policy(norm_stats_path="builtin:libero", device_id="cpu", use_ddp=True)
        assert isinstance(policy.model, torch.nn.parallel.DistributedDataParallel)
        assert policy.pi0 is policy.model.module
        with policy.no_grad_sync():
            losses = policy.cfg_flow_losses(training_batch(2))
            (losses["losses_pos"].mean() + losses["losses_uncond"].mean()).backward()
        assert all(p.grad is not None for p in policy.trainable_params["header"])
    finally:
        dist.destroy_process_group()


def test_compile_layers_is_off_by_default_and_on_when_asked(policy):
    """`algo.policy.compile_layers=true` reaches the model: its layers run through torch.compile
    (compiled lazily at the first forward); the default stays eager (CPU compiles take minutes)."""
    assert not policy.pi0.model.paligemma_with_expert.layers_compiled
    compiled = PI0_OFT_Policy(norm_stats_path="builtin:libero", device_id="cpu", compile_layers=True)
    pwe = compiled.pi0.model.paligemma_with_expert
    assert pwe.layers_compiled
    pwe.compile_layers(False)


def test_noise_temperature_scales_the_sampler_noise(policy):
    # select_action at temperature T draws eps and samples from T * eps: equal to PI0's sampler
    # given that noise explicitly (same RNG state).
    obs = observation(2)
    shape = (2, policy.config.chunk_size, policy.config.max_action_dim)
    policy.noise_temperature = 1.7
    try:
        torch.manual_seed(3)
        got = policy.select_action(obs)
    finally:
        policy.noise_temperature = 1.0
    torch.manual_seed(3)
    noise = 1.7 * torch.randn(shape)
    with torch.no_grad():
        want = policy.pi0.select_action(policy._to_device_batch(obs), noise=noise)[..., :7]
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_condition_parameters_and_the_per_layer_condition_join_the_header_group():
    plain = PI0_OFT_Policy(device_id="cpu", norm_stats_path="builtin:reach", preset="tiny", dtype="float32")
    assert [p.shape for p in plain.condition_parameters()] == [plain.pi0.model.cond_embed.weight.shape]
    mod = PI0_OFT_Policy(device_id="cpu", norm_stats_path="builtin:reach", preset="tiny", dtype="float32",
                         cond_layer_modulation=True)
    names = {id(p) for p in mod.condition_parameters()}
    assert id(mod.pi0.model.cond_layer_mod) in names and len(names) == 2
    assert any(p is mod.pi0.model.cond_layer_mod for p in mod.trainable_params["header"])
    assert "cond_layer_mod" in HEADER_MODULE_NAMES


def test_noise_seeds_make_each_sample_independent_of_its_batch(policy):
    obs = observation(3)
    together = policy.select_action(obs, noise_seeds=[11, 12, 13])
    alone = policy.select_action({k: v[1:2] for k, v in obs.items()}, noise_seeds=[12])
    torch.testing.assert_close(together[1:2], alone, rtol=1e-5, atol=1e-6)  # same noise, same chunk
    again = policy.select_action(obs, noise_seeds=[11, 12, 13])
    torch.testing.assert_close(together, again, rtol=0, atol=0)
    other = policy.select_action(obs, noise_seeds=[11, 99, 13])
    assert not torch.allclose(together[1], other[1]) and torch.equal(together[0], other[0])
    with pytest.raises(ValueError, match="noise_seeds has 2 seeds for a batch of 3"):
        policy.select_action(obs, noise_seeds=[1, 2])


def test_sampler_option_picks_the_sampler_mode_and_is_eager_on_cpu():
    torch.manual_seed(0)
    graphed = PI0_OFT_Policy(norm_stats_path="builtin:libero", device_id="cpu", sampler="cuda_graph")
    assert graphed.pi0.sampler_mode == "cuda_graph"  # replayed as CUDA graphs on a GPU
    torch.manual_seed(0)
    eager = PI0_OFT_Policy(norm_stats_path="builtin:libero", device_id="cpu")
    assert eager.pi0.sampler_mode == "eager"
    obs = observation(2)
    torch.testing.assert_close(graphed.select_action(obs, noise_seeds=[1, 2]),
                               eager.select_action(obs, noise_seeds=[1, 2]), rtol=0, atol=0)
