"""Teleoperation devices, each mapped to the robot config's action space.

- `so101_leader`: a LeRobot leader arm through LeRobot's `Teleoperator` API; its joint readings
  (degrees, gripper 0..100) are converted to the config's joint order and units.
- `gamepad`: LeRobot's `GamepadTeleop` (needs pygame or hidapi, which LeRobot imports lazily;
  neither is a dependency of this project: `pip install pygame` on the teleop machine).
- `keyboard`: keys read from the terminal. Hand-written because LeRobot's keyboard teleoperator
  needs pynput and an X display, which a robot reached over SSH usually lacks.
- `scripted` (sim only) is not here: the teleop node relays the simulator's expert suggestion.

The mappings from device readings to actions are pure functions, unit-tested without hardware.
"""

from __future__ import annotations

import os
import select
import sys
import termios
import threading
import tty
from abc import ABC, abstractmethod
from collections.abc import Mapping

import numpy as np
from wmpo_core.lerobot_units import check_convertible, from_lerobot
from wmpo_core.robot_config import RobotConfig

DEVICES = ("scripted", "keyboard", "gamepad", "so101_leader")


class TeleopDeviceError(RuntimeError):
    """A device that cannot be used with this robot or on this machine; the message says why."""


class TeleopDevice(ABC):
    """A device polled once per control tick."""

    @abstractmethod
    def connect(self) -> None: ...

    @abstractmethod
    def action(self, state: np.ndarray | None, last_command: np.ndarray | None) -> np.ndarray | None:
        """The commanded action now (config units), or None when the device has nothing to send."""

    def disconnect(self) -> None:  # noqa: B027 (an optional hook: most devices hold nothing to release)
        """Release the device."""


# ------------------------------------------------------------------------------------- keyboard

KEYBOARD_HELP = {
    "ee_delta_gripper": "w/s: +x/-x  a/d: +y/-y  r/f: up/down  space: open/close gripper",
    "joint_position": "1-9: select joint  w/s: move it +/-  space: jump gripper (last joint) to open/closed",
}
_EE_KEYS = {"w": (0, 1.0), "s": (0, -1.0), "a": (1, 1.0), "d": (1, -1.0), "r": (2, 1.0), "f": (2, -1.0)}


class KeyboardMapping:
    """Key presses since the last tick -> an action (pure)."""

    def __init__(self, config: RobotConfig):
        self.config = config
        self.selected_joint = 0
        dims = config.action.dims
        self._gripper_open = dims[-1].high
        self.gripper = dims[-1].high

    def action(
        self, keys: list[str], state: np.ndarray | None, last_command: np.ndarray | None
    ) -> np.ndarray | None:
        dims = self.config.action.dims
        if self.config.action.space == "ee_delta_gripper":
            action = np.zeros(len(dims))
            for key in keys:
                if key in _EE_KEYS:
                    index, sign = _EE_KEYS[key]
                    action[index] += sign * dims[index].max_step_change
                elif key == " ":
                    self.gripper = dims[-1].low if self.gripper == dims[-1].high else dims[-1].high
            action[-1] = self.gripper
            return action
        base = last_command if last_command is not None else state
        if base is None:
            return None  # joint_position: never invent a pose before knowing where the arm is
        action = np.array(base, dtype=np.float64)
        for key in keys:
            if key.isdigit() and 1 <= int(key) <= len(dims):
                self.selected_joint = int(key) - 1
            elif key in ("w", "s"):
                dim = dims[self.selected_joint]
                action[self.selected_joint] += dim.max_step_change if key == "w" else -dim.max_step_change
            elif key == " ":
                closed = abs(action[-1] - dims[-1].low) < abs(action[-1] - dims[-1].high)
                action[-1] = dims[-1].high if closed else dims[-1].low
        return action


class KeyboardDevice(TeleopDevice):
    """Reads single key presses from the controlling terminal (cbreak mode) on a thread."""

    def __init__(self, config: RobotConfig):
        self.mapping = KeyboardMapping(config)
        self._keys: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._saved: list | None = None

    def connect(self) -> None:
        if not sys.stdin.isatty():
            raise TeleopDeviceError("the keyboard device reads the terminal, but stdin is not a terminal")
        self._fd = sys.stdin.fileno()
        self._saved = termios.tcgetattr(self._fd)
        tty.setcbreak(self._fd)
        threading.Thread(target=self._read, name="keyboard", daemon=True).start()
        print(f"keyboard teleop: {KEYBOARD_HELP[self.mapping.config.action.space]}", file=sys.stderr)

    def _read(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self._fd], [], [], 0.1)
            if ready:
                char = os.read(self._fd, 1).decode(errors="ignore").lower()
                with self._lock:
                    self._keys.append(char)

    def action(self, state: np.ndarray | None, last_command: np.ndarray | None) -> np.ndarray | None:
        with self._lock:
            keys, self._keys = self._keys, []
        return self.mapping.action(keys, state, last_command)

    def disconnect(self) -> None:
        self._stop.set()
        if self._saved is not None:
            termios.tcsetattr(self._fd, termios.TCSADRAIN, self._saved)
            self._saved = None


