"""The default simulated task, SO-101 pick-and-lift, and its scripted expert.

Why this task (measured with lerobot-env-so101 0.4.0, see docs/sim_task.md):
- `SO101PickCube-v0` as registered cannot be solved by its scripted controller: its position-only
  IK never straddles the block, so the env's own success (block lifted 10 cm and held) is never
  reached; the package's "100%" counts "gripper closed near the block", which is not a pick.
- `SO101PickPlace-v0` is solved by its scripted controller, but its goal is not rendered, so a
  policy that sees only the camera cannot know where to place.
- `SO101PickCube-v0` with the top-down IK and jaw pads (both options of the package) *is*
  solvable, and its success signal (lifted 10 cm, still held) is visible in the image. Blocks
  farther than x = 0.32 m are out of reach with the gripper held vertical (the package documents
  this for the pick-place task), so we resample those starts.
The expert below follows the package's own pick-and-place phases and constants (hover, careful
descent, close, lift) and succeeds on every episode we measured.

`DeltaGripperWrapper` and `DeltaGripperLiftExpert` give the same task a gripper commanded by
opening increments: the worked "add a new arm" example of docs/robot_configs.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np
from lerobot_env_so101.mujoco_env import GymRenderingSpec
from lerobot_env_so101.policy import DEFAULT_ACTION_SCALE, ENV_ID
from lerobot_env_so101.scripted import pick_place

LIFT_ENV_ID = "wmpo/SO101Lift-v0"
REACHABLE_X_MAX = 0.32
"""Largest block x (m) the top-down grasp reaches reliably."""
FULL_BLOCK_REGION = (0.2, REACHABLE_X_MAX, -0.1, 0.1)
"""[x_min, x_max, y_min, y_max] (m): the package's sampling box, cut at the reach limit."""
LIFT_TARGET_HEIGHT = 0.13
"""Grasp-point rise commanded by the expert; the env's success threshold is a 0.10 m rise."""


class BlockRegionWrapper(gym.Wrapper):
    """Resample block starts outside a box of the table; deterministic for a given reset seed.

    The box always excludes blocks beyond REACHABLE_X_MAX. A smaller box makes the task easier
    (less visual variety to learn), which is how the CPU-scale runs get a base policy with moderate
    success from a tiny model; real deployments keep the package's full sampling box.
    """

    def __init__(self, env: gym.Env, region: tuple[float, float, float, float], max_tries: int = 1000):
        super().__init__(env)
        x_min, x_max, y_min, y_max = region
        if not (x_min < x_max and y_min < y_max):
            raise ValueError(
                f"block_region must be [x_min, x_max, y_min, y_max] with min < max, got {list(region)}"
            )
        self._region = (x_min, min(x_max, REACHABLE_X_MAX), y_min, y_max)
        self._max_tries = max_tries

    def _inside(self) -> bool:
        x, y = (float(v) for v in self.env.unwrapped.data.sensor("block_pos").data[:2])
        x_min, x_max, y_min, y_max = self._region
        return x_min <= x <= x_max and y_min <= y <= y_max

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        for _ in range(self._max_tries):
            if self._inside():
                return obs, info
            obs, info = self.env.reset(options=options)  # continues the seeded RNG stream
        raise RuntimeError(
            f"no block start inside block_region {list(self._region)} in {self._max_tries} resets"
        )


class DeltaGripperWrapper(gym.ActionWrapper):
    """The env's last action dim, an absolute gripper opening, commanded by increments instead.

    The opening is the running sum of the increments clipped to the env's gripper range, so no
    sequence of increments can leave that range; an increment of 0 (what a hold sends) keeps the
    gripper where it is, so a held object stays held. A reset restores `start` (default: the top of
    the range, open for the SO-101). The increment range is +-(range width): one step may cross it.
    """

    def __init__(self, env: gym.Env, start: float | None = None):
        super().__init__(env)
        box = env.action_space
        if not isinstance(box, gym.spaces.Box) or box.shape is None or len(box.shape) != 1:
            raise ValueError(f"DeltaGripperWrapper needs a 1-D Box action space, got {box}")
        self._low, self._high = float(box.low[-1]), float(box.high[-1])
        self._start = self._high if start is None else float(start)
        if not self._low <= self._start <= self._high:
            raise ValueError(
                f"DeltaGripperWrapper: start {self._start} is outside the gripper range "
                f"[{self._low}, {self._high}]"
            )
        low, high = box.low.copy(), box.high.copy()
        low[-1], high[-1] = -(self._high - self._low), self._high - self._low
        self.action_space = gym.spaces.Box(low, high, dtype=box.dtype)
        self.gripper_opening = self._start
        """The absolute opening last sent to the env."""

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        self.gripper_opening = self._start
        return self.env.reset(seed=seed, options=options)

    def action(self, action: np.ndarray) -> np.ndarray:
        action = np.array(action, dtype=self.env.action_space.dtype, copy=True)
        self.gripper_opening = float(np.clip(self.gripper_opening + float(action[-1]), self._low, self._high))
        action[-1] = self.gripper_opening
        return action


