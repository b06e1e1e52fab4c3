"""CFGFlowOptimizerPI0: one RIPT round (rollouts -> RLOO -> weights) + the CFG-Flow update.

The maths lives in :mod:`ript.algos.rl_optimizers.cfg_flow_math`; this module only orchestrates:
rollouts, windows, micro-batches, gradient synchronisation, clipping, fault handling, metrics.

Distributed design (why it looks the way it does):

* Ranks cut different numbers of windows (episode lengths differ, a rank may accept no sample).
  DDP needs every rank to run the same number of forward/backward passes (its reducer and its
  buffer broadcast are collectives), so the ranks first agree on a *plan* (window counts of all
  ranks -> number of optimisation steps and micro-steps). A rank that runs out of windows feeds a
  filler window with ``window_mask=0``: it participates in the collectives with zero loss.
* Loss normalisation: each optimisation step s covers up to ``mini_batch_size *
  gradient_accumulation_steps`` windows per rank, N_s over all ranks. Each micro-batch loss is
  ``sum_i (w_i L_pos_i + alpha L_uncond_i) / (N_s / world_size)``; DDP averages over ranks once
  (on the last micro-step; earlier ones run under ``no_grad_sync``), so the applied gradient is
  exactly that of ``mean over the N_s windows`` -- independent of micro-batching, accumulation
  and how windows are spread over ranks.
* If the policy's module is *not* DDP-wrapped while a process group is up, gradients are
  averaged by one manual flattened all-reduce instead (never both).
"""
from __future__ import annotations

import contextlib
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.distributed as dist

from ript.algos.rl_optimizers.cfg_flow_math import (
    ActionMode,
    CreditWindows,
    EpisodeWeighting,
    ShortWindow,
    UncondScope,
    WeightMode,
    Window,
    WindowMode,
    advantage_weights,
    check_literal,
    collate_windows,
    cut_windows,
    draw_noise_time,
    episode_window_scales,
    failed_weight_share,
    first_chunk_diversity,
    group_outcomes,
    masked_window_mse,
    relative_branch_gap,
    l2_anchor_,
    relative_weight_distance,
    rloo_advantages,
    scale_update_,
    weighted_cfg_flow_loss,
    window_alphas,
)
from ript.algos.rl_optimizers.demo_replay import DemoReplay
from ript.algos.rl_optimizers.success_replay import SuccessReplay
from ript.types import Episode
from ript.utils.distributed import (
    all_reduce_mean_dict,
    broadcast_object,
    get_rank,
    get_world_size,
    is_dist_ready,
    log_rank_zero,
)
from ript.utils.images import augment_camera_batch

logger = logging.getLogger(__name__)
DEMO_EPISODE_INDEX_OFFSET = 1_000_000  # episode_index of replayed demos (seeds, episode weighting)
DEMO_PROBE_INDEX_OFFSET = 2_000_000  # episode_index of the demo-loss probe's windows (their own noise)

GROUPS = ("model", "header")  # order of `optimizers` and keys of `policy.trainable_params`


def conditional_loss_sum(model: Any, windows: Sequence[Window], noise_seed: Callable[[Window], int], noise_dim: int,
                         batch_size: int, action_dim: int = 7,
                         prepare_batch: Callable[[dict[str, Any], list[Window]], None] | None = None
                         ) -> tuple[float, float]:
    """(sum, count) of the conditional branch's flow-matching loss over ``windows``' non-pad steps and
    real action dims, each window at the noise and time ``noise_seed(window)`` draws: a measurement
    (no gradients, no collective) that two policies, or two rounds, compare at identical inputs.
    ``prepare_batch(batch, chunk)`` may change a collated batch first (e.g. its frames)."""
    total, count = 0.0, 0.0
    for start in range(0, len(windows), batch_size):
        chunk = list(windows[start:start + batch_size])
        batch = collate_windows(chunk)
        batch.pop("weights")
        batch.pop("uncond_weights", None)
        if prepare_batch is not None:
            prepare_batch(batch, chunk)
        noise, time_ = draw_noise_time([noise_seed(w) for w in chunk], batch["action"].shape[1], noise_dim)
        # The velocities come from the bare module (no DDP collective); the loss is PI0's.
        with torch.no_grad():
            v_pos, _ = model.cfg_velocities(batch, noise=noise, time=time_)  # (n, H, A)
        target = noise[..., : v_pos.shape[-1]] - batch["action"]  # u = noise - action (PI0's convention)
        per_window = masked_window_mse((v_pos.float().cpu() - target) ** 2, batch["action_is_pad"], action_dim)  # (n,)
        # Pooled over elements, not windows: each window's mean weighs by its non-pad elements.
        elements = (~batch["action_is_pad"]).sum(dim=1).float() * action_dim  # (n,)
        total += float((per_window * elements).sum())
        count += float(elements.sum())
    return total, count


def keeps_start_weights(anchor_l2: float, track_weight_distance: bool) -> bool:
    """The L2 anchor and train/weight_distance need the first round's weights (one stored list)."""
    return bool(track_weight_distance) or anchor_l2 > 0


def stored_start_copies(anchor_output: float, anchor_l2: float, track_weight_distance: bool) -> int:
    """Copies of the start's trainable weights that the optimizer state, and so every checkpoint,
    carries: the output anchor's (by name, to rebuild its frozen copy) and the L2 anchor's."""
    return int(anchor_output > 0) + int(keeps_start_weights(anchor_l2, track_weight_distance))


