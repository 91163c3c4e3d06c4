"""Robot graphs on one host never cross: each simulated graph gets a DDS domain of its own, and
nodes ignore events that are not from their own graph.

Real `wmpo teleop` processes (MuJoCo sim arm, scripted teleop, recorder over DDS, real Zarr
stores), a real `RobotSession` with its sync node and a real `wmpo serve` on loopback.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from service_harness import TOKEN, start_learner
from std_msgs.msg import String
from std_srvs.srv import Trigger
from wmpo_core.episode_store import EpisodeStore
from wmpo_core.robot_config import load_robot_config
from wmpo_ros.isolation import isolate_graph, parse_domain
from wmpo_ros.names import graph_names
from wmpo_ros.session import RobotSession

ROBOT = "so101_sim_near"
CONFIG = load_robot_config(ROBOT)
STEPS = 12  # the scripted expert needs ~37 steps: every episode ends at this time limit
EPISODES = 3


def teleop(store: Path, seed: int) -> subprocess.Popen:
    """`wmpo teleop` as a user runs it: no ROS_DOMAIN_ID, no discovery range in the environment."""
    env = {k: v for k, v in os.environ.items() if k not in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE")}
    return subprocess.Popen(
        [sys.executable, "-m", "wmpo_core.cli", "teleop", "--robot", ROBOT, "--episodes", str(EPISODES),
         "--max-steps", str(STEPS),
         "--seed", str(seed), "--store", str(store)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip


def test_two_simulated_graphs_side_by_side_record_only_their_own_episodes(tmp_path: Path) -> None:
    stores = {0: tmp_path / "a.zarr", 100: tmp_path / "b.zarr"}
    procs = {seed: teleop(store, seed) for seed, store in stores.items()}  # both graphs up at once
    outputs = {seed: proc.communicate(timeout=400)[0] for seed, proc in procs.items()}
    for seed, proc in procs.items():
        assert proc.returncode == 0, outputs[seed][-3000:]
    domains = []
    for out in outputs.values():
        (line,) = [x for x in out.splitlines() if x.startswith("ROS 2 graph: domain")]
        assert "(picked free on this host), discovery LOCALHOST" in line, line
        domains.append(int(line.split()[4]))
    assert domains[0] != domains[1]

    ids = {}
    for seed, path in stores.items():
        store = EpisodeStore.open(path)
        metas = sorted(store, key=lambda m: m.start_time)
        ids[seed] = {m.episode_id for m in metas}
        assert len(metas) == EPISODES
        assert [m.env_seed for m in metas] == [seed, seed + 1, seed + 2]  # this graph's sim, nobody else's
        period = CONFIG.control_period_s
        for m in metas:
            assert m.num_steps == STEPS and m.extra["ended_by"] == "time_limit" and m.source == "scripted"
            assert m.extra["cadence"]["unpaired_commands"] == 0
            episode = store.episode(m.episode_id)
            t = episode.time()
            np.testing.assert_allclose(np.diff(t), period, atol=1e-6)
            assert t[0] == m.start_time
            # Every frame and joint state was captured during its own episode, on its own clock.
            for stamps in (episode.image_time("front"), episode.state_time()):
                assert np.all(stamps >= t[0] - period - 1e-6) and np.all(stamps <= t), (
                    m.episode_id,
                    stamps - t,
                )
    assert not ids[0] & ids[100]


def test_ros_domain_values_and_defaults(monkeypatch) -> None:
    assert parse_domain("auto") == "auto" and parse_domain("env") == "env" and parse_domain("42") == 42
    for bad in ("-1", "233", "seven"):
        with pytest.raises(ValueError, match="--ros-domain"):
            parse_domain(bad)
    monkeypatch.delenv("ROS_DOMAIN_ID")
    monkeypatch.delenv("ROS_AUTOMATIC_DISCOVERY_RANGE")
    real = isolate_graph(None, sim=False)  # a real arm keeps the user's environment
    assert real.domain_id is None and "ROS_AUTOMATIC_DISCOVERY_RANGE" not in os.environ
    first, second = isolate_graph(None, sim=True), isolate_graph("auto", sim=False)
    assert first.domain_id != second.domain_id and os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"
    first.release()
    assert (
        isolate_graph(first.domain_id, sim=True).domain_id == first.domain_id
    )  # an explicit id, no lease needed
    second.release()
    monkeypatch.setenv("ROS_DOMAIN_ID", "seven")
    with pytest.raises(ValueError, match=re.escape("ROS_DOMAIN_ID must be a domain id 0..232, got 'seven'")):
        isolate_graph(None, sim=True)


class ForeignGraph:
    """Another robot graph's nodes on the same domain: it announces its own episodes and its
    episode runner calls the recorder's start service."""

    def __init__(self, domain_id: int):
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.node = Node("foreign_runner", context=self.context)
        names = graph_names(CONFIG)
        self.announcer = self.node.create_publisher(String, names.recorder_episodes, 10)
        self.start = self.node.create_client(Trigger, names.recorder_start)

    def announce(self, episode_id: str) -> None:
        self.announcer.publish(
            String(data=json.dumps({"episode_id": episode_id, "num_steps": 1, "success": True}))
        )

    def announce_until(self, episode_id: str, done: threading.Event) -> None:
        while not done.wait(0.05):
            self.announce(episode_id)

    def call_start(self) -> str:
        assert self.start.wait_for_service(timeout_sec=30.0)
        future = self.start.call_async(Trigger.Request())
        executor = SingleThreadedExecutor(context=self.context)
        executor.add_node(self.node)
        executor.spin_until_future_complete(future, timeout_sec=30.0)
        executor.shutdown()
        return future.result().message

    def close(self) -> None:
        self.node.destroy_node()
        self.context.try_shutdown()


