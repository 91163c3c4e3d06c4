"""Unit and joint-order conversion to/from LeRobot, teleop device mappings, the bridge's LeRobot config.

The LeRobot bridge and the leader-arm device cannot be run here (no arm, no serial port); what they
compute is tested instead: every value that crosses to or from LeRobot goes through these functions.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from wmpo_core.lerobot_units import (
    UnitConversionError,
    check_convertible,
    from_lerobot,
    to_lerobot,
    vector_from_lerobot,
    vector_to_lerobot,
)
from wmpo_core.robot_config import load_robot_config, parse_robot_config
from wmpo_ros.teleop_devices import (
    GAMEPAD_CLOSE,
    GAMEPAD_OPEN,
    GAMEPAD_STAY,
    KeyboardMapping,
    TeleopDeviceError,
    gamepad_action,
    leader_action,
    resolve_device,
)

REAL = load_robot_config("so101_real")
SIM = load_robot_config("so101_sim")


def test_radians_to_degrees_and_gripper_to_0_100_in_lerobot_key_order():
    values = np.array([math.pi / 2, -math.pi / 4, 0.0, 0.1, -1.0, 0.25])
    out = to_lerobot(values, REAL)
    assert out["shoulder_pan.pos"] == pytest.approx(90.0) and out["shoulder_lift.pos"] == pytest.approx(-45.0)
    assert out["wrist_roll.pos"] == pytest.approx(math.degrees(-1.0))
    assert out["gripper.pos"] == pytest.approx(25.0)  # normalized [0, 1] -> 0..100


def test_from_lerobot_reorders_by_key_and_ignores_cameras():
    reading = {
        "gripper.pos": 100.0,
        "wrist_roll.pos": 10.0,
        "front": np.zeros((4, 4, 3), np.uint8),
        "elbow_flex.pos": -30.0,
        "shoulder_pan.pos": 45.0,
        "wrist_flex.pos": 0.0,
        "shoulder_lift.pos": 90.0,
    }
    np.testing.assert_allclose(
        from_lerobot(reading, REAL), [math.pi / 4, math.pi / 2, -math.pi / 6, 0.0, math.radians(10.0), 1.0]
    )
    with pytest.raises(KeyError, match=re.escape("gripper.pos")):
        from_lerobot({k: v for k, v in reading.items() if k != "gripper.pos"}, REAL)


def test_round_trip_and_vector_forms():
    values = np.array([0.3, -0.2, 1.0, -1.5, 2.0, 0.6])
    np.testing.assert_allclose(from_lerobot(to_lerobot(values, REAL), REAL), values)
    np.testing.assert_allclose(vector_from_lerobot(vector_to_lerobot(values, REAL), REAL), values)
    assert vector_to_lerobot(values, REAL)[5] == pytest.approx(60.0)


def test_range_m100_100_gripper_maps_to_the_joint_range():
    data = REAL.model_dump(mode="json")
    data["joints"][5] = {"name": "gripper", "unit": "normalized", "lower": -1.0, "upper": 1.0}
    data["action"]["dims"][5] = {
        "name": "gripper",
        "kind": "absolute",
        "low": -1.0,
        "high": 1.0,
        "max_step_change": 0.1,
    }
    data["driver"]["joint_units"]["gripper"] = "range_m100_100"
    cfg = parse_robot_config(data)
    out = to_lerobot(np.array([0, 0, 0, 0, 0, 0.5]), cfg)
    assert out["gripper.pos"] == pytest.approx(50.0)
    assert from_lerobot({**out, "gripper.pos": -100.0}, cfg)[5] == pytest.approx(-1.0)


def test_unconvertible_units_are_refused_naming_the_joint():
    data = REAL.model_dump(mode="json")
    data["driver"]["joint_units"]["elbow_flex"] = "range_m100_100"  # needs calibration data to convert
    with pytest.raises(UnitConversionError, match="joint 'elbow_flex' is in 'rad'"):
        check_convertible(parse_robot_config(data))
    with pytest.raises(UnitConversionError, match="no lerobot driver"):
        check_convertible(SIM)


def test_leader_arm_reading_becomes_a_joint_position_action():
    reading = to_lerobot(np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.9]), REAL)
    np.testing.assert_allclose(leader_action(reading, REAL), [0.1, 0.2, 0.3, 0.4, 0.5, 0.9])
    with pytest.raises(TeleopDeviceError, match="joint positions"):
        leader_action(reading, SIM)


def test_gamepad_reading_becomes_an_ee_delta_action():
    assert gamepad_action(
        {"delta_x": 1.0, "delta_y": -0.5, "delta_z": 0.0, "gripper": GAMEPAD_CLOSE}, SIM, None
    ).tolist() == [1.0, -0.5, 0.0, 0.0]
    assert gamepad_action({"gripper": GAMEPAD_OPEN}, SIM, None)[3] == 1.0
    assert gamepad_action({"gripper": GAMEPAD_STAY}, SIM, np.array([0, 0, 0, 0.3]))[3] == pytest.approx(0.3)
    with pytest.raises(TeleopDeviceError, match="end-effector"):
        gamepad_action({}, REAL, None)


def test_keyboard_mapping_ee_and_joint_space():
    keys = KeyboardMapping(SIM)
    np.testing.assert_allclose(keys.action(["w", "w", "d", "r"], None, None), [2.0, -1.0, 1.0, 1.0])
    np.testing.assert_allclose(
        keys.action([" "], None, None), [0.0, 0.0, 0.0, 0.0]
    )  # space toggles the gripper
    joints = KeyboardMapping(REAL)
    assert joints.action(["w"], None, None) is None  # never invents a pose before knowing the arm's
    state = np.zeros(6)
    np.testing.assert_allclose(joints.action(["2", "w", "w"], state, None), [0, 0.1, 0, 0, 0, 0])


def test_device_resolution():
    assert resolve_device("auto", SIM) == "scripted"
    assert resolve_device("auto", REAL) == "keyboard"
    with pytest.raises(TeleopDeviceError, match="has none"):
        resolve_device("scripted", REAL)
    with pytest.raises(TeleopDeviceError, match="unknown teleop device"):
        resolve_device("joystick", SIM)


def test_bridge_builds_lerobots_own_robot_config():
    from wmpo_ros.lerobot_bridge_node import lerobot_robot_config

    cfg = lerobot_robot_config(REAL)
    assert type(cfg).__name__ == "SOFollowerRobotConfig"  # LeRobot registers it for so100 and so101 alike
    assert (cfg.port, cfg.id, cfg.use_degrees) == ("/dev/ttyACM0", "my_follower", True)
    assert cfg.cameras["front"].width == 640 and cfg.cameras["front"].fps == 30
