"""The policy node over real DDS: one command per tick, watchdog holds, nothing unsafe is published.

A `FakeArm` node owns the ROS clock, so the policy node (use_sim_time) runs exactly one control
tick per `tick(arm, node)` however loaded the machine is: the assertions are about ticks, not seconds.
The node spins on an executor of its own with `EXECUTOR_THREADS`, as `ros2 run` starts it.
"""

from __future__ import annotations

import numpy as np
import pytest
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.parameter import Parameter
from ros_harness import FakeArm, Graph, wait_until
from std_msgs.msg import Float64MultiArray, String
from trajectory_msgs.msg import JointTrajectory
from wmpo_core.robot_config import load_robot_config
from wmpo_ros.messages import LATCHED_QOS, CommandCodec
from wmpo_ros.policy_node import EXECUTOR_THREADS, PolicyNode

SIM = load_robot_config("so101_sim")
UR5E = load_robot_config("ur5e_ros2_control")


@pytest.fixture
def graph():
    g = Graph()
    yield g
    g.close()


def start(graph: Graph, config, policy: str, **params) -> tuple[FakeArm, PolicyNode]:
    arm = graph.add(FakeArm(config))
    node = graph.make(
        PolicyNode,
        threads=EXECUTOR_THREADS,  # on its own executor, as its process spins it
        robot=config.name,
        policy=policy,
        use_sim_time=True,
        autostart=False,
        **params,
    )
    wait_until(
        lambda: (
            node.count_subscribers("/clock") > 0 and arm.count_subscribers(config.topics.joint_states) > 0
        ),
        what="discovery",
    )
    commander = not params.get("dry_run")  # a dry-run node does not advertise the command topic
    wait_until(
        lambda: (
            all(arm.count_subscribers(c.topic) > 0 for c in config.cameras)
            and (arm.count_publishers(config.topics.command) > 0) == commander
        ),
        what="discovery",
    )
    arm.publish_observation()
    arm.publish_clock()
    wait_until(lambda: node.control.inputs_since(-1e9), what="first observation")
    return arm, node


def tick(arm: FakeArm, node: PolicyNode, cameras: bool = True, state: bool = True) -> np.ndarray:
    """One control tick; /clock goes out once the node has whatever observation was published."""

    def delivered(t: float) -> bool:
        stamps = node.control.input_stamps()
        state_in = stamps.pop("joint_state") >= t - 1e-6
        frames_in = min(stamps.values()) >= t - 1e-6
        return (frames_in or not cameras) and (state_in or not state)

    return arm.tick(cameras=cameras, state=state, delivered=delivered)


def tick_without_observation(
    arm: FakeArm, node: PolicyNode, cameras: bool = False, state: bool = True
) -> list[np.ndarray]:
    """A tick whose observation never comes, then the next (also without it); returns the commands
    of both. In sim time the node waits for a tick's observation (it may still be in flight) until
    the clock moves past the tick, so the first tick is answered only when the second begins."""
    before = arm.num_commands
    arm.tick(cameras=cameras, state=state, wait_command=False)
    wait_until(
        lambda: node.control.waiting_for_observation, what="the node to wait for the tick's observation"
    )
    assert arm.num_commands == before, "a tick was answered before its observation or the next tick came"
    tick(arm, node, cameras=cameras, state=state)
    wait_until(lambda: arm.num_commands >= before + 2, what="commands for both ticks")
    assert arm.num_commands == before + 2
    return [action for _, action, _ in arm.commands[before:]]


def expect(node: PolicyNode, actual: np.ndarray, desired: np.ndarray) -> None:
    np.testing.assert_allclose(
        actual, desired, err_msg=f"node counters {node.counters}, watchdog {node.control.watchdog_state}"
    )


def enable(arm: FakeArm, node: PolicyNode) -> np.ndarray:
    """Start an episode; the node serves the current tick at once. Returns that command."""
    before = arm.num_commands
    node.enable(True)
    wait_until(lambda: arm.num_commands > before, what="the first command of the episode")
    return arm.commands[-1][1]


def test_one_command_per_tick_with_chunks_and_refill(graph):
    arm, node = start(graph, SIM, "scripted:ros_harness:ConstantPolicy", refill_threshold=0)
    enable(arm, node)
    policy = node.holder.active.policy
    commands = [tick(arm, node) for _ in range(12)]
    wait_until(lambda: arm.num_commands >= 13, what="13 commands")
    assert arm.num_commands == 13  # the enable tick + 12 ticks, never two for one tick
    assert all(np.allclose(c, policy.action) for c in commands)
    # A chunk of 3 computed at tick n covers ticks n..n+2; tick n is already served when it arrives,
    # so with refill at 0 left there is one inference per 2 ticks and no tick waits for one
    # (only the episode's first tick, which has nothing queued yet).
    assert 5 <= policy.calls - 1 <= 7  # (-1: the verification probe at load)
    assert node.counters["late_ticks"] == 1
    assert node.counters["holds"] == 0