# -------------------------------------------------------------------------------------- gamepad

# LeRobot's GamepadTeleop gripper codes.
GAMEPAD_CLOSE, GAMEPAD_STAY, GAMEPAD_OPEN = 0, 1, 2


def gamepad_action(
    values: Mapping[str, float], config: RobotConfig, last_command: np.ndarray | None
) -> np.ndarray:
    """LeRobot gamepad reading (delta_x/y/z in [-1, 1], gripper close/stay/open) -> action."""
    if config.action.space != "ee_delta_gripper":
        raise TeleopDeviceError(
            f"the gamepad commands end-effector motion; robot config '{config.name}' takes "
            f"{config.action.space}"
        )
    dims = config.action.dims
    deltas = [
        float(values.get(k, 0.0)) * d.max_step_change
        for k, d in zip(("delta_x", "delta_y", "delta_z"), dims[:3], strict=False)
    ]
    code = int(values.get("gripper", GAMEPAD_STAY))
    if code == GAMEPAD_OPEN:
        gripper = dims[-1].high
    elif code == GAMEPAD_CLOSE:
        gripper = dims[-1].low
    elif dims[-1].kind == "delta":
        gripper = 0.0  # a delta gripper stays where it is
    else:
        gripper = float(last_command[-1]) if last_command is not None else dims[-1].high
    return np.array([*deltas, *np.zeros(len(dims) - 1 - len(deltas)), gripper], dtype=np.float64)


class GamepadDevice(TeleopDevice):
    def __init__(self, config: RobotConfig):
        self.config = config
        gamepad_action({}, config, None)  # fails early on a joint-position robot

    def connect(self) -> None:
        from lerobot.utils.import_utils import _hidapi_available, _pygame_available

        if not (_pygame_available or _hidapi_available):
            raise TeleopDeviceError("LeRobot's gamepad support needs pygame (or hidapi): pip install pygame")
        from lerobot.teleoperators.gamepad.configuration_gamepad import GamepadTeleopConfig
        from lerobot.teleoperators.gamepad.teleop_gamepad import GamepadTeleop

        self._gamepad = GamepadTeleop(
            GamepadTeleopConfig(use_gripper=True, hidapi_fallback=not _pygame_available)
        )
        self._gamepad.connect()

    def action(self, state: np.ndarray | None, last_command: np.ndarray | None) -> np.ndarray | None:
        return gamepad_action(self._gamepad.get_action(), self.config, last_command)

    def disconnect(self) -> None:
        if getattr(self, "_gamepad", None) is not None:
            self._gamepad.disconnect()


# ----------------------------------------------------------------------------------- leader arm


def leader_action(values: Mapping[str, float], config: RobotConfig) -> np.ndarray:
    """LeRobot leader-arm reading ('shoulder_pan.pos': degrees, ...) -> joint-position action."""
    if config.action.space != "joint_position":
        raise TeleopDeviceError(
            f"a leader arm commands joint positions; robot config '{config.name}' takes {config.action.space}"
        )
    return from_lerobot(values, config)


class LeaderArmDevice(TeleopDevice):
    def __init__(self, config: RobotConfig, port: str, device_id: str):
        if config.action.space != "joint_position":
            raise TeleopDeviceError(
                f"a leader arm commands joint positions; robot config '{config.name}' takes "
                f"{config.action.space}"
            )
        check_convertible(config)  # the leader speaks the follower's LeRobot units
        if not port:
            raise TeleopDeviceError("so101_leader needs device_port (e.g. /dev/ttyACM1)")
        self.config, self._port, self._id = config, port, device_id or None

    def connect(self) -> None:
        from lerobot.teleoperators.so_leader import SO101Leader, SO101LeaderConfig

        self._leader = SO101Leader(SO101LeaderConfig(port=self._port, id=self._id, use_degrees=True))
        self._leader.connect()

    def action(self, state: np.ndarray | None, last_command: np.ndarray | None) -> np.ndarray | None:
        return leader_action(self._leader.get_action(), self.config)

    def disconnect(self) -> None:
        if getattr(self, "_leader", None) is not None:
            self._leader.disconnect()


def resolve_device(device: str, config: RobotConfig) -> str:
    """'auto' -> 'scripted' in a simulation with a scripted expert, else 'keyboard'."""
    if device == "auto":
        driver = config.driver
        return "scripted" if getattr(driver, "scripted_expert", None) else "keyboard"
    if device not in DEVICES:
        raise TeleopDeviceError(f"unknown teleop device '{device}' (choose from auto, {', '.join(DEVICES)})")
    if device == "scripted" and not getattr(config.driver, "scripted_expert", None):
        raise TeleopDeviceError(
            f"device 'scripted' relays the simulator's expert; robot config '{config.name}' has none"
        )
    return device


def make_device(device: str, config: RobotConfig, port: str = "", device_id: str = "") -> TeleopDevice:
    if device == "keyboard":
        return KeyboardDevice(config)
    if device == "gamepad":
        return GamepadDevice(config)
    if device == "so101_leader":
        return LeaderArmDevice(config, port, device_id)
    raise TeleopDeviceError(f"'{device}' is not a polled device")
