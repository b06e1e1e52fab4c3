"""PaliGemma (SigLIP + Gemma VLM) and the Gemma action expert, run layer by layer with joint attention.

Module tree (transformers 5.x names; `checkpoint.py` maps the reference 4.48 names onto it)::

    paligemma      PaliGemmaForConditionalGeneration
        .model.vision_tower          SiglipVisionModel
        .model.multi_modal_projector linear SigLIP width -> VLM width
        .model.language_model        GemmaModel (its embed_tokens, layers, norm are used)
        .lm_head                     tied to embed_tokens (unused, kept for the checkpoint layout)
    gemma_expert   ._ExpertContainer
        .model                       GemmaModel without embed_tokens (layers, norm)

The expert's language-model head of the reference (vocab x expert width, ~263M parameters at full
size) is never used by PI0, so it is not instantiated; the loader reports it as ignored.

Only the transformers *building blocks* are used (RMSNorm, q/k/v/o projections, GeGLU MLP,
SigLIP). The joint forward, RoPE, masking and KV cache are written here:

* Each layer: every present stream normalises its hidden states and projects q/k/v with its
  own weights; RoPE is applied; attention runs over the concatenated sequence (optionally
  preceded by cached prefix keys/values); each stream applies its own o_proj, residual,
  post-attention norm, MLP and residual.
* Stream 0 is the VLM (prefix tokens), stream 1 the expert (suffix tokens).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import GemmaConfig, PaliGemmaConfig, PaliGemmaForConditionalGeneration
from transformers.models.gemma.modeling_gemma import GemmaModel

from .configuration_pi0 import GemmaStreamConfig, PI0Config

# Finite "minus infinity" of the reference: a query row with nothing to attend to then gets a
# uniform softmax (finite garbage that never reaches a valid token) instead of NaN.
MASKED_LOGIT = -2.3819763e38
# (layer_idx, expert hidden (B, Ls, W)) -> modulated hidden: the per-layer CFG condition hook.
SuffixModulation = Callable[[int, torch.Tensor], torch.Tensor]
ROPE_BASE = 10_000.0  # the reference hard-codes this; the Gemma config's rope_theta is not read


@dataclass
class PrefixKVCache:
    """Per-layer prefix keys (after RoPE) and values, computed once and reused.

    key_states[l], value_states[l]: (B, prefix_len, num_kv_heads, head_dim)
    pad_masks: (B, prefix_len) bool, True for real prefix tokens.
    """

    key_states: list[torch.Tensor]
    value_states: list[torch.Tensor]
    pad_masks: torch.Tensor

    @property
    def batch_size(self) -> int:
        return self.pad_masks.shape[0]

    def repeat_batch(self, times: int) -> "PrefixKVCache":
        """Stack `times` copies along the batch (copy i serves rows [i*B, (i+1)*B)).

        Gradients of every copy flow back into the one prefix computation.
        """
        return PrefixKVCache(
            key_states=[k.repeat(times, 1, 1, 1) for k in self.key_states],  # (times*B, Lp, KV, D)
            value_states=[v.repeat(times, 1, 1, 1) for v in self.value_states],
            pad_masks=self.pad_masks.repeat(times, 1),  # (times*B, Lp)
        )


def make_att_2d_masks(pad_masks: torch.Tensor, att_masks: torch.Tensor) -> torch.Tensor:
    """2-D attention mask from a pad mask and a 1-D "starts a new causal block" flag.

    c = cumsum(att); query i may attend key j iff c[j] <= c[i] and both are real tokens.
    pad_masks, att_masks: (B, L) bool -> (B, L, L) bool.
    """
    cumulative = torch.cumsum(att_masks.to(torch.int64), dim=1)  # (B, L)
    block_visible = cumulative[:, None, :] <= cumulative[:, :, None]  # (B, L, L)
    both_real = pad_masks[:, None, :] & pad_masks[:, :, None]  # (B, L, L)
    return block_visible & both_real


def rope_tables(position_ids: torch.Tensor, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin of the half-split rotary embedding (base 10000), float32.

    position_ids: (B, L) int -> (cos, sin), each (B, L, 1, D/2). Computed once per forward and
    shared by every layer (the angles depend only on positions, not on the layer).
    """
    half = head_dim // 2
    exponents = torch.arange(half, dtype=torch.float32, device=position_ids.device) * (2.0 / head_dim)  # (D/2,)
    timescale = ROPE_BASE**exponents  # (D/2,)
    radians = position_ids.to(torch.float32)[..., None] / timescale  # (B, L, D/2)
    return torch.cos(radians)[..., None, :], torch.sin(radians)[..., None, :]  # (B, L, 1, D/2) each


