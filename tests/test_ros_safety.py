"""The action safety filter shared by the policy node, the teleop node and `wmpo eval`."""

from __future__ import annotations

import numpy as np
import pytest
from wmpo_core.robot_config import ActionDim, ActionSpec, load_robot_config
from wmpo_core.safety import SafetyFilter

SPEC = ActionSpec(
    space="ee_delta_gripper",
    dims=[
        ActionDim(name="dx", kind="delta", low=-1.0, high=1.0, max_step_change=0.5),
        ActionDim(name="dz", kind="delta", low=-1.0, high=1.0, max_step_change=1.0),
        ActionDim(name="gripper", kind="absolute", low=0.0, high=1.0, max_step_change=0.25),
    ],
)


def test_clamps_limits_and_delta_magnitude():
    f = SafetyFilter(SPEC)
    command, events = f.filter(np.array([0.9, -3.0, 0.5]))
    np.testing.assert_allclose(command, [0.5, -1.0, 0.5])
    assert events.clamped_dims == ("dz",) and events.rate_limited_dims == ("dx",)


def test_absolute_dims_are_rate_limited_against_the_previous_command():
    f = SafetyFilter(SPEC)
    f.filter(np.array([0.0, 0.0, 0.0]))
    command, events = f.filter(np.array([0.0, 0.0, 1.0]))
    assert command[2] == pytest.approx(0.25) and events.rate_limited_dims == ("gripper",)
    assert f.filter(np.array([0.0, 0.0, 1.0]))[0][2] == pytest.approx(0.5)


def test_first_command_is_limited_against_the_reference():
    cfg = load_robot_config("so101_real")
    f = SafetyFilter(cfg.action)
    measured = np.zeros(6)
    f.reset(reference=measured)
    command, _ = f.filter(np.full(6, 1.0))
    np.testing.assert_allclose(command, [0.05, 0.05, 0.05, 0.05, 0.08, 0.1])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_proposals_are_dropped_and_the_arm_holds(bad):
    f = SafetyFilter(SPEC)
    f.filter(np.array([0.3, 0.2, 0.75]))
    command, events = f.filter(np.array([0.1, bad, 0.5]))
    assert events.dropped_non_finite
    np.testing.assert_allclose(command, [0.0, 0.0, 0.75])  # delta dims stop, the gripper keeps its setpoint


def test_nothing_to_send_before_any_command():
    f = SafetyFilter(SPEC)
    assert f.hold() is None
    command, events = f.filter(np.array([np.nan, 0.0, 0.0]))
    assert command is None and events.dropped_non_finite


def test_hold_never_commands_zeros_to_a_position_controlled_arm():
    cfg = load_robot_config("ur5e_ros2_control")
    f = SafetyFilter(cfg.action)
    pose = np.array([1.0, -1.2, 0.8, 0.3, 0.2, 0.1])
    f.reset(reference=pose)
    np.testing.assert_allclose(f.hold(), pose)


def test_never_follows_a_previous_command_outside_the_limits():
    f = SafetyFilter(SPEC, last_command=np.array([0.0, 0.0, 0.0]))
    f.last_command = np.array([0.0, 0.0, 1.2])  # e.g. a measured gripper slightly past its range
    command, _ = f.filter(np.array([0.0, 0.0, 1.0]))
    assert command[2] == 1.0


def test_wrong_shape_is_an_error():
    with pytest.raises(ValueError, match="3 dims"):
        SafetyFilter(SPEC).filter(np.zeros(4))
