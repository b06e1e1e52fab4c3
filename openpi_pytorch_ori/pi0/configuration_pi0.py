"""Typed, validated configuration of the PI0 model (PaliGemma VLM + Gemma action expert).

`PI0Config` holds three nested sub-configs (`vision`, `vlm`, `expert`) plus the flow-matching,
input and training switches. It is validated at construction; every error names the offending
key, its value and how to fix it.

Presets:
  * ``full``: the published PI0 sizes (SigLIP So400m/14 at 224 px, Gemma-2B VLM, Gemma-300M
    expert; the values are `VisionConfig` and `GemmaStreamConfig` defaults below).
  * ``tiny``: a CPU-sized model (2 layers, widths of tens, 56 px images) that runs a training
    step in a fraction of a second; it defaults to the tokenizer shipped in
    ``openpi_pytorch_ori/pi0/assets/tiny_tokenizer``.
  * ``small``: PI0's architecture at 8.0 M parameters and 112 px (SigLIP-style tower 192 wide x 6
    layers, Gemma stream 256 wide and expert 128 wide x 4 layers, 4 heads of 64), the smallest
    size measured to see a LIBERO scene well enough to learn a task from a few demos; it also
    uses the shipped tiny tokenizer (docs/learning_libero.md has its speed and success).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

TINY_TOKENIZER_DIR = Path(__file__).resolve().parent / "assets" / "tiny_tokenizer"

CAMERA_SLOTS: tuple[str, ...] = ("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb")

AttentionImplementation = Literal["eager", "sdpa"]
ModelDType = Literal["float32", "bfloat16"]


def _config_error(key: str, value: Any, rule: str, fix: str) -> ValueError:
    return ValueError(f"PI0Config.{key}={value!r}: {rule}. Fix: {fix}.")


@dataclass
class VisionConfig:
    """SigLIP vision tower (no pooling head; post-layernorm applied)."""

    hidden_size: int = 1152
    intermediate_size: int = 4304
    num_hidden_layers: int = 27
    num_attention_heads: int = 16
    patch_size: int = 14
    image_size: int = 224
    hidden_act: str = "gelu_pytorch_tanh"
    layer_norm_eps: float = 1e-6

    @property
    def num_image_tokens(self) -> int:
        """Tokens per camera image: (image_size / patch_size) ** 2."""
        return (self.image_size // self.patch_size) ** 2


@dataclass
class GemmaStreamConfig:
    """One Gemma transformer stream (the VLM language model or the action expert)."""

    hidden_size: int = 2048
    intermediate_size: int = 16384
    num_hidden_layers: int = 18
    num_attention_heads: int = 8
    num_key_value_heads: int = 1
    head_dim: int = 256
    vocab_size: int = 257152
    hidden_act: str = "gelu_pytorch_tanh"
    rms_norm_eps: float = 1e-6


def _full_expert() -> GemmaStreamConfig:
    return GemmaStreamConfig(hidden_size=1024, intermediate_size=4096)


@dataclass
class PI0Config:
    """Configuration of `PI0FlowMatching` / `PI0Policy`.

    Image sizes: ``resize_imgs_with_padding`` is (width, height), as in the reference; it must
    equal the vision tower's square input size. Action/state tensors are zero-padded to
    ``max_action_dim`` / ``max_state_dim``; the raw robot has ``state_dim`` / ``action_dim``.
    ``dtype="bfloat16"`` casts the PaliGemma + expert backbone to bf16; the small PI0 heads
    (state/action projections, time MLP, ``cond_embed``) and losses stay in float32.
    """

    vision: VisionConfig = field(default_factory=VisionConfig)
    vlm: GemmaStreamConfig = field(default_factory=GemmaStreamConfig)
    expert: GemmaStreamConfig = field(default_factory=_full_expert)

    chunk_size: int = 50
    n_action_steps: int = 50
    max_state_dim: int = 32
    max_action_dim: int = 32
    state_dim: int = 8
    action_dim: int = 7
    num_steps: int = 10
    tokenizer_max_length: int = 48
    tokenizer_path: str | None = None
    resize_imgs_with_padding: tuple[int, int] = (224, 224)
    proj_width: int = 1024
    image_slots: tuple[str, ...] = CAMERA_SLOTS

    attention_implementation: AttentionImplementation = "eager"
    dtype: ModelDType = "float32"
    gradient_checkpointing: bool = False
    freeze_vision_encoder: bool = True
    train_expert_only: bool = False

    # Sinusoidal flow-time embedding periods (reference values).
    time_min_period: float = 4e-3
    time_max_period: float = 4.0
    # CFG condition also as a zero-initialised per-layer scale/shift of the action expert's hidden
    # states (modeling_pi0.PI0FlowMatching.cond_layer_mod); off = the seed's cond_embed path only.
    cond_layer_modulation: bool = False

    def __post_init__(self) -> None:
        self.vision = _as_dataclass(VisionConfig, self.vision, "vision")
        self.vlm = _as_dataclass(GemmaStreamConfig, self.vlm, "vlm")
        self.expert = _as_dataclass(GemmaStreamConfig, self.expert, "expert")
        self.resize_imgs_with_padding = tuple(int(v) for v in self.resize_imgs_with_padding)
        self.image_slots = tuple(self.image_slots)
        if self.tokenizer_path is not None:
            self.tokenizer_path = str(self.tokenizer_path)
        _validate(self)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "PI0Config":
        """Build a named preset ("full", "small" or "tiny"), then apply keyword overrides.

        Sub-config overrides may be dicts, merged field by field:
        ``PI0Config.preset("tiny", vlm={"num_hidden_layers": 1}, expert={"num_hidden_layers": 1})``.
        """
        if name not in _PRESETS:
            raise ValueError(f"Unknown PI0 preset {name!r}; valid presets: {sorted(_PRESETS)}.")
        base = _PRESETS[name]()
        return base.replace(**overrides)

    @classmethod
    def from_reference_json(cls, doc: dict[str, Any], **overrides: Any) -> "PI0Config":
        """Build from a reference description such as ``pi0_tiny_reference.json``.

        Reads ``doc["model_config"]`` ({vision, vlm, expert}) and the PI0 numbers in
        ``doc["pi0_config"]``; keys this implementation does not model (e.g. ALOHA switches) are
        ignored. ``overrides`` win over the document.
        """
        model_config, pi0_config = doc["model_config"], doc["pi0_config"]
        own_fields = {f.name for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {k: v for k, v in pi0_config.items() if k in own_fields}
        kwargs.update(
            vision=_pick_fields(VisionConfig, model_config["vision"]),
            vlm=_pick_fields(GemmaStreamConfig, model_config["vlm"]),
            expert=_pick_fields(GemmaStreamConfig, model_config["expert"]),
        )
        input_spec = doc.get("input_spec", {})
        for key in ("state_dim", "action_dim"):
            if key in input_spec:
                kwargs[key] = input_spec[key]
        kwargs.update(overrides)
        return cls(**kwargs)

    def replace(self, **overrides: Any) -> "PI0Config":
        """A validated copy with ``overrides`` applied (dicts merge into sub-configs)."""
        own_fields = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - own_fields)
        if unknown:
            raise ValueError(f"Unknown PI0Config keys {unknown}; valid keys: {sorted(own_fields)}.")
        merged: dict[str, Any] = {}
        for key, value in overrides.items():
            current = getattr(self, key)
            if dataclasses.is_dataclass(current) and isinstance(value, dict):
                value = dataclasses.replace(current, **_pick_fields(type(current), value, strict=True, name=key))
            merged[key] = value
        return dataclasses.replace(self, **merged)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    # ------------------------------------------------------------------ derived numbers
    @property
    def num_image_tokens(self) -> int:
        return self.vision.num_image_tokens

    @property
    def prefix_length(self) -> int:
        """Image tokens of every slot + language tokens."""
        return len(self.image_slots) * self.num_image_tokens + self.tokenizer_max_length

    @property
    def suffix_length(self) -> int:
        """State token + chunk action tokens."""
        return 1 + self.chunk_size


def _pick_fields(cls: type, values: dict[str, Any], strict: bool = False, name: str = "") -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    if strict:
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"Unknown PI0Config.{name} keys {unknown}; valid keys: {sorted(names)}.")
    return {k: v for k, v in values.items() if k in names}


def _as_dataclass(cls: type, value: Any, name: str) -> Any:
    if isinstance(value, cls):
        return value
    if isinstance(value, dict) or hasattr(value, "items"):
        return cls(**_pick_fields(cls, dict(value.items()), strict=True, name=name))
    raise _config_error(name, value, f"must be a {cls.__name__} or a dict of its fields", "pass a dict")


def _validate(cfg: PI0Config) -> None:
    _validate_streams(cfg)
    positive = {
        "chunk_size": cfg.chunk_size,
        "n_action_steps": cfg.n_action_steps,
        "num_steps": cfg.num_steps,
        "state_dim": cfg.state_dim,
        "action_dim": cfg.action_dim,
    }
    for key, value in positive.items():
        if not isinstance(value, int) or value <= 0:
            raise _config_error(key, value, "must be a positive integer", f"set {key} >= 1")
    if cfg.n_action_steps > cfg.chunk_size:
        raise _config_error(
            "n_action_steps", cfg.n_action_steps, f"cannot be greater than chunk_size ({cfg.chunk_size})",
            f"set n_action_steps <= {cfg.chunk_size} or raise chunk_size",
        )
    if cfg.state_dim > cfg.max_state_dim:
        raise _config_error("state_dim", cfg.state_dim, f"exceeds max_state_dim ({cfg.max_state_dim})",
                            "raise max_state_dim")
    if cfg.action_dim > cfg.max_action_dim:
        raise _config_error("action_dim", cfg.action_dim, f"exceeds max_action_dim ({cfg.max_action_dim})",
                            "raise max_action_dim")
    if cfg.tokenizer_max_length < 2:
        raise _config_error("tokenizer_max_length", cfg.tokenizer_max_length,
                            "must hold at least <bos> and one token", "set it to >= 2 (full PI0 uses 48)")
    square = (cfg.vision.image_size, cfg.vision.image_size)
    if cfg.resize_imgs_with_padding != square:
        raise _config_error(
            "resize_imgs_with_padding", cfg.resize_imgs_with_padding,
            f"must be (width, height) = the vision tower input size {square} (its position embedding is fixed)",
            f"set resize_imgs_with_padding={square} or change vision.image_size",
        )
    if cfg.vision.image_size % cfg.vision.patch_size != 0:
        raise _config_error("vision.image_size", cfg.vision.image_size,
                            f"must be a multiple of vision.patch_size ({cfg.vision.patch_size})",
                            "pick an image size divisible by the patch size")
    if not cfg.image_slots or len(set(cfg.image_slots)) != len(cfg.image_slots):
        raise _config_error("image_slots", cfg.image_slots, "must be a non-empty tuple of unique slot names",
                            f"e.g. {CAMERA_SLOTS}")
    if cfg.attention_implementation not in ("eager", "sdpa"):
        raise _config_error("attention_implementation", cfg.attention_implementation,
                            "must be 'eager' or 'sdpa'", "pick one of those")
    if cfg.dtype not in ("float32", "bfloat16"):
        raise _config_error("dtype", cfg.dtype, "must be 'float32' or 'bfloat16'", "pick one of those")


def _validate_streams(cfg: PI0Config) -> None:
    """The joint attention concatenates VLM and expert heads along the sequence: shapes must agree."""
    for key in ("head_dim", "num_attention_heads", "num_key_value_heads", "num_hidden_layers"):
        vlm_value, expert_value = getattr(cfg.vlm, key), getattr(cfg.expert, key)
        if vlm_value != expert_value:
            raise _config_error(
                f"expert.{key}", expert_value,
                f"must equal vlm.{key} ({vlm_value}) because both streams share one joint attention per layer",
                f"set expert.{key}={vlm_value}",
            )
    if cfg.vlm.num_attention_heads % cfg.vlm.num_key_value_heads != 0:
        raise _config_error("vlm.num_attention_heads", cfg.vlm.num_attention_heads,
                            f"must be a multiple of num_key_value_heads ({cfg.vlm.num_key_value_heads})",
                            "use a head count divisible by the KV head count")
    if cfg.vlm.head_dim % 2 != 0:
        raise _config_error("vlm.head_dim", cfg.vlm.head_dim, "must be even (RoPE rotates half-dims)",
                            "use an even head_dim")
    if cfg.proj_width != cfg.expert.hidden_size:
        raise _config_error("proj_width", cfg.proj_width,
                            f"must equal expert.hidden_size ({cfg.expert.hidden_size}): suffix tokens feed the expert",
                            f"set proj_width={cfg.expert.hidden_size}")
    if cfg.proj_width % 2 != 0:
        raise _config_error("proj_width", cfg.proj_width, "must be even (sin/cos time embedding halves)",
                            "use an even width")


def _full_preset() -> PI0Config:
    return PI0Config()


def _tiny_preset() -> PI0Config:
    # Same topology as the parity fixture (2 layers, 2 heads, 1 KV head, head_dim 32),
    # vocabulary sized to hold the shipped tiny tokenizer (see tokenizer.py).
    return PI0Config(
        vision=VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=2, patch_size=14, image_size=56),
        vlm=GemmaStreamConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                              num_attention_heads=2, num_key_value_heads=1, head_dim=32, vocab_size=512),
        expert=GemmaStreamConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=2, num_key_value_heads=1, head_dim=32, vocab_size=512),
        tokenizer_max_length=24,
        tokenizer_path=str(TINY_TOKENIZER_DIR),
        resize_imgs_with_padding=(56, 56),
        proj_width=32,
    )


def _small_preset() -> PI0Config:
    # Sized by measurement on LIBERO-Object (docs/learning_libero.md): 112 px gives 64 tokens per
    # camera, enough to place a bottle; 8 M parameters keep CPU rollouts simulator-bound
    # (~70 ms per select_action at batch 1 on 2 cores) and SFT on one GPU to minutes.
    return PI0Config(
        vision=VisionConfig(hidden_size=192, intermediate_size=768, num_hidden_layers=6,
                            num_attention_heads=3, patch_size=14, image_size=112),
        vlm=GemmaStreamConfig(hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                              num_attention_heads=4, num_key_value_heads=1, head_dim=64, vocab_size=512),
        expert=GemmaStreamConfig(hidden_size=128, intermediate_size=512, num_hidden_layers=4,
                                 num_attention_heads=4, num_key_value_heads=1, head_dim=64, vocab_size=512),
        tokenizer_max_length=24,
        tokenizer_path=str(TINY_TOKENIZER_DIR),
        resize_imgs_with_padding=(112, 112),
        proj_width=128,
    )


_PRESETS = {"full": _full_preset, "tiny": _tiny_preset, "small": _small_preset}