def apply_rope_tables(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (B, L, H, D) with precomputed tables (B, L, 1, D/2); float32 maths, x's dtype out."""
    half = x.shape[-1] // 2
    first, second = x.to(torch.float32).split(half, dim=-1)  # (B, L, H, D/2) each
    rotated = torch.cat([first * cos - second * sin, second * cos + first * sin], dim=-1)  # (B, L, H, D)
    return rotated.to(x.dtype)


def apply_rope(x: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
    """Half-split rotary embedding with base 10000, computed in float32.

    x: (B, L, H, D); position_ids: (B, L) int. Dimension i < D/2 pairs with i + D/2.
    """
    cos, sin = rope_tables(position_ids, x.shape[-1])
    return apply_rope_tables(x, cos, sin)


def _expand_kv_heads(states: torch.Tensor, groups: int) -> torch.Tensor:
    """(B, L, KV, D) -> (B, L, KV * groups, D), head h reading KV head h // groups.

    Same values as repeat_interleave(groups, dim=2), written as expand + reshape because a scalar
    repeat_interleave may synchronise with the device (it breaks CUDA-graph capture)."""
    if groups == 1:
        return states
    batch, length, kv_heads, head_dim = states.shape
    return states[:, :, :, None, :].expand(batch, length, kv_heads, groups, head_dim).reshape(
        batch, length, kv_heads * groups, head_dim)


def joint_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor, implementation: str
) -> torch.Tensor:
    """Masked multi-head attention with grouped KV heads.

    query: (B, Lq, H, D); key/value: (B, Lk, KV, D); mask: (B, Lq, Lk) bool -> (B, Lq, H * D).
    KV heads are repeated so that query head h uses KV head h // (H / KV). Logits are scaled by
    D^-0.5 after QK^T; eager computes logits and softmax in float32.
    """
    batch, q_len, num_heads, head_dim = query.shape
    groups = num_heads // key.shape[2]
    key = _expand_kv_heads(key, groups)  # (B, Lk, H, D)
    value = _expand_kv_heads(value, groups)  # (B, Lk, H, D)
    if implementation == "eager":
        logits = torch.einsum("bqhd,bkhd->bhqk", query.float(), key.float()) * head_dim**-0.5  # (B, H, Lq, Lk)
        logits = torch.where(mask[:, None], logits, MASKED_LOGIT)
        probs = torch.softmax(logits, dim=-1).to(value.dtype)
        output = torch.einsum("bhqk,bkhd->bqhd", probs, value)  # (B, Lq, H, D)
    else:
        # A row with no visible key makes SDPA return NaN (torch 2.2) which would poison the next
        # layer's keys; let such rows (padding queries, never read) attend everything instead.
        safe_mask = mask | ~mask.any(dim=-1, keepdim=True)  # (B, Lq, Lk)
        output = F.scaled_dot_product_attention(
            query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2),
            attn_mask=safe_mask[:, None], scale=head_dim**-0.5,
        ).transpose(1, 2)  # (B, Lq, H, D)
    return output.reshape(batch, q_len, num_heads * head_dim)


@dataclass
class AttentionPlan:
    """What every layer of one forward shares, built once instead of once per layer.

    rope_cos / rope_sin: (B, Lq, 1, D/2) float32 tables for this call's tokens.
    mask: eager: the boolean mask (B, Lq, Lk) as given.
          sdpa: additive bias (B, 1, Lq * G, Lk) in the compute dtype (0 visible, -inf hidden),
          G = query heads per KV head, rows in the folded order of `_sdpa_grouped` (query-major).
    """

    implementation: str
    rope_cos: torch.Tensor
    rope_sin: torch.Tensor
    mask: torch.Tensor
    groups: int