def test_watchdog_holds_within_two_periods_when_the_camera_stops(graph):
    # refill at 2 of 3: every tick has an action queued, so only the watchdog can make the node hold
    arm, node = start(graph, SIM, "scripted:ros_harness:ConstantPolicy", refill_threshold=2)
    enable(arm, node)
    moving = node.holder.active.policy.action
    for _ in range(4):
        expect(node, tick(arm, node), moving)
    # Camera stops; joint state keeps coming. One period without a frame is tolerated ...
    expect(node, tick(arm, node, cameras=False), moving)
    # ... at two periods the node holds (once the clock has moved past the tick without its frame):
    # delta dims 0, the absolute gripper keeps its last command.
    held, also_held = tick_without_observation(arm, node, cameras=False)
    expect(node, held[:3], 0.0)
    assert held[3] == pytest.approx(moving[3])
    expect(node, also_held, held)
    for _ in range(3):  # stale now: no more waiting, every tick holds at once
        expect(node, tick(arm, node, cameras=False), held)
    # Holds are marked as holds on the command topic (the recorder keeps them apart from actions).
    marks = [CommandCodec.is_hold(msg) for _, _, msg in arm.commands]
    assert marks == [False] * (len(marks) - 5) + [True] * 5
    assert node.control.watchdog_state == "stale"
    # Frames back: the policy acts again (served late, as soon as its new chunk arrives).
    expect(node, tick(arm, node), moving)
    assert node.control.watchdog_state == "ok"


def test_stale_joint_state_also_holds(graph):
    arm, node = start(graph, SIM, "scripted:ros_harness:ConstantPolicy", refill_threshold=2)
    enable(arm, node)
    tick(arm, node)
    tick(arm, node, state=False)
    for held in tick_without_observation(arm, node, cameras=True, state=False):
        np.testing.assert_allclose(held[:3], 0.0)


def test_in_sim_time_a_late_observation_is_waited_for_not_held(graph):
    """/clock can overtake the frames published before it (a busy machine): that is not a stale camera."""
    arm, node = start(graph, SIM, "scripted:ros_harness:ConstantPolicy", refill_threshold=2)
    enable(arm, node)
    moving = node.holder.active.policy.action
    expect(node, tick(arm, node), moving)
    # The clock runs ahead of the observations: one period behind is fresh enough ...
    expect(node, arm.tick(cameras=False, state=False), moving)
    # ... at two periods the node waits for the tick's observation rather than hold,
    before = arm.num_commands
    arm.tick(cameras=False, state=False, wait_command=False)
    wait_until(
        lambda: node.control.waiting_for_observation, what="the node to wait for the tick's observation"
    )
    assert arm.num_commands == before
    arm.publish_observation()  # and acts when it arrives.
    wait_until(lambda: arm.num_commands > before, what="the tick's command")
    expect(node, arm.commands[-1][1], moving)
    assert node.counters["holds"] == 0 and node.control.watchdog_state == "ok"


def test_non_finite_and_out_of_limit_actions_never_reach_the_command_topic(graph):
    arm, node = start(graph, UR5E, "scripted:ros_harness:WildPolicy", refill_threshold=0)
    raw: list[JointTrajectory] = []
    enable(arm, node)
    for _ in range(20):
        tick(arm, node)
    low = np.array([d.low for d in UR5E.action.dims])
    high = np.array([d.high for d in UR5E.action.dims])
    step = np.array([d.max_step_change for d in UR5E.action.dims])
    previous = arm.state  # the first command is rate-limited against the measured joints
    for _, action, msg in arm.commands:
        raw.append(msg)
        assert np.all(np.isfinite(action))
        assert np.all(action >= low) and np.all(action <= high)
        assert np.all(np.abs(action - previous) <= step + 1e-9)
        previous = action
    assert node.counters["dropped_non_finite"] >= 6 and node.counters["rate_limited"] >= 4
    # ros2_control: one-point JointTrajectory in config joint order, reaching it in trajectory_point_time_s
    assert all(isinstance(m, JointTrajectory) for m in raw)
    assert raw[0].joint_names == UR5E.joint_names and len(raw[0].points) == 1
    assert raw[0].points[0].time_from_start.nanosec == 100_000_000


