"""Test-session environment (isolated ROS 2 domain on loopback, offscreen MuJoCo, few threads) and
the fixtures many tests share: a tiny VLA and its checkpoint, an episode store written from given
frames, a tiny reward model. Each is a factory, session-scoped so module-scoped fixtures can use it."""

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

# Each pytest session gets its own DDS domain so concurrent runs on one machine never cross-talk.
os.environ.setdefault("ROS_DOMAIN_ID", str(100 + os.getpid() % 100))
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
os.environ.setdefault("MUJOCO_GL", "osmesa")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# Imported after the environment above: transformers and MuJoCo read it when first imported.
import torch
import yaml
from transformers import VideoMAEConfig, VideoMAEForVideoClassification
from wmpo_core.episode_store import EpisodeStore
from wmpo_core.normalization import ActionNormalizer
from wmpo_core.robot_config import RobotConfig, load_robot_config, parse_robot_config
from wmpo_core.vla.checkpoint import save_checkpoint
from wmpo_core.vla.config import load_recipe
from wmpo_core.vla.model import VLA
from wmpo_learner.reward.model import RewardModel
from wmpo_learner.reward.preprocessing import PreprocessConfig

TINY_ACTION_BOUNDS = ([-1, -1, -1, 0], [1, 1, 1, 1])
"""q01/q99 of the tiny VLA's action statistics: so101_sim's 3 end-effector deltas and gripper."""


@pytest.fixture(autouse=True)
def _no_realtime_scheduling_leaks():
    """Tests that write LeRobot videos run its AV1 encoder, which (as root) leaves the calling thread
    under SCHED_FIFO 99; every later test and every process it starts would inherit that and starve
    the machine. Give the test process its scheduling back after each test."""
    policy, param = os.sched_getscheduler(0), os.sched_getparam(0)
    yield
    if os.sched_getscheduler(0) != policy or os.sched_getparam(0) != param:
        os.sched_setscheduler(0, policy, param)


@pytest.fixture(scope="module")
def short_robot() -> RobotConfig:
    """so101_sim with 1.6 s episodes (16 steps = 2 chunks): real MuJoCo, test-sized."""
    data = yaml.safe_load((Path(__file__).parents[1] / "robot_configs" / "so101_sim.yaml").read_text())
    data["episode_time_limit_s"] = 1.6
    return parse_robot_config(data, source="so101_sim (short episodes)")


@pytest.fixture(scope="module")
def short_robot_yaml(tmp_path_factory) -> Path:
    """`short_robot` as a YAML file, for stage configs that name their robot config by path."""
    data = yaml.safe_load((Path(__file__).parents[1] / "robot_configs" / "so101_sim.yaml").read_text())
    path = tmp_path_factory.mktemp("robot") / "so101_sim.yaml"
    path.write_text(yaml.safe_dump({**data, "episode_time_limit_s": 1.6}))
    return path


@pytest.fixture(scope="session")
def tiny_vla() -> Callable[..., VLA]:
    """`tiny_vla(robot, seed=0)`: the 'tiny' recipe VLA for `robot`, seeded, in eval mode."""

    def make(robot: RobotConfig, seed: int = 0) -> VLA:
        torch.manual_seed(seed)
        return VLA.create(load_recipe("tiny").model, robot, ActionNormalizer(*TINY_ACTION_BOUNDS)).eval()

    return make


@pytest.fixture(scope="session")
def tiny_vla_checkpoint(tiny_vla) -> Callable[..., Path]:
    """`tiny_vla_checkpoint(robot, path, seed=0, **save_checkpoint_kwargs)`: a tiny VLA saved at `path`."""

    def make(robot: RobotConfig, path: Path, seed: int = 0, **save_kwargs: Any) -> Path:
        save_checkpoint(tiny_vla(robot, seed), path, robot, **save_kwargs)
        return path

    return make


@pytest.fixture(scope="session")
def write_episode_store() -> Callable[..., Path]:
    """`write_episode_store(path, episodes, robot=None, durable=False)`: a store at `path` with one
    committed episode per mapping in `episodes`: `frames` ((T, H, W, 3) uint8, camera 'front') and
    optionally `actions` (T, A), `states` (T, J) (zeros by default), `success` (True), `source`
    ('policy'), `task`, `episode_id`, `policy_version`, `env_seed`. Step t is stamped 1000 + t/10 s.
    `robot` defaults to so101_sim."""

    def write(
        path: Path,
        episodes: Sequence[Mapping[str, Any]],
        robot: RobotConfig | None = None,
        durable: bool = False,
    ) -> Path:
        robot = robot or load_robot_config("so101_sim")
        with EpisodeStore.open(path, mode="a", durable=durable) as store:
            for spec in episodes:
                frames = spec["frames"]
                steps = len(frames)
                actions = spec.get("actions", np.zeros((steps, robot.action.dim)))
                states = spec.get("states", np.zeros((steps, len(robot.joints))))
                writer = store.begin_episode(
                    robot,
                    source=spec.get("source", "policy"),
                    task=spec.get("task", "pick up the cube"),
                    policy_version=spec.get("policy_version"),
                    env_seed=spec.get("env_seed"),
                    episode_id=spec.get("episode_id"),
                )
                for t in range(steps):
                    writer.append({"front": frames[t]}, states[t], actions[t], time=1000.0 + t / 10)
                success = spec.get("success", True)
                writer.commit(success=success, success_labeled_by="env" if success is not None else None)
        return path

    return write


@pytest.fixture(scope="session")
def tiny_reward_model() -> Callable[..., RewardModel]:
    """`tiny_reward_model(seed=0, threshold=0.5)`: a one-layer VideoMAE success classifier on 8
    frames of 32 px from camera 'front', seeded, in eval mode."""

    def make(seed: int = 0, threshold: float = 0.5) -> RewardModel:
        torch.manual_seed(seed)
        config = VideoMAEConfig(
            image_size=32,
            patch_size=8,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            num_frames=8,
            tubelet_size=2,
            num_labels=1,
            problem_type="multi_label_classification",
        )
        spec = PreprocessConfig(camera="front", image_size=32, num_frames=8)
        return RewardModel(VideoMAEForVideoClassification(config), spec, threshold=threshold).eval()

    return make
