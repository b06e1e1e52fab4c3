"""The pieces the soak (scripts/soak.py) leans on, one at a time: a checkpoint write that fails on a
full disk, a resume that meets a damaged newest checkpoint, a metrics line torn by a kill,
the debug fault-injection hooks (off by default), and a collective that lost its peer."""
from __future__ import annotations

import errno
import logging
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from ript.training import checkpointing as ckpt
from ript.training.checkpointing import (
    STATE_FILE,
    WEIGHTS_FILE,
    TrainingState,
    capture_rng_state,
    list_checkpoints,
    load_checkpoint,
    load_latest_valid_checkpoint,
    save_checkpoint,
    save_checkpoint_or_keep_previous,
)
from ript.training.fault_injection import install_fault_injection
from ript.training.metrics_logger import MetricsLogger
from ript.utils.distributed import peer_failure_reason


def _state(step: int) -> TrainingState:
    return TrainingState(step=step, optimizers=[], schedulers=[], rng=capture_rng_state(), rollout_stats=None,
                         extra={})


def _weights(value: float) -> dict[str, torch.Tensor]:
    return {"w": torch.full((64, 64), value)}


def _full_disk(tensors, filename, *args, **kwargs):
    with open(filename, "wb") as handle:
        handle.write(b"\0" * 100)  # half a file, as a disk filling up mid-write leaves
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)


# --------------------------------------------------------------------------- failed write
def test_a_write_on_a_full_disk_keeps_the_previous_checkpoint_and_says_so_in_one_line(tmp_path, monkeypatch, caplog):
    save_checkpoint(tmp_path, _weights(1.0), _state(1))
    monkeypatch.setattr(ckpt, "save_file", _full_disk)
    with caplog.at_level(logging.INFO, logger="ript.training.checkpointing"):
        assert save_checkpoint_or_keep_previous(tmp_path, _weights(2.0), _state(2)) is None
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(errors) == 1 and "\n" not in errors[0]
    assert "step_2 not written (ENOSPC" in errors[0] and "step_1 is intact" in errors[0]
    # The previous checkpoint loads unchanged; the half-written temporary directory is gone.
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_1"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_1"]
    weights, state = load_checkpoint(tmp_path / "checkpoints" / "step_1")
    assert state.step == 1 and torch.equal(weights["w"], _weights(1.0)["w"])
    # Once there is space again the next save goes through.
    monkeypatch.undo()
    assert save_checkpoint_or_keep_previous(tmp_path, _weights(3.0), _state(3)).name == "step_3"


