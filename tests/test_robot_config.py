"""Robot configs: the shipped ones validate; bad ones fail naming the file, the field and what is allowed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from wmpo_core.robot_config import RobotConfigError, config_search_path, load_robot_config

SHIPPED = sorted(p.stem for p in (Path(__file__).parents[1] / "robot_configs").glob("*.yaml"))


def test_at_least_the_three_reference_arms_ship() -> None:
    assert {"so101_sim", "so101_real", "ur5e_ros2_control"} <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_configs_validate(name: str) -> None:
    config = load_robot_config(name)
    assert config.name == name
    assert config.content_hash.startswith("sha256:") and len(config.content_hash) == 71
    assert config.max_episode_steps > 0 and config.camera_names


def test_driver_kinds_of_the_reference_arms() -> None:
    assert load_robot_config("so101_sim").driver.kind == "gym_sim"
    assert load_robot_config("so101_real").driver.kind == "lerobot"
    ur5e = load_robot_config("ur5e_ros2_control")
    assert ur5e.driver.kind == "ros2_control" and ur5e.topics.command_type == "JointTrajectory"


def _write(tmp_path: Path, mutate) -> Path:
    data = yaml.safe_load((Path(__file__).parents[1] / "robot_configs" / "so101_sim.yaml").read_text())
    mutate(data)
    path = tmp_path / "so101_sim.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (
            lambda d: d["action"].update(space="cartesian"),
            ["action.space", "'joint_position' or 'ee_delta_gripper'", "'cartesian'"],
        ),
        (lambda d: d["cameras"][0].update(width=-5), ["cameras[0].width", "greater than 0", "-5"]),
        (
            lambda d: d["cameras"][0].update(encoding="yuv422"),
            ["cameras[0].encoding", "'rgb8', 'bgr8' or 'mono8'"],
        ),
        (lambda d: d["cameras"][0].update(qos="fast"), ["cameras[0].qos", "'sensor_data' or 'reliable'"]),
        (lambda d: d["joints"][1].update(lower=2.0), ["joints[1]", "lower (2.0) must be below upper"]),
        (
            lambda d: d["joints"][0].update(unit="furlong"),
            ["joints[0].unit", "'rad', 'deg', 'm' or 'normalized'"],
        ),
        (lambda d: d.pop("control_rate_hz"), ["control_rate_hz", "Field required"]),
        (lambda d: d.update(control_rte_hz=10), ["control_rte_hz", "Extra inputs are not permitted"]),
        (lambda d: d["driver"].update(kind="gazebo"), ["driver", "'gym_sim', 'lerobot', 'ros2_control'"]),
        (lambda d: d["driver"].pop("env_id"), ["driver.env_id", "Field required"]),
        (lambda d: d["driver"].update(state_indices=[0, 1]), ["state_indices has 2 entries for 6 joints"]),
        (
            lambda d: d["driver"]["image_keys"].update(wrist="pixels/wrist"),
            ["image_keys must name exactly the cameras"],
        ),
        (lambda d: d.update(tasks=[]), ["tasks", "at least 1 item"]),
        (
            lambda d: d["action"]["dims"][0].update(max_step_change=0),
            ["action.dims[0].max_step_change", "greater than 0"],
        ),
    ],
)
def test_bad_config_names_file_field_and_allowed_values(tmp_path: Path, mutate, expected: list[str]) -> None:
    path = _write(tmp_path, mutate)
    with pytest.raises(RobotConfigError) as info:
        load_robot_config(path)
    message = str(info.value)
    assert message.startswith(str(path))
    for fragment in expected:
        assert fragment in message, f"{fragment!r} not in:\n{message}"


def test_joint_position_actions_must_match_the_joints(tmp_path: Path) -> None:
    data = yaml.safe_load((Path(__file__).parents[1] / "robot_configs" / "so101_real.yaml").read_text())
    data["action"]["dims"][0]["high"] = 3.5
    path = tmp_path / "so101_real.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(RobotConfigError, match=r"range \[-1.91986, 3.5\] exceeds the joint's limits"):
        load_robot_config(path)


def test_ros2_control_command_topic_must_be_the_controllers(tmp_path: Path) -> None:
    data = yaml.safe_load(
        (Path(__file__).parents[1] / "robot_configs" / "ur5e_ros2_control.yaml").read_text()
    )
    data["topics"]["command"] = "/arm/cmd"
    path = tmp_path / "ur5e_ros2_control.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(RobotConfigError, match="'/scaled_joint_trajectory_controller/joint_trajectory'"):
        load_robot_config(path)


def test_unknown_names_and_bad_files(tmp_path: Path) -> None:
    with pytest.raises(RobotConfigError, match=r"no robot config named 'so102_sim'.*available: .*so101_sim"):
        load_robot_config("so102_sim")
    (tmp_path / "broken.yaml").write_text("name: [unclosed")
    with pytest.raises(RobotConfigError, match=re.escape("broken.yaml: not valid YAML")):
        load_robot_config(tmp_path / "broken.yaml")
    (tmp_path / "listy.yaml").write_text("- a\n- b\n")
    with pytest.raises(RobotConfigError, match="a robot config is a YAML mapping"):
        load_robot_config(tmp_path / "listy.yaml")
    renamed = _write(tmp_path, lambda d: None).rename(tmp_path / "other_name.yaml")
    with pytest.raises(RobotConfigError, match="must match the file name 'other_name'"):
        load_robot_config(renamed)


def test_config_path_env_var_is_searched_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(tmp_path, lambda d: d.update(description="site-specific copy"))
    monkeypatch.setenv("WMPO_ROBOT_CONFIG_PATH", str(tmp_path))
    assert config_search_path()[0] == tmp_path
    assert load_robot_config("so101_sim").description == "site-specific copy"
