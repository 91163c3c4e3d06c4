"""The rules the policy and recorder nodes are thin ROS shells around, checked without ROS:
which chunk action serves a tick, when inputs are stale, how an episode's steps are counted,
labelled, summarised and written to the store, and which seed the sim arm resets to."""

from __future__ import annotations

import numpy as np
import pytest
from wmpo_core.episode_store import EpisodeStore, StoreError
from wmpo_core.robot_config import load_robot_config
from wmpo_ros.policy_timing import ChunkQueue, captured_at, stale_input
from wmpo_ros.recording import CadenceReport, EpisodeInProgress
from wmpo_ros.sim_seeds import SeedSequence
from wmpo_ros.step_sync import SyncedStep
from wmpo_ros.store_writer import StoreWriterThread

PERIOD = 0.1


def test_a_chunk_serves_each_tick_once_in_order_and_skips_ticks_already_past():
    queue = ChunkQueue(PERIOD)
    queue.load(10.0, np.arange(5)[:, None] * 1.0)  # actions for ticks 10.0, 10.1, ..., 10.4
    assert queue.take_for(10.0)[0] == 0.0
    assert queue.take_for(10.0) is None  # never served twice
    assert queue.take_for(10.2 + 0.04)[0] == 2.0  # within half a period; the one for 10.1 is dropped
    assert len(queue) == 2
    assert queue.take_for(9.0) is None and len(queue) == 2  # a tick before the queue takes nothing
    assert queue.take_for(11.0) is None and len(queue) == 0  # all too old
    queue.load(11.0, np.ones((3, 1)))
    queue.clear()
    assert queue.take_for(11.0) is None


def test_inputs_are_stale_at_the_watchdog_age_and_say_which():
    frames = {"front": (10.0, np.zeros(1), 0.0)}
    cams = ["front", "wrist"]
    assert stale_input(frames, (10.0, np.zeros(6)), cams, 10.0, 0.2) == "no frame from camera 'wrist' yet"
    frames["wrist"] = (10.1, np.zeros(1), 0.0)
    assert stale_input(frames, None, cams, 10.1, 0.2) == "no joint state yet"
    assert stale_input(frames, (10.1, np.zeros(6)), cams, 10.19, 0.2) is None
    assert stale_input(frames, (10.1, np.zeros(6)), cams, 10.2, 0.2) == "camera 'front' frame is 0.200 s old"
    frames["front"] = (10.2, np.zeros(1), 0.0)
    frames["wrist"] = (10.2, np.zeros(1), 0.0)
    assert stale_input(frames, (10.0, np.zeros(6)), cams, 10.2, 0.2) == "joint state is 0.200 s old"


def test_an_observation_counts_as_arrived_only_when_every_input_is_from_that_tick():
    cams = ["front", "wrist"]
    frames = {"front": (10.1, np.zeros(1), 0.0)}
    assert not captured_at(frames, (10.1, np.zeros(6)), cams, 10.1)  # the wrist frame is missing
    frames["wrist"] = (10.0, np.zeros(1), 0.0)
    assert not captured_at(frames, (10.1, np.zeros(6)), cams, 10.1)  # the wrist frame is older
    frames["wrist"] = (10.1, np.zeros(1), 0.0)
    assert captured_at(frames, (10.1, np.zeros(6)), cams, 10.1)
    assert not captured_at(frames, None, cams, 10.1)


def step(t: float, frame_t: float, hold: bool = False, settled: bool = True) -> SyncedStep:
    return SyncedStep(
        time=t, action=np.zeros(4), images={"front": np.zeros((2, 2, 3), np.uint8)},
        image_times={"front": frame_t}, state=np.zeros(6), state_time=frame_t,
        success_seen=False, settled=settled, hold=hold,
    )  # fmt: skip


