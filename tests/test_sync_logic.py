"""The rules the sync node is a thin ROS shell around, checked without ROS: the policy node's
load outcomes it waits for (and the specs refused before any load), a deployed version's manifest
check, the policy-update loop (stage once, reject and delete, retry with backoff), which
deployments need staging, which cached versions are pruned, the status and its
/diagnostics summary, and which episodes are this robot's to upload (a real store, a real outbox
and, for the upload itself, a real learner service over HTTP)."""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import replace

import numpy as np
import pytest
from service_harness import TOKEN, start_learner
from wmpo_core.episode_store import EpisodeStore
from wmpo_core.protocol.models import Deployment
from wmpo_core.robot_config import load_robot_config
from wmpo_ros.deployment_follower import DeploymentFollower, RetryLater
from wmpo_ros.learner_client import LearnerClient, LearnerUnavailable
from wmpo_ros.outbox import Backoff, Outbox, PermanentUploadError
from wmpo_ros.own_episodes import OwnEpisodes, announced_episode_id
from wmpo_ros.policy_loads import LoadOutcome, LoadWaiter, spec_refusal
from wmpo_ros.policy_versions import VersionRejected, check_manifest, settled_state, versions_to_prune
from wmpo_ros.sync_status import Rejection, SyncStatus

ROBOT = load_robot_config("so101_sim")


def write_manifest(path, **manifest) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "manifest.json").write_text(json.dumps(manifest))


def test_a_manifest_must_name_the_deployed_version_and_exactly_this_robot_config(tmp_path):
    check_manifest(tmp_path / "lerobot", "v1", ROBOT)  # no manifest: the loader checks it
    robot = {"name": ROBOT.name, "content_hash": ROBOT.content_hash}
    write_manifest(tmp_path / "ok", version="v1", robot=robot)
    check_manifest(tmp_path / "ok", "v1", ROBOT)
    cases = {
        "renamed": ({"version": "v0", "robot": robot}, "calls itself 'v0' but was deployed as 'v1'"),
        "other_robot": (
            {"robot": {**robot, "name": "so101_real"}},
            f"trained for robot config 'so101_real', this robot is '{ROBOT.name}'",
        ),
        "edited_config": (
            {"robot": {**robot, "content_hash": "0" * 8}},
            f"different version of robot config '{ROBOT.name}' \\(00000000",
        ),
    }
    for name, (manifest, reason) in cases.items():
        write_manifest(tmp_path / name, **manifest)
        with pytest.raises(VersionRejected, match=reason):
            check_manifest(tmp_path / name, "v1", ROBOT)
    (tmp_path / "list").mkdir()
    (tmp_path / "list" / "manifest.json").write_text("[]")
    with pytest.raises(VersionRejected, match=r"manifest\.json is not a JSON object"):
        check_manifest(tmp_path / "list", "v1", ROBOT)
    (tmp_path / "list" / "manifest.json").write_text("{")
    with pytest.raises(VersionRejected, match=r"manifest\.json is unreadable"):
        check_manifest(tmp_path / "list", "v1", ROBOT)


def test_a_deployment_already_running_or_staged_is_not_staged_again():
    assert settled_state("v2", active="v2", staged=None) == "running"
    assert settled_state("v2", active="v2", staged="v2") == "running"
    assert settled_state("v3", active="v2", staged="v3") == "staged"
    assert settled_state("v3", active="v2", staged="v2") is None  # new: stage it
    assert settled_state("v3", active=None, staged=None) is None
    # Back to the running version while another waits staged: stage the running one again.
    assert settled_state("v2", active="v2", staged="v3") is None


def test_the_cache_keeps_the_newest_versions_and_never_the_staged_or_running_one(tmp_path):
    for age, name in enumerate(["v5", "v4", "v3", "v2", "v1"]):  # v1 oldest
        (tmp_path / name).mkdir()
        os.utime(tmp_path / name, (1000.0 - age, 1000.0 - age))
    (tmp_path / ".v6.download").mkdir()  # a download in progress
    (tmp_path / "stray.txt").write_text("")
    pruned = versions_to_prune(tmp_path, {"v5", "v2"}, keep_versions=2)
    assert [p.name for p in pruned] == ["v1", "v3"]  # oldest first; v2 runs, v4/v5 are the newest
    assert versions_to_prune(tmp_path, {"v5", None}, keep_versions=5) == []


