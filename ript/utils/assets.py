"""Files shipped inside the package (``ript/assets``), addressed as ``builtin:<name>``.

* ``ript/assets/norm_stats/<name>_norm_stats.json``: normalisation statistics;
* ``ript/assets/checkpoints/<name>/``: PI0 checkpoints (``model.safetensors`` + the
  ``norm_stats.json`` they were trained with + ``sft_info.json`` + ``README.md``).

A config names them as ``algo.policy.pretrained_path=builtin:<checkpoint>`` and
``algo.policy.norm_stats_path=builtin:<checkpoint>`` (the checkpoint's own stats), so no config
holds an absolute path and an installed package finds its files wherever it lives.
"""
from __future__ import annotations

from pathlib import Path

ASSETS_DIR = Path(__file__).resolve().parents[1] / "assets"
NORM_STATS_DIR = ASSETS_DIR / "norm_stats"
CHECKPOINTS_DIR = ASSETS_DIR / "checkpoints"

BUILTIN_PREFIX = "builtin:"


def _builtin_name(path: str) -> str | None:
    return str(path).split(":", 1)[1] if str(path).startswith(BUILTIN_PREFIX) else None


def bundled_norm_stats() -> list[str]:
    return sorted(p.name.removesuffix("_norm_stats.json") for p in NORM_STATS_DIR.glob("*_norm_stats.json"))


def bundled_checkpoints() -> list[str]:
    return sorted(p.name for p in CHECKPOINTS_DIR.glob("*") if (p / "model.safetensors").is_file())


def resolve_norm_stats_path(path: str) -> str:
    """``builtin:<name>`` -> a bundled stats file; any other value is returned unchanged.

    ``<name>`` is looked up first as ``ript/assets/norm_stats/<name>_norm_stats.json``
    (``builtin:libero``: public LIBERO statistics; ``builtin:reach``: the in-tree reach
    environment's scripted demonstrations), then as a bundled checkpoint, whose own
    ``norm_stats.json`` is returned (``builtin:pi0_small_libero_object_ketchup``).
    """
    name = _builtin_name(path)
    if name is None:
        return str(path)
    resolved = NORM_STATS_DIR / f"{name}_norm_stats.json"
    if resolved.is_file():
        return str(resolved)
    in_checkpoint = CHECKPOINTS_DIR / name / "norm_stats.json"
    if in_checkpoint.is_file():
        return str(in_checkpoint)
    raise FileNotFoundError(
        f"norm_stats_path={path!r}: no bundled stats {name!r}; available: "
        f"{bundled_norm_stats()} and the checkpoints' own {bundled_checkpoints()}"
    )


def resolve_checkpoint_path(path: str | None) -> str | None:
    """``builtin:<name>`` -> the bundled checkpoint directory ``ript/assets/checkpoints/<name>``.

    None and any other value are returned unchanged (a file or directory the loader understands).
    """
    if path is None:
        return None
    name = _builtin_name(path)
    if name is None:
        return str(path)
    resolved = CHECKPOINTS_DIR / name
    if not (resolved / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"pretrained_path={path!r}: no bundled checkpoint {name!r}; available: {bundled_checkpoints()}"
        )
    return str(resolved)
