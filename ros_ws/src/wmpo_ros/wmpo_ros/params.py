"""Every node's ROS parameters, defined once: name, default, meaning.

Nodes declare their parameters from here, the launch files take their argument defaults from
here, and `wmpo robot|teleop|deploy` passes values by these names, so the three can never
disagree. `tests/test_launch_files.py` checks that every parameter a launch file sets is one
of these.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node

ParamValue = bool | int | float | str


@dataclass(frozen=True)
class Param:
    name: str
    default: ParamValue
    description: str

    @property
    def type(self) -> type:
        return type(self.default)

    @property
    def launch_default(self) -> str:
        """The default as a launch-argument string (bools as true/false)."""
        return str(self.default).lower() if isinstance(self.default, bool) else str(self.default)

    def parse(self, text: str | ParamValue) -> ParamValue:
        """Convert a launch-argument / command-line string to this parameter's type."""
        if not isinstance(text, str) or self.type is str:
            value = text
        elif self.type is bool:
            lowered = text.strip().lower()
            if lowered not in ("true", "false", "1", "0"):
                raise ValueError(f"parameter '{self.name}' is a bool: true or false, got '{text}'")
            value = lowered in ("true", "1")
        else:
            try:
                value = self.type(text)
            except ValueError:
                raise ValueError(f"parameter '{self.name}' is {self.type.__name__}, got '{text}'") from None
        if self.type is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if type(value) is not self.type:
            raise ValueError(f"parameter '{self.name}' is {self.type.__name__}, got {value!r}")
        return value


@dataclass(frozen=True)
class NodeParams:
    executable: str
    """console_scripts entry point of the node (wmpo_ros/setup.py)."""
    node_name: str
    params: tuple[Param, ...]

    def __getitem__(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(f"node '{self.node_name}' has no parameter '{name}' (has {self.names})")

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.params]

    def defaults(self) -> dict[str, ParamValue]:
        return {p.name: p.default for p in self.params}

    def declare(self, node: Node) -> dict[str, Any]:
        """Declare all parameters on `node`; returns their values (overrides applied)."""
        for p in self.params:
            node.declare_parameter(p.name, p.default, ParameterDescriptor(description=p.description))
        return {p.name: node.get_parameter(p.name).value for p in self.params}


ROBOT = Param(
    "robot", "so101_sim", "Robot config name (robot_configs/<name>.yaml) or path to a robot config YAML."
)

SIM_ARM = NodeParams(
    "sim_arm",
    "sim_arm",
    (
        ROBOT,
        Param(
            "seed", 0, "Seed of the first episode; episode k uses seed + k. Setting it restarts the sequence."
        ),
        Param(
            "real_time_factor",
            1.0,
            "Never step faster than this multiple of real time; 0 = as fast as commands arrive (lockstep "
            "only).",
        ),
        Param(
            "lockstep",
            True,
            "Advance one control step per received command, never on a timeout (synchronous simulation, "
            "results "
            "independent of CPU load); false = step on the wall clock at real_time_factor.",
        ),
        Param(
            "stall_warning_s",
            5.0,
            "Lockstep: warn when no command has come for this many wall seconds during an episode (the sim "
            "waits "
            "as long as it takes; simulated time stands still meanwhile).",
        ),
    ),
)

LEROBOT_BRIDGE = NodeParams(
    "lerobot_bridge",
    "lerobot_bridge",
    (
        Param("robot", "so101_real", ROBOT.description),
        Param(
            "calibrate", False, "Run LeRobot's interactive calibration when the arm reports no calibration."
        ),
    ),
)

