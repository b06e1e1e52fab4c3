#!/usr/bin/env python
"""Evaluate a PI0 checkpoint over a grid of CFG guidance scales; per-task success table + plot.

What it accepts as ``--checkpoint``:

* a PI0 weights file or directory (``*.safetensors``, a dir with ``model.safetensors`` or a sharded
  ``model.safetensors.index.json``) -- the policy is built from the composed config with
  ``algo.policy.pretrained_path`` set to it;
* a training checkpoint directory (``<run>/checkpoints/step_N`` with ``trainable.safetensors`` +
  ``state.pt``) or a run directory (its newest checkpoint is used): the config saved with the
  checkpoint (``state.pt`` extra["config"]) rebuilds the policy (its own ``pretrained_path`` gives
  the frozen weights), then the trained weights are loaded on top.

PI0 weights need ``--task`` (the base config's task is the CPU smoke setup, never a real
evaluation). ``eval=openpi`` among the overrides selects openpi's published LIBERO protocol
(``config/eval/openpi.yaml``: 256 px, replan 5, 50 trials per task, env seed 7) for either kind
of checkpoint; the protocol is recorded in the output.

Examples::

    # the real PI0 on LIBERO-Goal under openpi's protocol, on a GPU
    python scripts/eval_cfg_sweep.py --checkpoint /ckpt/pi0_libero --task libero_goal_rl --cfg-scales 1.0 \\
        eval=openpi algo.policy.norm_stats_path=/ckpt/pi0_libero/assets/physical-intelligence/libero/norm_stats.json \\
        algo.policy.tokenizer_path=/ckpt/paligemma_tokenizer
    # a reach training run, on held-out init states
    python scripts/eval_cfg_sweep.py --checkpoint outputs/2025-01-01/12-00-00 \\
        task.env_config.init_state_seed=1000

Writes ``<out-dir>/cfg_sweep.json``, ``cfg_sweep.md`` and ``cfg_sweep.png``; prints the table.
Trailing arguments are Hydra overrides applied on top of the (saved or composed) config.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # runnable as `python scripts/eval_cfg_sweep.py` from anywhere
    sys.path.insert(0, str(REPO_ROOT))

from omegaconf import DictConfig, OmegaConf  # noqa: E402

logger = logging.getLogger("eval_cfg_sweep")
DEFAULT_SCALES = (1.0, 1.5, 2.0, 3.0)
CONFIG_DIR = REPO_ROOT / "config"
BASE_CONFIG = "train_base_rl_openvla_oft"


# ------------------------------------------------------------------------------ loading
def is_training_checkpoint(path: Path) -> bool:
    from ript.training.checkpointing import is_training_checkpoint as _is_training_checkpoint

    return _is_training_checkpoint(path)  # whole files or split into pieces (training.checkpoint_shard_mb)


def resolve_training_checkpoint(path: str | Path) -> Path | None:
    """A training checkpoint dir, or the newest one in a run dir or a folder of step_<N> dirs; None
    for a PI0 weights path."""
    from ript.training.checkpointing import latest_checkpoint

    path = Path(path)
    if path.is_dir() and is_training_checkpoint(path):
        return path
    if path.is_dir() and (path / "checkpoints").is_dir():
        return latest_checkpoint(path)
    # A folder holding step_<N> checkpoints itself (a run's checkpoints/, or an unpacked final_<run>/).
    steps = [(int(p.name[len("step_"):]), p) for p in path.glob("step_*")
             if p.name[len("step_"):].isdigit() and is_training_checkpoint(p)] if path.is_dir() else []
    return max(steps)[1] if steps else None


def compose_config(task: str | None, overrides: Sequence[str] = ()) -> DictConfig:
    """The training config (``config/train_base_rl_openvla_oft.yaml``) with ``task=`` and overrides."""
    from hydra import compose, initialize_config_dir

    extra = [f"task={task}"] if task else []
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        # output_dir defaults to Hydra's run dir, which only exists inside a Hydra app.
        has_out = any(o.split("=", 1)[0].lstrip("+") == "output_dir" for o in overrides)
        cfg = compose(config_name=BASE_CONFIG, overrides=[*extra, *overrides, *([] if has_out else ["output_dir=."])])
    return cfg


def _split_eval_protocol(overrides: Sequence[str]) -> tuple[str | None, list[str]]:
    """``eval=<name>`` (the protocol switch of the training CLI) and the other overrides."""
    protocol, rest = None, []
    for override in overrides:
        key, _, value = override.partition("=")
        if key.lstrip("+") == "eval":
            protocol = value
        else:
            rest.append(override)
    return protocol, rest


def _apply_overrides(cfg: DictConfig, overrides: Sequence[str]) -> DictConfig:
    """Hydra-style ``a.b=c`` overrides onto a plain (saved) config; ``eval=<name>`` merges the
    protocol's settings first, as the config group does in a composed config."""
    from ript.training.config_checks import eval_protocol_settings

    protocol, overrides = _split_eval_protocol(overrides)
    if protocol is not None:
        cfg = OmegaConf.merge(cfg, eval_protocol_settings(protocol))
    if overrides:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([o.lstrip("+") for o in overrides]))
    return cfg


