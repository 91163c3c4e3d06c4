"""Robot config schema: one YAML per arm, validated with pydantic.

Everything that differs between arms lives here (joint order and limits, action space, cameras,
topics, the driver), so nodes, the store and the learner never hard-code an arm. Joint order is
the order of `joints:`; it is never taken from the order of a JointState message.
"""

from __future__ import annotations

import json
import os
import re
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    model_serializer,
    model_validator,
)

from wmpo_core.durable import tagged_sha256

_IDENT = r"^[a-z][a-z0-9_]*$"
_TOPIC = r"^/?[A-Za-z][A-Za-z0-9_/]*$"
_IMPORT_PATH = r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_.]*$"


class RobotConfigError(ValueError):
    """A robot config that cannot be used; the message names the file and each bad field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class JointSpec(_Strict):
    name: Annotated[str, Field(pattern=_IDENT)]
    unit: Literal["rad", "deg", "m", "normalized"]
    lower: float
    upper: float

    @model_validator(mode="after")
    def _ordered(self) -> JointSpec:
        if not self.lower < self.upper:
            raise ValueError(f"lower ({self.lower}) must be below upper ({self.upper})")
        return self


class ActionDim(_Strict):
    """One dimension of the commanded action.

    `absolute` dims are setpoints (joint positions, gripper opening): clamped to [low, high] and
    rate-limited to `max_step_change` against the previous command. `delta` dims are increments
    (end-effector motion, or a gripper commanded by opening increments): clamped to [low, high] and
    to +-`max_step_change`; holding means 0, i.e. no motion (a held object stays held). The config
    bounds each increment, not the position it adds up to: the arm's driver (or the sim env) must
    keep that within its range, as `wmpo_core.sim_tasks.DeltaGripperWrapper` does.
    """

    name: Annotated[str, Field(pattern=_IDENT)]
    kind: Literal["absolute", "delta"]
    low: float
    high: float
    max_step_change: Annotated[float, Field(gt=0)]

    @model_validator(mode="after")
    def _ordered(self) -> ActionDim:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        return self


class ActionSpec(_Strict):
    space: Literal["joint_position", "ee_delta_gripper"]
    dims: Annotated[list[ActionDim], Field(min_length=1)]

    @model_validator(mode="after")
    def _consistent(self) -> ActionSpec:
        names = [d.name for d in self.dims]
        if len(set(names)) != len(names):
            raise ValueError(f"action dim names must be unique, got {names}")
        kinds = [d.kind for d in self.dims]
        if self.space == "joint_position" and set(kinds) != {"absolute"}:
            raise ValueError("a joint_position action space has only 'absolute' dims")
        if self.space == "ee_delta_gripper" and (len(kinds) < 2 or set(kinds[:-1]) != {"delta"}):
            raise ValueError(
                "an ee_delta_gripper action space is end-effector 'delta' dims then one gripper dim "
                "('absolute' opening or 'delta' opening increment)"
            )
        return self

    @property
    def dim(self) -> int:
        return len(self.dims)

    @property
    def names(self) -> list[str]:
        return [d.name for d in self.dims]


class CameraSpec(_Strict):
    name: Annotated[str, Field(pattern=_IDENT)]
    topic: Annotated[str, Field(pattern=_TOPIC)]
    width: Annotated[int, Field(gt=0, le=8192)]
    height: Annotated[int, Field(gt=0, le=8192)]
    encoding: Literal["rgb8", "bgr8", "mono8"] = "rgb8"
    qos: Literal["sensor_data", "reliable"] = "sensor_data"
    qos_depth: Annotated[int, Field(ge=1, le=100)] = 5

    @property
    def channels(self) -> int:
        return 1 if self.encoding == "mono8" else 3

    @property
    def shape(self) -> tuple[int, int, int]:
        """Shape of one stored frame (H, W, C); frames are stored RGB (or mono)."""
        return (self.height, self.width, self.channels)


class TopicsSpec(_Strict):
    joint_states: Annotated[str, Field(pattern=_TOPIC)]
    command: Annotated[str, Field(pattern=_TOPIC)]
    command_type: Literal["Float64MultiArray", "JointTrajectory"] = "Float64MultiArray"
    instruction: Annotated[str, Field(pattern=_TOPIC)]


class WrapperSpec(_Strict):
    """A gymnasium wrapper applied to the env: `wrapper(env, **kwargs)`."""

    wrapper: Annotated[str, Field(pattern=_IMPORT_PATH)]
    """'module:Class', e.g. 'gymnasium.wrappers:TimeAwareObservation'."""
    kwargs: dict[str, Any] = {}


_ADDED_LATER: dict[str, Any] = {"wrappers": [], "render_camera": None}
"""GymSimDriver fields (and their defaults) that did not exist when the first configs were hashed."""


class GymSimDriver(_Strict):
    """Any gymnasium env with images (in the observation or from `render()`) and a Box action space."""

    kind: Literal["gym_sim"]
    env_id: str
    env_kwargs: dict[str, Any] = {}
    wrappers: list[WrapperSpec] = []
    """Applied in order around the env made from `env_id`; the action space checked is the outermost."""
    image_keys: dict[str, str] = {}
    """camera name -> '/'-separated path of its image in the observation dict, e.g. 'pixels/front'."""
    render_camera: Annotated[str, Field(pattern=_IDENT)] | None = None
    """The camera whose frames come from `env.render()` (the env is made with render_mode='rgb_array'
    unless env_kwargs names one), for envs whose pixels are not in the observation."""
    state_key: str | None = None
    """'/'-separated path of the state vector in the observation dict; None: the observation is it."""
    state_indices: list[int] | None = None
    """Indices into the observation's state vector giving the config joints, in config order."""
    success_key: str = "succeed"
    """Key of the env's `info` dict holding the per-step success flag."""
    scripted_expert: str | None = None
    """'module:Class' of a scripted expert (`reset()`, `act(env) -> action`) that stands in for a
    human teleoperator in simulation."""
    mujoco_shadows: bool = False
    """MuJoCo envs only: shadow casting makes CPU (OSMesa) rendering ~4x slower."""
    mujoco_multisample: bool = False
    """MuJoCo envs only: the model's offscreen multisampling (costs ~2x on a CPU, softens edges)."""
    mujoco_mesh_cell_m: Annotated[float, Field(gt=0)] | None = None
    """MuJoCo envs only: draw meshes simplified on a grid of this size (m); physics unchanged.
    0.003 renders the SO-101 ~6x faster with no visible change at 128 px (wmpo_core/mujoco_render.py)."""

    @model_serializer(mode="wrap")
    def _stable_dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Leave out fields added after configs were first hashed while they hold their defaults, so
        `RobotConfig.content_hash` (stamped into stores and checkpoints) of an existing config stays."""
        data = handler(self)
        for name, default in _ADDED_LATER.items():
            if data.get(name) == default:
                del data[name]
        return data


class LeRobotDriver(_Strict):
    """A real arm driven through LeRobot's Robot API (e.g. so101_follower)."""

    kind: Literal["lerobot"]
    robot_type: str
    port: str
    robot_id: str | None = None
    robot_kwargs: dict[str, Any] = {}
    joint_keys: Annotated[dict[str, str], Field(min_length=1)]
    """config joint name -> LeRobot observation/action key, e.g. 'shoulder_pan.pos'."""
    joint_units: dict[str, Literal["deg", "rad", "m", "range_0_100", "range_m100_100"]]
    """Units LeRobot uses for each config joint; converted explicitly to the config's units."""
    cameras: dict[str, dict[str, Any]] = {}
    """config camera name -> LeRobot camera config (type, index_or_path, fps, width, height)."""


