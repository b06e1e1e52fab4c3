"""Success before and after RL, from a run's ``metrics.jsonl``: printed lines and one plot.

The main job (``scripts/quickstart.sh``, ``experiment=libero_object_ketchup``) evaluates at step 0
(``rollout.eval_at_start``) and after the last round; every round logs its training rollouts'
success. This module reads those records back; it imports neither a simulator nor a model.

    python -m ript.training.run_summary <run dir>     # prints the lines, writes <run dir>/success.png
"""
from __future__ import annotations

import argparse
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

logger = logging.getLogger(__name__)

PLOT_NAME = "success.png"


def wilson_interval(successes: int, episodes: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a success rate: stays inside [0, 1], sensible at 0/n and n/n."""
    if not episodes:
        return float("nan"), float("nan")
    n, p = episodes, successes / episodes
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class EvalResult:
    step: int
    successes: int
    episodes: int

    @property
    def rate(self) -> float:
        return self.successes / self.episodes if self.episodes else float("nan")

    def interval95(self) -> tuple[float, float]:
        return wilson_interval(self.successes, self.episodes)

    def line(self, label: str) -> str:
        low, high = self.interval95()
        return (f"{label}: {self.successes}/{self.episodes} = {self.rate:.0%} held-out success "
                f"(95% CI {low:.0%}-{high:.0%}, step {self.step})")


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The rows of ``<run_dir>/metrics.jsonl``; ``run_dir`` may also be the metrics file itself."""
    path = Path(run_dir) if Path(run_dir).is_file() else Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: is {run_dir} a training run directory?")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def evaluations(records: Sequence[dict[str, Any]]) -> list[EvalResult]:
    """Every evaluation record (the ones with ``rollout/overall_success_rate``), in log order."""
    out = []
    for record in records:
        if "rollout/overall_success_rate" not in record:
            continue
        episodes = int(record.get("rollout/num_episodes", 0))
        successes = round(float(record["rollout/overall_success_rate"]) * episodes)
        out.append(EvalResult(int(record.get("step", 0)), successes, episodes))
    return out


def before_after(records: Sequence[dict[str, Any]]) -> tuple[EvalResult | None, EvalResult | None]:
    """(the step-0 evaluation, the last evaluation after it); None where there is none."""
    evals = evaluations(records)
    before = next((e for e in evals if e.step == 0), None)
    after = next((e for e in reversed(evals) if e.step > 0), None)
    return before, after


def training_success(records: Sequence[dict[str, Any]]) -> list[tuple[int, float, int]]:
    """(round, success rate of its training rollouts, episodes) for every logged round.

    Training records are the ones with ``train/step_time_s``; their ``rollout/success_rate/<task>``
    keys are the rollouts' per-task success (averaged over tasks here).
    """
    out = []
    for record in records:
        if "train/step_time_s" not in record:
            continue
        rates = [float(v) for k, v in record.items() if k.startswith("rollout/success_rate/")]
        if rates:
            out.append((int(record["step"]), sum(rates) / len(rates), int(record.get("rollout/valid_episodes", 0))))
    return out


def plot_run(records: Sequence[dict[str, Any]], out_path: str | Path, title: str = "") -> Path:
    """Left: held-out success before/after with 95% intervals; right: training success per round."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    before, after = before_after(records)
    curve = training_success(records)
    fig, (ax_eval, ax_train) = plt.subplots(1, 2, figsize=(9, 3.6))
    bars = [(name, e) for name, e in (("before RL", before), ("after RL", after)) if e is not None]
    for x, (name, result) in enumerate(bars):
        low, high = result.interval95()
        ax_eval.bar(x, result.rate, color="tab:gray" if name == "before RL" else "tab:blue", width=0.6)
        ax_eval.errorbar(x, result.rate, yerr=[[result.rate - low], [high - result.rate]], color="black", capsize=4)
        ax_eval.text(x, min(result.rate + 0.03, 0.97), f"{result.successes}/{result.episodes}", ha="center")
    ax_eval.set_xticks(range(len(bars)), [name for name, _ in bars])
    ax_eval.set_ylim(0, 1)
    ax_eval.set_ylabel("held-out success")
    ax_eval.set_title("evaluation (95% Wilson interval)")
    if curve:
        steps, rates, _ = zip(*curve)
        ax_train.plot(steps, rates, marker="o")
        ax_train.set_xticks(steps)
    ax_train.set_ylim(0, 1)
    ax_train.set_xlabel("RL round")
    ax_train.set_ylabel("training-rollout success")
    ax_train.set_title("rollouts on training init states")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out_path = Path(out_path)
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return out_path


def summarize(run_dir: str | Path, plot: bool = True) -> list[str]:
    """The lines the main job prints at its end (and the plot, written into ``run_dir``)."""
    records = read_metrics(run_dir)
    before, after = before_after(records)
    lines = [before.line("before RL") if before else "before RL: no step-0 evaluation (rollout.eval_at_start=false)",
             after.line("after RL ") if after else "after RL: no evaluation after a round (rollout.enabled=false?)"]
    curve = training_success(records)
    if curve:
        lines.append("training-rollout success per round: "
                     + ", ".join(f"{rate:.0%} ({episodes} eps)" for _, rate, episodes in curve))
    if plot:
        lines.append(f"plot: {plot_run(records, Path(run_dir) / PLOT_NAME, title=Path(run_dir).name)}")
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", help="a training run directory (holds metrics.jsonl)")
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for line in summarize(args.run_dir, plot=not args.no_plot):
        logger.info(line)


if __name__ == "__main__":
    main()
