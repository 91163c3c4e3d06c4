"""A gymnasium env configured by YAML alone: frames through `render()`, wrappers by import path,
a delta gripper; the worked "add a new arm" example of docs/robot_configs.md loads, steps and
records; bad wrapper entries fail naming the entry."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from wmpo_core.cli import main as wmpo
from wmpo_core.episode_store import EpisodeStore
from wmpo_core.robot_config import RobotConfigError, load_robot_config, parse_robot_config
from wmpo_core.safety import SafetyFilter
from wmpo_core.sim_env import SimArm
from wmpo_ros.teleop_devices import GAMEPAD_CLOSE, GAMEPAD_STAY, gamepad_action

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "docs" / "examples" / "so101_delta_gripper.yaml"


def example_data(**driver: object) -> dict:
    data = yaml.safe_load(EXAMPLE.read_text())
    data["driver"].update(driver)
    return data


def expert_episode(arm: SimArm, config, seed: int = 5) -> tuple[list, bool]:
    """Run the config's scripted expert through the safety filter, as the teleop node does."""
    safety = SafetyFilter(config.action)
    obs = arm.reset(seed=seed)
    trace = [(obs, None, arm.env.get_wrapper_attr("gripper_opening"))]
    for _ in range(config.max_episode_steps):
        command, _ = safety.filter(arm.expert_action())
        obs = arm.step(command)
        trace.append((obs, command, arm.env.get_wrapper_attr("gripper_opening")))
        if obs.success:
            return trace, True
    return trace, False


def test_the_docs_show_the_example_config_verbatim() -> None:
    docs = (ROOT / "docs" / "robot_configs.md").read_text()
    body = "\n".join(line for line in EXAMPLE.read_text().splitlines() if not line.startswith("#"))
    assert body.strip() in docs


def test_example_arm_renders_through_render_and_lifts_with_a_delta_gripper() -> None:
    config = load_robot_config(EXAMPLE)
    assert config.driver.render_camera == "front" and config.driver.image_keys == {}
    assert [d.kind for d in config.action.dims] == ["delta"] * 4
    arm = SimArm(config)
    try:
        assert arm.env.render_mode == "rgb_array"
        trace, success = expert_episode(arm, config)
    finally:
        arm.close()
    assert success, f"no success in {len(trace) - 1} steps"
    frames = np.array([obs.images["front"] for obs, _, _ in trace])
    assert frames.shape[1:] == (64, 64, 3) and frames.dtype == np.uint8
    assert np.abs(frames[-1].astype(int) - frames[0].astype(int)).mean() > 1.0  # the scene moved
    increments = np.array([command[-1] for _, command, _ in trace[1:]])
    openings = np.array([opening for _, _, opening in trace])
    # The safety filter cut each gripper increment to max_step_change; the opening stayed in [0, 1]
    # and closed step by step (the expert asked for -1 at once).
    assert np.all(np.abs(increments) <= 0.25 + 1e-9) and increments.min() == pytest.approx(-0.25)
    assert openings.min() == 0.0 and openings.max() == 1.0 and openings[0] == 1.0
    assert sorted(set(np.round(openings, 6))) == [0.0, 0.25, 0.5, 0.75, 1.0]
    # The env's own gripper state (the config's last joint) followed: open after the first command,
    # closed at the end.
    assert trace[1][0].state[-1] == pytest.approx(1.0) and trace[-1][0].state[-1] == pytest.approx(-1.0)


