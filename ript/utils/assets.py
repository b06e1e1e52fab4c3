"""Files shipped inside the package (``ript/assets``), addressed as ``builtin:<name>``."""
from __future__ import annotations

from pathlib import Path

NORM_STATS_DIR = Path(__file__).resolve().parents[1] / "assets" / "norm_stats"


def resolve_norm_stats_path(path: str) -> str:
    """``builtin:<name>`` -> the bundled ``ript/assets/norm_stats/<name>_norm_stats.json``.

    Any other value is returned unchanged. ``builtin:libero`` holds public LIBERO statistics;
    ``builtin:reach`` those of the in-tree reach environment's scripted demonstrations.
    """
    if not str(path).startswith("builtin:"):
        return str(path)
    name = str(path).split(":", 1)[1]
    resolved = NORM_STATS_DIR / f"{name}_norm_stats.json"
    if not resolved.is_file():
        available = sorted(p.name.removesuffix("_norm_stats.json") for p in NORM_STATS_DIR.glob("*_norm_stats.json"))
        raise FileNotFoundError(f"norm_stats_path={path!r}: no bundled stats {name!r}; available: {available}")
    return str(resolved)
