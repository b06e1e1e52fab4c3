"""Pure maths of the CFG-Flow RL update: RLOO, advantage weights, training windows, the loss.

Nothing here imports a simulator or a model (STYLE item 2), so every function can be tested with
hand-derived numbers. The only outside dependency is the runner utilities' inverse action
transform (``env_actions_to_model_chunk``), imported lazily by :func:`cut_windows` because
labels must be rebuilt with exactly the transform the runner inverts at execution time.

Method references (paraphrased, not copied):

* RLOO (RIPT-VLA, Tan et al. 2025): the K rollouts from one initial state form a group; each
  rollout's baseline is the mean reward of the *other* K-1 rollouts, an unbiased baseline that
  needs no value function.
* CFGRL (Frans et al. 2025): a flow policy conditioned on an optimality bit ``is_positive``. The
  conditional branch is trained only on data judged good (here: advantage > 0, weighted by the
  advantage), the unconditional branch on all data; sampling mixes the two velocities with a
  guidance scale. Both branches see the same noise and time so their difference is a clean
  guidance direction.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Sequence, get_args

import numpy as np
import torch

if TYPE_CHECKING:  # only for annotations; the runner utils are imported lazily at call time
    from ript.types import ChunkObservation, Episode

logger = logging.getLogger(__name__)

WeightMode = Literal["clip", "std_normalized", "binary", "exp", "signed"]
WindowMode = Literal["aligned", "stride", "last", "gripper", "first"]
CreditWindows = Literal["all", "first"]
ShortWindow = Literal["skip", "pad"]
ActionMode = Literal["relative", "absolute"]
EpisodeWeighting = Literal["window", "episode"]
UncondScope = Literal["all", "successes"]

# Key in ``Episode.extra`` holding one ChunkObservation per executed step (length T). Runners
# record only chunk-start observations by default; windows that start mid-chunk need this.
STEP_OBSERVATIONS_KEY = "step_observations"

# Flow-matching time distribution of PI0/openpi: t = 0.001 + 0.999 * Beta(1.5, 1).
_TIME_BETA_ALPHA = 1.5
_TIME_MIN = 0.001


def check_literal(name: str, value: Any, literal: Any) -> None:
    """Raise a ValueError naming the key, the value and the allowed choices."""
    choices = get_args(literal)
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not one of {list(choices)}; pick one of those")


# ----------------------------------------------------------------------------------------- RLOO
def rloo_advantages(
    rewards: Sequence[float] | np.ndarray | torch.Tensor,
    rloo_batch_size: int,
    valid_mask: Sequence[bool] | np.ndarray | torch.Tensor | None = None,
) -> torch.Tensor:
    """Leave-one-out advantages over groups of ``rloo_batch_size`` rollouts of one init state.

    ``rewards`` is laid out (demo_batch, rloo_batch) flattened, i.e. the K rollouts of one init
    state are consecutive (RIPT's rollout generator order). Within a group with n valid entries
    and reward sum S, ``adv_i = r_i - (S - r_i) / (n - 1)``. Padding entries (``valid=False``)
    get 0 and are excluded from their group's baselines; a group with < 2 valid entries has no
    leave-one-out baseline, so all its advantages are 0.

    Returns float32 (D*K,).
    """
    r = torch.as_tensor(np.asarray(rewards, dtype=np.float64) if not isinstance(rewards, torch.Tensor)
                        else rewards.detach().double())
    if r.ndim != 1:
        raise ValueError(f"rewards must be 1-D (demo_batch*rloo_batch,), got shape {tuple(r.shape)}")
    if rloo_batch_size < 2:
        raise ValueError(f"rloo_batch_size={rloo_batch_size}: RLOO needs >= 2 rollouts per init state")
    if r.numel() % rloo_batch_size != 0:
        raise ValueError(
            f"{r.numel()} rewards are not a whole number of groups of rloo_batch_size={rloo_batch_size}; "
            "the rollout generator must pad to demo_batch_size * rloo_batch_size"
        )
    if valid_mask is None:
        valid = torch.ones_like(r, dtype=torch.bool)
    else:
        valid = torch.as_tensor(np.asarray(valid_mask, dtype=bool) if not isinstance(valid_mask, torch.Tensor)
                                else valid_mask.detach().bool().cpu())
        if valid.shape != r.shape:
            raise ValueError(f"valid_mask shape {tuple(valid.shape)} != rewards shape {tuple(r.shape)}")
    r = torch.where(valid, r, torch.zeros_like(r))  # padding rewards never enter a baseline
    r_g = r.view(-1, rloo_batch_size)  # (D, K)
    v_g = valid.view(-1, rloo_batch_size).double()  # (D, K)
    n = v_g.sum(dim=1, keepdim=True)  # (D, 1) valid rollouts per group
    s = r_g.sum(dim=1, keepdim=True)  # (D, 1)
    baseline = (s - r_g) / (n - 1).clamp_min(1.0)  # (D, K) mean of the others
    adv = (r_g - baseline) * v_g * (n >= 2).double()  # (D, K)
    return adv.reshape(-1).float()


# --------------------------------------------------------------------------- advantage weights
def advantage_weights(
    adv: torch.Tensor,
    mode: WeightMode = "clip",
    a_max: float = 5.0,
    temperature: float = 1.0,
    valid_mask: torch.Tensor | None = None,
    eps: float = 1e-8,
) -> torch.Tensor:
    """Conditional-branch weight ``w(adv)`` in ``[0, a_max]``; only ``adv > 0`` gets weight
    (except ``signed``, in ``[-a_max, a_max]``).

    CFGRL trains the ``is_positive=1`` branch on the good part of the data; we keep that
    selection (adv <= 0 -> w = 0) and, like advantage-weighted regression, let larger advantages
    count more, clipped to ``a_max`` so one lucky group cannot dominate the step.

    Modes:
        clip: ``w = clip(adv / T, 0, a_max)``.
        std_normalized: ``w = clip(adv / (std(adv_valid) * T), 0, a_max)``; std over the valid
            entries (population std). All-equal rewards give adv = 0 -> w = 0 (eps keeps 0/0 finite).
        binary: ``w = 1[adv > 0]`` (CFGRL's optimality indicator; T ignored), then clipped.
        exp: ``w = 1[adv > 0] * min(exp(adv / T), a_max)`` (AWR-style exponential weight).
        signed: ``w = clip(adv / T, -a_max, a_max)``: failures get negative weight. RLOO advantages
            sum to zero over a group, so the pull that every own sample exerts (training on what the
            policy itself generated drifts it, even when all of it succeeded) cancels within the
            group and what is left is the success-minus-failure direction. Nothing bounds the
            failures' term, though: on LIBERO it collapsed the policy in 3-6 rounds (docs/learning_libero.md).
    Invalid entries (``valid_mask`` False) get 0.
    """
    check_literal("weight_mode", mode, WeightMode)
    if a_max <= 0:
        raise ValueError(f"a_max={a_max} must be > 0: weights are clipped to [0, a_max] "
                         "([-a_max, a_max] when signed)")
    if temperature <= 0:
        raise ValueError(f"advantage_temperature={temperature} must be > 0")
    adv = adv.detach().float()
    valid = torch.ones_like(adv, dtype=torch.bool) if valid_mask is None else valid_mask.bool().to(adv.device)
    if mode == "signed":
        w = (adv / temperature).clamp(-a_max, a_max)
        return torch.where(valid, w, torch.zeros_like(w))
    positive = (adv > 0) & valid
    if mode == "clip":
        w = adv / temperature
    elif mode == "std_normalized":
        vals = adv[valid]
        std = vals.std(unbiased=False) if vals.numel() > 1 else adv.new_tensor(0.0)
        w = adv / ((std + eps) * temperature)
    elif mode == "binary":
        w = torch.ones_like(adv)
    else:  # "exp"
        # Clamp the exponent first: the result is clipped to a_max anyway, and exp must not overflow.
        w = torch.exp(torch.clamp(adv / temperature, max=float(np.log(a_max)) + 1.0))
    w = torch.where(positive, w, torch.zeros_like(w))
    return w.clamp(0.0, a_max)


# ------------------------------------------------------------------------------------ windows
@dataclass
class Window:
    """One training sample: the observation at step t and the 50 executed actions from t."""

    images: dict[str, np.ndarray]  # slot ("base_0_rgb", ...) -> uint8 (3, H, W)
    state: np.ndarray  # float32 (8,) normalised state at t
    prompt: str
    action: np.ndarray  # float32 (n_action_steps, 7) model-space labels (normalised)
    action_is_pad: np.ndarray  # bool (n_action_steps,) True where the episode had ended
    weight: float  # the episode's conditional-branch weight w(adv)
    episode_index: int = -1
    start_step: int = 0
    task_name: str = ""
    success: bool = False  # the episode's outcome (alpha scope, failure-share diagnostics)
    uncond_weight: float | None = None  # this window's alpha; None = the optimizer's scalar alpha
    # False: outside the span that carries the episode's credit (credit_windows="first" leaves only
    # the first window credited): no conditional-branch weight, held by the output anchor instead.
    credited: bool = True


def window_starts(
    num_steps: int,
    chunk_start_steps: Sequence[int],
    window_mode: WindowMode,
    window_stride: int,
    n_action_steps: int,
) -> list[int]:
    """Candidate window start steps (before the short-window rule) for an episode of T steps.

    aligned: the recorded chunk starts (what the policy actually sampled); ``window_stride``
        must equal ``n_action_steps``.
    stride: 0, s, 2s, ... < T (openpi-style sliding windows when s < 50).
    last: the chunk starts too; :func:`cut_windows` keeps only the last usable one.
    gripper: the chunk starts too; :func:`cut_windows` keeps only the windows in which the executed
        gripper command switches (grasp or release), where a pick-and-place is won or lost.
    first: the chunk starts too; :func:`cut_windows` keeps only the episode's first chunk. Every
        episode of an RLOO group starts from the same init state and settles with the same steps,
        so on LIBERO-Object their first windows share one observation (tested in
        tests/ript/env_runner/test_pi0_libero_runner.py): successes and failures are compared at
        the same input, the only window where that holds.
    """
    check_literal("window_mode", window_mode, WindowMode)
    if window_stride < 1:
        raise ValueError(f"window_stride={window_stride} must be >= 1")
    if window_mode in ("aligned", "last", "gripper", "first"):
        if window_stride != n_action_steps:
            raise ValueError(
                f"window_mode={window_mode!r} cuts windows at the chunk starts, so window_stride="
                f"{window_stride} must equal n_action_steps={n_action_steps}; use window_mode='stride' "
                "for other strides"
            )
        return [int(t) for t in chunk_start_steps if 0 <= int(t) < num_steps]
    return list(range(0, num_steps, window_stride))


def gripper_switches(actions: Any, t: int, n_action_steps: int) -> bool:
    """Whether the executed gripper command (LIBERO's last action dim: < 0 open, > 0 close) changes
    sign within window [t, t + H), counting a change from step t - 1 to step t."""
    gripper = np.sign(np.asarray(actions, dtype=np.float32)[max(t - 1, 0) : t + n_action_steps, -1])  # (<=H+1,)
    return bool(np.any(gripper[1:] != gripper[:-1]))


def _observation_at(episode: "Episode", t: int, n_action_steps: int) -> "ChunkObservation":
    """The observation the policy saw at step t: a chunk-start record, else a per-step record."""
    starts = [int(s) for s in episode.chunk_start_steps]
    if t in starts:
        return episode.chunk_observations[starts.index(t)]
    step_obs = episode.extra.get(STEP_OBSERVATIONS_KEY)
    if step_obs is None:
        raise ValueError(
            f"a window starts at step {t}, which is not a chunk start (chunk starts {starts[:6]}...), and "
            f"the episode has no per-step observations (episode.extra[{STEP_OBSERVATIONS_KEY!r}]). Runners "
            f"record observations only at chunk starts: use window_mode='aligned' (or window_stride a "
            f"multiple of n_action_steps={n_action_steps}), or make the runner record every step's observation"
        )
    if len(step_obs) < episode.num_steps:
        raise ValueError(
            f"episode.extra[{STEP_OBSERVATIONS_KEY!r}] has {len(step_obs)} observations for "
            f"{episode.num_steps} steps; it needs one per executed step"
        )
    return step_obs[t]


def clip_to_executed(env_actions: np.ndarray, arm_bound: float = 1.0) -> np.ndarray:
    """What robosuite/LIBERO actually executes for a commanded env action (RL_LIBERO_FINDINGS #3).

    The OSC controller clips the six arm dims to ``[-arm_bound, arm_bound]`` and the gripper
    (dim 6) acts on the command's sign only, so an overshooting or near-zero sampled command was
    executed as its clipped / signed version. Labels built from the clipped actions teach the
    policy what ran, like the SFT labels (arm in [-1, 1], gripper exactly +-1). A gripper command
    of exactly 0 stays 0. env_actions (..., 7) in env space (after unnormalising and, in relative
    mode, adding the chunk-start state) -> same shape, float32.
    """
    a = np.array(env_actions, dtype=np.float32, copy=True)
    if a.shape[-1] < 7:
        raise ValueError(f"clip_to_executed needs 7-dim env actions (6 arm + gripper), got shape {a.shape}")
    if arm_bound <= 0:
        raise ValueError(f"arm_bound={arm_bound} must be > 0")
    a[..., :6] = np.clip(a[..., :6], -arm_bound, arm_bound)
    a[..., 6] = np.sign(a[..., 6])
    return a


def _labels(
    episode: "Episode", t: int, raw_state: np.ndarray, norm_stats: Any, n_action_steps: int, action_mode: ActionMode,
    clip_labels: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Model-space labels of window [t, t+H) from the executed actions; edge-padded + pad mask."""
    from ript.env_runner.pi0_runner_utils import env_actions_to_model_chunk

    executed = np.asarray(episode.actions[t : t + n_action_steps], dtype=np.float32)  # (L, 7)
    if clip_labels:
        # In env space, before the inverse transform: relative labels are then (clipped - state).
        executed = clip_to_executed(executed)  # (L, 7)
    real = env_actions_to_model_chunk(
        executed[None], np.asarray(raw_state, dtype=np.float32)[None], norm_stats, action_mode
    )[0]  # (L, 7)
    real = np.asarray(real, dtype=np.float32)
    n_real = real.shape[0]
    is_pad = np.zeros(n_action_steps, dtype=bool)
    is_pad[n_real:] = True
    if n_real < n_action_steps:
        # Padded steps are masked out of the loss; repeating the last label (lerobot's edge
        # padding) keeps the noisy-action input in range rather than feeding zeros.
        real = np.concatenate([real, np.repeat(real[-1:], n_action_steps - n_real, axis=0)], axis=0)
    return real, is_pad  # (H, 7), (H,)


def cut_windows(
    episode: "Episode",
    weight: float,
    norm_stats: Any,
    *,
    window_stride: int = 50,
    window_mode: WindowMode = "aligned",
    short_window: ShortWindow = "skip",
    n_action_steps: int = 50,
    action_mode: ActionMode = "relative",
    episode_index: int = -1,
    clip_labels: bool = False,
    credit_windows: CreditWindows = "all",
) -> tuple[list[Window], int]:
    """Cut one episode into training windows ``[t, t + n_action_steps)``.

    Labels are rebuilt from the *executed* env actions and the raw state at t through the
    runner's inverse transform (relative dims 0..5 minus ``state[:6]``, then normalised), so with
    aligned windows they equal the sampled normalised chunks (the supervision matches what ran).
    Windows shorter than ``n_action_steps`` (episode ended by success or the step cap) are
    skipped, or with ``short_window="pad"`` kept with ``action_is_pad`` marking the missing steps.
    Windows that start mid-chunk (``window_mode="stride"`` with a stride that is not a multiple of
    the chunk length) need ``episode.extra["step_observations"]``; without it a ValueError says so.
    ``clip_labels``: labels from :func:`clip_to_executed` actions (LIBERO's executed commands).
    ``credit_windows="first"``: every window but the episode's first gets weight 0 and
    ``credited=False`` (the first window, as ``window_mode="first"`` keeps it).

    Returns ``(windows, n_skipped_short)``. Invalid (padding) episodes give no windows.
    """
    check_literal("short_window", short_window, ShortWindow)
    check_literal("action_mode", action_mode, ActionMode)
    check_literal("credit_windows", credit_windows, CreditWindows)
    if not episode.valid or episode.num_steps == 0:
        return [], 0
    starts = window_starts(episode.num_steps, episode.chunk_start_steps, window_mode, window_stride, n_action_steps)
    kept: list[int] = []
    n_skipped = 0
    for t in starts:
        if episode.num_steps - t < n_action_steps and short_window == "skip":
            n_skipped += 1
            continue
        kept.append(t)
    if window_mode == "last" and kept:
        kept = kept[-1:]
    if window_mode == "gripper":
        kept = [t for t in kept if gripper_switches(episode.actions, t, n_action_steps)]
    first_start = starts[0] if starts else None
    if window_mode == "first":
        kept = [t for t in kept if t == first_start]
    windows = []
    for t in kept:
        obs = _observation_at(episode, t, n_action_steps)
        action, is_pad = _labels(episode, t, obs.raw_state, norm_stats, n_action_steps, action_mode, clip_labels)
        credited = credit_windows == "all" or t == first_start
        windows.append(
            Window(
                images={k: np.asarray(v) for k, v in obs.images.items()},
                state=np.asarray(obs.state, dtype=np.float32),
                prompt=episode.task_description,
                action=action,
                action_is_pad=is_pad,
                weight=float(weight) if credited else 0.0,
                episode_index=episode_index,
                start_step=t,
                task_name=episode.task_name,
                success=bool(episode.success),
                credited=credited,
            )
        )
    return windows, n_skipped


def collate_windows(windows: Sequence[Window]) -> dict[str, Any]:
    """Stack windows into a PI0 training batch (the policy contract's observation + labels).

    Returns ``{"image.<slot>": uint8 (N,3,H,W), "state": float32 (N,8), "prompt": list[str],
    "action": float32 (N,H,7), "action_is_pad": bool (N,H), "weights": float32 (N,)}``.
    """
    if not windows:
        raise ValueError("collate_windows needs at least one window")
    slots = sorted(windows[0].images)
    for w in windows:
        if sorted(w.images) != slots:
            raise ValueError(f"windows carry different image slots: {sorted(w.images)} vs {slots}")
    batch: dict[str, Any] = {}
    for slot in slots:
        imgs = np.stack([np.asarray(w.images[slot]) for w in windows])  # (N, 3, H, W)
        if imgs.dtype != np.uint8 or imgs.ndim != 4 or imgs.shape[1] != 3:
            raise ValueError(f"image slot {slot!r}: expected uint8 (N,3,H,W), got {imgs.dtype} {imgs.shape}")
        batch[f"image.{slot}"] = torch.from_numpy(imgs)
    batch["state"] = torch.from_numpy(np.stack([w.state for w in windows]).astype(np.float32))  # (N, 8)
    batch["prompt"] = [w.prompt for w in windows]
    batch["action"] = torch.from_numpy(np.stack([w.action for w in windows]).astype(np.float32))  # (N, H, 7)
    batch["action_is_pad"] = torch.from_numpy(np.stack([w.action_is_pad for w in windows]).astype(bool))  # (N, H)
    batch["weights"] = torch.tensor([w.weight for w in windows], dtype=torch.float32)  # (N,)
    if all(w.uncond_weight is not None for w in windows):
        batch["uncond_weights"] = torch.tensor([w.uncond_weight for w in windows], dtype=torch.float32)  # (N,)
    return batch


# --------------------------------------------------------------------------------------- loss
def masked_window_mse(losses: torch.Tensor, action_is_pad: torch.Tensor, action_dim: int = 7) -> torch.Tensor:
    """Per-window mean of element losses over non-pad steps and the first ``action_dim`` dims.

    ``torch.where`` (not a multiply) keeps inf/NaN at padded positions out of the result.
    losses (N, H, D>=action_dim), action_is_pad (N, H) -> (N,).
    """
    if losses.ndim != 3 or losses.shape[-1] < action_dim:
        raise ValueError(f"losses must be (N, H, >= {action_dim}), got {tuple(losses.shape)}")
    real = losses[..., :action_dim]  # (N, H, 7): padding action dims never count
    keep = ~action_is_pad.to(device=losses.device, dtype=torch.bool)  # (N, H)
    if keep.shape != real.shape[:2]:
        raise ValueError(f"action_is_pad shape {tuple(keep.shape)} != losses (N, H) {tuple(real.shape[:2])}")
    masked = torch.where(keep[..., None], real, torch.zeros_like(real))  # (N, H, 7)
    denom = (keep.sum(dim=1) * action_dim).clamp_min(1).to(real.dtype)  # (N,)
    return masked.sum(dim=(1, 2)) / denom  # (N,)


def weighted_cfg_flow_loss(
    losses_pos: torch.Tensor,
    losses_uncond: torch.Tensor,
    weights: torch.Tensor,
    action_is_pad: torch.Tensor,
    uncond_weight: float | torch.Tensor = 0.1,
    *,
    normalizer: float | None = None,
    window_mask: torch.Tensor | None = None,
    action_dim: int = 7,
) -> tuple[torch.Tensor, dict[str, float]]:
    """CFGRL loss ``sum_i (w_i * L_pos_i + alpha_i * L_uncond_i) / normalizer``.

    ``uncond_weight`` is one alpha for every window, or a (N,) tensor of per-window alphas
    (:func:`window_alphas`, :func:`episode_window_scales`).

    ``L_pos_i`` / ``L_uncond_i`` are per-window MSEs (:func:`masked_window_mse`) of the
    ``is_positive=1`` / ``=0`` branches. ``normalizer`` defaults to the number of counted
    windows (a plain mean). The optimizer passes the window count of the whole optimisation step
    instead, so summing micro-batch gradients gives exactly the big-batch gradient regardless of
    how windows are split into micro-batches. ``window_mask`` (N,) 0/1 drops filler windows
    entirely (both terms); windows with ``w = 0`` still contribute ``alpha * L_uncond``.

    Returns ``(scalar loss, metrics)``; metrics are means over the counted windows:
    ``fm_loss`` (w*L_pos + alpha*L_uncond), ``fm_loss_pos`` (w*L_pos, the weighted conditional
    term), ``fm_loss_pos_unweighted``, ``fm_loss_uncond`` (without alpha),
    ``positive_window_ratio`` and ``num_windows``.
    """
    l_pos = masked_window_mse(losses_pos, action_is_pad, action_dim)  # (N,)
    l_unc = masked_window_mse(losses_uncond, action_is_pad, action_dim)  # (N,)
    if isinstance(uncond_weight, torch.Tensor):
        if uncond_weight.shape != l_unc.shape or bool((uncond_weight < 0).any()):
            raise ValueError(f"per-window alphas must be >= 0 with shape {tuple(l_unc.shape)}, got "
                             f"{tuple(uncond_weight.shape)}")
        uncond_weight = uncond_weight.to(device=l_unc.device, dtype=l_unc.dtype)  # (N,)
    elif uncond_weight < 0:
        raise ValueError(f"cfg_uncond_weight={uncond_weight} must be >= 0")
    w = weights.to(device=l_pos.device, dtype=l_pos.dtype)  # (N,)
    keep = (torch.ones_like(w, dtype=torch.bool) if window_mask is None
            else window_mask.to(device=l_pos.device).bool())  # (N,)
    # Only filler windows (keep=False) are masked with `where`; a non-finite L_pos of a real
    # window stays visible (even at w=0, since 0*inf=nan) so the optimizer can skip the step.
    per_window = w * l_pos + uncond_weight * l_unc  # (N,)
    per_window = torch.where(keep, per_window, torch.zeros_like(per_window))
    n = int(keep.sum())
    denom = float(normalizer) if normalizer is not None else float(max(n, 1))
    if denom <= 0:
        raise ValueError(f"normalizer={normalizer} must be > 0")
    loss = per_window.sum() / denom
    with torch.no_grad():
        k = keep.to(l_pos.dtype)
        cnt = max(n, 1)
        metrics = {
            "fm_loss": float((per_window * k).sum() / cnt),
            "fm_loss_pos": float(torch.where(keep, w * l_pos, torch.zeros_like(l_pos)).sum() / cnt),
            "fm_loss_pos_unweighted": float(torch.where(keep, l_pos, torch.zeros_like(l_pos)).sum() / cnt),
            "fm_loss_uncond": float(torch.where(keep, l_unc, torch.zeros_like(l_unc)).sum() / cnt),
            "positive_window_ratio": float(((w > 0) & keep).to(l_pos.dtype).sum() / cnt),
            "num_windows": float(n),
        }
    return loss, metrics


# ------------------------------------------------------- who counts how much (issue 19/20)
def episode_window_scales(episode_index: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """Per-window factors that give every episode the same total weight (RL_LIBERO_FINDINGS #1).

    With per-window weighting an episode counts once per window, so a failed LIBERO episode that
    runs the full 280 steps (~6 windows) counts twice a success (~3). Window i of episode e gets
    ``n_bar / n_e``: n_e = windows of e, n_bar = N / E the mean windows per episode. Each
    episode's windows then sum to n_bar and all N factors still sum to N, so the loss keeps its
    scale. episode_index (N,) -> float32 (N,).
    """
    idx = torch.as_tensor(np.asarray(episode_index, dtype=np.int64) if not isinstance(episode_index, torch.Tensor)
                          else episode_index.long())
    if idx.numel() == 0:
        return torch.zeros(0)
    _, inverse, counts = torch.unique(idx, return_inverse=True, return_counts=True)
    n_bar = idx.numel() / counts.numel()
    return (n_bar / counts[inverse].double()).float()  # (N,)


def window_alphas(success: Sequence[bool] | torch.Tensor, alpha: float, scope: UncondScope = "all") -> torch.Tensor:
    """Per-window weight of the unconditional (alpha) term.

    all: alpha for every window (CFGRL: the unconditional branch models all data).
    successes: alpha for windows of successful (or replayed successful) episodes, 0 for failures:
        the shared trunk is no longer pulled towards failed behaviour (issue 19's suspect #1).
    success (N,) bool -> float32 (N,).
    """
    check_literal("uncond_scope", scope, UncondScope)
    if alpha < 0:
        raise ValueError(f"cfg_uncond_weight={alpha} must be >= 0")
    ok = torch.as_tensor(np.asarray(success, dtype=bool) if not isinstance(success, torch.Tensor) else success.bool())
    if scope == "all":
        return torch.full(ok.shape, float(alpha))
    return torch.where(ok, torch.tensor(float(alpha)), torch.tensor(0.0))


def failed_weight_share(weights: torch.Tensor, success: torch.Tensor) -> float:
    """Share of a loss term's total weight that sits on failed episodes' windows (0 if no weight).

    The diagnostic issue 19 asks for: at success 0.25 with per-window weighting about half the
    alpha term is failures."""
    w = weights.detach().double()
    total = float(w.sum())
    return float(w[~success.bool()].sum()) / total if total > 0 else 0.0


# ---------------------------------------------------------------- parameter-space terms
def l2_anchor_(params: Sequence[torch.Tensor], reference: Sequence[torch.Tensor], coef: float) -> float:
    """Add the gradient of ``coef/2 * ||theta - theta_0||^2`` to each parameter's grad, in place.

    An anchor to the start (SFT) weights: it pulls every parameter back in proportion to how far
    it moved, so RL on self-generated labels cannot drift far from a policy that worked (issue 19;
    issue 20: a drifting policy is also one whose K rollouts collapse). Returns the penalty value.
    """
    if coef < 0:
        raise ValueError(f"anchor_l2={coef} must be >= 0")
    if len(params) != len(reference):
        raise ValueError(f"{len(params)} parameters but {len(reference)} reference tensors")
    penalty = 0.0
    if coef == 0:
        return penalty
    for p, r in zip(params, reference):
        diff = p.detach() - r.to(device=p.device, dtype=p.dtype)
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        p.grad.add_(diff, alpha=coef)
        penalty += 0.5 * coef * float(diff.double().pow(2).sum())
    return penalty


def scale_update_(params: Sequence[torch.Tensor], before: Sequence[torch.Tensor], scale: float) -> None:
    """``theta <- theta_before + scale * (theta - theta_before)``: multiply the last optimizer update.

    For (Adam)W, whose update is ``lr * m / (sqrt(v) + eps) + lr * wd * theta``, this equals
    running those parameters at ``scale * lr`` -- a separate learning rate for a few parameters
    (the CFG condition) without a third optimizer, and it follows the group's lr schedule.
    """
    if scale <= 0:
        raise ValueError(f"cond_lr_scale={scale} must be > 0")
    with torch.no_grad():
        for p, b in zip(params, before):
            p.copy_(b + scale * (p - b))


# --------------------------------------------------------------------------------- randomness
def draw_noise_time(seeds: Sequence[int], n_action_steps: int, action_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-window flow noise and time, each window from its own seeded generator.

    Seeding per window (not per micro-batch) makes the draw independent of how windows are
    grouped into micro-batches, so (micro=4, accum=1) and (2, 2) see identical noise.
    ``time = 0.001 + 0.999 * Beta(1.5, 1)`` (openpi's convention) via the inverse CDF: Beta(a, 1)
    has CDF x**a, so x = u**(1/a) with u ~ U(0, 1).

    Returns noise float32 (N, n_action_steps, action_dim), time float32 (N,).
    """
    noises, times = [], []
    for seed in seeds:
        gen = torch.Generator().manual_seed(int(seed) % (2**63 - 1))
        noises.append(torch.randn((n_action_steps, action_dim), generator=gen))  # (H, D)
        u = torch.rand((), generator=gen)
        times.append(_TIME_MIN + (1.0 - _TIME_MIN) * u ** (1.0 / _TIME_BETA_ALPHA))
    return torch.stack(noises), torch.stack(times).float()


# -------------------------------------------------------------------------------- diagnostics
# What the learning curves need to explain a run (docs/learning.md): do the two CFG branches
# differ (guidance can only amplify a difference that exists), how many init-state groups still
# carry an RLOO signal, and do the K rollouts of one init state still differ at all.
def relative_branch_gap(v_pos: torch.Tensor, v_uncond: torch.Tensor, action_is_pad: torch.Tensor,
                        action_dim: int = 7, eps: float = 1e-12) -> torch.Tensor:
    """Per-window ``||v_pos - v_uncond|| / ||v_pos||`` over the non-pad steps and real action dims.

    v_pos, v_uncond (N, H, D>=action_dim), action_is_pad (N, H) -> (N,). 0 means guidance
    ``v_u + s (v_c - v_u)`` returns ``v_c`` for every scale s.
    """
    if v_pos.shape != v_uncond.shape or v_pos.ndim != 3 or v_pos.shape[-1] < action_dim:
        raise ValueError(f"v_pos {tuple(v_pos.shape)} and v_uncond {tuple(v_uncond.shape)} must both be "
                         f"(N, H, >= {action_dim})")
    keep = (~action_is_pad.to(device=v_pos.device, dtype=torch.bool))[..., None]  # (N, H, 1)
    diff = torch.where(keep, v_pos[..., :action_dim] - v_uncond[..., :action_dim], torch.zeros(()))  # (N, H, 7)
    ref = torch.where(keep, v_pos[..., :action_dim], torch.zeros(()))  # (N, H, 7)
    return diff.flatten(1).norm(dim=1) / ref.flatten(1).norm(dim=1).clamp_min(eps)  # (N,)


def group_outcomes(rewards: torch.Tensor, rloo_batch_size: int, valid_mask: torch.Tensor) -> dict[str, float]:
    """Fractions of init-state groups (>= 2 valid rollouts) whose rollouts all failed, were mixed,
    or all succeeded, plus the number of such groups. Only mixed groups get an RLOO advantage.

    rewards, valid_mask (D*K,) in the rollout generator's (demo_batch, rloo_batch) order.
    """
    r = rewards.detach().float().reshape(-1, rloo_batch_size)  # (D, K)
    v = valid_mask.detach().bool().reshape(-1, rloo_batch_size)  # (D, K)
    counted = v.sum(dim=1) >= 2  # (D,)
    successes = ((r > 0) & v).sum(dim=1)  # (D,)
    n_valid = v.sum(dim=1)
    n = int(counted.sum())
    if n == 0:
        return {"groups": 0.0, "all_fail": 0.0, "mixed": 0.0, "all_success": 0.0}
    all_fail = int((counted & (successes == 0)).sum())
    all_success = int((counted & (successes == n_valid)).sum())
    return {"groups": float(n), "all_fail": all_fail / n, "mixed": (n - all_fail - all_success) / n,
            "all_success": all_success / n}


def first_chunk_diversity(first_chunks: torch.Tensor, valid_mask: torch.Tensor) -> float:
    """Spread of the K rollouts of one init state: the std over K of the first sampled chunk
    (normalised model space), averaged over steps, dims and groups with >= 2 valid rollouts.

    The K rollouts of a group start from the same observation, so their first chunks differ only
    through the sampler's noise: a value falling towards 0 means the policy has collapsed onto
    one action sequence per scene and RLOO groups stop being mixed.
    first_chunks (D, K, H, A), valid_mask (D, K) -> float (0.0 if no group counts).
    """
    x = first_chunks.detach().double()  # (D, K, H, A)
    v = valid_mask.detach().bool()  # (D, K)
    spreads = []
    for d in range(x.shape[0]):
        rows = x[d][v[d]]  # (k, H, A)
        if rows.shape[0] >= 2:
            spreads.append(rows.std(dim=0, unbiased=False).mean())
    return float(torch.stack(spreads).mean()) if spreads else 0.0


def relative_weight_distance(params: Sequence[torch.Tensor], reference: Sequence[torch.Tensor]) -> float:
    """``||theta - theta_0|| / ||theta_0||`` over matching tensors (how far training moved the policy)."""
    if len(params) != len(reference):
        raise ValueError(f"{len(params)} parameters but {len(reference)} reference tensors")
    diff = sum(float((p.detach().double() - r.to(p.device).double()).pow(2).sum()) for p, r in zip(params, reference))
    base = sum(float(r.double().pow(2).sum()) for r in reference)
    return (diff ** 0.5) / max(base ** 0.5, 1e-12)