def load_config(checkpoint: str | Path, task: str | None = None, overrides: Sequence[str] = ()
                ) -> tuple[DictConfig, Any, dict[str, Any]]:
    """-> (checked config, trained weights or None, info); nothing is built."""
    from ript.training.checkpointing import load_checkpoint
    from ript.training.config_checks import ConfigError, check_eval_config

    train_ckpt = resolve_training_checkpoint(checkpoint)
    path = Path(checkpoint)
    if train_ckpt is None and path.is_dir() and not any(path.glob("*.safetensors*")):
        raise ConfigError(f"--checkpoint={checkpoint}: neither a training checkpoint (a step_<N> folder with "
                          "trainable.safetensors and state.pt, a run dir holding checkpoints/, or a folder of "
                          "step_<N> folders) nor PI0 weights (model.safetensors); point it at one of those")
    if train_ckpt is None and not task:
        raise ConfigError(f"--task=None: {checkpoint} is PI0 weights, not a training run, so there is no "
                          "task to take from it and the base config's CPU smoke task would be evaluated; "
                          "pass --task libero_spatial_rl | libero_object_rl | libero_goal_rl | libero_10_rl")
    if train_ckpt is not None:
        weights, state = load_checkpoint(train_ckpt)
        saved = state.extra.get("config")
        if saved is None:
            raise ValueError(f"{train_ckpt}/state.pt has no extra['config']; evaluate it with --task and the "
                             "base weights as --checkpoint instead")
        cfg = OmegaConf.create(saved)
        if task:  # evaluate a run on another task: keep its policy, take the task from the composed config
            cfg.task = compose_config(task).task
            cfg.algo.env_runner = cfg.task.env_runner
            cfg.algo.action_mode = compose_config(task).algo.action_mode
        cfg = _apply_overrides(cfg, overrides)
        info = {"kind": "training_checkpoint", "path": str(train_ckpt), "step": int(state.step)}
    else:
        cfg = compose_config(task, [*overrides, f"algo.policy.pretrained_path={Path(checkpoint).resolve()}"])
        weights, info = None, {"kind": "pi0_weights", "path": str(Path(checkpoint).resolve())}
    check_eval_config(cfg)
    info["eval_protocol"] = str(cfg.rollout.get("protocol", "training"))
    return cfg, weights, info


def load_policy_and_config(checkpoint: str | Path, task: str | None = None, overrides: Sequence[str] = (),
                           device: str | None = None) -> tuple[Any, DictConfig, dict[str, Any]]:
    """-> (policy, config, info). See the module docstring for what ``checkpoint`` may be."""
    cfg, weights, info = load_config(checkpoint, task, overrides)
    return build_policy(cfg, weights, info, device), cfg, info


def build_policy(cfg: DictConfig, weights: Any, info: dict[str, Any], device: str | None = None) -> Any:
    """The policy of ``cfg`` with the trained ``weights`` (if any) loaded, in eval mode."""
    from hydra.utils import instantiate

    if device is not None:
        cfg.algo.policy.device_id = device
    policy = instantiate(cfg.algo.policy)
    if weights is not None:
        policy.load_trainable_state_dict(weights)
    policy.eval()
    info["task"] = str(cfg.task.name)
    info["device"] = str(policy.device)
    return policy


def build_runner(cfg: DictConfig, num_parallel_envs: int | None = None) -> Any:
    from hydra.utils import instantiate

    kwargs = {} if num_parallel_envs is None else {"num_parallel_envs": num_parallel_envs}
    return instantiate(cfg.task.env_runner, **kwargs)


def trials_per_task(cfg: DictConfig, requested: int | None) -> int | None:
    """Episodes per task: a named protocol fixes it (eval=openpi: 50); else as requested (None: all)."""
    from ript.training.config_checks import ConfigError

    protocol = str(cfg.rollout.get("protocol", "training"))
    if protocol == "training":
        return requested
    fixed = int(cfg.rollout.num_trials_per_task)
    if requested not in (None, fixed):
        raise ConfigError(f"--num-trials-per-task={requested}: eval={protocol} runs {fixed} trials per task; "
                          "drop the option, or evaluate with eval=training")
    return fixed


