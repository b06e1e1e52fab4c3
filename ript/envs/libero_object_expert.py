"""Scripted pick-and-place expert for LIBERO-Object ("pick up the X and place it in the basket").

It reads privileged simulator state -- the target object's and the basket's world-frame boxes,
the end-effector position and the gripper -- and emits LIBERO's own 7-d OSC_POSE delta actions in
``[-1, 1]`` (1.0 asks for 5 cm / 0.5 rad in one control step; the gripper is -1 open, +1 close;
see docs/libero_facts.md). A small state machine drives it:

    approach (above the object) -> descend -> grasp -> lift -> transport (above the basket)
    -> lower -> release -> retreat (done)

Knobs for the low-data, low-quality demonstrations RIPT starts from: Gaussian ``action_noise``
on the arm dims, and ``mistake_prob``, the chance that an episode contains one plausible mistake
(heading for a distractor object, or opening the gripper early during transport).

Importing this module never imports ``libero`` (STYLE section 3): the functions that touch a
simulator take the env object (an ``OffScreenRenderEnv``, made by
:class:`ript.envs.libero_env.LiberoEnvFn`). The geometry helpers are pure
numpy and tested without a simulator.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import numpy as np

logger = logging.getLogger(__name__)

# OSC_POSE output_max of LIBERO's controller config: an action of 1.0 asks for this much.
POS_PER_ACTION = 0.05  # metres per control step
ROT_PER_ACTION = 0.5  # radians per control step
GRIPPER_OPEN, GRIPPER_CLOSE = -1.0, 1.0
CAMERA_OBSERVABLES = ("agentview_image", "robot0_eye_in_hand_image")
# LIBERO-Object's floor surface (measured: every object's lowest collision point is at z = 0).
# The workspace the expert may command; x/y from the farthest object placements of the suite
# plus margin, z from the floor to well above the basket rim.
WORKSPACE_LOW = np.array([-0.40, -0.40, 0.0])
WORKSPACE_HIGH = np.array([0.40, 0.45, 0.45])

Phase = Literal["approach", "descend", "grasp", "lift", "transport", "lower", "release", "retreat", "done"]
PHASES: tuple[str, ...] = get_args(Phase)
Mistake = Literal["none", "distractor", "early_release"]
MISTAKES: tuple[str, ...] = get_args(Mistake)


# --------------------------------------------------------------------------- pure geometry
def box_corners_world(aabb_local: np.ndarray, xpos: np.ndarray, xmat: np.ndarray) -> np.ndarray:
    """The 8 world-frame corners of each geom's local box.

    ``aabb_local``: (G, 6) MuJoCo ``geom_aabb`` rows (centre xyz, half sizes xyz, geom frame);
    ``xpos`` (G, 3) and ``xmat`` (G, 9) the geoms' world poses. Returns (G * 8, 3).
    """
    aabb_local = np.asarray(aabb_local, np.float64).reshape(-1, 6)
    xpos = np.asarray(xpos, np.float64).reshape(-1, 3)
    rot = np.asarray(xmat, np.float64).reshape(-1, 3, 3)
    signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], np.float64)  # (8, 3)
    local = aabb_local[:, None, :3] + signs[None] * aabb_local[:, None, 3:]  # (G, 8, 3)
    world = xpos[:, None, :] + np.einsum("gij,gkj->gki", rot, local)  # (G, 8, 3)
    return world.reshape(-1, 3)


def world_box(aabb_local: np.ndarray, xpos: np.ndarray, xmat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned world box ``(low (3,), high (3,))`` around a set of geoms (see ``box_corners_world``)."""
    corners = box_corners_world(aabb_local, xpos, xmat)
    if corners.size == 0:
        raise ValueError("world_box needs at least one geom")
    return corners.min(axis=0), corners.max(axis=0)


def grasp_height(obj_low_z: float, obj_high_z: float, depth: float = 0.03) -> float:
    """End-effector z at which the fingers close around an object spanning ``[low, high]``.

    The grip site sits between the finger pads and the palm about 3.5 cm above it (measured: the
    hand stalls 3.5 cm below a bottle's top), so tall objects (bottles, milk) are gripped
    ``depth`` below their top; short ones (cream cheese, butter: ~2 cm) 1 cm above their bottom,
    so the finger tips clear the floor.
    """
    return float(max(obj_low_z + 0.01, obj_high_z - depth))