def test_the_status_becomes_running_when_the_staged_deployment_goes_active():
    status = SyncStatus("http://learner", state="staged", deployed_version="v2", active_version="v1")
    assert status.on_active("v2") == {"active_version": "v2", "state": "running"}
    assert status.on_active("v1") == {"active_version": "v1"}
    assert status.on_active("") == {"active_version": None}
    waiting = SyncStatus("http://learner", state="downloading", deployed_version="v2")
    assert waiting.on_active("v2") == {"active_version": "v2"}  # not staged by us (yet)
    # The episode began (v2 announced active) between the policy node's staged message and the sync
    # node's confirmation: the confirmation finds v2 already running and says so.
    loading = SyncStatus("http://learner", state="loading", deployed_version="v2", active_version="v1")
    after_active = replace(loading, **loading.on_active("v2"))
    assert after_active.state == "loading"
    assert after_active.on_staged("v2") == {"state": "running"}
    assert loading.on_staged("v2") == {"state": "staged"}


def test_diagnostics_say_error_on_a_rejection_warn_when_the_learner_is_away_ok_otherwise():
    ok = SyncStatus("http://learner", learner_reachable=True, state="running", active_version="v1")
    assert ok.health() == ("OK", "running")
    values = ok.diagnostic_values()
    assert values["active_version"] == "v1" and values["deployed_version"] == ""
    assert values["learner_reachable"] == "True" and values["last_rejection"] == ""
    away = SyncStatus("http://learner", learner_reachable=False, state="retrying", message="down; retrying")
    assert away.health() == ("WARN", "down; retrying")
    parked = SyncStatus("http://learner", outbox={"pending": 0, "sent": 3, "parked": 1})
    assert parked.health() == ("WARN", "learner unreachable")
    assert parked.diagnostic_values()["outbox_parked"] == "1"
    rejected = SyncStatus(
        "http://learner",
        learner_reachable=False,
        state="rejected",
        deployed_version="v3",
        active_version="v2",
        last_rejection=Rejection("v3", "bad weights", 0.0),
    )
    assert rejected.health() == ("ERROR", "deployed version v3 rejected; running v2")
    assert rejected.diagnostic_values()["last_rejected_version"] == "v3"
    assert rejected.diagnostic_values()["last_rejection"] == "bad weights"


def test_announcements_name_an_episode_or_fail_loudly():
    assert announced_episode_id('{"episode_id": "ep-1", "steps": 3}') == "ep-1"
    for bad, error in (("not json", ValueError), ("{}", KeyError), ("[1]", TypeError)):
        with pytest.raises(error):
            announced_episode_id(bad)


def test_only_this_robots_stored_episodes_are_queued_and_uploaded(tmp_path, write_episode_store):
    frames = np.zeros((3, 128, 128, 3), np.uint8)
    store_path, outbox = tmp_path / "robot.zarr", Outbox(tmp_path / "outbox.sqlite")
    learner = start_learner(tmp_path / "learner")
    client = LearnerClient(learner.url, TOKEN)
    episodes = OwnEpisodes(store_path, client)
    try:
        # Before the recorder created the store: nothing is this robot's, nothing can be sent.
        assert not episodes.holds("ep-a") and episodes.enqueue_stored(outbox) == []
        with pytest.raises(PermanentUploadError, match=f"there is no local store at {store_path}"):
            episodes.upload("ep-a")
        write_episode_store(store_path, [{"frames": frames, "episode_id": "ep-a"}])
        assert episodes.holds("ep-a") and not episodes.holds("ep-foreign")
        assert episodes.enqueue_stored(outbox) == ["ep-a"]
        assert episodes.enqueue_stored(outbox) == []  # already queued
        # Committed after the store was opened (the recorder's next episode): found on a refresh.
        write_episode_store(store_path, [{"frames": frames, "episode_id": "ep-b"}])
        assert episodes.holds("ep-b")
        assert episodes.upload("ep-b") == "stored"
        with EpisodeStore.open(learner.store) as received:
            assert received.episode_ids == ["ep-b"]
    finally:
        episodes.close()
        client.close()
        outbox.close()
        learner.stop()


