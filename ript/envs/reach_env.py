"""A fast 2-D reach task that speaks LIBERO's observation / vector-env dialect.

Why it exists: the real LIBERO simulator needs ~0.2 s per step on these CPUs, so a learning curve
takes GPU-days. This environment runs thousands of steps per second (pure numpy, cached
rendering) while exercising the same runner / rollout-generator / CFG-Flow code path.

The task. A square table seen from above holds one disc per colour (red, green, blue, yellow by
default); the agent is a white disc. Task ``reach_<colour>`` is solved when the agent's centre is
within ``success_radius`` of the disc of that colour; the other discs are distractors. Disc
positions and the agent start are randomised per init state, so a policy has to read the
instruction to know *which* colour and look at the image to know *where* it is.

World frame: x to the right, y up, both in ``[-arena_half_extent, arena_half_extent]``. Images
are top-down with row 0 at the top (largest y). (PI0's pipeline rotates them 180 degrees; the
policy sees a consistent rotated view, which is all that matters.)

Observation (the keys LIBERO's runner reads, docs/ARCHITECTURE.md "Observation conventions"):
  ``agentview_image``           uint8 (H, W, 3)  the whole table, top down
  ``robot0_eye_in_hand_image``  uint8 (H, W, 3)  agent-centred zoom ("wrist camera")
  ``robot0_eef_pos``            float64 (3,)     (x, y, eef_z); z never changes
  ``robot0_eef_quat``           float64 (4,)     identity, xyzw = (0, 0, 0, 1) -> axis-angle 0
  ``robot0_gripper_qpos``       float64 (2,)     constant "open" fingers

Action: 7-d like LIBERO's OSC_POSE delta action. Only dims 0..1 are used: the commanded
displacement is ``action[:2] * max_speed``, whose length is then capped at ``max_speed`` (speed is
isotropic; direction is kept) and the new position is clipped to the arena. Dims 2..5 (dz and
rotation) and 6 (gripper) are accepted and ignored, so LIBERO's no-op ``[0,0,0,0,0,0,-1]`` is a
no-op here too.

Init-state layout (flat float64 vector, ``D = 2 + 2 * len(colors)``, 10 by default):
  ``[agent_x, agent_y, <colors[0]>_x, <colors[0]>_y, <colors[1]>_x, <colors[1]>_y, ...]``
Init states are goal-independent: the agent starts at least ``min_start_distance`` from every
disc, so the same state is valid for every task (as a LIBERO scene is for its task).

Episode: ``reward = 1.0`` and ``done = True`` on every step where the agent is within the goal's
radius (LIBERO's sparse reward); otherwise 0 / False. Like LIBERO the env itself never times
out: the runner enforces ``max_episode_length`` (reported by :class:`ReachBenchmark`).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

logger = logging.getLogger(__name__)

# Saturated colours that differ strongly in every channel pair, so a pixel test (and a tiny CNN)
# can tell them apart; none is close to the table, the off-table border or the white agent.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 190, 50),
    "blue": (30, 70, 230),
    "yellow": (235, 215, 30),
    "purple": (150, 40, 200),
    "cyan": (30, 210, 220),
}
TABLE_RGB = (140, 115, 90)  # wood brown
OFF_TABLE_RGB = (35, 35, 35)  # what the wrist camera sees beyond the table edge
AGENT_RGB = (255, 255, 255)
GRIPPER_QPOS_OPEN = (0.04, -0.04)  # Panda finger joint positions when open, as LIBERO reports
IDENTITY_QUAT_XYZW = (0.0, 0.0, 0.0, 1.0)
# Stream tags so benchmark init states and demonstration init states never coincide, even when
# both are built from the same integer seed (evaluating on the demos' starts would flatter SFT).
_BENCHMARK_STREAM, _DEMO_STREAM, _RESET_STREAM = 0, 1, 2


@dataclass(frozen=True)
class ReachEnvConfig:
    """Geometry, rendering and episode settings; validated at construction."""

    image_size: int = 56  # pixels per side; 56 = 4 x 14, SigLIP's patch size
    colors: tuple[str, ...] = ("red", "green", "blue", "yellow")  # one task per colour
    arena_half_extent: float = 1.0  # table is [-e, e]^2 in world units
    spawn_margin: float = 0.15  # discs and agent start this far inside the edge (fully visible)
    target_radius: float = 0.12  # drawn disc radius (~3.4 px at 56 px)
    agent_radius: float = 0.07
    success_radius: float = 0.1  # agent centre to goal centre
    min_target_separation: float = 0.45  # between disc centres: success regions never overlap
    min_start_distance: float = 0.45  # agent start to every disc centre
    max_speed: float = 0.04  # world units per step: a typical reach (~1.0) takes ~25 steps
    wrist_half_extent: float = 0.5  # half-width of the agent-centred wrist view
    eef_z: float = 0.0  # constant third coordinate of robot0_eef_pos
    max_episode_length: int = 150  # three 50-step open-loop chunks; the longest reach is ~60
    num_init_states_per_task: int = 50  # LIBERO ships 50 per task
    init_state_seed: int = 0  # seeds the benchmark's fixed init-state sets

    def __post_init__(self) -> None:
        _check(8 <= self.image_size <= 512, "image_size", self.image_size, "use 8..512 pixels, e.g. 56")
        _check(len(self.colors) >= 1, "colors", self.colors, "name at least one colour")
        _check(len(set(self.colors)) == len(self.colors), "colors", self.colors, "remove duplicates")
        unknown = [c for c in self.colors if c not in PALETTE]
        _check(not unknown, "colors", self.colors, f"use colours from {sorted(PALETTE)}")
        for key in ("arena_half_extent", "target_radius", "agent_radius", "success_radius",
                    "max_speed", "wrist_half_extent"):
            _check(getattr(self, key) > 0, key, getattr(self, key), "use a positive number")
        _check(0 <= self.spawn_margin < self.arena_half_extent, "spawn_margin", self.spawn_margin,
               f"use 0 <= spawn_margin < arena_half_extent ({self.arena_half_extent})")
        _check(self.min_target_separation > 2 * self.success_radius, "min_target_separation",
               self.min_target_separation,
               f"use > 2 * success_radius ({2 * self.success_radius}) so success regions are disjoint")
        _check(self.min_start_distance > self.success_radius, "min_start_distance",
               self.min_start_distance, f"use > success_radius ({self.success_radius}) so an episode "
               "never starts solved")
        _check(self.max_episode_length >= 1, "max_episode_length", self.max_episode_length, "use >= 1")
        _check(self.num_init_states_per_task >= 1, "num_init_states_per_task",
               self.num_init_states_per_task, "use >= 1")

    @property
    def state_dim(self) -> int:
        return 2 + 2 * len(self.colors)

    @property
    def task_names(self) -> list[str]:
        return [f"reach_{c}" for c in self.colors]


def _check(ok: bool, key: str, value: Any, fix: str) -> None:
    if not ok:
        raise ValueError(f"ReachEnvConfig.{key}={value!r} is invalid: {fix}")


def task_description(color: str) -> str:
    """The language instruction for reaching ``color`` (PI0's prompt)."""
    return f"reach the {color} target"


def _resolve_task(config: ReachEnvConfig, task: str | int) -> int:
    """Task index from an index, a task name (``reach_red``) or a bare colour (``red``)."""
    if isinstance(task, (int, np.integer)):
        if not 0 <= int(task) < len(config.colors):
            raise ValueError(f"task={task!r} is out of range: use 0..{len(config.colors) - 1}")
        return int(task)
    name = task[len("reach_"):] if task.startswith("reach_") else task
    if name not in config.colors:
        raise ValueError(f"task={task!r} is unknown: use one of {config.task_names}")
    return config.colors.index(name)


# --------------------------------------------------------------------------------------------
# Init states


def _sample_one_state(rng: np.random.Generator, config: ReachEnvConfig, max_tries: int = 1000) -> np.ndarray:
    """Rejection-sample disc centres (pairwise separated), then an agent start far from all."""
    lim = config.arena_half_extent - config.spawn_margin
    points: list[np.ndarray] = []
    for wanted_sep, count in ((config.min_target_separation, len(config.colors)),
                              (config.min_start_distance, 1)):
        for _ in range(count):
            for _attempt in range(max_tries):
                p = rng.uniform(-lim, lim, size=2)
                if all(np.linalg.norm(p - q) >= wanted_sep for q in points[: len(config.colors)]):
                    points.append(p)
                    break
            else:
                raise ValueError(
                    f"could not place {len(config.colors)} discs {config.min_target_separation} apart "
                    f"with an agent start {config.min_start_distance} away inside +-{lim}: lower "
                    "min_target_separation / min_start_distance or use fewer colors")
    targets, agent = points[:-1], points[-1]
    return np.concatenate([agent, *targets]).astype(np.float64)


def sample_init_states(n: int, seed: int, config: ReachEnvConfig | None = None,
                       stream: int = _RESET_STREAM) -> np.ndarray:
    """``(n, D)`` init states, a pure function of ``(n, seed, config, stream)``."""
    config = config or ReachEnvConfig()
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(stream)]))
    return np.stack([_sample_one_state(rng, config) for _ in range(n)]) if n else np.zeros((0, config.state_dim))