class Ros2ControlDriver(_Strict):
    """An arm already driven by ros2_control; the policy node publishes to its controller."""

    kind: Literal["ros2_control"]
    controller: Annotated[str, Field(pattern=_IDENT)]
    trajectory_point_time_s: Annotated[float, Field(gt=0)] = 0.1
    """JointTrajectory only: time_from_start of the single point sent each tick."""


Driver = Annotated[GymSimDriver | LeRobotDriver | Ros2ControlDriver, Field(discriminator="kind")]


class RobotConfig(_Strict):
    name: Annotated[str, Field(pattern=_IDENT)]
    description: str = ""
    robot_type: str
    """LeRobot robot type, written into exported datasets (e.g. 'so101_follower')."""
    control_rate_hz: Annotated[float, Field(gt=0, le=1000)]
    episode_time_limit_s: Annotated[float, Field(gt=0)]
    joints: Annotated[list[JointSpec], Field(min_length=1)]
    action: ActionSpec
    cameras: Annotated[list[CameraSpec], Field(min_length=1)]
    topics: TopicsSpec
    driver: Driver
    tasks: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)]

    @model_validator(mode="after")
    def _consistent(self) -> RobotConfig:
        joint_names = [j.name for j in self.joints]
        if len(set(joint_names)) != len(joint_names):
            raise ValueError(f"joint names must be unique, got {joint_names}")
        cam_names = [c.name for c in self.cameras]
        if len(set(cam_names)) != len(cam_names):
            raise ValueError(f"camera names must be unique, got {cam_names}")
        if self.action.space == "joint_position":
            if self.action.names != joint_names:
                raise ValueError(
                    f"a joint_position action commands the joints in order: action dims {self.action.names} "
                    f"must equal joints {joint_names}"
                )
            for joint, dim in zip(self.joints, self.action.dims, strict=True):
                if dim.low < joint.lower or dim.high > joint.upper:
                    raise ValueError(
                        f"action dim '{dim.name}' range [{dim.low}, {dim.high}] exceeds the joint's limits "
                        f"[{joint.lower}, {joint.upper}]"
                    )
        d = self.driver
        if isinstance(d, GymSimDriver):
            sources = sorted(d.image_keys) + ([d.render_camera] if d.render_camera else [])
            if sorted(sources) != sorted(cam_names) or len(set(sources)) != len(sources):
                raise ValueError(
                    f"driver.image_keys must name exactly the cameras {cam_names} (with "
                    f"driver.render_camera, each once), got image_keys {sorted(d.image_keys)} and "
                    f"render_camera {d.render_camera!r}"
                )
            if d.state_indices is not None and len(d.state_indices) != len(joint_names):
                raise ValueError(
                    f"driver.state_indices has {len(d.state_indices)} entries for {len(joint_names)} joints"
                )
        elif isinstance(d, LeRobotDriver):
            if set(d.joint_keys) != set(joint_names) or set(d.joint_units) != set(joint_names):
                raise ValueError(
                    f"driver.joint_keys and driver.joint_units must name exactly the joints {joint_names}"
                )
            if set(d.cameras) != set(cam_names):
                raise ValueError(
                    f"driver.cameras must name exactly the cameras {cam_names}, got {sorted(d.cameras)}"
                )
        elif isinstance(d, Ros2ControlDriver):
            if self.action.space != "joint_position":
                raise ValueError("a ros2_control arm takes a joint_position action space")
            expected = {
                "JointTrajectory": f"/{d.controller}/joint_trajectory",
                "Float64MultiArray": f"/{d.controller}/commands",
            }[self.topics.command_type]
            if self.topics.command != expected:
                raise ValueError(
                    f"topics.command must be the controller's topic '{expected}' for a "
                    f"{self.topics.command_type} command, got '{self.topics.command}'"
                )
        return self

    @property
    def joint_names(self) -> list[str]:
        return [j.name for j in self.joints]

    @property
    def camera_names(self) -> list[str]:
        return [c.name for c in self.cameras]

    def camera(self, name: str) -> CameraSpec:
        for cam in self.cameras:
            if cam.name == name:
                return cam
        raise KeyError(f"robot config '{self.name}' has no camera '{name}' (cameras: {self.camera_names})")

    @property
    def control_period_s(self) -> float:
        return 1.0 / self.control_rate_hz

    @property
    def max_episode_steps(self) -> int:
        return round(self.episode_time_limit_s * self.control_rate_hz)

    def canonical_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

    @property
    def content_hash(self) -> str:
        """sha256 of the validated content; stamped into every episode recorded with this config."""
        return tagged_sha256(self.canonical_json().encode())


