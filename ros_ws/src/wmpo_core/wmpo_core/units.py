"""Unit conversion between LeRobot's joint conventions and a robot config's units.

LeRobot's SO-arm drivers and datasets report arm joints in degrees and the gripper in 0..100;
ROS and our robot configs use radians and a normalized gripper. Every conversion goes through
these two functions (the LeRobot bridge node and the LeRobotDataset import/export both use them),
in config joint order, so a unit or ordering mistake cannot hide in one path only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from wmpo_core.robot_config import LeRobotDriver, RobotConfig

# LeRobot unit -> (scale, offset) such that config_value = lerobot_value * scale + offset,
# for each config unit it may be paired with.
_TO_CONFIG: dict[tuple[str, str], tuple[float, float]] = {
    ("deg", "rad"): (math.pi / 180.0, 0.0),
    ("deg", "deg"): (1.0, 0.0),
    ("rad", "rad"): (1.0, 0.0),
    ("rad", "deg"): (180.0 / math.pi, 0.0),
    ("m", "m"): (1.0, 0.0),
    ("range_0_100", "normalized"): (0.01, 0.0),
    ("range_m100_100", "normalized"): (0.01, 0.0),
}


def _factors(config: RobotConfig) -> tuple[list[str], np.ndarray, np.ndarray]:
    driver = config.driver
    if not isinstance(driver, LeRobotDriver):
        raise ValueError(f"robot config '{config.name}' has no LeRobot driver section; its units need no conversion")
    keys, scales, offsets = [], [], []
    for joint in config.joints:
        lerobot_unit = driver.joint_units[joint.name]
        try:
            scale, offset = _TO_CONFIG[(lerobot_unit, joint.unit)]
        except KeyError:
            raise ValueError(
                f"robot config '{config.name}': cannot convert joint '{joint.name}' from LeRobot unit "
                f"'{lerobot_unit}' to '{joint.unit}'"
            ) from None
        keys.append(driver.joint_keys[joint.name])
        scales.append(scale)
        offsets.append(offset)
    return keys, np.asarray(scales), np.asarray(offsets)


def lerobot_to_config(config: RobotConfig, values: Mapping[str, float]) -> np.ndarray:
    """LeRobot observation/action dict (e.g. {'shoulder_pan.pos': 12.0}) -> config-order vector."""
    keys, scales, offsets = _factors(config)
    missing = [k for k in keys if k not in values]
    if missing:
        raise KeyError(f"LeRobot values lack {missing} (robot config '{config.name}' maps its joints to {keys})")
    raw = np.asarray([float(values[k]) for k in keys], dtype=np.float64)
    return raw * scales + offsets


def config_to_lerobot(config: RobotConfig, vector: np.ndarray) -> dict[str, float]:
    """Config-order vector in config units -> LeRobot action dict in LeRobot units."""
    keys, scales, offsets = _factors(config)
    vector = np.asarray(vector, dtype=np.float64).reshape(-1)
    if vector.shape[0] != len(keys):
        raise ValueError(f"expected {len(keys)} joint values for robot config '{config.name}', got {vector.shape[0]}")
    return {k: float(v) for k, v in zip(keys, (vector - offsets) / scales, strict=True)}


def lerobot_vector_to_config(config: RobotConfig, vector: np.ndarray) -> np.ndarray:
    """A LeRobot-unit vector already in config joint order (e.g. a dataset row) -> config units."""
    _, scales, offsets = _factors(config)
    return np.asarray(vector, dtype=np.float64) * scales + offsets


def config_vector_to_lerobot(config: RobotConfig, vector: np.ndarray) -> np.ndarray:
    """Config-unit vector in config joint order -> LeRobot units, same order."""
    _, scales, offsets = _factors(config)
    return (np.asarray(vector, dtype=np.float64) - offsets) / scales
