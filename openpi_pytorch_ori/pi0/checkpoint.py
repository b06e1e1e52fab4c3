"""PI0 checkpoint I/O in the reference (openpi-PyTorch / lerobot, transformers 4.48) key layout.

Reference layout (what users' PI0 checkpoints contain, all under ``model.``)::

    paligemma_with_expert.paligemma.vision_tower.vision_model.*      SigLIP
    paligemma_with_expert.paligemma.multi_modal_projector.linear.*   projector
    paligemma_with_expert.paligemma.language_model.model.*           Gemma VLM (embed_tokens, layers, norm)
    paligemma_with_expert.paligemma.language_model.lm_head.weight    tied to embed_tokens
    paligemma_with_expert.gemma_expert.model.*                       Gemma expert (layers, norm)
    paligemma_with_expert.gemma_expert.lm_head.weight                expert LM head (unused by PI0)
    state_proj / action_in_proj / action_out_proj / action_time_mlp_in / action_time_mlp_out

This module's tree uses transformers 5.x names (``paligemma.model.language_model``,
``paligemma.model.vision_tower`` without ``vision_model``, ``paligemma.lm_head``). Loading remaps
reference (and transformers 4.52-4.57 intermediate) names onto it; saving writes the reference
layout back, with the tied VLM lm_head stored as its own copy. The expert lm_head is not
instantiated here, so it is reported as ignored on load and not written on save.
Keys without the ``model.`` prefix (openpi's own PyTorch export) are accepted too.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

logger = logging.getLogger(__name__)

SINGLE_FILE_NAME = "model.safetensors"
INDEX_FILE_NAME = "model.safetensors.index.json"

_PWE = "model.paligemma_with_expert."
# (checkpoint prefix, local prefix), first match wins; order matters (longest first).
_REFERENCE_TO_LOCAL_PREFIXES: tuple[tuple[str, str], ...] = (
    (_PWE + "paligemma.language_model.model.", _PWE + "paligemma.model.language_model."),
    (_PWE + "paligemma.language_model.lm_head.", _PWE + "paligemma.lm_head."),
    (_PWE + "paligemma.vision_tower.vision_model.", _PWE + "paligemma.model.vision_tower."),
    (_PWE + "paligemma.model.vision_tower.vision_model.", _PWE + "paligemma.model.vision_tower."),
    (_PWE + "paligemma.multi_modal_projector.", _PWE + "paligemma.model.multi_modal_projector."),
)
_LOCAL_TO_REFERENCE_PREFIXES: tuple[tuple[str, str], ...] = (
    (_PWE + "paligemma.model.language_model.", _PWE + "paligemma.language_model.model."),
    (_PWE + "paligemma.lm_head.", _PWE + "paligemma.language_model.lm_head."),
    (_PWE + "paligemma.model.vision_tower.", _PWE + "paligemma.vision_tower.vision_model."),
    (_PWE + "paligemma.model.multi_modal_projector.", _PWE + "paligemma.multi_modal_projector."),
)
LOCAL_EMBED_KEY = _PWE + "paligemma.model.language_model.embed_tokens.weight"
LOCAL_TIED_LM_HEAD_KEY = _PWE + "paligemma.lm_head.weight"
COND_EMBED_KEY = "model.cond_embed.weight"
COND_LAYER_MOD_KEY = "model.cond_layer_mod"
# The CFG condition's own parameters. No pretrained PI0 (nor a checkpoint saved before the per-layer
# condition existed) has them; at zero both branches reproduce the checkpoint's policy exactly, so a
# missing one is zero-filled and is not a strict-load failure.
CONDITION_KEYS = (COND_EMBED_KEY, COND_LAYER_MOD_KEY)
# Reference keys this implementation knowingly does not instantiate.
IGNORED_REFERENCE_KEYS = {_PWE + "gemma_expert.lm_head.weight": "expert LM head is never used by PI0"}


@dataclass
class LoadReport:
    """What `load_pi0_weights` did.

    missing: local keys (``model.*``) the checkpoint did not provide (left as initialised).
    zero_filled: CFG-condition keys (``CONDITION_KEYS``) the checkpoint did not provide; set to
        zero, so both CFG branches are the checkpoint's policy. Never a strict-load failure.
    unexpected: checkpoint keys (as written in the file) that match nothing here.
    remapped: checkpoint key -> local key for every key whose name was translated.
    ignored: checkpoint keys known to be unused (e.g. the expert lm_head, the tied VLM lm_head).
    files: the safetensors files read.
    """

    missing: list[str] = field(default_factory=list)
    zero_filled: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    remapped: dict[str, str] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line for logs: counts, plus the missing/unexpected names (the ones that matter)."""
        return (
            f"{len(self.files)} file(s), {len(self.remapped)} keys remapped, {len(self.ignored)} ignored, "
            f"{len(self.zero_filled)} condition keys zero-filled, missing={self.missing}, unexpected={self.unexpected}"
        )


