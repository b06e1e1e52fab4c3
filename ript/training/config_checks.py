"""Pre-flight checks of a composed training config.

They run before any model or simulator is built, so a mistyped path or a bad hyper-parameter
fails in the first second with the key, the value, and what to do, instead of after minutes of
model loading or rollouts.
"""
from __future__ import annotations

import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException


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
    pretrained_path = policy.get("pretrained_path")
    if pretrained_path is not None and str(pretrained_path).startswith("builtin:"):
        from ript.utils.assets import resolve_checkpoint_path

        try:
            pretrained_path = resolve_checkpoint_path(pretrained_path)
        except FileNotFoundError as error:
            _fail("algo.policy.pretrained_path", pretrained_path, str(error))
    _check_path("algo.policy.pretrained_path", pretrained_path, "the PI0 checkpoint")
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


CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"
CONFIG_NAME = "train_base_rl_openvla_oft"
# config/eval/<protocol>.yaml: the settings that make up each named evaluation protocol.
EVAL_PROTOCOL_DIR = CONFIG_DIR / "eval"


def _leaves(node: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(node, dict):
        return [leaf for key, value in node.items() for leaf in _leaves(value, f"{prefix}{key}.")]
    return [(prefix.rstrip("."), node)]


def eval_protocol_settings(protocol: str) -> DictConfig:
    """The settings of ``eval=<protocol>`` (``config/eval/<protocol>.yaml``), rooted at the top."""
    path = EVAL_PROTOCOL_DIR / f"{protocol}.yaml"
    if not path.is_file():
        valid = sorted(p.stem for p in EVAL_PROTOCOL_DIR.glob("*.yaml"))
        _fail("eval", protocol, f"unknown evaluation protocol; choose eval=<name> with name in {valid}")
    return OmegaConf.load(path)


def check_eval_protocol(cfg: DictConfig) -> None:
    """The protocol recorded with every evaluation (``rollout.protocol``) must be the one that ran.

    ``eval=<name>`` sets the values of ``config/eval/<name>.yaml``; an override of any of them
    afterwards would make a result labelled e.g. "openpi" incomparable with openpi's numbers.
    """
    protocol = cfg.rollout.get("protocol", "training")
    settings = eval_protocol_settings(protocol)
    if protocol != "training" and cfg.task.get("benchmark_name") is None:
        _fail("eval", protocol, f"is a LIBERO evaluation protocol but task={cfg.task.get('name')} is not a "
                                "LIBERO suite; use eval=training")
    for key, want in _leaves(OmegaConf.to_container(settings)):
        got = OmegaConf.select(cfg, key)
        if got != want:
            _fail(key, got, f"eval={protocol} needs {key}={want!r} (config/eval/{protocol}.yaml); drop the "
                            f"override of {key}, or evaluate with eval=training")


# The bundled LIBERO statistics (what a missing norm_stats_path falls back to) describe LIBERO's
# own delta actions, whose means are about 0: the "absolute" convention of this code base.
BUNDLED_LIBERO_STATS = (None, "builtin:libero")


def check_norm_stats_convention(cfg: DictConfig) -> None:
    """A real PI0 in relative mode must bring the statistics it was trained with.

    With the bundled statistics, relative mode adds the arm's pose (~0.8 m, ~3 rad) to every
    command: the robot saturates its controller without any error. The tiny preset (no checkpoint)
    is exempt: its actions mean nothing before training, whatever the statistics.
    """
    policy, algo = cfg.algo.policy, cfg.algo
    real_model = policy.get("pretrained_path") is not None or policy.get("preset") == "full"
    norm_stats_path = policy.get("norm_stats_path")
    if real_model and algo.get("action_mode") == "relative" and norm_stats_path in BUNDLED_LIBERO_STATS:
        why = ("a pretrained checkpoint" if policy.get("pretrained_path") is not None else "preset=full")
        _fail("algo.policy.norm_stats_path", norm_stats_path,
              f"{why} with algo.action_mode=relative needs the statistics it was trained with; the bundled "
              "LIBERO statistics describe LIBERO's own delta actions and relative mode would add the arm's "
              "pose to every command. Pass the checkpoint's file, e.g. algo.policy.norm_stats_path="
              "/ckpt/pi0_libero/assets/physical-intelligence/libero/norm_stats.json, or use "
              "algo.action_mode=absolute with statistics of LIBERO's own actions")


def check_hyperparameters(cfg: DictConfig, world_size: int) -> None:
    algo = cfg.algo
    if algo.rloo_batch_size < 2:
        _fail("algo.rloo_batch_size", algo.rloo_batch_size,
              "RLOO needs at least 2 rollouts per init state (leave-one-out baseline); use >= 2")
    if algo.a_max <= 0:
        _fail("algo.a_max", algo.a_max,
              "advantage weights are clipped to [0, a_max] ([-a_max, a_max] when signed); use a_max > 0")
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
    # Used as divisors (step % every_n) or streak limits: 0 would crash or abort at once.
    for key in ("training.save_every_n_steps", "logging.log_every_n_steps", "rollout.every_n_steps",
                "training.max_consecutive_nonfinite"):
        value = OmegaConf.select(cfg, key, default=1)
        if value is not None and value < 1:
            _fail(key, value, "must be >= 1")
    # CosineAnnealingLR moves each group's lr from its base to eta_min: a base below the floor
    # would make the "decay" raise the lr (an lr ~ 0 control trained at 1.25e-6 in its second round).
    eta_min = OmegaConf.select(cfg, "algo.scheduler_factory.eta_min", default=None)
    for key in ("algo.lr", "algo.header_lr"):
        lr = OmegaConf.select(cfg, key, default=None)
        if eta_min is not None and lr is not None and float(lr) < float(eta_min):
            _fail("algo.scheduler_factory.eta_min", eta_min,
                  f"is above {key}={lr}, so the cosine schedule would raise that lr towards it over the run; "
                  f"set algo.scheduler_factory.eta_min to at most {lr} (e.g. 0)")
    if cfg.training.keep_last_checkpoints < 0:
        _fail("training.keep_last_checkpoints", cfg.training.keep_last_checkpoints, "must be >= 0 (0 keeps every one)")
    check_checkpoint_options(cfg)
    check_cfg_flow_options(cfg)
    check_eval_init_states(cfg)


def check_checkpoint_options(cfg: DictConfig) -> None:
    """Legs of a long run and checkpoints sized for a limited transfer (README, "What is saved")."""
    training = cfg.training
    stop = training.get("stop_after_step")
    if stop is not None and (isinstance(stop, bool) or not isinstance(stop, int) or not 1 <= stop <= training.n_steps):
        _fail("training.stop_after_step", stop, f"a round between 1 and training.n_steps={training.n_steps}, "
                                                "or null to run to the end")
    for key in ("checkpoint_shard_mb", "checkpoint_budget_mb"):
        value = training.get(key)
        if value is not None and _number(f"training.{key}", value) <= 0:
            _fail(f"training.{key}", value, "a size in MB > 0, or null for no limit")
    shard = training.get("checkpoint_shard_mb")
    if shard is not None and shard * 2**20 < 1:
        _fail("training.checkpoint_shard_mb", shard, "pieces must hold at least one byte; use e.g. 16")


def check_eval_init_states(cfg: DictConfig) -> None:
    """``rollout.init_states=heldout`` evaluates on the dataset's held-out split, which must exist."""
    mode = OmegaConf.select(cfg, "rollout.init_states", default="shipped")
    if mode not in ("shipped", "heldout"):
        _fail("rollout.init_states", mode, "choose one of ['shipped', 'heldout']")
    dataset = cfg.task.get("dataset") or {}
    if mode == "heldout" and cfg.rollout.enabled and not (dataset.get("num_val") or dataset.get("val_fraction")):
        _fail("rollout.init_states", mode, "needs held-out states: set ++task.dataset.num_val=N (or "
                                           "val_fraction > 0), or evaluate with rollout.init_states=shipped")


def _number(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        _fail(key, value, "must be a number")
    return float(value)


def check_cfg_flow_options(cfg: DictConfig) -> None:
    """The issue-19/20 options of the CFG-Flow optimizer (docs/learning.md), alone and together."""
    algo = cfg.algo
    choices = {"algo.episode_weighting": ("window", "episode"), "algo.uncond_scope": ("all", "successes")}
    for key, allowed in choices.items():
        value = OmegaConf.select(cfg, key, default=allowed[0])
        if value not in allowed:
            _fail(key, value, f"choose one of {list(allowed)}")
    if _number("algo.anchor_l2", algo.get("anchor_l2", 0.0)) < 0:
        _fail("algo.anchor_l2", algo.anchor_l2, "the anchor's coefficient must be >= 0 (0 = off)")
    if _number("algo.anchor_output", algo.get("anchor_output", 0.0)) < 0:
        _fail("algo.anchor_output", algo.anchor_output, "the output anchor's coefficient must be >= 0 (0 = off)")
    if _number("algo.cond_lr_scale", algo.get("cond_lr_scale", 1.0)) <= 0:
        _fail("algo.cond_lr_scale", algo.cond_lr_scale, "a multiple of the condition's lr; use a value > 0 (1 = same)")
    if _number("algo.rollout_noise_temperature", algo.get("rollout_noise_temperature", 1.0)) <= 0:
        _fail("algo.rollout_noise_temperature", algo.rollout_noise_temperature,
              "scales the rollouts' flow noise; use a value > 0 (1 = the policy's own)")
    if algo.get("uncond_scope", "all") == "successes" and algo.cfg_uncond_weight == 0:
        _fail("algo.uncond_scope", algo.uncond_scope,
              "restricts the alpha term, but algo.cfg_uncond_weight=0 turns it off; drop one of the two")
    clip = algo.get("clip_labels", False)
    if not isinstance(clip, bool):
        _fail("algo.clip_labels", clip, "must be true or false")
    if clip and cfg.task.get("benchmark_name") is None:
        _fail("algo.clip_labels", clip, f"clips labels to what LIBERO's controller executes, but task="
                                        f"{cfg.task.get('name')} is not a LIBERO suite; drop it")
    # Both keys read the demo pack at algo.demo_replay_path: replay trains on it, the probe measures on it.
    reads_pack = False
    for key, what in (("demo_replay_per_round", "SFT demos replayed each round"),
                      ("demo_probe_windows", "demo windows probed each round")):
        value = algo.get(key, 0)
        if int(_number(f"algo.{key}", value)) != value or value < 0:
            _fail(f"algo.{key}", value, f"the number of {what}: an integer >= 0")
        if value > 0 and algo.get("demo_replay_path") is None:
            _fail(f"algo.{key}", value, "needs the demos: set algo.demo_replay_path=<pack.npz or demos.pkl> "
                                        "(scripts/sft_libero.py record), or use 0")
        reads_pack = reads_pack or value > 0
    if reads_pack:
        _check_path("algo.demo_replay_path", algo.demo_replay_path, "the demo pack")
    if _number("algo.demo_replay_weight", algo.get("demo_replay_weight", 1.0)) <= 0:
        _fail("algo.demo_replay_weight", algo.demo_replay_weight, "a positive conditional-branch weight (1 = default)")
    if algo.get("bc_ablation", False) and algo.get("uncond_scope", "all") == "successes":
        _fail("algo.uncond_scope", algo.uncond_scope, "the BC ablation trains on every rollout by design; "
                                                      "use algo.uncond_scope=all with algo.bc_ablation=true")


def shipped_defaults(cfg: DictConfig) -> DictConfig:
    """The shipped config for the same task and evaluation protocol, without the user's overrides
    (unresolved). Composed with Hydra's compose API: inside the running app, or on its own."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    choices = {"task": OmegaConf.select(cfg, "task.name"), "eval": OmegaConf.select(cfg, "rollout.protocol")}
    overrides = [f"{group}={name}" for group, name in choices.items()
                 if isinstance(name, str) and (CONFIG_DIR / group / f"{name}.yaml").is_file()]
    if GlobalHydra.instance().is_initialized():
        return compose(CONFIG_NAME, overrides=overrides)
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        return compose(CONFIG_NAME, overrides=overrides)


# Keys whose shipped default is null (chosen at run time) but that take one type when set: the
# example value stands for that type in the check and the message.
NULL_DEFAULT_TYPES = {"algo.num_parallel_envs": 2, "training.stop_after_step": 12,
                      "training.checkpoint_shard_mb": 15.0, "training.checkpoint_budget_mb": 64.0,
                      "algo.demo_replay_num_demos": 5}


def _typed_leaves(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(key, default) for the bool / int / float values of a shipped config (interpolations and
    nulls say nothing about the type and are skipped)."""
    for key, value in node.items():
        if isinstance(value, dict):
            yield from _typed_leaves(value, f"{prefix}{key}.")
        elif isinstance(value, (bool, int, float)):
            yield f"{prefix}{key}", value


def _type_name(default: Any) -> str | None:
    return "true or false" if isinstance(default, bool) else "an integer" if isinstance(default, int) else "a number"


def _has_type_of(value: Any, default: Any) -> bool:
    if value is None:  # null: components that take a number decide whether "none" is allowed
        return True
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, int):
        return isinstance(value, int)
    return isinstance(value, (int, float))


def check_value_types(cfg: DictConfig, defaults: DictConfig | None = None) -> None:
    """A value whose type differs from the shipped default's (``algo.cfg_scale=abc``) is a config
    error naming the key, before any check compares it with a number. Every key of the shipped
    config is covered; keys a user adds with ``++`` are left to their consumers."""
    defaults = shipped_defaults(cfg) if defaults is None else defaults
    leaves = dict(_typed_leaves(OmegaConf.to_container(defaults, resolve=False)))
    for key, example in NULL_DEFAULT_TYPES.items():
        leaves.setdefault(key, example)
    for key, default in leaves.items():
        try:
            value = OmegaConf.select(cfg, key, throw_on_missing=False)
        except OmegaConfBaseException:
            continue  # an interpolation the user broke is reported by _resolve
        if not _has_type_of(value, default):
            _fail(key, value, f"must be {_type_name(default)} (the shipped default is {default!r}), "
                              f"e.g. {key}={str(default).lower() if isinstance(default, bool) else default}")


def _resolve(cfg: DictConfig) -> None:
    try:
        OmegaConf.resolve(cfg)  # interpolation errors surface here, naming the key
    except OmegaConfBaseException as error:
        raise ConfigError(f"the config does not resolve: {error}") from error


def _check_policy_and_protocol(cfg: DictConfig) -> None:
    """What training and a stand-alone evaluation both need: paths, statistics, protocol."""
    check_paths(cfg)
    check_norm_stats_convention(cfg)
    check_eval_protocol(cfg)


def check_eval_config(cfg: DictConfig) -> None:
    """The checks that apply to a stand-alone evaluation (scripts/eval_cfg_sweep.py)."""
    _resolve(cfg)
    _check_policy_and_protocol(cfg)


def check_config(cfg: DictConfig, world_size: int = 1, defaults: DictConfig | None = None) -> None:
    """All pre-flight checks; raises :class:`ConfigError`. ``defaults``: the shipped config the
    value types are checked against (None: composed here, see :func:`shipped_defaults`)."""
    _resolve(cfg)
    check_value_types(cfg, defaults)
    check_hyperparameters(cfg, world_size)
    _check_policy_and_protocol(cfg)


# --------------------------------------------------------------------------- building components
# Exceptions a constructor raises for a bad argument: a wrong value, a wrong type, a missing
# package or _target_. Anything else (a crash in a simulator, CUDA out of memory) is not the
# user's config and keeps its traceback.
USER_INPUT_ERRORS = (ValueError, TypeError, ImportError, FileNotFoundError)


def _root_cause(error: BaseException) -> BaseException:
    """The exception under Hydra's InstantiationException wrappers."""
    from hydra.errors import InstantiationException

    while isinstance(error, InstantiationException) and error.__cause__ is not None:
        error = error.__cause__
    return error


def _message(error: BaseException) -> str:
    from hydra.errors import InstantiationException

    text = str(error)
    if isinstance(error, InstantiationException):  # no cause: Hydra's own words (e.g. unknown _target_)
        text = re.sub(r"\s*full_key: \S+\s*$", "", text)
    return " ".join(text.split())  # one line


def component_config_error(raw_cfg: DictConfig, node_key: str, error: BaseException) -> ConfigError | None:
    """A :class:`ConfigError` for an error raised while building the component at ``node_key``.

    Names the key the user sets: the first of the node's arguments that the message mentions,
    followed back through its interpolation (``algo.env_runner.num_parallel_envs`` is
    ``${algo.num_parallel_envs}``) in ``raw_cfg``, the config before resolution. None when the error
    is not bad input (see :data:`USER_INPUT_ERRORS`).
    """
    from hydra.errors import InstantiationException

    root = _root_cause(error)
    if isinstance(root, ConfigError):
        return root
    if not isinstance(root, USER_INPUT_ERRORS) and not isinstance(root, InstantiationException):
        return None
    message = _message(root)
    node = OmegaConf.select(raw_cfg, node_key, throw_on_missing=False)
    raw = OmegaConf.to_container(node, resolve=False) if isinstance(node, DictConfig) else {}
    mentioned = sorted((match.start(), name) for name in raw if not name.startswith("_")
                       for match in [re.search(rf"\b{re.escape(name)}\b", message)] if match)
    if not mentioned:
        target = raw.get("_target_", "") if isinstance(raw, dict) else ""
        return ConfigError(f"{node_key}{f' ({target})' if target else ''}: {message}")
    name = mentioned[0][1]
    key = f"{node_key}.{name}"
    source = re.fullmatch(r"\$\{([\w.]+)\}", str(raw[name]))
    if source:
        key = source.group(1)
    try:
        value = OmegaConf.select(raw_cfg, key, throw_on_missing=False)
        value = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    except OmegaConfBaseException:
        value = raw[name]
    return ConfigError(f"{key}={value!r}: {message}")


@contextmanager
def building(raw_cfg: DictConfig, node_key: str) -> Iterator[None]:
    """Turn bad input met while building the component at ``node_key`` into a :class:`ConfigError`."""
    try:
        yield
    except ConfigError:
        raise
    except Exception as error:  # noqa: BLE001 -- re-raised unchanged unless it is bad input
        config_error = component_config_error(raw_cfg, node_key, error)
        if config_error is None:
            raise
        raise config_error from error
