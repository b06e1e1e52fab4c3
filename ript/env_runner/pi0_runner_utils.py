"""Pure-numpy conversions between LIBERO observations/actions and PI0's model space.

Nothing here imports a simulator or a model, so the optimizer can rebuild training labels with
the exact inverse of what the runner executed (STYLE §2).

Conventions (docs/ARCHITECTURE.md, "Observation conventions"):

* PI0 observation: ``image.base_0_rgb`` <- ``agentview_image``, ``image.left_wrist_0_rgb`` <-
  ``robot0_eye_in_hand_image``; uint8, channel-first, rotated 180 degrees because the LIBERO
  data PI0 was trained on was recorded upside down (openpi's LIBERO example flips both cameras
  the same way). State = eef_pos(3) + axis-angle(eef_quat)(3) + gripper_qpos(2), normalised.
* Images are resized to the policy's input size here, the way openpi's LIBERO client does it
  (:func:`resize_with_pad_like_openpi`), so PI0's own tensor resize is a no-op on them.
* Model-space actions: normalised ``(B, T, 7)``. With ``action_mode="relative"`` dims 0..5 are
  relative to the chunk-start state's ``state[:6]`` (openpi's extra delta transform for the
  ``pi0_libero`` checkpoint); the gripper (dim 6) is always absolute.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Any, Literal, Sequence, get_args

import numpy as np

from ript.utils.images import camera_frame_for_policy, resize_with_pad_like_openpi  # noqa: F401

logger = logging.getLogger(__name__)

ActionMode = Literal["relative", "absolute"]
ACTION_MODES: tuple[str, ...] = get_args(ActionMode)

STATE_DIM = 8  # eef pos (3) + axis-angle (3) + gripper qpos (2)
ACTION_DIM = 7  # delta pos (3) + delta rot (3) + gripper (1)
NUM_RELATIVE_DIMS = 6  # dims made relative by openpi's delta transform; gripper stays absolute
NORM_EPS = 1e-6  # openpi / lerobot use (x - mean) / (std + 1e-6)

# LIBERO observation key -> PI0 image slot.
CAMERA_KEY_TO_SLOT: dict[str, str] = {
    "agentview_image": "base_0_rgb",
    "robot0_eye_in_hand_image": "left_wrist_0_rgb",
}


@dataclass
class NormStats:
    """Mean/std (and optional 1st/99th percentiles) of PI0's state and action spaces."""

    state_mean: np.ndarray  # float32 (8,)
    state_std: np.ndarray  # float32 (8,)
    action_mean: np.ndarray  # float32 (7,)
    action_std: np.ndarray  # float32 (7,)
    state_q01: np.ndarray | None = None
    state_q99: np.ndarray | None = None
    action_q01: np.ndarray | None = None
    action_q99: np.ndarray | None = None

    def __post_init__(self) -> None:
        for name in ("state_mean", "state_std", "action_mean", "action_std",
                     "state_q01", "state_q99", "action_q01", "action_q99"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, np.asarray(value, dtype=np.float32).reshape(-1))
        pairs = (("state_std", "state_mean"), ("action_std", "action_mean"))
        for std_name, mean_name in pairs:
            std, mean = getattr(self, std_name), getattr(self, mean_name)
            if std.shape != mean.shape:
                raise ValueError(
                    f"NormStats.{std_name} has shape {std.shape} but {mean_name} has "
                    f"{mean.shape}; both must have one entry per dimension"
                )

    @property
    def state_dim(self) -> int:
        return int(self.state_mean.shape[0])

    @property
    def action_dim(self) -> int:
        return int(self.action_mean.shape[0])

    def normalize_state(self, x: Any) -> np.ndarray:
        return ((np.asarray(x, np.float32) - self.state_mean) / (self.state_std + NORM_EPS)).astype(np.float32)

    def unnormalize_state(self, x: Any) -> np.ndarray:
        return (np.asarray(x, np.float32) * (self.state_std + NORM_EPS) + self.state_mean).astype(np.float32)

    def normalize_action(self, x: Any) -> np.ndarray:
        return ((np.asarray(x, np.float32) - self.action_mean) / (self.action_std + NORM_EPS)).astype(np.float32)

    def unnormalize_action(self, x: Any) -> np.ndarray:
        return (np.asarray(x, np.float32) * (self.action_std + NORM_EPS) + self.action_mean).astype(np.float32)