def test_a_failed_first_write_says_there_is_no_earlier_checkpoint(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(ckpt, "save_file", _full_disk)
    assert save_checkpoint_or_keep_previous(tmp_path, _weights(1.0), _state(1)) is None
    assert "no earlier checkpoint exists" in caplog.text
    assert list_checkpoints(tmp_path) == []


# --------------------------------------------------------------------------- damaged newest checkpoint
@pytest.mark.parametrize("damaged_file", [WEIGHTS_FILE, STATE_FILE])
def test_resume_skips_a_truncated_newest_checkpoint_and_names_the_one_it_uses(tmp_path, caplog, damaged_file):
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, _weights(float(step)), _state(step))
    damaged = tmp_path / "checkpoints" / "step_3" / damaged_file
    os.truncate(damaged, damaged.stat().st_size // 2)
    with caplog.at_level(logging.WARNING):
        checkpoint, weights, state = load_latest_valid_checkpoint(tmp_path)
    assert checkpoint.name == "step_2" and state.step == 2 and torch.equal(weights["w"], _weights(2.0)["w"])
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1
    assert "unreadable checkpoint(s) step_3" in lines[0] and lines[0].endswith(str(checkpoint))


def test_resume_with_only_intact_checkpoints_says_nothing(tmp_path, caplog):
    save_checkpoint(tmp_path, _weights(1.0), _state(1))
    with caplog.at_level(logging.WARNING):
        checkpoint, _, state = load_latest_valid_checkpoint(tmp_path)
    assert checkpoint.name == "step_1" and state.step == 1 and caplog.records == []


def test_no_readable_checkpoint_means_a_fresh_start(tmp_path, caplog):
    assert load_latest_valid_checkpoint(tmp_path) is None
    save_checkpoint(tmp_path, _weights(1.0), _state(1))
    (tmp_path / "checkpoints" / "step_1" / WEIGHTS_FILE).write_bytes(b"not a safetensors file")
    assert load_latest_valid_checkpoint(tmp_path) is None
    assert "no readable checkpoint" in caplog.text and "step_1" in caplog.text


# --------------------------------------------------------------------------- metrics of repeated rounds
def test_a_resume_drops_rows_after_its_step_and_a_line_torn_by_a_kill(tmp_path):
    metrics = MetricsLogger(tmp_path, wandb_mode="disabled")
    for step in (1, 2, 3):
        metrics.log(step, {"loss/fm_loss": float(step)})
    with (tmp_path / "metrics.jsonl").open("a") as handle:
        handle.write('{"step": 4, "loss/fm')  # the run died writing this line
    # No checkpoint copy of the rows (None): the run directory's own file is the record.
    assert metrics.restore(None, up_to_step=2) == 2
    metrics.log(3, {"loss/fm_loss": 30.0})  # the resumed run logs round 3 again
    from ript.training.run_summary import read_metrics

    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [1, 2, 3] and rows[-1]["loss/fm_loss"] == 30.0


# --------------------------------------------------------------------------- debug.fault_injection
class _Policy:
    def cfg_flow_losses(self, batch, noise=None, time=None):
        return {"losses_pos": torch.ones(2, 3), "losses_uncond": torch.ones(2, 3)}


def _run(fault_injection: dict | None, tmp_path):
    cfg = OmegaConf.create({"debug": {"fault_injection": fault_injection}} if fault_injection is not None else {})
    run = SimpleNamespace(cfg=cfg, policy=_Policy(), step=0, run_dir=tmp_path)
    run.save = lambda: save_checkpoint_or_keep_previous(tmp_path, _weights(float(run.step)), _state(run.step))
    return run


@pytest.mark.parametrize("fault_injection", [None, {"nonfinite_loss_rounds": [], "checkpoint_write_fails_rounds": []}])
def test_fault_injection_is_off_by_default(tmp_path, fault_injection):
    run = _run(fault_injection, tmp_path)
    save = run.save
    install_fault_injection(run)
    assert "cfg_flow_losses" not in vars(run.policy) and run.save is save
    # The shipped config carries the group with empty lists: a normal run installs nothing.
    shipped = OmegaConf.load(Path(__file__).resolve().parents[3] / "config" / "train_base_rl_openvla_oft.yaml")
    assert shipped.debug.fault_injection == {"nonfinite_loss_rounds": [], "checkpoint_write_fails_rounds": []}


def test_nan_loss_in_the_first_mini_batch_of_each_listed_round_only(tmp_path):
    run = _run({"nonfinite_loss_rounds": [2], "checkpoint_write_fails_rounds": []}, tmp_path)
    install_fault_injection(run)
    finite = []
    for run.step in (0, 1, 1, 2):  # rounds 1, 2 (two mini-batches), 3
        finite.append(bool(torch.isfinite(run.policy.cfg_flow_losses({})["losses_pos"]).all()))
    assert finite == [True, False, True, True]


def test_failed_write_in_a_listed_round_keeps_the_previous_checkpoint(tmp_path):
    run = _run({"nonfinite_loss_rounds": [], "checkpoint_write_fails_rounds": [2]}, tmp_path)
    install_fault_injection(run)
    run.step = 1
    assert run.save().name == "step_1"
    run.step = 2
    assert run.save() is None
    assert ckpt.save_file is not None and ckpt.save_file.__name__ == "save_file"  # the real writer is back
    run.step = 3
    assert run.save().name == "step_3"
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_1", "step_3"]


def test_a_round_list_of_the_wrong_type_is_refused(tmp_path):
    run = _run({"nonfinite_loss_rounds": "3"}, tmp_path)
    with pytest.raises(ValueError, match=r"debug.fault_injection.nonfinite_loss_rounds='3': must be a list"):
        install_fault_injection(run)


# --------------------------------------------------------------------------- a collective lost its peer
@pytest.mark.parametrize("message,reason", [
    ("[/__w/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:16810. "
     "This is typically caused by a remote worker crashing. GLHF!", "Connection closed by peer [127.0.0.1]:16810"),
    ("[../gloo/transport/tcp/unbound_buffer.cc:81] Timed out waiting 15000ms for recv operation to complete",
     "Timed out waiting 15000ms for recv operation to complete"),
])
def test_a_lost_peer_is_described_in_one_line(message, reason):
    assert peer_failure_reason(RuntimeError(message)) == reason


@pytest.mark.parametrize("error", [RuntimeError("mat1 and mat2 shapes cannot be multiplied"), ValueError("timed out")])
def test_other_errors_are_not_a_lost_peer(error):
    assert peer_failure_reason(error) is None
