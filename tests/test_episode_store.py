"""The episode store's guarantees, each against a real Zarr store on disk and real processes."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from store_writer_proc import action_for, frame_for, state_for
from wmpo_core.episode_store import (
    EpisodeCorruptError,
    EpisodeStore,
    EpisodeValidationError,
    StoreError,
    StoreFormatError,
    StoreLockedError,
)
from wmpo_core.robot_config import load_robot_config

WRITER = Path(__file__).with_name("store_writer_proc.py")
CONFIG = load_robot_config("so101_sim")
SHAPE = CONFIG.cameras[0].shape


def start_writer(store: Path, n_episodes: int, seed: int, step_sleep: float = 0.0) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            str(WRITER),
            str(store),
            str(n_episodes),
            str(seed),
            "--step-sleep",
            str(step_sleep),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(WRITER.parent)},
    )


def assert_episode_intact(store: EpisodeStore, episode_id: str) -> None:
    """Every committed episode must read back exactly as the writer process produced it."""
    episode = store.episode(episode_id)
    number = episode.meta.extra["number"]
    n = episode.meta.num_steps
    frames = episode.frames("front")
    assert frames.shape == (n, *SHAPE)
    for step in range(n):
        np.testing.assert_array_equal(frames[step], frame_for(number, step, SHAPE))
    np.testing.assert_allclose(
        episode.state(), np.stack([state_for(number, s, 6) for s in range(n)]), rtol=1e-6
    )
    np.testing.assert_allclose(
        episode.action(), np.stack([action_for(number, s, 4) for s in range(n)]), rtol=1e-6
    )
    assert episode.time().shape == (n,) and np.all(np.diff(episode.time()) >= 0)


def write_episode(store: EpisodeStore, n_steps: int, number: int = 0, **commit) -> str:
    writer = store.begin_episode(
        CONFIG, "scripted", "pick up the cube", policy_version="v1", env_seed=7, extra={"number": number}
    )
    t0 = time.time()
    for step in range(n_steps):
        writer.append(
            images={"front": frame_for(number, step, SHAPE)},
            state=state_for(number, step, 6),
            action=action_for(number, step, 4),
            time=t0 + 0.1 * step + 0.003 * (step % 3),  # real, jittery capture times
            image_times={"front": t0 + 0.1 * step - 0.01},
        )
    return writer.commit(**commit).episode_id


def test_round_trip_metadata_and_real_timestamps(tmp_path: Path) -> None:
    store = EpisodeStore.open(tmp_path / "s.zarr", mode="a")
    episode_id = write_episode(store, 23, number=3, success=True, success_labeled_by="env")
    reader = EpisodeStore.open(tmp_path / "s.zarr")
    meta = reader.meta(episode_id)
    assert (meta.robot_config_name, meta.robot_config_hash) == ("so101_sim", CONFIG.content_hash)
    assert (meta.source, meta.task, meta.policy_version, meta.env_seed) == (
        "scripted",
        "pick up the cube",
        "v1",
        7,
    )
    assert (meta.success, meta.success_labeled_by, meta.num_steps) == (True, "env", 23)
    assert meta.cameras == {"front": SHAPE} and (meta.state_dim, meta.action_dim) == (6, 4)
    assert_episode_intact(reader, episode_id)
    times = reader.episode(episode_id).time()
    assert meta.start_time == times[0]
    assert not np.allclose(np.diff(times), 0.1)  # stored as captured, not derived from the index
    np.testing.assert_allclose(
        reader.episode(episode_id).image_time("front"), times - 0.01 - 0.003 * (np.arange(23) % 3)
    )


def test_plain_zarr_open_decodes_frames_without_registration(tmp_path: Path) -> None:
    store = EpisodeStore.open(tmp_path / "s.zarr", mode="a")
    episode_id = write_episode(store, 12, number=5)
    script = (
        "import sys, zarr; g = zarr.open_group(sys.argv[1], mode='r');"
        f"a = g['episodes/{episode_id}/images/front']; print(a.shape, int(a[11, 0, 0, 1]), a.compressors)"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "s.zarr")], capture_output=True, text=True, check=True
    )
    assert out.stdout.startswith(f"(12, {SHAPE[0]}, {SHAPE[1]}, 3) 11")
    assert "Blosc" in out.stdout


def test_appending_bad_data_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    store = EpisodeStore.open(tmp_path / "s.zarr", mode="a")
    writer = store.begin_episode(CONFIG, "teleop", "pick up the cube")
    good = {
        "images": {"front": frame_for(0, 0, SHAPE)},
        "state": np.zeros(6),
        "action": np.zeros(4),
        "time": time.time(),
    }
    with pytest.raises(EpisodeValidationError, match="camera 'front' frame is"):
        writer.append(**{**good, "images": {"front": np.zeros((64, 64, 3), np.uint8)}})
    with pytest.raises(EpisodeValidationError, match="cameras"):
        writer.append(**{**good, "images": {"wrist": frame_for(0, 0, SHAPE)}})
    with pytest.raises(EpisodeValidationError, match="state has 5 values"):
        writer.append(**{**good, "state": np.zeros(5)})
    with pytest.raises(EpisodeValidationError, match="finite"):
        writer.append(**{**good, "action": np.array([0, np.nan, 0, 0])})
    with pytest.raises(EpisodeValidationError, match="no steps"):
        writer.commit()
    writer.append(**good)
    assert writer.commit().num_steps == 1


def test_reader_never_sees_an_episode_before_commit(tmp_path: Path) -> None:
    store = EpisodeStore.open(tmp_path / "s.zarr", mode="a")
    reader = EpisodeStore.open(tmp_path / "s.zarr")
    writer = store.begin_episode(CONFIG, "policy", "pick up the cube")
    for step in range(25):  # more than one shard flushed to disk
        writer.append({"front": frame_for(0, step, SHAPE)}, np.zeros(6), np.zeros(4), time.time())
        assert reader.refresh() == [] and len(reader) == 0
    meta = writer.commit()
    assert reader.refresh() == [meta.episode_id]


def test_discard_removes_nothing_committed(tmp_path: Path) -> None:
    store = EpisodeStore.open(tmp_path / "s.zarr", mode="a")
    kept = write_episode(store, 8, number=1)
    writer = store.begin_episode(CONFIG, "policy", "pick up the cube")
    writer.append({"front": frame_for(2, 0, SHAPE)}, np.zeros(6), np.zeros(4), time.time())
    writer.discard()
    reader = EpisodeStore.open(tmp_path / "s.zarr")
    assert reader.episode_ids == [kept]
    assert_episode_intact(reader, kept)
    assert not any((tmp_path / "s.zarr" / ".staging").iterdir())


def test_one_writer_at_a_time(tmp_path: Path) -> None:
    store = EpisodeStore.open(tmp_path / "s.zarr", mode="a")
    with pytest.raises(StoreLockedError, match="another process is writing"):
        EpisodeStore.open(tmp_path / "s.zarr", mode="a")
    with pytest.raises(StoreError, match="read-only"):
        EpisodeStore.open(tmp_path / "s.zarr").begin_episode(CONFIG, "policy", "x")
    store.close()
    EpisodeStore.open(tmp_path / "s.zarr", mode="a").close()


def test_relabel_success_is_seen_by_readers(tmp_path: Path) -> None:
    store = EpisodeStore.open(tmp_path / "s.zarr", mode="a")
    episode_id = write_episode(store, 5)
    reader = EpisodeStore.open(tmp_path / "s.zarr")
    assert reader.meta(episode_id).success is None
    store.set_success(episode_id, True, labeled_by="human")
    reader.refresh()
    assert (reader.meta(episode_id).success, reader.meta(episode_id).success_labeled_by) == (True, "human")
    assert [m.episode_id for m in reader.select(success=True, source="scripted")] == [episode_id]
    assert_episode_intact(reader, episode_id)


def test_random_windows_of_any_episode(tmp_path: Path) -> None:
    store = EpisodeStore.open(tmp_path / "s.zarr", mode="a")
    ids = [write_episode(store, n, number=i) for i, n in enumerate([30, 45, 13])]
    reader = EpisodeStore.open(tmp_path / "s.zarr")
    rng = random.Random(0)
    for _ in range(30):
        i = rng.randrange(3)
        episode = reader.episode(ids[i])
        start = rng.randrange(len(episode) - 12 + 1)
        window = episode.frames("front", start, start + 12)
        assert [int(f[0, 0, 1]) for f in window] == list(range(start, start + 12))
    padded = reader.episode(ids[2]).frames_at("front", [0, 0, 0, 1, 2])  # window padded with the first frame
    assert [int(f[0, 0, 1]) for f in padded] == [0, 0, 0, 1, 2]
    with pytest.raises(IndexError):
        reader.episode(ids[2]).frames("front", 10, 14)


def test_killed_writer_loses_at_most_the_episode_in_progress(tmp_path: Path) -> None:
    """SIGKILL a real writer process at random moments, repeatedly; reopen without repair each time."""
    path = tmp_path / "s.zarr"
    rng = random.Random(1234)
    committed: set[str] = set()
    for round_ in range(8):
        proc = start_writer(path, n_episodes=1000, seed=round_, step_sleep=0.002)
        # Kill at a random moment after the writer is up and has committed once (start-up time
        # depends on machine load; a fixed sleep would sometimes kill it before it wrote anything).
        first = proc.stdout.readline()
        assert first.startswith("committed "), (
            f"writer failed: {first}{proc.stderr.read() if proc.poll() is not None else ''}"
        )
        time.sleep(rng.uniform(0.0, 0.6))
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate()
        committed |= {line.split()[1] for line in (first + out).splitlines() if line.startswith("committed ")}
        store = EpisodeStore.open(path, mode="a")  # recovery happens here, no manual step
        assert committed <= set(store.episode_ids), "an episode reported committed was lost"
        assert not store.corrupt
        for episode_id in store.episode_ids:
            assert_episode_intact(store, episode_id)
        before = len(store)
        write_episode(store, 4, number=before)
        assert len(store) == before + 1
        store.close()
    assert len(committed) >= 8, "every round's writer committed at least once before it was killed"


def test_reader_in_another_process_sees_new_episodes_while_writer_appends(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    EpisodeStore.open(path, mode="a").close()
    reader = EpisodeStore.open(path)
    writer = start_writer(path, n_episodes=12, seed=7, step_sleep=0.01)
    seen_while_running: list[str] = []
    try:
        while writer.poll() is None:
            for episode_id in reader.refresh():
                assert_episode_intact(reader, episode_id)
                if writer.poll() is None:
                    seen_while_running.append(episode_id)
            time.sleep(0.05)
    finally:
        writer.kill()
        writer.communicate()
    assert writer.returncode == 0
    reader.refresh()
    assert len(reader) == 12
    assert len(seen_while_running) >= 3, "the reader should see episodes as they are committed"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: None, "does not exist"),
        (lambda p: p.write_text("hello"), "it is a file"),
        (lambda p: p.mkdir(), "no zarr.json"),
        (lambda p: (p.mkdir(), (p / ".zgroup").write_text('{"zarr_format": 2}')), "Zarr v2 store"),
        (lambda p: zarr.open_group(p, mode="w"), "not an episode store"),
        (lambda p: (p.mkdir(), (p / "zarr.json").write_text("{garbage")), "unreadable metadata"),
        (
            lambda p: zarr.open_group(p, mode="w").attrs.update(
                {"wmpo_episode_store": {"format_version": 99}}
            ),
            "format version 99",
        ),
    ],
)
def test_foreign_or_corrupt_stores_give_a_clear_error(tmp_path: Path, make, message: str) -> None:
    path = tmp_path / "s.zarr"
    make(path)
    with pytest.raises(StoreError, match=message):
        EpisodeStore.open(path)


def test_writer_refuses_to_take_over_a_foreign_directory(tmp_path: Path) -> None:
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "precious.txt").write_text("keep me")
    with pytest.raises(StoreFormatError):
        EpisodeStore.open(tmp_path / "s", mode="a")
    assert (tmp_path / "s" / "precious.txt").read_text() == "keep me"


def test_corrupt_episode_is_reported_and_the_rest_stays_readable(tmp_path: Path) -> None:
    store = EpisodeStore.open(tmp_path / "s.zarr", mode="a")
    good = write_episode(store, 6, number=1)
    bad_meta = write_episode(store, 6, number=2)
    bad_chunk = write_episode(store, 6, number=3)
    store.close()
    root = tmp_path / "s.zarr" / "episodes"
    (root / bad_meta / "zarr.json").write_text(
        json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {}})
    )
    shard = next((root / bad_chunk / "images" / "front" / "c").rglob("*"))
    while shard.is_dir():
        shard = next(shard.iterdir())
    shard.write_bytes(b"\x00garbage" * 10)
    reader = EpisodeStore.open(tmp_path / "s.zarr")
    assert set(reader.corrupt) == {bad_meta} and "metadata missing" in reader.corrupt[bad_meta]
    with pytest.raises(EpisodeCorruptError, match=bad_meta):
        reader.episode(bad_meta)
    with pytest.raises(EpisodeCorruptError, match=f"episode {bad_chunk}: cannot read 'images/front'"):
        reader.episode(bad_chunk).frames("front")
    assert_episode_intact(reader, good)


def test_a_flipped_byte_is_a_read_error_not_a_wrong_frame(tmp_path: Path) -> None:
    store = EpisodeStore.open(tmp_path / "s.zarr", mode="a")
    episode_id = write_episode(store, 6, number=1)
    shard = next(
        p
        for p in (store.episode_path(episode_id) / "images" / "front").rglob("*")
        if p.is_file() and p.name != "zarr.json"
    )
    data = bytearray(shard.read_bytes())
    data[len(data) // 3] ^= 0x01
    shard.write_bytes(bytes(data))
    with pytest.raises(EpisodeCorruptError, match="images/front"):
        EpisodeStore.open(tmp_path / "s.zarr").episode(episode_id).frames("front")
    learner = EpisodeStore.open(tmp_path / "learner.zarr", mode="a")
    with pytest.raises(EpisodeValidationError, match="unreadable data"):
        learner.ingest_episode_dir(store.episode_path(episode_id), CONFIG)
    assert len(learner) == 0


def test_ingest_validates_before_publishing(tmp_path: Path) -> None:
    source = EpisodeStore.open(tmp_path / "robot.zarr", mode="a")
    episode_id = write_episode(source, 9, number=4)
    learner = EpisodeStore.open(tmp_path / "learner.zarr", mode="a")
    with pytest.raises(EpisodeValidationError, match="robot_config_hash"):
        learner.ingest_episode_dir(source.episode_path(episode_id), load_robot_config("so101_real"))
    assert len(learner) == 0
    damaged = tmp_path / episode_id
    import shutil

    shutil.copytree(source.episode_path(episode_id), damaged)
    (damaged / "action" / "c" / "0" / "0").write_bytes(b"truncated")
    with pytest.raises(EpisodeValidationError, match="unreadable data"):
        learner.ingest_episode_dir(damaged, CONFIG)
    assert len(learner) == 0 and not any((tmp_path / "learner.zarr" / ".staging").iterdir())
    meta = learner.ingest_episode_dir(source.episode_path(episode_id), CONFIG)
    assert meta.episode_id == episode_id
    assert_episode_intact(learner, episode_id)
    with pytest.raises(StoreError, match="already exists"):
        learner.ingest_episode_dir(source.episode_path(episode_id), CONFIG)
