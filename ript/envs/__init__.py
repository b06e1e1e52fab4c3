"""In-tree environments (numpy only; importing this package never imports a simulator)."""
from ript.envs.reach_env import (
    PALETTE,
    ReachBenchmark,
    ReachEnv,
    ReachEnvConfig,
    ReachExpert,
    ReachTask,
    ReachVectorEnv,
    collect_demonstrations,
    reach_expert_action,
    sample_init_states,
    task_description,
)

__all__ = [
    "PALETTE",
    "ReachBenchmark",
    "ReachEnv",
    "ReachEnvConfig",
    "ReachExpert",
    "ReachTask",
    "ReachVectorEnv",
    "collect_demonstrations",
    "reach_expert_action",
    "sample_init_states",
    "task_description",
]
