"""Explicit unit and joint-order conversion between a robot config and LeRobot.

LeRobot arms and their datasets speak in dicts keyed like 'shoulder_pan.pos', with arm joints in
degrees (or -100..100) and grippers in 0..100; our configs list joints in a fixed order in ROS
units (radians, normalized gripper). The LeRobot bridge node (robot side) and the LeRobot policy
backend (policies trained on LeRobot datasets) both convert through these two functions, so the
conversion is written, and tested, once.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from wmpo_core.robot_config import JointSpec, LeRobotDriver, RobotConfig

# (config unit, LeRobot unit) pairs that convert without calibration data.
_SUPPORTED = {
    ("rad", "rad"),
    ("rad", "deg"),
    ("deg", "deg"),
    ("deg", "rad"),
    ("m", "m"),
    ("normalized", "range_0_100"),
    ("normalized", "range_m100_100"),
}


class UnitConversionError(ValueError):
    """A config/LeRobot unit pair that cannot be converted; the message names the joint."""


def check_convertible(config: RobotConfig) -> LeRobotDriver:
    """Raise if any joint's config unit cannot be converted to its LeRobot unit."""
    driver = config.driver
    if not isinstance(driver, LeRobotDriver):
        raise UnitConversionError(
            f"robot config '{config.name}' has no lerobot driver section (driver.kind={driver.kind})"
        )
    for joint in config.joints:
        pair = (joint.unit, driver.joint_units[joint.name])
        if pair not in _SUPPORTED:
            raise UnitConversionError(
                f"robot config '{config.name}': joint '{joint.name}' is in '{pair[0]}' but LeRobot reports "
                f"'{pair[1]}'; supported pairs: {sorted(_SUPPORTED)}"
            )
    return driver


def _to_lerobot(value: float, joint: JointSpec, unit: str) -> float:
    if joint.unit == unit or (joint.unit, unit) == ("m", "m"):
        return value
    if (joint.unit, unit) == ("rad", "deg"):
        return math.degrees(value)
    if (joint.unit, unit) == ("deg", "rad"):
        return math.radians(value)
    fraction = (value - joint.lower) / (joint.upper - joint.lower)  # normalized joint: 0 at lower, 1 at upper
    return 100.0 * fraction if unit == "range_0_100" else 200.0 * fraction - 100.0


def _from_lerobot(value: float, joint: JointSpec, unit: str) -> float:
    if joint.unit == unit or (joint.unit, unit) == ("m", "m"):
        return value
    if (joint.unit, unit) == ("rad", "deg"):
        return math.radians(value)
    if (joint.unit, unit) == ("deg", "rad"):
        return math.degrees(value)
    fraction = value / 100.0 if unit == "range_0_100" else (value + 100.0) / 200.0
    return joint.lower + fraction * (joint.upper - joint.lower)


def to_lerobot(values: np.ndarray, config: RobotConfig) -> dict[str, float]:
    """Joint values in config order and units -> LeRobot dict ('shoulder_pan.pos': degrees, ...)."""
    driver = check_convertible(config)
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if values.shape != (len(config.joints),):
        raise ValueError(
            f"expected {len(config.joints)} joint values in order {config.joint_names}, got {values.shape[0]}"
        )
    return {
        driver.joint_keys[j.name]: _to_lerobot(float(v), j, driver.joint_units[j.name])
        for j, v in zip(config.joints, values, strict=True)
    }


def from_lerobot(values: Mapping[str, float], config: RobotConfig) -> np.ndarray:
    """LeRobot dict -> joint values in config order and units. Extra keys (cameras) are ignored."""
    driver = check_convertible(config)
    missing = [driver.joint_keys[j.name] for j in config.joints if driver.joint_keys[j.name] not in values]
    if missing:
        raise KeyError(
            f"LeRobot values lack {missing} (robot config '{config.name}' maps joints {driver.joint_keys})"
        )
    return np.array(
        [
            _from_lerobot(float(values[driver.joint_keys[j.name]]), j, driver.joint_units[j.name])
            for j in config.joints
        ],
        dtype=np.float64,
    )


def vector_to_lerobot(values: np.ndarray, config: RobotConfig) -> np.ndarray:
    """Like `to_lerobot` but as a vector in config joint order (a LeRobot dataset's state/action order)."""
    converted = to_lerobot(values, config)
    driver = check_convertible(config)
    return np.array([converted[driver.joint_keys[j.name]] for j in config.joints], dtype=np.float64)


def vector_from_lerobot(values: np.ndarray, config: RobotConfig) -> np.ndarray:
    """Inverse of `vector_to_lerobot`."""
    driver = check_convertible(config)
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if values.shape != (len(config.joints),):
        raise ValueError(
            f"expected {len(config.joints)} values in order {config.joint_names}, got {values.shape[0]}"
        )
    return from_lerobot(
        {driver.joint_keys[j.name]: float(v) for j, v in zip(config.joints, values, strict=True)}, config
    )