def test_a_policy_spec_is_refused_at_once_only_when_empty_or_a_missing_directory(tmp_path):
    assert spec_refusal("") == "policy not loaded: no policy given (empty spec)"
    missing = tmp_path / "nope"
    assert spec_refusal(str(missing)) == (
        f"policy not loaded: '{missing}' is neither an existing checkpoint directory nor a scheme spec"
    )
    assert spec_refusal(str(tmp_path)) is None
    assert spec_refusal("scripted:so101") is None  # a scheme spec: its loader judges it


def test_load_outcomes_round_trip_and_a_malformed_one_is_not_an_outcome():
    staged = LoadOutcome.staged("/cache/v2", "v2")
    assert json.loads(staged.to_json()) == {"spec": "/cache/v2", "ok": True, "version": "v2", "reason": ""}
    assert LoadOutcome.from_json(staged.to_json()) == staged
    refused = LoadOutcome.refused("/cache/v3", "tensor hash mismatch")
    assert LoadOutcome.from_json(refused.to_json()) == refused
    assert LoadOutcome.from_json("not json") is None and LoadOutcome.from_json("[1]") is None
    # Missing fields read as refused without a reason; a non-string reason is kept as text.
    assert LoadOutcome.from_json('{"spec": "/cache/v4"}') == LoadOutcome("/cache/v4", False, None, "")
    assert LoadOutcome.from_json('{"spec": "/x", "ok": 0, "reason": 5}').reason == "5"


def test_the_sync_node_waits_for_the_outcome_of_its_own_load_only():
    waiter = LoadWaiter()
    waiter.deliver(LoadOutcome.staged("/cache/v2", "v2"))  # nothing asked yet: ignored
    pending = waiter.expect("/cache/v2")
    assert not pending.arrived.is_set()
    waiter.deliver(LoadOutcome.staged("/elsewhere/v2", "v2"))  # another caller's load
    assert not pending.arrived.wait(0.05) and pending.outcome is None
    refused = LoadOutcome.refused("/cache/v2", "probe gave NaN")
    threading.Timer(0.05, waiter.deliver, (refused,)).start()  # from another thread, as the executor
    assert pending.arrived.wait(5.0) and pending.outcome == refused
    waiter.forget()
    later = waiter.expect("/cache/v3")
    waiter.wake()  # shutdown: the wait ends without an outcome
    assert later.arrived.is_set() and later.outcome is None
    waiter.forget()
    waiter.deliver(LoadOutcome.staged("/cache/v3", "v3"))
    assert later.outcome is None  # forgotten: a late outcome changes nothing


# ------------------------------------------------------------------ the policy-update loop


class ScriptedLearner:
    """The learner client calls DeploymentFollower makes, answered from a script: `answers` is a
    list of what each long-poll returns (a version, or an exception to raise); then the last
    version again, as the service answers (changed unless it is the one the caller has). Downloads
    write a checkpoint manifest (or raise `download_error`)."""

    def __init__(self, answers, manifest_robot=None, download_error=None):
        self.answers_ = list(answers)
        self.last = None
        self.downloads: list[str] = []
        self.manifest_robot = manifest_robot or {"name": ROBOT.name, "content_hash": ROBOT.content_hash}
        self.download_error = download_error
        self.health = True

    def wait_for_deployed(self, after, timeout_s):
        if not self.answers_:
            time.sleep(0.01)
            return Deployment(version=self.last, generation=1, deployed_at=None, rollback_to=None,
                              policy=None, changed=self.last != after)  # fmt: skip
        answer = self.answers_.pop(0)
        if isinstance(answer, Exception):
            raise answer
        self.last = answer
        return Deployment(version=answer, generation=1, deployed_at=None, rollback_to=None, policy=None)

    def download_version(self, version, cache):
        self.downloads.append(version)
        path = cache / version
        write_manifest(path, version=version, robot=self.manifest_robot)
        if self.download_error is not None:
            raise self.download_error
        return path

    def answers(self, timeout_s: float = 2.0) -> bool:
        return self.health


