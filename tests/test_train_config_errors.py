"""A configuration error at the training CLI: one clean line (key, value, fix), a non-zero exit,
no Python traceback; HYDRA_FULL_ERROR=1 still shows the traceback. Launched as a user does."""
from __future__ import annotations

import pytest

from train_cli import run_training_cli

# Each fails the pre-flight check, before any model or simulator is built (seconds).
BAD_CONFIGS = [
    (["algo.rloo_batch_size=1"], "algo.rloo_batch_size=1", ">= 2"),
    (["task=libero_goal_rl", "algo.policy.preset=full"], "algo.policy.norm_stats_path=None",
     "algo.action_mode=absolute"),
    (["task=libero_goal_rl", "eval=openpi", "task.env_runner.replan_steps=10"],
     "task.env_runner.replan_steps=10", "eval=training"),
    # a value of the wrong type is bad input like any other (it crashed the checker once)
    (["algo.cfg_scale=abc"], "algo.cfg_scale='abc'", "must be a number"),
]

# Raised by a component's constructor while the run is built (after the pre-flight checks pass):
# the same one line, naming the key the user sets, not Hydra's InstantiationException.
BUILD_ERRORS = [
    (["task.task_names_to_use=[no_such_task]"], "task.task_names_to_use=['no_such_task']",
     "put_the_bowl_on_the_stove"),  # the valid names are listed
    (["algo.num_parallel_envs=0"], "algo.num_parallel_envs=0", "must be >= 1"),
]


@pytest.mark.parametrize("overrides,key_value,fix", BAD_CONFIGS, ids=[c[1] for c in BAD_CONFIGS])
def test_config_error_is_one_clean_line(tmp_path, overrides, key_value, fix):
    result = run_training_cli([*overrides, f"hydra.run.dir={tmp_path}"], timeout_s=300,
                              extra_env={"HYDRA_FULL_ERROR": "0"})
    assert result.returncode == 2, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Config error: ") and key_value in lines[0] and fix in lines[0]
    assert "Traceback" not in result.stdout + result.stderr
    assert not (tmp_path / "checkpoints").exists()


def test_hydra_full_error_shows_the_traceback(tmp_path):
    result = run_training_cli(["algo.rloo_batch_size=1", f"hydra.run.dir={tmp_path}"], timeout_s=300,
                              extra_env={"HYDRA_FULL_ERROR": "1"})
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "ConfigError: algo.rloo_batch_size=1" in result.stderr


@pytest.mark.parametrize("overrides,key_value,fix", BUILD_ERRORS, ids=[c[1] for c in BUILD_ERRORS])
def test_error_while_building_a_component_is_one_clean_line(tmp_path, overrides, key_value, fix):
    result = run_training_cli([*overrides, f"hydra.run.dir={tmp_path}"], timeout_s=300,
                              extra_env={"HYDRA_FULL_ERROR": "0"})
    assert result.returncode == 2, result.stderr[-3000:]
    # Progress logging of the components built before may precede it; the error is one line, last.
    errors = [line for line in result.stderr.splitlines() if "rror" in line]
    assert len(errors) == 1 and errors[0] == result.stderr.strip().splitlines()[-1], result.stderr
    assert errors[0].startswith("Config error: ") and key_value in errors[0] and fix in errors[0]
    assert "Traceback" not in result.stdout + result.stderr