class CheckpointKeyMismatchError(RuntimeError):
    """Raised by strict loading; carries the key lists."""

    def __init__(self, missing: list[str], unexpected: list[str]):
        self.missing, self.unexpected = missing, unexpected
        super().__init__(
            f"Strict PI0 checkpoint load failed.\n  missing keys ({len(missing)}): {missing}\n"
            f"  unexpected keys ({len(unexpected)}): {unexpected}\n"
            "Check the preset/overrides match the checkpoint, or load with strict=False to accept."
        )


def remap_reference_key(key: str) -> str:
    """Checkpoint key (reference / intermediate / local layout) -> local key."""
    for old, new in _REFERENCE_TO_LOCAL_PREFIXES:
        if key.startswith(old):
            return new + key[len(old) :]
    return key


def local_to_reference_key(key: str) -> str:
    """Local key -> reference (transformers 4.48) layout key."""
    for old, new in _LOCAL_TO_REFERENCE_PREFIXES:
        if key.startswith(old):
            return new + key[len(old) :]
    return key


def resolve_checkpoint_files(path: str | os.PathLike) -> list[Path]:
    """A .safetensors file, a directory with model.safetensors, or a sharded directory
    with model.safetensors.index.json -> the list of files to read."""
    path = Path(path)
    hint = (
        "pass a .safetensors file, a directory containing model.safetensors, or a directory with "
        "model.safetensors.index.json and its shards"
    )
    if not path.exists():
        raise FileNotFoundError(f"PI0 checkpoint path {str(path)!r} does not exist; {hint}.")
    if path.is_file():
        return [path]
    if (path / INDEX_FILE_NAME).is_file():
        weight_map = json.loads((path / INDEX_FILE_NAME).read_text())["weight_map"]
        shard_names = sorted(set(weight_map.values()))
        missing = [name for name in shard_names if not (path / name).is_file()]
        if missing:
            raise FileNotFoundError(f"Shards listed in {path / INDEX_FILE_NAME} are missing: {missing}.")
        return [path / name for name in shard_names]
    if (path / SINGLE_FILE_NAME).is_file():
        return [path / SINGLE_FILE_NAME]
    raise FileNotFoundError(f"No {SINGLE_FILE_NAME} or {INDEX_FILE_NAME} in directory {str(path)!r}; {hint}.")


def _policy_state_dict(policy: nn.Module) -> tuple[dict[str, torch.Tensor], nn.Module, str]:
    """Local state dict keyed ``model.*`` for a PI0Policy or a bare PI0FlowMatching.

    Returns (state dict, module to load into, prefix to strip before loading into it). Pass the
    bare module: a DDP wrapper is unwrapped by the caller (``ript.utils.distributed.unwrap``).
    """
    if hasattr(policy, "paligemma_with_expert"):  # bare PI0FlowMatching
        return {f"model.{k}": v for k, v in policy.state_dict().items()}, policy, "model."
    return dict(policy.state_dict()), policy, ""


def load_pi0_weights(policy: nn.Module, path: str | os.PathLike, strict: bool = False) -> LoadReport:
    """Load a PI0 safetensors checkpoint (single file, directory, or sharded) into `policy`.

    Keys are remapped from the reference layout; tensors are cast to each parameter's dtype.
    strict=True raises `CheckpointKeyMismatchError` listing missing and unexpected keys (ignored
    keys do not count) before touching any weight. Shape mismatches always raise ValueError.
    """
    files = resolve_checkpoint_files(path)
    loaded: dict[str, torch.Tensor] = {}
    for file in files:
        try:
            loaded.update(load_file(str(file), device="cpu"))
        except SafetensorError as error:  # a truncated download, or another format under this name
            raise ValueError(f"{file} is not a readable safetensors file ({error}): truncated or of another "
                             "format; re-download it or pass another checkpoint") from error
    if loaded and not any(k.startswith("model.") for k in loaded):
        loaded = {f"model.{k}": v for k, v in loaded.items()}  # openpi's own export has no prefix

    local_state, target, strip = _policy_state_dict(policy)
    expected = {k for k in local_state if k != LOCAL_TIED_LM_HEAD_KEY}
    report = LoadReport(files=[str(f) for f in files])
    to_load: dict[str, torch.Tensor] = {}
    tied_head: torch.Tensor | None = None
    for ckpt_key, tensor in loaded.items():
        if ckpt_key in IGNORED_REFERENCE_KEYS:
            report.ignored.append(ckpt_key)
            continue
        local_key = remap_reference_key(ckpt_key)
        if local_key != ckpt_key:
            report.remapped[ckpt_key] = local_key
        if local_key == LOCAL_TIED_LM_HEAD_KEY:
            tied_head = tensor  # tied to embed_tokens: stored twice in the reference
            report.ignored.append(ckpt_key)
        elif local_key in expected:
            to_load[local_key] = tensor
        else:
            report.unexpected.append(ckpt_key)
    if LOCAL_EMBED_KEY in expected and LOCAL_EMBED_KEY not in to_load and tied_head is not None:
        to_load[LOCAL_EMBED_KEY] = tied_head
    absent = expected - set(to_load)
    report.zero_filled = sorted(absent & set(CONDITION_KEYS))
    report.missing = sorted(absent - set(CONDITION_KEYS))
    report.unexpected.sort()

    if loaded and not to_load:
        raise ValueError(f"{path} holds no PI0 parameter (its keys look like {sorted(loaded)[:3]}): a checkpoint "
                         "of another model; pass a PI0 checkpoint")
    _check_shapes(to_load, local_state)
    if strict and (report.missing or report.unexpected):
        raise CheckpointKeyMismatchError(report.missing, report.unexpected)
    target.load_state_dict({k[len(strip) :]: v for k, v in to_load.items()}, strict=False)
    with torch.no_grad():
        for key in report.zero_filled:
            local_state[key].zero_()  # the checkpoint's behaviour for both CFG branches
    if report.zero_filled:
        logger.info("PI0 checkpoint %s has no CFG-condition parameters %s: zero-filled, so both branches "
                    "start as the checkpoint's policy", path, report.zero_filled)
    if report.missing or report.unexpected:
        logger.warning("PI0 checkpoint %s: missing %s; unexpected %s", path, report.missing, report.unexpected)
    return report


