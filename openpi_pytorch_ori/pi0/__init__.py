"""PI0 (PaliGemma + Gemma action expert, flow matching) in PyTorch, with a CFG condition."""

from .checkpoint import CheckpointKeyMismatchError, LoadReport, load_pi0_weights, save_pi0_weights
from .configuration_pi0 import GemmaStreamConfig, PI0Config, VisionConfig
from .modeling_pi0 import PI0FlowMatching, PI0Policy
from .paligemma_with_expert import PaliGemmaWithExpert, PrefixKVCache
from .tokenizer import build_tiny_tokenizer, load_tokenizer

__all__ = [
    "CheckpointKeyMismatchError", "GemmaStreamConfig", "LoadReport", "PI0Config", "PI0FlowMatching",
    "PI0Policy", "PaliGemmaWithExpert", "PrefixKVCache", "VisionConfig", "build_tiny_tokenizer",
    "load_pi0_weights", "load_tokenizer", "save_pi0_weights",
]