def narrow_axis_angle(points_xy: np.ndarray) -> float:
    """Angle (rad, in (-pi/2, pi/2]) of the narrowest horizontal direction of a point cloud (N, 2).

    The principal axis with the smaller variance: the direction the fingers should close along.
    """
    pts = np.asarray(points_xy, np.float64).reshape(-1, 2)
    cov = np.cov((pts - pts.mean(axis=0)).T)  # (2, 2)
    eigvals, eigvecs = np.linalg.eigh(cov)  # ascending
    vx, vy = eigvecs[:, 0]
    return wrap_half_turn(float(np.arctan2(vy, vx)))


def wrap_half_turn(angle: float) -> float:
    """An axis direction (mod pi) as an angle in (-pi/2, pi/2]."""
    a = (angle + np.pi / 2) % np.pi - np.pi / 2
    return float(np.pi / 2 if np.isclose(a, -np.pi / 2) else a)


HAND_HALF_LENGTH = 0.10  # Panda hand collision box, half extent along the finger axis (measured contacts)
HAND_HALF_WIDTH = 0.03  # ... and across it
HAND_ABOVE_GRIP = 0.03  # hand bottom above the grip site: neighbours taller than grasp z + this are obstacles
MAX_GRASP_WIDTH = 0.065  # widest object section the open fingers (~7.8 cm apart) close around safely


def hand_clearance(closing_angle: float, center_xy: np.ndarray, obstacle_xy: np.ndarray,
                   half_length: float = HAND_HALF_LENGTH, half_width: float = HAND_HALF_WIDTH) -> float:
    """Smallest distance (m, negative = overlap) from the hand's footprint -- a rectangle at
    ``center_xy`` long along ``closing_angle`` -- to obstacle points (N, 2); inf without obstacles.
    Distance is the larger of the two axis gaps (a cheap, conservative-enough box distance)."""
    pts = np.asarray(obstacle_xy, np.float64).reshape(-1, 2) - np.asarray(center_xy, np.float64)
    if pts.size == 0:
        return float("inf")
    u = np.array([np.cos(closing_angle), np.sin(closing_angle)])
    v = np.array([-u[1], u[0]])
    gap = np.maximum(np.abs(pts @ u) - half_length, np.abs(pts @ v) - half_width)  # (N,)
    return float(gap.min())


def choose_closing_angle(object_xy: np.ndarray, obstacle_xy: np.ndarray, min_clearance: float = 0.01,
                         max_width: float = MAX_GRASP_WIDTH, max_tilt: float = np.deg2rad(60),
                         step: float = np.deg2rad(5)) -> float:
    """Finger closing direction (rad, in (-pi/2, pi/2]) for an object with footprint points (N, 2).

    Candidates turn away from the object's narrow axis in ``step`` increments up to ``max_tilt``;
    a candidate must span at most ``max_width`` of the object (the fingers must fit around it). The
    first one (smallest turn) whose hand footprint keeps ``min_clearance`` from the obstacles wins;
    if none does, the feasible one with the largest clearance. A flat box next to a tall can is the
    case that needs it: closing straight across the box lands the wide hand on the can.
    """
    pts = np.asarray(object_xy, np.float64).reshape(-1, 2)
    center = 0.5 * (pts.min(axis=0) + pts.max(axis=0))
    narrow = narrow_axis_angle(pts)
    turns = [0.0] + [sign * k * step for k in range(1, int(max_tilt / step) + 1) for sign in (1, -1)]
    best, best_clearance = narrow, -np.inf
    for turn in turns:
        angle = wrap_half_turn(narrow + turn)
        u = np.array([np.cos(angle), np.sin(angle)])
        if np.ptp(pts @ u) > max_width:
            continue
        clearance = hand_clearance(angle, center, obstacle_xy)
        if clearance >= min_clearance:
            return angle
        if clearance > best_clearance:
            best, best_clearance = angle, clearance
    return best