def test_render_frames_equal_the_frames_the_env_puts_in_its_observation(tmp_path: Path) -> None:
    """The same env with pixels in the observation gives exactly the frames render() gave."""
    from_obs = parse_robot_config(
        example_data(
            render_camera=None,
            image_keys={"front": "pixels/front"},
            env_kwargs={"image_obs": True, "image_width": 64, "image_height": 64, "camera": "front"},
        )
    )
    from_render = load_robot_config(EXAMPLE)
    actions = [np.array([0.5, -0.3, -0.6, -0.25]), np.array([0.0, 0.4, 0.2, 0.0])] * 3
    frames = {}
    for name, config in (("obs", from_obs), ("render", from_render)):
        arm = SimArm(config)
        try:
            arm.reset(seed=3)
            frames[name] = [arm.step(a).images["front"] for a in actions]
        finally:
            arm.close()
    np.testing.assert_array_equal(np.array(frames["obs"]), np.array(frames["render"]))
    assert np.abs(frames["render"][-1].astype(int) - frames["render"][0].astype(int)).max() > 0


def test_a_hold_keeps_a_delta_gripper_where_it_is() -> None:
    config = load_robot_config(EXAMPLE)
    arm = SimArm(config)
    safety = SafetyFilter(config.action)
    try:
        arm.reset(seed=1)
        for _ in range(2):
            arm.step(safety.filter(np.array([0.0, 0.0, 0.0, -1.0]))[0])
        closed_to = arm.env.get_wrapper_attr("gripper_opening")
        hold = safety.hold()
        obs = [arm.step(hold) for _ in range(3)]
    finally:
        arm.close()
    assert closed_to == pytest.approx(0.5) and hold.tolist() == [0.0, 0.0, 0.0, 0.0]
    assert arm.env.get_wrapper_attr("gripper_opening") == pytest.approx(0.5)
    assert obs[0].state[-1] == pytest.approx(obs[-1].state[-1])


def test_a_gamepad_stay_sends_a_delta_gripper_no_increment() -> None:
    config = load_robot_config(EXAMPLE)
    stay = gamepad_action({"gripper": GAMEPAD_STAY}, config, np.array([0.0, 0.0, 0.0, -0.25]))
    close = gamepad_action({"gripper": GAMEPAD_CLOSE}, config, None)
    assert stay[-1] == 0.0 and close[-1] == config.action.dims[-1].low


