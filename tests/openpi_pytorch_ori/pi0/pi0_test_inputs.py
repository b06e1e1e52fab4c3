"""Model-level inputs shared by the PI0 model tests."""
from __future__ import annotations

import torch

from openpi_pytorch_ori.pi0 import PI0Config

BATCH = 3


def tiny_inputs(config: PI0Config, seed: int = 1) -> dict[str, torch.Tensor]:
    """2 of 3 cameras present, prompts of different lengths (so prefix pads are exercised)."""
    gen = torch.Generator().manual_seed(seed)
    size, lang_len = config.vision.image_size, config.tokenizer_max_length
    lang_masks = torch.arange(lang_len)[None, :] < torch.tensor([lang_len, 7, 3])[:, None]  # (B, L)
    return dict(
        images=torch.rand(BATCH, 3, 3, size, size, generator=gen) * 2 - 1,
        img_masks=torch.tensor([[True, True, False]] * BATCH),
        lang_tokens=torch.randint(3, config.vlm.vocab_size, (BATCH, lang_len), generator=gen) * lang_masks,
        lang_masks=lang_masks,
        state=torch.randn(BATCH, config.max_state_dim, generator=gen),
    )