# --------------------------------------------------------------------------- the sweep
def sweep(policy: Any, runner: Any, cfg_scales: Sequence[float], num_trials_per_task: int | None,
          do_tqdm: bool = False) -> dict[str, Any]:
    """``{"<scale>": {"overall": sr, "per_task": {task: sr}, "num_episodes": n}}`` per scale."""
    out: dict[str, Any] = {}
    for scale in cfg_scales:
        res = runner.run(policy, do_tqdm=do_tqdm, cfg_scale=float(scale), num_trials_per_task=num_trials_per_task)
        prefix = "rollout/success_rate/"
        out[f"{float(scale):g}"] = {
            "overall": float(res["rollout/overall_success_rate"]),
            "per_task": {k[len(prefix):]: float(v) for k, v in res.items() if k.startswith(prefix)},
            "num_episodes": int(res["rollout/num_episodes"]),
            "protocol": res.get("rollout/protocol"),
        }
        logger.info("cfg_scale=%g: success %.3f over %d episodes", scale, out[f"{float(scale):g}"]["overall"],
                    out[f"{float(scale):g}"]["num_episodes"])
    return out


def markdown_table(results: dict[str, Any]) -> str:
    """Rows: tasks (+ overall); columns: cfg scales; cells: success rate in %."""
    scales = list(results)
    tasks = sorted({t for r in results.values() for t in r["per_task"]})
    lines = ["| task | " + " | ".join(f"cfg {s}" for s in scales) + " |",
             "|---|" + "---:|" * len(scales)]
    for task in tasks:
        lines.append(f"| {task} | " + " | ".join(f"{100 * results[s]['per_task'].get(task, float('nan')):.1f}"
                                                 for s in scales) + " |")
    lines.append("| **overall** | " + " | ".join(f"**{100 * results[s]['overall']:.1f}**" for s in scales) + " |")
    return "\n".join(lines)


def plot_sweep(results: dict[str, Any], path: str | Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scales = [float(s) for s in results]
    fig, ax = plt.subplots(figsize=(6, 4))
    tasks = sorted({t for r in results.values() for t in r["per_task"]})
    for task in tasks:
        ax.plot(scales, [100 * r["per_task"].get(task, float("nan")) for r in results.values()],
                marker=".", alpha=0.5, label=task)
    ax.plot(scales, [100 * r["overall"] for r in results.values()], marker="o", color="k", lw=2, label="overall")
    ax.set_xlabel("cfg_scale")
    ax.set_ylabel("success rate (%)")
    ax.set_ylim(-2, 102)
    ax.set_title(title or "success rate vs cfg_scale")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--checkpoint", required=True, help="PI0 weights file/dir, training checkpoint or run dir")
    parser.add_argument("--task", default=None, help="task config (reach_rl, libero_goal_rl, ...); required for "
                        "PI0 weights; default for a training checkpoint: its own")
    parser.add_argument("--cfg-scales", type=float, nargs="+", default=list(DEFAULT_SCALES))
    parser.add_argument("--num-trials-per-task", type=int, default=None,
                        help="default: the protocol's (eval=openpi: 50), else all shipped init states")
    parser.add_argument("--num-parallel-envs", type=int, default=None)
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: auto)")
    parser.add_argument("--out-dir", default="eval_cfg_sweep")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. eval=openpi algo.policy.norm_stats_path=...")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] %(message)s")
    from ript.training.config_checks import ConfigError

    try:  # every config problem surfaces here, before the policy is built
        cfg, weights, info = load_config(args.checkpoint, args.task, args.overrides)
        num_trials = trials_per_task(cfg, args.num_trials_per_task)
    except ConfigError as error:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        sys.stderr.write(f"Config error: {error} (HYDRA_FULL_ERROR=1 shows the traceback)\n")
        sys.exit(2)
    policy = build_policy(cfg, weights, info, args.device)
    runner = build_runner(cfg, args.num_parallel_envs)
    results = sweep(policy, runner, args.cfg_scales, num_trials, do_tqdm=True)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = {"checkpoint": info, "eval_protocol": info["eval_protocol"], "overrides": list(args.overrides),
           "results": results}
    (out_dir / "cfg_sweep.json").write_text(json.dumps(doc, indent=2) + "\n")
    table = markdown_table(results)
    (out_dir / "cfg_sweep.md").write_text(f"# cfg_scale sweep: {info['path']} ({info['task']})\n\n{table}\n")
    plot_sweep(results, out_dir / "cfg_sweep.png", title=f"{info['task']}: {Path(info['path']).name}")
    print(table)  # the script's final table (scripts may print)
    return doc


if __name__ == "__main__":
    main()
