#!/usr/bin/env python
"""Soak: CFG-Flow RL with the tiny PI0 under faults injected on a seeded schedule.

    python scripts/soak.py                  # reach env main run, >= 20 faults (a few minutes on 2 cores)
    python scripts/soak.py --quick          # one fault of each kind (the test suite runs this)
    python scripts/soak.py --env libero     # the main run on LIBERO-Object with 2 simulators

Three segments, each a real training CLI process (``train_ript_openvla_oft.py``, Hydra, real
simulators, real gloo):

1. **Main run** (reach, or LIBERO-Object with ``--env libero``), ``training.resume=true`` on every
   launch. From outside: SIGTERM mid-round (the trainer finishes the round, saves, exits; then
   relaunched), SIGKILL mid-round, SIGKILL just after a checkpoint, and the newest checkpoint
   truncated on disk after a kill. From inside (``debug.fault_injection``): a NaN loss in one
   mini-batch, a checkpoint write that fails with ENOSPC. Then an uninterrupted reference run with
   the same seed and the same in-process faults: every resume was exact iff the final weights match.
2. **Simulator workers** (LIBERO-Object, 2 simulators): a worker SIGKILLed mid-episode, found as a
   child process of the trainer (no hook in the runner).
3. **Two gloo ranks** (plain processes with torchrun's environment): rank 1 SIGKILLed (and, in the
   full soak, frozen with SIGSTOP); rank 0 must exit with one ``Distributed error:`` line within
   ``training.collective_timeout_s``.

The table goes to stdout and between the ``soak`` markers of ``--report`` (docs/reliability.md).
Exit status 0 when every goal is met, 1 otherwise.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from ript.training.checkpointing import WEIGHTS_FILE, list_checkpoints, load_checkpoint  # noqa: E402

logger = logging.getLogger("soak")

TRAINER = REPO_ROOT / "train_ript_openvla_oft.py"
REPORT_BEGIN, REPORT_END = "<!-- soak:begin -->", "<!-- soak:end -->"
LAUNCH_TIMEOUT_S = 600  # no single launch of these tiny runs comes near this; past it counts as a hang

COMMON = ["rollout.enabled=false", "logging.mode=disabled", "training.deterministic=true",
          "training.save_every_n_steps=1", "training.keep_last_checkpoints=3"]
REACH = ["task=reach_rl", "task.task_names_to_use=[reach_red,reach_blue]", "algo.rloo_batch_size=2",
         "algo.num_parallel_envs=4", "algo.mini_batch_size=4", "train_dataloader.batch_size=2",
         "training.torch_num_threads=1"]
# One LIBERO-Object task, 2 simulators, episodes of one chunk after the settle steps; soft resets (~10 ms, see
# tests/test_train_libero.py) keep a round to seconds.
LIBERO = ["task=libero_object_rl", "task.task_names_to_use=[pick_up_the_ketchup_and_place_it_in_the_basket]",
          "task.max_episode_length=60", "++task.env_runner.hard_reset=false", "algo.rloo_batch_size=2",
          "algo.num_parallel_envs=2", "algo.mini_batch_size=4", "train_dataloader.batch_size=1"]
# The main run compares final weights with an uninterrupted twin, so it needs a run that is a function
# of its seed: training.deterministic=true (COMMON) makes the continuous scheduler sample each
# episode's chunk in a call of its own (task.env_runner.batch_invariant_inference), so which chunks
# fell due together, a matter of wall-clock timing, changes no bit.
LIBERO_DETERMINISTIC: list[str] = []
LIBERO_WORKER_MARK = "ript.envs.libero_env import _worker_entry"  # the worker's command line

# Faults of the main run. "process" ones come from outside the trainer; the others are config.
SIGTERM_MID, SIGKILL_MID, SIGKILL_BETWEEN, TRUNCATE = "sigterm_mid_round", "sigkill_mid_round", \
    "sigkill_between_rounds", "truncated_newest_checkpoint"
NONFINITE, WRITE_FAILS = "nonfinite_loss", "checkpoint_write_enospc"
WORKER_KILL, RANK_KILL, RANK_FREEZE = "sim_worker_sigkill", "gloo_rank_sigkill", "gloo_rank_sigstop"
PROCESS_FAULTS = (SIGTERM_MID, SIGKILL_MID, SIGKILL_BETWEEN, TRUNCATE)
DETERMINISTIC = {SIGTERM_MID, SIGKILL_MID, SIGKILL_BETWEEN, TRUNCATE, NONFINITE, WRITE_FAILS}


@dataclass
class Fault:
    kind: str
    round: int                       # the round during (or after) which it hits
    survived: bool = False
    rounds_lost: int | None = None   # rounds finished before the fault minus the round resumed from
    note: str = ""


@dataclass
class Plan:
    env: str
    rounds: int
    main: list[Fault]
    worker_kill_rounds: list[int]
    rank_faults: list[str]
    collective_timeout_s: float


@dataclass
class Outcome:
    faults: list[Fault] = field(default_factory=list)
    bit_exact: bool | None = None
    metrics_once: dict[str, bool] = field(default_factory=dict)
    corrupted_checkpoints: int = 0
    longest_wait_s: float = 0.0     # signal -> trainer exit, or rank kill -> survivor exit
    wall_s: float = 0.0


# --------------------------------------------------------------------------- the schedule
def make_plan(seed: int, quick: bool, env: str) -> Plan:
    """Fault kinds shuffled onto rounds with a seeded RNG, one per 3-round slot, so the trainer
    finishes a round between two faults (a kill right after a failed write would lose two)."""
    rng = random.Random(seed)
    per_kind = 1 if quick else 3
    kinds = [kind for kind in (*PROCESS_FAULTS, NONFINITE, WRITE_FAILS) for _ in range(per_kind)]
    if not quick:
        kinds += [SIGTERM_MID, SIGKILL_MID]  # the two commonest in practice (preemption, OOM killer)
    rng.shuffle(kinds)
    # Slot i is rounds 3i+3 .. 3i+5; the fault takes one of its first two, so two faults are at
    # least two rounds apart and the first comes after two checkpoints (a truncated newest one
    # needs an older one to fall back to).
    main = [Fault(kind, 3 * i + 3 + rng.randint(0, 1)) for i, kind in enumerate(kinds)]
    rounds = 3 * len(kinds) + 3
    worker_kill_rounds = [2] if quick else [2, 3, 4]
    rank_faults = [RANK_KILL] if quick else [RANK_KILL, RANK_FREEZE]
    return Plan(env, rounds, main, worker_kill_rounds, rank_faults, collective_timeout_s=20.0)


# --------------------------------------------------------------------------- processes
class Trainer:
    """One launch of the training CLI, its output in a log file."""

    def __init__(self, args: list[str], log_path: Path, extra_env: dict[str, str] | None = None) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1", WANDB_MODE="disabled", HYDRA_FULL_ERROR="0",
                   **(extra_env or {}))
        env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
        self.log_path = log_path
        self._log = log_path.open("w")
        self.process = subprocess.Popen([sys.executable, str(TRAINER), *args], cwd=REPO_ROOT, env=env,
                                        stdout=self._log, stderr=subprocess.STDOUT)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None

    def signal(self, signum: int) -> None:
        if self.alive():
            os.kill(self.process.pid, signum)

    def wait(self, timeout_s: float = LAUNCH_TIMEOUT_S) -> int:
        try:
            return self.process.wait(timeout=timeout_s)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            self._log.close()


def wait_until(predicate: Callable[[], bool], trainer: Trainer, timeout_s: float = LAUNCH_TIMEOUT_S) -> bool:
    """Poll ``predicate`` every 20 ms while the trainer lives; False if it exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        if not trainer.alive():
            return predicate()
        time.sleep(0.02)
    return False


