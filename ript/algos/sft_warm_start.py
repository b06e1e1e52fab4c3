"""Supervised warm start of PI0 from scripted demonstrations (flow-matching SFT).

RIPT-VLA's headline setting is RL on top of a policy that supervised learning left mediocre (few
demonstrations). This module produces such a start on the in-tree reach environment:

* :func:`norm_stats_from_demonstrations` / :func:`write_norm_stats_json`: the state / action
  statistics PI0 normalises with, computed from demos and written in the flat json layout that
  :func:`~ript.env_runner.pi0_runner_utils.load_norm_stats` reads;
* :func:`demonstration_windows`: demos cut into training windows by the RL optimizer's own
  :func:`~ript.algos.rl_optimizers.cfg_flow_math.cut_windows` (the observation converted exactly
  as the runner converts it, labels through the runner's inverse action transform), so SFT and
  RL train on one format;
* :func:`sft_warm_start`: flow-matching SFT with both CFG branches -- the conditional branch
  (``is_positive=1``) with each window's weight (1, or 0 for failed demos in CFGRL's offline
  recipe) and the unconditional one with ``uncond_weight`` (alpha), the same loss the RL update
  uses with the advantage weights replaced by demo weights. Training the unconditional
  branch here matters: CFG sampling (``cfg_scale != 1``) mixes both branches, and an untrained
  unconditional branch would make guidance meaningless from the first RL round on.

Command line (writes the bundled reach statistics, ``builtin:reach``)::

    python -m ript.algos.sft_warm_start norm-stats --out ript/assets/norm_stats/reach_norm_stats.json
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from tqdm import tqdm

from ript.algos.rl_optimizers.cfg_flow_math import (
    STEP_OBSERVATIONS_KEY,
    ActionMode,
    ShortWindow,
    Window,
    collate_windows,
    cut_windows,
    draw_noise_time,
    weighted_cfg_flow_loss,
)
from ript.env_runner.pi0_runner_utils import (
    CAMERA_KEY_TO_SLOT,
    NormStats,
    env_obs_to_pi0_observation,
    raw_state_from_env_obs,
)
from ript.types import ChunkObservation, Episode
from ript.utils.images import augment_camera_batch

logger = logging.getLogger(__name__)

OBS_KEYS = ("agentview_image", "robot0_eye_in_hand_image", "robot0_eef_pos", "robot0_eef_quat",
            "robot0_gripper_qpos")
# Dimensions with (almost) no spread -- the reach env's constant z / rotation / gripper -- would be
# divided by ~1e-6 when normalising, turning float noise into huge inputs. Their std is floored and
# their q01..q99 band widened by the same amount so the runner's start-up range check stays usable.
MIN_STD = 1e-2


# ------------------------------------------------------------------------------- norm stats
def _demo_obs(demo: Mapping[str, Any], t: int) -> dict[str, np.ndarray]:
    """The env observation dict of step ``t`` of a demo (per-step arrays -> one LIBERO dict)."""
    return {key: demo[key][t] for key in OBS_KEYS}


def _raw_states(demo: Mapping[str, Any]) -> np.ndarray:
    """float32 (T, 8) raw states of a demo, built like the runner builds them."""
    return np.stack([raw_state_from_env_obs(_demo_obs(demo, t), t) for t in range(len(demo["actions"]))])


def _stats(x: np.ndarray, min_std: float) -> dict[str, np.ndarray]:
    mean, std = x.mean(axis=0), x.std(axis=0)
    q01, q99 = np.quantile(x, 0.01, axis=0), np.quantile(x, 0.99, axis=0)
    flat = std < min_std
    std = np.where(flat, min_std, std)
    q01 = np.where(flat, np.minimum(q01, mean - min_std), q01)
    q99 = np.where(flat, np.maximum(q99, mean + min_std), q99)
    return {"mean": mean, "std": std, "q01": q01, "q99": q99}


def norm_stats_from_demonstrations(demos: Sequence[Mapping[str, Any]], min_std: float = MIN_STD) -> NormStats:
    """State (8) / action (7) mean, std, q01, q99 over every step of ``demos``.

    Demos are :func:`~ript.envs.reach_env.collect_demonstrations` dicts (per-step observation
    arrays + ``actions`` (T, 7)). Actions are taken as executed (absolute convention: with
    ``action_mode="relative"`` the model-space actions would need the chunk-start state
    subtracted first, which reach does not use). Dims with std < ``min_std`` get ``min_std``.
    """
    if not demos:
        raise ValueError("norm_stats_from_demonstrations needs at least one demonstration")
    states = np.concatenate([_raw_states(d) for d in demos]).astype(np.float64)  # (N, 8)
    actions = np.concatenate([np.asarray(d["actions"], np.float64) for d in demos])  # (N, 7)
    s, a = _stats(states, min_std), _stats(actions, min_std)
    return NormStats(state_mean=s["mean"], state_std=s["std"], action_mean=a["mean"], action_std=a["std"],
                     state_q01=s["q01"], state_q99=s["q99"], action_q01=a["q01"], action_q99=a["q99"])


def norm_stats_to_dict(stats: NormStats) -> dict[str, dict[str, list[float]]]:
    """The flat layout ``{"state": {mean, std, q01, q99}, "action": {...}}``."""
    out: dict[str, dict[str, list[float]]] = {}
    for group in ("state", "action"):
        out[group] = {}
        for stat in ("mean", "std", "q01", "q99"):
            value = getattr(stats, f"{group}_{stat}")
            if value is not None:
                out[group][stat] = [round(float(v), 7) for v in value]
    return out


def write_norm_stats_json(stats: NormStats, path: str | os.PathLike) -> Path:
    """Write ``stats`` in the flat layout (readable by ``load_norm_stats``); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(norm_stats_to_dict(stats), indent=2) + "\n", encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------- windows
