"""Durable outbox: nothing lost while the learner is down or killed mid-upload, uploads resume
after restarts of either side, duplicates are harmless, permanent refusals are parked."""

from __future__ import annotations

import logging
import os
import random
import socket
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest
from service_harness import (
    TOKEN,
    WRONG_TOKEN,
    Learner,
    archive_bytes,
    free_port,
    record_episodes,
    send_partial_upload,
    spool_leftovers,
    start_learner,
    store_listing,
    wait_for_spool_file,
)
from wmpo_core.episode_store import EpisodeStore
from wmpo_ros.learner_client import LearnerClient, LearnerUnavailable
from wmpo_ros.outbox import Backoff, Outbox, OutboxWorker, store_uploader

FAST = Backoff(initial_s=0.2, factor=2.0, max_s=1.0, jitter=0.5)
SHORT_TIMEOUT = httpx.Timeout(connect=2.0, read=10.0, write=10.0, pool=2.0)


def wait_until(predicate, timeout_s: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_backoff_is_exponential_jittered_and_capped():
    rng = random.Random(0)
    backoff = Backoff(initial_s=1.0, factor=2.0, max_s=60.0, jitter=0.5)
    for attempt in range(1, 12):
        base = min(60.0, 2.0 ** (attempt - 1))
        delays = [backoff.delay(attempt, rng) for _ in range(200)]
        assert all(base * 0.5 <= d <= base for d in delays), attempt
        assert len(set(delays)) > 100  # jittered: robots that lost the learner together spread out
    assert max(backoff.delay(50, rng) for _ in range(100)) <= 60.0


def test_queue_is_durable_and_enqueue_is_idempotent(tmp_path):
    path = tmp_path / "outbox.sqlite"
    with Outbox(path) as outbox:
        assert outbox.enqueue("ep_a", now=100.0) and outbox.enqueue("ep_b", now=101.0)
        assert not outbox.enqueue("ep_a", now=102.0)
        outbox.mark_failed("ep_b", "learner down", retry_at=500.0, now=103.0)
    with Outbox(path) as reopened:  # the robot process restarted
        assert reopened.due(now=200.0) == ["ep_a"]
        assert reopened.due(now=600.0) == ["ep_a", "ep_b"]
        b = reopened.entry("ep_b")
        assert b.attempts == 1 and b.last_error == "learner down" and b.state == "pending"
        reopened.park("ep_a", "refused: wrong robot", now=300.0)
        assert reopened.stats(now=400.0).parked == 1 and reopened.due(now=1e9) == ["ep_b"]
        assert reopened.requeue("ep_a", now=700.0) and reopened.due(now=700.0) == ["ep_a", "ep_b"]
        assert reopened.stats(now=800.0).oldest_pending_s == pytest.approx(700.0)


def test_a_silent_learner_never_hangs_the_robot(tmp_path):
    """A learner that accepts connections but never answers (hung process, half-open link)."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    timeout = httpx.Timeout(connect=1.0, read=1.0, write=1.0, pool=1.0)
    try:
        with LearnerClient(f"http://127.0.0.1:{port}", TOKEN, timeout=timeout) as client:
            with pytest.raises(LearnerUnavailable, match="timed out"):
                client.health()
            (episode_id,) = record_episodes(tmp_path / "robot.zarr", n=1, steps=2)
            with (
                EpisodeStore.open(tmp_path / "robot.zarr") as store,
                Outbox(tmp_path / "outbox.sqlite") as outbox,
            ):
                outbox.enqueue(episode_id)
                result = OutboxWorker(outbox, store_uploader(client, store), backoff=FAST).run_once()
                assert result.failed == 1 and outbox.entry(episode_id).state == "pending"
                assert "timed out" in outbox.entry(episode_id).last_error
    finally:
        listener.close()


@pytest.fixture
def robot(tmp_path):
    path = tmp_path / "robot.zarr"
    ids = record_episodes(path, n=3, steps=4)
    store = EpisodeStore.open(path)
    yield path, store, ids
    store.close()


def test_learner_down_loses_nothing_and_uploads_resume_after_restarts(tmp_path, robot):
    _, store, ids = robot
    port = free_port()  # the learner is not running yet
    client = LearnerClient(f"http://127.0.0.1:{port}", TOKEN, timeout=SHORT_TIMEOUT)
    db = tmp_path / "outbox.sqlite"
    outbox = Outbox(db)
    for episode_id in ids:
        outbox.enqueue(episode_id)
    worker = OutboxWorker(outbox, store_uploader(client, store), backoff=FAST)
    for _ in range(3):
        outbox.make_all_due()
        result = worker.run_once()
        assert (result.sent, result.failed, result.parked) == (0, 1, 0)  # one try, then the queue waits
    assert outbox.stats().pending == 3
    first = outbox.entry(ids[0])
    assert first.attempts == 3 and "unreachable" in first.last_error
    assert outbox.next_due_at() > time.time()  # backing off, not hammering
    outbox.close()  # the robot process stops too

    learner = Learner(root=tmp_path / "learner", port=port, args=())
    learner.root.mkdir()
    learner.start()
    try:
        outbox = Outbox(db)  # robot process restarted
        worker = OutboxWorker(outbox, store_uploader(client, store), backoff=FAST)
        worker.start()  # retries everything pending at once
        wait_until(lambda: outbox.stats().sent == 3, what="all episodes sent")
        worker.stop()
        assert {e.result for e in outbox.entries()} == {"stored"}
        with EpisodeStore.open(learner.store) as learned:
            assert sorted(learned.episode_ids) == sorted(ids)
        # Duplicates are harmless: a robot that lost its queue sends everything again.
        with Outbox(tmp_path / "fresh.sqlite") as fresh:
            for episode_id in ids:
                fresh.enqueue(episode_id)
            result = OutboxWorker(fresh, store_uploader(client, store), backoff=FAST).run_once()
            assert result.sent == 3 and {e.result for e in fresh.entries()} == {"already_stored"}
        with EpisodeStore.open(learner.store) as learned:
            assert len(learned) == 3
        outbox.close()
    finally:
        learner.stop()
        client.close()


def test_permanent_refusals_are_parked_and_curable_ones_wait(tmp_path, robot):
    path, store, ids = robot
    (other_arm,) = record_episodes(path, n=1, steps=2, robot="so101_real", seed=3, noise=False)
    learner = start_learner(tmp_path / "learner")
    parked = []
    try:
        with Outbox(tmp_path / "outbox.sqlite") as outbox, LearnerClient(learner.url, TOKEN) as client:
            for episode_id in [other_arm, "ep_deleted_on_the_robot", ids[0]]:
                outbox.enqueue(episode_id)
            worker = OutboxWorker(
                outbox, store_uploader(client, store), backoff=FAST, on_parked=parked.append
            )
            result = worker.run_once()
            assert (result.sent, result.failed, result.parked) == (1, 0, 2)
            refused = outbox.entry(other_arm)
            assert (
                refused.state == "parked"
                and "422" in refused.last_error
                and "robot config" in refused.last_error
            )
            assert "not in the local store" in outbox.entry("ep_deleted_on_the_robot").last_error
            assert [e.episode_id for e in parked] == [other_arm, "ep_deleted_on_the_robot"]
            assert outbox.due(now=time.time() + 1e6) == []  # never retried by itself
            assert outbox.stats().parked == 2
        # A wrong token is a configuration problem, not the episode's: it waits, it is not parked.
        with Outbox(tmp_path / "outbox2.sqlite") as outbox, LearnerClient(learner.url, WRONG_TOKEN) as wrong:
            outbox.enqueue(ids[1])
            outbox.enqueue(ids[2])
            result = OutboxWorker(outbox, store_uploader(wrong, store), backoff=FAST).run_once()
            assert (result.sent, result.failed, result.parked) == (0, 1, 0)
            assert outbox.entry(ids[1]).state == "pending" and "401" in outbox.entry(ids[1]).last_error
            assert outbox.due() == []  # the whole queue backs off
    finally:
        learner.stop()


def test_learner_killed_mid_upload_keeps_no_partial_episode_and_the_outbox_resends(tmp_path):
    (episode_id,) = record_episodes(tmp_path / "big.zarr", n=1, steps=40, seed=5)  # ~2 MB
    big = EpisodeStore.open(tmp_path / "big.zarr")
    learner = start_learner(tmp_path / "learner")
    client = LearnerClient(learner.url, TOKEN, timeout=SHORT_TIMEOUT)
    outbox = Outbox(tmp_path / "outbox.sqlite")
    outbox.enqueue(episode_id)
    try:
        # The robot's upload is half-way through when the learner machine dies.
        sock = send_partial_upload(
            learner, episode_id, archive_bytes(big.episode_path(episode_id), episode_id)
        )
        wait_for_spool_file(learner)
        learner.kill()
        sock.close()
        assert spool_leftovers(learner.spool), "the kill should have interrupted the upload"
        assert store_listing(learner.store)["episodes"] == []
        with EpisodeStore.open(learner.store) as reader:
            assert episode_id not in reader and len(reader) == 0

        worker = OutboxWorker(outbox, store_uploader(client, big), backoff=FAST)
        assert worker.run_once().failed == 1  # learner still down: the episode stays queued
        assert outbox.entry(episode_id).state == "pending"

        learner.start()
        assert spool_leftovers(learner.spool) == []  # the restarted service cleans up after the killed one
        assert store_listing(learner.store) == {"episodes": [], "staging": []}
        outbox.make_all_due()
        assert worker.run_once().sent == 1
        assert outbox.entry(episode_id).result == "stored"
        with EpisodeStore.open(learner.store) as learned:
            np.testing.assert_array_equal(
                learned.episode(episode_id).frames("front"), big.episode(episode_id).frames("front")
            )
            np.testing.assert_array_equal(
                learned.episode(episode_id).action(), big.episode(episode_id).action()
            )
    finally:
        learner.stop()
        client.close()
        outbox.close()
        big.close()


def wmpo_outbox(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "WMPO_LEARNER_TOKEN": TOKEN}
    return subprocess.run(
        [sys.executable, "-m", "wmpo_core.cli", "outbox", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def pending(db) -> int:
    with Outbox(db) as outbox:
        return outbox.stats().pending


def test_outbox_push_delivers_a_store_with_no_robot_as_soon_as_the_learner_answers(tmp_path, robot):
    path, _, ids = robot
    port = free_port()
    learner = Learner(root=tmp_path / "learner", port=port, args=())
    learner.root.mkdir()
    # Nothing was ever queued (the robot ran without a learner): push queues the whole store.
    push = subprocess.Popen(
        [sys.executable, "-m", "wmpo_core.cli", "outbox", "push", "--store", str(path), "--learner", f"http://127.0.0.1:{port}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "WMPO_LEARNER_TOKEN": TOKEN},
    )  # fmt: skip
    try:
        outbox_db = tmp_path / "robot.zarr.outbox.sqlite"
        wait_until(lambda: outbox_db.exists() and pending(outbox_db) == 3, what="the store queued")
        # The learner is down: a second uploader is refused while the push holds the outbox.
        busy = wmpo_outbox("push", "--store", str(path), "--learner", f"http://127.0.0.1:{port}")
        assert busy.returncode == 1 and "is uploading the outbox" in busy.stderr
        time.sleep(
            10
        )  # long enough for a backoff of 1, 2, 4, 8 s to have grown past what the check below allows
        learner.start()
        back = time.monotonic()
        _, err = push.communicate(timeout=120)
        delivered_after_s = time.monotonic() - back
        assert push.returncode == 0, err
        assert "delivered 3 of 3 episode(s) (0 the learner already had); 0 still pending, 0 refused" in err
        assert delivered_after_s < 8.0  # probed back within seconds, not at the end of a backoff
        with EpisodeStore.open(learner.store) as learned:
            assert sorted(learned.episode_ids) == sorted(ids)
        again = wmpo_outbox("push", "--store", str(path), "--learner", learner.url)
        assert again.returncode == 0 and "0 episode(s) to deliver" in again.stderr
        status = wmpo_outbox("status", "--store", str(path))
        assert status.returncode == 0 and "0 pending, 3 sent, 0 refused by the learner" in status.stdout
    finally:
        push.kill()
        learner.stop()
    missing = wmpo_outbox(
        "push", "--store", str(tmp_path / "nowhere.zarr"), "--learner", "http://127.0.0.1:1"
    )
    assert (
        missing.returncode == 2
        and missing.stderr.strip() == f"wmpo outbox push: no episode store at {tmp_path / 'nowhere.zarr'}"
    )
    no_url = wmpo_outbox("push", "--store", str(path))
    assert no_url.returncode == 2 and "--learner" in no_url.stderr
    bad_url = wmpo_outbox("push", "--store", str(path), "--learner", "127.0.0.1:8765")
    assert (
        bad_url.returncode == 2
        and "--learner must be an http:// or https:// URL with a host, got '127.0.0.1:8765'" in bad_url.stderr
    )


def test_learner_outage_during_recording_every_episode_delivered_and_a_clean_shutdown(
    tmp_path, caplog, capfd
):
    """Real robot graph (MuJoCo sim arm, scripted teleop, recorder, sync node over DDS): the
    learner is SIGKILLed, two episodes are recorded meanwhile, it comes back, and the drain wait
    sees them all delivered within seconds of its return."""
    from wmpo_ros.session import RobotSession

    caplog.set_level(logging.INFO, logger="wmpo.outbox")
    port = free_port()
    learner = Learner(root=tmp_path / "learner", port=port, args=())
    learner.root.mkdir()
    learner.start()
    token = tmp_path / "token"
    token.write_text(TOKEN)
    try:
        with RobotSession(
            "so101_sim", store=tmp_path / "robot.zarr", learner_url=learner.url, token_file=token, max_steps=4
        ) as robot:
            robot.teleop(1)
            robot.wait_uploaded(timeout_s=60)
            learner.kill()
            robot.teleop(2)  # recording goes on; the outbox keeps them
            time.sleep(10)  # the learner stays away while the backoff grows
            assert robot.sync_status.outbox["pending"] == 2
            learner.start()
            back = time.monotonic()
            robot.wait_uploaded(timeout_s=60)
            assert time.monotonic() - back < 8.0
            ids = [m["episode_id"] for m in robot.recorded]
        with EpisodeStore.open(learner.store) as learned:
            assert sorted(learned.episode_ids) == sorted(ids) and len(ids) == 3
    finally:
        learner.stop()
    assert "the learner answers again; retrying the queue now" in caplog.text
    err = capfd.readouterr().err
    assert "Traceback" not in err and "InvalidHandle" not in err


def test_the_queue_is_consistent_when_node_callbacks_and_the_worker_use_it_at_once(tmp_path):
    """The sync node reads stats on the executor thread while the worker marks episodes sent on its
    own thread: every read returns whole rows and the counts add up."""
    outbox = Outbox(tmp_path / "outbox.sqlite")
    errors: list[BaseException] = []
    n = 200

    def enqueue_and_read(prefix: str) -> None:
        try:
            for i in range(n):
                outbox.enqueue(f"{prefix}{i}")
                stats = outbox.stats()
                assert stats.pending + stats.sent <= 2 * n
        except BaseException as exc:
            errors.append(exc)

    def send() -> None:
        try:
            sent = 0
            while sent < 2 * n:
                for episode_id in outbox.due():
                    outbox.mark_sent(episode_id, "stored")
                    sent += 1
                outbox.next_due_at()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=enqueue_and_read, args=(p,)) for p in ("a", "b")]
    threads.append(threading.Thread(target=send))
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert outbox.stats().sent == 2 * n and outbox.stats().pending == 0
