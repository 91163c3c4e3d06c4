"""The recorder node over real DDS into a real Zarr store: steps, metadata, episode ends, discard.

A `FakeArm` plays the arm and owns the clock; the test publishes the commands itself (standing in
for a teleop device or policy node), so every recorded step can be checked against what was sent.
Dry runs (nothing recorded) run the whole deploy graph on the tiny gym env's sim arm.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import rclpy
from rclpy.parameter import Parameter
from ros_harness import FakeArm, Graph, tiny_reach_config, wait_until
from std_msgs.msg import String
from wmpo_core.cli import main as wmpo
from wmpo_core.episode_store import EpisodeStore
from wmpo_core.robot_config import load_robot_config
from wmpo_ros.messages import STATE_QOS, CommandCodec
from wmpo_ros.record_keys import RecordKeys
from wmpo_ros.recorder_node import RecorderNode
from wmpo_ros.session import RobotSession

SIM = load_robot_config("so101_sim")


class Commander:
    """Publishes commands on the arm's command topic, like a teleop node would."""

    def __init__(self, graph: Graph):
        self.node = graph.add(rclpy.create_node("test_commander"))
        self.codec = CommandCodec(SIM)
        self.pub = self.node.create_publisher(self.codec.msg_type, SIM.topics.command, STATE_QOS)
        self.episodes: list[dict] = []
        self.node.create_subscription(
            String, "/so101/recorder/episodes", lambda m: self.episodes.append(json.loads(m.data)), 10
        )

    def send(self, action, hold: bool = False) -> None:
        self.pub.publish(self.codec.encode(np.asarray(action, dtype=np.float64), hold=hold))


@pytest.fixture
def graph():
    g = Graph()
    yield g
    g.close()


def setup(graph: Graph, tmp_path, **params):
    arm = graph.add(FakeArm(SIM))
    recorder = graph.make(
        RecorderNode, robot="so101_sim", store=str(tmp_path / "store"), use_sim_time=True, **params
    )
    commander = Commander(graph)
    topics = [
        SIM.topics.joint_states,
        SIM.cameras[0].topic,
        SIM.topics.command,
        "/clock",
        "/so101/sim/success",
    ]
    wait_until(
        lambda: all(recorder.count_publishers(t) > 0 for t in topics),
        what="the recorder to discover every publisher",
    )
    wait_until(
        lambda: (
            commander.pub.get_subscription_count() > 0 and arm.count_subscribers(SIM.cameras[0].topic) > 0
        ),
        what="discovery",
    )

    def received() -> bool:  # discovery is done when data flows: the first best-effort samples may be dropped
        arm.publish_observation()
        arm.publish_clock()
        return bool(recorder._sync._frames["front"].sent) and bool(recorder._sync._state.sent)

    wait_until(received, what="the first observation at the recorder")
    return arm, recorder, commander


def run_steps(
    arm: FakeArm,
    recorder: RecorderNode,
    commander: Commander,
    n: int,
    success_at: int | None = None,
    skip_frame_at: int | None = None,
    holds: tuple[int, ...] = (),
) -> list[np.ndarray]:
    """n control steps: observation + clock, then a command answering it. Returns the commands."""
    sent = []
    for i in range(n):
        arm.tick(
            cameras=i != skip_frame_at,
            success=(i == success_at) if success_at is not None else False,
            wait_command=False,
        )
        # Answer at once, without waiting for anything to arrive anywhere: pairing goes by publication order.
        action = np.array([0.1 * i, -0.1, 0.2, 1.0 if i % 2 else 0.0])
        commander.send(action, hold=i in holds)
        sent.append(action)
        # A camera has a finite rate: do not burst more frames than the subscription's queue holds.
        if i != skip_frame_at:
            wait_until(
                lambda: recorder._sync._frames["front"].items[-1][0] >= arm.now_ns * 1e-9 - 1e-6,
                what="the frame",
            )
    return sent


