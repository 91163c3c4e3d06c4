"""A simulated arm described by a robot config: any gymnasium env with images and a Box action space.

Frames come from the observation dict (`driver.image_keys`) or, for envs that keep pixels out of
their observations (most gymnasium robot envs), from `env.render()` (`driver.render_camera`).
`driver.wrappers` are applied by import path, so an env is adapted from the YAML alone.

The sim arm node, the scripted teleop, `wmpo eval` and the real-env GRPO baseline all step the
simulator through this one adapter, so they see the same frames, state and success signal.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import Any

if "MUJOCO_GL" not in os.environ and not os.environ.get("DISPLAY"):
    # Offscreen rendering on a headless CPU machine; set MUJOCO_GL=egl on a GPU machine.
    os.environ["MUJOCO_GL"] = "osmesa"
    os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")

import gymnasium as gym
import mujoco
import numpy as np

from wmpo_core.mujoco_render import apply_render_settings
from wmpo_core.robot_config import GymSimDriver, RobotConfig


@dataclass
class SimObservation:
    images: dict[str, np.ndarray]
    """camera name -> (H, W, C) uint8, RGB."""
    state: np.ndarray
    """Joint values in config joint order and units (float64)."""
    success: bool
    terminated: bool
    truncated: bool


def _import_object(spec: str, what: str) -> Any:
    module_name, _, attr = spec.partition(":")
    if not attr:
        raise ValueError(f"{what}: expected 'module:attribute', got '{spec}'")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"{what}: cannot import '{spec}': {exc}") from None


def make_env(driver: GymSimDriver) -> gym.Env:
    """The env `driver` describes: made from `env_id` and `env_kwargs`, then wrapped in order."""
    if ":" in driver.env_id:
        importlib.import_module(driver.env_id.split(":", 1)[0])
    env_id = driver.env_id.split(":", 1)[-1]
    kwargs = dict(driver.env_kwargs)
    if driver.render_camera is not None:
        kwargs.setdefault("render_mode", "rgb_array")
    env = gym.make(env_id, disable_env_checker=True, **kwargs)
    for i, spec in enumerate(driver.wrappers):
        wrapper = _import_object(spec.wrapper, f"driver.wrappers[{i}]")
        try:
            env = wrapper(env, **spec.kwargs)
        except TypeError as exc:  # wrong or missing kwargs
            raise ValueError(f"driver.wrappers[{i}] ({spec.wrapper}): {exc}") from None
    if driver.render_camera is not None and env.render_mode != "rgb_array":
        raise ValueError(
            f"{env_id}: driver.render_camera needs render_mode 'rgb_array', the env has {env.render_mode!r}"
        )
    return env


def _lookup(obs: Any, path: str) -> Any:
    value = obs
    for part in path.split("/"):
        if not isinstance(value, dict) or part not in value:
            keys = list(value) if isinstance(value, dict) else type(value).__name__
            raise KeyError(f"observation has no '{path}' (stopped at '{part}'; available: {keys})")
        value = value[part]
    return value


class SimArm:
    """Steps a gymnasium env and returns frames, joint state and success in config terms."""

    def __init__(self, config: RobotConfig):
        if not isinstance(config.driver, GymSimDriver):
            raise ValueError(
                f"robot config '{config.name}' does not describe a simulated arm "
                f"(driver.kind={config.driver.kind})"
            )
        self.config = config
        self.driver: GymSimDriver = config.driver
        env_id = self.driver.env_id.split(":", 1)[-1]
        self.env = make_env(self.driver)
        if not isinstance(self.env.action_space, gym.spaces.Box):
            raise ValueError(f"{env_id}: action space must be a Box, got {self.env.action_space}")
        if self.env.action_space.shape != (config.action.dim,):
            raise ValueError(
                f"{env_id}: action space has shape {self.env.action_space.shape}, robot config "
                f"'{config.name}' declares {config.action.dim} action dims {config.action.names}"
            )
        base = self.env.unwrapped
        if isinstance(getattr(base, "model", None), mujoco.MjModel):
            apply_render_settings(
                base.model,
                self.driver.mujoco_shadows,
                self.driver.mujoco_multisample,
                self.driver.mujoco_mesh_cell_m,
            )
        self.expert = (
            _import_object(self.driver.scripted_expert, "driver.scripted_expert")()
            if self.driver.scripted_expert
            else None
        )
        self._last: SimObservation | None = None

    @property
    def control_dt(self) -> float | None:
        """The env's own step duration in seconds, when it declares one."""
        dt = getattr(self.env.unwrapped, "control_dt", None)
        return float(dt) if dt is not None else None

    def reset(self, seed: int | None = None) -> SimObservation:
        obs, _ = self.env.reset(seed=seed)
        if self.expert is not None:
            self.expert.reset()
        self._last = self._convert(obs, info={}, terminated=False, truncated=False)
        return self._last

    def step(self, action: np.ndarray) -> SimObservation:
        action = np.asarray(action, dtype=np.float32).reshape(self.config.action.dim)
        obs, _, terminated, truncated, info = self.env.step(action)
        self._last = self._convert(obs, info, bool(terminated), bool(truncated))
        return self._last

    def expert_action(self) -> np.ndarray:
        if self.expert is None:
            raise RuntimeError(f"robot config '{self.config.name}' names no driver.scripted_expert")
        return np.asarray(self.expert.act(self.env), dtype=np.float64)

    def close(self) -> None:
        self.env.close()

    def _convert(self, obs: Any, info: dict, terminated: bool, truncated: bool) -> SimObservation:
        images = {}
        for cam in self.config.cameras:
            if cam.name == self.driver.render_camera:
                frame = self.env.render()
                if frame is None:
                    raise ValueError(f"camera '{cam.name}': env.render() returned no frame")
            else:
                frame = _lookup(obs, self.driver.image_keys[cam.name])
            frame = np.asarray(frame)
            if frame.ndim == 2:
                frame = frame[..., None]
            if frame.shape != cam.shape or frame.dtype != np.uint8:
                raise ValueError(
                    f"camera '{cam.name}' of robot config '{self.config.name}' expects {cam.shape} uint8 "
                    f"frames, the env renders {frame.shape} {frame.dtype}: make cameras[{cam.name}] match "
                    "driver.env_kwargs"
                )
            images[cam.name] = frame
        raw = obs if self.driver.state_key is None else _lookup(obs, self.driver.state_key)
        state = np.asarray(raw, dtype=np.float64).reshape(-1)
        if self.driver.state_indices is not None:
            state = state[self.driver.state_indices]
        if state.shape != (len(self.config.joints),):
            raise ValueError(
                f"robot config '{self.config.name}' has {len(self.config.joints)} joints but the env's "
                f"'{self.driver.state_key or '<observation>'}' gives {state.shape[0]} values: "
                "set driver.state_indices"
            )
        success = bool(info.get(self.driver.success_key, False))
        return SimObservation(
            images=images, state=state, success=success, terminated=terminated, truncated=truncated
        )
