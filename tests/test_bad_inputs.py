"""Malformed input at the training CLI, table-driven: each case must end in one line
``Config error: <key or file>...``, exit status 2 and no traceback, whether it is caught by the
pre-flight checks or while the run is built. docs/reliability.md counts these cases;
tests/test_train_config_errors.py holds a few more of the same kind, and launches the CLI as a
separate process (real exit status 2, same code path). Here the Hydra entry point runs in this
process (``SystemExit(2)`` is the exit status a process would get): 15 launches of a fresh Python
with torch and Hydra cost over a minute on 2 cores, in-process a few seconds.

Each case builds its bad file under tmp_path from a good one, so the table says what is wrong.
"""
from __future__ import annotations

import json
import logging
import runpy
import sys
from pathlib import Path

import pytest

from train_cli import REPO_ROOT

REACH = ["task=reach_rl", "rollout.enabled=false", "logging.mode=disabled", "training.n_steps=1"]
REACH_STATS = REPO_ROOT / "ript" / "assets" / "norm_stats" / "reach_norm_stats.json"
SMALL_CHECKPOINT = REPO_ROOT / "ript" / "assets" / "checkpoints" / "pi0_small_libero_object_ketchup"


def _stats(tmp: Path, change) -> str:
    stats = json.loads(REACH_STATS.read_text())
    change(stats)
    path = tmp / "norm_stats.json"
    path.write_text(json.dumps(stats))  # json writes NaN as the bare token NaN, as numpy users do
    return str(path)


def _truncated_safetensors(tmp: Path) -> str:
    path = tmp / "model.safetensors"
    path.write_bytes((SMALL_CHECKPOINT / "model.safetensors").read_bytes()[:5000])
    return str(path)


def _foreign_safetensors(tmp: Path) -> str:
    import torch
    from safetensors.torch import save_file

    path = tmp / "bert.safetensors"
    save_file({"encoder.layer.0.attention.weight": torch.zeros(4, 4)}, str(path))
    return str(path)


def _training_checkpoint_of_small_preset(tmp: Path) -> str:
    """A real training checkpoint (the layout run.save() writes) of a small-preset policy."""
    from ript.algos.policies.pi0_oft_policy import PI0_OFT_Policy
    from ript.training.checkpointing import TrainingState, capture_rng_state, save_checkpoint

    policy = PI0_OFT_Policy(preset="small", norm_stats_path="builtin:reach", use_ddp=False)
    state = TrainingState(step=1, optimizers=[], schedulers=[], rng=capture_rng_state(), rollout_stats=None,
                          extra={})
    return str(save_checkpoint(tmp / "small_run", policy.trainable_state_dict(), state))


def _truncated_training_checkpoint(tmp: Path) -> str:
    import torch

    from ript.training.checkpointing import WEIGHTS_FILE, TrainingState, capture_rng_state, save_checkpoint

    state = TrainingState(step=1, optimizers=[], schedulers=[], rng=capture_rng_state(), rollout_stats=None,
                          extra={})
    checkpoint = save_checkpoint(tmp / "old_run", {"w": torch.zeros(64, 64)}, state)
    weights = checkpoint / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:100])
    return str(checkpoint)


def _empty_dir(tmp: Path) -> str:
    (tmp / "tokenizer").mkdir()
    return str(tmp / "tokenizer")


def _nan_std(stats):
    stats["action"]["std"][0] = float("nan")