def yaw_matrix(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def grasp_orientation(start_rot: np.ndarray, closing_angle: float, max_turn: float = np.pi / 2) -> np.ndarray:
    """Target eef rotation (3, 3): ``start_rot`` turned about world z so the fingers close along
    ``closing_angle``. The fingers close along the eef's y axis; the smaller of the two turns that
    align it (mod pi) is taken, capped at ``max_turn``."""
    closing = np.asarray(start_rot, np.float64)[:, 1]
    turn = wrap_half_turn(closing_angle - float(np.arctan2(closing[1], closing[0])))
    return yaw_matrix(float(np.clip(turn, -max_turn, max_turn))) @ start_rot


def carry_height(basket_high_z: float, grip_to_bottom: float, clearance: float = 0.04) -> float:
    """End-effector z at which the object's bottom clears the basket rim by ``clearance``."""
    return float(basket_high_z + grip_to_bottom + clearance)


def release_height(basket_high_z: float, grip_to_bottom: float, drop: float = 0.0) -> float:
    """End-effector z at release: the object's bottom at the rim height (minus ``drop``)."""
    return float(basket_high_z + grip_to_bottom - drop)


def move_action(eef_pos: np.ndarray, target_pos: np.ndarray, gain: float = 1.0, max_action: float = 1.0) -> np.ndarray:
    """Position part (3,) of an OSC delta action that moves the eef toward ``target_pos``.

    Proportional: ``gain * error / POS_PER_ACTION``, clipped to ``max_action`` per axis. With
    gain 1 the controller is asked for the whole remaining error in one step (it lags behind,
    which damps the motion); smaller gains move more slowly and precisely.
    """
    error = np.asarray(target_pos, np.float64) - np.asarray(eef_pos, np.float64)
    return np.clip(gain * error / POS_PER_ACTION, -max_action, max_action)


def quat_xyzw_to_matrix(quat: np.ndarray) -> np.ndarray:
    """Rotation matrix (3, 3) of a unit quaternion in robosuite's (x, y, z, w) order."""
    x, y, z, w = np.asarray(quat, np.float64) / np.linalg.norm(quat)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def rotation_action(current_quat: np.ndarray, target_rot: np.ndarray, gain: float = 1.0) -> np.ndarray:
    """Rotation part (3,) of an OSC delta action turning the eef (quat xyzw) toward ``target_rot`` (3, 3).

    robosuite's OSC applies the commanded axis-angle in the world frame (goal = R_delta @ R_now),
    so the error is the axis-angle of ``R_target @ R_now^T``.
    """
    r_err = np.asarray(target_rot, np.float64) @ quat_xyzw_to_matrix(current_quat).T
    cos = np.clip((np.trace(r_err) - 1.0) / 2.0, -1.0, 1.0)
    angle = float(np.arccos(cos))
    if angle < 1e-6:
        return np.zeros(3)
    axis = np.array([r_err[2, 1] - r_err[1, 2], r_err[0, 2] - r_err[2, 0], r_err[1, 0] - r_err[0, 1]])
    axis /= 2.0 * np.sin(angle) if np.sin(angle) > 1e-6 else 1.0
    return np.clip(gain * angle * axis / ROT_PER_ACTION, -1.0, 1.0)


def inside_workspace(point: np.ndarray) -> bool:
    """Whether ``point`` (3,) lies in the box the expert may command."""
    p = np.asarray(point, np.float64)
    return bool(np.all(p >= WORKSPACE_LOW) and np.all(p <= WORKSPACE_HIGH))


# --------------------------------------------------------------------------- simulator reads
@dataclass(frozen=True)
class SceneState:
    """What the expert reads from the simulator at one step (world frame, metres)."""

    object_low: np.ndarray  # (3,) box of the object being picked
    object_high: np.ndarray  # (3,)
    object_closing_angle: float | None  # rad, direction the fingers should close along (choose_closing_angle)
    basket_low: np.ndarray  # (3,)
    basket_high: np.ndarray  # (3,)
    eef_pos: np.ndarray  # (3,)
    eef_quat: np.ndarray  # (4,) xyzw
    gripper_qpos: np.ndarray  # (2,) finger joints; about +-0.0208 when open

    @property
    def object_center(self) -> np.ndarray:
        return 0.5 * (self.object_low + self.object_high)

    @property
    def basket_center(self) -> np.ndarray:
        return 0.5 * (self.basket_low + self.basket_high)

    @property
    def gripper_width(self) -> float:
        return float(self.gripper_qpos[0] - self.gripper_qpos[1])


def task_object_names(env: Any) -> tuple[str, str, list[str]]:
    """``(object to pick, basket, distractors)`` of a LIBERO-Object env (``env.env.obj_of_interest``)."""
    problem = env.env
    interest = list(problem.obj_of_interest)
    baskets = [n for n in interest if n.startswith("basket")]
    targets = [n for n in interest if not n.startswith("basket")]
    if len(baskets) != 1 or len(targets) != 1:
        raise ValueError(f"expected one object and one basket in obj_of_interest, got {interest}; is this a "
                         f"LIBERO-Object task ('pick up the X and place it in the basket')?")
    distractors = [n for n in problem.objects_dict if n not in interest]
    return targets[0], baskets[0], distractors


def _body_subtree(model: Any, root: int) -> set[int]:
    bodies = {root}
    for b in range(model.nbody):  # bodies are stored parents first, so one pass finds the subtree
        if int(model.body_parentid[b]) in bodies and b != 0:
            bodies.add(b)
    return bodies


def object_corners(env: Any, name: str) -> np.ndarray:
    """World corners (N, 3) of object ``name``'s collision geoms (``env.env.obj_body_id[name]`` subtree)."""
    problem = env.env
    model, data = problem.sim.model, problem.sim.data
    bodies = _body_subtree(model, int(problem.obj_body_id[name]))
    geoms = [g for g in range(model.ngeom)
             if int(model.geom_bodyid[g]) in bodies and int(model.geom_contype[g]) != 0]
    if not geoms:
        raise ValueError(f"object {name!r} has no collision geoms in the MuJoCo model")
    return box_corners_world(model.geom_aabb[geoms], data.geom_xpos[geoms], data.geom_xmat[geoms])


def object_box(env: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    """World axis-aligned box ``(low (3,), high (3,))`` of object ``name``."""
    corners = object_corners(env, name)
    return corners.min(axis=0), corners.max(axis=0)


def closing_angle_in_scene(env: Any, object_name: str, object_xyz: np.ndarray) -> float:
    """:func:`choose_closing_angle` for ``object_name`` among the other objects of the scene,
    counting as obstacles only those tall enough to meet the hand at the grasp height."""
    grasp_z = grasp_height(object_xyz[:, 2].min(), object_xyz[:, 2].max())
    obstacles = []
    for name in env.env.objects_dict:
        if name != object_name:
            other = object_corners(env, name)
            if other[:, 2].max() > grasp_z + HAND_ABOVE_GRIP:
                obstacles.append(other[:, :2])
    obstacle_xy = np.concatenate(obstacles) if obstacles else np.zeros((0, 2))
    return choose_closing_angle(object_xyz[:, :2], obstacle_xy)


def read_scene(env: Any, obs: dict, object_name: str, basket_name: str,
               with_closing_angle: bool = True) -> SceneState:
    """The expert's view of one step; the closing angle (a scan of every object) only on request."""
    corners = object_corners(env, object_name)
    basket_low, basket_high = object_box(env, basket_name)
    return SceneState(object_low=corners.min(axis=0), object_high=corners.max(axis=0),
                      object_closing_angle=(closing_angle_in_scene(env, object_name, corners)
                                            if with_closing_angle else None),
                      basket_low=basket_low, basket_high=basket_high,
                      eef_pos=np.asarray(obs["robot0_eef_pos"], np.float64),
                      eef_quat=np.asarray(obs["robot0_eef_quat"], np.float64),
                      gripper_qpos=np.asarray(obs["robot0_gripper_qpos"], np.float64))


def set_cameras_enabled(env: Any, enabled: bool) -> None:
    """Switch LIBERO's camera observables on/off (off: ~10 ms per step instead of ~170 ms)."""
    for name in CAMERA_OBSERVABLES:
        env.env.modify_observable(observable_name=name, attribute="enabled", modifier=bool(enabled))


# --------------------------------------------------------------------------- the expert
@dataclass(frozen=True)
class ExpertConfig:
    """Knobs of :class:`LiberoObjectExpert`; validated at construction."""

    action_noise: float = 0.0  # std of Gaussian noise on the 6 arm dims (action units)
    mistake_prob: float = 0.0  # chance that an episode makes one mistake (see MISTAKES)
    mistakes: tuple[str, ...] = ("distractor", "early_release")  # which mistakes may be drawn
    hover: float = 0.10  # approach height above the object's top
    xy_tolerance: float = 0.01  # eef within this of the object's xy before descending
    z_tolerance: float = 0.01
    grasp_steps: int = 12  # steps holding still while the fingers close
    release_steps: int = 10
    carry_clearance: float = 0.05  # object bottom above the basket rim while transporting
    max_phase_steps: int = 120  # a phase that takes longer is abandoned (go to retreat)
    gain: float = 1.0
    hold_orientation: bool = True  # keep the start orientation (the OSC drifts when carrying)
    align_yaw: bool = True  # turn the hand so the fingers close across the object's narrow side

    def __post_init__(self) -> None:
        if self.action_noise < 0:
            raise ValueError(f"ExpertConfig.action_noise={self.action_noise!r} must be >= 0")
        if not 0.0 <= self.mistake_prob <= 1.0:
            raise ValueError(f"ExpertConfig.mistake_prob={self.mistake_prob!r} must be in [0, 1]")
        bad = [m for m in self.mistakes if m not in MISTAKES or m == "none"]
        if bad or (self.mistake_prob > 0 and not self.mistakes):
            raise ValueError(f"ExpertConfig.mistakes={self.mistakes!r}: each must be one of "
                             f"{[m for m in MISTAKES if m != 'none']}, and at least one when mistake_prob > 0")
        for name in ("grasp_steps", "release_steps", "max_phase_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"ExpertConfig.{name}={getattr(self, name)!r} must be >= 1")


@dataclass
class _EpisodePlan:
    pick: str  # object the expert goes for (the task's object, or a distractor by mistake)
    mistake: str = "none"
    early_release_fraction: float = 1.0  # fraction of the transport distance before an early release
    phase: str = "approach"
    phase_steps: int = 0
    grip_to_bottom: float = 0.0  # eef z minus object bottom when grasped
    start_rot: np.ndarray = field(default_factory=lambda: np.eye(3))
    target_rot: np.ndarray | None = None  # set on the first step (grasp orientation)
    transport_start_xy: np.ndarray = field(default_factory=lambda: np.zeros(2))


class LiberoObjectExpert:
    """Closed-loop scripted policy for one LIBERO-Object env.

    Call :meth:`reset` after the env's ``set_init_state`` (and settle steps), then :meth:`act`
    with each observation. ``phase`` says where the state machine is; ``"done"`` after the
    release and retreat (the env reports success on its own).
    """

    def __init__(self, env: Any, config: ExpertConfig | None = None, seed: int = 0):
        self.env = env
        self.config = config or ExpertConfig()
        self.rng = np.random.default_rng(seed)
        self.object_name, self.basket_name, self.distractors = task_object_names(env)
        self.plan = _EpisodePlan(pick=self.object_name)
        self.last_clean_action = np.zeros(7)  # the last action before noise (DART-style labels)

    @property
    def phase(self) -> str:
        return self.plan.phase

    def reset(self, obs: dict) -> None:
        """Draw this episode's plan (mistake or not) from the expert's generator."""
        cfg = self.config
        plan = _EpisodePlan(pick=self.object_name, start_rot=quat_xyzw_to_matrix(obs["robot0_eef_quat"]))
        if cfg.mistake_prob > 0 and self.rng.random() < cfg.mistake_prob:
            plan.mistake = str(self.rng.choice(list(cfg.mistakes)))
            if plan.mistake == "distractor" and self.distractors:
                plan.pick = str(self.rng.choice(self.distractors))
            elif plan.mistake == "early_release":
                plan.early_release_fraction = float(self.rng.uniform(0.2, 0.7))
        self.plan = plan

    def _goto(self, phase: str) -> None:
        self.plan.phase, self.plan.phase_steps = phase, 0

    def act(self, obs: dict) -> np.ndarray:
        """float64 (7,) action in [-1, 1] for the current observation."""
        cfg, plan = self.config, self.plan
        scene = read_scene(self.env, obs, plan.pick, self.basket_name, with_closing_angle=plan.target_rot is None)
        plan.phase_steps += 1
        if plan.phase_steps > cfg.max_phase_steps and plan.phase not in ("retreat", "done"):
            logger.debug("expert phase %s timed out; retreating", plan.phase)
            self._goto("retreat")
        if plan.target_rot is None:  # the object's yaw is read once, before it is touched
            plan.target_rot = (grasp_orientation(plan.start_rot, scene.object_closing_angle) if cfg.align_yaw
                               else plan.start_rot)
        target, gripper = self._phase_target(scene)
        action = np.zeros(7)
        action[:3] = move_action(scene.eef_pos, target, cfg.gain)
        if cfg.hold_orientation:
            action[3:6] = rotation_action(scene.eef_quat, plan.target_rot, gain=0.5)
        action[6] = gripper
        self.last_clean_action = action.copy()
        if cfg.action_noise > 0 and plan.phase != "done":
            action[:6] += self.rng.normal(0.0, cfg.action_noise, 6)
        action[:6] = np.clip(action[:6], -1.0, 1.0)
        action[6] = gripper
        return action

    def _phase_target(self, s: SceneState) -> tuple[np.ndarray, float]:
        """(eef target (3,), gripper command) of the current phase; advances the phase."""
        cfg, plan = self.config, self.plan
        obj_xy, eef = s.object_center[:2], s.eef_pos
        grasp_z = grasp_height(s.object_low[2], s.object_high[2])
        if plan.phase == "approach":
            hover_z = max(s.object_high[2] + cfg.hover, eef[2] - 0.02)  # never dive while moving sideways
            target = np.array([*obj_xy, min(hover_z, WORKSPACE_HIGH[2])])
            if np.linalg.norm(eef[:2] - obj_xy) < cfg.xy_tolerance:
                self._goto("descend")
            return target, GRIPPER_OPEN
        if plan.phase == "descend":
            target = np.array([*obj_xy, grasp_z])
            if abs(eef[2] - grasp_z) < cfg.z_tolerance * 0.5:
                plan.grip_to_bottom = float(eef[2] - s.object_low[2])
                self._goto("grasp")
            return target, GRIPPER_OPEN
        if plan.phase == "grasp":
            target = np.array([*obj_xy, grasp_z])
            if plan.phase_steps >= cfg.grasp_steps:
                self._goto("lift")
            return target, GRIPPER_CLOSE
        carry_z = carry_height(s.basket_high[2], plan.grip_to_bottom, cfg.carry_clearance)
        # Place the object's centre (not the eef) over the basket's centre.
        eef_xy_over_basket = s.basket_center[:2] + (eef[:2] - obj_xy)
        if plan.phase == "lift":
            target = np.array([*eef[:2], carry_z])
            if eef[2] > carry_z - cfg.z_tolerance:
                plan.transport_start_xy = eef[:2].copy()
                self._goto("transport")
            return target, GRIPPER_CLOSE
        if plan.phase == "transport":
            target = np.array([*eef_xy_over_basket, carry_z])
            if plan.mistake == "early_release":
                total = np.linalg.norm(eef_xy_over_basket - plan.transport_start_xy)
                done = np.linalg.norm(eef[:2] - plan.transport_start_xy)
                if total > 0 and done / total >= plan.early_release_fraction:
                    self._goto("release")
            if np.linalg.norm(eef[:2] - eef_xy_over_basket) < cfg.xy_tolerance:
                self._goto("lower")
            return target, GRIPPER_CLOSE
        if plan.phase == "lower":
            release_z = release_height(s.basket_high[2], plan.grip_to_bottom)
            target = np.array([*eef_xy_over_basket, release_z])
            if eef[2] < release_z + cfg.z_tolerance:
                self._goto("release")
            return target, GRIPPER_CLOSE
        if plan.phase == "release":
            if plan.phase_steps >= cfg.release_steps:
                self._goto("retreat")
            return eef.copy(), GRIPPER_OPEN
        if plan.phase == "retreat":
            target = np.array([*eef[:2], carry_z + 0.05])
            if eef[2] > carry_z:
                self._goto("done")
            return target, GRIPPER_OPEN
        return eef.copy(), GRIPPER_OPEN  # done: hold still, gripper open




# --------------------------------------------------------------------------- episodes
NOOP_ACTION = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, GRIPPER_OPEN])


@dataclass
class ExpertEpisode:
    """Result of :func:`run_expert_episode`. ``observations[t]`` was seen before ``actions[t]``."""

    success: bool
    num_steps: int  # policy steps taken (settle steps not counted)
    final_phase: str
    mistake: str
    actions: np.ndarray  # float32 (T, 7) executed (noisy) actions
    clean_actions: np.ndarray  # float32 (T, 7) the same before the action noise
    observations: list[dict]  # T env observation dicts (whatever keys the env returned)


def make_libero_object_env(task_id: int, camera_size: int = 128, seed: int = 0, hard_reset: bool = False,
                           cameras: bool = False, benchmark_name: str = "libero_object") -> tuple[Any, Any]:
    """``(env, benchmark)``: one LIBERO env of ``benchmark_name``'s task ``task_id``, built the way
    the runner builds its envs (:class:`~ript.envs.libero_env.LiberoEnvFn`, so ``libero`` stays imported
    only in :mod:`ript.envs.libero_env`).

    ``hard_reset=False`` skips robosuite's model rebuild on every reset (3-10 s here); the shipped
    init state set right after overwrites the sim state anyway. ``cameras=False`` switches the
    camera observables off (see :func:`set_cameras_enabled`).
    """
    from ript.envs.libero_env import LiberoEnvFn, load_benchmark

    bench = load_benchmark(benchmark_name)
    num_tasks = bench.get_num_tasks()
    if not 0 <= task_id < num_tasks:
        raise ValueError(f"task_id={task_id} out of range for {benchmark_name!r} ({num_tasks} tasks: "
                         f"{list(bench.get_task_names())})")
    env = LiberoEnvFn(bench.get_task_bddl_file_path(task_id), camera_size, camera_size, seed, hard_reset)()
    set_cameras_enabled(env, cameras)
    return env, bench


def settle(env: Any, num_steps_wait: int) -> dict:
    """LIBERO's settle steps (no-op, gripper open) after ``set_init_state``, as the runner does."""
    obs = None
    for _ in range(num_steps_wait):
        obs, _, _, _ = env.step(NOOP_ACTION.copy())
    return obs


def observe_with_cameras(env: Any) -> dict:
    """The current observation with both camera images, rendered now, cameras off again after.

    A forced re-observation of the current sim state, so the images belong exactly to this step
    (re-enabling an observable before a step would sample it at whichever sub-step its timer fires).
    """
    set_cameras_enabled(env, True)
    try:
        return env.env._get_observations(force_update=True)
    finally:
        set_cameras_enabled(env, False)


def run_expert_episode(env: Any, expert: LiberoObjectExpert, init_state: np.ndarray, max_steps: int = 280,
                       num_steps_wait: int = 10, on_observation: Any = None,
                       stop_when_done: bool = False) -> ExpertEpisode:
    """Reset ``env`` to ``init_state``, settle, and let ``expert`` act until success or ``max_steps``.

    ``stop_when_done`` also ends the episode when the expert has finished (released and retreated)
    without success -- after a mistake -- instead of idling to ``max_steps`` (demos: idle steps
    would only teach the policy to idle).

    ``on_observation(t, env, obs) -> obs`` (optional) may replace ``observations[t]`` before the
    expert sees it; demo recording uses it to render the cameras at chosen steps only.
    """
    env.reset()
    obs = env.set_init_state(init_state)
    if num_steps_wait > 0:
        obs = settle(env, num_steps_wait)
    expert.reset(obs)
    observations, actions, clean_actions, success = [], [], [], False
    for t in range(max_steps):
        if on_observation is not None:
            obs = on_observation(t, env, obs)
        action = expert.act(obs)
        observations.append(obs)
        actions.append(action)
        clean_actions.append(expert.last_clean_action)
        obs, _, done, _ = env.step(action)
        if done:
            success = True
            break
        if stop_when_done and expert.phase == "done":
            break
    return ExpertEpisode(success=success, num_steps=len(actions), final_phase=expert.phase,
                         mistake=expert.plan.mistake, actions=np.asarray(actions, np.float32),
                         clean_actions=np.asarray(clean_actions, np.float32), observations=observations)


__all__ = [
    "box_corners_world", "CAMERA_OBSERVABLES", "carry_height", "choose_closing_angle",
    "closing_angle_in_scene", "ExpertConfig", "ExpertEpisode", "grasp_height", "grasp_orientation",
    "hand_clearance", "inside_workspace", "LiberoObjectExpert", "make_libero_object_env", "MISTAKES",
    "move_action", "narrow_axis_angle", "NOOP_ACTION", "object_box", "object_corners",
    "observe_with_cameras", "PHASES", "quat_xyzw_to_matrix", "read_scene", "release_height",
    "rotation_action", "run_expert_episode", "SceneState", "set_cameras_enabled", "settle",
    "task_object_names", "WORKSPACE_HIGH", "WORKSPACE_LOW", "world_box", "wrap_half_turn", "yaw_matrix",
]