def _stats_entry(entry: Any, path: str, key: str, want_dim: int, optional: bool = False):
    """One statistic (``mean``/``std``/``q01``/``q99``) of one group, checked and sliced."""
    group, stat = key.rsplit(".", 1)
    if not isinstance(entry, dict) or stat not in entry or entry[stat] is None:
        if optional:
            return None
        raise KeyError(
            f"norm stats file {path!r} has no key {key!r}; a PI0 norm_stats.json needs "
            f"'mean' and 'std' for both 'state' and 'actions' (openpi layout "
            f"{{'norm_stats': {{'state': {{...}}, 'actions': {{...}}}}}})"
        )
    values = np.asarray(entry[stat], dtype=np.float32).reshape(-1)
    if values.shape[0] < want_dim:
        raise ValueError(
            f"norm stats file {path!r}: {key!r} has {values.shape[0]} dims but at least "
            f"{want_dim} are needed ({group} of the LIBERO PI0 setup); is this the stats file "
            f"of a different robot/dataset?"
        )
    if not np.all(np.isfinite(values[:want_dim])):
        bad = np.flatnonzero(~np.isfinite(values[:want_dim])).tolist()
        raise ValueError(f"norm stats file {path!r}: {key!r} holds NaN or inf at dims {bad}; every "
                         "statistic must be a finite number (recompute the statistics)")
    return values[:want_dim]


