"""PI0_OFT_Policy: the PI0 model as RIPT's training loop and runners see it.

It owns everything policy-side that is not the network itself: which PI0 to build (preset or
checkpoint), the normalisation statistics, the device, the DDP wrapper, and the split of the
trainable parameters into RIPT's two optimizer groups (``model`` and ``header``).

Runners call :meth:`select_action`; the CFG-Flow optimizer calls :meth:`cfg_flow_losses`. Both
take a PI0 observation batch (see ``docs/ARCHITECTURE.md``).
"""
from __future__ import annotations

import contextlib
import copy
import logging
from typing import Any, Iterator, Literal, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from openpi_pytorch_ori.pi0.checkpoint import load_pi0_weights
from openpi_pytorch_ori.pi0.configuration_pi0 import PI0Config
from openpi_pytorch_ori.pi0.modeling_pi0 import PI0Policy
from openpi_pytorch_ori.pi0.tokenizer import load_tokenizer
from ript.env_runner.pi0_runner_utils import NormStats, load_norm_stats
from ript.utils.assets import resolve_checkpoint_path, resolve_norm_stats_path
from ript.utils.distributed import unwrap

logger = logging.getLogger(__name__)

# The small projections around the action expert: RIPT trains them with their own optimizer
# (``algo.header_lr``), as it does for OpenVLA-OFT's action head.
HEADER_MODULE_NAMES = (
    "state_proj",
    "action_in_proj",
    "action_out_proj",
    "action_time_mlp_in",
    "action_time_mlp_out",
    "cond_embed",
    "cond_layer_mod",
)
# The CFG condition's own parameters (algo.cond_lr_scale moves them at a multiple of their lr).
CONDITION_PARAM_NAMES = ("cond_embed", "cond_layer_mod")

def resolve_device(device_id: int | str | None) -> torch.device:
    """``None``: this process's LOCAL_RANK GPU under torchrun, GPU 0, or the CPU."""
    if isinstance(device_id, str):
        return torch.device(device_id)
    if not torch.cuda.is_available():
        return torch.device("cpu")
    if device_id is None:
        import os

        device_id = int(os.environ.get("LOCAL_RANK", 0))
    return torch.device("cuda", int(device_id))


def split_trainable_params(policy: nn.Module) -> dict[str, list[nn.Parameter]]:
    """RIPT's two optimizer groups: ``header`` (small projections) and ``model`` (the rest)."""
    groups: dict[str, list[nn.Parameter]] = {"model": [], "header": []}
    for name, param in policy.named_parameters():
        if not param.requires_grad:
            continue
        is_header = any(part in HEADER_MODULE_NAMES for part in name.split("."))
        groups["header" if is_header else "model"].append(param)
    for group_name, params in groups.items():
        if not params:
            raise ValueError(
                f"trainable parameter group {group_name!r} is empty: both optimizers need parameters; "
                "check freeze_vision_encoder / train_expert_only"
            )
    return groups


