"""Metrics go to three places: a console line, ``metrics.jsonl`` and (optionally) wandb.

``metrics.jsonl`` is the record of truth: wandb failing to start or to log never stops training,
it only turns itself off with a warning.
"""
from __future__ import annotations

import json
import logging
import math
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

    def restore(self, rows: str | None, up_to_step: int) -> int:
        """A resume continues the same record: the file becomes ``rows`` (the metrics saved with the
        checkpoint; None: this file's own rows) without any row of a step after ``up_to_step``,
        which the resumed run logs again. Returns how many rows were dropped."""
        if not self.enabled:
            return 0
        if rows is None:
            rows = self.path.read_text() if self.path.exists() else ""
        kept, dropped = [], 0
        for line in rows.splitlines():
            if not line.strip():
                continue
            try:
                step = json.loads(line).get("step", 0)
            except ValueError:  # a line cut short by a kill mid-write
                dropped += 1
                continue
            if step > up_to_step:
                dropped += 1
            else:
                kept.append(line + "\n")
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(kept))
        tmp.replace(self.path)  # atomic: a crash here leaves the old file or the new one
        return dropped

    def close(self) -> None:
        if self._wandb_run is not None:
            try:
                self._wandb_run.finish()
            except Exception as error:  # noqa: BLE001
                logger.warning("wandb.finish failed: %s", error)
            self._wandb_run = None
