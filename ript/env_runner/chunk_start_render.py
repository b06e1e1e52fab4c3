"""Stop-gap: :class:`Pi0LiberoRunner` that renders the cameras only where a chunk starts.

The runner reads images only at chunk starts (after the settle steps, then every ``replan``
steps), but LIBERO renders both cameras on every step: ~170 ms of a ~180 ms step on these CPUs
(/work/shared/docs/LIBERO_NOTES.md). Until the runner renders on demand itself (issue 13), this
subclass wraps each env so the camera observables stay off and a forced re-observation with the
cameras on happens only for the observations the runner turns into chunk observations.

Everything else -- reset, settle steps, chunk sampling, action conversion, episodes -- is the
parent's code. Envs run in-process (one core per engineer here; a worker process buys nothing).
A step whose observation the runner would not read comes back without image keys, so a caller
that does read it fails loudly (KeyError in ``env_obs_to_pi0_observation``) instead of using stale
frames. Not for video recording (``render=True`` reads every step's image).
"""
from __future__ import annotations

from typing import Any

from ript.env_runner.pi0_libero_runner import LiberoVectorEnv, Pi0LiberoRunner, _LiberoEnvFn
from ript.envs.libero_object_expert import observe_with_cameras, set_cameras_enabled


class ChunkStartRenderEnv:
    """A LIBERO env that renders its cameras only on the steps that start a chunk.

    Steps are counted from the last ``set_init_state``/``reset``; the observation after step
    ``num_steps_wait + k * replan`` (k = 0, 1, ...) is a chunk start.
    """

    def __init__(self, env: Any, num_steps_wait: int, replan: int):
        if num_steps_wait < 0 or replan < 1:
            raise ValueError(f"num_steps_wait={num_steps_wait} must be >= 0 and replan={replan} >= 1")
        self.env, self.num_steps_wait, self.replan = env, num_steps_wait, replan
        self.steps = 0
        set_cameras_enabled(env, False)

    def _is_chunk_start(self) -> bool:
        k = self.steps - self.num_steps_wait
        return k >= 0 and k % self.replan == 0

    def _observe(self, obs: dict) -> dict:
        return observe_with_cameras(self.env) if self._is_chunk_start() else obs

    def reset(self) -> dict:
        self.steps = 0
        return self._observe(self.env.reset())

    def set_init_state(self, init_state: Any) -> dict:
        self.steps = 0
        return self._observe(self.env.set_init_state(init_state))

    def step(self, action: Any) -> tuple:
        obs, reward, done, info = self.env.step(action)
        self.steps += 1
        return self._observe(obs), reward, done, info

    def close(self) -> None:
        self.env.close()


class _ChunkStartRenderEnvFn:
    def __init__(self, env_fn: _LiberoEnvFn, num_steps_wait: int, replan: int):
        self.env_fn, self.num_steps_wait, self.replan = env_fn, num_steps_wait, replan

    def __call__(self) -> ChunkStartRenderEnv:
        return ChunkStartRenderEnv(self.env_fn(), self.num_steps_wait, self.replan)


class ChunkStartRenderLiberoRunner(Pi0LiberoRunner):
    """:class:`Pi0LiberoRunner` whose envs render only at chunk starts (in-process envs)."""

    def _make_vector_env(self, task_name: str, n: int) -> LiberoVectorEnv:
        if task_name not in self._all_task_names:
            raise ValueError(f"unknown task {task_name!r} for {self.benchmark_name!r}; valid: {self._all_task_names}")
        bddl = self.benchmark.get_task_bddl_file_path(self._task_id(task_name))
        replan = self.replan_steps or self.open_loop
        fns = [_ChunkStartRenderEnvFn(_LiberoEnvFn(bddl, self.camera_height, self.camera_width, self.seed + i,
                                                   self.hard_reset), self.num_steps_wait, replan)
               for i in range(n)]
        return LiberoVectorEnv(fns, use_subprocess=False)


__all__ = ["ChunkStartRenderEnv", "ChunkStartRenderLiberoRunner"]