def load_norm_stats(path: str | os.PathLike, state_dim: int = STATE_DIM,
                    action_dim: int = ACTION_DIM) -> NormStats:
    """Read a ``norm_stats.json`` in openpi's nested or the flat layout.

    Nested: ``{"norm_stats": {"state": {mean, std, q01?, q99?}, "actions": {...}}}``.
    Flat: ``{"state": {...}, "action" | "actions": {...}}``. Statistics are sliced to
    ``state[:state_dim]`` and ``action[:action_dim]`` because openpi stores them padded.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"norm stats file not found: {path!r}; pass the norm_stats.json that belongs to "
            f"the checkpoint (algo.policy.norm_stats_path)"
        )
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read norm stats file {path!r} as JSON: {exc}") from exc
    root = raw.get("norm_stats", raw) if isinstance(raw, dict) else None
    if not isinstance(root, dict):
        raise ValueError(f"norm stats file {path!r} must hold a JSON object, got {type(raw).__name__}")
    if "state" not in root:
        raise KeyError(f"norm stats file {path!r} has no key 'state' (found keys {sorted(root)})")
    action_key = "actions" if "actions" in root else "action" if "action" in root else None
    if action_key is None:
        raise KeyError(
            f"norm stats file {path!r} has no key 'actions' (or 'action'); found keys {sorted(root)}"
        )
    state, action = root["state"], root[action_key]
    return NormStats(
        state_mean=_stats_entry(state, path, "state.mean", state_dim),
        state_std=_stats_entry(state, path, "state.std", state_dim),
        action_mean=_stats_entry(action, path, f"{action_key}.mean", action_dim),
        action_std=_stats_entry(action, path, f"{action_key}.std", action_dim),
        state_q01=_stats_entry(state, path, "state.q01", state_dim, optional=True),
        state_q99=_stats_entry(state, path, "state.q99", state_dim, optional=True),
        action_q01=_stats_entry(action, path, f"{action_key}.q01", action_dim, optional=True),
        action_q99=_stats_entry(action, path, f"{action_key}.q99", action_dim, optional=True),
    )


def quat_to_axis_angle(quat_xyzw: Any) -> np.ndarray:
    """Quaternion ``(..., 4)`` in robosuite's (x, y, z, w) order -> axis-angle ``(..., 3)``.

    Follows robosuite's ``transform_utils.quat2axisangle`` exactly (the LIBERO norm stats were
    computed with it): w is clipped to [-1, 1], no sign canonicalisation, and a (near) zero
    ``sqrt(1 - w^2)`` -- i.e. w close to +1 or -1 -- returns the zero vector.
    """
    q = np.asarray(quat_xyzw, dtype=np.float64)
    if q.shape[-1] != 4:
        raise ValueError(f"quat_to_axis_angle expects (..., 4) xyzw quaternions, got shape {q.shape}")
    w = np.clip(q[..., 3], -1.0, 1.0)
    den = np.sqrt(1.0 - w * w)
    # math.isclose(den, 0) in robosuite uses rel_tol only, i.e. den == 0 exactly; we use a tiny
    # absolute tolerance so float noise around w = +-1 cannot blow up the division.
    degenerate = den < 1e-9
    scale = np.where(degenerate, 0.0, 2.0 * np.arccos(w) / np.where(degenerate, 1.0, den))
    return (q[..., :3] * scale[..., None]).astype(np.float32)


def _check_image(img: Any, key: str, index: int) -> np.ndarray:
    img = np.asarray(img)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[-1] != 3:
        raise ValueError(
            f"env observation {index}: {key!r} must be uint8 (H, W, 3) channel-last as LIBERO "
            f"returns it, got dtype {img.dtype} shape {img.shape}"
        )
    return img


def raw_state_from_env_obs(obs: dict, index: int = 0) -> np.ndarray:
    """float32 (8,) un-normalised state: eef pos, axis-angle(eef quat), gripper qpos."""
    parts = []
    for key, dim in (("robot0_eef_pos", 3), ("robot0_eef_quat", 4), ("robot0_gripper_qpos", 2)):
        if key not in obs:
            raise KeyError(f"env observation {index} has no key {key!r} (keys: {sorted(obs)[:12]}...)")
        value = np.asarray(obs[key], dtype=np.float64).reshape(-1)
        if value.shape[0] != dim or not np.all(np.isfinite(value)):
            raise ValueError(f"env observation {index}: {key!r} must be {dim} finite values, got {value}")
        parts.append(quat_to_axis_angle(value) if key == "robot0_eef_quat" else value)
    return np.concatenate(parts).astype(np.float32)


def env_obs_to_pi0_observation(env_obs_list: Sequence[dict], task_descriptions: Sequence[str],
                               norm_stats: NormStats, rotate_180: bool = True,
                               image_size: int | None = None
                               ) -> tuple[dict[str, Any], np.ndarray]:
    """LIBERO observation dicts -> (PI0 observation batch, raw states float32 (B, 8)).

    ``image_size``: the policy's square input size (224 for PI0, 56 for the tiny preset); each
    camera frame is flipped, then resized to it with :func:`resize_with_pad_like_openpi`. None
    keeps the rendered size.
    """
    if image_size is not None and image_size < 1:
        raise ValueError(f"image_size={image_size} must be a positive number of pixels or None")
    if len(env_obs_list) != len(task_descriptions):
        raise ValueError(
            f"got {len(env_obs_list)} observations but {len(task_descriptions)} task descriptions"
        )
    images: dict[str, list[np.ndarray]] = {slot: [] for slot in CAMERA_KEY_TO_SLOT.values()}
    raw_states = []
    for i, obs in enumerate(env_obs_list):
        for key, slot in CAMERA_KEY_TO_SLOT.items():
            if key not in obs:
                raise KeyError(f"env observation {i} has no camera key {key!r}; was the env "
                               f"created with camera_names=['agentview', 'robot0_eye_in_hand']?")
            img = _check_image(obs[key], key, i)
            img = camera_frame_for_policy(img, rotate_180, image_size)
            images[slot].append(np.ascontiguousarray(img.transpose(2, 0, 1)))  # (3, H, W)
        raw_states.append(raw_state_from_env_obs(obs, i))
    raw = np.stack(raw_states).astype(np.float32) if raw_states else np.zeros((0, STATE_DIM), np.float32)
    pi0_obs: dict[str, Any] = {f"image.{slot}": np.stack(imgs) if imgs else np.zeros((0, 3, 0, 0), np.uint8)
                               for slot, imgs in images.items()}  # uint8 (B, 3, H, W)
    pi0_obs["state"] = norm_stats.normalize_state(raw)  # float32 (B, 8)
    pi0_obs["prompt"] = [str(t) for t in task_descriptions]
    return pi0_obs, raw


def to_numpy(x: Any) -> np.ndarray:
    """A torch tensor (any device/dtype) or array-like -> float32 numpy, without importing torch."""
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


def _check_action_mode(action_mode: str) -> None:
    if action_mode not in ACTION_MODES:
        raise ValueError(f"action_mode={action_mode!r} is not one of {list(ACTION_MODES)}")


def _chunk_and_state(chunk: Any, state: Any) -> tuple[np.ndarray, np.ndarray]:
    chunk, state = to_numpy(chunk), to_numpy(state)
    if chunk.shape[-1] != ACTION_DIM or state.shape[-1] < NUM_RELATIVE_DIMS:
        raise ValueError(f"expected chunk (..., T, {ACTION_DIM}) and state (..., 8), got "
                         f"{chunk.shape} and {state.shape}")
    if chunk.shape[:-2] != state.shape[:-1]:
        raise ValueError(f"chunk batch shape {chunk.shape[:-2]} does not match state batch shape "
                         f"{state.shape[:-1]}")
    return chunk, state


def model_chunk_to_env_actions(norm_chunk: Any, chunk_start_raw_state: Any, norm_stats: NormStats,
                               action_mode: ActionMode = "relative") -> np.ndarray:
    """Normalised model chunk (B, T, 7) -> env actions (B, T, 7) in LIBERO's convention."""
    _check_action_mode(action_mode)
    chunk, state = _chunk_and_state(norm_chunk, chunk_start_raw_state)
    actions = norm_stats.unnormalize_action(chunk)  # (B, T, 7)
    if action_mode == "relative":
        actions[..., :NUM_RELATIVE_DIMS] += state[..., None, :NUM_RELATIVE_DIMS]
    return actions.astype(np.float32)