@pytest.mark.parametrize(
    ("driver", "message"),
    [
        (
            {"wrappers": [{"wrapper": "wmpo_core.sim_tasks:NoSuchWrapper"}]},
            "driver.wrappers[0]: cannot import 'wmpo_core.sim_tasks:NoSuchWrapper'",
        ),
        (
            {"wrappers": [{"wrapper": "no_such_module_xyz:Wrapper"}]},
            "driver.wrappers[0]: cannot import 'no_such_module_xyz:Wrapper'",
        ),
        (
            {"wrappers": [{"wrapper": "wmpo_core.sim_tasks:DeltaGripperWrapper", "kwargs": {"strat": 1.0}}]},
            "driver.wrappers[0] (wmpo_core.sim_tasks:DeltaGripperWrapper): ",
        ),
        (
            {"wrappers": [{"wrapper": "wmpo_core.sim_tasks:DeltaGripperWrapper", "kwargs": {"start": 2.0}}]},
            "start 2.0 is outside the gripper range [0.0, 1.0]",
        ),
        ({"env_kwargs": {"image_obs": False, "render_mode": "human"}}, "needs render_mode 'rgb_array'"),
        (
            {"scripted_expert": "wmpo_core.sim_tasks:NoSuchExpert"},
            "driver.scripted_expert: cannot import 'wmpo_core.sim_tasks:NoSuchExpert'",
        ),
        (
            {"wrappers": []},  # no wrapper: the env's gripper takes an absolute opening in [0, 1]
            None,
        ),
    ],
)
def test_bad_sim_driver_entries_fail_with_one_line_naming_them(driver: dict, message: str | None) -> None:
    config = parse_robot_config(example_data(**driver))
    if message is None:
        arm = SimArm(config)  # the config's 4 dims still match the env's 4-dim action space
        arm.close()
        return
    with pytest.raises(ValueError) as info:
        SimArm(config)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_flat_observation_is_the_state_when_state_key_is_omitted(tmp_path: Path) -> None:
    """A Box-observation env (no dict): `state_key` left out means the observation is the state."""
    only_state = {"wrapper": "gymnasium.wrappers:FilterObservation", "kwargs": {"filter_keys": ["agent_pos"]}}
    flatten = {"wrapper": "gymnasium.wrappers:FlattenObservation"}
    data = example_data(
        wrappers=[*yaml.safe_load(EXAMPLE.read_text())["driver"]["wrappers"], only_state, flatten]
    )
    del data["driver"]["state_key"]
    states = {}
    for name, config in (("flat", parse_robot_config(data)), ("dict", load_robot_config(EXAMPLE))):
        arm = SimArm(config)
        try:
            if name == "flat":
                assert arm.env.observation_space.shape == (14,)
            states[name] = [arm.reset(seed=2).state, arm.step(np.array([0.3, 0.2, -0.5, -0.5])).state]
        finally:
            arm.close()
    assert states["flat"][1].shape == (6,)
    np.testing.assert_array_equal(np.array(states["flat"]), np.array(states["dict"]))


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (
            lambda d: d["driver"].update(image_keys={"front": "pixels/front"}),
            "must name exactly the cameras ['front'] (with driver.render_camera, each once)",
        ),
        (lambda d: d["driver"].update(render_camera=None), "must name exactly the cameras ['front']"),
        (lambda d: d["driver"].update(wrappers=[{"wrapper": "ClipAction"}]), "driver.wrappers[0].wrapper"),
        (
            lambda d: d["driver"].update(wrappers=[{"wrapper": "gymnasium.wrappers:ClipAction", "kw": {}}]),
            "driver.wrappers[0].kw: Extra inputs are not permitted",
        ),
        (
            lambda d: [dim.update(kind="absolute") for dim in d["action"]["dims"][:3]],
            "end-effector 'delta' dims then one gripper dim",
        ),
    ],
)
def test_bad_render_wrapper_and_gripper_fields_are_refused(tmp_path: Path, mutate, expected: str) -> None:
    data = yaml.safe_load(EXAMPLE.read_text())
    mutate(data)
    path = tmp_path / EXAMPLE.name
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(RobotConfigError) as info:
        load_robot_config(path)
    assert expected in str(info.value)


def test_new_fields_hash_only_when_set() -> None:
    """Configs written before render_camera/wrappers existed keep their content hash."""
    sim = load_robot_config("so101_sim")
    assert not re.search(r'"(wrappers|render_camera)"', sim.canonical_json())
    assert sim.content_hash == "sha256:b68fef7a3caa0755f0e5c52cfa60dad06dc30f28c1ff36e25be377a7dd0bc253"
    example = load_robot_config(EXAMPLE)
    assert '"render_camera":"front"' in example.canonical_json()
    unwrapped = parse_robot_config(example_data(wrappers=[]))
    assert unwrapped.content_hash != example.content_hash


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_wmpo_teleop_records_the_example_arm_from_its_yaml_alone(tmp_path: Path, capsys) -> None:
    store = tmp_path / "demos"
    rc = wmpo(["teleop", "--robot", str(EXAMPLE), "--episodes", "1", "--store", str(store),
               "--seed", "5", "--real-time-factor", "0"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 0, err[-3000:]
    config = load_robot_config(EXAMPLE)
    (meta,) = list(EpisodeStore.open(store))
    assert (meta.source, meta.robot_config_name, meta.robot_config_hash) == (
        "scripted",
        "so101_delta_gripper",
        config.content_hash,
    )
    assert meta.success and meta.extra["ended_by"] == "success" and meta.env_seed == 5
    episode = EpisodeStore.open(store).episode(meta.episode_id)
    assert episode.frames("front").shape == (meta.num_steps, 64, 64, 3)
    actions = episode.action()
    # The recorded gripper dims are increments within max_step_change, and the gripper closed.
    assert np.all(np.abs(actions[:, -1]) <= 0.25 + 1e-9) and actions[:, -1].min() == pytest.approx(-0.25)
    assert episode.state()[-1, -1] == pytest.approx(-1.0)
