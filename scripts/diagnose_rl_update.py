"""Diagnose one CFG-Flow RL update on real LIBERO (CPU, a few minutes).

Loads the shipped small PI0 SFT checkpoint as the LIBERO RL job does (scripts/bench_learning_libero.py
``rl_overrides`` + run B: float32, small preset, per-layer condition, ``train_expert_only``), collects
one small real round through the real RolloutGenerator + scheduler while recording every
``select_action`` call, then checks:

  a. each training window's observation (images, state, prompt tokens) is bit-identical to what
     ``select_action`` received at that chunk start, and re-sampling it with the chunk's own noise
     seed reproduces the sampled chunk;
  b. window labels (model space) vs the sampled normalised chunks with ``clip_labels`` off / on,
     and how much clipping changes them (gripper, arm);
  c. the start model's flow-matching loss on its own success / failure windows vs on SFT-style
     demonstration windows (``--demo-pack``, from ``scripts/sft_libero.py record``), same noise/time law;
  d. the optimizer's real update on that round (``CFGFlowOptimizerPI0.optimize``, run-B settings),
     then further passes until ``--match-steps`` optimizer steps (a run-B round is ~100): loss on
     positive / negative windows, own-noise re-samples vs labels, and policy drift at observations
     not trained on relative to the natural spread between samples;
  e. an audit of the optimizer / model set-up (groups, decay, modes, branches at round 0, norm stats).

Command (about 10 minutes on 2 cores)::

    PYTHONPATH=$PWD python scripts/sft_libero.py record --task 4 --max-demos 3 --out /tmp/diag/demos3.npz
    PYTHONPATH=$PWD python scripts/diagnose_rl_update.py --states 2 --k 4 --num-envs 2 \\
        --demo-pack /tmp/diag/demos3.npz --out /tmp/diag/report.json
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402

logger = logging.getLogger("diagnose_rl_update")

KETCHUP = "pick_up_the_ketchup_and_place_it_in_the_basket"
CHECKPOINT = "builtin:pi0_small_libero_object_ketchup"
GRIPPER = 6


# ----------------------------------------------------------------------------- pure helpers
def observation_diffs(window_images: dict[str, np.ndarray], window_state: np.ndarray, window_prompt: str,
                      call_images: dict[str, np.ndarray], call_state: np.ndarray, call_prompt: str) -> dict[str, Any]:
    """Exact comparison of a training window's observation with the one ``select_action`` got.

    Images uint8 (3, H, W) per slot, states float32 (8,). Returns the max absolute differences and
    whether everything is bit-identical."""
    slots = sorted(set(window_images) | set(call_images))
    image_diff = {}
    for slot in slots:
        a, b = window_images.get(slot), call_images.get(slot)
        if a is None or b is None or np.shape(a) != np.shape(b):
            image_diff[slot] = float("inf")
        else:
            image_diff[slot] = float(np.max(np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16))))
    state_diff = float(np.max(np.abs(np.asarray(window_state, np.float64) - np.asarray(call_state, np.float64))))
    identical = (all(d == 0 for d in image_diff.values()) and state_diff == 0
                 and np.asarray(window_state).tobytes() == np.asarray(call_state).tobytes()
                 and window_prompt == call_prompt)
    return {"image_max_abs": max(image_diff.values()) if image_diff else 0.0, "state_max_abs": state_diff,
            "prompt_equal": window_prompt == call_prompt, "identical": bool(identical)}


def clip_label_changes(labels: np.ndarray, clipped: np.ndarray, is_pad: np.ndarray,
                       gripper_dim: int = GRIPPER) -> dict[str, float]:
    """How ``clip_labels`` changes model-space labels: (N, H, 7) each, is_pad (N, H) True = padding.

    Over the real (non-pad) steps: the fraction of gripper labels whose model-space value moved by
    more than 0.5 or changed sign, the mean |gripper change|, the fraction of arm entries changed
    (> 1e-6), and the mean / max |arm change| (model space)."""
    keep = ~np.asarray(is_pad, bool)  # (N, H)
    d = np.asarray(clipped, np.float64) - np.asarray(labels, np.float64)  # (N, H, 7)
    g, g_new = np.asarray(labels)[..., gripper_dim][keep], np.asarray(clipped)[..., gripper_dim][keep]
    dg = np.abs(d[..., gripper_dim][keep])
    arm = np.abs(np.delete(d, gripper_dim, axis=-1)[keep])  # (n, 6)
    n = max(int(keep.sum()), 1)
    return {
        "gripper_moved_gt_0.5": float((dg > 0.5).sum() / n),
        "gripper_sign_flip": float((np.sign(g) != np.sign(g_new)).sum() / n),
        "gripper_mean_abs_change": float(dg.mean()) if dg.size else 0.0,
        "arm_changed_frac": float((arm > 1e-6).mean()) if arm.size else 0.0,
        "arm_mean_abs_change": float(arm.mean()) if arm.size else 0.0,
        "arm_max_abs_change": float(arm.max()) if arm.size else 0.0,
    }


def sample_spread(samples: np.ndarray) -> float:
    """Natural spread of a policy at one observation: std over M samples (M, H, A), averaged."""
    x = np.asarray(samples, np.float64)
    if x.shape[0] < 2:
        return 0.0
    return float(x.std(axis=0).mean())


def drift_ratio(before: np.ndarray, after: np.ndarray, spread: float) -> dict[str, float]:
    """RMS change of same-noise samples (..., H, A) before -> after the update, and its ratio to the
    natural spread (:func:`sample_spread`) at the same observations."""
    rms = float(np.sqrt(np.mean((np.asarray(after, np.float64) - np.asarray(before, np.float64)) ** 2)))
    return {"rms_change": rms, "spread": float(spread), "ratio": rms / spread if spread > 0 else float("inf")}


# ----------------------------------------------------------------------------- recording
class SelectActionRecorder:
    """Wraps ``policy.select_action`` (instance attribute) and keeps a deep copy of each call."""

    def __init__(self, policy: Any):
        self.policy = policy
        self.calls: list[dict[str, Any]] = []
        self._inner = policy.select_action

        def select_action(observation: Any, cfg_scale: float = 1.0, noise_seeds: Sequence[int] | None = None):
            out = self._inner(observation, cfg_scale=cfg_scale, noise_seeds=noise_seeds)
            self.calls.append({"obs": copy.deepcopy({k: np.array(v) if isinstance(v, np.ndarray) else v
                                                     for k, v in observation.items()}),
                               "seeds": None if noise_seeds is None else list(noise_seeds),
                               "out": out.detach().cpu().numpy().copy(), "cfg_scale": cfg_scale})
            return out

        policy.select_action = select_action

    def restore(self) -> None:
        self.policy.select_action = self._inner

    def index(self) -> dict[bytes, tuple[int, int]]:
        """Sampled chunk bytes -> (call, row): finds the call that produced an episode's chunk."""
        return {c["out"][j].astype(np.float32).tobytes(): (i, j) for i, c in enumerate(self.calls)
                for j in range(c["out"].shape[0])}