def look_at(
    model: mujoco.MjModel, camera: str, pos: Sequence[float], target: Sequence[float], fovy: float
) -> None:
    """Place a fixed camera of `model` at `pos` (m, world), looking at `target`, world z up."""
    cam = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, camera)
    if cam < 0:
        raise ValueError(f"the model has no camera named '{camera}'")
    if model.cam_bodyid[cam] != 0:
        raise ValueError(
            f"camera '{camera}' is attached to a moving body; only world cameras can be re-aimed"
        )
    back = np.asarray(pos, dtype=np.float64) - np.asarray(
        target, dtype=np.float64
    )  # MuJoCo cameras look along -z
    z = back / np.linalg.norm(back)
    x = np.cross([0.0, 0.0, 1.0], z)
    if np.linalg.norm(x) < 1e-6:
        raise ValueError("camera_pose: looking straight down or up is ambiguous; move 'pos' sideways")
    x /= np.linalg.norm(x)
    quat = np.zeros(4)
    mujoco.mju_mat2Quat(quat, np.stack([x, np.cross(z, x), z], axis=1).reshape(-1))
    model.cam_pos[cam], model.cam_quat[cam], model.cam_fovy[cam] = pos, quat, fovy


def make_lift_env(
    image_width: int = 128, image_height: int = 128, camera: str = "front", **kwargs: Any
) -> gym.Env:
    """SO101PickCube-v0 with the top-down IK and jaw pads that make a real grasp possible.

    `block_region=[x_min, x_max, y_min, y_max]` (m) narrows where the block starts.
    `camera_pose={pos: [x, y, z], target: [x, y, z], fovy: deg}` re-aims the camera: the package's
    front camera sees the workspace from 0.9 m, where the 4 cm block is ~4 px of a 64 px frame.
    """
    kwargs = {
        "image_obs": True,
        "render_spec": GymRenderingSpec(height=image_height, width=image_width, camera_id=camera),
        "top_down_ik": True,
        "jaw_pads": True,
        "random_block_position": True,
        "action_scale": DEFAULT_ACTION_SCALE,
        **kwargs,
    }
    region = kwargs.pop("block_region", FULL_BLOCK_REGION)
    pose = kwargs.pop("camera_pose", None)
    env = gym.make(ENV_ID, **kwargs).unwrapped
    if pose is not None:
        unknown = set(pose) - {"pos", "target", "fovy"}
        if unknown or not {"pos", "target"} <= set(pose):
            raise ValueError(
                f"camera_pose needs 'pos' and 'target' (and optionally 'fovy'), got {sorted(pose)}"
            )
        look_at(env.model, camera, pose["pos"], pose["target"], float(pose.get("fovy", 45.0)))
    return BlockRegionWrapper(env, region=tuple(region))


class LiftExpert:
    """Scripted expert for the lift task: hover over the block, descend, close, lift.

    Uses privileged sim state (block and grasp-point positions); it stands in for a human
    teleoperator when seeding demonstrations in simulation.
    """

    def __init__(self, action_scale: float = DEFAULT_ACTION_SCALE):
        self._action_scale = action_scale
        self.reset()

    def reset(self) -> None:
        self._phase = "hover"
        self._steps_in_phase = 0
        self._table_z: float | None = None

    def act(self, env: gym.Env) -> np.ndarray:
        base = env.unwrapped
        grasp = np.asarray(base.ik_point_pos, dtype=np.float64)
        block = np.asarray(base.data.sensor("block_pos").data, dtype=np.float64)
        if self._table_z is None:
            self._table_z = float(block[2])
        while True:
            if self._phase == "close":
                if self._steps_in_phase >= pick_place.CLOSE_STEPS:
                    self._next("lift")
                    continue
                self._steps_in_phase += 1
                return np.asarray([0.0, 0.0, 0.0, pick_place.GRIPPER_CLOSED], dtype=np.float32)
            if self._phase == "hover":
                target, limit = np.array([block[0], block[1], self._table_z + pick_place.HOVER_HEIGHT]), 1.0
            elif self._phase == "descend":
                target = np.array([block[0], block[1], self._table_z + pick_place.GRASP_HEIGHT])
                limit = pick_place.CAREFUL_SPEED
            else:  # lift: straight up from wherever the grasp point is
                target = np.array(
                    [grasp[0], grasp[1], self._table_z + pick_place.GRASP_HEIGHT + LIFT_TARGET_HEIGHT]
                )
                limit = pick_place.CAREFUL_SPEED
            error = target - grasp
            reached = np.linalg.norm(error) < pick_place.GOAL_TOLERANCE
            if self._phase != "lift" and (reached or self._steps_in_phase >= pick_place.PHASE_TIMEOUT_STEPS):
                self._next("descend" if self._phase == "hover" else "close")
                continue
            self._steps_in_phase += 1
            delta = np.clip(error / self._action_scale, -limit, limit)
            gripper = pick_place.GRIPPER_CLOSED if self._phase == "lift" else pick_place.GRIPPER_OPEN
            return np.asarray([*delta, gripper], dtype=np.float32)

    def _next(self, phase: str) -> None:
        self._phase = phase
        self._steps_in_phase = 0


class DeltaGripperLiftExpert(LiftExpert):
    """`LiftExpert` for the lift env behind `DeltaGripperWrapper`: the gripper as an increment.

    Asks for the whole way to the opening it wants each step; the safety filter cuts that to the
    config's `max_step_change`, and the next step asks for the rest (it reads the opening back).
    """

    def act(self, env: gym.Env) -> np.ndarray:
        action = super().act(env)
        action[-1] -= env.get_wrapper_attr("gripper_opening")
        return action


gym.register(id=LIFT_ENV_ID, entry_point=make_lift_env, max_episode_steps=100)
