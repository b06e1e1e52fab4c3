"""PI0 flow-matching model with a classifier-free-guidance condition, and its policy wrapper.

`PI0FlowMatching` is the tensor-level core (embeddings, joint transformer, flow-matching losses,
Euler sampler). `PI0Policy` turns observation batches (uint8 camera images, raw state, prompts)
into model inputs, validates them, and exposes `forward` (losses) and `select_action`.

Flow convention (matches the PI0 checkpoints): x_t = t * noise + (1 - t) * actions,
u_t = noise - actions; sampling integrates from t = 1 (noise) to t = 0 (actions).

CFG condition: `cond_embed = nn.Embedding(2, proj_width)` indexed by `is_positive` (1 =
conditional / "positive" branch, 0 = unconditional). Its embedding is ADDED to the sinusoidal
flow-time embedding, before the time embedding is concatenated with the action embedding and fed
to `action_time_mlp_in`. Adding (rather than concat + linear) keeps every pretrained weight's
shape, and because `cond_embed` is zero-initialised a freshly loaded checkpoint computes exactly
what it computed before, for both values of `is_positive`.

Optional per-layer condition (`config.cond_layer_modulation`, issue 20): one embedding added to
the time embedding gives the condition a single narrow entry point, and measured branch gaps
stayed at 0.1-0.3 % (docs/learning.md). `cond_layer_mod` (L_expert, 2 branches, [scale, shift],
W) modulates the expert's hidden state before every layer, h <- h * (1 + scale[l, c]) + shift[l, c]
(adaLN-style FiLM, as in DiT), for every suffix token of branch c. Zero-initialised, it leaves a
loaded checkpoint's outputs bit-identical for both branches (h * 1 + 0 == h in floating point).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .configuration_pi0 import PI0Config
from .paligemma_with_expert import AttentionPlan, PaliGemmaWithExpert, PrefixKVCache, make_att_2d_masks

logger = logging.getLogger(__name__)

BranchIds = torch.Tensor | int | bool


def sinusoidal_time_embedding(
    time: torch.Tensor, dimension: int, min_period: float, max_period: float
) -> torch.Tensor:
    """[sin, cos] of 2*pi*t/period over dimension/2 log-spaced periods; time (B,) -> (B, dimension).

    Computed in float32 like the reference (checked against the parity fixture: a float64
    computation moves the suffix embeddings by 2e-5 because the shortest period is 4e-3).
    """
    fraction = torch.linspace(0.0, 1.0, dimension // 2, dtype=torch.float32, device=time.device)  # (D/2,)
    period = min_period * (max_period / min_period) ** fraction  # (D/2,)
    angular_frequency = 1.0 / period * 2 * math.pi  # (D/2,)
    angles = angular_frequency[None, :] * time.to(torch.float32)[:, None]  # (B, D/2)
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)  # (B, D)


def euler_times(num_steps: int) -> list[torch.Tensor]:
    """The flow times visited by the sampler, accumulated exactly as the reference does.

    dt = float32(-1/num_steps), t = float32 1.0, `while t >= -dt/2: ...; t += dt`. The float32
    accumulation (0.8999999762, ..., 0.0999999270) is kept: 1 - k/N moves actions by ~1e-4.
    Returns num_steps 0-dim float32 CPU tensors (computed up front: no device sync per step).
    """
    dt = torch.tensor(-1.0 / num_steps, dtype=torch.float32)
    time = torch.tensor(1.0, dtype=torch.float32)
    times = []
    while time >= -dt / 2:
        times.append(time.clone())
        time = time + dt
    return times


class PI0FlowMatching(nn.Module):
    """PI0 core: prefix (images + language) through the VLM, suffix (state + noisy actions +
    time + CFG condition) through the action expert, joint attention layer by layer.

    Shapes: B batch, n camera slots, T = chunk_size, A = max_action_dim, S = max_state_dim.
    images (B, n, 3, H, W) float in [-1, 1]; img_masks (B, n) bool; lang_tokens (B, L) int64;
    lang_masks (B, L) bool; state (B, S); actions / noise (B, T, A); time (B,) float in (0, 1];
    is_positive: (B,) int/bool tensor or a Python int/bool for the whole batch.
    """

    def __init__(self, config: PI0Config):
        super().__init__()
        self.config = config
        self.paligemma_with_expert = PaliGemmaWithExpert(config)
        width = config.proj_width
        self.state_proj = nn.Linear(config.max_state_dim, width)
        self.action_in_proj = nn.Linear(config.max_action_dim, width)
        self.action_out_proj = nn.Linear(width, config.max_action_dim)
        self.action_time_mlp_in = nn.Linear(2 * width, width)
        self.action_time_mlp_out = nn.Linear(width, width)
        self.cond_embed = nn.Embedding(2, width)
        nn.init.zeros_(self.cond_embed.weight)  # pretrained behaviour unchanged for both branches
        if config.cond_layer_modulation:
            # float32 like the other heads; zero = pretrained behaviour for both branches.
            self.cond_layer_mod = nn.Parameter(
                torch.zeros(config.expert.num_hidden_layers, 2, 2, config.expert.hidden_size))  # (L, branch, 2, W)
        if config.dtype == "bfloat16":
            # Backbone in bf16; the small heads and the losses stay float32.
            self.paligemma_with_expert.to(torch.bfloat16)
        self.apply_trainability()

    # ------------------------------------------------------------------ trainability
    def apply_trainability(self) -> None:
        """Set requires_grad from `freeze_vision_encoder` / `train_expert_only`.

        freeze_vision_encoder: SigLIP frozen. train_expert_only: the whole PaliGemma (SigLIP,
        projector, VLM) frozen; the expert and PI0 heads (incl. cond_embed) stay trainable.
        Always frozen: the VLM parts that cannot affect any output (see
        `PaliGemmaWithExpert.unused_vlm_modules`), so every trainable parameter gets a gradient.
        """
        pwe = self.paligemma_with_expert
        for param in self.parameters():
            param.requires_grad_(True)
        frozen: list[nn.Module] = list(pwe.unused_vlm_modules())
        if self.config.train_expert_only:
            frozen.append(pwe.paligemma)
        elif self.config.freeze_vision_encoder:
            frozen.append(pwe.vision_tower)
        for module in frozen:
            for param in module.parameters():
                param.requires_grad_(False)

    # ------------------------------------------------------------------ random draws
    def sample_noise(self, shape: Sequence[int], device: torch.device | str) -> torch.Tensor:
        """Standard normal flow noise, float32."""
        return torch.randn(tuple(shape), dtype=torch.float32, device=device)

    def sample_time(self, batch_size: int, device: torch.device | str) -> torch.Tensor:
        """Training flow time t = 0.001 + 0.999 * Beta(1.5, 1), float32 (B,).

        A true Beta draw, as openpi's JAX training does (the PyTorch port's sampler is not Beta).
        """
        concentration = torch.tensor([1.5, 1.0], dtype=torch.float32, device=device)
        beta = torch.distributions.Beta(concentration[0], concentration[1])
        return beta.sample((batch_size,)) * 0.999 + 0.001  # (B,)

    # ------------------------------------------------------------------ embeddings
    def embed_prefix(
        self, images: torch.Tensor, img_masks: torch.Tensor, lang_tokens: torch.Tensor, lang_masks: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (prefix_embs (B, n*P + L, vlm_hidden), pad_masks (B, n*P + L), att_masks (B, n*P + L)).

        Token order: [camera 0 patches | camera 1 | ... | language]; att_masks are all False
        (the prefix is bidirectional). Masked cameras still run through SigLIP, only masked out
        (PI0Policy drops the slots missing from a whole batch before calling: drop_missing_cameras).
        """
        batch, num_cameras = images.shape[:2]
        pwe = self.paligemma_with_expert
        image_tokens = pwe.embed_image(images.flatten(0, 1))  # (B*n, P, D)
        tokens_per_image = image_tokens.shape[1]
        image_tokens = image_tokens.reshape(batch, num_cameras * tokens_per_image, -1)  # (B, n*P, D)
        # expand + reshape, not repeat_interleave(int): the latter can sync with the device.
        image_pad = img_masks[:, :, None].expand(batch, num_cameras, tokens_per_image).reshape(batch, -1)  # (B, n*P)
        lang_embs = pwe.embed_language_tokens(lang_tokens).to(image_tokens.dtype)  # (B, L, D)
        embs = torch.cat([image_tokens, lang_embs], dim=1)  # (B, n*P + L, D)
        pad_masks = torch.cat([image_pad, lang_masks.to(torch.bool)], dim=1)  # (B, n*P + L)
        att_masks = torch.zeros_like(pad_masks)  # (B, n*P + L)
        return embs, pad_masks, att_masks

    def embed_suffix(
        self, state: torch.Tensor, noisy_actions: torch.Tensor, timestep: torch.Tensor, is_positive: BranchIds
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (suffix_embs (B, 1 + T, W), pad_masks (B, 1 + T), att_masks (B, 1 + T)), W = proj_width.

        state token = state_proj(state); action tokens =
        mlp_out(silu(mlp_in([action_in_proj(x_t), time_emb + cond_embed(is_positive)]))).
        att_masks = [1, 1, 0, ...]: the state token opens a block (it cannot see the actions), the
        first action token opens another that all actions share.
        """
        batch, horizon = noisy_actions.shape[:2]
        head_dtype = self.state_proj.weight.dtype
        state_token = self.state_proj(state.to(head_dtype))[:, None, :]  # (B, 1, W)
        action_embs = self.action_in_proj(noisy_actions.to(head_dtype))  # (B, T, W)
        time_emb = sinusoidal_time_embedding(
            timestep, self.config.proj_width, self.config.time_min_period, self.config.time_max_period
        ).to(head_dtype)  # (B, W)
        branch = _branch_ids(is_positive, batch, noisy_actions.device)  # (B,)
        time_emb = time_emb + self.cond_embed(branch)  # (B, W)
        time_embs = time_emb[:, None, :].expand(batch, horizon, -1)  # (B, T, W)
        action_time = self.action_time_mlp_in(torch.cat([action_embs, time_embs], dim=2))  # (B, T, W)
        action_time = self.action_time_mlp_out(F.silu(action_time))  # (B, T, W)
        embs = torch.cat([state_token, action_time], dim=1)  # (B, 1 + T, W)
        pad_masks = torch.ones(batch, 1 + horizon, dtype=torch.bool, device=embs.device)  # (B, 1 + T)
        att_masks = torch.zeros_like(pad_masks)
        att_masks[:, :2] = True
        return embs, pad_masks, att_masks

    # ------------------------------------------------------------------ velocities
    def predict_velocity(
        self, images, img_masks, lang_tokens, lang_masks, state, x_t, time, is_positive: BranchIds = 1
    ) -> torch.Tensor:
        """Joint prefix+suffix pass (the reference's training forward) -> v_t (B, T, A) float32."""
        prefix_embs, prefix_pad, prefix_att = self.embed_prefix(images, img_masks, lang_tokens, lang_masks)
        suffix_embs, suffix_pad, suffix_att = self.embed_suffix(state, x_t, time, is_positive)
        pad_masks = torch.cat([prefix_pad, suffix_pad], dim=1)  # (B, Lp + Ls)
        att_masks = torch.cat([prefix_att, suffix_att], dim=1)  # (B, Lp + Ls)
        attention_mask = make_att_2d_masks(pad_masks, att_masks)  # (B, Lp + Ls, Lp + Ls)
        position_ids = torch.cumsum(pad_masks.to(torch.int64), dim=1) - 1  # pads repeat the previous position
        modulation = self._suffix_modulation(is_positive, suffix_embs)
        _, suffix_out = self.paligemma_with_expert.forward_joint(
            prefix_embs, suffix_embs, attention_mask, position_ids, suffix_modulation=modulation)
        return self._velocity_head(suffix_out)

    def build_prefix_cache(self, images, img_masks, lang_tokens, lang_masks) -> PrefixKVCache:
        """One VLM pass over the prefix -> per-layer keys/values (B, Lp, KV, D) + pad mask.

        Differentiable: used with grad by `cfg_branch_velocities`, under no_grad by `sample_actions`.
        """
        prefix_embs, prefix_pad, prefix_att = self.embed_prefix(images, img_masks, lang_tokens, lang_masks)
        attention_mask = make_att_2d_masks(prefix_pad, prefix_att)  # (B, Lp, Lp)
        position_ids = torch.cumsum(prefix_pad.to(torch.int64), dim=1) - 1  # (B, Lp)
        _, cache = self.paligemma_with_expert.forward_prefix(prefix_embs, prefix_pad, attention_mask, position_ids)
        return cache

    def denoise_step(
        self, cache: PrefixKVCache, state: torch.Tensor, x_t: torch.Tensor, time: torch.Tensor,
        is_positive: BranchIds = 1, plan: AttentionPlan | None = None,
    ) -> torch.Tensor:
        """Suffix-only pass against a prefix cache -> v_t (B, T, A) float32.

        time: (B,) or a 0-dim tensor (broadcast to the batch). The batch of `state`/`x_t` must
        equal the cache's batch (use `cache.repeat_batch` to serve several branches).
        plan: `suffix_attention_plan(cache)`, to build masks/positions/RoPE once per sampler call
        instead of once per step (they depend only on the cache's pad mask).
        """
        batch = x_t.shape[0]
        time = time.to(device=x_t.device, dtype=torch.float32).expand(batch) if time.dim() == 0 else time
        suffix_embs, _, _ = self.embed_suffix(state, x_t, time, is_positive)
        if plan is None:
            plan = self.suffix_attention_plan(cache)
        modulation = self._suffix_modulation(is_positive, suffix_embs)
        suffix_out = self.paligemma_with_expert.forward_suffix(
            suffix_embs, cache, None, None, plan=plan, suffix_modulation=modulation)
        return self._velocity_head(suffix_out)

    def suffix_attention_plan(self, cache: PrefixKVCache) -> AttentionPlan:
        """Masks, positions and RoPE tables of the suffix against `cache` (batch = cache batch).

        The suffix layout is fixed (state token, then chunk_size action tokens, all real), so the
        plan depends only on the prefix pad mask: [prefix pads | blockwise-causal suffix mask].
        """
        attention_mask, position_ids = self.suffix_mask_and_positions(cache.pad_masks)
        return self.paligemma_with_expert.attention_plan(attention_mask, position_ids)

    def suffix_mask_and_positions(self, prefix_pad_masks: torch.Tensor, branches: int = 1
                                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """Suffix attention mask and positions against a prefix with pad mask (B, Lp).

        branches = n > 1: n suffixes folded into the query length, rows [i*Ls, (i+1)*Ls) being
        branch i; keys are [prefix | branch 0 suffix | ... | branch n-1 suffix]. Each branch sees
        the prefix and its own suffix only (block-diagonal suffix part) at the same positions as
        alone, so every branch computes what it would as its own batch row.
        -> (attention_mask (B, n*Ls, Lp + n*Ls) bool, position_ids (B, n*Ls)).
        """
        batch, device = prefix_pad_masks.shape[0], prefix_pad_masks.device
        suffix_len = self.config.suffix_length
        suffix_pad = torch.ones(batch, suffix_len, dtype=torch.bool, device=device)  # (B, Ls)
        suffix_att = torch.zeros_like(suffix_pad)
        suffix_att[:, :2] = True  # as embed_suffix: state token and first action token open blocks
        suffix_visible = make_att_2d_masks(suffix_pad, suffix_att)  # (B, Ls, Ls)
        if branches > 1:
            same_branch = torch.eye(branches, dtype=torch.bool, device=device)  # (n, n)
            suffix_visible = (same_branch[None, :, None, :, None] & suffix_visible[:, None, :, None, :]).reshape(
                batch, branches * suffix_len, branches * suffix_len)  # (B, n*Ls, n*Ls) block diagonal
        prefix_visible = prefix_pad_masks[:, None, :].expand(batch, branches * suffix_len, -1)  # (B, n*Ls, Lp)
        attention_mask = torch.cat([prefix_visible, suffix_visible], dim=2)  # (B, n*Ls, Lp + n*Ls)
        prefix_offsets = prefix_pad_masks.sum(dim=1, keepdim=True)  # (B, 1)
        position_ids = prefix_offsets + torch.cumsum(suffix_pad.to(torch.int64), dim=1) - 1  # (B, Ls)
        if branches > 1:
            position_ids = position_ids.repeat(1, branches)  # (B, n*Ls): every branch at the same positions
        return attention_mask, position_ids

    def _suffix_modulation(self, is_positive: BranchIds, suffix_embs: torch.Tensor):
        """The per-layer condition hook for a suffix batch of one branch per row (None when off)."""
        if not self.config.cond_layer_modulation:
            return None
        batch, length = suffix_embs.shape[:2]
        branch = _branch_ids(is_positive, batch, suffix_embs.device)  # (B,)
        return self._layer_modulation(branch[:, None].expand(batch, length))  # (B, Ls)

    def _layer_modulation(self, token_branch: torch.Tensor):
        """token_branch (B, L) int64 -> hook(layer_idx, h (B, L, W)) = h * (1 + scale) + shift."""
        table = self.cond_layer_mod  # (L_expert, 2, 2, W)

        def modulate(layer_idx: int, hidden: torch.Tensor) -> torch.Tensor:
            film = table[layer_idx][token_branch]  # (B, L, 2, W)
            out = hidden.to(torch.float32) * (1.0 + film[:, :, 0]) + film[:, :, 1]  # (B, L, W)
            return out.to(hidden.dtype)

        return modulate

    def _velocity_head(self, suffix_out: torch.Tensor) -> torch.Tensor:
        action_out = suffix_out[:, -self.config.chunk_size :].to(self.action_out_proj.weight.dtype)  # (B, T, W)
        return self.action_out_proj(action_out).to(torch.float32)  # (B, T, A)

    # ------------------------------------------------------------------ training losses
    def forward(
        self, images, img_masks, lang_tokens, lang_masks, state, actions,
        noise: torch.Tensor | None = None, time: torch.Tensor | None = None, is_positive: BranchIds = 1,
    ) -> torch.Tensor:
        """Flow-matching losses of one branch -> (B, T, A) float32, unreduced and unmasked
        (padded action dims included; the caller masks, slices and weights)."""
        noise, time = self._noise_and_time(actions, noise, time)
        x_t, u_t = _interpolate(actions, noise, time)
        v_t = self.predict_velocity(images, img_masks, lang_tokens, lang_masks, state, x_t, time, is_positive)
        return F.mse_loss(u_t, v_t, reduction="none")  # (B, T, A)

    def forward_cfg(
        self, images, img_masks, lang_tokens, lang_masks, state, actions,
        noise: torch.Tensor | None = None, time: torch.Tensor | None = None, shared_prefix: bool | str = "interleaved",
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Losses of BOTH CFG branches with the SAME noise and time -> (losses_pos, losses_uncond),
        each (B, T, A) float32, unreduced (see `cfg_branch_velocities` for `shared_prefix`)."""
        v_pos, v_uncond, u_t = self.cfg_branch_velocities(images, img_masks, lang_tokens, lang_masks, state, actions,
                                                          noise=noise, time=time, shared_prefix=shared_prefix)
        return F.mse_loss(u_t, v_pos, reduction="none"), F.mse_loss(u_t, v_uncond, reduction="none")

    def cfg_branch_velocities(
        self, images, img_masks, lang_tokens, lang_masks, state, actions,
        noise: torch.Tensor | None = None, time: torch.Tensor | None = None, shared_prefix: bool | str = "interleaved",
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Both CFG branches' velocities at the SAME ``x_t`` and their flow target ->
        (v_pos, v_uncond, u_t), each (B, T, A) float32, with grad (the training pass).

        shared_prefix=True: the VLM prefix runs once; its keys/values (with grad) are repeated
        for a 2B-row suffix batch [is_positive=1 rows; is_positive=0 rows], so gradients reach the
        prefix through one graph. shared_prefix=False: two full joint passes (the reference way),
        kept as the correctness baseline. shared_prefix="interleaved": one prefix pass too, but the
        two branches' suffixes are folded into the query length of a B-row expert pass (no
        repeated prefix keys/values) that runs layer by layer between the VLM layers (the expert's
        small kernels then overlap the VLM's large ones as in the joint pass); same maths.
        """
        noise, time = self._noise_and_time(actions, noise, time)
        x_t, u_t = _interpolate(actions, noise, time)
        batch = actions.shape[0]
        if shared_prefix == "interleaved":
            v_both = self._cfg_velocities_interleaved(images, img_masks, lang_tokens, lang_masks, state, x_t, time)
            return v_both[:batch], v_both[batch:], u_t
        if shared_prefix not in (True, False):
            raise ValueError(f"shared_prefix must be True, False or 'interleaved', got {shared_prefix!r}.")
        if not shared_prefix:
            inputs = (images, img_masks, lang_tokens, lang_masks, state, x_t, time)
            return self.predict_velocity(*inputs, is_positive=1), self.predict_velocity(*inputs, is_positive=0), u_t
        cache = self.build_prefix_cache(images, img_masks, lang_tokens, lang_masks).repeat_batch(2)
        v_both = self.denoise_step(
            cache, state.repeat(2, 1), x_t.repeat(2, 1, 1), time.repeat(2), _two_branch_ids(batch, x_t.device)
        )  # (2B, T, A)
        return v_both[:batch], v_both[batch:], u_t

    def _cfg_velocities_interleaved(self, images, img_masks, lang_tokens, lang_masks, state, x_t, time
                                    ) -> torch.Tensor:
        """Both CFG branches' velocities -> (2B, T, A) float32, rows [is_positive=1; is_positive=0].

        One VLM prefix pass; the two branches' suffixes folded into the query length of ONE
        B-row expert pass (prefix keys/values read once per row, not repeated for 2B rows),
        interleaved layer by layer with the prefix (`forward_prefix_suffix_interleaved`)."""
        batch = x_t.shape[0]
        pwe = self.paligemma_with_expert
        prefix_embs, prefix_pad, prefix_att = self.embed_prefix(images, img_masks, lang_tokens, lang_masks)
        prefix_mask = make_att_2d_masks(prefix_pad, prefix_att)  # (B, Lp, Lp)
        prefix_positions = torch.cumsum(prefix_pad.to(torch.int64), dim=1) - 1  # (B, Lp)
        suffix_embs, _, _ = self.embed_suffix(
            state.repeat(2, 1), x_t.repeat(2, 1, 1), time.repeat(2), _two_branch_ids(batch, x_t.device))  # (2B, Ls, W)
        suffix_len, width = suffix_embs.shape[1:]
        folded = suffix_embs.view(2, batch, suffix_len, width).transpose(0, 1).reshape(batch, 2 * suffix_len, width)
        suffix_mask, suffix_positions = self.suffix_mask_and_positions(prefix_pad, branches=2)
        modulation = None
        if self.config.cond_layer_modulation:
            # Folded rows are [branch 1 tokens | branch 0 tokens] (see `folded` above).
            token_branch = torch.cat([torch.ones(batch, suffix_len, dtype=torch.int64, device=x_t.device),
                                      torch.zeros(batch, suffix_len, dtype=torch.int64, device=x_t.device)], dim=1)
            modulation = self._layer_modulation(token_branch)  # (B, 2Ls) branch ids
        suffix_out = pwe.forward_prefix_suffix_interleaved(
            prefix_embs, prefix_mask, prefix_positions, folded, suffix_mask, suffix_positions,
            suffix_modulation=modulation)  # (B, 2Ls, W)
        suffix_out = suffix_out.view(batch, 2, suffix_len, width).transpose(0, 1).reshape(2 * batch, suffix_len, width)
        return self._velocity_head(suffix_out)  # (2B, T, A)

    def _noise_and_time(self, actions, noise, time) -> tuple[torch.Tensor, torch.Tensor]:
        """Given or drawn flow noise (B, T, A) and time (B,); shapes checked (no silent broadcast)."""
        batch = actions.shape[0]
        if noise is None:
            noise = self.sample_noise(actions.shape, actions.device)
        if time is None:
            time = self.sample_time(batch, actions.device)
        if noise.shape != actions.shape:
            raise ValueError(f"noise must have the padded action shape {tuple(actions.shape)}, got {tuple(noise.shape)}.")
        if time.shape != (batch,):
            raise ValueError(f"time must have shape ({batch},), got {tuple(time.shape)}.")
        return noise.to(torch.float32), time.to(torch.float32)

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample_actions(
        self, images, img_masks, lang_tokens, lang_masks, state,
        noise: torch.Tensor | None = None, cfg_scale: float = 1.0,
    ) -> torch.Tensor:
        """Euler integration from noise (t=1) to actions (t=0) -> (B, T, A) float32.

        One prefix KV cache is computed and reused by every step. cfg_scale == 1: only the
        conditional branch (is_positive=1) runs. Otherwise both branches run as one 2B batch
        against the (repeated) cache and v = v_uncond + s * (v_cond - v_uncond).
        The given noise tensor is not modified.

        With `noise` given the call is CUDA-graph capturable: fixed shapes, no host sync, no
        data-dependent Python branches (the step count and times come from `euler_times` on the
        host; attention masks/RoPE are built once per call, not per step).
        """
        batch = state.shape[0]
        chunk_shape = (batch, self.config.chunk_size, self.config.max_action_dim)
        if noise is None:
            noise = self.sample_noise(chunk_shape, state.device)
        if tuple(noise.shape) != chunk_shape:
            raise ValueError(f"noise must have shape {chunk_shape} (B, chunk_size, max_action_dim), got {tuple(noise.shape)}.")
        cache = self._sampler_prefix(images, img_masks, lang_tokens, lang_masks)
        guided = float(cfg_scale) != 1.0
        branch_ids: BranchIds = 1
        if guided:
            cache, state = cache.repeat_batch(2), state.repeat(2, 1)
            branch_ids = _two_branch_ids(batch, state.device)
        plan = self.suffix_attention_plan(cache)
        # A Python float multiplies in float32 exactly like the reference's float32 dt tensor.
        dt = float(torch.tensor(-1.0 / self.config.num_steps, dtype=torch.float32))
        x_t = noise.to(torch.float32)
        for time in euler_times(self.config.num_steps):
            # torch.full is a device fill (capturable); time.to(device) would be a host copy.
            time = torch.full((), float(time), dtype=torch.float32, device=state.device)
            x_t = self._sampler_step(cache, state, x_t, time, branch_ids, plan, float(cfg_scale), dt)
        return x_t

    def _sampler_prefix(self, images, img_masks, lang_tokens, lang_masks) -> PrefixKVCache:
        """build_prefix_cache, or its compiled version after `compile_sampler`."""
        compiled = self.__dict__.get("_compiled_prefix")
        if compiled is None:
            return self.build_prefix_cache(images, img_masks, lang_tokens, lang_masks)
        keys, values, pad_masks = compiled(images, img_masks, lang_tokens, lang_masks)
        return PrefixKVCache(key_states=list(keys), value_states=list(values), pad_masks=pad_masks)

    def _sampler_step(self, cache, state, x_t, time, branch_ids, plan, cfg_scale, dt) -> torch.Tensor:
        compiled = self.__dict__.get("_compiled_step")
        step = self.euler_step if compiled is None else compiled
        return step(cache, state, x_t, time, branch_ids, plan, cfg_scale, dt)

    def euler_step(
        self, cache: PrefixKVCache, state: torch.Tensor, x_t: torch.Tensor, time: torch.Tensor,
        branch_ids: BranchIds, plan: AttentionPlan, cfg_scale: float, dt: float,
    ) -> torch.Tensor:
        """One guided Euler step: x_t (B, T, A) -> x_t + dt * v. With cfg_scale != 1 the cache,
        state, branch_ids and plan hold 2B rows [conditional; unconditional]."""
        if float(cfg_scale) != 1.0:
            v_cond, v_uncond = self.denoise_step(cache, state, x_t.repeat(2, 1, 1), time, branch_ids, plan).chunk(2)
            v_t = v_uncond + cfg_scale * (v_cond - v_uncond)  # (B, T, A)
        else:
            v_t = self.denoise_step(cache, state, x_t, time, is_positive=1, plan=plan)  # (B, T, A)
        return x_t + dt * v_t

    def _prefix_tensors(self, images, img_masks, lang_tokens, lang_masks):
        """build_prefix_cache as plain tensors (tuples), the form torch.compile returns best."""
        cache = self.build_prefix_cache(images, img_masks, lang_tokens, lang_masks)
        return tuple(cache.key_states), tuple(cache.value_states), cache.pad_masks

    def compile_sampler(self, enabled: bool = True, **compile_kwargs: Any) -> None:
        """torch.compile the sampler's two pieces (prefix pass, Euler step) or undo it.

        The pieces are compiled separately so that the 10 identical Euler steps share one
        compiled graph (compiling the whole unrolled loop would take ~10x longer). Default
        `dynamic=False`: each (batch, branches) shape gets its own specialised graph.
        """
        if not enabled:
            self.__dict__.pop("_compiled_prefix", None)
            self.__dict__.pop("_compiled_step", None)
            return
        compile_kwargs.setdefault("dynamic", False)
        # Stored in __dict__ (not as submodules) so state_dict and .to() are unaffected.
        self.__dict__["_compiled_prefix"] = torch.compile(self._prefix_tensors, **compile_kwargs)
        self.__dict__["_compiled_step"] = torch.compile(self.euler_step, **compile_kwargs)


class CUDAGraphSampler:
    """Replays `PI0FlowMatching.sample_actions` from CUDA graphs, one per (input shapes, cfg_scale).

    A denoise step at batch 1 is ~0.1 GFLOP per layer: in eager mode its time is kernel launch
    and Python overhead. The first call for a key warms up on a side stream and captures the
    whole sample (prefix pass + all Euler steps); later calls copy the inputs into the captured
    static buffers and replay. Weights are read in place, so optimiser updates and
    `load_state_dict` are seen; moving the model to another device or dtype needs `reset()`.
    Works equally on top of `compile_sampler()` (its warm-up runs compile before the capture).
    """

    def __init__(self, model: PI0FlowMatching, warmup_runs: int = 2):
        self.model = model
        self.warmup_runs = warmup_runs
        self._graphs: dict[tuple, tuple[Any, list[torch.Tensor], torch.Tensor]] = {}

    def reset(self) -> None:
        self._graphs.clear()

    @torch.no_grad()
    def __call__(self, images, img_masks, lang_tokens, lang_masks, state, noise, cfg_scale: float = 1.0):
        inputs = (images, img_masks, lang_tokens, lang_masks, state, noise)
        key = tuple((tuple(t.shape), t.dtype) for t in inputs) + (float(cfg_scale),)
        if key not in self._graphs:
            self._graphs[key] = self._capture(inputs, float(cfg_scale))
        graph, static_inputs, output = self._graphs[key]
        for buffer, value in zip(static_inputs, inputs):
            buffer.copy_(value, non_blocking=True)
        graph.replay()
        return output.clone()  # the static output is overwritten by the next replay

    def _capture(self, inputs, cfg_scale: float):
        device = self.model.state_proj.weight.device
        static_inputs = [t.to(device).clone() for t in inputs]  # (same shapes as the inputs)
        run = lambda: self.model.sample_actions(*static_inputs[:5], noise=static_inputs[5], cfg_scale=cfg_scale)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # warm-up (and any compilation) off the capture
            for _ in range(self.warmup_runs):
                run()
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            output = run()  # (B, T, A)
        return graph, static_inputs, output


def _interpolate(actions, noise, time) -> tuple[torch.Tensor, torch.Tensor]:
    """x_t = t*noise + (1-t)*actions, u_t = noise - actions; all (B, T, A) float32."""
    actions = actions.to(torch.float32)
    time_expanded = time[:, None, None]  # (B, 1, 1)
    x_t = time_expanded * noise + (1 - time_expanded) * actions
    return x_t, noise - actions


def _branch_ids(is_positive: BranchIds, batch: int, device: torch.device) -> torch.Tensor:
    """CFG branch ids as int64 (B,): accepts a Python bool/int or a (B,) / 0-dim tensor."""
    if isinstance(is_positive, torch.Tensor):
        ids = is_positive.to(device=device, dtype=torch.int64)
        return ids.expand(batch) if ids.dim() == 0 else ids
    if int(is_positive) not in (0, 1):
        raise ValueError(f"is_positive must be 0 (unconditional) or 1 (conditional), got {is_positive!r}.")
    return torch.full((batch,), int(is_positive), dtype=torch.int64, device=device)


def _two_branch_ids(batch: int, device: torch.device) -> torch.Tensor:
    """[1]*B + [0]*B: conditional rows first, unconditional rows second. (2B,)

    Built on the device (no host-to-device copy, so CUDA-graph capturable)."""
    return (torch.arange(2 * batch, device=device) < batch).to(torch.int64)


# ============================================================================ policy wrapper


def resize_with_pad(images: torch.Tensor, width: int, height: int, pad_value: float = -1.0) -> torch.Tensor:
    """Aspect-preserving resize then pad on the LEFT and TOP only (the reference's convention).

    images (B, C, H, W) float -> (B, C, height, width). ratio = max(W/width, H/height); the new size
    is (int(H/ratio), int(W/ratio)) with Python float division; bilinear, align_corners=False,
    no antialias.
    """
    cur_height, cur_width = images.shape[-2:]
    ratio = max(cur_width / width, cur_height / height)
    resized_height, resized_width = int(cur_height / ratio), int(cur_width / ratio)
    resized = F.interpolate(images, size=(resized_height, resized_width), mode="bilinear", align_corners=False)
    pad_height, pad_width = max(0, height - resized_height), max(0, width - resized_width)
    return F.pad(resized, (pad_width, 0, pad_height, 0), value=pad_value)  # (B, C, height, width)


class PI0Policy(nn.Module):
    """Observation batches -> PI0 inputs; training losses and action chunks.

    Batch keys (numpy arrays or torch tensors):
      "image.<slot>": uint8 (B, 3, H, W) channel-first RGB, slot in config.image_slots (>= 1 present)
      "state": float (B, state_dim <= max_state_dim)
      "prompt": list[str] of length B   or   "lang_tokens" int (B, L) + "lang_masks" bool (B, L)
      "action": float (B, chunk_size, action_dim <= max_action_dim)        (training only)
      "action_is_pad": bool (B, chunk_size), optional; "noise" (B, T, A), "time" (B,), optional
    """

    def __init__(self, config: PI0Config, tokenizer: Any | None = None):
        super().__init__()
        self.config = config
        self.model = PI0FlowMatching(config)
        if tokenizer is None and config.tokenizer_path is not None:
            from .tokenizer import load_tokenizer

            tokenizer = load_tokenizer(config.tokenizer_path)
        self.tokenizer = tokenizer
        # Camera slots absent from a batch's keys are masked out for every row: drop them before
        # the model instead of running SigLIP on a -1 image and carrying its tokens as padding
        # through all VLM layers (2 of 3 cameras: prefix 816 -> 560 tokens). Same outputs: masked
        # keys get exactly zero attention weight and pads do not advance positions (tested).
        self.drop_missing_cameras = True
        # forward(branches="cfg") layout: True = prefix pass then a 2B-row expert pass;
        # "interleaved" = branches folded into one B-row expert pass run between the VLM layers.
        self.cfg_shared_prefix: bool | str = "interleaved"
        if tokenizer is not None and len(tokenizer) > config.vlm.vocab_size:
            raise ValueError(
                f"Tokenizer has {len(tokenizer)} tokens but vlm.vocab_size={config.vlm.vocab_size}; "
                "raise vlm.vocab_size or use the matching tokenizer."
            )

    @property
    def device(self) -> torch.device:
        return self.model.state_proj.weight.device

    # ------------------------------------------------------------------ input preparation
    def prepare_images(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (images float32 (B, n_slots, 3, H, W) in [-1, 1], img_masks bool (B, n_slots)).

        Present cameras come first in slot order, then one -1 image (mask False) per missing slot,
        as the reference stacks them.
        """
        slots = self.config.image_slots
        image_keys = [key for key in batch if key.startswith("image.")]
        unknown = sorted(set(image_keys) - {f"image.{slot}" for slot in slots})
        if unknown:
            raise ValueError(f"Unknown camera keys {unknown}; valid keys: {[f'image.{s}' for s in slots]}.")
        present = [slot for slot in slots if f"image.{slot}" in batch]
        if not present:
            raise ValueError(f"No camera image in batch: provide at least one of {[f'image.{s}' for s in slots]}.")
        width, height = self.config.resize_imgs_with_padding
        images, masks = [], []
        batch_size = None
        for slot in present:
            image = self._validated_image(batch[f"image.{slot}"], f"image.{slot}", batch_size)
            batch_size = image.shape[0]
            image = image.to(torch.float32) / 127.5 - 1.0  # (B, 3, H, W) in [-1, 1]
            images.append(resize_with_pad(image, width, height, pad_value=-1.0))  # (B, 3, height, width)
            masks.append(torch.ones(batch_size, dtype=torch.bool, device=self.device))
        for _ in range(len(slots) - len(present)):
            images.append(torch.full_like(images[0], -1.0))
            masks.append(torch.zeros(batch_size, dtype=torch.bool, device=self.device))
        return torch.stack(images, dim=1), torch.stack(masks, dim=1)  # (B, n, 3, h, w), (B, n)

    def _validated_image(self, value: Any, key: str, batch_size: int | None) -> torch.Tensor:
        image = _to_tensor(value, key).to(self.device)
        if image.dtype != torch.uint8:
            raise ValueError(f"{key} must be uint8 RGB in [0, 255], got dtype {image.dtype}; pass raw camera bytes.")
        if image.dim() != 4 or image.shape[1] != 3:
            looks_channel_last = image.dim() == 4 and image.shape[-1] == 3
            hint = " It looks channel-last (B, H, W, 3); permute to (B, 3, H, W)." if looks_channel_last else ""
            raise ValueError(f"{key} must have shape (B, 3, H, W), got {tuple(image.shape)}.{hint}")
        if batch_size is not None and image.shape[0] != batch_size:
            raise ValueError(f"{key} has batch size {image.shape[0]}, other cameras have {batch_size}.")
        return image

    def prepare_state(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """batch["state"] (B, D) -> float32 (B, max_state_dim), zero-padded."""
        state = _to_tensor(_required(batch, "state"), "state").to(self.device, torch.float32)
        if state.dim() != 2:
            raise ValueError(f"state must have shape (B, state_dim), got {tuple(state.shape)}.")
        if state.shape[1] > self.config.max_state_dim:
            raise ValueError(
                f"state has {state.shape[1]} dims, wider than max_state_dim={self.config.max_state_dim}."
            )
        if not torch.isfinite(state).all():
            raise ValueError("state contains NaN or inf values; check normalisation statistics.")
        return F.pad(state, (0, self.config.max_state_dim - state.shape[1]))  # (B, S)

    def prepare_action(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, int]:
        """batch["action"] (B, T, A_raw) -> (float32 (B, T, max_action_dim) zero-padded, A_raw)."""
        actions = _to_tensor(_required(batch, "action"), "action").to(self.device, torch.float32)
        expected = f"(B, chunk_size={self.config.chunk_size}, action_dim<={self.config.max_action_dim})"
        if actions.dim() != 3 or actions.shape[1] != self.config.chunk_size:
            raise ValueError(f"action must have shape {expected}, got {tuple(actions.shape)}.")
        if actions.shape[2] > self.config.max_action_dim:
            raise ValueError(f"action must have shape {expected}, got {tuple(actions.shape)}.")
        return F.pad(actions, (0, self.config.max_action_dim - actions.shape[2])), actions.shape[2]

    def prepare_language(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (lang_tokens int64 (B, L), lang_masks bool (B, L)), L = tokenizer_max_length for prompts.

        Uses batch["lang_tokens"]/["lang_masks"] when given, else tokenises batch["prompt"]
        as <bos> + task + "\\n", right-padded.
        """
        if "lang_tokens" in batch:
            tokens = _to_tensor(batch["lang_tokens"], "lang_tokens").to(self.device, torch.int64)
            masks = _to_tensor(_required(batch, "lang_masks"), "lang_masks").to(self.device, torch.bool)
            if tokens.dim() != 2 or masks.shape != tokens.shape:
                raise ValueError(
                    f"lang_tokens/lang_masks must both be (B, L), got {tuple(tokens.shape)} / {tuple(masks.shape)}."
                )
            return tokens, masks
        prompts = _required(batch, "prompt")
        if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
            raise ValueError("prompt must be a list of strings, one per batch row.")
        if self.tokenizer is None:
            raise ValueError(
                "batch has prompts but the policy has no tokenizer: pass `tokenizer_path` pointing at "
                "PaliGemma's tokenizer dir (or pre-tokenised lang_tokens/lang_masks)."
            )
        from .tokenizer import tokenize_prompts

        tokens, masks = tokenize_prompts(self.tokenizer, list(prompts), self.config.tokenizer_max_length)
        return tokens.to(self.device), masks.to(self.device)

    def _prepare_observation(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, ...]:
        images, img_masks = self.prepare_images(batch)
        if self.drop_missing_cameras:  # present slots come first (prepare_images); decided on the host
            present = sum(f"image.{slot}" in batch for slot in self.config.image_slots)
            images, img_masks = images[:, :present], img_masks[:, :present]  # (B, n_present, ...)
        state = self.prepare_state(batch)
        lang_tokens, lang_masks = self.prepare_language(batch)
        batch_size = state.shape[0]
        if images.shape[0] != batch_size:
            raise ValueError(f"camera images have batch size {images.shape[0]} but state has {batch_size} rows.")
        if lang_tokens.shape[0] != batch_size:
            source = "prompt list has" if "lang_tokens" not in batch else "lang_tokens have"
            raise ValueError(f"{source} {lang_tokens.shape[0]} entries but state has {batch_size} rows.")
        return images, img_masks, lang_tokens, lang_masks, state

    # ------------------------------------------------------------------ training / inference
    def forward(
        self, batch: Mapping[str, Any], noise: torch.Tensor | None = None, time: torch.Tensor | None = None,
        is_positive: BranchIds | None = None, branches: str = "single",
    ) -> dict[str, torch.Tensor]:
        """Flow-matching losses for a training batch.

        branches="single": {"loss": scalar, "losses": (B, T, A_raw)} for one CFG branch
            (is_positive, default 1). Padded steps (action_is_pad) are zeroed and still counted
            in the mean, as the reference does.
        branches="cfg": {"losses_pos": (B, T, A_raw), "losses_uncond": (B, T, A_raw)} of both
            branches with the same noise/time and one shared VLM prefix pass; padded steps zeroed;
            and the branches' velocities ("velocities_pos", "velocities_uncond", same shape, grad).
        noise (B, T, max_action_dim) / time (B,) come from the arguments, else batch["noise"] /
        batch["time"], else are drawn (standard normal / 0.001 + 0.999 Beta(1.5, 1)).
        """
        if branches not in ("single", "cfg"):
            raise ValueError(f"branches must be 'single' or 'cfg', got {branches!r}.")
        if branches == "cfg" and is_positive is not None:
            raise ValueError("is_positive selects one branch; branches='cfg' always computes both (pass None).")
        images, img_masks, lang_tokens, lang_masks, state = self._prepare_observation(batch)
        actions, action_dim = self.prepare_action(batch)
        noise = self._optional_tensor(noise if noise is not None else batch.get("noise"), "noise", torch.float32)
        time = self._optional_tensor(time if time is not None else batch.get("time"), "time", torch.float32)
        keep = self._kept_steps(batch, actions)  # (B, T, 1)
        inputs = (images, img_masks, lang_tokens, lang_masks, state, actions)
        if branches == "cfg":
            v_pos, v_uncond, u_t = self.model.cfg_branch_velocities(*inputs, noise=noise, time=time,
                                                                    shared_prefix=self.cfg_shared_prefix)
            return {
                "losses_pos": (F.mse_loss(u_t, v_pos, reduction="none") * keep)[..., :action_dim],  # (B, T, A_raw)
                "losses_uncond": (F.mse_loss(u_t, v_uncond, reduction="none") * keep)[..., :action_dim],
                # With grad, for terms on the outputs themselves (the optimizer's output anchor).
                "velocities_pos": (v_pos * keep)[..., :action_dim],  # (B, T, A_raw)
                "velocities_uncond": (v_uncond * keep)[..., :action_dim],
            }
        branch = 1 if is_positive is None else is_positive
        losses = self.model(*inputs, noise=noise, time=time, is_positive=branch)  # (B, T, A)
        losses = (losses * keep)[..., :action_dim]  # (B, T, A_raw)
        return {"loss": losses.mean(), "losses": losses}

    @torch.no_grad()
    def cfg_velocities(
        self, batch: Mapping[str, Any], noise: torch.Tensor | None = None, time: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Velocities of both CFG branches at the same ``x_t`` -> (v_pos, v_uncond), each
        (B, T, A_raw) float32 (a diagnostic: how far apart the branches are; no gradient)."""
        images, img_masks, lang_tokens, lang_masks, state = self._prepare_observation(batch)
        actions, action_dim = self.prepare_action(batch)
        noise = self._optional_tensor(noise if noise is not None else batch.get("noise"), "noise", torch.float32)
        time = self._optional_tensor(time if time is not None else batch.get("time"), "time", torch.float32)
        noise, time = self.model._noise_and_time(actions, noise, time)
        x_t, _ = _interpolate(actions, noise, time)
        inputs = (images, img_masks, lang_tokens, lang_masks, state, x_t, time)
        v_pos = self.model.predict_velocity(*inputs, is_positive=1)  # (B, T, A)
        v_uncond = self.model.predict_velocity(*inputs, is_positive=0)  # (B, T, A)
        return v_pos[..., :action_dim], v_uncond[..., :action_dim]

    @torch.no_grad()
    def select_action(
        self, batch: Mapping[str, Any], cfg_scale: float = 1.0, noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Sample an action chunk -> float32 (B, n_action_steps, max_action_dim) (model space,
        padded dims included; the caller slices to its action_dim)."""
        images, img_masks, lang_tokens, lang_masks, state = self._prepare_observation(batch)
        noise = self._optional_tensor(noise if noise is not None else batch.get("noise"), "noise", torch.float32)
        graphed = self.__dict__.get("_graph_sampler")
        if graphed is not None and self.device.type == "cuda":
            if noise is None:  # drawn outside the graph: a captured randn would replay one stream
                chunk_shape = (state.shape[0], self.config.chunk_size, self.config.max_action_dim)
                noise = self.model.sample_noise(chunk_shape, self.device)
            actions = graphed(images, img_masks, lang_tokens, lang_masks, state, noise, cfg_scale)  # (B, T, A)
        else:
            actions = self.model.sample_actions(
                images, img_masks, lang_tokens, lang_masks, state, noise=noise, cfg_scale=cfg_scale
            )  # (B, T, A)
        return actions[:, : self.config.n_action_steps]

    def compile_sampler(self, mode: str = "cuda_graph", **compile_kwargs: Any) -> None:
        """Pick how `select_action` runs the sampler (same numbers, less overhead).

        mode: "eager" (undo), "compile" (torch.compile of the prefix pass and the Euler step),
        "cuda_graph" (capture/replay the whole sample per input shape and cfg_scale; CUDA only,
        eager elsewhere), "compile+cuda_graph" (both). Graphs are captured lazily on the first
        call of each shape; call again after moving the policy to another device or dtype.
        """
        if mode not in _SAMPLER_MODES:
            raise ValueError(f"compile_sampler mode must be one of {_SAMPLER_MODES}, got {mode!r}.")
        already_compiled = "_compiled_step" in self.model.__dict__
        if "compile" not in mode or not already_compiled or compile_kwargs:
            # Keep existing compiled pieces (and their compiled graphs) when only graphs change.
            self.model.compile_sampler("compile" in mode, **compile_kwargs)
        self.__dict__["_graph_sampler"] = CUDAGraphSampler(self.model) if "cuda_graph" in mode else None

    @property
    def sampler_mode(self) -> str:
        compiled = "_compiled_step" in self.model.__dict__
        graphed = self.__dict__.get("_graph_sampler") is not None
        return {(False, False): "eager", (True, False): "compile", (False, True): "cuda_graph",
                (True, True): "compile+cuda_graph"}[(compiled, graphed)]

    def _optional_tensor(self, value: Any, name: str, dtype: torch.dtype) -> torch.Tensor | None:
        return None if value is None else _to_tensor(value, name).to(self.device, dtype)

    def _kept_steps(self, batch: Mapping[str, Any], actions: torch.Tensor) -> torch.Tensor:
        """(B, T, 1) float mask: 0 for padded action steps (batch["action_is_pad"]), else 1."""
        if batch.get("action_is_pad") is None:
            return torch.ones(actions.shape[:2] + (1,), dtype=torch.float32, device=actions.device)
        is_pad = _to_tensor(batch["action_is_pad"], "action_is_pad").to(self.device, torch.bool)
        if is_pad.shape != actions.shape[:2]:
            raise ValueError(f"action_is_pad must have shape {tuple(actions.shape[:2])}, got {tuple(is_pad.shape)}.")
        return (~is_pad).to(torch.float32)[..., None]


_SAMPLER_MODES = ("eager", "compile", "cuda_graph", "compile+cuda_graph")


def _required(batch: Mapping[str, Any], key: str) -> Any:
    if key not in batch or batch[key] is None:
        raise ValueError(f"batch is missing {key!r}; keys present: {sorted(batch)}.")
    return batch[key]


def _to_tensor(value: Any, name: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    raise ValueError(f"{name} must be a torch.Tensor or numpy array, got {type(value).__name__}.")