def test_foreign_announcements_and_recorder_starts_do_not_reach_this_graph(tmp_path: Path, capfd) -> None:
    learner = start_learner(tmp_path / "learner")
    token = tmp_path / "token"
    token.write_text(TOKEN)
    foreign_id = "ep_20260101T000000000Z_deadbeef"
    try:
        with RobotSession(
            "so101_sim", store=tmp_path / "robot.zarr", learner_url=learner.url, token_file=token, max_steps=4
        ) as robot:
            assert robot.isolation.domain_id == int(
                os.environ["ROS_DOMAIN_ID"]
            )  # an explicit ROS_DOMAIN_ID is respected
            foreign = ForeignGraph(robot.isolation.domain_id)
            try:
                seen = threading.Event()
                robot._node("sync_node").create_subscription(
                    String, robot.names.recorder_episodes, lambda _: seen.set(), 10
                )
                while not seen.is_set():  # until the graph has heard it at least once
                    foreign.announce(foreign_id)
                    seen.wait(0.2)
                assert foreign.call_start().startswith(
                    "recording"
                )  # the other graph's runner started our recorder
                done = threading.Event()
                chatter = threading.Thread(target=foreign.announce_until, args=(foreign_id, done))
                chatter.start()  # and the other graph keeps committing while ours records
                try:
                    metas = robot.teleop(2)
                finally:
                    done.set()
                    chatter.join()
            finally:
                foreign.close()
            robot.wait_uploaded(timeout_s=120)
            assert robot._node("sync_node").outbox.entry(foreign_id) is None
        assert len(metas) == 2 and all(m["num_steps"] == 4 for m in metas)
        with EpisodeStore.open(tmp_path / "robot.zarr") as store:
            assert sorted(store.episode_ids) == sorted(m["episode_id"] for m in metas)
        with EpisodeStore.open(learner.store) as learned:
            assert sorted(learned.episode_ids) == sorted(m["episode_id"] for m in metas)
    finally:
        learner.stop()
    err = capfd.readouterr().err
    assert f"ignoring episode {foreign_id}" in err  # the episode runner's and the sync node's own lines
    assert "only this robot's episodes are uploaded" in err
    assert "an episode this runner did not start (another graph on this ROS network?); discarded it" in err
    assert "Traceback" not in err and "InvalidHandle" not in err


def test_a_node_removed_mid_session_leaves_the_rest_running_and_nothing_on_stderr(
    tmp_path: Path, capfd
) -> None:
    """teleop() then a dry run: the teleop node (a commander the lockstep sim would wait for) is
    destroyed between episodes while the graph runs on; the session still ends cleanly. The policy
    node has an executor of its own, which pauses and resumes with the graph."""
    with RobotSession("so101_sim", store=tmp_path / "robot.zarr",
                      policy="scripted:ros_harness:ConstantPolicy", dry_run=True,
                      max_steps=3) as robot:  # fmt: skip
        (demo,) = robot.teleop(1, progress=False)
        assert robot._node("teleop") is not None
        graph = robot._graph  # the policy node spins on one thread of its own, as in its own process
        own = graph.executors["policy_node"]
        assert own is not graph.shared and own.threads == 1 and graph.executors["teleop"] is graph.shared
        with robot.paused():  # the learner trains: every executor of the graph stops ...
            assert not own.spinning and not graph.shared.spinning
        assert own.spinning and graph.shared.spinning  # ... and goes on afterwards
        (summary,) = robot.run_episodes(1, progress=False)
        assert robot._node("teleop") is None and robot._node("policy_node") is not None
    assert demo["num_steps"] == 3 and summary["dry_run"] and summary["num_steps"] >= 3
    err = capfd.readouterr().err
    assert "Traceback" not in err and "InvalidHandle" not in err
