"""Distributed helpers: single-process identity behaviour and a real 2-rank gloo group."""
from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest
import torch

from multiprocess_helpers import free_port, run_forked
from ript.utils import distributed as du

_DIST_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture
def plain_env(monkeypatch):
    for var in _DIST_VARS:
        monkeypatch.delenv(var, raising=False)


def test_single_process_needs_no_group(plain_env):
    info = du.setup_distributed(device="cpu")
    assert info == du.DistInfo(False, 0, 1, 0, torch.device("cpu"))
    assert not torch.distributed.is_initialized()
    assert du.is_rank_zero() and du.get_world_size() == 1
    du.barrier()  # no-op
    assert du.all_reduce_mean_dict({"a": 1, "b": 2.5}) == {"a": 1.0, "b": 2.5}
    assert du.broadcast_object({"x": [1, 2]}) == {"x": [1, 2]}
    du.cleanup_distributed()  # safe without a group


def test_auto_device_without_cuda(plain_env):
    if torch.cuda.is_available():
        pytest.skip("checks the CPU fallback")
    assert du.setup_distributed().device == torch.device("cpu")


def test_unwrap_plain_module_is_identity():
    lin = torch.nn.Linear(2, 2)
    assert du.unwrap(lin) is lin


def test_bad_launch_environment_errors_name_the_fix(plain_env, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match="torchrun"):
        du.setup_distributed(device="cpu")
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE='two'"):
        du.setup_distributed(device="cpu")


def test_log_rank_zero_and_filter(caplog):
    log = logging.getLogger("test_dist")
    with caplog.at_level(logging.INFO, logger="test_dist"):
        du.log_rank_zero(log, "hello %d", 7)
    assert "hello 7" in caplog.text
    assert du.RankZeroFilter().filter(logging.makeLogRecord({"msg": "x"}))


def test_no_environment_changes_at_import():
    code = (
        "import os; before = dict(os.environ)\n"
        "import ript.utils.distributed, ript.utils.rendering\n"
        "import ript.algos.rl_optimizers.file_counter, ript.algos.rl_optimizers.rollout_generator\n"
        "import ript.datasets.init_state_dataset, sys\n"
        "assert dict(os.environ) == before\n"
        "assert 'libero' not in sys.modules and 'robosuite' not in sys.modules\n"
        "import torch.distributed as d; assert not d.is_initialized()\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)


# --------------------------------------------------------------------------- 2 ranks (gloo)


def _worker(rank: int, port: int, results) -> None:
    torch.set_num_threads(1)  # forked child: keep ATen off the parent's OpenMP pool
    # What torchrun exports for each process.
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    info = du.setup_distributed(device="cpu")
    try:
        out = {"info": (info.is_distributed, info.rank, info.world_size, str(info.device)),
               "backend": torch.distributed.get_backend()}
        # Different keys per rank (tasks are split across ranks): each key is averaged over
        # the ranks that report it -- "a": (1 + 3) / 2, "b" only on rank 0, "c" only on rank 1.
        metrics = {"a": 1.0, "b": 10.0} if rank == 0 else {"a": 3.0, "c": 5.0}
        out["mean"] = du.all_reduce_mean_dict(metrics)
        out["bcast"] = du.broadcast_object({"from": rank})
        lin = torch.nn.Linear(2, 2)
        out["unwrap"] = du.unwrap(torch.nn.parallel.DistributedDataParallel(lin)) is lin
        out["zero"] = du.is_rank_zero()
        du.barrier()
        results[rank] = out
    finally:
        du.cleanup_distributed()


def test_two_rank_gloo_group_from_torchrun_env():
    port = free_port()
    results = run_forked(_worker, [(rank, port) for rank in range(2)], with_results=True)
    for rank in (0, 1):
        r = results[rank]
        assert r["info"] == (True, rank, 2, "cpu") and r["backend"] == "gloo"
        assert r["mean"] == {"a": 2.0, "b": 10.0, "c": 5.0}
        assert r["bcast"] == {"from": 0}
        assert r["unwrap"] and r["zero"] == (rank == 0)
