"""Training checkpoints: what a resume restores, keep-last-N, and atomic writes.

README "Reliability guarantees": every checkpoint holds the trainable weights, both optimizers,
both schedulers, the step, the RNG states and the rollout stats; it is written to a temporary
directory and renamed, so a crash mid-save never replaces a good checkpoint with a broken one.
"""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn

from ript.training import checkpointing as ckpt
from ript.training.checkpointing import (
    STATE_FILE,
    WEIGHTS_FILE,
    TrainingState,
    capture_rng_state,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)


def _trained_module_and_optim() -> tuple[nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """A tiny model after one real AdamW + cosine step, so optimizer state (exp_avg...) exists."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.95), weight_decay=1e-10)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=10, eta_min=1e-3)
    loss = model(torch.randn(5, 3)).pow(2).mean()
    loss.backward()
    optimizer.step()
    scheduler.step()
    return model, optimizer, scheduler


def _state(step: int, optimizer=None, scheduler=None, rollout_stats=None) -> TrainingState:
    return TrainingState(
        step=step,
        optimizers=[optimizer.state_dict()] if optimizer is not None else [],
        schedulers=[scheduler.state_dict()] if scheduler is not None else [],
        rng=capture_rng_state(),
        rollout_stats=rollout_stats,
        extra={},
    )


def _weights(value: float = 0.0) -> dict[str, torch.Tensor]:
    return {"w": torch.full((2, 3), value)}


def _assert_nested_equal(a, b) -> None:
    """Optimizer/scheduler state dicts mix tensors, numbers, lists and dicts."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            _assert_nested_equal(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_nested_equal(x, y)
    else:
        assert a == b


# --------------------------------------------------------------------------- round trip


def test_round_trip_restores_weights_optimizer_scheduler_step_and_stats(tmp_path):
    model, optimizer, scheduler = _trained_module_and_optim()
    stats = {"abc123": [1, 1, 0, 1]}  # rollout stats: init-state hash -> recent successes
    weights = {name: p.detach().clone() for name, p in model.named_parameters()}

    path = save_checkpoint(tmp_path, weights, _state(7, optimizer, scheduler, stats))

    assert path == tmp_path / "checkpoints" / "step_7"
    assert (path / WEIGHTS_FILE).is_file() and (path / STATE_FILE).is_file()
    loaded_weights, state = load_checkpoint(path)
    assert loaded_weights.keys() == weights.keys()
    for name in weights:
        assert torch.equal(loaded_weights[name], weights[name])
    assert state.step == 7
    assert state.rollout_stats == stats
    _assert_nested_equal(state.optimizers[0], optimizer.state_dict())
    _assert_nested_equal(state.schedulers[0], scheduler.state_dict())


def test_loaded_state_resumes_training_identically(tmp_path):
    """A fresh model/optimizer/scheduler loaded from the checkpoint takes the same next step."""
    model, optimizer, scheduler = _trained_module_and_optim()
    weights = {name: p.detach().clone() for name, p in model.named_parameters()}
    save_checkpoint(tmp_path, weights, _state(1, optimizer, scheduler))

    fresh = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=1e-2, betas=(0.9, 0.95), weight_decay=1e-10)
    fresh_sched = torch.optim.lr_scheduler.CosineAnnealingLR(fresh_opt, T_max=10, eta_min=1e-3)
    loaded_weights, state = load_checkpoint(latest_checkpoint(tmp_path))
    fresh.load_state_dict(loaded_weights)
    fresh_opt.load_state_dict(state.optimizers[0])
    fresh_sched.load_state_dict(state.schedulers[0])

    x = torch.randn(5, 3)
    for m, opt, sched in ((model, optimizer, scheduler), (fresh, fresh_opt, fresh_sched)):
        opt.zero_grad()
        m(x).pow(2).mean().backward()
        opt.step()
        sched.step()
    for p, q in zip(model.parameters(), fresh.parameters()):
        assert torch.equal(p, q)
    assert fresh_opt.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]


def test_restore_rng_state_replays_torch_numpy_and_python_streams(tmp_path):
    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    save_checkpoint(tmp_path, _weights(), _state(1))
    expected = (torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)])

    # Advance every generator so that only a real restore can bring the streams back.
    torch.rand(10), np.random.rand(10), random.random()
    _, state = load_checkpoint(latest_checkpoint(tmp_path))
    restore_rng_state(state.rng)

    assert torch.equal(torch.rand(4), expected[0])
    np.testing.assert_array_equal(np.random.rand(4), expected[1])
    assert [random.random() for _ in range(4)] == expected[2]