# --------------------------------------------------------------------------------------------
# Rendering


class _Renderer:
    """Draws both views with numpy. Both views are axis-aligned, so a pixel's world x depends only
    on its column and y only on its row: every shape is drawn from two 1-d coordinate vectors,
    inside its own pixel bounding box. Discs never move within an episode, so the agentview
    background (table + discs) is drawn once per init state and only the agent is pasted per
    step; the wrist view (whose window moves) is redrawn per step, still only a few boxes."""

    def __init__(self, config: ReachEnvConfig) -> None:
        self.cfg = config
        s = config.image_size
        self.unit = (np.arange(s) + 0.5) / s * 2.0 - 1.0  # pixel centres in [-1, 1], left->right
        self.colors = np.array([PALETTE[c] for c in config.colors], dtype=np.uint8)  # (K, 3)
        e = config.arena_half_extent
        self.agent_xs, self.agent_ys = self.unit * e, -self.unit * e  # agentview columns / rows
        self._background: np.ndarray | None = None

    def world_to_pixel(self, xy: np.ndarray) -> tuple[int, int]:
        """(row, col) of the agentview pixel containing world point ``xy``."""
        e, s = self.cfg.arena_half_extent, self.cfg.image_size
        col = int(np.clip(np.floor((xy[0] + e) / (2 * e) * s), 0, s - 1))
        row = int(np.clip(np.floor((e - xy[1]) / (2 * e) * s), 0, s - 1))
        return row, col

    @staticmethod
    def _disc(img: np.ndarray, xs: np.ndarray, ys: np.ndarray, centre: np.ndarray, radius: float,
              rgb: Any) -> None:
        """Paint pixels whose centre lies within ``radius`` of ``centre``. ``xs`` (W,) increasing
        and ``ys`` (H,) decreasing are the world coordinates of the columns and rows."""
        # Both vectors are uniform (step p), so the bounding box is plain arithmetic; python
        # floats here are ~10x cheaper than numpy scalar calls, which dominate at 56 px.
        n_cols, n_rows = len(xs), len(ys)
        p = float(xs[1] - xs[0]) if n_cols > 1 else 1.0
        cx, cy, x0, y0 = float(centre[0]), float(centre[1]), float(xs[0]), float(ys[0])
        c0 = max(0, math.ceil((cx - radius - x0) / p))
        c1 = min(n_cols, math.floor((cx + radius - x0) / p) + 1)
        r0 = max(0, math.ceil((y0 - cy - radius) / p))
        r1 = min(n_rows, math.floor((y0 - cy + radius) / p) + 1)
        if c0 >= c1 or r0 >= r1:
            return
        dx2 = (xs[c0:c1] - centre[0]) ** 2  # (w,)
        dy2 = (ys[r0:r1] - centre[1]) ** 2  # (h,)
        img[r0:r1, c0:c1][dy2[:, None] + dx2[None, :] <= radius * radius] = rgb

    def _table(self, xs: np.ndarray, ys: np.ndarray, targets: np.ndarray) -> np.ndarray:
        e = self.cfg.arena_half_extent
        img = np.empty((len(ys), len(xs), 3), dtype=np.uint8)
        img[:] = TABLE_RGB
        img[:, np.abs(xs) > e] = OFF_TABLE_RGB
        img[np.abs(ys) > e, :] = OFF_TABLE_RGB
        for k in range(len(targets)):  # discs are disjoint by construction: order is irrelevant
            self._disc(img, xs, ys, targets[k], self.cfg.target_radius, self.colors[k])
        return img

    def set_targets(self, targets: np.ndarray) -> None:
        """Cache the agentview background for disc centres ``targets`` (K, 2)."""
        self._background = self._table(self.agent_xs, self.agent_ys, targets)

    def agentview(self, agent: np.ndarray) -> np.ndarray:
        assert self._background is not None, "set_targets must run before rendering"
        img = self._background.copy()
        self._disc(img, self.agent_xs, self.agent_ys, agent, self.cfg.agent_radius, AGENT_RGB)
        return img

    def wrist(self, agent: np.ndarray, targets: np.ndarray) -> np.ndarray:
        w = self.cfg.wrist_half_extent
        xs, ys = self.unit * w + agent[0], -self.unit * w + agent[1]
        img = self._table(xs, ys, targets)
        self._disc(img, xs, ys, agent, self.cfg.agent_radius, AGENT_RGB)
        return img


