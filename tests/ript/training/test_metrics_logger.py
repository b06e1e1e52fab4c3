"""MetricsLogger: ``metrics.jsonl`` is the record of truth; wandb is best effort.

README "Logging never stops training": wandb failing to start or to log turns itself off with a
warning, and every metric still reaches ``metrics.jsonl``. Only rank zero writes.
"""
from __future__ import annotations

import json
import logging
import sys
import types

import numpy as np
import pytest
import torch

from ript.training.metrics_logger import MetricsLogger

LOGGER_NAME = "ript.training.metrics_logger"


def _records(run_dir) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


class _FakeRun:
    """Stands in for a wandb run; ``fail_log`` makes ``.log`` raise like a dead wandb service."""

    def __init__(self, fail_log: bool = False) -> None:
        self.fail_log = fail_log
        self.logged: list[tuple[dict, int]] = []
        self.finished = False

    def log(self, data, step=None):
        if self.fail_log:
            raise ConnectionError("wandb service went away")
        self.logged.append((data, step))

    def finish(self):
        self.finished = True


@pytest.fixture
def fake_wandb(monkeypatch):
    """A stand-in ``wandb`` module recording ``init`` calls (no real wandb process is started)."""
    module = types.ModuleType("wandb")
    module.init_calls = []
    module.next_run = _FakeRun()

    def init(**kwargs):
        module.init_calls.append(kwargs)
        return module.next_run

    module.init = init
    monkeypatch.setitem(sys.modules, "wandb", module)
    return module


# --------------------------------------------------------------------------- metrics.jsonl


def test_one_json_line_per_log_with_step_and_values(tmp_path):
    metrics = MetricsLogger(tmp_path, wandb_mode="disabled")
    metrics.log(1, {"loss/fm_loss": 0.5, "train/windows_used": 12})
    metrics.log(2, {"loss/fm_loss": torch.tensor(0.25), "rollout/mean_scores": np.float32(0.75)})
    metrics.close()

    first, second = _records(tmp_path)
    assert first["step"] == 1 and first["loss/fm_loss"] == 0.5 and first["train/windows_used"] == 12
    # Tensors and numpy scalars are stored as plain numbers.
    assert second["step"] == 2 and second["loss/fm_loss"] == 0.25 and second["rollout/mean_scores"] == 0.75
    assert "time" in first


def test_non_finite_floats_survive_as_strings(tmp_path):
    """json.dumps would write NaN/Infinity, which strict JSON readers reject."""
    metrics = MetricsLogger(tmp_path, wandb_mode="disabled")
    metrics.log(3, {"loss/fm_loss": float("nan"), "train/grad_norm_model": torch.tensor(float("inf")),
                    "train/other": float("-inf")})

    line = (tmp_path / "metrics.jsonl").read_text()
    json.loads(line, parse_constant=lambda name: pytest.fail(f"non-standard JSON constant {name}"))
    (record,) = _records(tmp_path)
    assert record["loss/fm_loss"] == "nan"
    assert record["train/grad_norm_model"] == "inf"
    assert record["train/other"] == "-inf"


def test_appends_to_an_existing_file(tmp_path):
    """A resumed run keeps the history of the interrupted one."""
    MetricsLogger(tmp_path, wandb_mode="disabled").log(1, {"a": 1})
    MetricsLogger(tmp_path, wandb_mode="disabled").log(2, {"a": 2})
    assert [r["step"] for r in _records(tmp_path)] == [1, 2]


def test_only_the_enabled_rank_zero_logger_writes(tmp_path, fake_wandb):
    other_rank = MetricsLogger(tmp_path / "rank1", enabled=False, wandb_mode="offline")
    other_rank.log(1, {"a": 1.0})
    other_rank.close()

    assert not (tmp_path / "rank1").exists()
    assert fake_wandb.init_calls == []  # non-zero ranks never start wandb either


def test_console_line_shows_the_headline_metrics(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER_NAME)
    MetricsLogger(tmp_path, wandb_mode="disabled").log(5, {"loss/fm_loss": 0.125, "rollout/mean_scores": 0.5})
    assert "step 5" in caplog.text and "fm_loss=0.125" in caplog.text and "mean_scores=0.5" in caplog.text


# --------------------------------------------------------------------------- wandb


def test_wandb_receives_every_record(tmp_path, fake_wandb):
    metrics = MetricsLogger(tmp_path, wandb_mode="offline", project="p", run_name="r", config={"seed": 7})
    metrics.log(1, {"loss/fm_loss": 0.5})
    metrics.close()

    (init_kwargs,) = fake_wandb.init_calls
    assert init_kwargs["mode"] == "offline" and init_kwargs["project"] == "p" and init_kwargs["name"] == "r"
    assert init_kwargs["config"] == {"seed": 7}
    ((data, step),) = fake_wandb.next_run.logged
    assert step == 1 and data["loss/fm_loss"] == 0.5
    assert fake_wandb.next_run.finished