def _format_errors(source: str, exc: ValidationError) -> str:
    lines = [f"{source}: invalid robot config"]
    for err in exc.errors():
        loc = ""
        for part in err["loc"]:
            if isinstance(part, int):
                loc += f"[{part}]"
            elif part not in ("gym_sim", "lerobot", "ros2_control") or not loc.endswith("driver"):
                loc += ("." if loc else "") + str(part)
        got = err.get("input")
        got_text = (
            "" if err["type"] in ("missing", "value_error") or isinstance(got, dict) else f" (got {got!r})"
        )
        lines.append(f"  - {loc or '<top level>'}: {err['msg']}{got_text}")
    return "\n".join(lines)


def parse_robot_config(data: Any, source: str = "<robot config>") -> RobotConfig:
    """Validate an already-loaded mapping; errors name `source`, each field and what is allowed."""
    if not isinstance(data, dict):
        raise RobotConfigError(f"{source}: a robot config is a YAML mapping, got {type(data).__name__}")
    try:
        return RobotConfig.model_validate(data)
    except ValidationError as exc:
        raise RobotConfigError(_format_errors(source, exc)) from None


SHIPPED_CONFIGS = Path(str(resources.files("wmpo_core").joinpath("robot_configs")))
"""The configs shipped as package data of wmpo_core (pip and colcon installs alike); the
repository's top-level robot_configs/ is a symlink to this directory."""


def config_search_path() -> list[Path]:
    """Where config names are looked up: $WMPO_ROBOT_CONFIG_PATH, then the shipped configs."""
    paths = [Path(p) for p in os.environ.get("WMPO_ROBOT_CONFIG_PATH", "").split(os.pathsep) if p]
    paths.append(SHIPPED_CONFIGS)
    return [p for p in paths if p.is_dir()]


def resolve_robot_config_path(name_or_path: str | os.PathLike[str]) -> Path:
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") or candidate.is_file():
        if not candidate.is_file():
            raise RobotConfigError(f"{candidate}: robot config file not found")
        return candidate
    if not re.match(_IDENT, str(name_or_path)):
        raise RobotConfigError(f"'{name_or_path}' is neither a robot config file nor a config name")
    search = config_search_path()
    for directory in search:
        path = directory / f"{name_or_path}.yaml"
        if path.is_file():
            return path
    available = sorted({p.stem for d in search for p in d.glob("*.yaml")})
    raise RobotConfigError(
        f"no robot config named '{name_or_path}' (looked in {[str(d) for d in search]}); "
        f"available: {available}"
    )


def load_robot_config(name_or_path: str | os.PathLike[str]) -> RobotConfig:
    """Load and validate a robot config by name (e.g. 'so101_sim') or YAML path."""
    path = resolve_robot_config_path(name_or_path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise RobotConfigError(f"{path}: not valid YAML: {exc}") from None
    config = parse_robot_config(data, source=str(path))
    if config.name != path.stem:
        raise RobotConfigError(
            f"{path}: field 'name' is '{config.name}' but must match the file name '{path.stem}'"
        )
    return config