def metric_rows(run_dir: Path) -> list[dict]:
    """metrics.jsonl as the trainer has written it so far (a line being written is skipped)."""
    path = run_dir / "metrics.jsonl"
    rows = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def logged_steps(run_dir: Path) -> list[int]:
    return [int(row["step"]) for row in metric_rows(run_dir) if "step" in row]


def last_round(run_dir: Path) -> int:
    return max(logged_steps(run_dir), default=0)


def round_time_s(run_dir: Path) -> float:
    rows = metric_rows(run_dir)
    times = [r["train/step_time_s"] for r in rows if isinstance(r.get("train/step_time_s"), (int, float))]
    return times[-1] if times else 0.5


def resumed_step(output: str) -> int:
    """The step a launch resumed from (0: started fresh)."""
    match = re.search(r"resumed from \S+ at step (\d+)", output)
    return int(match.group(1)) if match else 0


def child_pids(pid: int) -> list[int]:
    children = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return children


def libero_worker_pids(trainer_pid: int) -> list[int]:
    pids = []
    for child in child_pids(trainer_pid):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if LIBERO_WORKER_MARK in cmdline:
            pids.append(child)
    return pids


def cpu_ticks(pid: int) -> int:
    """User + system CPU time of a process, in clock ticks (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of proc(5))


def busy_worker(trainer: Trainer, min_ticks: int = 10, timeout_s: float = 120.0) -> int | None:
    """A simulator worker that has been computing for ``min_ticks`` (0.1 s) since this call: one
    in the middle of an episode (workers sit idle between rollouts, e.g. during the update)."""
    baseline: dict[int, int] = {}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and trainer.alive():
        for pid in libero_worker_pids(trainer.process.pid):
            ticks = cpu_ticks(pid)
            baseline.setdefault(pid, ticks)
            if ticks - baseline[pid] >= min_ticks:
                return pid
        time.sleep(0.02)
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------- 1. the main run
def main_run_args(plan: Plan, run_dir: Path) -> list[str]:
    def rounds_of(kind: str) -> str:
        return "[" + ",".join(str(f.round) for f in plan.main if f.kind == kind) + "]"

    env_args = REACH if plan.env == "reach" else [*LIBERO, *LIBERO_DETERMINISTIC]
    return [*env_args, *COMMON, f"training.n_steps={plan.rounds}", "training.resume=true",
            f"debug.fault_injection.nonfinite_loss_rounds={rounds_of(NONFINITE)}",
            f"debug.fault_injection.checkpoint_write_fails_rounds={rounds_of(WRITE_FAILS)}",
            f"hydra.run.dir={run_dir}"]


def inject_process_fault(fault: Fault, trainer: Trainer, run_dir: Path, relaunch: Callable[[], Trainer],
                         rng: random.Random, outcome: Outcome) -> Trainer:
    """Stop the trainer the way ``fault`` says, damage the newest checkpoint if asked, relaunch;
    records whether it resumed and how many finished rounds it lost."""
    root = run_dir / "checkpoints"
    if fault.kind in (SIGKILL_BETWEEN, TRUNCATE):  # right after checkpoint round-1 lands
        reached = wait_until(lambda: (root / f"step_{fault.round - 1}").is_dir(), trainer)
    else:  # somewhere inside round `fault.round`
        reached = wait_until(lambda: last_round(run_dir) >= fault.round - 1, trainer)
        time.sleep(rng.uniform(0.1, 0.9) * round_time_s(run_dir))
    if not reached:
        fault.note = "the trainer ended before the fault could be injected"
        return trainer
    signalled = time.monotonic()
    trainer.signal(signal.SIGTERM if fault.kind == SIGTERM_MID else signal.SIGKILL)
    rc = trainer.wait()
    outcome.longest_wait_s = max(outcome.longest_wait_s, time.monotonic() - signalled)
    finished = last_round(run_dir)
    truncated = None
    if fault.kind == TRUNCATE:
        truncated = list_checkpoints(run_dir)[-1]
        weights = truncated / WEIGHTS_FILE
        os.truncate(weights, weights.stat().st_size // 2)
    new = relaunch()
    wait_until(lambda: "resumed from" in new.output() or "no usable checkpoint" in new.output(), new)
    output, resumed = new.output(), resumed_step(new.output())
    fault.rounds_lost = finished - resumed
    fault.survived = resumed >= 1 and (rc == 0 if fault.kind == SIGTERM_MID else rc == -signal.SIGKILL)
    fault.note = f"stopped after round {finished} (exit {rc}), resumed at {resumed}"
    if truncated is not None:
        said = re.search(rf"unreadable checkpoint\(s\) {truncated.name} .*resuming from the previous one, "
                         rf"\S*step_{resumed}\b", output)
        fault.survived &= bool(said) and resumed < int(truncated.name.split("_")[1])
        fault.note += f"; {truncated.name} truncated, " + ("the fallback named" if said else "NO fallback line")
    return new


def check_write_failure(fault: Fault, trainer: Trainer, run_dir: Path) -> None:
    """When the trainer reports the failed write, the previous checkpoint must load and no partial
    one may exist (checked at once: keep-last deletes the previous one two saves later)."""
    line = rf"checkpoint step_{fault.round} not written \(ENOSPC"
    if not wait_until(lambda: re.search(line, trainer.output()) is not None, trainer):
        fault.note = "no failed-write line"
        return
    previous = run_dir / "checkpoints" / f"step_{fault.round - 1}"
    try:
        load_checkpoint(previous)
        intact = True
    except Exception:  # noqa: BLE001 -- any failure to load is what this check reports
        intact = False
    partial = list((run_dir / "checkpoints").glob(f"*step_{fault.round}*"))
    lines = len(re.findall(line, trainer.output()))
    fault.survived = intact and not partial and lines == 1
    fault.rounds_lost = 0
    fault.note = f"{previous.name} {'intact' if intact else 'DAMAGED'}, {len(partial)} partial, {lines} log line(s)"


def check_nonfinite(faults: list[Fault], run_dir: Path) -> None:
    rows = {r["step"]: r for r in metric_rows(run_dir)}
    for fault in faults:
        skipped = rows.get(fault.round, {}).get("train/nonfinite_skipped", 0)
        fault.survived, fault.rounds_lost = skipped >= 1, 0
        fault.note = f"round {fault.round}: {skipped:g} optimizer step(s) skipped, run went on"


def run_main(plan: Plan, workdir: Path, rng: random.Random, outcome: Outcome) -> None:
    run_dir = workdir / "main"
    args = main_run_args(plan, run_dir)
    launches: list[Trainer] = []

    def relaunch() -> Trainer:
        launches.append(Trainer(args, workdir / f"main_launch{len(launches) + 1}.log"))
        return launches[-1]

    trainer = relaunch()
    for fault in sorted(plan.main, key=lambda f: f.round):
        logger.info("main run: %s at round %d", fault.kind, fault.round)
        if fault.kind in PROCESS_FAULTS:
            trainer = inject_process_fault(fault, trainer, run_dir, relaunch, rng, outcome)
        elif fault.kind == WRITE_FAILS:
            check_write_failure(fault, trainer, run_dir)
    rc = trainer.wait()
    check_nonfinite([f for f in plan.main if f.kind == NONFINITE], run_dir)
    if rc != 0:
        logger.error("main run: last launch exited %d (see %s)", rc, trainer.log_path)
    outcome.faults += plan.main
    outcome.metrics_once["main"] = logged_steps(run_dir) == list(range(1, plan.rounds + 1))
    outcome.corrupted_checkpoints += count_unreadable(run_dir)
    outcome.bit_exact = rc == 0 and same_final_weights(run_dir, run_reference(args, workdir))


def run_reference(args: list[str], workdir: Path) -> Path:
    """The same command, same seed, same in-process faults, never interrupted."""
    run_dir = workdir / "reference"
    reference = Trainer([*args[:-1], f"hydra.run.dir={run_dir}"], workdir / "reference.log")
    if reference.wait() != 0:
        logger.error("reference run failed (see %s)", reference.log_path)
    return run_dir


def count_unreadable(run_dir: Path) -> int:
    bad = 0
    for checkpoint in list_checkpoints(run_dir):
        try:
            load_checkpoint(checkpoint)
        except Exception:  # noqa: BLE001 -- any failure to load is a corrupted checkpoint
            bad += 1
    return bad


def same_final_weights(run_dir: Path, reference_dir: Path) -> bool:
    ours, theirs = list_checkpoints(run_dir), list_checkpoints(reference_dir)
    if not ours or not theirs or ours[-1].name != theirs[-1].name:
        return False
    a, _ = load_checkpoint(ours[-1])
    b, _ = load_checkpoint(theirs[-1])
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------- 2. simulator workers
def run_worker_kills(plan: Plan, workdir: Path, rng: random.Random, outcome: Outcome) -> None:
    """SIGKILL one LIBERO worker mid-episode in each listed round; the runner must rebuild it and
    the round must finish with no dropped episode."""
    run_dir = workdir / "workers"
    rounds = max(plan.worker_kill_rounds) + 1  # a spare round, so every kill is followed by rollouts
    trainer = Trainer([*LIBERO, *COMMON, f"training.n_steps={rounds}", f"hydra.run.dir={run_dir}"],
                      workdir / "workers.log")
    faults = [Fault(WORKER_KILL, r) for r in plan.worker_kill_rounds]
    for fault in faults:
        reached = wait_until(lambda: last_round(run_dir) >= fault.round - 1, trainer)
        time.sleep(rng.uniform(0.0, 0.3))  # a random point of the episode, past the busy check below
        victim = busy_worker(trainer) if reached else None
        if victim is None:
            fault.note = "no busy worker to kill"
            continue
        os.kill(victim, signal.SIGKILL)
        fault.round = last_round(run_dir) + 1  # the round it actually hit
        fault.note = f"worker pid {victim} killed mid-episode in round {fault.round}"
    rc = trainer.wait()
    rows = {r["step"]: r for r in metric_rows(run_dir)}
    total_rebuilds = sum(row.get("rollout/env_rebuilds", 0) for row in rows.values())
    for fault in faults:
        # The kill lands in the round's rollouts; the rebuild is counted in that round (or in the
        # next, if the round's episodes had just ended and the dead worker is met there).
        counted_in = next((r for r in (fault.round, fault.round + 1)
                           if rows.get(r, {}).get("rollout/env_rebuilds", 0) >= 1), None)
        dropped = sum(row.get("rollout/env_faults", 0) for row in rows.values())
        fault.survived = (rc == 0 and "killed" in fault.note and counted_in is not None and dropped == 0
                          and total_rebuilds >= len(faults))
        fault.rounds_lost = 0
        fault.note += (f"; rebuilt in round {counted_in}" if counted_in else "; NO rebuild counted") + \
            f" ({total_rebuilds:g} rebuilds for {len(faults)} kills in the run), {dropped:g} dropped episode(s)"
    outcome.faults += faults
    outcome.metrics_once["workers"] = logged_steps(run_dir) == list(range(1, rounds + 1))
    outcome.corrupted_checkpoints += count_unreadable(run_dir)


# --------------------------------------------------------------------------- 3. two gloo ranks
def run_rank_fault(kind: str, plan: Plan, workdir: Path, rng: random.Random, outcome: Outcome) -> None:
    """Two ranks as torchrun would start them (without torchrun, whose agent would kill the
    survivor itself); rank 1 is killed or frozen mid-round; rank 0 must fail fast, in one line."""
    run_dir, timeout_s = workdir / kind, plan.collective_timeout_s
    args = [*REACH, *COMMON, "training.n_steps=1000", f"training.collective_timeout_s={timeout_s}",
            f"hydra.run.dir={run_dir}"]
    port = str(free_port())
    ranks = [Trainer(args, workdir / f"{kind}_rank{r}.log",
                     extra_env={"RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
                                "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}) for r in (0, 1)]
    fault = Fault(kind, 2)
    if wait_until(lambda: last_round(run_dir) >= 1, ranks[0]):
        time.sleep(rng.uniform(0.1, 0.9) * round_time_s(run_dir))
        ranks[1].signal(signal.SIGKILL if kind == RANK_KILL else signal.SIGSTOP)
        hit = time.monotonic()
        rc = ranks[0].wait(timeout_s=timeout_s + 60)
        waited = time.monotonic() - hit
        outcome.longest_wait_s = max(outcome.longest_wait_s, waited)
        output = ranks[0].output()
        one_line = len(re.findall(r"Distributed error: ", output)) == 1 and "Traceback" not in output
        # Within the timeout, plus the rest of the round rank 0 was in and its teardown.
        fault.survived = rc not in (0, None) and one_line and waited <= timeout_s + 10
        fault.note = f"rank 0 exited {rc} after {waited:.1f} s (timeout {timeout_s:g} s), " \
                     f"{'one line' if one_line else 'NOT one line'}"
    else:
        fault.note = "the ranks never finished a round"
    ranks[1].signal(signal.SIGKILL)  # a frozen rank 1 is still there
    ranks[1].wait()
    ranks[0].wait()
    outcome.faults.append(fault)


# --------------------------------------------------------------------------- report
KIND_LABELS = {
    SIGTERM_MID: "trainer SIGTERM mid-round, restarted with resume",
    SIGKILL_MID: "trainer SIGKILL mid-round, restarted",
    SIGKILL_BETWEEN: "trainer SIGKILL just after a checkpoint, restarted",
    TRUNCATE: "newest checkpoint truncated on disk (after a SIGKILL)",
    NONFINITE: "NaN loss in one mini-batch",
    WRITE_FAILS: "checkpoint write fails (ENOSPC, full disk)",
    WORKER_KILL: "LIBERO simulator worker SIGKILL mid-episode",
    RANK_KILL: "2-rank gloo run, rank 1 SIGKILLed",
    RANK_FREEZE: "2-rank gloo run, rank 1 frozen (SIGSTOP)",
}


def goals_met(outcome: Outcome, quick: bool) -> bool:
    lost = [f.rounds_lost for f in outcome.faults if f.rounds_lost is not None]
    return (all(f.survived for f in outcome.faults) and (quick or len(outcome.faults) >= 20)
            and max(lost, default=0) <= 1 and outcome.bit_exact is True
            and all(outcome.metrics_once.values()) and outcome.corrupted_checkpoints == 0)


def render_report(plan: Plan, outcome: Outcome, command: str, quick: bool) -> str:
    lines = [f"Command: `{command}` ({'quick' if quick else 'full'} soak, main run on the {plan.env} env, "
             f"{plan.rounds} rounds; wall time {outcome.wall_s / 60:.1f} min on this machine).", "",
             "| fault | injected | survived | rounds lost (max) | final weights = uninterrupted run |",
             "|---|---|---|---|---|"]
    for kind, label in KIND_LABELS.items():
        faults = [f for f in outcome.faults if f.kind == kind]
        if not faults:
            continue
        lost = [f.rounds_lost for f in faults if f.rounds_lost is not None]
        exact = ("yes" if outcome.bit_exact else "NO") if kind in DETERMINISTIC else "n/a (not deterministic)"
        lines.append(f"| {label} | {len(faults)} | {sum(f.survived for f in faults)} | "
                     f"{max(lost) if lost else 'n/a (run ends)'} | {exact} |")
    total, survived = len(outcome.faults), sum(f.survived for f in outcome.faults)
    once = ", ".join(f"{name}: {'yes' if ok else 'NO'}" for name, ok in outcome.metrics_once.items())
    lines += [
        f"| **all** | **{total}** | **{survived}** | | |", "",
        f"* metrics.jsonl has every round exactly once: {once}.",
        f"* corrupted checkpoints left on disk (every `step_*` loaded at the end): {outcome.corrupted_checkpoints}.",
        f"* longest wait from a signal to the process exiting (trainer or surviving rank): "
        f"{outcome.longest_wait_s:.1f} s; `training.collective_timeout_s={plan.collective_timeout_s:g}` (a frozen "
        "rank is given up on when it expires; add the rest of the survivor's round and its teardown).",
        f"* goals met: {'yes' if goals_met(outcome, quick) else 'NO'}.", "",
        "Each fault (round: what happened):", "",
    ]
    lines += [f"* {f.kind} @ {f.round}: {'survived' if f.survived else 'FAILED'}; {f.note}" for f in outcome.faults]
    return "\n".join(lines) + "\n"


def write_report(path: Path, table: str) -> None:
    """Replace the text between the soak markers (the rest of the file is hand-written)."""
    block = f"{REPORT_BEGIN}\n{table}{REPORT_END}"
    text = path.read_text() if path.is_file() else f"# Reliability\n\n{REPORT_BEGIN}\n{REPORT_END}\n"
    if REPORT_BEGIN not in text:
        text += f"\n{REPORT_BEGIN}\n{REPORT_END}\n"
    start, end = text.index(REPORT_BEGIN), text.index(REPORT_END) + len(REPORT_END)
    path.write_text(text[:start] + block + text[end:])


# --------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one fault of each kind (<= 5 min on 2 cores)")
    parser.add_argument("--env", choices=("reach", "libero"), default="reach", help="env of the main run")
    parser.add_argument("--seed", type=int, default=0, help="seeds the fault schedule and timings")
    parser.add_argument("--workdir", type=Path, default=None, help="run directories and logs (default: a temp dir)")
    parser.add_argument("--report", type=Path, default=REPO_ROOT / "docs" / "reliability.md",
                        help="markdown file whose soak block is rewritten ('-' for none)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][soak] %(message)s")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ript_soak_"))
    workdir.mkdir(parents=True, exist_ok=True)
    plan = make_plan(args.seed, args.quick, args.env)
    rng = random.Random(args.seed + 1)
    outcome = Outcome()
    started = time.monotonic()
    logger.info("workdir %s; %d main-run faults over %d rounds", workdir, len(plan.main), plan.rounds)
    run_main(plan, workdir, rng, outcome)
    run_worker_kills(plan, workdir, rng, outcome)
    for kind in plan.rank_faults:
        run_rank_fault(kind, plan, workdir, rng, outcome)
    outcome.wall_s = time.monotonic() - started
    command = "python scripts/soak.py" + "".join(
        f" {flag}" for flag, on in (("--quick", args.quick), (f"--env {args.env}", args.env != "reach"),
                                    (f"--seed {args.seed}", args.seed != 0)) if on)
    table = render_report(plan, outcome, command, args.quick)
    print(table)
    if str(args.report) != "-":
        write_report(args.report, table)
    return 0 if goals_met(outcome, args.quick) else 1


if __name__ == "__main__":
    sys.exit(main())