def test_wandb_failing_at_init_only_warns(tmp_path, monkeypatch, caplog):
    import wandb

    def broken_init(**kwargs):
        raise RuntimeError("wandb: network error / no API key")

    monkeypatch.setattr(wandb, "init", broken_init)
    caplog.set_level(logging.WARNING, logger=LOGGER_NAME)

    metrics = MetricsLogger(tmp_path, wandb_mode="online")
    metrics.log(1, {"loss/fm_loss": 0.5})
    metrics.log(2, {"loss/fm_loss": 0.4})
    metrics.close()

    assert [r["step"] for r in _records(tmp_path)] == [1, 2]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("wandb" in r.getMessage() and "metrics.jsonl" in r.getMessage() for r in warnings)


def test_wandb_not_installed_only_warns(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "wandb", None)  # makes `import wandb` raise ImportError
    caplog.set_level(logging.WARNING, logger=LOGGER_NAME)

    metrics = MetricsLogger(tmp_path, wandb_mode="offline")
    metrics.log(1, {"a": 1})

    assert _records(tmp_path)[0]["a"] == 1
    assert any("wandb" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def test_wandb_failing_at_log_is_disabled_and_jsonl_keeps_everything(tmp_path, fake_wandb, caplog):
    fake_wandb.next_run = _FakeRun(fail_log=True)
    caplog.set_level(logging.WARNING, logger=LOGGER_NAME)

    metrics = MetricsLogger(tmp_path, wandb_mode="offline")
    for step in range(1, 4):
        metrics.log(step, {"loss/fm_loss": 1.0 / step})
    metrics.close()

    assert [r["step"] for r in _records(tmp_path)] == [1, 2, 3]
    failures = [r for r in caplog.records if "wandb.log failed" in r.getMessage()]
    assert len(failures) == 1  # warned once, then wandb is off (no warning spam every step)


def test_wandb_failing_at_finish_only_warns(tmp_path, fake_wandb, caplog):
    def broken_finish():
        raise RuntimeError("finish failed")

    fake_wandb.next_run.finish = broken_finish
    caplog.set_level(logging.WARNING, logger=LOGGER_NAME)

    metrics = MetricsLogger(tmp_path, wandb_mode="offline")
    metrics.log(1, {"a": 1})
    metrics.close()

    assert any("wandb.finish failed" in r.getMessage() for r in caplog.records)


def test_disabled_mode_never_imports_or_starts_wandb(tmp_path, monkeypatch, caplog):
    class Tripwire(types.ModuleType):
        def __getattr__(self, name):
            raise AssertionError(f"wandb.{name} used although logging.mode=disabled")

    # Any `import wandb` now returns the tripwire; using it raises inside the logger's guard.
    tripwire = Tripwire("wandb")
    monkeypatch.setitem(sys.modules, "wandb", tripwire)
    caplog.set_level(logging.WARNING, logger=LOGGER_NAME)

    metrics = MetricsLogger(tmp_path, wandb_mode="disabled")
    metrics.log(1, {"a": 1})
    metrics.close()

    assert metrics._wandb_run is None
    # A tripwire hit would be swallowed by the logger's wandb guard and show up as a warning.
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert _records(tmp_path)[0]["a"] == 1


def test_restore_keeps_the_checkpoints_rows_and_drops_later_ones(tmp_path):
    # A resume from step 2 continues the same record: rows of steps 3+ (logged after the checkpoint
    # by the run that died) go, the resumed run logs them again.
    logger = MetricsLogger(tmp_path, wandb_mode="disabled")
    for step in (0, 1, 2, 3):
        logger.log(step, {"loss/fm_loss": float(step)})
    saved = '{"step": 0, "a": 1}\n{"step": 1, "a": 2}\n{"step": 2, "a": 3}\n{"step": 2, "b": 4}\n'
    assert logger.restore(saved, up_to_step=1) == 2
    assert [json.loads(line) for line in logger.path.read_text().splitlines()] == [{"step": 0, "a": 1},
                                                                                  {"step": 1, "a": 2}]
    logger.log(2, {"loss/fm_loss": 9.0})  # appends after the restored rows
    assert [json.loads(line)["step"] for line in logger.path.read_text().splitlines()] == [0, 1, 2]


def test_restore_without_saved_rows_truncates_the_own_file(tmp_path):
    logger = MetricsLogger(tmp_path, wandb_mode="disabled")
    for step in (1, 2, 3):
        logger.log(step, {"x": 1.0})
    assert logger.restore(None, up_to_step=2) == 1
    assert [json.loads(line)["step"] for line in logger.path.read_text().splitlines()] == [1, 2]
    assert logger.restore(None, up_to_step=-1) == 2 and logger.path.read_text() == ""