# --------------------------------------------------------------------------------------------
# Environment


class ReachEnv:
    """One reach episode at a time; LIBERO ``OffScreenRenderEnv``-style API."""

    def __init__(self, task: str | int = 0, config: ReachEnvConfig | None = None, seed: int = 0) -> None:
        self.config = config or ReachEnvConfig()
        self._renderer = _Renderer(self.config)
        self.set_task(task)
        self.seed(seed)
        self._agent = np.zeros(2)
        self._targets = np.zeros((len(self.config.colors), 2))
        self._steps = 0
        self._initialised = False

    # Deterministic init states without an instance: ``ReachEnv.sample_init_states(n, seed)``.
    sample_init_states = staticmethod(sample_init_states)

    # -- task ------------------------------------------------------------------------------
    def set_task(self, task: str | int) -> None:
        """Switch the goal colour (keeps the scene); lets a vector env be reused across tasks."""
        self.task_id = _resolve_task(self.config, task)
        self.goal_color = self.config.colors[self.task_id]
        self.task_name = self.config.task_names[self.task_id]
        self.language = task_description(self.goal_color)

    @property
    def goal_position(self) -> np.ndarray:
        return self._targets[self.task_id].copy()

    @property
    def agent_position(self) -> np.ndarray:
        return self._agent.copy()

    @property
    def target_positions(self) -> dict[str, np.ndarray]:
        return {c: self._targets[i].copy() for i, c in enumerate(self.config.colors)}

    # -- lifecycle --------------------------------------------------------------------------
    def seed(self, seed: int | None = None) -> list[int | None]:
        """Reseed :meth:`reset`'s random init states (returns ``[seed]`` like gym)."""
        self._rng = np.random.default_rng(np.random.SeedSequence([0 if seed is None else int(seed),
                                                                  _RESET_STREAM]))
        return [seed]

    def reset(self) -> dict[str, np.ndarray]:
        """A fresh random init state from the env's seeded generator."""
        return self.set_init_state(_sample_one_state(self._rng, self.config))

    def set_init_state(self, init_state: np.ndarray) -> dict[str, np.ndarray]:
        """Place agent and discs exactly as ``init_state`` (layout in the module docstring)."""
        state = np.asarray(init_state, dtype=np.float64).reshape(-1)
        if state.shape != (self.config.state_dim,):
            raise ValueError(f"init_state has shape {np.shape(init_state)}; expected "
                             f"({self.config.state_dim},) = [agent_xy, one xy per colour in "
                             f"{self.config.colors}]")
        if not np.all(np.isfinite(state)):
            raise ValueError(f"init_state has non-finite entries: {state}")
        e = self.config.arena_half_extent
        self._agent = np.clip(state[:2], -e, e)
        self._targets = state[2:].reshape(-1, 2).copy()
        self._renderer.set_targets(self._targets)
        self._steps = 0
        self._initialised = True
        return self._observation()

    def get_sim_state(self) -> np.ndarray:
        """The current state in init-state layout (agent where it is now)."""
        return np.concatenate([self._agent, self._targets.reshape(-1)])

    def close(self) -> None:
        self._initialised = False

    # -- dynamics ---------------------------------------------------------------------------
    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, dict[str, Any]]:
        if not self._initialised:
            raise RuntimeError("call reset() or set_init_state() before step()")
        action = np.asarray(action, dtype=np.float64).reshape(-1)
        if action.shape != (7,) or not np.all(np.isfinite(action)):
            raise ValueError(f"action must be 7 finite numbers (LIBERO layout), got {action}")
        delta = action[:2] * self.config.max_speed
        norm = float(np.hypot(delta[0], delta[1]))
        if norm > self.config.max_speed:  # cap speed, keep direction
            delta *= self.config.max_speed / norm
        e = self.config.arena_half_extent
        self._agent = np.clip(self._agent + delta, -e, e)
        self._steps += 1
        success = self.check_success()
        info = {"success": success, "goal_distance": self.goal_distance(), "steps": self._steps}
        return self._observation(), float(success), success, info

    def goal_distance(self) -> float:
        d = self._agent - self._targets[self.task_id]
        return float(np.hypot(d[0], d[1]))

    def check_success(self) -> bool:
        return self.goal_distance() <= self.config.success_radius

    # -- observation ------------------------------------------------------------------------
    def render(self, mode: str = "rgb_array") -> np.ndarray:
        """The agentview image (gym's ``render`` convention)."""
        return self._renderer.agentview(self._agent)

    def world_to_pixel(self, xy: np.ndarray) -> tuple[int, int]:
        """(row, col) in ``agentview_image`` of a world point (for tests and overlays)."""
        return self._renderer.world_to_pixel(np.asarray(xy, dtype=np.float64))

    def _observation(self) -> dict[str, np.ndarray]:
        return {
            "agentview_image": self._renderer.agentview(self._agent),
            "robot0_eye_in_hand_image": self._renderer.wrist(self._agent, self._targets),
            "robot0_eef_pos": np.array([self._agent[0], self._agent[1], self.config.eef_z]),
            "robot0_eef_quat": np.array(IDENTITY_QUAT_XYZW),
            "robot0_gripper_qpos": np.array(GRIPPER_QPOS_OPEN),
        }