# ----------------------------------------------------------------------------- set-up
def make_policy(args: argparse.Namespace) -> Any:
    from ript.algos.policies.pi0_oft_policy import PI0_OFT_Policy

    return PI0_OFT_Policy(pretrained_path=CHECKPOINT, norm_stats_path=CHECKPOINT, preset="small", dtype="float32",
                          freeze_vision_encoder=False, train_expert_only=args.train_expert_only,
                          cond_layer_modulation=True, attention_implementation="sdpa", strict_load=True)


def make_optimizers(policy: Any, lr: float) -> list[Any]:
    """config/algo/pi0_cfg_rl.yaml's optimizer factories."""
    import torch

    return [torch.optim.AdamW(policy.trainable_params[g], lr=lr, betas=(0.9, 0.95), weight_decay=1e-10)
            for g in ("model", "header")]


def make_rl_optimizer(args: argparse.Namespace, episodes: list[Any]) -> Any:
    """Run B's CFG-Flow settings, with a rollout generator that hands back the collected round."""
    from ript.algos.rl_optimizers.cfg_flow_optimizer_pi0 import CFGFlowOptimizerPI0
    from ript.algos.rl_optimizers.rewards import BinarySuccessReward

    class _Replay:
        rloo_batch_size = args.k
        last_scheduler = None

        def generate_rollouts(self, *_: Any) -> tuple:
            return episodes, [0] * len(episodes), [True] * len(episodes), len(episodes) // args.k

    return CFGFlowOptimizerPI0(
        _Replay(), BinarySuccessReward(), num_epochs=args.num_epochs, mini_batch_size=args.mini_batch_size,
        grad_norm_clip=1.0, a_max=5.0, cfg_uncond_weight=args.alpha, weight_mode="binary", window_stride=50,
        window_mode="aligned", short_window="pad", action_mode="absolute", success_replay_per_state=2,
        episode_weighting="episode", clip_labels=args.clip_labels, cond_lr_scale=args.cond_lr_scale,
        uncond_scope=args.uncond_scope, anchor_l2=args.anchor_l2, diagnostic_windows=16, seed=0,
        demo_replay_path=args.demo_pack if args.demo_replay_per_round else None,
        demo_replay_per_round=args.demo_replay_per_round)