def demo_to_episode(demo: Mapping[str, Any], norm_stats: NormStats, window_starts: Sequence[int],
                    n_action_steps: int = 50, rotate_images_180: bool = True) -> Episode:
    """A demo as the :class:`Episode` a runner would have recorded, executing it in chunks.

    Chunk starts are every ``n_action_steps`` steps (as the runner replans); the observations of
    other window starts go to ``extra["step_observations"]`` (only the entries that a window reads
    are filled, to keep memory small). Observations go through the runner's
    ``env_obs_to_pi0_observation``, so images are rotated and the state normalised identically.
    A demo with ``images_converted`` (recorded with ``image_size``: its frames are already the
    runner's conversion, flipped and resized) is not rotated or resized again.
    """
    if demo.get("images_converted"):
        rotate_images_180 = False
    num_steps = len(demo["actions"])
    chunk_starts = list(range(0, num_steps, n_action_steps))
    needed = sorted(set(chunk_starts) | {int(t) for t in window_starts if 0 <= t < num_steps})
    pi0_obs, raw = env_obs_to_pi0_observation([_demo_obs(demo, t) for t in needed],
                                              [demo["task_description"]] * len(needed), norm_stats,
                                              rotate_180=rotate_images_180)
    observations: dict[int, ChunkObservation] = {}
    for j, t in enumerate(needed):
        observations[t] = ChunkObservation(
            images={slot: pi0_obs[f"image.{slot}"][j] for slot in CAMERA_KEY_TO_SLOT.values()},
            state=pi0_obs["state"][j], raw_state=raw[j])
    step_observations: list[ChunkObservation | None] = [observations.get(t) for t in range(num_steps)]
    return Episode(
        task_name=str(demo["task_name"]), task_description=str(demo["task_description"]),
        task_id=int(demo["task_id"]), success=bool(demo["success"]), total_reward=float(bool(demo["success"])),
        actions=np.asarray(demo["actions"], dtype=np.float32),
        chunk_start_steps=np.asarray(chunk_starts, dtype=np.int64),
        chunk_observations=[observations[t] for t in chunk_starts],
        sampled_chunks=np.zeros((len(chunk_starts), n_action_steps, 7), np.float32),  # no policy sampled
        init_state=np.asarray(demo.get("init_state")) if demo.get("init_state") is not None else None,
        extra={STEP_OBSERVATIONS_KEY: step_observations},
    )


