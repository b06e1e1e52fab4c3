"""Pre-flight checks of a composed training config.

They run before any model or simulator is built, so a mistyped path or a bad hyper-parameter
fails in the first second with the key, the value, and what to do, instead of after minutes of
model loading or rollouts.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names the key, value and fix."""


def _fail(key: str, value: Any, fix: str) -> None:
    raise ConfigError(f"{key}={value!r}: {fix}")


def _check_path(key: str, value: Any, what: str) -> None:
    if value is None:
        return
    path = Path(str(value)).expanduser()
    if not path.exists():
        _fail(key, value, f"{what} does not exist; pass an existing path (e.g. {key}=/abs/path)")


def check_paths(cfg: DictConfig) -> None:
    policy = cfg.algo.policy
    _check_path("algo.policy.pretrained_path", policy.get("pretrained_path"), "the PI0 checkpoint")
    _check_path("algo.policy.tokenizer_path", policy.get("tokenizer_path"), "the tokenizer directory")
    norm_stats_path = policy.get("norm_stats_path")
    if norm_stats_path is not None and str(norm_stats_path).startswith("builtin:"):
        from ript.utils.assets import resolve_norm_stats_path

        try:
            norm_stats_path = resolve_norm_stats_path(norm_stats_path)
        except FileNotFoundError as error:
            _fail("algo.policy.norm_stats_path", norm_stats_path, str(error))
    _check_path("algo.policy.norm_stats_path", norm_stats_path, "the norm_stats.json file")
    if norm_stats_path is not None:
        # Parse it now: a stats file without mean/std or with too few dims is a config error.
        from ript.env_runner.pi0_runner_utils import load_norm_stats

        try:
            load_norm_stats(str(norm_stats_path))
        except (KeyError, ValueError, OSError) as error:
            _fail("algo.policy.norm_stats_path", norm_stats_path, f"unusable norm stats: {error}")


def check_hyperparameters(cfg: DictConfig, world_size: int) -> None:
    algo = cfg.algo
    if algo.rloo_batch_size < 2:
        _fail("algo.rloo_batch_size", algo.rloo_batch_size,
              "RLOO needs at least 2 rollouts per init state (leave-one-out baseline); use >= 2")
    if algo.a_max <= 0:
        _fail("algo.a_max", algo.a_max, "advantage weights are clipped to [0, a_max]; use a_max > 0")
    if algo.cfg_uncond_weight < 0:
        _fail("algo.cfg_uncond_weight", algo.cfg_uncond_weight, "the unconditional weight alpha must be >= 0")
    for key, value in (("algo.cfg_scale", algo.cfg_scale), ("rollout.cfg_scale", cfg.rollout.cfg_scale)):
        if value < 0:
            _fail(key, value, "the CFG guidance scale must be >= 0 (1.0 = conditional policy only)")
    # "++" because the key is optional in algo/*.yaml: a plain override of a key the YAML lacks is
    # rejected by Hydra, "++" works whether or not the key is declared.
    if algo.open_loop != algo.n_action_steps and not algo.get("allow_open_loop_mismatch", False):
        _fail("algo.open_loop", algo.open_loop,
              f"must equal algo.n_action_steps={algo.n_action_steps} so training windows match what was "
              "executed; pass ++algo.allow_open_loop_mismatch=true to override on purpose")
    batch_size = cfg.train_dataloader.batch_size
    if batch_size < world_size or batch_size % world_size != 0:
        _fail("train_dataloader.batch_size", batch_size,
              f"the global batch of init states must be a positive multiple of the world size {world_size}")
    if cfg.training.n_steps < 1:
        _fail("training.n_steps", cfg.training.n_steps, "must be >= 1")


def check_config(cfg: DictConfig, world_size: int = 1) -> None:
    """All pre-flight checks; raises :class:`ConfigError`."""
    OmegaConf.resolve(cfg)  # interpolation errors surface here, naming the key
    check_hyperparameters(cfg, world_size)
    check_paths(cfg)