def collect_round(args: argparse.Namespace, policy: Any, runner: Any, rows: list[int]) -> list[Any]:
    from torch.utils.data import DataLoader

    from ript.algos.rl_optimizers.rollout_generator import RolloutGenerator
    from ript.datasets.init_state_dataset import InitStateDataset, collate_init_states

    task_id = runner.benchmark.get_task_names().index(KETCHUP)
    states = runner._init_states(KETCHUP)[rows]
    loader = DataLoader(InitStateDataset([(task_id, KETCHUP, states)]), batch_size=len(rows),
                        collate_fn=collate_init_states)
    generator = RolloutGenerator(runner, rloo_batch_size=args.k, demo_batch_size=len(rows), use_tqdm=False,
                                 task_names_to_use=[KETCHUP], seed=args.seed)
    batches = iter(loader)
    t0 = time.time()
    episodes, _, valid, _ = generator.generate_rollouts(policy, next(batches), batches, loader)
    logger.info("round: %d episodes (%d successes) in %.0f s", len(episodes),
                sum(ep.success for ep in episodes if ep.valid), time.time() - t0)
    return [ep for ep, v in zip(episodes, valid) if v]


def first_observations(runner: Any, policy: Any, rows: list[int]) -> dict[str, Any]:
    """PI0 observations of init states ``rows`` after the settle steps (no policy step)."""
    from ript.env_runner.pi0_runner_utils import env_obs_to_pi0_observation

    env, _, _ = runner.create_env(KETCHUP)
    states = runner._init_states(KETCHUP)
    obs: list[Any] = []
    for first in range(0, len(rows), len(env)):
        group = rows[first:first + len(env)]
        obs += runner._reset_batch(env, list(range(len(group))), [states[r] for r in group], False)
    pi0_obs, _ = env_obs_to_pi0_observation(obs, [runner._task_description(KETCHUP)] * len(obs), policy.norm_stats,
                                            rotate_180=runner.rotate_images_180, image_size=policy.image_size)
    return pi0_obs


