"""A scripted vectorised env and runner whose episodes depend on the init state only.

``init_state[0]`` is the number of policy steps after which the episode succeeds (0: never, so it
runs to the length cap), whatever simulator runs it. Observations encode the steps an env has taken
(wait steps included) in ``robot0_eef_pos[0]``, and the deterministic policy's chunk is a function
of that observation alone, so the lockstep loop and the continuous scheduler must produce the same
episodes; only the timing and the batch composition may differ.
"""
from __future__ import annotations

import numpy as np

from ript.env_runner.chunked_runner import ChunkedRunner
from ript.env_runner.pi0_runner_utils import NormStats

WAIT = 2
STATE_DIM = 3


def scripted_states(success_steps: list[int]) -> np.ndarray:
    """Init states whose episodes succeed after the given policy steps (0 = never)."""
    states = np.zeros((len(success_steps), STATE_DIM), dtype=np.float32)
    states[:, 0] = success_steps
    states[:, 1] = np.arange(len(success_steps))  # distinct states even for equal lengths
    return states


class ScriptedVectorEnv:
    """n envs following the protocol of ``ChunkedRunner`` (sync: one call serves several ids).

    ``log`` records every call as (method, ids, render); ``fail_on_step_call`` raises on that
    (1-based) ``step`` call, as a dying worker would.
    """

    renders_on_demand = True

    def __init__(self, n: int, fail_on_step_call: int | None = None):
        self.n = n
        self.steps = np.zeros(n, dtype=int)  # wait steps included
        self.success_at = np.zeros(n, dtype=int)
        self.log: list[tuple[str, list[int], bool]] = []
        self.step_calls = 0
        self.fail_on_step_call = fail_on_step_call
        self.closed = False

    def __len__(self) -> int:
        return self.n

    def _obs(self, i: int, render: bool) -> dict:
        obs = {"robot0_eef_pos": np.array([float(self.steps[i]), 0.0, 1.0]),
               "robot0_eef_quat": np.array([0.0, 0.0, 0.0, 1.0]),
               "robot0_gripper_qpos": np.array([0.04, -0.04])}
        if render:
            img = np.full((4, 4, 3), self.steps[i] % 255, dtype=np.uint8)
            obs.update(agentview_image=img, robot0_eye_in_hand_image=img.copy())
        return obs

    def _ids(self, id):  # noqa: A002
        return list(range(self.n)) if id is None else list(id)

    def reset(self, id=None, render=True):  # noqa: A002
        ids = self._ids(id)
        self.log.append(("reset", ids, render))
        for i in ids:
            self.steps[i] = self.success_at[i] = 0
        return [self._obs(i, render) for i in ids]

    def set_init_state(self, states, id=None, render=True):  # noqa: A002
        ids = self._ids(id)
        self.log.append(("set_init_state", ids, render))
        for i, state in zip(ids, states):
            self.success_at[i] = int(state[0])
        return [self._obs(i, render) for i in ids]

    def step(self, actions, id=None, render=True):  # noqa: A002
        self.step_calls += 1
        if self.fail_on_step_call is not None and self.step_calls == self.fail_on_step_call:
            raise EOFError("worker died")
        ids = self._ids(id)
        self.log.append(("step", ids, render))
        dones = []
        for i in ids:
            self.steps[i] += 1
            # success_at counts policy steps; the runner's WAIT settle steps come first
            dones.append(bool(self.success_at[i]) and self.steps[i] >= WAIT + self.success_at[i])
        obs = [self._obs(i, render) for i in ids]
        return obs, np.asarray(dones, float), np.asarray(dones), [{}] * len(ids)

    def close(self):
        self.closed = True


class ObservationPolicy:
    """Deterministic: the chunk is a function of the observed step count (and of nothing else).

    ``calls`` logs every batch size; with ``record_seeds`` it also takes ``noise_seeds`` and logs
    them per call."""

    def __init__(self, horizon: int = 10, record_seeds: bool = False):
        self.norm_stats = NormStats(state_mean=np.zeros(8), state_std=np.ones(8),
                                    action_mean=np.zeros(7), action_std=np.full(7, 0.1))
        self.horizon = horizon
        self.calls: list[int] = []
        self.seeds: list[list[int]] = []
        if record_seeds:
            self.select_action = self._select_action_seeded

    def _chunks(self, obs) -> np.ndarray:
        steps = np.asarray(obs["state"])[:, 0]  # normalised with mean 0, std 1: the step count
        self.calls.append(len(steps))
        chunk = steps[:, None, None] / 1000.0 + np.arange(self.horizon)[None, :, None] / 1e4
        return np.broadcast_to(chunk, (len(steps), self.horizon, 7)).astype(np.float32).copy()

    def select_action(self, obs, cfg_scale=1.0):
        return self._chunks(obs)

    def _select_action_seeded(self, obs, cfg_scale=1.0, noise_seeds=None):
        self.seeds.append(list(noise_seeds))
        return self._chunks(obs)


class ScriptedRunner(ChunkedRunner):
    """One or more tasks backed by :class:`ScriptedVectorEnv`s (``created`` lists them)."""

    def __init__(self, max_len: int = 40, tasks=("task_a",), env_kwargs=None, **kw):
        kw.setdefault("num_steps_wait", WAIT)
        kw.setdefault("num_parallel_envs", 2)
        kw.setdefault("open_loop", 10)
        kw.setdefault("n_action_steps", 10)
        kw.setdefault("action_mode", "absolute")
        super().__init__(**kw)
        self.max_len, self.tasks = max_len, list(tasks)
        self.env_kwargs = dict(env_kwargs or {})
        self.created: list[ScriptedVectorEnv] = []
        self.seed = 0

    def _make_vector_env(self, task_name, n):
        self.created.append(ScriptedVectorEnv(n, **self.env_kwargs))
        self.env_kwargs.pop("fail_on_step_call", None)  # a rebuilt env works
        return self.created[-1]

    def _task_description(self, task_name):
        return task_name.replace("_", " ")

    def _task_names(self):
        return self.tasks

    def _init_states(self, task_name):
        return scripted_states([5, 0, 12, 25])

    def _max_episode_length(self, task_name):
        return self.max_len