# (id, overrides from tmp_path, what the one line must name, a word of the fix)
CASES = [
    ("int_key_given_a_float", lambda t: ["training.n_steps=1.5"], "training.n_steps=1.5", "integer"),
    ("zero_save_interval", lambda t: ["training.save_every_n_steps=0"], "training.save_every_n_steps=0", ">= 1"),
    ("zero_collective_timeout", lambda t: ["training.collective_timeout_s=0"], "training.collective_timeout_s=0",
     "> 0"),
    ("norm_stats_missing_key", lambda t: [f"algo.policy.norm_stats_path={_stats(t, lambda s: s.pop('action'))}"],
     "norm_stats.json", "'actions'"),
    ("norm_stats_wrong_shape",
     lambda t: [f"algo.policy.norm_stats_path={_stats(t, lambda s: s['state'].update(mean=[0.0, 0.0, 0.0]))}"],
     "norm_stats.json", "3 dims"),
    ("norm_stats_nan", lambda t: [f"algo.policy.norm_stats_path={_stats(t, _nan_std)}"], "norm_stats.json", "NaN"),
    ("truncated_safetensors", lambda t: [f"algo.policy.pretrained_path={_truncated_safetensors(t)}",
                                         "algo.policy.preset=tiny"], "model.safetensors", "truncated"),
    ("foreign_safetensors", lambda t: [f"algo.policy.pretrained_path={_foreign_safetensors(t)}",
                                       "algo.policy.preset=tiny"], "bert.safetensors", "no PI0 parameter"),
    ("weights_of_another_preset", lambda t: ["algo.policy.pretrained_path=builtin:pi0_small_libero_object_ketchup",
                                             "algo.policy.preset=tiny"], "algo.policy.pretrained_path", "preset"),
    ("resume_from_another_preset", lambda t: [f"training.resume_from={_training_checkpoint_of_small_preset(t)}"],
     "training.resume_from", "another model"),
    ("resume_from_truncated_checkpoint", lambda t: [f"training.resume_from={_truncated_training_checkpoint(t)}"],
     "training.resume_from", "unreadable checkpoint"),
    ("missing_tokenizer", lambda t: [f"algo.policy.tokenizer_path={t / 'no_tokenizer'}"],
     "algo.policy.tokenizer_path", "does not exist"),
    ("tokenizer_dir_without_tokenizer", lambda t: [f"algo.policy.tokenizer_path={_empty_dir(t)}"],
     "algo.policy.tokenizer_path", "tokenizer.json"),
    ("unknown_task_name", lambda t: ["task.task_names_to_use=[reach_purple]"], "task.task_names_to_use",
     "reach_red"),
    # reach: 50 init states per task, rloo_batch_size=2 -> at most 100 envs can ever be busy
    ("more_envs_than_init_states", lambda t: ["algo.num_parallel_envs=101", "algo.rloo_batch_size=2"],
     "algo.num_parallel_envs=101", "<=100"),
]


def _run_cli_in_process(args: list[str], monkeypatch, capsys) -> tuple[int, str, str]:
    """The script as ``python train_ript_openvla_oft.py ARGS`` runs it (as ``__main__``, so Hydra
    finds config/ next to it), in this process."""
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    # The entry point binds a log handler to this case's captured stderr; the next case gets its own.
    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    monkeypatch.setattr(sys, "argv", [str(REPO_ROOT / "train_ript_openvla_oft.py"), *args])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(REPO_ROOT / "train_ript_openvla_oft.py"), run_name="__main__")
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


@pytest.mark.parametrize("make_overrides,names,fix", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_naming_the_key_or_file_with_exit_2(tmp_path, monkeypatch, capsys, make_overrides,
                                                                   names, fix):
    run_dir = tmp_path / "run"
    code, out, err = _run_cli_in_process([*REACH, *make_overrides(tmp_path), f"hydra.run.dir={run_dir}"],
                                         monkeypatch, capsys)
    assert code == 2, (out + err)[-3000:]
    assert "Traceback" not in out + err
    # Progress logging of components built before may precede it; the error is one line, and last.
    errors = [line for line in err.splitlines() if "Config error" in line]
    assert len(errors) == 1 and errors[0] == err.strip().splitlines()[-1], err[-3000:]
    assert errors[0].startswith("Config error: ") and names in errors[0] and fix in errors[0], errors[0]
    assert not (run_dir / "checkpoints").exists()