def test_episodes_are_recorded_with_synchronized_steps_and_metadata(graph, tmp_path):
    arm, recorder, commander = setup(graph, tmp_path, source="scripted")
    arm.publish_instruction("lift the red cube")
    for episode in range(2):
        arm.publish_seed(100 + episode)
        wait_until(lambda e=episode: recorder._env_seed == 100 + e, what="the seed")
        recorder.start()
        first_frame = arm.frame_value + 1
        sent = run_steps(arm, recorder, commander, 6)
        wait_until(
            lambda: recorder._episode is not None and recorder._episode.steps == 6, what="6 recorded steps"
        )
        meta = recorder.stop()
        assert meta["num_steps"] == 6
        store = EpisodeStore.open(tmp_path / "store")
        m = store.meta(meta["episode_id"])
        assert (m.source, m.task, m.env_seed, m.robot_config_name) == (
            "scripted",
            "lift the red cube",
            100 + episode,
            "so101_sim",
        )
        assert m.robot_config_hash == SIM.content_hash and m.policy_version is None
        assert (
            m.success is False and m.success_labeled_by == "env"
        )  # the sim's signal was available and never true
        reader = store.episode(m.episode_id)
        np.testing.assert_allclose(reader.action(), np.stack(sent), atol=1e-6)
        frames = reader.frames("front")
        assert frames.shape == (6, 128, 128, 3)
        assert [int(f[0, 0, 0]) for f in frames] == list(
            range(first_frame, first_frame + 6)
        )  # frame i <-> command i
        np.testing.assert_allclose(reader.image_time("front"), reader.time())  # capture stamps, sim time
        assert np.allclose(np.diff(reader.time()), SIM.control_period_s)
        cadence = m.extra["cadence"]
        assert cadence["effective_hz"] == pytest.approx(10.0) and cadence["dropped_frames"] == {"front": 0}
    assert len(EpisodeStore.open(tmp_path / "store")) == 2


def test_success_ends_the_episode_and_a_dropped_frame_is_reported(graph, tmp_path):
    arm, recorder, commander = setup(graph, tmp_path, source="teleop")
    recorder.start()
    run_steps(arm, recorder, commander, 6, success_at=4, skip_frame_at=2)
    wait_until(lambda: len(commander.episodes) == 1, what="the episode to end on success")
    meta = commander.episodes[0]
    assert meta["num_steps"] == 5 and meta["success"] is True and meta["success_labeled_by"] == "env"
    assert meta["extra"]["ended_by"] == "success"
    assert meta["extra"]["cadence"]["dropped_frames"] == {"front": 1}  # step 2 had to reuse frame 1
    assert not recorder.recording


def test_time_limit_ends_the_episode_and_holds_are_recorded_as_holds(graph, tmp_path):
    arm, recorder, commander = setup(graph, tmp_path, max_steps=4)
    recorder.start()
    sent = run_steps(arm, recorder, commander, 6, holds=(1, 2))
    wait_until(lambda: len(commander.episodes) == 1, what="the episode to end at the limit")
    meta = commander.episodes[0]
    assert meta["num_steps"] == 4 and meta["extra"]["ended_by"] == "time_limit"
    # What the arm was told is recorded, and which steps the commander did not choose is said.
    assert meta["extra"]["hold_steps"] == [1, 2] and meta["extra"]["cadence"]["holds"] == 2
    np.testing.assert_allclose(
        EpisodeStore.open(tmp_path / "store").episode(meta["episode_id"]).action(),
        np.stack(sent[:4]),
        atol=1e-6,
    )


def test_the_source_may_change_between_episodes_but_not_during_one(graph, tmp_path):
    arm, recorder, commander = setup(graph, tmp_path, source="scripted", max_steps=2)
    recorder.start()
    refused = recorder.set_parameters([Parameter("source", value="policy")])[0]
    assert not refused.successful and "while recording" in refused.reason
    run_steps(arm, recorder, commander, 2)
    wait_until(lambda: len(commander.episodes) == 1, what="the first episode")
    assert recorder.set_parameters([Parameter("source", value="policy")])[0].successful
    assert not recorder.set_parameters([Parameter("source", value="robot")])[0].successful
    recorder.start()
    run_steps(arm, recorder, commander, 2)
    wait_until(lambda: len(commander.episodes) == 2, what="the second episode")
    assert [e["source"] for e in commander.episodes] == ["scripted", "policy"]