def follow(learner, tmp_path, stage=None, until=None, timeout_s: float = 5.0):
    """Run a DeploymentFollower on `learner` until `until(status)`; returns (statuses, staged, events)."""
    holder = {"status": SyncStatus(learner_url="http://learner")}
    statuses: list[SyncStatus] = []
    staged: list[str] = []
    events: list[tuple[str, str]] = []
    stopping = threading.Event()

    def update(derive=None, **changes):
        if derive is not None:
            changes = {**changes, **derive(holder["status"])}
        holder["status"] = replace(holder["status"], **changes)
        statuses.append(holder["status"])

    def default_stage(path):
        staged.append(path.name)
        update(staged_version=path.name)

    follower = DeploymentFollower(
        learner, ROBOT, tmp_path / "cache", long_poll_s=0.01, keep_versions=2,
        backoff=Backoff(initial_s=0.01, max_s=0.02), stopping=stopping, find_policy_node=lambda: None,
        stage=stage or default_stage, status=lambda: holder["status"], update=update,
        on_event=lambda kind, message: events.append((kind, message)),
    )  # fmt: skip
    thread = threading.Thread(target=follower.run)
    thread.start()
    deadline = time.monotonic() + timeout_s
    try:
        while not until(holder["status"]):
            assert time.monotonic() < deadline, f"timed out; last status {holder['status']}"
            time.sleep(0.005)
        time.sleep(0.05)  # a few more long-polls: nothing is done twice
    finally:
        stopping.set()
        thread.join(5.0)
    return statuses, staged, events


def test_a_deployed_version_is_downloaded_checked_and_staged_once(tmp_path):
    learner = ScriptedLearner(["v1", "v2"])
    statuses, staged, _ = follow(learner, tmp_path, until=lambda s: s.staged_version == "v2")
    assert staged == ["v1", "v2"] and learner.downloads == ["v1", "v2"]
    states = [s.state for s in statuses]
    assert states.index("downloading") < states.index("loading") < states.index("staged")
    assert statuses[-1].deployed_version == "v2" and statuses[-1].learner_reachable


def test_a_version_for_another_robot_is_rejected_deleted_and_not_retried(tmp_path):
    learner = ScriptedLearner(["v1"], manifest_robot={"name": "other_arm", "content_hash": "x"})
    statuses, staged, events = follow(learner, tmp_path, until=lambda s: s.state == "rejected")
    assert staged == [] and learner.downloads == ["v1"]  # the long-poll keeps saying v1: not again
    rejection = statuses[-1].last_rejection
    assert rejection.version == "v1" and "other_arm" in rejection.reason
    assert not (tmp_path / "cache" / "v1").exists()
    assert [k for k, _ in events] == ["error"]


def test_an_unreachable_learner_is_retried_with_backoff_and_a_refused_stage_later(tmp_path):
    learner = ScriptedLearner([LearnerUnavailable("connection refused"), "v1"])
    attempts: list[str] = []

    def flaky_stage(path):
        attempts.append(path.name)
        if len(attempts) == 1:
            raise RetryLater("the policy node is not running")

    statuses, _, events = follow(
        learner, tmp_path, stage=flaky_stage, until=lambda s: s.state == "staged" and len(attempts) == 2
    )
    retrying = [s for s in statuses if s.state == "retrying" and s.message]
    assert retrying[0].learner_reachable is False  # said while the learner is away
    messages = list(dict.fromkeys(s.message for s in retrying))
    assert len(messages) == 2 and "connection refused" in messages[0]
    assert "policy node is not running" in messages[1]
    assert attempts == ["v1", "v1"] and [k for k, _ in events].count("retry") == 2