@dataclass(frozen=True)
class CFGFlowConfig:
    """Hyper-parameters of the CFG-Flow update, validated at construction."""

    num_epochs: int = 1  # passes over this round's windows
    mini_batch_size: int = 8  # windows per forward pass
    gradient_accumulation_steps: int = 1  # micro-batches per optimisation step
    grad_norm_clip: float | None = 1.0  # per-group max grad norm for 'model'; None = no clipping
    header_grad_norm_clip: float | None = None  # for 'header'; None = same as grad_norm_clip
    a_max: float = 5.0
    cfg_uncond_weight: float = 0.1  # alpha
    weight_mode: WeightMode = "clip"
    advantage_temperature: float = 1.0
    window_stride: int = 50
    window_mode: WindowMode = "aligned"
    # Which of an episode's windows carry its conditional-branch weight. "first": only the first (the
    # one an RLOO group shares, and the one that decides most outcomes, docs/learning_libero.md); the
    # others still train the unconditional branch (alpha) and, with anchor_output, are held at the
    # start's outputs while the first window moves.
    credit_windows: CreditWindows = "all"
    short_window: ShortWindow = "skip"
    action_mode: ActionMode = "relative"
    n_action_steps: int | None = None  # None: the policy's n_action_steps (50 if it has none)
    action_dim: int = 7
    max_consecutive_nonfinite: int = 3
    seed: int = 0
    bc_ablation: bool = False  # w = 1 for every valid rollout (behaviour-cloning ablation)
    shuffle_windows: bool = True
    seeded_noise: bool = True  # per-window seeded noise/time (deterministic, micro-batch invariant)
    noise_dim: int | None = None  # None: policy.config.max_action_dim; else the policy draws noise
    # Replay of earlier successes (success_replay.py): the newest N successes of each init state of
    # the round re-enter the conditional branch with this weight. 0 = off (plain CFGRL round).
    success_replay_per_state: int = 0
    success_replay_weight: float = 1.0
    # Replay of the SFT demos (demo_replay.py): this many successful demos of the pack at
    # demo_replay_path enter the conditional branch each round with this weight. 0 = off.
    demo_replay_path: str | None = None
    demo_replay_per_round: int = 0
    demo_replay_weight: float = 1.0
    demo_replay_num_demos: int | None = None  # the first N demos of the pack (the start's); None: all
    # Forgetting probe: the conditional branch's flow-matching loss on this many windows of the demo
    # pack at demo_replay_path, same noise every round, logged as train/demo_fm_loss. 0 = off.
    demo_probe_windows: int = 0
    # Diagnostics logged every round (docs/learning.md): branch gap on this many of the round's
    # windows (0 = off; one extra no-grad pass), and the weights' distance from the first round's.
    diagnostic_windows: int = 16
    track_weight_distance: bool = False
    # Issue 19 ("RL does no harm") and issue 20 (guidance that matters); docs/learning.md.
    episode_weighting: EpisodeWeighting = "window"  # "episode": every episode weighs the same in both terms
    uncond_scope: UncondScope = "all"  # "successes": the alpha term sees successful (and replayed) episodes only
    clip_labels: bool = False  # labels from the commands LIBERO executed (arm clipped to [-1, 1], gripper sign)
    anchor_l2: float = 0.0  # coef of 0.5 * ||theta - theta_start||^2 added to the loss (0 = off)
    # coef of ||v - v_start||^2 per window, both branches, at the window's own x_t and time: an
    # anchor on what the policy outputs rather than on its weights (a KL-like term). 0 = off.
    anchor_output: float = 0.0
    cond_lr_scale: float = 1.0  # the CFG condition's parameters move at this multiple of their group's lr
    # Train on augmented camera frames (ript.utils.images.augment_frames: openpi's crop, rotation and
    # colour jitter), drawn afresh per window and epoch, so that an update cannot key on the exact
    # pixels of the few init states a round sees. Rollouts, probes and diagnostics see the real frames.
    image_augmentation: bool = False

    def __post_init__(self) -> None:
        check_literal("weight_mode", self.weight_mode, WeightMode)
        check_literal("window_mode", self.window_mode, WindowMode)
        check_literal("credit_windows", self.credit_windows, CreditWindows)
        check_literal("short_window", self.short_window, ShortWindow)
        check_literal("action_mode", self.action_mode, ActionMode)
        check_literal("episode_weighting", self.episode_weighting, EpisodeWeighting)
        check_literal("uncond_scope", self.uncond_scope, UncondScope)
        _check(self.anchor_l2 >= 0, "anchor_l2", self.anchor_l2, "the anchor's coefficient must be >= 0 (0 = off)")
        _check(self.anchor_output >= 0, "anchor_output", self.anchor_output,
               "the output anchor's coefficient must be >= 0 (0 = off)")
        _check(not (self.anchor_output > 0 and not self.seeded_noise), "anchor_output", self.anchor_output,
               "the start policy must see the same noise and time as the trained one; set seeded_noise=true")
        _check(isinstance(self.image_augmentation, bool), "image_augmentation", self.image_augmentation,
               "use true (augment the training frames) or false")
        _check(self.cond_lr_scale > 0, "cond_lr_scale", self.cond_lr_scale,
               "a multiple of the condition parameters' lr; use a value > 0 (1 = same lr)")
        _check(not (self.uncond_scope == "successes" and self.cfg_uncond_weight == 0), "uncond_scope",
               self.uncond_scope, "restricts the alpha term, but cfg_uncond_weight=0 turns it off; drop one of them")
        positive_ints = {
            "num_epochs": self.num_epochs, "mini_batch_size": self.mini_batch_size,
            "gradient_accumulation_steps": self.gradient_accumulation_steps,
            "window_stride": self.window_stride, "action_dim": self.action_dim,
            "max_consecutive_nonfinite": self.max_consecutive_nonfinite,
        }
        for key, value in positive_ints.items():
            if int(value) != value or value < 1:
                raise ValueError(f"{key}={value!r} must be an integer >= 1")
        _check(self.a_max > 0, "a_max", self.a_max,
               "advantage weights are clipped to [0, a_max] ([-a_max, a_max] when signed); use a_max > 0")
        _check(self.cfg_uncond_weight >= 0, "cfg_uncond_weight", self.cfg_uncond_weight,
               "alpha weights the unconditional branch; use a value >= 0 (default 0.1)")
        _check(self.advantage_temperature > 0, "advantage_temperature", self.advantage_temperature,
               "the temperature divides the advantage; use a value > 0 (default 1.0)")
        _check(int(self.success_replay_per_state) == self.success_replay_per_state and self.success_replay_per_state >= 0,
               "success_replay_per_state", self.success_replay_per_state,
               "the number of stored successes replayed per init state; 0 turns replay off")
        _check(self.success_replay_weight > 0, "success_replay_weight", self.success_replay_weight,
               "replayed successes need a positive conditional-branch weight (default 1.0)")
        _check(int(self.demo_replay_per_round) == self.demo_replay_per_round and self.demo_replay_per_round >= 0,
               "demo_replay_per_round", self.demo_replay_per_round,
               "the number of successful SFT demos replayed each round; 0 turns demo replay off")
        _check(self.demo_replay_per_round == 0 or self.demo_replay_path is not None, "demo_replay_path",
               self.demo_replay_path, "demo_replay_per_round > 0 needs a demo pack (.npz) or demos.pkl to replay")
        _check(self.demo_replay_weight > 0, "demo_replay_weight", self.demo_replay_weight,
               "replayed demos need a positive conditional-branch weight (default 1.0)")
        _check(self.demo_replay_num_demos is None or self.demo_replay_num_demos >= 1, "demo_replay_num_demos",
               self.demo_replay_num_demos, "the first N demos of the pack (the start's), N >= 1; null: all")
        _check(int(self.demo_probe_windows) == self.demo_probe_windows and self.demo_probe_windows >= 0,
               "demo_probe_windows", self.demo_probe_windows, "the number of demo windows probed each round; 0 = off")
        _check(self.demo_probe_windows == 0 or self.demo_replay_path is not None, "demo_replay_path",
               self.demo_replay_path, "demo_probe_windows > 0 reads its windows from a demo pack (.npz) or demos.pkl")
        _check(int(self.diagnostic_windows) == self.diagnostic_windows and self.diagnostic_windows >= 0,
               "diagnostic_windows", self.diagnostic_windows, "use 0 (off) or the number of windows to probe")
        for key in ("grad_norm_clip", "header_grad_norm_clip"):
            value = getattr(self, key)
            _check(value is None or value > 0, key, value, "use a positive max norm, or null to disable clipping")
        if self.n_action_steps is not None:
            _check(self.n_action_steps >= 1, "n_action_steps", self.n_action_steps, "use the policy's chunk length (50)")
            if self.window_mode != "stride" and self.window_stride != self.n_action_steps:
                _check(False, "window_stride", self.window_stride,
                       f"window_mode={self.window_mode!r} cuts at chunk starts, so the stride must equal "
                       f"n_action_steps={self.n_action_steps}; use window_mode='stride' for other strides")
        chunk = self.n_action_steps or 50
        if self.window_mode == "stride" and self.window_stride % chunk != 0:
            # Only chunk-start observations are recorded by default (docs/ARCHITECTURE.md, "Episode"); say so up front.
            logger.warning(
                "window_stride=%d is not a multiple of the chunk length %d: windows start mid-chunk and "
                "need per-step observations in episode.extra['step_observations'] (cut_windows raises "
                "otherwise)", self.window_stride, chunk)

    def clip_for(self, group: str) -> float | None:
        if group == "header" and self.header_grad_norm_clip is not None:
            return self.header_grad_norm_clip
        return self.grad_norm_clip