def demonstration_windows(demos: Sequence[Mapping[str, Any]], norm_stats: NormStats, n_action_steps: int = 50,
                          stride: int = 10, action_mode: ActionMode = "absolute",
                          rotate_images_180: bool = True, short_window: ShortWindow = "pad",
                          only_successful: bool = False, failed_cond_weight: float = 1.0) -> list[Window]:
    """Cut demos into the RL optimizer's training windows (weight 1).

    A window is the observation at step t (converted as the runner converts it) and the actions
    ``[t, t + n_action_steps)`` as model-space labels (through the runner's inverse transform,
    ``env_actions_to_model_chunk``). ``stride`` < ``n_action_steps`` gives overlapping windows (more
    SFT data from few demos). Windows running past the demo's end are kept with ``action_is_pad``
    (``short_window="pad"``, default: the final approach is the part that matters) or dropped
    (``"skip"``). ``only_successful`` drops failed demos (filtered BC); the default keeps them, as
    a low-quality dataset would.
    ``failed_cond_weight`` is the conditional-branch weight of a failed demo's windows (successful
    demos always get 1). 1.0 trains both branches on every demo; 0.0 is CFGRL's offline recipe:
    the conditional branch (``is_positive=1``) learns only from successes and the unconditional
    one from everything, so the two branches differ from the start and guidance (``cfg_scale``
    > 1) has a direction to amplify before RL begins.
    """
    if stride < 1:
        raise ValueError(f"stride={stride} must be >= 1")
    if failed_cond_weight < 0:
        raise ValueError(f"failed_cond_weight={failed_cond_weight} must be >= 0 (0: CFGRL's offline recipe, "
                         "1: both branches on every demo)")
    windows: list[Window] = []
    for i, demo in enumerate(demos):
        if only_successful and not demo["success"]:
            continue
        starts = list(range(0, len(demo["actions"]), stride))
        episode = demo_to_episode(demo, norm_stats, starts, n_action_steps, rotate_images_180)
        aligned = stride == n_action_steps
        weight = 1.0 if demo["success"] else float(failed_cond_weight)
        ws, _ = cut_windows(episode, weight, norm_stats, window_stride=stride,
                            window_mode="aligned" if aligned else "stride", short_window=short_window,
                            n_action_steps=n_action_steps, action_mode=action_mode, episode_index=i)
        windows.extend(ws)
    if not windows:
        raise ValueError(f"no SFT windows from {len(demos)} demos (short_window={short_window!r}, "
                         f"only_successful={only_successful}); use short_window='pad' or more demos")
    return windows


# ----------------------------------------------------------------------------------- SFT
def _sft_optimizer(policy: Any, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    params = [p for group in ("model", "header") for p in policy.trainable_params[group] if p.requires_grad]
    return torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=weight_decay)


def _lr_at(step: int, num_steps: int, lr: float, warmup: int, min_lr_ratio: float) -> float:
    """Linear warm-up, then cosine decay to ``min_lr_ratio * lr``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, num_steps - warmup)
    return lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def _batch_order(num_windows: int, batch_size: int, gen: torch.Generator, order: list[int]) -> tuple[list[int], list[int]]:
    """The next batch's window indices (reshuffled epochs from ``gen``) and what is left of ``order``."""
    if len(order) < batch_size:
        order = order + torch.randperm(num_windows, generator=gen).tolist()
    return order[:batch_size], order[batch_size:]