def test_saving_the_same_step_again_replaces_it(tmp_path):
    save_checkpoint(tmp_path, _weights(1.0), _state(3))
    save_checkpoint(tmp_path, _weights(2.0), _state(3))

    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_3"]
    weights, _ = load_checkpoint(latest_checkpoint(tmp_path))
    assert torch.equal(weights["w"], torch.full((2, 3), 2.0))


# --------------------------------------------------------------------------- listing / keep-last-N


def test_list_is_ordered_by_step_number_not_by_name(tmp_path):
    # "step_10" < "step_9" as strings; the newest must still be step 10.
    for step in (9, 10, 2):
        save_checkpoint(tmp_path, _weights(), _state(step), keep_last=0)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_2", "step_9", "step_10"]
    assert latest_checkpoint(tmp_path).name == "step_10"


def test_no_checkpoints_yet(tmp_path):
    assert list_checkpoints(tmp_path) == []
    assert latest_checkpoint(tmp_path) is None


def test_keep_last_n_deletes_older_checkpoints(tmp_path):
    for step in range(1, 6):
        save_checkpoint(tmp_path, _weights(float(step)), _state(step), keep_last=2)

    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_4", "step_5"]
    assert not (tmp_path / "checkpoints" / "step_3").exists()
    weights, state = load_checkpoint(latest_checkpoint(tmp_path))
    assert state.step == 5 and torch.equal(weights["w"], torch.full((2, 3), 5.0))


def test_keep_last_zero_keeps_everything(tmp_path):
    for step in range(1, 5):
        save_checkpoint(tmp_path, _weights(), _state(step), keep_last=0)
    assert len(list_checkpoints(tmp_path)) == 4


# --------------------------------------------------------------------------- atomicity


def test_leftover_temporary_directory_is_ignored(tmp_path):
    """What a process killed mid-save leaves behind is never listed or resumed from."""
    save_checkpoint(tmp_path, _weights(), _state(1))
    crashed = tmp_path / "checkpoints" / ".tmp_step_2_99999"
    crashed.mkdir()
    (crashed / WEIGHTS_FILE).write_bytes(b"half written")

    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_1"]
    assert latest_checkpoint(tmp_path).name == "step_1"