def test_dry_run_publishes_nothing_to_the_arm_and_switches_only_between_episodes(graph):
    arm, node = start(graph, SIM, "scripted:ros_harness:ConstantPolicy", dry_run=True)
    moving = node.holder.active.policy.action
    proposed: list[Float64MultiArray] = []
    probe = graph.add(rclpy.create_node("dry_run_probe"))
    probe.create_subscription(Float64MultiArray, node.names.policy_dry_run_action, proposed.append, 10)
    wait_until(lambda: node.count_subscribers(node.names.policy_dry_run_action) > 0, what="discovery")
    # Not even advertised: the arm has no commander (nodes of one process share the graph at once).
    assert arm.count_publishers(SIM.topics.command) == 0
    node.enable(True)
    for _ in range(5):
        before = len(proposed)
        arm.tick(wait_command=False)
        wait_until(lambda before=before: len(proposed) > before, what="a dry-run action")
    assert arm.num_commands == 0
    np.testing.assert_allclose(proposed[-1].data, moving)
    # Going live mid-episode is refused: the safety filter's last command is a proposal the arm never
    # executed.
    refused = node.set_parameters([Parameter("dry_run", value=False)])[0]
    assert not refused.successful and "between episodes" in refused.reason and node.dry_run
    # Between episodes it switches; the next episode commands the arm, and nothing more goes to the dry-run
    # topic.
    node.enable(False)
    assert node.set_parameters([Parameter("dry_run", value=False)])[0].successful
    wait_until(
        lambda: node._command_pub.get_subscription_count() > 0, what="the arm to match the command publisher"
    )
    dry = len(proposed)
    node.enable(True)
    for _ in range(3):
        expect(node, tick(arm, node), moving)
    assert len(proposed) == dry
    node.enable(False)
    assert node.set_parameters([Parameter("dry_run", value=True)])[0].successful
    wait_until(lambda: arm.count_publishers(SIM.topics.command) == 0, what="the command publisher to go")


def test_new_checkpoint_is_staged_and_swapped_in_at_the_next_episode(graph, tmp_path):
    arm, node = start(graph, SIM, "hold:gripper=1.0")
    versions: list[str] = []
    probe = graph.add(rclpy.create_node("version_probe"))
    probe.create_subscription(
        String, node.names.policy_version, lambda m: versions.append(m.data), LATCHED_QOS
    )
    diagnostics: list[DiagnosticArray] = []
    probe.create_subscription(DiagnosticArray, "/diagnostics", diagnostics.append, 10)
    wait_until(lambda: versions == ["hold:gripper=1"], what="the initial version")
    enable(arm, node)
    np.testing.assert_allclose(tick(arm, node), [0, 0, 0, 1.0])

    # A bad checkpoint is refused and changes nothing.
    result = node.set_parameters([Parameter("policy", value=str(tmp_path / "missing"))])[0]
    assert not result.successful and "neither an existing checkpoint" in result.reason
    # A good one is staged: the running episode keeps its policy, the next one gets the new one.
    staged: list[str] = []
    probe.create_subscription(String, node.names.policy_staged, lambda m: staged.append(m.data), LATCHED_QOS)
    result = node.set_parameters([Parameter("policy", value="scripted:ros_harness:ConstantPolicy")])[0]
    assert result.successful
    wait_until(lambda: staged == ["constant-v1"], what="the staged version")
    np.testing.assert_allclose(tick(arm, node), [0, 0, 0, 1.0])
    assert node.holder.active.version == "hold:gripper=1" and node.holder.staged.version == "constant-v1"
    node.enable(True)
    assert node.holder.active.version == "constant-v1" and node.holder.previous.version == "hold:gripper=1"
    np.testing.assert_allclose(tick(arm, node), node.holder.active.policy.action)
    wait_until(lambda: versions[-1] == "constant-v1", what="the new version")
    wait_until(
        lambda: any(
            kv.key == "policy_version" and kv.value == "constant-v1"
            for d in diagnostics
            for s in d.status
            for kv in s.values
        ),
        timeout=5.0,
        what="diagnostics",
    )
    keys = {kv.key for kv in diagnostics[-1].status[0].values}
    assert {"inference_latency_ms_p50", "queue_depth", "watchdog", "policy_version"} <= keys


def test_enable_without_a_policy_is_refused(graph):
    arm, node = start(graph, SIM, "")
    with pytest.raises(ValueError, match="no policy loaded"):
        node.enable(True)
    arm.tick(wait_command=False)
    assert arm.num_commands == 0