def sft_warm_start(policy: Any, windows: Sequence[Window], num_steps: int = 300, batch_size: int = 16,
                   lr: float = 1e-3, uncond_weight: float = 0.1, seed: int = 0, grad_norm_clip: float = 1.0,
                   weight_decay: float = 1e-4, warmup_steps: int = 20, min_lr_ratio: float = 0.1,
                   progress: bool = True, start_step: int = 0, optimizer_state: Mapping[str, Any] | None = None,
                   checkpoint_every: int = 0, on_checkpoint: Callable[[int, torch.optim.Optimizer, list[float]], None]
                   | None = None, autocast_dtype: torch.dtype | None = None,
                   on_log: Callable[[int, float], None] | None = None,
                   image_augmentation: bool = False) -> list[float]:
    """Flow-matching SFT of ``policy`` on ``windows``; returns the per-step loss curve (steps run here).

    Loss per batch: ``mean_i (w_i * L_pos_i + uncond_weight * L_uncond_i)``, ``w_i`` the window's
    weight (1 for every demo, or 0 for failed ones: see :func:`demonstration_windows`), via
    ``policy.cfg_flow_losses`` (shared noise/time, one prefix pass) and ``weighted_cfg_flow_loss``
    -- the RL loss with demo weights in place of advantage weights. Batches are drawn with replacement-free
    reshuffles from a generator seeded by ``seed``; noise/time per (step, slot) from
    ``draw_noise_time``, so the run is deterministic given ``seed`` (on one device and thread
    setting). All trainable parameters share one AdamW (warm-up + cosine).

    Resuming: ``start_step`` > 0 with the saved ``optimizer_state`` (and the weights already in
    ``policy``) continues the same run -- the batch order is replayed up to ``start_step`` (it
    depends only on ``seed``, the number of windows and ``batch_size``), noise/time are per step,
    so an interrupted-and-resumed run takes the steps an uninterrupted one would.
    ``on_checkpoint(step, optimizer, losses)`` is called after every ``checkpoint_every``-th step
    (``step`` = steps done) and after the last one. ``autocast_dtype`` (e.g. ``torch.bfloat16`` on
    cuda) runs the forward under autocast; weights and optimizer stay in their own dtype.
    ``image_augmentation``: every window's frames are augmented afresh at every step
    (:func:`ript.utils.images.augment_camera_batch`, seeded per (step, slot) like the noise).
    """
    if num_steps < 1 or batch_size < 1 or lr <= 0:
        raise ValueError(f"num_steps={num_steps}, batch_size={batch_size}, lr={lr}: all must be positive")
    if not 0 <= start_step <= num_steps:
        raise ValueError(f"start_step={start_step} must be in [0, num_steps={num_steps}]")
    if not windows:
        raise ValueError("sft_warm_start needs at least one window (see demonstration_windows)")
    policy.train()
    optimizer = _sft_optimizer(policy, lr, weight_decay)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    noise_dim = int(policy.config.max_action_dim)
    device = getattr(policy, "device", torch.device("cpu"))
    gen = torch.Generator().manual_seed(int(seed))
    order: list[int] = []
    for _ in range(start_step):  # replay the batch order of the steps already taken
        _, order = _batch_order(len(windows), batch_size, gen, order)
    losses: list[float] = []
    bar = tqdm(range(start_step, num_steps), desc="sft", disable=not progress, leave=False,
               initial=start_step, total=num_steps)
    for step in bar:
        idx, order = _batch_order(len(windows), batch_size, gen, order)
        batch = collate_windows([windows[i] for i in idx])
        weights = batch.pop("weights")  # (n,) conditional-branch weight of each window's demo
        seeds = [int(np.random.SeedSequence([seed, step, k]).generate_state(1)[0]) for k in range(len(idx))]
        noise, time = draw_noise_time(seeds, batch["action"].shape[1], noise_dim)
        if image_augmentation:
            augment_camera_batch(batch, [int(np.random.SeedSequence([seed, step, k, 1]).generate_state(1)[0])
                                         for k in range(len(idx))])
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, num_steps, lr, warmup_steps, min_lr_ratio)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=torch.device(device).type, dtype=autocast_dtype or torch.float32,
                            enabled=autocast_dtype is not None):
            out = policy.cfg_flow_losses(batch, noise=noise, time=time)
        loss, _ = weighted_cfg_flow_loss(out["losses_pos"].float(), out["losses_uncond"].float(),
                                         weights.to(out["losses_pos"].device),
                                         batch["action_is_pad"].to(out["losses_pos"].device), uncond_weight)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, grad_norm_clip)
        optimizer.step()
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
        if on_log is not None:
            on_log(step + 1, losses[-1])
        done = step + 1
        if on_checkpoint is not None and (done == num_steps or (checkpoint_every and done % checkpoint_every == 0)):
            on_checkpoint(done, optimizer, losses)
    if losses:
        logger.info("SFT: steps %d..%d, loss %.4f -> %.4f (mean of last 20: %.4f)", start_step, num_steps,
                    losses[0], losses[-1], float(np.mean(losses[-20:])))
    return losses


# ----------------------------------------------------------------------------------- CLI
def reach_env_config_from_task_yaml(overrides: Sequence[str] = ()) -> Any:
    """ReachEnvConfig with the env settings of ``config/task/reach_rl.yaml`` (Hydra compose)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from ript.envs.reach_env import ReachEnvConfig

    config_dir = str(Path(__file__).resolve().parents[2] / "config")
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        cfg = compose(config_name="train_base_rl_openvla_oft", overrides=["task=reach_rl", *overrides])
    return ReachEnvConfig(**OmegaConf.to_container(cfg.task.env_config, resolve=True))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ns = sub.add_parser("norm-stats", help="reach norm stats from clean expert demos (reach_rl env settings)")
    ns.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "assets" / "norm_stats"
                                         / "reach_norm_stats.json"))
    ns.add_argument("--n-per-task", type=int, default=50)
    ns.add_argument("--seed", type=int, default=12345)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from ript.envs.reach_env import collect_demonstrations

    config = reach_env_config_from_task_yaml()
    demos = collect_demonstrations(None, args.n_per_task, args.seed, config=config)
    path = write_norm_stats_json(norm_stats_from_demonstrations(demos), args.out)
    logger.info("wrote %s from %d expert demos (max_speed=%s)", path, len(demos), config.max_speed)


if __name__ == "__main__":
    main()
