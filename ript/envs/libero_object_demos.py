"""LIBERO-Object demonstrations from the scripted expert, in the reach demos' dict format.

A demo is what :func:`ript.algos.sft_warm_start.demonstration_windows` and
:func:`~ript.algos.sft_warm_start.norm_stats_from_demonstrations` consume (the format of
:func:`ript.envs.reach_env.collect_demonstrations`): per-step ``robot0_eef_pos`` (T, 3),
``robot0_eef_quat`` (T, 4), ``robot0_gripper_qpos`` (T, 2), ``actions`` float32 (T, 7), the raw
LIBERO observation keys the runner converts with ``env_obs_to_pi0_observation``, plus
``task_name``, ``task_id``, ``task_description``, ``init_state``, ``success``.

Rendering is the expensive part (~170 ms per step with both cameras, ~10 ms without), and SFT
windows only read images at their start steps. So the cameras are rendered only at every
``image_stride``-th step: ``agentview_image`` / ``robot0_eye_in_hand_image`` are length-T lists
holding uint8 (H, W, 3) arrays there and None elsewhere. Cut windows with the same stride (or a
multiple of it); chunk starts (every ``n_action_steps``) must be multiples of it too.

What the policy sees (``record_demonstrations(..., image_size=N)``, the default for new packs):
the episode runs on the runner's own env wrapper (``ript.envs.libero_env.LiberoEnv``: its camera switch renders
on the *step* whose observation is read, so images and proprioception are sampled at the same
sub-step as in a rollout, not re-observed afterwards) at the runner's camera size (256), and each
rendered frame goes through the runner's conversion ``env_obs_to_pi0_observation(...,
image_size=N)`` (flip + openpi's resize-with-pad). The demo then holds the policy's input frames
(still (H, W, 3); ``images_converted=True``) and SFT windows equal rollout windows pixel for pixel.

Importing this module never imports ``libero``; the env comes from
:func:`~ript.envs.libero_object_expert.make_libero_object_env`.
"""
from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from tqdm import tqdm

from ript.envs.libero_object_expert import (
    CAMERA_OBSERVABLES,
    ExpertConfig,
    LiberoObjectExpert,
    make_libero_object_env,
    NOOP_ACTION,
    observe_with_cameras,
    run_expert_episode,
)
from ript.utils.images import camera_frame_for_policy

logger = logging.getLogger(__name__)

STATE_KEYS = ("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos")


def episode_to_demo(episode: Any, task_name: str, task_id: int, task_description: str, init_state: np.ndarray,
                    image_stride: int, clean_labels: bool = False) -> dict[str, Any]:
    """An :class:`~ript.envs.libero_object_expert.ExpertEpisode` in the demo dict format.

    ``clean_labels``: ``actions`` are the expert's actions before the action noise (DART: the
    noise widens the visited states, the labels stay the expert's intent); ``executed_actions``
    always holds what ran. Default: the executed actions, as a recorded dataset would hold.
    """
    demo: dict[str, Any] = {key: np.stack([np.asarray(o[key], np.float64) for o in episode.observations])
                            for key in STATE_KEYS}
    for key in CAMERA_OBSERVABLES:
        demo[key] = [np.asarray(o[key]) if (t % image_stride == 0 and key in o) else None
                     for t, o in enumerate(episode.observations)]
        missing = [t for t in range(0, episode.num_steps, image_stride) if demo[key][t] is None]
        if missing:
            raise ValueError(f"demo of {task_name!r} has no {key!r} at image steps {missing[:5]}; were the "
                             f"cameras rendered every image_stride={image_stride} steps?")
    labels = episode.clean_actions if clean_labels else episode.actions
    demo.update(actions=np.asarray(labels, np.float32), executed_actions=np.asarray(episode.actions, np.float32),
                task_name=task_name, task_id=int(task_id),
                task_description=task_description, init_state=np.asarray(init_state).copy(),
                success=bool(episode.success), mistake=episode.mistake, image_stride=int(image_stride))
    return demo


def convert_images_like_runner(obs: Mapping[str, Any], image_size: int, rotate_180: bool = True) -> dict[str, np.ndarray]:
    """Both camera frames of one env observation as the runner hands them to the policy, (H, W, 3) uint8
    (:func:`ript.utils.images.camera_frame_for_policy`, which the runner's conversion calls too)."""
    return {key: np.ascontiguousarray(camera_frame_for_policy(np.asarray(obs[key]), rotate_180, image_size))
            for key in CAMERA_OBSERVABLES}


def run_expert_episode_like_runner(worker_env: Any, expert: LiberoObjectExpert, init_state: np.ndarray,
                                   image_stride: int, max_steps: int = 280, num_steps_wait: int = 10) -> Any:
    """An expert episode stepped the way ``ChunkedLiberoRunner`` steps a rollout.

    ``worker_env`` is the runner's ``LiberoEnv`` (``ript.envs.libero_env``, camera switch): reset and init state
    without rendering, ``num_steps_wait`` no-ops rendering on the last one, then the cameras
    render on the env step whose returned observation is an image step (every ``image_stride``),
    exactly as the runner renders on the step before a chunk start. Stops at success or when the
    expert is done (see :func:`~ript.envs.libero_object_expert.run_expert_episode`).
    """
    from ript.envs.libero_object_expert import ExpertEpisode

    worker_env.reset(render=False)
    obs = worker_env.set_init_state(init_state, render=num_steps_wait == 0)
    for k in range(num_steps_wait):
        obs, _, _, _ = worker_env.step(NOOP_ACTION.copy(), render=k == num_steps_wait - 1)
    expert.reset(obs)
    observations, actions, clean_actions, success = [], [], [], False
    for t in range(max_steps):
        action = expert.act(obs)
        observations.append(obs)
        actions.append(action)
        clean_actions.append(expert.last_clean_action)
        obs, _, done, _ = worker_env.step(action, render=(t + 1) % image_stride == 0)
        if done:
            success = True
            break
        if expert.phase == "done":
            break
    return ExpertEpisode(success=success, num_steps=len(actions), final_phase=expert.phase,
                         mistake=expert.plan.mistake, actions=np.asarray(actions, np.float32),
                         clean_actions=np.asarray(clean_actions, np.float32), observations=observations)