def test_episode_cadence_holds_versions_and_summary():
    episode = EpisodeInProgress.begin(3, ["front"], control_rate_hz=10.0)
    episode.cadence.frames_received["front"] = 6
    firsts = [
        episode.add_step(step(1.0, 1.0), PERIOD, None),
        episode.add_step(step(1.1, 1.1, hold=True), PERIOD, "v1"),
        episode.add_step(step(1.2, 1.1), PERIOD, "v1"),  # no new frame: dropped
        episode.add_step(step(1.3, 1.1, settled=False), PERIOD, "v2"),  # 0.2 s old frame: late
    ]
    assert firsts == [True, False, False, False]
    summary, version = episode.summary("time_limit", 1, policy_source=True, announced_version="v0")
    cadence = CadenceReport(**summary["cadence"])
    assert (cadence.steps, cadence.holds, cadence.unsettled_steps, cadence.unpaired_commands) == (4, 1, 1, 1)
    assert cadence.dropped_frames == {"front": 2} and cadence.late_frames == {"front": 1}
    assert cadence.skipped_frames == {"front": 6 - 2}  # two distinct frames recorded of 6 received
    assert cadence.effective_hz == pytest.approx(10.0)
    assert summary["ended_by"] == "time_limit" and summary["hold_steps"] == [1]
    assert summary["policy_versions"] == ["v1", "v2"] and version == "v1"
    assert episode.summary("stopped", 0, policy_source=False, announced_version="v0")[1] is None
    assert "4 steps at 10.00 Hz" in cadence.line()


def test_episode_label_a_human_label_wins_over_the_env():
    episode = EpisodeInProgress.begin(0, ["front"], control_rate_hz=10.0)
    assert episode.outcome(success_available=False) == (None, None)
    episode.success_seen = True
    assert episode.outcome(success_available=True) == (True, "env")
    episode.label = (False, "human")
    assert episode.outcome(success_available=True) == (False, "human")
    # No step saw a version (the announcement came late): the announced one is the episode's.
    assert episode.summary("stopped", 0, policy_source=True, announced_version="v7")[1] == "v7"


def test_seed_sequence_advances_only_after_the_scene_was_moved():
    seeds = SeedSequence(7)
    assert [seeds.next_seed(), seeds.next_seed()] == [7, 7]  # nothing moved the scene: same start
    seeds.touch()
    assert seeds.next_seed() == 8
    seeds.touch()
    seeds.touch()
    assert [seeds.next_seed(), seeds.next_seed()] == [9, 9]
    seeds.restart(100)
    assert seeds.next_seed() == 100


class ListLog:
    def __init__(self):
        self.lines: list[tuple[str, str]] = []

    def info(self, message: str) -> None:
        self.lines.append(("info", message))

    def warning(self, message: str) -> None:
        self.lines.append(("warning", message))

    def error(self, message: str) -> None:
        self.lines.append(("error", message))


def test_store_writer_commits_in_order_survives_a_bad_step_and_never_half_commits(tmp_path):
    config = load_robot_config("so101_sim")
    store = EpisodeStore.open(tmp_path / "store", mode="a")
    log, announced = ListLog(), []
    writer = StoreWriterThread(store, config, log, announced.append)
    with pytest.raises(StoreError, match="no episode recorded yet to label"):
        writer.label_last(True)

    def sim_step(t: float, bad: bool = False) -> SyncedStep:
        frame = np.zeros((5, 5, 3) if bad else config.cameras[0].shape, np.uint8)
        return SyncedStep(
            time=t, action=np.zeros(4), images={"front": frame}, image_times={"front": t},
            state=np.zeros(6), state_time=t, success_seen=False, settled=True,
        )  # fmt: skip

    meta = {"source": "scripted", "task": config.tasks[0], "policy_version": None, "env_seed": 4}
    for index, bad_step in ((0, None), (1, 1), (2, None)):
        episode = EpisodeInProgress.begin(index, ["front"], control_rate_hz=10.0)
        writer.begin(index, meta)
        for k in range(3):
            step_k = sim_step(k * 0.1, bad=k == bad_step)
            episode.add_step(step_k, PERIOD, None)
            writer.append(index, step_k)
        extra, version = episode.summary("time_limit", 0, policy_source=False, announced_version=None)
        assert writer.commit(episode, True, "env", extra, version).wait(30)
    # An unfinished episode at shutdown is discarded; the finished ones are in the store.
    writer.begin(3, meta)
    writer.append(3, sim_step(0.0))
    assert writer.label_last(False).startswith("labelled ")
    writer.stop()
    committed = list(EpisodeStore.open(tmp_path / "store"))
    assert [m.num_steps for m in committed] == [3, 3] and [m.env_seed for m in committed] == [4, 4]
    assert [m.episode_id for m in committed] == [a["episode_id"] for a in announced]
    assert writer.last_committed["episode_id"] == announced[-1]["episode_id"]
    assert writer.last_committed["success"] is False  # the label reached the newest episode
    errors = [m for kind, m in log.lines if kind == "error"]
    assert errors[0].startswith("episode store write (append) failed")
    assert errors[1] == "episode #1 not committed: an earlier write failed (see above)"
