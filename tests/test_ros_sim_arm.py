"""The sim arm node with a tiny gymnasium env plugged in through a robot config alone.

Checks the node's contract without MuJoCo: seeds and reset, one simulated step (and one /clock
period) per command in lockstep and none without one however long it takes (the observation is
re-published unchanged while the sim waits), joint state / frames / success topics.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import rclpy
from rclpy.qos import qos_profile_sensor_data
from ros_harness import Graph, tiny_reach_config, wait_until
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, Float64MultiArray, Int64
from std_srvs.srv import Trigger
from wmpo_ros.messages import LATCHED_QOS, STATE_QOS, stamp_to_seconds
from wmpo_ros.sim_arm_node import SimArmNode


class Probe:
    def __init__(self, graph: Graph):
        self.node = graph.add(rclpy.create_node("sim_probe"))
        self.lock = threading.Lock()
        self.states: list[JointState] = []
        self.images: list[Image] = []
        self.success: list[bool] = []
        self.seeds: list[int] = []
        self.clock: list[float] = []
        n = self.node
        n.create_subscription(JointState, "/tiny/joint_states", self._add(self.states), STATE_QOS)
        n.create_subscription(
            Image, "/tiny/cam", self._add(self.images), qos_profile_sensor_data
        )  # a reliable one would get nothing
        n.create_subscription(Bool, "/tiny/sim/success", lambda m: self._add(self.success)(m.data), STATE_QOS)
        n.create_subscription(
            Int64, "/tiny/sim/env_seed", lambda m: self._add(self.seeds)(m.data), LATCHED_QOS
        )
        n.create_subscription(Clock, "/clock", lambda m: self._add(self.clock)(stamp_to_seconds(m.clock)), 10)
        self.command = n.create_publisher(Float64MultiArray, "/tiny/command", STATE_QOS)
        self.reset_client = n.create_client(Trigger, "/tiny/sim/reset")

    def _add(self, target: list):
        def add(value):
            with self.lock:
                target.append(value)

        return add

    def reset(self) -> str:
        assert self.reset_client.wait_for_service(timeout_sec=20.0)
        future = self.reset_client.call_async(Trigger.Request())
        wait_until(future.done, what="the reset response")
        assert future.result().success
        return future.result().message

    def step(self, action) -> JointState:
        """Send one command; returns the joint state of the step it caused: the first one stamped
        later than every state seen before (while it waits for a command the sim re-publishes the
        current state unchanged, and on a loaded machine such a copy can arrive after our command)."""
        with self.lock:
            last = max((stamp_to_seconds(s.header.stamp) for s in self.states), default=float("-inf"))
        self.command.publish(Float64MultiArray(data=[float(a) for a in action]))

        def stepped() -> JointState | None:
            with self.lock:
                return next((s for s in self.states if stamp_to_seconds(s.header.stamp) > last + 1e-9), None)

        wait_until(lambda: stepped() is not None, what="the joint state of the commanded step")
        return stepped()


@pytest.fixture
def sim(tmp_path):
    graph = Graph()
    config = tiny_reach_config(tmp_path)
    probe = Probe(graph)
    node = graph.make(SimArmNode, robot=config, seed=5, real_time_factor=0.0)
    wait_until(
        lambda: node.count_subscribers("/tiny/command") > 0 and probe.command.get_subscription_count() > 0,
        what="discovery",
    )
    yield graph, node, probe
    graph.close()


def test_seed_sequence_and_reset(sim):
    _graph, _node, probe = sim
    assert probe.reset() == "seed 5"
    assert probe.reset() == "seed 5"  # nothing moved the scene: it keeps its seed
    wait_until(lambda: probe.seeds and probe.seeds[-1] == 5, what="the seed topic")
    probe.step([0.5, 1.0])
    assert probe.reset() == "seed 6"
    x0 = probe.states[-1].position[0]
    probe.step([0.5, 1.0])
    assert probe.reset() == "seed 7" and probe.states[-1].position[0] != pytest.approx(x0)


def test_lockstep_one_step_and_one_period_per_command_and_none_without_one(sim):
    _graph, node, probe = sim
    probe.reset()
    before = len(probe.states)
    # Before the first command the sim waits: the scene is re-published unchanged, time stands still.
    wait_until(lambda: len(probe.states) >= before + 3, what="re-publication while waiting")
    assert (
        len({(s.position[0], stamp_to_seconds(s.header.stamp)) for s in probe.states[-3:]}) == 1
        and node.steps == 0
    )

    x, t = probe.states[-1].position[0], stamp_to_seconds(probe.states[-1].header.stamp)
    for _ in range(5):
        state = probe.step([1.0, 0.25])
        assert state.position[0] == pytest.approx(x + 0.1) and state.position[1] == pytest.approx(0.25)
        assert stamp_to_seconds(state.header.stamp) == pytest.approx(
            t + 0.1, abs=1e-6
        )  # one control period of sim time per step
        x, t = state.position[0], stamp_to_seconds(state.header.stamp)
    assert node.steps == 5
    wait_until(lambda: probe.clock[-1] >= t - 1e-6, what="/clock")

    # Commands stop: no step, however long; the last observation goes out again with its own stamp.
    republished = node.republished
    wait_until(lambda: node.republished >= republished + 3, what="re-publication while waiting")
    assert node.steps == 5
    assert probe.states[-1].position[0] == pytest.approx(x) and stamp_to_seconds(
        probe.states[-1].header.stamp
    ) == pytest.approx(t, abs=1e-6)
    assert max(probe.clock) == pytest.approx(t, abs=1e-6)
    # A burst of commands: each is one step, in order.
    before = len(probe.states)
    for dx in (1.0, -1.0, 0.5):
        probe.command.publish(Float64MultiArray(data=[dx, 0.25]))
    wait_until(lambda: node.steps == 8, what="three steps")

    def stepped() -> list[tuple[float, float]]:  # states of the three new steps, as received so far
        with probe.lock:
            return sorted(
                {
                    (stamp_to_seconds(s.header.stamp), s.position[0])
                    for s in probe.states[before:]
                    if stamp_to_seconds(s.header.stamp) > t + 1e-9
                }
            )

    wait_until(lambda: len(stepped()) == 3, what="the states of the three steps")
    np.testing.assert_allclose([p for _, p in stepped()], [x + 0.1, x, x + 0.05], atol=1e-9)


def test_frames_and_success(sim):
    _graph, _node, probe = sim
    probe.reset()
    for _ in range(12):
        probe.step([1.0, 1.0])
        if probe.states[-1].position[0] > 0.5:
            break
    wait_until(lambda: probe.success and probe.success[-1], what="success")
    image = probe.images[-1]
    assert (image.height, image.width, image.encoding, image.header.frame_id) == (
        16,
        16,
        "rgb8",
        "cam_camera_optical_frame",
    )
    assert list(probe.states[-1].name) == ["x", "grip"]


def test_sim_arm_refuses_to_run_on_sim_time(tmp_path):
    graph = Graph()
    try:
        with pytest.raises(ValueError, match="publishes /clock"):
            graph.make(SimArmNode, robot=tiny_reach_config(tmp_path), use_sim_time=True)
    finally:
        graph.close()