def record_demonstrations(task_id: int, init_state_ids: Sequence[int], expert_config: ExpertConfig | None = None,
                          seed: int = 0, camera_size: int = 128, image_stride: int = 10, max_steps: int = 280,
                          num_steps_wait: int = 10, env: Any = None, benchmark: Any = None,
                          progress: bool = True, clean_labels: bool = False,
                          image_size: int | None = None) -> list[dict[str, Any]]:
    """One expert demo per shipped init state ``init_state_ids`` of LIBERO-Object task ``task_id``.

    Settle steps and the step budget match :class:`~ript.env_runner.pi0_libero_runner.Pi0LiberoRunner`
    (``num_steps_wait`` no-ops, then ``max_steps`` policy steps), so ``observations[0]`` is what the
    runner's first chunk sees. Pass ``env``/``benchmark`` to reuse an env (cameras off).
    ``clean_labels``: see :func:`episode_to_demo`.

    ``image_size`` (the policy's input size, e.g. 112 for the ``small`` preset): record what the
    runner shows the policy -- the runner's env wrapper and rendering schedule (see
    :func:`run_expert_episode_like_runner`) at ``camera_size`` (use the task config's, 256), frames
    converted by the runner's conversion; the demo gets ``images_converted=True``. ``env`` must
    then be a ``LiberoEnv`` (or None). None: the older path (re-observed raw frames).
    """
    if image_stride < 1:
        raise ValueError(f"image_stride={image_stride} must be >= 1")
    if image_size is not None and image_size < 1:
        raise ValueError(f"image_size={image_size} must be a positive number of pixels or None")
    own_env = env is None
    if own_env and image_size is not None:
        from ript.envs.libero_env import LiberoEnv, LiberoEnvFn, load_benchmark

        benchmark = load_benchmark("libero_object")
        env = LiberoEnv(LiberoEnvFn(benchmark.get_task_bddl_file_path(task_id), camera_size, camera_size,
                                           seed, hard_reset=False))
    elif own_env:
        env, benchmark = make_libero_object_env(task_id, camera_size=camera_size, seed=seed)
    task_name = benchmark.get_task_names()[task_id]
    description = benchmark.get_task(task_id).language
    init_states = benchmark.get_task_init_states(task_id)
    expert_seed = int(np.random.SeedSequence([seed, task_id]).generate_state(1)[0])
    sim_env = env.env if image_size is not None else env  # the LIBERO env the expert reads the scene from
    expert = LiberoObjectExpert(sim_env, expert_config, seed=expert_seed)

    def render_at_image_steps(t: int, env_: Any, obs: dict) -> dict:
        return observe_with_cameras(env_) if t % image_stride == 0 else obs

    demos = []
    try:
        for i in tqdm(init_state_ids, desc=f"demos task {task_id}", disable=not progress, leave=False):
            if image_size is None:
                ep = run_expert_episode(env, expert, init_states[i], max_steps=max_steps,
                                        num_steps_wait=num_steps_wait, on_observation=render_at_image_steps,
                                        stop_when_done=True)
            else:
                ep = run_expert_episode_like_runner(env, expert, init_states[i], image_stride, max_steps,
                                                    num_steps_wait)
                ep.observations = [({**o, **convert_images_like_runner(o, image_size)} if t % image_stride == 0
                                     else o) for t, o in enumerate(ep.observations)]
            demo = episode_to_demo(ep, task_name, task_id, description, init_states[i], image_stride, clean_labels)
            demo.update(init_state_index=int(i), camera_size=int(camera_size),
                        images_converted=image_size is not None, image_size=image_size)
            demos.append(demo)
    finally:
        if own_env:
            env.close()
    logger.info("task %d: %d demos, %d successful (noise %.2f, mistake_prob %.2f)", task_id, len(demos),
                sum(d["success"] for d in demos), expert.config.action_noise, expert.config.mistake_prob)
    return demos


def save_demonstrations(demos: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(list(demos), f, protocol=pickle.HIGHEST_PROTOCOL)
    return path


def load_demonstrations(path: str | Path) -> list[dict[str, Any]]:
    """Demos written by :func:`save_demonstrations` (a pickle: load only files you made)."""
    with open(path, "rb") as f:
        demos = pickle.load(f)
    if not isinstance(demos, list) or (demos and "actions" not in demos[0]):
        raise ValueError(f"{path} does not hold a list of demo dicts (save_demonstrations' format)")
    return demos


__all__ = ["STATE_KEYS", "convert_images_like_runner", "episode_to_demo", "load_demonstrations", "record_demonstrations", "run_expert_episode_like_runner",
           "save_demonstrations"]