def env_actions_to_model_chunk(env_actions: Any, chunk_start_raw_state: Any, norm_stats: NormStats,
                               action_mode: ActionMode = "relative") -> np.ndarray:
    """Exact inverse of :func:`model_chunk_to_env_actions` (labels for the optimizer)."""
    _check_action_mode(action_mode)
    actions, state = _chunk_and_state(env_actions, chunk_start_raw_state)
    actions = actions.copy()
    if action_mode == "relative":
        actions[..., :NUM_RELATIVE_DIMS] -= state[..., None, :NUM_RELATIVE_DIMS]
    return norm_stats.normalize_action(actions)


def check_norm_stats_against_chunk(norm_stats: NormStats, unnormalised_chunk: Any,
                                   max_outside_fraction: float = 0.2, num_std: float = 4.0,
                                   expected_action_dim: int | None = None) -> str | None:
    """Start-up sanity check of the stats against the first predicted chunk.

    ``unnormalised_chunk`` is the model output after :meth:`NormStats.unnormalize_action`, still
    in model space (before adding the chunk-start state in relative mode), so it is comparable
    with the action statistics. Returns (and logs loudly) a warning when too many values fall
    outside q01..q99 (or mean +- ``num_std`` std when the file has no quantiles); None if fine.
    Wrong statistics are the most common silent failure with PI0 on LIBERO: the robot moves,
    just never sensibly.
    """
    chunk = to_numpy(unnormalised_chunk)
    want = expected_action_dim if expected_action_dim is not None else norm_stats.action_dim
    if chunk.shape[-1] != want or norm_stats.action_dim != want:
        message = (f"norm stats / model action dims disagree: stats have {norm_stats.action_dim}, "
                   f"the chunk has {chunk.shape[-1]}, expected {want}")
        logger.warning(message)
        return message
    if norm_stats.action_q01 is not None and norm_stats.action_q99 is not None:
        low, high, rule = norm_stats.action_q01, norm_stats.action_q99, "q01..q99"
    else:
        spread = num_std * norm_stats.action_std
        low, high = norm_stats.action_mean - spread, norm_stats.action_mean + spread
        rule = f"mean +- {num_std:g} std"
    outside = (chunk < low) | (chunk > high)
    fraction = float(outside.mean()) if outside.size else 0.0
    if fraction <= max_outside_fraction:
        return None
    per_dim = outside.reshape(-1, want).mean(axis=0)
    message = (
        f"NORM STATS MISMATCH? {fraction:.0%} of the first predicted chunk's unnormalised action "
        f"values lie outside the stats' {rule} range (threshold {max_outside_fraction:.0%}; "
        f"per dim {np.round(per_dim, 2).tolist()}). The norm_stats.json probably does not belong "
        f"to this checkpoint/dataset (or action_mode is wrong): the policy will act, but "
        f"nonsensically. Use the norm stats saved with the checkpoint."
    )
    logger.warning(message)
    return message


# Gripper -1 is "open" in LIBERO/robosuite; the wait steps must not close it on an object.
NOOP_ACTION = np.array([0, 0, 0, 0, 0, 0, -1], dtype=np.float32)


class EnvFault(RuntimeError):
    """A vectorised env (or one of its worker processes) failed; the env must be rebuilt."""


__all__ = [
    "ACTION_MODES", "ActionMode", "CAMERA_KEY_TO_SLOT", "EnvFault", "NOOP_ACTION", "NormStats",
    "check_norm_stats_against_chunk",
    "env_actions_to_model_chunk", "env_obs_to_pi0_observation", "load_norm_stats",
    "model_chunk_to_env_actions", "quat_to_axis_angle", "raw_state_from_env_obs",
    "resize_with_pad_like_openpi", "to_numpy",
]
