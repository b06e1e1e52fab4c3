"""Metrics go to three places: a console line, ``metrics.jsonl`` and (optionally) wandb.

``metrics.jsonl`` is the record of truth: wandb failing to start or to log never stops training,
it only turns itself off with a warning.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Mapping

logger = logging.getLogger(__name__)

# Shown on the console line, in this order, when present.
CONSOLE_KEYS = (
    "rollout/mean_scores",
    "rollout/mean_advantage",
    "loss/fm_loss",
    "loss/fm_loss_pos",
    "loss/fm_loss_uncond",
    "train/windows_used",
    "train/grad_norm_model",
    "rollout/overall_success_rate",
)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class MetricsLogger:
    """Rank-zero metrics sink. Construct it on every rank; only rank zero writes."""

    def __init__(
        self,
        run_dir: str | Path,
        enabled: bool = True,
        wandb_mode: str = "offline",
        project: str = "ript_pi0",
        run_name: str | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self._wandb_run = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if wandb_mode != "disabled":
            self._wandb_run = self._start_wandb(wandb_mode, project, run_name, run_dir, config)

    @staticmethod
    def _start_wandb(mode, project, run_name, run_dir, config):
        try:
            import wandb

            return wandb.init(
                mode=mode, project=project, name=run_name, dir=str(run_dir),
                config=dict(config or {}), reinit="finish_previous",
            )
        except Exception as error:  # noqa: BLE001 - any wandb failure must not stop training
            logger.warning("wandb unavailable (%s: %s); logging to metrics.jsonl only", type(error).__name__, error)
            return None

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": step, "time": time.time(), **{k: _jsonable(v) for k, v in metrics.items()}}
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        shown = [f"{key.split('/')[-1]}={record[key]:.4g}" for key in CONSOLE_KEYS
                 if isinstance(record.get(key), (int, float))]
        logger.info("step %d | %s", step, " ".join(shown))
        if self._wandb_run is not None:
            try:
                self._wandb_run.log(dict(record), step=step)
            except Exception as error:  # noqa: BLE001
                logger.warning("wandb.log failed (%s); disabling wandb, metrics.jsonl continues", error)
                self._wandb_run = None

    def drop_rows_after(self, step: int) -> int:
        """Remove the rows of steps after ``step`` (and a torn last line), atomically; returns how
        many went. A resumed run calls it: the rounds after its checkpoint were logged by the run
        that died and are about to be logged again, so each round stays in the file exactly once."""
        if not self.enabled or not self.path.is_file():
            return 0
        kept, dropped = [], 0
        for line in self.path.read_text().splitlines():
            try:
                row_step = json.loads(line)["step"]
            except (ValueError, KeyError, TypeError):
                dropped += 1  # a line cut short by a kill mid-write
                continue
            if row_step > step:
                dropped += 1
            else:
                kept.append(line)
        if dropped:
            tmp = self.path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(line + "\n" for line in kept))
            os.replace(tmp, self.path)
            logger.info("metrics.jsonl: dropped %d row(s) after step %d (they are logged again)", dropped, step)
        return dropped

    def close(self) -> None:
        if self._wandb_run is not None:
            try:
                self._wandb_run.finish()
            except Exception as error:  # noqa: BLE001
                logger.warning("wandb.finish failed: %s", error)
            self._wandb_run = None