def build_attention_plan(
    attention_mask: torch.Tensor, position_ids: torch.Tensor, head_dim: int, groups: int,
    implementation: str, dtype: torch.dtype,
) -> AttentionPlan:
    """attention_mask (B, Lq, Lk) bool, position_ids (B, Lq) -> AttentionPlan."""
    cos, sin = rope_tables(position_ids, head_dim)
    mask = attention_mask if implementation == "eager" else sdpa_grouped_bias(attention_mask, groups, dtype)
    return AttentionPlan(implementation, cos, sin, mask, groups)


def sdpa_grouped_bias(mask: torch.Tensor, groups: int, dtype: torch.dtype) -> torch.Tensor:
    """Boolean mask (B, Lq, Lk) -> additive SDPA bias (B, 1, Lq * groups, Lk).

    Rows with no visible key (padding queries, never read) are opened to every key: SDPA returns
    NaN for an all-masked row, which would poison the next layer's keys (the eager path gets a
    finite uniform row from its finite MASKED_LOGIT instead). The bias is carved out of a buffer
    whose rows are padded to a multiple of 16 elements: the memory-efficient kernel needs aligned
    bias rows and would otherwise pad (copy) the bias again in every layer.
    """
    batch, q_len, k_len = mask.shape
    safe = mask | ~mask.any(dim=-1, keepdim=True)  # (B, Lq, Lk)
    rows = safe[:, :, None, :].expand(batch, q_len, groups, k_len).reshape(batch, 1, q_len * groups, k_len)
    padded_len = -(-k_len // 16) * 16
    bias = torch.full((batch, 1, q_len * groups, padded_len), float("-inf"), dtype=dtype, device=mask.device)
    bias = bias[..., :k_len]  # (B, 1, Lq*G, Lk) view, row stride aligned
    return bias.masked_fill_(rows, 0.0)


def _sdpa_grouped(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """SDPA with the G query heads of each KV head folded into the query length.

    query (B, Lq, H, D); key/value (B, Lk, KV, D); bias (B, 1, Lq*G, Lk) -> (B, Lq, H * D).
    Each KV head's keys/values are read once for its G query heads (no repeated K/V tensors):
    head h = kv * G + g uses KV head kv, as repeat_interleave would.
    """
    batch, q_len, num_heads, head_dim = query.shape
    kv_heads = key.shape[2]
    groups = num_heads // kv_heads
    folded = query.view(batch, q_len, kv_heads, groups, head_dim).permute(0, 2, 1, 3, 4)  # (B, KV, Lq, G, D)
    folded = folded.reshape(batch, kv_heads, q_len * groups, head_dim)  # (B, KV, Lq*G, D)
    output = F.scaled_dot_product_attention(
        folded, key.transpose(1, 2), value.transpose(1, 2), attn_mask=bias, scale=head_dim**-0.5,
    )  # (B, KV, Lq*G, D)
    output = output.view(batch, kv_heads, q_len, groups, head_dim).permute(0, 2, 1, 3, 4)  # (B, Lq, KV, G, D)
    return output.reshape(batch, q_len, num_heads * head_dim)


def attend(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, plan: AttentionPlan) -> torch.Tensor:
    """joint_attention with a prebuilt plan: query (B, Lq, H, D), key/value (B, Lk, KV, D) -> (B, Lq, H*D)."""
    if plan.implementation == "eager":
        return joint_attention(query, key, value, plan.mask, "eager")
    return _sdpa_grouped(query, key, value, plan.mask)


class _ExpertContainer(nn.Module):
    """Holds the expert GemmaModel under `.model`, matching the reference `gemma_expert.model.*` keys."""

    def __init__(self, config: GemmaConfig):
        super().__init__()
        self.model = GemmaModel(config)
        self.model.embed_tokens = None  # the expert consumes suffix embeddings, never token ids


def _gemma_hf_config(stream: GemmaStreamConfig) -> GemmaConfig:
    return GemmaConfig(
        vocab_size=stream.vocab_size, hidden_size=stream.hidden_size,
        intermediate_size=stream.intermediate_size, num_hidden_layers=stream.num_hidden_layers,
        num_attention_heads=stream.num_attention_heads, num_key_value_heads=stream.num_key_value_heads,
        head_dim=stream.head_dim, hidden_act=stream.hidden_act, hidden_activation=stream.hidden_act,
        rms_norm_eps=stream.rms_norm_eps, attention_bias=False, max_position_embeddings=8192,
        pad_token_id=0, eos_token_id=1, bos_token_id=2,
    )


def _paligemma_hf_config(config: PI0Config) -> PaliGemmaConfig:
    vision = config.vision
    hf_config = PaliGemmaConfig(
        text_config=_gemma_hf_config(config.vlm).to_dict(),
        vision_config=dict(
            model_type="siglip_vision_model", hidden_size=vision.hidden_size,
            intermediate_size=vision.intermediate_size, num_hidden_layers=vision.num_hidden_layers,
            num_attention_heads=vision.num_attention_heads, patch_size=vision.patch_size,
            image_size=vision.image_size, hidden_act=vision.hidden_act, layer_norm_eps=vision.layer_norm_eps,
            num_channels=3, vision_use_head=False, projection_dim=config.vlm.hidden_size,
        ),
        projection_dim=config.vlm.hidden_size, hidden_size=config.vlm.hidden_size,
        image_token_index=config.vlm.vocab_size, vocab_size=config.vlm.vocab_size,
        pad_token_id=0, eos_token_id=1, bos_token_id=2,
    )
    hf_config.vision_config._attn_implementation = config.attention_implementation
    return hf_config


class PaliGemmaWithExpert(nn.Module):
    """SigLIP + Gemma VLM + Gemma action expert with a hand-written joint forward.

    Three entry points share one per-layer routine (`_joint_layer`):
      * `forward_joint`: prefix (VLM) and suffix (expert) together, as the reference trains.
      * `forward_prefix`: the VLM alone over the prefix, returning a `PrefixKVCache`.
      * `forward_suffix`: the expert alone over the suffix, attending cached prefix keys/values.
    Because the prefix never attends the suffix, `forward_prefix` + `forward_suffix` computes the
    same suffix outputs as `forward_joint` (to float rounding).
    """

    def __init__(self, config: PI0Config):
        super().__init__()
        self.config = config
        self.paligemma = PaliGemmaForConditionalGeneration(_paligemma_hf_config(config))
        self.gemma_expert = _ExpertContainer(_gemma_hf_config(config.expert))
        self.num_heads = config.vlm.num_attention_heads
        self.num_kv_heads = config.vlm.num_key_value_heads
        self.head_dim = config.vlm.head_dim
        self.gradient_checkpointing = config.gradient_checkpointing

    # ------------------------------------------------------------------ sub-modules
    @property
    def vision_tower(self) -> nn.Module:
        return self.paligemma.model.vision_tower

    @property
    def multi_modal_projector(self) -> nn.Module:
        return self.paligemma.model.multi_modal_projector

    @property
    def language_model(self) -> GemmaModel:
        return self.paligemma.model.language_model

    @property
    def expert_model(self) -> GemmaModel:
        return self.gemma_expert.model

    def unused_vlm_modules(self) -> list[nn.Module]:
        """VLM parts that can never influence PI0's outputs (so never receive gradients).

        The suffix reads only the prefix keys/values; the last VLM layer's query projection,
        attention output, MLP and the VLM's final norm only produce prefix hidden states that
        nothing consumes (in the reference's joint pass as well). Freezing them keeps DDP usable
        without `find_unused_parameters`.
        """
        last = self.language_model.layers[-1]
        return [last.self_attn.q_proj, last.self_attn.o_proj, last.post_attention_layernorm, last.mlp,
                self.language_model.norm]

    @property
    def dtype(self) -> torch.dtype:
        return self.language_model.layers[0].self_attn.q_proj.weight.dtype

    # ------------------------------------------------------------------ embeddings
    def embed_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values (N, 3, H, W) in [-1, 1] -> image tokens (N, P, vlm_hidden).

        transformers 5.x's SigLIP output is projected without the 1/sqrt(d) that 4.4x's
        `get_image_features` applied (and the reference undid by * sqrt(d)): net scale 1.
        """
        pixel_values = pixel_values.to(self.vision_tower.embeddings.patch_embedding.weight.dtype)
        hidden = self.vision_tower(pixel_values=pixel_values).last_hidden_state  # (N, P, vision_hidden)
        return self.multi_modal_projector(hidden)  # (N, P, vlm_hidden)

    def embed_language_tokens(self, token_ids: torch.Tensor) -> torch.Tensor:
        """token_ids (B, L) -> embeddings (B, L, vlm_hidden) scaled by sqrt(vlm_hidden).

        The scale is applied here explicitly (not by transformers' scaled embedding module) so
        it does not depend on library version; it matches the reference's `* sqrt(d)`.
        """
        weight = self.language_model.embed_tokens.weight  # (vocab, vlm_hidden)
        return F.embedding(token_ids, weight) * math.sqrt(weight.shape[-1])  # (B, L, vlm_hidden)

    # ------------------------------------------------------------------ forwards
    def attention_plan(self, attention_mask: torch.Tensor, position_ids: torch.Tensor) -> AttentionPlan:
        """Masks/RoPE tables for one forward (B, Lq, Lk) / (B, Lq): shared by all layers."""
        return build_attention_plan(
            attention_mask, position_ids, self.head_dim, self.num_heads // self.num_kv_heads,
            self.config.attention_implementation, self.dtype,
        )

    def forward_joint(
        self, prefix_embs: torch.Tensor, suffix_embs: torch.Tensor,
        attention_mask: torch.Tensor, position_ids: torch.Tensor,
        suffix_modulation: SuffixModulation | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Joint pass. prefix_embs (B, Lp, vlm_hidden), suffix_embs (B, Ls, expert_hidden),
        attention_mask (B, Lp+Ls, Lp+Ls) bool, position_ids (B, Lp+Ls)
        -> (prefix_out (B, Lp, vlm_hidden), suffix_out (B, Ls, expert_hidden)) after final norms.
        suffix_modulation(layer_idx, hidden) -> hidden: applied to the expert stream before each
        layer (the per-layer CFG condition; None = nothing)."""
        plan = self.attention_plan(attention_mask, position_ids)
        hiddens = [prefix_embs.to(self.dtype), suffix_embs.to(self.dtype)]
        for layer_idx in range(len(self.language_model.layers)):
            if suffix_modulation is not None:
                hiddens[1] = suffix_modulation(layer_idx, hiddens[1])
            hiddens, _ = self._maybe_checkpointed_layer(layer_idx, hiddens, plan, None)
        return self.language_model.norm(hiddens[0]), self.expert_model.norm(hiddens[1])

    def forward_prefix(
        self, prefix_embs: torch.Tensor, pad_masks: torch.Tensor,
        attention_mask: torch.Tensor, position_ids: torch.Tensor, return_output: bool = False,
    ) -> tuple[torch.Tensor | None, PrefixKVCache]:
        """VLM-only pass over the prefix. prefix_embs (B, Lp, vlm_hidden), pad_masks (B, Lp),
        attention_mask (B, Lp, Lp), position_ids (B, Lp) -> (prefix_out (B, Lp, vlm_hidden) or None,
        cache). Unless `return_output`, the last layer only projects keys/values: its attention
        output, MLP and the final norm would feed nothing the suffix reads."""
        plan = self.attention_plan(attention_mask, position_ids)
        hiddens: list[torch.Tensor | None] = [prefix_embs.to(self.dtype), None]
        keys, values = [], []
        num_layers = len(self.language_model.layers)
        for layer_idx in range(num_layers):
            kv_only = layer_idx == num_layers - 1 and not return_output
            hiddens, (key, value) = self._maybe_checkpointed_layer(layer_idx, hiddens, plan, None, kv_only)
            keys.append(key)  # (B, Lp, KV, D), after RoPE
            values.append(value)
        cache = PrefixKVCache(key_states=keys, value_states=values, pad_masks=pad_masks)
        prefix_out = self.language_model.norm(hiddens[0]) if return_output else None
        return prefix_out, cache

    def forward_suffix(
        self, suffix_embs: torch.Tensor, cache: PrefixKVCache,
        attention_mask: torch.Tensor, position_ids: torch.Tensor, plan: AttentionPlan | None = None,
        suffix_modulation: SuffixModulation | None = None,
    ) -> torch.Tensor:
        """Expert-only pass. suffix_embs (B, Ls, expert_hidden); attention_mask (B, Ls, Lp+Ls) over
        [cached prefix | suffix]; position_ids (B, Ls) -> suffix_out (B, Ls, expert_hidden).
        `plan` (from `attention_plan(attention_mask, position_ids)`) lets a sampler build the
        masks and RoPE tables once for all its Euler steps."""
        if plan is None:
            plan = self.attention_plan(attention_mask, position_ids)
        hiddens: list[torch.Tensor | None] = [None, suffix_embs.to(self.dtype)]
        for layer_idx in range(len(self.expert_model.layers)):
            past = (cache.key_states[layer_idx], cache.value_states[layer_idx])
            if suffix_modulation is not None:
                hiddens[1] = suffix_modulation(layer_idx, hiddens[1])
            hiddens, _ = self._maybe_checkpointed_layer(layer_idx, hiddens, plan, past)
        return self.expert_model.norm(hiddens[1])

    def forward_prefix_suffix_interleaved(
        self, prefix_embs: torch.Tensor, prefix_attention_mask: torch.Tensor, prefix_position_ids: torch.Tensor,
        suffix_embs: torch.Tensor, suffix_attention_mask: torch.Tensor, suffix_position_ids: torch.Tensor,
        suffix_modulation: SuffixModulation | None = None,
    ) -> torch.Tensor:
        """`forward_prefix` + `forward_suffix` with their layers interleaved: VLM layer l over the
        prefix, then expert layer l over the suffix against [prefix keys/values of layer l | its own].

        prefix_embs (B, Lp, vlm_hidden), prefix_attention_mask (B, Lp, Lp), prefix_position_ids
        (B, Lp); suffix_embs (B, Ls, expert_hidden), suffix_attention_mask (B, Ls, Lp + Ls),
        suffix_position_ids (B, Ls) -> suffix_out (B, Ls, expert_hidden) after the expert's norm.

        Same maths as the two sequential passes (the prefix never reads the suffix). Why: the
        expert's small kernels (forward, and backward, which autograd runs in the reverse creation
        order, i.e. interleaved too) are queued between the VLM's large ones, as in the joint pass,
        instead of forming a separate launch-bound expert pass of 18 layers forward + backward.
        Suffix rows may hold several branches folded into the length (see
        `PI0FlowMatching.suffix_mask_and_positions`): the prefix keys/values are then read once
        for all branches, never repeated.
        """
        prefix_plan = self.attention_plan(prefix_attention_mask, prefix_position_ids)
        suffix_plan = self.attention_plan(suffix_attention_mask, suffix_position_ids)
        prefix_hiddens: list[torch.Tensor | None] = [prefix_embs.to(self.dtype), None]
        suffix_hiddens: list[torch.Tensor | None] = [None, suffix_embs.to(self.dtype)]
        num_layers = len(self.language_model.layers)
        for layer_idx in range(num_layers):
            kv_only = layer_idx == num_layers - 1  # the last VLM layer feeds the suffix only its K/V
            prefix_hiddens, past = self._maybe_checkpointed_layer(layer_idx, prefix_hiddens, prefix_plan, None, kv_only)
            if suffix_modulation is not None:
                suffix_hiddens[1] = suffix_modulation(layer_idx, suffix_hiddens[1])
            suffix_hiddens, _ = self._maybe_checkpointed_layer(layer_idx, suffix_hiddens, suffix_plan, past)
        return self.expert_model.norm(suffix_hiddens[1])

    # ------------------------------------------------------------------ one joint layer
    def _maybe_checkpointed_layer(self, layer_idx, hiddens, plan, past, kv_only=False):
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(self._joint_layer, layer_idx, hiddens, plan, past, kv_only, use_reentrant=False)
        return self._joint_layer(layer_idx, hiddens, plan, past, kv_only)

    def _joint_layer(
        self, layer_idx: int, hiddens: list[torch.Tensor | None], plan: AttentionPlan,
        past: tuple[torch.Tensor, torch.Tensor] | None, kv_only: bool = False,
    ) -> tuple[list[torch.Tensor | None], tuple[torch.Tensor, torch.Tensor]]:
        layers = (self.language_model.layers[layer_idx], self.expert_model.layers[layer_idx])
        layer_fn = self.__dict__.get("_compiled_layer", joint_layer)
        return layer_fn(layers, hiddens, plan, past, kv_only, self.num_heads, self.num_kv_heads, self.head_dim)

    # ------------------------------------------------------------------ compilation
    def compile_layers(self, enabled: bool = True, **compile_kwargs) -> None:
        """torch.compile the per-layer routine and the SigLIP encoder layers, or undo it.

        Why: in eager mode the normalisations (float32 RMSNorm), RoPE, GeGLU and the residual
        adds are dozens of small memory-bound kernels per layer; a training step spends about a
        third of its GPU time in them (docs/benchmarks.md, "Round 3"). Compiling one layer (not
        the whole model) fuses them, and since every layer runs the same code on same-shaped
        weights, all 18 share one compiled graph per call pattern
        (prefix / suffix-with-cache / joint), so compiling takes seconds-to-a-minute, not the
        whole unrolled network. Works with gradient checkpointing (the checkpoint wraps the
        compiled layer). Numerics equal eager up to kernel-fusion rounding.
        """
        vision_layers = self.vision_tower.encoder.layers
        if not enabled:
            self.__dict__.pop("_compiled_layer", None)
            for layer in vision_layers:
                # nn.Module.compile() has no public undo; clearing the slot it fills restores eager.
                if hasattr(layer, "_compiled_call_impl"):
                    layer._compiled_call_impl = None
            return
        compile_kwargs.setdefault("dynamic", False)
        self.__dict__["_compiled_layer"] = torch.compile(joint_layer, **compile_kwargs)
        for layer in vision_layers:
            layer.compile(**compile_kwargs)

    @property
    def layers_compiled(self) -> bool:
        return "_compiled_layer" in self.__dict__


def joint_layer(
    layers: tuple[nn.Module, nn.Module], hiddens: list[torch.Tensor | None], plan: AttentionPlan,
    past: tuple[torch.Tensor, torch.Tensor] | None, kv_only: bool, num_heads: int, num_kv_heads: int,
    head_dim: int,
) -> tuple[list[torch.Tensor | None], tuple[torch.Tensor, torch.Tensor]]:
    """One layer over the present streams; returns new hiddens and this call's (keys, values).

    layers: (VLM decoder layer, expert decoder layer) of the same depth. kv_only: stop after the
    keys/values (hiddens returned unchanged). hiddens[s]: (B, L_s, hidden_s) or None; the query
    sequence is the concatenation of the present streams; keys are [past keys | this call's keys].
    The returned keys/values cover only this call's tokens: (B, sum L_s, KV, D), keys after RoPE.
    A free function of its modules so that one compiled graph serves every layer.
    """
    queries, keys, values, lengths = [], [], [], []
    for layer, hidden in zip(layers, hiddens):
        if hidden is None:
            continue
        batch, length = hidden.shape[:2]
        normed = layer.input_layernorm(hidden)  # (B, L_s, hidden_s)
        attn = layer.self_attn
        if not kv_only:
            queries.append(attn.q_proj(normed).view(batch, length, num_heads, head_dim))
        keys.append(attn.k_proj(normed).view(batch, length, num_kv_heads, head_dim))
        values.append(attn.v_proj(normed).view(batch, length, num_kv_heads, head_dim))
        lengths.append(length)
    # A single present stream needs no concatenation copy.
    key = apply_rope_tables(_cat(keys), plan.rope_cos, plan.rope_sin)  # (B, Lq, KV, D)
    value = _cat(values)  # (B, Lq, KV, D)
    if kv_only:
        return hiddens, (key, value)
    query = apply_rope_tables(_cat(queries), plan.rope_cos, plan.rope_sin)  # (B, Lq, H, D)
    all_keys, all_values = key, value
    if past is not None:
        all_keys = torch.cat([past[0].to(key.dtype), key], dim=1)  # (B, Lp + Lq, KV, D)
        all_values = torch.cat([past[1].to(value.dtype), value], dim=1)
    attended = attend(query, all_keys, all_values, plan)  # (B, Lq, H*D)
    attended_per_stream = iter(attended.split(lengths, dim=1))  # (B, L_s, H*D) each

    new_hiddens: list[torch.Tensor | None] = []
    for layer, hidden in zip(layers, hiddens):
        if hidden is None:
            new_hiddens.append(None)
            continue
        out = layer.self_attn.o_proj(next(attended_per_stream).to(hidden.dtype))  # (B, L_s, hidden_s)
        hidden = hidden + out
        hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        new_hiddens.append(hidden)
    return new_hiddens, (key, value)


def _cat(tensors: list[torch.Tensor]) -> torch.Tensor:
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors, dim=1)