POLICY = NodeParams(
    "policy_node",
    "policy_node",
    (
        ROBOT,
        Param(
            "policy",
            "",
            "Checkpoint directory or scheme spec (replay:, hold:, scripted:). Setting it at run time loads "
            "and verifies the new policy in the background (outcome on <ns>/policy/loads) and stages it for "
            "swap_at.",
        ),
        Param("refill_threshold", 1, "Request the next chunk when this many actions or fewer remain queued."),
        Param(
            "watchdog_periods",
            2.0,
            "Hold when the newest camera frame or joint state is this many control periods old.",
        ),
        Param(
            "dry_run",
            False,
            "Compute and log actions, publish them on the dry-run topic, never on the command topic.",
        ),
        Param(
            "autostart",
            True,
            "Start the first episode as soon as the node has a policy (else wait for the enable service).",
        ),
        Param(
            "swap_at",
            "episode",
            "When a staged policy takes over: 'episode' (the next episode start, default: every episode runs "
            "one "
            "version) or 'chunk' (the next inference request, mid-episode; the old policy's queued actions "
            "serve "
            "the ticks until the new chunk arrives).",
        ),
    ),
)

RECORDER = NodeParams(
    "recorder",
    "recorder",
    (
        ROBOT,
        Param("store", "data/episodes", "Episode store directory (created if missing)."),
        Param(
            "source",
            "teleop",
            "Who commands the arm: teleop, policy or scripted (stamped into each episode); may change "
            "between episodes.",
        ),
        Param(
            "max_steps", 0, "End an episode after this many steps; 0 = the robot config's episode time limit."
        ),
        Param("end_on_success", True, "End an episode at the first step the simulator reports success."),
        Param(
            "settle_s",
            1.0,
            "Wall seconds to wait for a step's frames before recording it with the newest ones.",
        ),
        Param("autostart", False, "Start recording an episode as soon as the node runs."),
    ),
)

TELEOP = NodeParams(
    "teleop",
    "teleop",
    (
        ROBOT,
        Param(
            "device",
            "auto",
            "scripted (the sim's expert), keyboard, gamepad, so101_leader; auto = scripted in a sim "
            "with a scripted expert, else keyboard.",
        ),
        Param("device_port", "", "Serial port of a leader arm (so101_leader)."),
        Param("device_id", "", "LeRobot id of a leader arm (names its calibration file)."),
        Param(
            "autostart", True, "Relay the device as soon as the node runs (else wait for the enable service)."
        ),
    ),
)

RECORD_KEYS = NodeParams("record_keys", "record_keys", (ROBOT,))

SYNC = NodeParams(
    "sync_node",
    "sync_node",
    (
        ROBOT,
        Param(
            "learner_url", "", "Learner service URL (http://host:port, or https:// off loopback); required."
        ),
        Param(
            "token_file",
            "",
            "File holding the learner's bearer token; empty = the WMPO_LEARNER_TOKEN environment variable.",
        ),
        Param(
            "ca_file",
            "",
            "CA certificate bundle for an https learner with a private CA; empty = the system CAs.",
        ),
        Param(
            "store",
            RECORDER["store"].default,
            "The robot's episode store (the recorder's 'store'): its committed episodes are uploaded.",
        ),
        Param("outbox", "", "Upload queue (SQLite); empty = <store>.outbox.sqlite next to the store."),
        Param(
            "policy_cache",
            "",
            "Directory deployed versions are downloaded to and verified in; empty = <store>.policies.",
        ),
        Param("upload", True, "Upload every committed episode to the learner through the durable outbox."),
        Param(
            "update_policy",
            True,
            "Follow the learner's deployed version: download, verify and stage it in the policy node.",
        ),
        Param(
            "long_poll_s",
            30.0,
            "Length of one long-poll for a new deployment (the learner caps it at its --max-long-poll-s).",
        ),
        Param(
            "stage_timeout_s",
            300.0,
            "Longest wait for the policy node to load and verify a downloaded version.",
        ),
        Param(
            "retry_max_s",
            300.0,
            "Longest wait between retries while the learner is unreachable (backoff from 1 s, doubling).",
        ),
        Param(
            "keep_versions",
            3,
            "Downloaded versions kept in the policy cache (the newest ones); older ones are deleted.",
        ),
    ),
)

NODES: dict[str, NodeParams] = {
    n.executable: n for n in (SIM_ARM, LEROBOT_BRIDGE, POLICY, RECORDER, TELEOP, RECORD_KEYS, SYNC)
}
"""executable -> its parameters."""

BUILTIN_PARAMETERS = ("use_sim_time",)
"""Declared by every rclpy node."""