def test_failure_in_the_middle_of_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, _weights(1.0), _state(1))

    # The weights of step 2 are written, then writing state.pt dies (disk full, kill, ...).
    def failing_save(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(ckpt.torch, "save", failing_save)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(tmp_path, _weights(2.0), _state(2))
    monkeypatch.undo()

    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_1"]
    weights, state = load_checkpoint(latest_checkpoint(tmp_path))
    assert state.step == 1 and torch.equal(weights["w"], torch.full((2, 3), 1.0))
    assert not (tmp_path / "checkpoints" / "step_2").exists()

    # The next save succeeds despite the debris of the failed one.
    save_checkpoint(tmp_path, _weights(2.0), _state(2))
    assert latest_checkpoint(tmp_path).name == "step_2"


def test_failure_while_overwriting_a_step_keeps_the_old_copy(tmp_path, monkeypatch):
    """Re-saving an existing step writes the temp dir first; a crash there leaves the old copy."""
    save_checkpoint(tmp_path, _weights(1.0), _state(4))

    def failing_save_file(*args, **kwargs):
        raise RuntimeError("writer crashed")

    monkeypatch.setattr(ckpt, "save_file", failing_save_file)
    with pytest.raises(RuntimeError, match="writer crashed"):
        save_checkpoint(tmp_path, _weights(9.0), _state(4))

    weights, _ = load_checkpoint(latest_checkpoint(tmp_path))
    assert torch.equal(weights["w"], torch.full((2, 3), 1.0))


# --------------------------------------------------------------------------- bad resume paths


@pytest.mark.parametrize("content", ["empty", "weights_only", "missing_dir"])
def test_loading_a_non_checkpoint_names_expected_files_and_the_fix(tmp_path, content):
    target = tmp_path / "not_a_checkpoint"
    if content != "missing_dir":
        target.mkdir()
    if content == "weights_only":
        (target / WEIGHTS_FILE).write_bytes(b"")

    with pytest.raises(FileNotFoundError) as info:
        load_checkpoint(target)
    message = str(info.value)
    assert str(target) in message
    assert WEIGHTS_FILE in message and STATE_FILE in message
    assert "training.resume_from=" in message  # the fix: point at a step_<N> directory


# --------------------------------------------------------------------------- transfer-sized checkpoints
# The GPU machine returns files of at most 16 MB each (issue 26): training.checkpoint_shard_mb splits
# larger checkpoint files into byte pieces; loading joins them back bit-exact.


def test_files_over_the_limit_are_split_into_pieces_that_load_back_exactly(tmp_path):
    model, optimizer, scheduler = _trained_module_and_optim()
    weights = {"big": torch.randn(1000), **{n: p.detach().clone() for n, p in model.named_parameters()}}
    state = _state(3, optimizer, scheduler, rollout_stats={"abc": [1, 0]})
    path = save_checkpoint(tmp_path, weights, state, max_file_bytes=1500)

    names = sorted(p.name for p in path.iterdir())
    # 4000+ bytes of weights -> several pieces of <= 1500 bytes; nothing larger than the limit.
    assert not (path / WEIGHTS_FILE).exists() and f"{WEIGHTS_FILE}.part001of00" in "".join(names)
    assert all(p.stat().st_size <= 1500 for p in path.iterdir())
    assert ckpt.is_training_checkpoint(path)
    loaded_weights, loaded_state = load_checkpoint(path)
    _assert_nested_equal(loaded_weights, weights)
    _assert_nested_equal(loaded_state.optimizers, state.optimizers)
    _assert_nested_equal(loaded_state.rng["torch"], state.rng["torch"])
    assert loaded_state.step == 3 and loaded_state.rollout_stats == {"abc": [1, 0]}


def test_small_files_stay_whole_under_the_limit(tmp_path):
    path = save_checkpoint(tmp_path, _weights(1.0), _state(1), max_file_bytes=10**8)
    assert (path / WEIGHTS_FILE).is_file() and (path / STATE_FILE).is_file()


def test_a_missing_piece_is_named(tmp_path):
    path = save_checkpoint(tmp_path, {"big": torch.randn(1000)}, _state(1), max_file_bytes=1500)
    second = next(p for p in path.iterdir() if p.name.startswith(f"{WEIGHTS_FILE}.part002of"))
    second.unlink()  # a transfer that lost one file
    with pytest.raises(FileNotFoundError, match=r"pieces of trainable.safetensors are incomplete"):
        load_checkpoint(path)


def test_the_metrics_rows_travel_with_the_checkpoint(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"step": 1, "loss/fm_loss": 0.5}\n')
    path = save_checkpoint(tmp_path, _weights(), _state(1), metrics_path=metrics)
    metrics.write_text('{"step": 1, "loss/fm_loss": 0.5}\n{"step": 2, "loss/fm_loss": 0.4}\n')  # later rows
    assert ckpt.checkpoint_metrics(path) == '{"step": 1, "loss/fm_loss": 0.5}\n'  # as of the save
    assert ckpt.checkpoint_metrics(save_checkpoint(tmp_path / "other", _weights(), _state(1))) is None
    assert ckpt.checkpoint_size_bytes(path) == sum(p.stat().st_size for p in path.iterdir())


def test_checkpoint_estimate_counts_weights_and_optimizer_moments():
    # Linear(10, 10): 110 float32 weights = 440 bytes. AdamW keeps exp_avg and exp_avg_sq (2 x 440),
    # plain SGD nothing, momentum SGD one buffer (440): 440 + 880 = 1320; 440; 440 + 440 = 880.
    layer = nn.Linear(10, 10)
    params = list(layer.parameters())
    assert ckpt.estimate_checkpoint_bytes(params, [torch.optim.AdamW(params)]) == 1320
    assert ckpt.estimate_checkpoint_bytes(params, [torch.optim.SGD(params, lr=0.1)]) == 440
    assert ckpt.estimate_checkpoint_bytes(params, [torch.optim.SGD(params, lr=0.1, momentum=0.9)]) == 880


# --------------------------------------------------------------------------- evaluation copy
def test_an_evaluation_copy_keeps_the_weights_and_config_and_drops_the_training_state(tmp_path):
    model, optimizer, scheduler = _trained_module_and_optim()
    state = _state(7, optimizer, scheduler, rollout_stats={"s": [1, 0]})
    state.extra = {"config": {"algo": {"lr": 1e-5}}, "rl_optimizer": {"start_weights": [torch.zeros(1000, 100)]}}
    weights = {name: p.detach().clone() for name, p in model.named_parameters()}
    full = save_checkpoint(tmp_path / "run", weights, state)
    copy = ckpt.save_evaluation_copy(full, tmp_path / "slim")
    assert copy == tmp_path / "slim" / "checkpoints" / "step_7"
    loaded, slim = load_checkpoint(copy)
    assert all(torch.equal(loaded[k], weights[k]) for k in weights)
    assert slim.step == 7 and slim.extra == {"config": {"algo": {"lr": 1e-5}}}
    assert slim.optimizers == [] and slim.rollout_stats is None
    assert ckpt.checkpoint_size_bytes(copy) < ckpt.checkpoint_size_bytes(full) / 10  # the anchor copy stays behind


def test_an_evaluation_copy_needs_the_config(tmp_path):
    full = save_checkpoint(tmp_path / "run", _weights(), _state(1))
    with pytest.raises(ValueError, match="extra\\['config'\\]"):
        ckpt.save_evaluation_copy(full, tmp_path / "slim")