def _check(ok: bool, key: str, value: Any, fix: str) -> None:
    if not ok:
        raise ValueError(f"{key}={value!r} is invalid: {fix}")


@dataclass
class _Scored:
    """Per-episode RL quantities of one round, all (D*K,)."""

    valid: torch.Tensor  # bool
    rewards: torch.Tensor  # float32
    advantages: torch.Tensor  # float32
    weights: torch.Tensor  # float32, conditional-branch weight


@dataclass
class _Plan:
    """What every rank agreed to run this round (identical on all ranks)."""

    counts: list[int]  # windows per rank
    windows_per_step: int  # mini_batch_size * gradient_accumulation_steps
    num_steps: int  # optimisation steps per epoch
    micro_steps: list[int]  # micro-batches of each step (max over ranks)
    step_totals: list[int]  # windows of each step summed over ranks (N_s)
    filler_src: int | None  # rank that broadcasts a filler window to window-less ranks


@dataclass
class _TrainStats:
    sums: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    grad_norms: dict[str, list[float]] = field(default_factory=lambda: {g: [] for g in GROUPS})
    steps_taken: int = 0
    nonfinite_skipped: int = 0


class CFGFlowOptimizerPI0:
    """RIPT round with the advantage-weighted CFG flow-matching loss (CFGRL) for PI0.

    ``optimize(model, batch, optimizers, data_iterator, dataloader)``: ``model`` is the policy
    wrapper (``cfg_flow_losses``, ``no_grad_sync``, ``trainable_params``, ``norm_stats``) and
    ``optimizers`` is ``[model_optimizer, header_optimizer]`` matching
    ``model.trainable_params['model']`` / ``['header']``.
    """

    def __init__(
        self,
        rollout_generator: Any,
        reward_function: Any,
        num_epochs: int = 1,
        mini_batch_size: int = 8,
        gradient_accumulation_steps: int = 1,
        grad_norm_clip: float | None = 1.0,
        header_grad_norm_clip: float | None = None,
        a_max: float = 5.0,
        cfg_uncond_weight: float = 0.1,
        weight_mode: WeightMode = "clip",
        advantage_temperature: float = 1.0,
        window_stride: int = 50,
        window_mode: WindowMode = "aligned",
        credit_windows: CreditWindows = "all",
        short_window: ShortWindow = "skip",
        action_mode: ActionMode = "relative",
        n_action_steps: int | None = None,
        action_dim: int = 7,
        max_consecutive_nonfinite: int = 3,
        seed: int = 0,
        bc_ablation: bool = False,
        shuffle_windows: bool = True,
        seeded_noise: bool = True,
        noise_dim: int | None = None,
        rloo_batch_size: int | None = None,
        success_replay_per_state: int = 0,
        success_replay_weight: float = 1.0,
        demo_replay_path: str | None = None,
        demo_replay_per_round: int = 0,
        demo_replay_weight: float = 1.0,
        demo_replay_num_demos: int | None = None,
        demo_probe_windows: int = 0,
        diagnostic_windows: int = 16,
        track_weight_distance: bool = False,
        episode_weighting: EpisodeWeighting = "window",
        uncond_scope: UncondScope = "all",
        clip_labels: bool = False,
        anchor_l2: float = 0.0,
        anchor_output: float = 0.0,
        cond_lr_scale: float = 1.0,
        image_augmentation: bool = False,
    ) -> None:
        self.config = CFGFlowConfig(
            num_epochs=num_epochs, mini_batch_size=mini_batch_size,
            gradient_accumulation_steps=gradient_accumulation_steps, grad_norm_clip=grad_norm_clip,
            header_grad_norm_clip=header_grad_norm_clip, a_max=a_max, cfg_uncond_weight=cfg_uncond_weight,
            weight_mode=weight_mode, advantage_temperature=advantage_temperature, window_stride=window_stride,
            window_mode=window_mode, credit_windows=credit_windows, short_window=short_window,
            action_mode=action_mode, n_action_steps=n_action_steps, action_dim=action_dim,
            max_consecutive_nonfinite=max_consecutive_nonfinite, seed=seed, bc_ablation=bc_ablation,
            shuffle_windows=shuffle_windows, seeded_noise=seeded_noise, noise_dim=noise_dim,
            success_replay_per_state=success_replay_per_state, success_replay_weight=success_replay_weight,
            demo_replay_path=demo_replay_path, demo_replay_per_round=demo_replay_per_round,
            demo_replay_weight=demo_replay_weight, demo_replay_num_demos=demo_replay_num_demos,
            demo_probe_windows=demo_probe_windows, diagnostic_windows=diagnostic_windows,
            track_weight_distance=track_weight_distance,
            episode_weighting=episode_weighting, uncond_scope=uncond_scope, clip_labels=clip_labels,
            anchor_l2=anchor_l2, anchor_output=anchor_output, cond_lr_scale=cond_lr_scale,
            image_augmentation=image_augmentation,
        )
        self.rollout_generator = rollout_generator
        self.reward_function = reward_function
        k = rloo_batch_size if rloo_batch_size is not None else getattr(rollout_generator, "rloo_batch_size", None)
        if k is None or int(k) < 2:
            raise ValueError(
                f"rloo_batch_size={k!r}: RLOO needs >= 2 rollouts per init state; set it on the rollout "
                "generator (algo.rloo_batch_size) or pass rloo_batch_size="
            )
        self.rloo_batch_size = int(k)
        self.round = 0  # rounds done; seeds noise and shuffling
        self.consecutive_nonfinite = 0  # run-level: consecutive skipped optimisation steps
        self.replay = SuccessReplay(success_replay_per_state) if success_replay_per_state > 0 else None
        self.demo_replay = (DemoReplay(demo_replay_path, demo_replay_per_round, seed, demo_replay_num_demos)
                            if demo_replay_per_round > 0 else None)
        self._demo_probe: list[Window] | None = None  # built on first use (needs the policy's norm stats)
        # The first round's trainable weights (L2 anchor, train/weight_distance); in state_dict, so
        # that a resumed run pulls towards and measures from the same start.
        self._start_weights: list[torch.Tensor] | None = None
        # The output anchor's reference: a frozen copy of the first round's policy, and its trainable
        # weights (kept in state_dict, so that a resumed run anchors to the same start).
        self._start_policy: Any = None
        self._start_trainable: dict[str, torch.Tensor] | None = None

    # ------------------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Counters that make a resumed run draw the same noise and keep the fault streak, and the
        replay buffer (a resumed run replays the same successes)."""
        state: dict[str, Any] = {"round": self.round, "consecutive_nonfinite": self.consecutive_nonfinite}
        if self.replay is not None:
            state["success_replay"] = self.replay.state_dict()
        if self._start_trainable is not None:
            state["output_anchor_start"] = self._start_trainable
        if self._start_weights is not None:
            state["start_weights"] = [w.detach().cpu() for w in self._start_weights]
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.round = int(state.get("round", 0))
        self.consecutive_nonfinite = int(state.get("consecutive_nonfinite", 0))
        if self.replay is not None and state.get("success_replay") is not None:
            self.replay.load_state_dict(state["success_replay"])
        if self._keeps_start_weights and state.get("start_weights") is not None:
            self._start_weights = list(state["start_weights"])  # moved to each parameter's device on use
        if self.config.anchor_output > 0 and state.get("output_anchor_start") is not None:
            # The frozen copy is rebuilt from these on the next round (the policy is not at hand here).
            self._start_trainable = state["output_anchor_start"]
            self._start_policy = None

    @property
    def _keeps_start_weights(self) -> bool:
        return keeps_start_weights(self.config.anchor_l2, self.config.track_weight_distance)

    # --------------------------------------------------------------------------- the round
    def optimize(
        self,
        model: Any,
        batch: Any,
        optimizers: Sequence[torch.optim.Optimizer],
        data_iterator: Any = None,
        dataloader: Any = None,
    ) -> dict[str, float]:
        """Rollouts -> RLOO -> weights -> windows -> CFG-Flow update. Returns rank-averaged metrics."""
        if len(optimizers) != len(GROUPS):
            raise ValueError(f"optimizers must be [model_optimizer, header_optimizer], got {len(optimizers)} items")
        rollout_started = time.perf_counter()
        episodes, _task_ids, valid_mask, samples_checked = self.rollout_generator.generate_rollouts(
            model, batch, data_iterator, dataloader
        )
        timing = self._rollout_timing(time.perf_counter() - rollout_started)
        if self._keeps_start_weights and self._start_weights is None:
            # The first round's weights: the start (SFT) policy; the anchor pulls towards them.
            self._start_weights = [p.detach().clone() for p in _trainable(model)]
        if self.config.anchor_output > 0 and self._start_policy is None:
            self._start_policy = self._frozen_start(model)
        scored = self.score_episodes(episodes, valid_mask)
        windows, n_skipped = self.make_windows(episodes, scored.weights, model)
        n_replayed = self._add_replayed_windows(episodes, windows, model)
        n_demo = self._add_demo_windows(windows, model)
        self.assign_window_weights(windows)
        # The forgetting probe's baseline, before any update of the run (outside the training time).
        probe_before = self._demo_probe_loss(model, "demo_loss_before") if self.round == 0 else {}
        training_started = time.perf_counter()
        stats = self.train_on_windows(model, windows, optimizers)
        timing["time/training_s"] = time.perf_counter() - training_started
        diagnostics = self._diagnostics(model, episodes, scored, windows)
        diagnostics.update(probe_before)
        diagnostics.update(self._demo_probe_loss(model, "demo_loss"))
        diagnostics["n_replayed_windows"] = float(n_replayed)
        diagnostics["n_demo_windows"] = float(n_demo)
        if windows:
            success = torch.tensor([w.success for w in windows])
            alphas = torch.tensor([w.uncond_weight for w in windows], dtype=torch.float64)
            diagnostics["failed_window_share"] = float((~success).double().mean())
            diagnostics["failed_alpha_share"] = failed_weight_share(alphas, success)
        diagnostics.update(timing)
        metrics = self._round_metrics(episodes, scored, windows, n_skipped, stats, samples_checked, diagnostics)
        log_rank_zero(
            logger, "round %d: score %.3f, windows %d used / %d skipped, %d steps (%d non-finite skipped), "
            "fm_loss %.4f", self.round, metrics["rollout/mean_scores"], metrics["train/windows_used"],
            metrics["train/windows_skipped"], metrics["train/optimizer_steps"], metrics["train/nonfinite_skipped"],
            metrics["loss/fm_loss"],
        )
        self.round += 1
        return metrics

    def _frozen_start(self, model: Any) -> Any:
        """The output anchor's reference policy: the first round's weights, or on a resumed run the
        start's weights from the checkpoint loaded into a copy of the current policy."""
        for name in ("frozen_copy", "trainable_state_dict", "load_trainable_state_dict", "cfg_velocities"):
            if not hasattr(model, name):
                raise ValueError(f"anchor_output > 0 needs a policy with {name}() (PI0_OFT_Policy has it); "
                                 "use anchor_output=0")
        snapshot = model.frozen_copy()
        if self._start_trainable is None:
            self._start_trainable = model.trainable_state_dict()
        else:
            snapshot.load_trainable_state_dict(self._start_trainable)
        return snapshot

    def _output_anchor(self, out: dict[str, torch.Tensor], batch: dict[str, Any], noise: torch.Tensor,
                       time: torch.Tensor, mask: torch.Tensor, normalizer: float) -> tuple[torch.Tensor, float]:
        """``anchor_output * sum_i (||v_pos_i - v_start_i||^2 + ||v_uncond_i - v_start_i||^2) / normalizer``
        over the kept windows (per-window means as in the flow loss), and its per-window sum.

        The start policy sees the same x_t and time, so the term is zero until the update moves
        the outputs, and pulls only where they moved; unlike the L2 anchor it costs nothing for
        weight changes that leave the outputs alone. Both branches: the unconditional one then
        stays the start policy, the reference that guidance extrapolates from."""
        start_pos, start_uncond = self._start_policy.cfg_velocities(batch, noise=noise, time=time)  # (n, H, A)
        pad = batch["action_is_pad"]
        per_window = sum(
            masked_window_mse((out[key].float() - start.to(out[key].device).float()) ** 2, pad,
                              self.config.action_dim)
            for key, start in (("velocities_pos", start_pos), ("velocities_uncond", start_uncond))
        )  # (n,)
        keep = mask.to(per_window.device).bool()
        per_window = torch.where(keep, per_window, torch.zeros_like(per_window))
        anchor = self.config.anchor_output * per_window.sum() / normalizer
        return anchor, float(per_window.detach().sum())

    def _rollout_timing(self, rollout_s: float) -> dict[str, float]:
        """This rank's rollout phase: wall time, and with a scheduler, its inference time,
        simulator utilisation and throughput (averaged over ranks in the round's metrics)."""
        timing = {"time/rollout_s": rollout_s}
        scheduler = getattr(self.rollout_generator, "last_scheduler", None)
        if scheduler is not None:
            timing["time/inference_s"] = scheduler.stats.inference_s
            timing["sched/simulator_utilization"] = scheduler.stats.utilization
            timing["sched/episodes_per_min"] = scheduler.stats.episodes_per_min
        return timing

    def score_episodes(self, episodes: Sequence[Episode], valid_mask: Any) -> _Scored:
        """Rewards, RLOO advantages (RIPT) and conditional-branch weights (CFGRL) per episode."""
        mask = torch.as_tensor(np.asarray(
            valid_mask.cpu() if isinstance(valid_mask, torch.Tensor) else valid_mask, dtype=bool)).reshape(-1)
        if mask.numel() != len(episodes):
            raise ValueError(f"valid_mask has {mask.numel()} entries for {len(episodes)} episodes")
        valid = mask & torch.tensor([bool(ep.valid) for ep in episodes], dtype=torch.bool)
        rewards = torch.tensor(
            [float(self.reward_function(ep)) if v else 0.0 for ep, v in zip(episodes, valid.tolist())],
            dtype=torch.float32,
        )  # (D*K,)
        adv = rloo_advantages(rewards, self.rloo_batch_size, valid)  # (D*K,)
        if self.config.bc_ablation:
            weights = valid.float()  # plain behaviour cloning on every valid rollout
        else:
            weights = advantage_weights(adv, self.config.weight_mode, self.config.a_max,
                                        self.config.advantage_temperature, valid)
        return _Scored(valid=valid, rewards=rewards, advantages=adv, weights=weights)

    def _n_action_steps(self, model: Any) -> int:
        model_steps = getattr(model, "n_action_steps", None)
        if self.config.n_action_steps is not None:
            if model_steps is not None and int(model_steps) != self.config.n_action_steps:
                raise ValueError(f"n_action_steps={self.config.n_action_steps} but the policy predicts "
                                 f"{model_steps}-step chunks; remove the override or match the policy")
            return self.config.n_action_steps
        return int(model_steps) if model_steps is not None else 50

    def make_windows(self, episodes: Sequence[Episode], weights: torch.Tensor, model: Any,
                     first_index: int = 0, window_mode: WindowMode | None = None,
                     credit_windows: CreditWindows | None = None) -> tuple[list[Window], int]:
        """Cut every valid episode into windows carrying its weight; (windows, n_short_skipped).

        Episode ``i`` gets ``episode_index = first_index + i``, which seeds its windows' noise.
        ``window_mode`` and ``credit_windows`` override the config's (the demo probe always cuts
        aligned windows; replayed SFT demos are credited on every window)."""
        c = self.config
        n_steps = self._n_action_steps(model)
        windows: list[Window] = []
        n_skipped = 0
        for i, ep in enumerate(episodes):
            if not ep.valid:
                continue
            ws, skipped = cut_windows(
                ep, float(weights[i]), model.norm_stats, window_stride=c.window_stride,
                window_mode=window_mode or c.window_mode,
                short_window=c.short_window, n_action_steps=n_steps, action_mode=c.action_mode,
                episode_index=first_index + i, clip_labels=c.clip_labels,
                credit_windows=credit_windows or c.credit_windows,
            )
            windows.extend(ws)
            n_skipped += skipped
        return windows, n_skipped

    def assign_window_weights(self, windows: list[Window]) -> None:
        """Per-window alpha (``uncond_scope``) and, with ``episode_weighting="episode"``, the
        per-episode factors on both terms (:func:`episode_window_scales`), in place. The
        conditional term's factors count an episode's credited windows (``credit_windows``), the
        alpha term's all of its windows: each episode weighs the same in either term."""
        c = self.config
        if not windows:
            return
        alphas = window_alphas([w.success for w in windows], c.cfg_uncond_weight, c.uncond_scope)  # (N,)
        scales = torch.ones(len(windows))  # (N,) alpha term
        cond_scales = torch.ones(len(windows))  # (N,) conditional term
        if c.episode_weighting == "episode":
            scales = episode_window_scales([w.episode_index for w in windows])
            credited = [i for i, w in enumerate(windows) if w.credited]
            cond_scales = torch.zeros(len(windows))
            if credited:
                cond_scales[credited] = episode_window_scales([windows[i].episode_index for i in credited])
        for w, a, f, g in zip(windows, alphas.tolist(), scales.tolist(), cond_scales.tolist()):
            w.weight = float(w.weight * g)
            w.uncond_weight = float(a * f)

    def _add_demo_windows(self, windows: list[Window], model: Any) -> int:
        """Append windows of this round's replayed SFT demos (weight ``demo_replay_weight``, counted as
        successes: the alpha scope and diagnostics treat them as positives). Returns windows added."""
        if self.demo_replay is None:
            return 0
        demos = self.demo_replay.episodes_for_round(self.round, model.norm_stats, self._n_action_steps(model))
        weights = torch.full((len(demos),), self.config.demo_replay_weight)
        # Episode indices far above any round's rollouts and replays: their own noise seeds, and their
        # own per-episode weight under episode_weighting="episode".
        demo_windows, _ = self.make_windows(demos, weights, model, first_index=DEMO_EPISODE_INDEX_OFFSET,
                                            credit_windows="all")
        windows.extend(demo_windows)
        return len(demo_windows)

    def _add_replayed_windows(self, episodes: Sequence[Episode], windows: list[Window], model: Any) -> int:
        """Append windows of earlier successes of this round's init states (weight
        ``success_replay_weight``), then store this round's successes. Returns windows added."""
        if self.replay is None:
            return 0
        replayed = self.replay.replay(episodes, self.round)
        weights = torch.full((len(replayed),), self.config.success_replay_weight)
        # Indices after this round's episodes: replayed windows draw their own noise seeds.
        replay_windows, _ = self.make_windows(replayed, weights, model, first_index=len(episodes))
        windows.extend(replay_windows)
        self.replay.add(episodes, self.round)
        return len(replay_windows)

    @torch.no_grad()
    def _diagnostics(self, model: Any, episodes: Sequence[Episode], scored: _Scored,
                     windows: list[Window]) -> dict[str, float]:
        """Per-round sums/counts (reduced over ranks by _round_metrics): branch gap, group
        outcomes, first-chunk diversity, weight distance."""
        k = self.rloo_batch_size
        out: dict[str, float] = {}
        groups = group_outcomes(scored.rewards, k, scored.valid)
        out["groups_n"] = groups["groups"]
        for key in ("all_fail", "mixed", "all_success"):
            out[f"groups_{key}"] = groups[key] * groups["groups"]
        chunks = [ep.sampled_chunks[0] if ep.valid and len(ep.sampled_chunks) else None for ep in episodes]
        shape = next((c.shape for c in chunks if c is not None), None)
        if shape is not None and len(episodes) % k == 0:
            first = torch.from_numpy(np.stack([c if c is not None else np.zeros(shape, np.float32) for c in chunks]))
            has = torch.tensor([c is not None for c in chunks])
            div = first_chunk_diversity(first.view(-1, k, *shape), has.view(-1, k))
            out["diversity_sum"], out["diversity_n"] = div, 1.0
        probe = windows[: self.config.diagnostic_windows]
        if probe and hasattr(model, "cfg_velocities"):
            batch = collate_windows(probe)
            batch.pop("weights")
            batch.pop("uncond_weights", None)
            # An epoch index no training pass uses: the probe's noise is its own, deterministic draw.
            noise, time = self._noise_time(model, probe, self.config.num_epochs, batch["action"].shape[1])
            v_pos, v_uncond = model.cfg_velocities(batch, noise=noise, time=time)
            gap = relative_branch_gap(v_pos.cpu(), v_uncond.cpu(), batch["action_is_pad"], self.config.action_dim)
            out["gap_sum"], out["gap_n"] = float(gap.sum()), float(gap.numel())
        if self._start_weights is not None:
            out["weight_distance"] = relative_weight_distance(_trainable(model), self._start_weights)
        return out

    @torch.no_grad()
    def _demo_probe_loss(self, model: Any, name: str) -> dict[str, float]:
        """Conditional-branch flow-matching loss on fixed windows of the SFT demos, with the same
        noise and time every round: how far RL has moved the policy from the demos it was
        trained on (it rises as the policy forgets them). ``{name}_sum`` / ``{name}_n`` over the
        non-pad steps and real action dims; {} when off."""
        dim = self._noise_dim(model)
        if self.config.demo_probe_windows == 0 or dim is None or not hasattr(model, "cfg_velocities"):
            return {}
        if self._demo_probe is None:
            demos = self.demo_replay or DemoReplay(self.config.demo_replay_path, 0, self.config.seed,
                                                   self.config.demo_replay_num_demos)
            episodes = demos.all_episodes(model.norm_stats, self._n_action_steps(model))
            # Aligned whatever the training windows are, so that every run's probe is the same windows.
            windows, _ = self.make_windows(episodes, torch.ones(len(episodes)), model,
                                           first_index=DEMO_PROBE_INDEX_OFFSET, window_mode="aligned",
                                           credit_windows="all")
            self._demo_probe = windows[: self.config.demo_probe_windows]

        def noise_seed(window: Window) -> int:
            return int(np.random.SeedSequence([self.config.seed, DEMO_PROBE_INDEX_OFFSET, window.episode_index,
                                               window.start_step]).generate_state(1)[0])

        total, count = conditional_loss_sum(model, self._demo_probe, noise_seed, dim, self.config.mini_batch_size,
                                            self.config.action_dim)
        return {f"{name}_sum": total, f"{name}_n": count}

    # ------------------------------------------------------------------------- training
    def _make_plan(self, n_local: int) -> _Plan:
        """Agree with all ranks on steps / micro-steps / per-step window totals."""
        if is_dist_ready() and get_world_size() > 1:
            counts: list[Any] = [None] * get_world_size()
            dist.all_gather_object(counts, int(n_local))
            counts = [int(x) for x in counts]
        else:
            counts = [int(n_local)]
        c = self.config
        per_step = c.mini_batch_size * c.gradient_accumulation_steps
        num_steps = max((n + per_step - 1) // per_step for n in counts) if counts else 0
        micro, totals = [], []
        for s in range(num_steps):
            in_step = [min(max(n - s * per_step, 0), per_step) for n in counts]  # per rank
            micro.append(max((k + c.mini_batch_size - 1) // c.mini_batch_size for k in in_step))
            totals.append(sum(in_step))
        needs_filler = num_steps > 0 and min(counts) == 0
        filler_src = next(r for r, n in enumerate(counts) if n > 0) if needs_filler else None
        return _Plan(counts, per_step, num_steps, micro, totals, filler_src)

    def _epoch_order(self, n: int, epoch: int) -> list[int]:
        if not self.config.shuffle_windows or n == 0:
            return list(range(n))
        entropy = [self.config.seed, self.round, epoch, get_rank(), 0x5EED]
        gen = torch.Generator().manual_seed(int(np.random.SeedSequence(entropy).generate_state(1)[0]))
        return torch.randperm(n, generator=gen).tolist()

    def _window_seed(self, window: Window, epoch: int, stream: int = 0) -> int:
        # Keyed by the window's identity, not its position: the same window gets the same noise
        # however windows are grouped into micro-batches or steps. stream > 0: another draw of the
        # same window (its image augmentation), independent of its noise.
        entropy = [self.config.seed, self.round, epoch, get_rank(), window.episode_index + 1, window.start_step]
        return int(np.random.SeedSequence(entropy + ([stream] if stream else [])).generate_state(1)[0])

    def train_on_windows(self, model: Any, windows: list[Window], optimizers: Sequence[torch.optim.Optimizer]) -> _TrainStats:
        """All epochs / steps of this round; every rank runs the same number of micro-steps."""
        plan = self._make_plan(len(windows))
        stats = _TrainStats()
        filler = windows[0] if windows else None
        if plan.filler_src is not None:
            filler = broadcast_object(filler, src=plan.filler_src)
        for epoch in range(self.config.num_epochs):
            order = self._epoch_order(len(windows), epoch)
            for s in range(plan.num_steps):
                idx = order[s * plan.windows_per_step:(s + 1) * plan.windows_per_step]
                self._optimisation_step(model, [windows[i] for i in idx], filler, plan, s, epoch, optimizers, stats)
        return stats

    def _noise_time(self, model: Any, chunk: list[Window], epoch: int, n_steps: int):
        if not self.config.seeded_noise:
            return None, None
        dim = self._noise_dim(model)
        if dim is None:
            return None, None  # the policy draws one shared noise/time itself
        return draw_noise_time([self._window_seed(w, epoch) for w in chunk], n_steps, dim)

    def _noise_dim(self, model: Any) -> int | None:
        """Width of the flow noise: ``noise_dim``, else the policy's ``config.max_action_dim``."""
        dim = self.config.noise_dim or getattr(getattr(model, "config", None), "max_action_dim", None)
        return None if dim is None else int(dim)

    def _micro_step(self, model: Any, chunk: list[Window], mask: torch.Tensor, normalizer: float,
                    epoch: int, sync: bool, stats: _TrainStats) -> bool:
        """Forward both CFG branches, weighted loss, backward. Returns whether the loss was finite."""
        batch = collate_windows(chunk)
        if self.config.image_augmentation:
            augment_camera_batch(batch, [self._window_seed(w, epoch, stream=1) for w in chunk])
        weights = batch.pop("weights")  # (n,)
        alphas = batch.pop("uncond_weights", self.config.cfg_uncond_weight)  # (n,) or the scalar alpha
        noise, time = self._noise_time(model, chunk, epoch, batch["action"].shape[1])
        context = contextlib.nullcontext() if sync else model.no_grad_sync()
        with context:
            out = model.cfg_flow_losses(batch, noise=noise, time=time)
            loss, m = weighted_cfg_flow_loss(
                out["losses_pos"], out["losses_uncond"], weights, batch["action_is_pad"],
                alphas, normalizer=normalizer, window_mask=mask,
                action_dim=self.config.action_dim,
            )
            if self._start_policy is not None:
                held = mask
                if self.config.credit_windows == "first":  # the credited window moves, the rest is held
                    held = mask & torch.tensor([not w.credited for w in chunk], dtype=torch.bool, device=mask.device)
                anchor, anchor_sum = self._output_anchor(out, batch, noise, time, held, normalizer)
                loss = loss + anchor
                stats.sums["output_anchor"] += anchor_sum
            loss.backward()
        n = m["num_windows"]
        for key in ("fm_loss", "fm_loss_pos", "fm_loss_pos_unweighted", "fm_loss_uncond", "positive_window_ratio"):
            stats.sums[key] += m[key] * n
        stats.sums["num_windows"] += n
        return bool(torch.isfinite(loss.detach()).item())

    def _optimisation_step(self, model: Any, step_windows: list[Window], filler: Window | None, plan: _Plan,
                           s: int, epoch: int, optimizers: Sequence[torch.optim.Optimizer], stats: _TrainStats) -> None:
        mbs = self.config.mini_batch_size
        # Each rank scales by N_s / world_size so DDP's average over ranks yields the mean over N_s.
        normalizer = plan.step_totals[s] / len(plan.counts)
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        finite = True
        for k in range(plan.micro_steps[s]):
            chunk = step_windows[k * mbs:(k + 1) * mbs]
            mask = torch.ones(len(chunk), dtype=torch.bool)
            if not chunk:  # this rank ran out: a masked filler keeps the collectives in step
                chunk, mask = [filler], torch.zeros(1, dtype=torch.bool)
            sync = k == plan.micro_steps[s] - 1
            finite &= self._micro_step(model, chunk, mask, normalizer, epoch, sync, stats)
        self._finish_step(model, optimizers, finite, stats)

    def _finish_step(self, model: Any, optimizers: Sequence[torch.optim.Optimizer], finite: bool,
                     stats: _TrainStats) -> None:
        """Sync (if no DDP), check finiteness on all ranks, clip per group, step or skip."""
        params = {g: [p for p in model.trainable_params[g] if p.requires_grad] for g in GROUPS}
        if _needs_manual_sync(model):
            _all_reduce_mean_grads([p for g in GROUPS for p in params[g]])
        if self.config.anchor_l2 > 0 and self._start_weights is not None:
            # After the cross-rank average: replicas are identical, so is the anchor's gradient.
            stats.sums["anchor_penalty"] += l2_anchor_(_trainable(model), self._start_weights, self.config.anchor_l2)
        norms = {g: _grad_norm(params[g]) for g in GROUPS}
        local_ok = finite and all(np.isfinite(n) for n in norms.values())
        if not _all_ranks_true(local_ok):
            for opt in optimizers:
                opt.zero_grad(set_to_none=True)  # nothing of this step reaches weights or Adam moments
            stats.nonfinite_skipped += 1
            self.consecutive_nonfinite += 1
            logger.warning("non-finite loss or grad norm (model=%s, header=%s): optimizer step skipped (%d in a row)",
                           norms["model"], norms["header"], self.consecutive_nonfinite)
            if self.consecutive_nonfinite >= self.config.max_consecutive_nonfinite:
                raise RuntimeError(
                    f"{self.consecutive_nonfinite} optimisation steps in a row had a non-finite loss or gradient "
                    f"norm (last grad norms: model={norms['model']}, header={norms['header']}); weights were left "
                    "unchanged. Check the inputs (norm stats, images), lower the learning rate, or raise "
                    "training.max_consecutive_nonfinite"
                )
            return
        self.consecutive_nonfinite = 0
        cond = _condition_params(model) if self.config.cond_lr_scale != 1.0 else []
        before = [p.detach().clone() for p in cond]
        for group, opt in zip(GROUPS, optimizers):
            stats.grad_norms[group].append(norms[group])
            _clip_(params[group], norms[group], self.config.clip_for(group))
            opt.step()
        if cond:
            scale_update_(cond, before, self.config.cond_lr_scale)
        stats.steps_taken += 1

    # -------------------------------------------------------------------------- metrics
    def _round_metrics(self, episodes: Sequence[Episode], scored: _Scored, windows: list[Window], n_skipped: int,
                       stats: _TrainStats, samples_checked: Any,
                       diagnostics: dict[str, float] | None = None) -> dict[str, float]:
        """Rank-averaged metrics. Sums and counts are reduced, then divided, so every ratio is
        the exact global ratio and every count the global total."""
        v = scored.valid
        n_valid = float(v.sum())
        local: dict[str, float] = {
            "n_valid": n_valid,
            "sum_reward": float(scored.rewards[v].sum()),
            "sum_adv": float(scored.advantages[v].sum()),
            "n_nonzero_adv": float((scored.advantages[v] != 0).sum()),
            "windows_used": float(len(windows)),
            "windows_skipped": float(n_skipped),
            "n_positive_windows": float(sum(w.weight > 0 for w in windows)),
            "rollout_checked": float(samples_checked or 0),
            "env_faults": float(sum(bool(ep.extra.get("env_fault")) for ep in episodes)),
            **{f"loss_sum/{k}": float(val) for k, val in stats.sums.items()},
            **{f"diag/{k}": float(val) for k, val in (diagnostics or {}).items()},
        }
        for ep, is_valid in zip(episodes, v.tolist()):
            if is_valid:
                local[f"task_n/{ep.task_name}"] = local.get(f"task_n/{ep.task_name}", 0.0) + 1.0
                local[f"task_s/{ep.task_name}"] = local.get(f"task_s/{ep.task_name}", 0.0) + float(bool(ep.success))
        r = all_reduce_mean_dict(local)  # collective: every rank calls it every round
        world = float(get_world_size())
        return self._format_metrics(r, world, stats)

    @staticmethod
    def _format_metrics(r: dict[str, float], world: float, stats: _TrainStats) -> dict[str, float]:
        def ratio(num: str, den: str) -> float:
            return r.get(num, 0.0) / r[den] if r.get(den, 0.0) > 0 else 0.0

        out = {
            "rollout/mean_scores": ratio("sum_reward", "n_valid"),
            "rollout/mean_advantage": ratio("sum_adv", "n_valid"),
            "rollout/non_zero_adv_ratio": ratio("n_nonzero_adv", "n_valid"),
            "rollout/rollout_checked": r.get("rollout_checked", 0.0) * world,
            "rollout/env_faults": r.get("env_faults", 0.0) * world,
            "rollout/valid_episodes": r.get("n_valid", 0.0) * world,
            "train/windows_used": r.get("windows_used", 0.0) * world,
            "train/windows_skipped": r.get("windows_skipped", 0.0) * world,
            "train/positive_window_ratio": ratio("n_positive_windows", "windows_used"),
            "train/nonfinite_skipped": float(stats.nonfinite_skipped),  # identical on all ranks
            "train/optimizer_steps": float(stats.steps_taken),
        }
        for key in ("fm_loss", "fm_loss_pos", "fm_loss_pos_unweighted", "fm_loss_uncond"):
            out[f"loss/{key}"] = ratio(f"loss_sum/{key}", "loss_sum/num_windows")
        if r.get("diag/groups_n", 0.0) > 0:
            for key in ("all_fail", "mixed", "all_success"):
                out[f"rollout/groups_{key}"] = ratio(f"diag/groups_{key}", "diag/groups_n")
        if "diag/diversity_n" in r:
            out["rollout/chunk_diversity"] = ratio("diag/diversity_sum", "diag/diversity_n")
        if "diag/gap_n" in r:
            out["train/branch_gap"] = ratio("diag/gap_sum", "diag/gap_n")
        for name, key in (("demo_loss", "train/demo_fm_loss"), ("demo_loss_before", "train/demo_fm_loss_before")):
            if f"diag/{name}_n" in r:
                out[key] = ratio(f"diag/{name}_sum", f"diag/{name}_n")
        if "diag/weight_distance" in r:
            out["train/weight_distance"] = r["diag/weight_distance"]  # identical replicas
        if "diag/n_replayed_windows" in r:
            out["train/replayed_windows"] = r["diag/n_replayed_windows"] * world
        if "diag/n_demo_windows" in r:
            out["train/demo_windows"] = r["diag/n_demo_windows"] * world
        for key in ("time/rollout_s", "time/inference_s", "time/training_s"):
            if f"diag/{key}" in r:
                out[key] = r[f"diag/{key}"]  # mean over ranks
        if "diag/sched/simulator_utilization" in r:
            out["rollout/simulator_utilization"] = r["diag/sched/simulator_utilization"]
            out["rollout/episodes_per_min"] = r["diag/sched/episodes_per_min"] * world  # all ranks
        for key in ("failed_window_share", "failed_alpha_share"):
            if f"diag/{key}" in r:
                out[f"train/{key}"] = r[f"diag/{key}"]  # mean over ranks
        if "loss_sum/output_anchor" in r:
            # Per-window ||v - v_start||^2 of both branches, before the coefficient.
            out["loss/output_anchor"] = ratio("loss_sum/output_anchor", "loss_sum/num_windows")
        if r.get("loss_sum/anchor_penalty", 0.0) > 0:
            out["loss/anchor_penalty"] = r["loss_sum/anchor_penalty"] / max(float(stats.steps_taken), 1.0)
        for group in GROUPS:  # post-sync norms are identical on all ranks
            norms = stats.grad_norms[group]
            out[f"train/grad_norm_{group}"] = float(np.mean(norms)) if norms else 0.0
        for key in r:
            if key.startswith("task_n/"):
                task = key[len("task_n/"):]
                out[f"rollout/success_rate/{task}"] = ratio(f"task_s/{task}", key)
        return out


# ------------------------------------------------------------------------------ grad helpers
def _trainable(model: Any) -> list[torch.Tensor]:
    return [p for g in GROUPS for p in model.trainable_params[g] if p.requires_grad]


def _condition_params(model: Any) -> list[torch.Tensor]:
    """The CFG condition's trainable parameters (``model.condition_parameters()``)."""
    getter = getattr(model, "condition_parameters", None)
    if getter is None:
        raise ValueError("cond_lr_scale != 1 needs a policy with condition_parameters() (PI0_OFT_Policy has it); "
                         "use cond_lr_scale=1")
    params = [p for p in getter() if p.requires_grad]
    if not params:
        raise ValueError("cond_lr_scale != 1 but the policy has no trainable condition parameters; use cond_lr_scale=1")
    return params


def _grad_norm(params: Sequence[torch.Tensor]) -> float:
    """L2 norm of all gradients of a group (0 when none has a gradient)."""
    grads = [p.grad.detach().float() for p in params if p.grad is not None]
    if not grads:
        return 0.0
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))


def _clip_(params: Sequence[torch.Tensor], norm: float, max_norm: float | None) -> None:
    """Scale gradients so their norm is at most ``max_norm`` (torch's clip_grad_norm_ rule)."""
    if max_norm is None or norm <= max_norm:
        return
    coef = max_norm / (norm + 1e-6)
    for p in params:
        if p.grad is not None:
            p.grad.detach().mul_(coef)


def _collective_device() -> torch.device:
    if is_dist_ready() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _all_ranks_true(flag: bool) -> bool:
    """Logical AND over ranks, so every rank takes (or skips) the same optimizer step."""
    if not is_dist_ready() or get_world_size() == 1:
        return flag
    t = torch.tensor([0.0 if flag else 1.0], device=_collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() == 0.0)


def _needs_manual_sync(model: Any) -> bool:
    """A process group is up but the policy's module is not DDP: average gradients ourselves."""
    if not is_dist_ready() or get_world_size() == 1:
        return False
    inner = getattr(model, "model", model)
    return not isinstance(inner, torch.nn.parallel.DistributedDataParallel)


def _all_reduce_mean_grads(params: Sequence[torch.Tensor]) -> None:
    """One flattened all-reduce of every gradient (missing grads count as zeros), then / world."""
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params]).to(_collective_device())
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= get_world_size()
    offset = 0
    for p in params:
        n = p.grad.numel()
        p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
        offset += n
