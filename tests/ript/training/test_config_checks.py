"""Pre-flight config checks (issue 7, "Configuration errors"; README "Config errors fail first").

Each bad value is an override of the real composed config, and must raise ConfigError naming the
key and the value before any model or simulator is built. These tests only compose YAML and read
small JSON files, so they run in well under a second each.

Unknown task names / benchmarks are rejected by LiberoInitStateDataset (which needs LIBERO to list
the valid names) while the run is built; tests/test_train_config_errors.py covers that message.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf, open_dict

from ript.training.config_checks import ConfigError, check_config

REPO = Path(__file__).resolve().parents[3]
CONFIG_DIR = REPO / "config"
CONFIG_NAME = "train_base_rl_openvla_oft"


def _hydra_compose(*overrides: str) -> DictConfig:
    # output_dir is normally Hydra's run dir, which only exists inside @hydra.main.
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        return compose(CONFIG_NAME, overrides=["output_dir=/tmp/ript_cfg_test", *overrides])


@pytest.fixture(scope="module")
def compose_cfg():
    """compose_cfg("key=value", ...) -> the real training config with those overrides.

    Hydra composes the base once (a compose costs ~0.2 s); the ``key=value`` overrides are merged
    onto a copy. The composed config is in struct mode, so a misspelled key still fails as it would
    on the command line.
    """
    base = _hydra_compose()
    return lambda *overrides: OmegaConf.merge(base, OmegaConf.from_dotlist(list(overrides)))


def _raises_naming(cfg, key: str, value, world_size: int = 1) -> str:
    with pytest.raises(ConfigError) as info:
        check_config(cfg, world_size=world_size)
    message = str(info.value)
    assert key in message, message
    assert str(value) in message, message
    return message


def _write_json(path: Path, payload) -> Path:
    path.write_text(json.dumps(payload) if not isinstance(payload, str) else payload)
    return path


def _stats(state_dim: int = 8, action_dim: int = 7, **drop) -> dict:
    state = {"mean": [0.0] * state_dim, "std": [1.0] * state_dim}
    actions = {"mean": [0.0] * action_dim, "std": [1.0] * action_dim}
    for group, stat in drop.items():
        del {"state": state, "actions": actions}[group][stat]
    return {"state": state, "actions": actions}


# --------------------------------------------------------------------------- valid configs


def test_default_config_passes(compose_cfg):
    check_config(compose_cfg())


def test_real_paths_and_world_size_pass(compose_cfg, tmp_path, fixtures_dir):
    norm_stats = fixtures_dir / "libero_norm_stats_flat.json"
    ckpt, tok = tmp_path / "model.safetensors", tmp_path / "tokenizer"
    ckpt.write_bytes(b"")
    tok.mkdir()
    cfg = compose_cfg(f"algo.policy.norm_stats_path={norm_stats}", f"algo.policy.pretrained_path={ckpt}",
                      f"algo.policy.tokenizer_path={tok}", "train_dataloader.batch_size=4")
    check_config(cfg, world_size=2)


# --------------------------------------------------------------------------- paths


@pytest.mark.parametrize(
    "key",
    ["algo.policy.norm_stats_path", "algo.policy.pretrained_path", "algo.policy.tokenizer_path"],
)
def test_missing_path(compose_cfg, tmp_path, key):
    missing = tmp_path / "does_not_exist"
    message = _raises_naming(compose_cfg(f"{key}={missing}"), key, missing)
    assert "does not exist" in message


def test_norm_stats_path_that_is_a_directory(compose_cfg, tmp_path):
    _raises_naming(compose_cfg(f"algo.policy.norm_stats_path={tmp_path}"), "algo.policy.norm_stats_path", tmp_path)


def test_unreadable_norm_stats(compose_cfg, tmp_path):
    path = _write_json(tmp_path / "norm_stats.json", "{not json")
    message = _raises_naming(compose_cfg(f"algo.policy.norm_stats_path={path}"), "algo.policy.norm_stats_path", path)
    assert "JSON" in message


@pytest.mark.parametrize("group,stat", [("state", "mean"), ("state", "std"), ("actions", "mean"), ("actions", "std")])
def test_norm_stats_without_mean_or_std(compose_cfg, tmp_path, group, stat):
    path = _write_json(tmp_path / "norm_stats.json", _stats(**{group: stat}))
    message = _raises_naming(compose_cfg(f"algo.policy.norm_stats_path={path}"), "algo.policy.norm_stats_path", path)
    assert f"{group}.{stat}" in message  # which statistic is missing


def test_norm_stats_without_action_group(compose_cfg, tmp_path):
    path = _write_json(tmp_path / "norm_stats.json", {"state": _stats()["state"]})
    message = _raises_naming(compose_cfg(f"algo.policy.norm_stats_path={path}"), "algo.policy.norm_stats_path", path)
    assert "actions" in message


@pytest.mark.parametrize("state_dim,action_dim,short", [(7, 7, "state.mean"), (8, 6, "actions.mean")])
def test_norm_stats_with_too_few_dims(compose_cfg, tmp_path, state_dim, action_dim, short):
    # PI0 on LIBERO needs 8 state dims and 7 action dims.
    path = _write_json(tmp_path / "norm_stats.json", _stats(state_dim, action_dim))
    message = _raises_naming(compose_cfg(f"algo.policy.norm_stats_path={path}"), "algo.policy.norm_stats_path", path)
    assert short in message and "dims" in message


def test_norm_stats_in_openpi_nested_layout_pass(compose_cfg, tmp_path):
    # openpi stores stats padded to 32 dims under "norm_stats"; they are sliced, not rejected.
    path = _write_json(tmp_path / "norm_stats.json", {"norm_stats": _stats(32, 32)})
    check_config(compose_cfg(f"algo.policy.norm_stats_path={path}"))


# --------------------------------------------------------------------------- hyper-parameters


@pytest.mark.parametrize("value", [1, 0])
def test_rloo_batch_size_below_two(compose_cfg, value):
    message = _raises_naming(compose_cfg(f"algo.rloo_batch_size={value}"), "algo.rloo_batch_size", value)
    assert ">= 2" in message


@pytest.mark.parametrize("value", [0.0, -1.0])
def test_a_max_not_positive(compose_cfg, value):
    _raises_naming(compose_cfg(f"algo.a_max={value}"), "algo.a_max", value)


@pytest.mark.parametrize("key", ["algo.cfg_scale", "rollout.cfg_scale"])
def test_negative_cfg_scale(compose_cfg, key):
    _raises_naming(compose_cfg(f"{key}=-0.5"), key, -0.5)


def test_zero_cfg_scale_is_allowed(compose_cfg):
    # s = 0 is the unconditional policy: a legitimate point of an evaluation sweep.
    check_config(compose_cfg("algo.cfg_scale=0.0", "rollout.cfg_scale=0.0"))


@pytest.mark.parametrize("key", ["algo.lr", "algo.header_lr"])
def test_lr_below_the_schedules_floor_is_refused(compose_cfg, key):
    # The cosine schedule would raise this lr towards eta_min (2.5e-6) instead of decaying it.
    message = _raises_naming(compose_cfg(f"{key}=1e-12"), "algo.scheduler_factory.eta_min", 2.5e-06)
    assert key in message and "eta_min to at most 1e-12" in message
    check_config(compose_cfg(f"{key}=1e-12", "algo.scheduler_factory.eta_min=0"))
    check_config(compose_cfg(f"{key}=2.5e-6"))  # at the floor: a constant lr, as the slow recipe ran


def test_negative_uncond_weight(compose_cfg):
    _raises_naming(compose_cfg("algo.cfg_uncond_weight=-0.1"), "algo.cfg_uncond_weight", -0.1)


def test_open_loop_must_match_n_action_steps(compose_cfg):
    message = _raises_naming(compose_cfg("algo.open_loop=10"), "algo.open_loop", 10)
    assert "algo.n_action_steps=50" in message and "allow_open_loop_mismatch" in message


def test_open_loop_mismatch_allowed_with_the_override_the_message_names(compose_cfg):
    with pytest.raises(ConfigError) as info:
        check_config(compose_cfg("algo.open_loop=10"))
    override = re.search(r"\S*allow_open_loop_mismatch=true", str(info.value)).group(0)
    # The fix the message suggests must be a command-line override that Hydra accepts and that
    # then passes; the real compose API is used because that is what the user's CLI goes through.
    check_config(_hydra_compose("algo.open_loop=10", override))


@pytest.mark.parametrize("batch_size,world_size", [(1, 2), (3, 2), (6, 4)])
def test_batch_size_not_divisible_by_world_size(compose_cfg, batch_size, world_size):
    message = _raises_naming(compose_cfg(f"train_dataloader.batch_size={batch_size}"),
                             "train_dataloader.batch_size", batch_size, world_size=world_size)
    assert f"world size {world_size}" in message


def test_batch_size_divisible_by_world_size_passes(compose_cfg):
    check_config(compose_cfg("train_dataloader.batch_size=8"), world_size=4)


def test_zero_training_steps(compose_cfg):
    _raises_naming(compose_cfg("training.n_steps=0"), "training.n_steps", 0)


@pytest.mark.parametrize("override, key, value", [
    ("training.stop_after_step=0", "training.stop_after_step", 0),
    ("training.stop_after_step=3", "training.stop_after_step", 3),  # beyond n_steps=2
    ("training.checkpoint_shard_mb=0", "training.checkpoint_shard_mb", 0),
    ("training.checkpoint_budget_mb=-64", "training.checkpoint_budget_mb", -64),
])
def test_checkpoint_and_leg_options_out_of_range(compose_cfg, override, key, value):
    _raises_naming(compose_cfg(override), key, value)


@pytest.mark.parametrize("key, value", [("training.stop_after_step", "half"), ("training.checkpoint_shard_mb", "big"),
                                        ("training.checkpoint_budget_mb", "64MB"), ("algo.demo_replay_num_demos", 2.5)])
def test_null_default_options_of_the_wrong_type_name_the_type(compose_cfg, key, value):
    # Their shipped default is null, so the type comes from NULL_DEFAULT_TYPES.
    assert "must be" in _raises_naming(compose_cfg(f"{key}={value}"), key, value)


def test_checkpoint_and_leg_options_in_range_pass(compose_cfg):
    check_config(compose_cfg("training.stop_after_step=1", "training.checkpoint_shard_mb=16",
                             "training.checkpoint_budget_mb=64"))


# --------------------------------------------------------------------------- norm stats vs action mode


def _fake_checkpoint(tmp_path: Path) -> Path:
    ckpt = tmp_path / "model.safetensors"
    ckpt.write_bytes(b"")
    return ckpt


@pytest.mark.parametrize("real_model", ["pretrained", "preset_full"])
@pytest.mark.parametrize("norm_stats", [None, "builtin:libero"])
def test_real_model_relative_with_bundled_stats_names_the_fix(tmp_path, real_model, norm_stats):
    # LIBERO suites default to action_mode=relative (openpi's pi0_libero convention).
    overrides = ["task=libero_goal_rl"]
    overrides.append(f"algo.policy.pretrained_path={_fake_checkpoint(tmp_path)}" if real_model == "pretrained"
                     else "algo.policy.preset=full")
    if norm_stats is not None:
        overrides.append(f"algo.policy.norm_stats_path={norm_stats}")
    cfg = _hydra_compose(*overrides)
    assert cfg.algo.action_mode == "relative"
    message = _raises_naming(cfg, "algo.policy.norm_stats_path", norm_stats)
    assert "norm_stats.json" in message and "algo.action_mode=absolute" in message


def test_real_model_relative_with_its_own_stats_passes(tmp_path, fixtures_dir):
    stats = fixtures_dir / "libero_norm_stats_flat.json"
    check_config(_hydra_compose("task=libero_goal_rl", f"algo.policy.pretrained_path={_fake_checkpoint(tmp_path)}",
                                f"algo.policy.norm_stats_path={stats}"))


def test_real_model_absolute_with_bundled_stats_passes(tmp_path):
    # The second fix the message names: LIBERO's own delta actions, executed as predicted.
    check_config(_hydra_compose("task=libero_goal_rl", "algo.action_mode=absolute",
                                f"algo.policy.pretrained_path={_fake_checkpoint(tmp_path)}"))


@pytest.mark.parametrize("task", ["libero_smoke", "libero_goal_rl", "reach_rl"])
def test_tiny_preset_without_stats_passes(task):
    # No checkpoint = the tiny preset, whatever the action mode: the defaults keep working.
    check_config(_hydra_compose(f"task={task}"))


# --------------------------------------------------------------------------- evaluation protocol


def test_openpi_protocol_sets_openpi_values():
    cfg = _hydra_compose("task=libero_goal_rl", "eval=openpi")
    check_config(cfg)
    runner = cfg.task.env_runner
    assert cfg.rollout.protocol == "openpi" and cfg.rollout.num_trials_per_task == 50
    assert (runner.replan_steps, runner.camera_height, runner.camera_width, runner.seed) == (5, 256, 256, 7)
    assert runner.num_steps_wait == 10 and runner.max_episode_length is None  # the suite's own limit
    assert cfg.algo.env_runner.replan_steps == 5  # the runner training builds is the same node


def test_training_protocol_is_the_default():
    cfg = _hydra_compose("task=libero_goal_rl")
    assert cfg.rollout.protocol == "training" and cfg.task.env_runner.replan_steps is None
    assert cfg.task.env_runner.camera_height == 256  # every LIBERO config renders at openpi's size


@pytest.mark.parametrize("override,key,value", [
    ("task.env_runner.replan_steps=10", "task.env_runner.replan_steps", 10),
    ("rollout.num_trials_per_task=5", "rollout.num_trials_per_task", 5),
    ("task.camera_size=128", "task.camera_size", 128),
])
def test_override_of_an_openpi_protocol_value_is_refused(override, key, value):
    message = _raises_naming(_hydra_compose("task=libero_goal_rl", "eval=openpi", override), key, value)
    assert "eval=openpi" in message and "eval=training" in message


def test_openpi_protocol_needs_a_libero_task():
    message = _raises_naming(_hydra_compose("task=reach_rl", "eval=openpi"), "eval", "openpi")
    assert "reach_rl" in message


def test_unknown_protocol_lists_the_valid_ones(compose_cfg):
    message = _raises_naming(compose_cfg("rollout.protocol=openvla"), "eval", "openvla")
    assert "openpi" in message and "training" in message


def test_unresolvable_interpolation_is_a_config_error(compose_cfg):
    _raises_naming(compose_cfg("rollout.cfg_scale=${algo.no_such_key}"), "no_such_key", "algo")


# --------------------------------------------------------------------------- evaluation init states, bundled checkpoints


def test_unknown_eval_init_states(compose_cfg):
    _raises_naming(compose_cfg("rollout.init_states=held"), "rollout.init_states", "held")


def test_held_out_evaluation_needs_held_out_states(compose_cfg):
    message = _raises_naming(compose_cfg("rollout.init_states=heldout"), "rollout.init_states", "heldout")
    assert "num_val" in message
    cfg = compose_cfg("rollout.init_states=heldout")
    with open_dict(cfg):  # num_val is optional in task/*.yaml (++task.dataset.num_val=5 on the CLI)
        cfg.task.dataset.num_val = 5
    check_config(cfg)


def test_unknown_bundled_checkpoint_lists_the_shipped_ones(compose_cfg):
    message = _raises_naming(compose_cfg("algo.policy.pretrained_path=builtin:nope", "algo.action_mode=absolute"),
                             "algo.policy.pretrained_path", "builtin:nope")
    assert "pi0_small_libero_object_ketchup" in message


# --------------------------------------------------------------------------- value types


@pytest.mark.parametrize("key, value, kind", [
    ("algo.cfg_scale", "abc", "a number"),
    ("rollout.cfg_scale", "[1, 2]", "a number"),
    ("algo.rloo_batch_size", "2.5", "an integer"),
    ("training.n_steps", "ten", "an integer"),
    ("training.resume", "maybe", "true or false"),
    ("algo.num_parallel_envs", "two", "an integer"),  # read by a component, not by the checks
])
def test_a_value_of_the_wrong_type_is_a_config_error(compose_cfg, key, value, kind):
    message = _raises_naming(compose_cfg(f"{key}={value}"), key, value)
    assert kind in message and "shipped default" in message


def test_right_types_pass_including_an_int_for_a_float(compose_cfg):
    check_config(compose_cfg("algo.cfg_scale=2", "training.resume=false", "algo.rloo_batch_size=3"))


# --------------------------------------------------------------------------- errors while building


class _Raises:
    def __init__(self, error):
        raise error


def test_component_error_names_the_key_the_user_sets(compose_cfg):
    """``algo.env_runner.num_parallel_envs`` is ``${algo.num_parallel_envs}``: the message names the
    latter, with its value, followed by the component's own message."""
    from hydra.utils import instantiate

    from ript.training.config_checks import building

    raw = compose_cfg("algo.num_parallel_envs=0")
    with pytest.raises(ConfigError) as info:
        with building(raw, "algo.env_runner"):
            instantiate({"_target_": f"{__name__}._Raises",
                         "error": ValueError("Runner config: num_parallel_envs (0) must be >= 1")})
    assert str(info.value) == "algo.num_parallel_envs=0: Runner config: num_parallel_envs (0) must be >= 1"


def test_component_error_without_a_named_argument_names_the_component(compose_cfg):
    from ript.training.config_checks import component_config_error

    error = component_config_error(compose_cfg(), "algo.env_runner", TypeError("something else is wrong"))
    assert str(error).startswith("algo.env_runner (ript.env_runner.pi0_libero_runner.Pi0LiberoRunner): ")


def test_other_errors_while_building_keep_their_traceback(compose_cfg):
    from ript.training.config_checks import building

    with pytest.raises(RuntimeError, match="simulator crashed"):
        with building(compose_cfg(), "algo.env_runner"):
            raise RuntimeError("simulator crashed")
