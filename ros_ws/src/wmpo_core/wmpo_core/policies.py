"""Policy backends other than the project's VLA, registered with `wmpo_core.policy`.

- `replay:<store>[:<episode_id>]`: replays an episode's recorded actions open-loop, indexed by
  time since the episode's first observation (without an id: the store's episodes in order, one
  per policy episode). Useful to check a graph end to end and to re-run a demonstration.
- `hold:[dim=value,...]`: holds the arm: delta dims 0, absolute dims at the measured joint
  position (joint_position arms) or at the value given (e.g. `hold:gripper=1.0`). A zero-cost
  policy for benchmarks and bring-up.
- `scripted:<module>:<Class>`: a policy written in Python, `Class(robot_config)` implementing
  the `Policy` protocol.
- LeRobot `PreTrainedPolicy` checkpoint directories (`config.json` with a policy `type` plus
  `model.safetensors`, as written by `lerobot-train`), inference only.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from wmpo_core.durable import file_sha256
from wmpo_core.episode_store import EpisodeStore, StoreError
from wmpo_core.image_ops import resize_frames
from wmpo_core.lerobot_units import (
    UnitConversionError,
    check_convertible,
    vector_from_lerobot,
    vector_to_lerobot,
)
from wmpo_core.policy import Observation, Policy, PolicyLoadError, register_directory_format, register_scheme
from wmpo_core.robot_config import LeRobotDriver, RobotConfig


def _absolute_dims(config: RobotConfig) -> np.ndarray:
    return np.array([d.kind == "absolute" for d in config.action.dims])


class ReplayPolicy:
    """Replays recorded actions; the action for an observation is the one recorded at the same
    time offset from the episode start (so a replay stays aligned even if ticks are skipped)."""

    def __init__(
        self,
        store_path: str,
        episode_ids: list[str],
        actions: list[np.ndarray],
        config: RobotConfig,
        chunk_size: int = 10,
    ):
        self._episode_ids = episode_ids
        self._actions = actions
        self._period = config.control_period_s
        self._absolute = _absolute_dims(config)
        self.chunk_size = chunk_size
        self._next_episode = 0
        self._current = 0
        self._t0: float | None = None
        self._calls = 0
        self._started = False
        self.version = (
            f"replay:{episode_ids[0]}"
            if len(episode_ids) == 1
            else f"replay:{Path(store_path).name}[{len(episode_ids)}]"
        )

    @property
    def episode_id(self) -> str:
        return self._episode_ids[self._current]

    def reset(self) -> None:
        self._t0 = None
        self._calls = 0
        self._started = False

    def predict_chunk(self, obs: Observation) -> np.ndarray:
        if obs.extra.get("probe"):  # a loader's verification call, not an episode
            return self._actions[0][: self.chunk_size].astype(np.float64)
        if not self._started:  # the next recorded episode, taken when an episode really acts
            self._current = self._next_episode % len(self._episode_ids)
            self._next_episode += 1
            self._started = True
        actions = self._actions[self._current]
        if obs.stamp > 0:
            if self._t0 is None:
                self._t0 = obs.stamp
            index = round((obs.stamp - self._t0) / self._period)
        else:  # no timestamps: one call per tick
            index = self._calls
        self._calls += 1
        chunk = actions[index : index + self.chunk_size]
        if len(chunk) < self.chunk_size:  # past the end: hold the last recorded action
            hold = np.where(self._absolute, actions[-1], 0.0)
            chunk = np.concatenate([chunk, np.repeat(hold[None], self.chunk_size - len(chunk), axis=0)])
        return chunk.astype(np.float64)


def load_replay(rest: str, config: RobotConfig) -> ReplayPolicy:

    store_path, episode_id = rest, None
    if not Path(rest).is_dir() and ":" in rest:
        store_path, episode_id = rest.rsplit(":", 1)
    if not store_path:
        raise PolicyLoadError(
            "replay: needs a store path, e.g. replay:data/demos or replay:data/demos:<episode_id>"
        )
    try:
        store = EpisodeStore.open(store_path, mode="r")
    except StoreError as exc:
        raise PolicyLoadError(f"replay: {exc}") from None
    ids = [episode_id] if episode_id else store.episode_ids
    if not ids:
        raise PolicyLoadError(f"replay: store {store_path} has no episodes")
    actions = []
    for eid in ids:
        try:
            meta = store.meta(eid)
        except KeyError as exc:
            raise PolicyLoadError(f"replay: {exc.args[0]}") from None
        if meta.action_dim != config.action.dim:
            raise PolicyLoadError(
                f"replay: episode {eid} has {meta.action_dim}-dim actions, robot config '{config.name}' "
                f"needs {config.action.dim}"
            )
        if meta.robot_config_name != config.name:
            raise PolicyLoadError(
                f"replay: episode {eid} was recorded on '{meta.robot_config_name}', not '{config.name}'"
            )
        actions.append(store.episode(eid).action().astype(np.float64))
    return ReplayPolicy(store_path, ids, actions, config)


class HoldPolicy:
    """Commands 'stay where you are'."""

    chunk_size = 1

    def __init__(self, config: RobotConfig, values: dict[str, float]):
        self._config = config
        self._absolute = _absolute_dims(config)
        unknown = set(values) - set(config.action.names)
        if unknown:
            raise PolicyLoadError(
                f"hold: unknown action dims {sorted(unknown)}; dims are {config.action.names}"
            )
        self._fixed = values
        joint_index = {name: i for i, name in enumerate(config.joint_names)}
        self._from_state: dict[int, int] = {}
        for i, dim in enumerate(config.action.dims):
            if dim.kind != "absolute" or dim.name in values:
                continue
            if config.action.space != "joint_position":
                raise PolicyLoadError(
                    f"hold: absolute dim '{dim.name}' needs a value, e.g. "
                    f"hold:{dim.name}={(dim.low + dim.high) / 2:g}"
                )
            self._from_state[i] = joint_index[dim.name]
        self.version = "hold:" + ",".join(f"{k}={v:g}" for k, v in sorted(values.items()))

    def reset(self) -> None:
        pass

    def predict_chunk(self, obs: Observation) -> np.ndarray:
        action = np.zeros(self._config.action.dim, dtype=np.float64)
        for i, dim in enumerate(self._config.action.dims):
            if dim.name in self._fixed:
                action[i] = self._fixed[dim.name]
            elif i in self._from_state:
                action[i] = float(obs.state[self._from_state[i]])
        return action[None]


def load_hold(rest: str, config: RobotConfig) -> HoldPolicy:
    values: dict[str, float] = {}
    for item in filter(None, rest.split(",")):
        name, sep, value = item.partition("=")
        try:
            values[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise PolicyLoadError(f"hold: expected 'dim=value' items separated by commas, got '{item}'")
    return HoldPolicy(config, values)


def load_scripted(rest: str, config: RobotConfig) -> Policy:
    module_name, _, class_name = rest.partition(":")
    if not module_name or not class_name:
        raise PolicyLoadError(f"scripted: expected 'scripted:<module>:<Class>', got 'scripted:{rest}'")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise PolicyLoadError(f"scripted: cannot import {module_name}:{class_name} ({exc})") from None
    policy = cls(config)
    if not isinstance(policy, Policy):
        raise PolicyLoadError(
            f"scripted: {module_name}:{class_name} does not implement the Policy protocol (version, "
            "chunk_size, reset, predict_chunk)"
        )
    return policy


# ---------------------------------------------------------------------------------------- LeRobot


def _lerobot_checkpoint_dir(path: Path) -> Path | None:
    """The directory holding a LeRobot policy (a checkpoint dir or its `pretrained_model/`)."""
    for candidate in (path, path / "pretrained_model"):
        config_file = candidate / "config.json"
        if config_file.is_file() and (candidate / "model.safetensors").is_file():
            try:
                policy_type = json.loads(config_file.read_text()).get("type")
            except (OSError, ValueError, AttributeError):
                continue
            if isinstance(policy_type, str):
                import lerobot.policies  # noqa: F401  (registers LeRobot's policy types)
                from lerobot.configs.policies import PreTrainedConfig

                if policy_type in PreTrainedConfig.get_known_choices():
                    return candidate
    return None


class LeRobotPolicy:
    """A LeRobot `PreTrainedPolicy` behind our `Policy` interface (inference only).

    Calls `select_action` once per tick, exactly as LeRobot's own synchronous inference engine
    does, so the policy's own action queue / temporal ensembling / observation history behave as
    in LeRobot; hence `chunk_size` is 1. Observations are mapped to LeRobot batch keys
    (`observation.images.<camera>`, `observation.state`, `task`); on a LeRobot arm (lerobot driver)
    state and action are converted to LeRobot units, in which LeRobot datasets are recorded.
    """

    chunk_size = 1

    def __init__(self, path: Path, config: RobotConfig, device: str = "cpu"):
        # LeRobot takes seconds to import and only LeRobot policies need it
        import torch
        from lerobot.configs.policies import PreTrainedConfig
        from lerobot.policies.factory import get_policy_class, make_pre_post_processors

        self._torch = torch
        self._config = config
        self._device = torch.device(device)
        policy_config = PreTrainedConfig.from_pretrained(path)
        policy_config.device = device
        self._check_features(policy_config, path)
        self._policy = get_policy_class(policy_config.type).from_pretrained(path, config=policy_config)
        self._policy.eval()
        self._pre, self._post = make_pre_post_processors(
            policy_config,
            pretrained_path=str(path),
            preprocessor_overrides={"device_processor": {"device": device}},
        )
        for step in getattr(self._pre, "steps", ()):
            if type(step).__name__ == "RelativeActionsProcessorStep" and getattr(step, "enabled", False):
                raise PolicyLoadError(
                    f"{path}: policies with relative actions need chunk-level inference, which this backend "
                    "does not do"
                )
        # LeRobot arms record joint positions in LeRobot units; convert both ways on those arms.
        self._convert_units = (
            isinstance(config.driver, LeRobotDriver) and config.action.space == "joint_position"
        )
        self.version = (
            f"lerobot:{policy_config.type}:{path.name}@sha256:{file_sha256(path / 'model.safetensors')[:16]}"
        )

    def _check_features(self, policy_config: Any, path: Path) -> None:
        cfg = self._config
        self._image_sizes: dict[str, tuple[int, int]] = {}
        for key, feature in policy_config.input_features.items():
            if key.startswith("observation.images."):
                camera = key.removeprefix("observation.images.")
                if camera not in cfg.camera_names:
                    raise PolicyLoadError(
                        f"{path}: the policy reads camera '{camera}', robot config '{cfg.name}' has "
                        f"{cfg.camera_names}"
                    )
                channels, height, width = feature.shape
                if channels != cfg.camera(camera).channels:
                    raise PolicyLoadError(
                        f"{path}: camera '{camera}' has {cfg.camera(camera).channels} channels, the policy "
                        f"expects {channels}"
                    )
                self._image_sizes[camera] = (height, width)
            elif key == "observation.state":
                if tuple(feature.shape) != (len(cfg.joints),):
                    raise PolicyLoadError(
                        f"{path}: the policy's state has shape {tuple(feature.shape)}, robot config "
                        f"'{cfg.name}' has {len(cfg.joints)} joints"
                    )
            elif key.startswith("observation.") and key != "observation.environment_state":
                raise PolicyLoadError(
                    f"{path}: the policy reads '{key}', which robot config '{cfg.name}' does not provide"
                )
        action = policy_config.output_features.get("action")
        if action is None or tuple(action.shape) != (cfg.action.dim,):
            shape = None if action is None else tuple(action.shape)
            raise PolicyLoadError(
                f"{path}: the policy's action has shape {shape}, robot config '{cfg.name}' needs "
                f"({cfg.action.dim},)"
            )

    def reset(self) -> None:
        self._policy.reset()
        self._pre.reset()
        self._post.reset()

    def predict_chunk(self, obs: Observation) -> np.ndarray:
        from lerobot.policies.utils import prepare_observation_for_inference  # heavy, see above

        state = (
            vector_to_lerobot(obs.state, self._config)
            if self._convert_units
            else np.asarray(obs.state, dtype=np.float64)
        )
        batch: dict[str, Any] = {"observation.state": state.astype(np.float32)}
        for camera, size in self._image_sizes.items():
            batch[f"observation.images.{camera}"] = np.ascontiguousarray(
                resize_frames(obs.images[camera], size)
            )
        with self._torch.inference_mode():
            batch = prepare_observation_for_inference(
                batch, self._device, obs.instruction, self._config.robot_type
            )
            action = self._post(self._policy.select_action(self._pre(batch)))
        action = action.reshape(-1).float().cpu().numpy().astype(np.float64)
        if self._convert_units:
            action = vector_from_lerobot(action, self._config)
        return action[None]


def load_lerobot(path: str, config: RobotConfig) -> LeRobotPolicy:
    checkpoint = _lerobot_checkpoint_dir(Path(path))
    if checkpoint is None:
        raise PolicyLoadError(
            f"{path}: not a LeRobot policy checkpoint (needs config.json with a policy 'type' and "
            "model.safetensors)"
        )
    if config.action.space == "joint_position" and isinstance(config.driver, LeRobotDriver):
        try:
            check_convertible(config)
        except UnitConversionError as exc:
            raise PolicyLoadError(str(exc)) from None
    return LeRobotPolicy(checkpoint, config)


register_scheme("replay", load_replay)
register_scheme("hold", load_hold)
register_scheme("scripted", load_scripted)
register_directory_format(lambda path: _lerobot_checkpoint_dir(path) is not None, load_lerobot)