# ----------------------------------------------------------------------------- measurements
def batch_of(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack single observations {image.*: (3,H,W), state: (8,), prompt: str} into a batch."""
    out: dict[str, Any] = {k: np.stack([it[k] for it in items]) for k in items[0] if k.startswith("image.")}
    out["state"] = np.stack([it["state"] for it in items]).astype(np.float32)
    out["prompt"] = [it["prompt"] for it in items]
    return out


def window_obs(w: Any) -> dict[str, Any]:
    return {**{f"image.{k}": v for k, v in w.images.items()}, "state": w.state, "prompt": w.prompt}


def sample(policy: Any, observations: list[dict[str, Any]], seeds: list[int], chunk: int = 16) -> np.ndarray:
    """Chunks (N, H, 7) for observation i with noise seed seeds[i] (the scheduler's noise law)."""
    out = []
    for first in range(0, len(observations), chunk):
        part = observations[first:first + chunk]
        out.append(policy.select_action(batch_of(part), noise_seeds=seeds[first:first + chunk]).numpy())
    return np.concatenate(out)


def fm_losses(policy: Any, windows: list[Any], draws: int, seed: int, chunk: int = 16) -> np.ndarray:
    """Per-window conditional-branch (is_positive=1) flow-matching loss, mean over ``draws`` noise/time
    draws (cfg_flow_math.draw_noise_time, RL's and SFT's law). -> (N,)."""
    import torch

    from ript.algos.rl_optimizers.cfg_flow_math import collate_windows, draw_noise_time, masked_window_mse

    total = np.zeros(len(windows))
    with torch.no_grad():
        for d in range(draws):
            for first in range(0, len(windows), chunk):
                part = windows[first:first + chunk]
                batch = collate_windows(part)
                batch.pop("weights")
                batch.pop("uncond_weights", None)
                seeds = [int(np.random.SeedSequence([seed, d, first + i]).generate_state(1)[0]) for i in range(len(part))]
                noise, t = draw_noise_time(seeds, batch["action"].shape[1], policy.config.max_action_dim)
                out = policy.cfg_flow_losses(batch, noise=noise, time=t)
                total[first:first + len(part)] += masked_window_mse(out["losses_pos"], batch["action_is_pad"]).numpy()
    return total / draws


def audit(policy: Any, optimizers: list[Any], windows: list[Any], args: argparse.Namespace) -> dict[str, Any]:
    """(e): what trains, how, and whether both branches are the SFT policy at round 0."""
    import torch

    from ript.algos.policies.pi0_oft_policy import PI0_OFT_Policy
    from ript.algos.rl_optimizers.cfg_flow_math import collate_windows, draw_noise_time

    pi0 = policy.pi0
    names = {id(p): n for n, p in pi0.named_parameters()}
    groups = {}
    for g, opt in zip(("model", "header"), optimizers):
        params = [p for pg in opt.param_groups for p in pg["params"]]
        top = sorted({".".join(names[id(p)].split(".")[:3]) for p in params})
        groups[g] = {"tensors": len(params), "numel": int(sum(p.numel() for p in params)),
                     "modules": top[:12] + (["..."] if len(top) > 12 else []),
                     "hyper": {k: v for k, v in opt.param_groups[0].items() if k != "params"}}
    frozen = sorted({".".join(n.split(".")[:4]) for n, p in pi0.named_parameters() if not p.requires_grad})
    dropouts = [(n, float(m.p)) for n, m in pi0.named_modules() if isinstance(m, torch.nn.Dropout) and m.p > 0]
    attn_dropout = {k: v for k, v in vars(pi0.config).items() if "dropout" in k}
    # Both branches at round 0 vs a policy built without the per-layer condition (the SFT model).
    probe = windows[:8]
    batch = collate_windows(probe)
    batch.pop("weights")
    batch.pop("uncond_weights", None)
    noise, t = draw_noise_time(list(range(len(probe))), batch["action"].shape[1], policy.config.max_action_dim)
    v_pos, v_unc = policy.cfg_velocities(batch, noise=noise, time=t)
    plain = PI0_OFT_Policy(pretrained_path=CHECKPOINT, norm_stats_path=CHECKPOINT, preset="small", dtype="float32",
                           freeze_vision_encoder=False, train_expert_only=args.train_expert_only,
                           cond_layer_modulation=False, attention_implementation="sdpa", strict_load=True)
    p_pos, p_unc = plain.cfg_velocities(batch, noise=noise, time=t)
    emb = pi0.model.cond_embed.weight.detach()
    stats = policy.norm_stats
    return {
        "optimizer_groups": groups, "frozen_modules": frozen[:20], "n_frozen_tensors":
            sum(not p.requires_grad for p in pi0.parameters()),
        "dropout_modules_p_gt_0": dropouts, "config_dropout_fields": attn_dropout,
        "condition_params": [n for n, p in pi0.named_parameters() if "cond_" in n],
        "cond_layer_mod_abs_max": float(pi0.model.cond_layer_mod.detach().abs().max()),
        "cond_embed_row_norms": [float(emb[0].norm()), float(emb[1].norm())],
        "cond_embed_row_diff_norm": float((emb[1] - emb[0]).norm()),
        "round0_v_pos_vs_sft_max_abs": float((v_pos - p_pos).abs().max()),
        "round0_v_uncond_vs_sft_uncond_max_abs": float((v_unc - p_unc).abs().max()),
        "round0_branch_gap_rel": float((v_pos - v_unc).norm() / v_pos.norm()),
        "norm_stats_action_mean": stats.action_mean.round(4).tolist(),
        "norm_stats_action_std": stats.action_std.round(4).tolist(),
        "gripper_env_pm1_in_model_space": [float(stats.normalize_action(np.full(7, v))[GRIPPER]) for v in (-1.0, 1.0)],
    }


# ----------------------------------------------------------------------------- main
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--states", type=int, default=2, help="training init states in the round")
    p.add_argument("--k", type=int, default=4, help="rollouts per init state (RLOO K)")
    p.add_argument("--num-envs", type=int, default=2, help="simulators")
    p.add_argument("--heldout-states", type=int, default=2, help="held-out init states for the drift probe")
    p.add_argument("--state-offset", type=int, default=10,
                   help="first training row used (rows 0..9 of the split are the SFT demos' states)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--demo-pack", default=None, help="scripts/sft_libero.py record pack for check c (optional)")
    p.add_argument("--train-expert-only", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--clip-labels", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--cond-lr-scale", type=float, default=10.0)
    p.add_argument("--alpha", type=float, default=0.1, help="algo.cfg_uncond_weight")
    p.add_argument("--uncond-scope", default="all", choices=["all", "successes"], help="algo.uncond_scope")
    p.add_argument("--anchor-l2", type=float, default=0.0, help="algo.anchor_l2")
    p.add_argument("--demo-replay-per-round", type=int, default=0,
                   help="algo.demo_replay_per_round with --demo-pack as the pack (0: off, as in run B)")
    p.add_argument("--num-epochs", type=int, default=4)
    p.add_argument("--mini-batch-size", type=int, default=16)
    p.add_argument("--match-steps", type=int, default=100,
                   help="keep training on the round's windows until this many optimizer steps (run B: ~100/round)")
    p.add_argument("--drift-seeds", type=int, default=4, help="noise seeds per observation for spread/drift")
    p.add_argument("--loss-draws", type=int, default=4, help="noise/time draws per window for the losses")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave)")
    p.add_argument("--out", default=None, help="write the report as JSON here")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import torch

    from ript.datasets.init_state_dataset import split_train_val_rows
    from ript.env_runner.pi0_libero_runner import Pi0LiberoRunner

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    report: dict[str, Any] = {"args": vars(args)}
    train_rows, val_rows = (list(map(int, r)) for r in split_train_val_rows(50, 25, 0))
    rows = train_rows[args.state_offset:args.state_offset + args.states]
    held = val_rows[:args.heldout_states]
    policy = make_policy(args)
    runner = Pi0LiberoRunner("libero_object", task_names_to_use=[KETCHUP], num_parallel_envs=args.num_envs,
                             action_mode="absolute", hard_reset=False, seed=args.seed, camera_height=256,
                             camera_width=256, open_loop=50, n_action_steps=50, max_episode_length=280)
    try:
        recorder = SelectActionRecorder(policy)
        episodes = collect_round(args, policy, runner, rows)
        recorder.restore()
        held_obs = first_observations(runner, policy, held)
    finally:
        runner.close()
    report["round"] = {"rows": rows, "episodes": len(episodes), "successes": int(sum(ep.success for ep in episodes)),
                       "steps": [int(ep.num_steps) for ep in episodes], "policy_calls": len(recorder.calls)}

    # ---- (a) observations + own-noise reproduction
    from ript.algos.rl_optimizers.cfg_flow_math import cut_windows

    index = recorder.index()
    checks, exact, missing, units = [], 0, 0, []
    for e, ep in enumerate(episodes):
        windows, _ = cut_windows(ep, 1.0, policy.norm_stats, short_window="pad", action_mode="absolute",
                                 episode_index=e)
        for c, w in enumerate(windows):
            hit = index.get(ep.sampled_chunks[c].astype(np.float32).tobytes())
            if hit is None:
                missing += 1
                continue
            call = recorder.calls[hit[0]]
            j = hit[1]
            d = observation_diffs(w.images, w.state, w.prompt,
                                  {k[len("image."):]: call["obs"][k][j] for k in call["obs"] if k.startswith("image.")},
                                  call["obs"]["state"][j], call["obs"]["prompt"][j])
            checks.append(d)
            exact += d["identical"]
            units.append({"episode": e, "chunk": c, "window": w, "seed": call["seeds"][j], "chunk_sampled": ep.sampled_chunks[c]})
    tokens_equal = True
    if units:
        tok_w, _ = policy.pi0.prepare_language({"prompt": [u["window"].prompt for u in units]})
        call_prompts = [recorder.calls[index[u["chunk_sampled"].astype(np.float32).tobytes()][0]]["obs"]["prompt"][
            index[u["chunk_sampled"].astype(np.float32).tobytes()][1]] for u in units]
        tok_c, _ = policy.pi0.prepare_language({"prompt": call_prompts})
        tokens_equal = bool(torch.equal(tok_w, tok_c))
    policy.eval()
    resampled = sample(policy, [window_obs(u["window"]) for u in units], [u["seed"] for u in units])
    sampled = np.stack([u["chunk_sampled"] for u in units])
    report["a_observations"] = {
        "windows": len(checks), "chunks_not_found_in_calls": missing, "bit_identical": exact,
        "image_max_abs": max(c["image_max_abs"] for c in checks), "state_max_abs": max(c["state_max_abs"] for c in checks),
        "prompt_tokens_equal": tokens_equal,
        "resample_own_seed_max_abs": float(np.abs(resampled - sampled).max()),
        "resample_own_seed_rms": float(np.sqrt(np.mean((resampled - sampled) ** 2))),
    }
    logger.info("a: %s", report["a_observations"])

    # ---- (b) labels vs sampled chunks, clip_labels effect
    noclip, clip, pads, samp = [], [], [], []
    for u in units:
        ep = episodes[u["episode"]]
        t = int(ep.chunk_start_steps[u["chunk"]])
        w0, _ = cut_windows(ep, 1.0, policy.norm_stats, short_window="pad", action_mode="absolute")
        w1, _ = cut_windows(ep, 1.0, policy.norm_stats, short_window="pad", action_mode="absolute", clip_labels=True)
        k = [x.start_step for x in w0].index(t)
        noclip.append(w0[k].action)
        clip.append(w1[k].action)
        pads.append(w0[k].action_is_pad)
        samp.append(u["chunk_sampled"])
    noclip, clip, pads, samp = map(np.stack, (noclip, clip, pads, samp))
    keep = ~pads
    stats = policy.norm_stats
    env = stats.unnormalize_action(samp)  # (N, H, 7) env commands
    report["b_labels"] = {
        "noclip_vs_sampled_max_abs": float(np.abs(noclip - samp)[keep].max()),
        "clip_vs_sampled_max_abs": float(np.abs(clip - samp)[keep].max()),
        "clip_changes": clip_label_changes(noclip, clip, pads),
        "env_arm_outside_pm1_frac": float((np.abs(env[..., :6]) > 1.0)[keep].mean()),
        "env_gripper_abs_lt_0.5_frac": float((np.abs(env[..., GRIPPER]) < 0.5)[keep].mean()),
        "model_gripper_quantiles": np.quantile(samp[..., GRIPPER][keep], [0.01, 0.1, 0.5, 0.9, 0.99]).round(3).tolist(),
    }
    logger.info("b: %s", report["b_labels"])

    # ---- (e) audit (before training)
    optimizers = make_optimizers(policy, args.lr)
    rl = make_rl_optimizer(args, episodes)
    scored = rl.score_episodes(episodes, [True] * len(episodes))
    windows, _ = rl.make_windows(episodes, scored.weights, policy)
    rl.assign_window_weights(windows)
    report["e_audit"] = audit(policy, optimizers, windows, args)
    logger.info("e: %s", report["e_audit"])

    # ---- (c) FM loss: own successes / failures vs demos
    pos = [w for w in windows if w.weight > 0]
    neg = [w for w in windows if w.weight == 0]
    succ = [w for w in windows if w.success]
    fail = [w for w in windows if not w.success]
    policy.train()
    loss_before = fm_losses(policy, windows, args.loss_draws, args.seed)
    c_report = {"own_success_windows": float(loss_before[[w.success for w in windows]].mean()) if succ else None,
                "own_failure_windows": float(loss_before[[not w.success for w in windows]].mean()) if fail else None,
                "n_success_windows": len(succ), "n_failure_windows": len(fail), "n_positive": len(pos)}
    demo_windows: list[Any] = []
    if args.demo_pack:
        from ript.algos.sft_warm_start import demonstration_windows
        from ript.datasets.demo_pack import load_demo_pack

        demos = load_demo_pack(args.demo_pack)
        for stride in (10, 50):
            dw = demonstration_windows(demos, policy.norm_stats, stride=stride, action_mode="absolute")
            c_report[f"demo_windows_stride{stride}"] = float(fm_losses(policy, dw, args.loss_draws, args.seed).mean())
            c_report[f"n_demo_windows_stride{stride}"] = len(dw)
            if stride == 10:
                demo_windows = dw
    report["c_fm_loss_start"] = c_report
    logger.info("c: %s", c_report)

    # ---- (d) the real update, then more passes up to --match-steps
    untrained = [{"image.base_0_rgb": held_obs["image.base_0_rgb"][i], "image.left_wrist_0_rgb":
                  held_obs["image.left_wrist_0_rgb"][i], "state": held_obs["state"][i], "prompt": held_obs["prompt"][i]}
                 for i in range(len(held))]
    trained = [window_obs(w) for w in windows]
    probe_seeds = [1000 + s for s in range(args.drift_seeds)]

    def probe(obs_list: list[dict[str, Any]]) -> np.ndarray:  # (S, N, H, 7)
        return np.stack([sample(policy, obs_list, [s] * len(obs_list)) for s in probe_seeds])

    before = {"untrained": probe(untrained), "trained": probe(trained)}
    trained_labels = clip if args.clip_labels else noclip  # what the update fits
    own_before = sample(policy, [window_obs(u["window"]) for u in units], [u["seed"] for u in units])
    checkpoints = {}
    t0 = time.time()
    metrics = rl.optimize(policy, None, optimizers)
    steps = int(metrics["train/optimizer_steps"])
    checkpoints[steps] = {k: float(v) for k, v in metrics.items() if k.startswith(("loss/", "train/"))}
    logger.info("d: real update: %d steps in %.0f s, %s", steps, time.time() - t0, checkpoints[steps])
    results = {}

    def measure(n_steps: int) -> None:
        policy.eval()
        after = {"untrained": probe(untrained), "trained": probe(trained)}
        own_after = sample(policy, [window_obs(u["window"]) for u in units], [u["seed"] for u in units])
        policy.train()
        loss_after = fm_losses(policy, windows, args.loss_draws, args.seed)
        is_pos = np.array([w.weight > 0 for w in windows])
        unit_pos = np.array([episodes[u["episode"]].success for u in units])
        unit_keep = keep
        res = {}
        is_fail = np.array([not w.success for w in windows])
        for label, sel in (("pos", is_pos), ("neg", ~is_pos), ("fail", is_fail), ("success_w0", ~is_pos & ~is_fail)):
            if sel.any():
                res[f"fm_loss_{label}_before"] = float(loss_before[sel].mean())
                res[f"fm_loss_{label}_after"] = float(loss_after[sel].mean())
        if demo_windows:
            res["fm_loss_demo_after"] = float(fm_losses(policy, demo_windows, args.loss_draws, args.seed).mean())
        for name in ("trained", "untrained"):
            spread = float(np.mean([sample_spread(before[name][:, i]) for i in range(before[name].shape[1])]))
            res[f"drift_{name}_obs"] = drift_ratio(before[name], after[name], spread)
            env_change = (after[name] - before[name]) * stats.action_std  # env units (absolute actions)
            res[f"drift_{name}_env_rms_per_dim"] = np.sqrt(np.mean(env_change ** 2, axis=(0, 1, 2))).round(4).tolist()
            g_b, g_a = before[name][..., GRIPPER], after[name][..., GRIPPER]
            thr = float(stats.normalize_action(np.zeros(7))[GRIPPER])  # env gripper 0 in model space
            res[f"gripper_sign_change_{name}"] = float(((g_b > thr) != (g_a > thr)).mean())
        for label, sel in (("pos", unit_pos), ("neg", ~unit_pos)):
            if sel.any():
                k_ = unit_keep[sel]
                res[f"own_noise_{label}_rms_to_label_before"] = float(np.sqrt(np.mean(((own_before - trained_labels)[sel][k_]) ** 2)))
                res[f"own_noise_{label}_rms_to_label_after"] = float(np.sqrt(np.mean(((own_after - trained_labels)[sel][k_]) ** 2)))
                res[f"own_noise_{label}_rms_change"] = float(np.sqrt(np.mean(((own_after - own_before)[sel][k_]) ** 2)))
        results[n_steps] = res
        logger.info("d: after %d steps: %s", n_steps, res)

    measure(steps)
    # Further passes over the same windows, as the rounds of a run add up (fresh noise: the round seeds it).
    rl.config = type(rl.config)(**{**vars(rl.config), "num_epochs": 1})
    while steps < args.match_steps:
        rl.round += 1
        pass_windows = list(windows)
        rl._add_demo_windows(pass_windows, policy)  # demo replay (when on) draws this pass's demos
        for w in pass_windows[len(windows):]:
            w.uncond_weight = args.alpha
        steps += rl.train_on_windows(policy, pass_windows, optimizers).steps_taken
    if steps > min(results):
        measure(steps)
    report["d_update"] = {"optimize_metrics": checkpoints, "by_steps": {str(k): v for k, v in results.items()}}
    print_table(report)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1, default=float) + "\n")
    return report


def print_table(report: dict[str, Any]) -> None:
    """The final report: one line per number."""
    lines = ["", "== diagnose_rl_update report =="]

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(value, float):
            lines.append(f"{prefix:<70} {value:.5g}")
        else:
            lines.append(f"{prefix:<70} {value}")

    walk("", {k: v for k, v in report.items() if k != "args"})
    print("\n".join(lines))


if __name__ == "__main__":
    main()