def _object_array(items: Sequence[Any]) -> np.ndarray:
    """1-d object array, what LIBERO's ``np.stack`` over per-env dicts produces."""
    out = np.empty(len(items), dtype=object)
    for i, item in enumerate(items):
        out[i] = item
    return out


class ReachVectorEnv:
    """``n`` :class:`ReachEnv` in one process with LIBERO ``SubprocVectorEnv``'s call shapes.

    Return types match LIBERO's ``venv.py``: observations are a 1-d ``object`` array of obs
    dicts; ``step`` returns ``(obs, rewards float64 (n,), dones bool (n,), infos object (n,))``
    with ``info["env_id"]`` set. ``id`` selects a subset of envs, as in LIBERO. No subprocesses:
    a step costs well under a millisecond, far less than pickling images across a pipe.
    """

    def __init__(self, n: int, task: str | int = 0, config: ReachEnvConfig | None = None,
                 seed: int = 0) -> None:
        if n < 1:
            raise ValueError(f"ReachVectorEnv n={n!r} is invalid: use n >= 1")
        self.config = config or ReachEnvConfig()
        self.envs = [ReachEnv(task, self.config, seed + i) for i in range(n)]
        self.env_num = n
        self.is_closed = False

    def __len__(self) -> int:
        return self.env_num

    def _ids(self, id: int | Sequence[int] | None) -> list[int]:
        if self.is_closed:
            raise RuntimeError("ReachVectorEnv is closed")
        if id is None:
            return list(range(self.env_num))
        return [int(id)] if np.isscalar(id) else [int(i) for i in id]

    def set_task(self, task: str | int) -> None:
        for env in self.envs:
            env.set_task(task)

    def seed(self, seed: int | Sequence[int] | None = None) -> list[list[int | None]]:
        """An int seeds env ``i`` with ``seed + i`` (LIBERO's rule); a list seeds one each."""
        seeds = [seed + i for i in range(self.env_num)] if isinstance(seed, int) else (
            list(seed) if seed is not None else [None] * self.env_num)
        return [env.seed(s) for env, s in zip(self.envs, seeds)]

    def reset(self, id: int | Sequence[int] | None = None) -> np.ndarray:
        return _object_array([self.envs[i].reset() for i in self._ids(id)])

    def set_init_state(self, init_state: Sequence[np.ndarray] | np.ndarray,
                       id: int | Sequence[int] | None = None) -> np.ndarray:
        ids = self._ids(id)
        if len(init_state) != len(ids):
            raise ValueError(f"got {len(init_state)} init states for {len(ids)} envs")
        return _object_array([self.envs[i].set_init_state(s) for i, s in zip(ids, init_state)])

    def step(self, actions: np.ndarray, id: int | Sequence[int] | None = None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        ids = self._ids(id)
        if len(actions) != len(ids):
            raise ValueError(f"got {len(actions)} actions for {len(ids)} envs")
        results = [self.envs[i].step(a) for i, a in zip(ids, actions)]
        for i, r in zip(ids, results):
            r[3]["env_id"] = i
        obs, rewards, dones, infos = zip(*results)
        return (_object_array(obs), np.array(rewards, dtype=np.float64),
                np.array(dones, dtype=bool), _object_array(infos))

    def check_success(self) -> list[bool]:
        return [env.check_success() for env in self.envs]

    def get_sim_state(self) -> list[np.ndarray]:
        return [env.get_sim_state() for env in self.envs]

    def close(self) -> None:
        for env in self.envs:
            env.close()
        self.is_closed = True


# --------------------------------------------------------------------------------------------
# Benchmark metadata


@dataclass(frozen=True)
class ReachTask:
    """Mirrors the fields of LIBERO's ``Task`` that runners read."""

    name: str
    language: str
    goal_color: str
    task_id: int


@dataclass
class ReachBenchmark:
    """LIBERO-``Benchmark``-like metadata: tasks, languages, fixed init states per task."""

    config: ReachEnvConfig = field(default_factory=ReachEnvConfig)

    def __post_init__(self) -> None:
        self._init_states: dict[int, np.ndarray] = {}

    @property
    def name(self) -> str:
        return "reach"

    @property
    def n_tasks(self) -> int:
        return len(self.config.colors)

    @property
    def max_episode_length(self) -> int:
        return self.config.max_episode_length

    def get_num_tasks(self) -> int:
        return self.n_tasks

    def get_task_names(self) -> list[str]:
        return self.config.task_names

    def get_task_id(self, task: str | int) -> int:
        return _resolve_task(self.config, task)

    def get_task(self, task: str | int) -> ReachTask:
        i = self.get_task_id(task)
        c = self.config.colors[i]
        return ReachTask(name=self.config.task_names[i], language=task_description(c), goal_color=c, task_id=i)

    def get_task_init_states(self, task: str | int) -> np.ndarray:
        """``(num_init_states_per_task, D)``; fixed for a given config (seeded per task)."""
        i = self.get_task_id(task)
        if i not in self._init_states:
            rng = np.random.default_rng(np.random.SeedSequence(
                [self.config.init_state_seed, _BENCHMARK_STREAM, i]))
            self._init_states[i] = np.stack(
                [_sample_one_state(rng, self.config) for _ in range(self.config.num_init_states_per_task)])
        return self._init_states[i].copy()


# --------------------------------------------------------------------------------------------
# Scripted expert and demonstrations


def reach_expert_action(obs_or_position: dict[str, np.ndarray] | np.ndarray, goal_position: np.ndarray,
                        max_speed: float = ReachEnvConfig.max_speed, noise: float = 0.0,
                        rng: np.random.Generator | None = None) -> np.ndarray:
    """float32 (7,) action heading straight for ``goal_position`` at full speed, slowing to land
    on it; ``noise`` adds N(0, noise^2) to dims 0..1 (then clipped to [-1, 1]). Gripper = -1
    (open, LIBERO's convention)."""
    pos = obs_or_position["robot0_eef_pos"] if isinstance(obs_or_position, dict) else obs_or_position
    a2 = (np.asarray(goal_position, dtype=np.float64)[:2] - np.asarray(pos, dtype=np.float64)[:2]) / max_speed
    norm = float(np.hypot(a2[0], a2[1]))
    if norm > 1.0:
        a2 /= norm
    if noise > 0:
        a2 = a2 + (rng if rng is not None else np.random.default_rng()).normal(0.0, noise, size=2)
    action = np.zeros(7, dtype=np.float32)
    action[:2] = np.clip(a2, -1.0, 1.0)
    action[6] = -1.0
    return action


class ReachExpert:
    """Closed-loop scripted policy bound to one env. ``wrong_target_prob`` makes an episode head
    for a random distractor instead (a plausible failure: right skill, wrong colour), which with
    ``noise`` gives the mediocre demonstrations a low-data SFT start needs."""

    def __init__(self, env: ReachEnv, noise: float = 0.0, wrong_target_prob: float = 0.0, seed: int = 0) -> None:
        if noise < 0 or not 0.0 <= wrong_target_prob <= 1.0:
            raise ValueError(f"ReachExpert noise={noise!r} must be >= 0 and wrong_target_prob="
                             f"{wrong_target_prob!r} in [0, 1]")
        self.env, self.noise, self.wrong_target_prob = env, noise, wrong_target_prob
        self.rng = np.random.default_rng(seed)
        self.target_index = env.task_id

    def reset(self) -> None:
        """Choose this episode's target; call after the env is reset."""
        k = len(self.env.config.colors)
        self.target_index = self.env.task_id
        if k > 1 and self.rng.random() < self.wrong_target_prob:
            others = [i for i in range(k) if i != self.env.task_id]
            self.target_index = int(self.rng.choice(others))

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        goal = self.env._targets[self.target_index]
        return reach_expert_action(obs, goal, self.env.config.max_speed, self.noise, self.rng)


def collect_demonstrations(task_names: Sequence[str] | None = None, n_per_task: int = 10, seed: int = 0,
                           noise: float = 0.0, wrong_target_prob: float = 0.0,
                           config: ReachEnvConfig | None = None) -> list[dict[str, Any]]:
    """Roll the expert out from fresh init states (disjoint from the benchmark's).

    Each demo dict holds per-step arrays aligned so that ``obs[t]`` was seen before
    ``actions[t]``: ``agentview_image`` / ``robot0_eye_in_hand_image`` uint8 (T, H, W, 3),
    ``robot0_eef_pos`` (T, 3), ``robot0_eef_quat`` (T, 4), ``robot0_gripper_qpos`` (T, 2),
    ``actions`` float32 (T, 7); plus ``task_name``, ``task_id``, ``task_description``,
    ``init_state``, ``success``. A demo stops at success or ``max_episode_length``.
    """
    config = config or ReachEnvConfig()
    task_names = list(task_names) if task_names is not None else config.task_names
    demos: list[dict[str, Any]] = []
    for name in task_names:
        task_id = _resolve_task(config, name)
        env = ReachEnv(task_id, config, seed=seed)
        expert = ReachExpert(env, noise, wrong_target_prob, seed=int(
            np.random.SeedSequence([seed, _DEMO_STREAM, task_id, 1]).generate_state(1)[0]))
        starts = sample_init_states(n_per_task, int(np.random.SeedSequence(
            [seed, task_id]).generate_state(1)[0]), config, stream=_DEMO_STREAM)
        for init_state in starts:
            demos.append(expert_episode(env, expert, init_state))
    n_ok = sum(d["success"] for d in demos)
    logger.info("collected %d reach demos (noise=%.2f, wrong_target_prob=%.2f): %d successful",
                len(demos), noise, wrong_target_prob, n_ok)
    return demos


def expert_episode(env: ReachEnv, expert: ReachExpert, init_state: np.ndarray) -> dict[str, Any]:
    """One expert rollout from ``init_state`` in ``collect_demonstrations``' per-step layout."""
    obs = env.set_init_state(init_state)
    expert.reset()
    frames: list[dict[str, np.ndarray]] = []
    actions: list[np.ndarray] = []
    success = False
    for _ in range(env.config.max_episode_length):
        action = expert.act(obs)
        frames.append(obs)
        actions.append(action)
        obs, _, success, _ = env.step(action)
        if success:
            break
    demo: dict[str, Any] = {k: np.stack([f[k] for f in frames]) for k in frames[0]}
    demo.update(actions=np.stack(actions).astype(np.float32), task_name=env.task_name, task_id=env.task_id,
                task_description=env.language, init_state=np.asarray(init_state).copy(), success=bool(success))
    return demo