class PI0_OFT_Policy:  # noqa: N801 (the user's design card names the class)
    """PI0 + norm stats + device + DDP, exposing RIPT's policy interface."""

    def __init__(
        self,
        device_id: int | str | None = None,
        norm_stats_path: str | None = None,
        pretrained_path: str | None = None,
        preset: Literal["full", "small", "tiny"] | None = None,
        tokenizer_path: str | None = None,
        strict_load: bool = False,
        dtype: Literal["float32", "bfloat16"] | None = None,
        gradient_checkpointing: bool = False,
        freeze_vision_encoder: bool = True,
        train_expert_only: bool = False,
        attention_implementation: str = "eager",
        overrides: Mapping[str, Any] | None = None,
        use_ddp: bool | None = None,
        compile_layers: bool = False,
        cond_layer_modulation: bool = False,
        sampler: Literal["eager", "compile", "cuda_graph", "compile+cuda_graph"] = "eager",
    ) -> None:
        self.device = resolve_device(device_id)
        # Scale of the sampler's initial flow noise (x_1 = T * eps); the rollout generator raises it
        # for training rollouts (algo.rollout_noise_temperature), evaluation keeps 1.
        self.noise_temperature = 1.0
        self.norm_stats: NormStats = self._load_norm_stats(norm_stats_path)
        pretrained_path = resolve_checkpoint_path(pretrained_path)  # builtin:<name> -> ript/assets/checkpoints/<name>
        overrides = dict(overrides or {})
        if cond_layer_modulation:
            overrides.setdefault("cond_layer_modulation", True)
        self.config = self._build_config(
            preset, pretrained_path, dtype, gradient_checkpointing, freeze_vision_encoder,
            train_expert_only, attention_implementation, overrides,
        )
        self._check_dims_against_model()
        tokenizer = load_tokenizer(tokenizer_path or self.config.tokenizer_path)
        # Build directly on the target device: initialising 3.3B parameters on the CPU first
        # costs minutes and 13 GB of host memory.
        with torch.device(self.device):
            policy = PI0Policy(self.config, tokenizer=tokenizer)
        if pretrained_path is not None:
            try:
                report = load_pi0_weights(policy, pretrained_path, strict=strict_load)
            except ValueError as error:  # unreadable, foreign, or another preset: name the argument
                raise ValueError(f"pretrained_path: {error}") from error
            logger.info("loaded PI0 weights from %s: %s", pretrained_path, report.summary())
        # PI0Policy applies config.dtype itself (bf16 backbone, float32 heads); only move it.
        policy.to(device=self.device)
        if compile_layers:
            # Fuses the per-layer elementwise work of training and rollout forwards (see
            # docs/benchmarks.md); the first update compiles (about 30 s on a GPU, minutes on CPU).
            policy.model.paligemma_with_expert.compile_layers()
        if sampler != "eager":
            # select_action's Euler loop is launch-bound for small models (81 ms a call for the
            # small preset on an H200, docs/benchmarks.md); a CUDA graph per batch size replays it.
            # The graphs read the parameters in place, so optimizer steps reach them. Eager on CPU.
            policy.compile_sampler(sampler)
        self.trainable_params = split_trainable_params(policy)
        self.model: nn.Module = self._maybe_wrap_ddp(policy, use_ddp)
        logger.info(
            "PI0_OFT_Policy: preset=%s dtype=%s device=%s trainable model=%d header=%d params",
            self.preset, self.config.dtype, self.device,
            sum(p.numel() for p in self.trainable_params["model"]),
            sum(p.numel() for p in self.trainable_params["header"]),
        )

    # ----------------------------------------------------------------------------------- setup
    @staticmethod
    def _load_norm_stats(norm_stats_path: str | None) -> NormStats:
        if norm_stats_path is None:
            logger.warning(
                "algo.policy.norm_stats_path is not set: using the bundled public LIBERO statistics "
                "(%s). A real checkpoint needs the norm_stats.json it was trained with.",
                resolve_norm_stats_path("builtin:libero"),
            )
            norm_stats_path = "builtin:libero"
        return load_norm_stats(resolve_norm_stats_path(norm_stats_path))

    def _build_config(
        self, preset, pretrained_path, dtype, gradient_checkpointing, freeze_vision_encoder,
        train_expert_only, attention_implementation, overrides,
    ) -> PI0Config:
        if preset is None:
            # A checkpoint is a real PI0; without one the CPU-sized preset keeps the default runnable.
            preset = "full" if pretrained_path is not None else "tiny"
            logger.info("algo.policy.preset not set: using %r", preset)
        self.preset = preset
        if dtype is None:
            dtype = "bfloat16" if torch.cuda.is_available() else "float32"
        fields = dict(
            dtype=dtype,
            gradient_checkpointing=gradient_checkpointing,
            freeze_vision_encoder=freeze_vision_encoder,
            train_expert_only=train_expert_only,
            attention_implementation=attention_implementation,
        )
        fields.update(dict(overrides or {}))
        return PI0Config.preset(preset, **fields)

    def _check_dims_against_model(self) -> None:
        state_dim, action_dim = self.norm_stats.state_dim, self.norm_stats.action_dim
        if state_dim > self.config.max_state_dim or action_dim > self.config.max_action_dim:
            raise ValueError(
                f"norm stats have state_dim={state_dim}, action_dim={action_dim}, wider than the model's "
                f"max_state_dim={self.config.max_state_dim} / max_action_dim={self.config.max_action_dim}"
            )

    def _maybe_wrap_ddp(self, policy: nn.Module, use_ddp: bool | None) -> nn.Module:
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if use_ddp is None:
            use_ddp = distributed and torch.distributed.get_world_size() > 1
        if not use_ddp:
            return policy
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        # Some weights never get a gradient (the VLM's last-layer MLP, whose prefix outputs the
        # loss never reads; lm_heads), so DDP must not wait for them.
        return nn.parallel.DistributedDataParallel(policy, device_ids=device_ids, find_unused_parameters=True)

    # -------------------------------------------------------------------------------- interface
    @property
    def pi0(self) -> PI0Policy:
        """The bare PI0Policy (DDP unwrapped)."""
        return unwrap(self.model)

    def condition_parameters(self) -> list[nn.Parameter]:
        """Parameters of the CFG condition (cond_embed; cond_layer_mod when enabled)."""
        return [p for name, p in self.pi0.named_parameters()
                if any(part in CONDITION_PARAM_NAMES for part in name.split("."))]

    @property
    def n_action_steps(self) -> int:
        return self.config.n_action_steps

    @property
    def image_size(self) -> int:
        """Square camera input size; runners resize frames to it before PI0 (openpi's way)."""
        return int(self.config.resize_imgs_with_padding[0])

    def train(self, mode: bool = True) -> "PI0_OFT_Policy":
        self.model.train(mode)
        return self

    def eval(self) -> "PI0_OFT_Policy":
        return self.train(False)

    def _to_device_batch(self, observation: Mapping[str, Any]) -> dict[str, Any]:
        batch: dict[str, Any] = {}
        for key, value in observation.items():
            if isinstance(value, np.ndarray):
                value = torch.from_numpy(np.ascontiguousarray(value))
            if isinstance(value, torch.Tensor):
                value = value.to(self.device, non_blocking=True)
            batch[key] = value
        return batch

    @torch.no_grad()
    def select_action(self, observation: Mapping[str, Any], cfg_scale: float = 1.0,
                      noise_seeds: Sequence[int] | None = None) -> torch.Tensor:
        """PI0 observation (batch B) -> (B, n_action_steps, action_dim) normalised model-space actions.

        ``noise_seeds``: one seed per sample; sample ``i``'s flow noise is then drawn from its own
        generator, so it does not depend on the other samples of the batch (the rollout scheduler
        keys the seeds by episode and chunk). None draws from the global generator."""
        if cfg_scale < 0:
            raise ValueError(f"cfg_scale={cfg_scale} must be >= 0 (1.0 = conditional policy only)")
        batch = self._to_device_batch(observation)
        was_training = self.model.training
        self.model.eval()
        try:
            noise = None
            batch_size = batch["state"].shape[0]
            shape = (self.config.chunk_size, self.config.max_action_dim)
            if noise_seeds is not None:
                if len(noise_seeds) != batch_size:
                    raise ValueError(f"noise_seeds has {len(noise_seeds)} seeds for a batch of {batch_size}")
                noise = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(seed)))
                                     for seed in noise_seeds]).to(self.device)  # (B, T, max_action_dim)
                noise = self.noise_temperature * noise
            elif self.noise_temperature != 1.0:
                noise = self.noise_temperature * torch.randn((batch_size, *shape), dtype=torch.float32,
                                                             device=self.device)
            actions = self.pi0.select_action(batch, cfg_scale=cfg_scale, noise=noise)  # (B, 50, max_action_dim)
        finally:
            self.model.train(was_training)
        actions = actions[..., : self.norm_stats.action_dim].float()  # (B, 50, 7)
        return actions

    def cfg_flow_losses(
        self,
        batch: Mapping[str, Any],
        noise: torch.Tensor | None = None,
        time: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Per-element losses of both CFG branches, shared noise/time, one prefix pass.

        Goes through ``self.model`` (the DDP wrapper when one is up) so DDP sees the forward.
        """
        device_batch = self._to_device_batch(batch)
        if noise is not None:
            noise = noise.to(self.device)
        if time is not None:
            time = time.to(self.device)
        return self.model(device_batch, noise=noise, time=time, branches="cfg")

    @torch.no_grad()
    def cfg_velocities(self, batch: Mapping[str, Any], noise: torch.Tensor | None = None,
                       time: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(v_pos, v_uncond) of both CFG branches at the same noise and time (diagnostics only;
        runs the bare module, outside DDP, so it is no collective)."""
        device_batch = self._to_device_batch(batch)
        noise = None if noise is None else noise.to(self.device)
        time = None if time is None else time.to(self.device)
        return self.pi0.cfg_velocities(device_batch, noise=noise, time=time)

    def frozen_copy(self) -> "PI0_OFT_Policy":
        """A frozen snapshot of this policy for reference outputs (the CFG-Flow optimizer's output
        anchor): a deep copy of the bare PI0 (no DDP, no captured sampler graph), gradients off, in
        eval mode; norm stats, config and device are shared. Costs one more copy of the weights."""
        bare = self.pi0
        graph = bare.__dict__.get("_graph_sampler")
        # A captured CUDA graph belongs to the live model: the copy samples eagerly.
        memo = {id(graph): None} if graph is not None else {}
        snapshot = copy.copy(self)
        snapshot.model = copy.deepcopy(bare, memo).eval().requires_grad_(False)
        snapshot.trainable_params = {group: [] for group in self.trainable_params}
        return snapshot

    def flow_losses(self, batch: Mapping[str, Any], noise=None, time=None, is_positive=None) -> dict:
        """Plain (single-branch) flow-matching losses, e.g. for supervised warm starts."""
        device_batch = self._to_device_batch(batch)
        return self.model(device_batch, noise=noise, time=time, is_positive=is_positive, branches="single")

    @contextlib.contextmanager
    def no_grad_sync(self) -> Iterator[None]:
        """Skip DDP's gradient all-reduce (accumulation micro-steps); a no-op without DDP."""
        if isinstance(self.model, nn.parallel.DistributedDataParallel):
            with self.model.no_sync():
                yield
        else:
            yield

    # ------------------------------------------------------------------------------ checkpoints
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Only what training changes: the parameters with requires_grad."""
        return {
            name: param.detach().cpu().clone()
            for name, param in self.pi0.named_parameters()
            if param.requires_grad
        }

    def load_trainable_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        params = dict(self.pi0.named_parameters())
        unknown = sorted(set(state_dict) - set(params))
        if unknown:
            raise KeyError(f"checkpoint has parameters this policy does not: {unknown[:10]}")
        with torch.no_grad():
            for name, value in state_dict.items():
                params[name].copy_(value.to(params[name].device, params[name].dtype))