def test_discard_removes_nothing_already_committed(graph, tmp_path):
    arm, recorder, commander = setup(graph, tmp_path)
    recorder.start()
    run_steps(arm, recorder, commander, 3)
    wait_until(lambda: recorder._episode.steps == 3, what="3 steps")
    kept = recorder.stop()["episode_id"]
    before = sorted(p.name for p in (tmp_path / "store" / "episodes" / kept).rglob("*"))
    recorder.start()
    run_steps(arm, recorder, commander, 3)
    wait_until(lambda: recorder._episode.steps == 3, what="3 steps")
    recorder.discard()
    with pytest.raises(Exception, match="nothing to discard"):
        recorder.discard()  # a second discard must not reach for the committed episode
    store = EpisodeStore.open(tmp_path / "store")
    assert store.episode_ids == [kept]
    assert sorted(p.name for p in (tmp_path / "store" / "episodes" / kept).rglob("*")) == before
    assert store.episode(kept).action().shape == (3, 4)
    wait_until(lambda: not any((tmp_path / "store" / ".staging").iterdir()), what="staging to be cleaned")


def test_keyboard_helper_drives_the_services_and_labels(graph, tmp_path):
    arm, recorder, commander = setup(graph, tmp_path)
    keys = graph.make(RecordKeys, robot="so101_sim")
    assert "recording episode #0" in keys.press("s")
    run_steps(arm, recorder, commander, 3)
    wait_until(lambda: recorder._episode.steps == 3, what="3 steps")
    committed = json.loads(keys.press("e"))
    assert committed["num_steps"] == 3 and committed["success"] is False
    assert "labelled" in keys.press("y")
    meta = EpisodeStore.open(tmp_path / "store").meta(committed["episode_id"])
    assert meta.success is True and meta.success_labeled_by == "human"
    assert "not recording" in keys.press("d")
    assert keys.press("x").startswith("unknown key")


def test_a_stopped_episode_survives_an_immediate_shutdown(graph, tmp_path):
    arm, recorder, commander = setup(graph, tmp_path)
    recorder.start()
    run_steps(arm, recorder, commander, 4)
    wait_until(lambda: recorder._episode.steps == 4, what="4 steps")
    with recorder._lock:
        done = recorder._end_locked("stopped")  # what the stop service does, without waiting for the write
    recorder.start()
    run_steps(arm, recorder, commander, 2)  # an unfinished episode: discarded at shutdown
    graph.remove(recorder)  # shutdown drains the writer queue first
    assert done.is_set()
    store = EpisodeStore.open(tmp_path / "store")
    assert [m.num_steps for m in store] == [4]


# Before dry runs ended at the time limit, the runner waited for a commit that never came and failed
# only after max_steps * STEP_STALL_S + 120 s: these bounds fail that behaviour.
@pytest.mark.timeout(90)
def test_a_dry_run_moves_nothing_records_nothing_and_ends_each_episode_at_the_time_limit(tmp_path):
    config = tiny_reach_config(tmp_path)
    store = tmp_path / "rollouts"
    with RobotSession(
        config, store=store, policy="scripted:ros_harness:ConstantPolicy", dry_run=True, max_steps=10
    ) as robot:
        assert robot.dry_run
        summaries = robot.run_episodes(2, progress=False)
        sim, policy = robot._node("sim_arm"), robot._node("policy_node")
        # No commander on the arm's command topic at all, so the lockstep sim ran on the wall clock,
        # holding the scene (a real arm that is told nothing): not one simulated step.
        assert sim.count_publishers(robot.config.topics.command) == 0 and sim.steps == 0
        proposed = policy.counters["commands"]
        assert robot.recorded == []
    assert [(s["dry_run"], s["episode_id"], s["ended_by"], s["policy_version"]) for s in summaries] == [
        (True, None, "time_limit", "constant-v1")
    ] * 2
    # One action per control tick of the 10-step time limit (plus the tick the limit is reached on,
    # served before the runner stops the policy), all of them on the dry-run topic only.
    assert proposed >= sum(s["num_steps"] for s in summaries) >= 2 and all(
        s["num_steps"] <= 11 for s in summaries
    )
    assert len(EpisodeStore.open(store)) == 0


@pytest.mark.timeout(90)
def test_wmpo_deploy_dry_run_finishes_its_episodes_and_says_nothing_was_recorded(tmp_path, capsys):
    config = tiny_reach_config(tmp_path)
    store = tmp_path / "rollouts"
    rc = wmpo(["deploy", "--robot", config, "--policy", "scripted:ros_harness:ConstantPolicy",
               "--dry-run", "--episodes", "2",
               "--max-steps", "5", "--store", str(store)])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 0, err
    assert (
        "dry run: 2 episodes" in err
        and "none sent to the arm; nothing recorded" in err
        and "recorded 2 episodes" not in err
    )
    assert len(EpisodeStore.open(store)) == 0