def _check_shapes(to_load: dict[str, torch.Tensor], local_state: dict[str, torch.Tensor]) -> None:
    mismatched = [
        f"{key}: checkpoint {tuple(tensor.shape)} vs model {tuple(local_state[key].shape)}"
        for key, tensor in to_load.items()
        if tuple(tensor.shape) != tuple(local_state[key].shape)
    ]
    if mismatched:
        raise ValueError(
            "PI0 checkpoint shapes do not match the model config (wrong preset or overrides?):\n  "
            + "\n  ".join(mismatched)
        )


def save_pi0_weights(
    policy: nn.Module, path: str | os.PathLike, max_shard_bytes: int | None = None
) -> list[Path]:
    """Save `policy` weights in the reference key layout; returns the files written.

    path ending in ``.safetensors``: one file. Otherwise a directory: ``model.safetensors``, or,
    when `max_shard_bytes` is set and exceeded, shards ``model-0000i-of-0000n.safetensors`` plus
    ``model.safetensors.index.json``. The tied VLM lm_head is written as a copy of embed_tokens.
    """
    local_state, _, _ = _policy_state_dict(policy)
    tensors: dict[str, torch.Tensor] = {}
    for key, tensor in local_state.items():
        tensors[local_to_reference_key(key)] = tensor.detach().to("cpu").contiguous().clone()
    if LOCAL_EMBED_KEY in local_state:
        tensors[local_to_reference_key(LOCAL_TIED_LM_HEAD_KEY)] = tensors[local_to_reference_key(LOCAL_EMBED_KEY)].clone()
    path = Path(path)
    metadata = {"format": "pt"}
    if path.suffix == ".safetensors":
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(path), metadata=metadata)
        return [path]
    path.mkdir(parents=True, exist_ok=True)
    shards = _split_into_shards(tensors, max_shard_bytes)
    if len(shards) == 1:
        save_file(shards[0], str(path / SINGLE_FILE_NAME), metadata=metadata)
        return [path / SINGLE_FILE_NAME]
    return _save_sharded(shards, path, metadata)


def _split_into_shards(tensors: dict[str, torch.Tensor], max_shard_bytes: int | None) -> list[dict[str, torch.Tensor]]:
    if max_shard_bytes is None:
        return [tensors]
    shards: list[dict[str, torch.Tensor]] = [{}]
    shard_bytes = 0
    for key, tensor in tensors.items():
        size = tensor.numel() * tensor.element_size()
        if shards[-1] and shard_bytes + size > max_shard_bytes:
            shards.append({})
            shard_bytes = 0
        shards[-1][key] = tensor
        shard_bytes += size
    return shards


def _save_sharded(shards: list[dict[str, torch.Tensor]], directory: Path, metadata: dict[str, str]) -> list[Path]:
    weight_map: dict[str, str] = {}
    written: list[Path] = []
    total_size = 0
    for index, shard in enumerate(shards, start=1):
        name = f"model-{index:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(directory / name), metadata=metadata)
        written.append(directory / name)
        for key, tensor in shard.items():
            weight_map[key] = name
            total_size += tensor.numel() * tensor.element_size()
    index_doc = {"metadata": {"total_size": total_size}, "weight_map": weight_map}
    (directory / INDEX_FILE_NAME).write_text(json.dumps(index_doc, indent=2, sort_keys=True))
    return written + [directory / INDEX_FILE_NAME]
