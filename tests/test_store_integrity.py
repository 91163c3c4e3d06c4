"""No silent holes in episode stores: a deleted chunk file of an image or a state array is refused
by `wmpo store verify`, by the reader and by an upload to the learner (422), naming the array;
an all-zero array (a legitimate episode) is not mistaken for one; a store killed mid-creation
reopens.

Real parts: real Zarr stores on disk, the real `wmpo` command, a real `wmpo serve` on loopback,
a real SIGKILL.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from service_harness import TOKEN, start_learner, store_listing
from wmpo_core.episode_store import (
    EpisodeCorruptError,
    EpisodeStore,
    EpisodeValidationError,
    validate_episode_dir,
)
from wmpo_core.robot_config import load_robot_config
from wmpo_ros.learner_client import LearnerClient, LearnerRejected

SIM = load_robot_config("so101_sim")


def record(store: EpisodeStore, steps: int = 5, zero_state: bool = False) -> str:
    """One episode with 2-frame image shards (3 shard files for 5 steps)."""
    rng = np.random.default_rng(steps)
    writer = store.begin_episode(
        SIM, source="policy", task="pick up the cube", policy_version="v0", frames_per_shard=2
    )
    t0 = time.time()
    for k in range(steps):
        writer.append(
            images={c.name: rng.integers(0, 256, c.shape, dtype=np.uint8) for c in SIM.cameras},
            state=np.zeros(len(SIM.joints)) if zero_state else rng.uniform(-1, 1, len(SIM.joints)),
            action=rng.uniform(0, 1, SIM.action.dim),
            time=t0 + k / SIM.control_rate_hz,
        )
    return writer.commit(success=True, success_labeled_by="env").episode_id


@pytest.fixture(scope="module")
def robot(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A robot store with an intact episode, an all-zero-state one, and one missing an image shard
    and one missing its state chunk."""
    path = tmp_path_factory.mktemp("robot") / "robot.zarr"
    with EpisodeStore.open(path, mode="a", durable=False) as store:
        ids = {
            name: record(store, zero_state=name == "zeros")
            for name in ("intact", "zeros", "no-image-chunk", "no-state-chunk")
        }
    episodes = path / "episodes"
    (
        episodes / ids["no-image-chunk"] / "images" / "front" / "c" / "1" / "0" / "0" / "0"
    ).unlink()  # frames 2-3
    (episodes / ids["no-state-chunk"] / "state" / "c" / "0" / "0").unlink()
    return path, ids


def test_validation_and_the_reader_refuse_a_missing_chunk_naming_the_array(robot):
    path, ids = robot
    with EpisodeStore.open(path) as store:
        for name in ("intact", "zeros"):
            validate_episode_dir(store.episode_path(ids[name]), store.meta(ids[name]))
        np.testing.assert_array_equal(
            store.episode(ids["zeros"]).state(), 0.0
        )  # all-zero data is stored, not a hole
        with pytest.raises(
            EpisodeValidationError,
            match=r"array 'images/front' is missing 1 of its 3 chunk files \(c/1/0/0/0\)",
        ):
            validate_episode_dir(store.episode_path(ids["no-image-chunk"]), store.meta(ids["no-image-chunk"]))
        with pytest.raises(
            EpisodeValidationError, match=r"array 'state' is missing 1 of its 1 chunk files \(c/0/0\)"
        ):
            validate_episode_dir(store.episode_path(ids["no-state-chunk"]), store.meta(ids["no-state-chunk"]))
        reader = store.episode(ids["no-image-chunk"])
        with pytest.raises(EpisodeCorruptError, match="array 'images/front' is missing"):
            reader.frames(
                "front", 0, 1
            )  # even a read of a present chunk: the array is known to be incomplete
        with pytest.raises(EpisodeCorruptError, match="array 'state' is missing"):
            store.episode(ids["no-state-chunk"]).state()
        assert store.episode(ids["no-state-chunk"]).action().shape == (
            5,
            SIM.action.dim,
        )  # the other arrays still read


def test_wmpo_store_verify_fails_naming_each_array(robot):
    path, ids = robot
    result = subprocess.run(
        [sys.executable, "-m", "wmpo_core.cli", "store", "verify", str(path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    bad = [line for line in result.stdout.splitlines() if line.startswith("BAD ")]
    assert len(bad) == 2, result.stdout
    assert any(ids["no-image-chunk"] in line and "'images/front' is missing" in line for line in bad), bad
    assert any(ids["no-state-chunk"] in line and "'state' is missing" in line for line in bad), bad
    assert "2 episodes OK, 2 unreadable" in result.stdout


def test_an_upload_with_a_missing_chunk_is_refused_with_422_and_stores_nothing(robot, tmp_path):
    path, ids = robot
    learner = start_learner(tmp_path / "learner")
    try:
        with EpisodeStore.open(path) as store, LearnerClient(learner.url, TOKEN) as client:
            for name, array in (("no-image-chunk", "images/front"), ("no-state-chunk", "state")):
                with pytest.raises(LearnerRejected) as refused:
                    client.upload_episode(store.episode_path(ids[name]), ids[name])
                assert (
                    refused.value.status_code == 422 and f"array '{array}' is missing" in refused.value.detail
                )
            assert store_listing(learner.store) == {"episodes": [], "staging": []}
            for name in ("intact", "zeros"):
                assert client.upload_episode(store.episode_path(ids[name]), ids[name]).status == "stored"
        assert store_listing(learner.store)["episodes"] == sorted([ids["intact"], ids["zeros"]])
    finally:
        learner.stop()


CREATE_AND_DIE = textwrap.dedent(
    """
    import os, signal, sys
    import zarr
    from wmpo_core.episode_store import EpisodeStore

    real_open_group, calls = zarr.open_group, []

    def open_group(*args, **kwargs):  # SIGKILL between the root group and its episodes/ group
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        return real_open_group(*args, **kwargs)

    zarr.open_group = open_group
    EpisodeStore.open(sys.argv[1], mode="a")
    """
)


@pytest.mark.parametrize("existing", ["absent", "empty directory"])
def test_a_store_killed_mid_creation_reopens(tmp_path, existing):
    path = tmp_path / "robot.zarr"
    if existing == "empty directory":
        path.mkdir()
    died = subprocess.run(
        [sys.executable, "-c", CREATE_AND_DIE, str(path)], capture_output=True, text=True, timeout=120
    )
    assert died.returncode == -9, died.stderr  # really killed half-way
    assert not path.exists() or not any(path.iterdir())  # no half store where the store belongs
    with EpisodeStore.open(path, mode="a", durable=False) as store:
        episode_id = record(store)
    with EpisodeStore.open(path) as store:
        assert store.episode_ids == [episode_id]
    for leftover in tmp_path.glob(".robot.zarr.creating-*"):  # the killed attempt's hidden scratch directory
        shutil.rmtree(leftover)
    assert sorted(os.listdir(tmp_path)) == ["robot.zarr"]


def test_labelling_a_missing_store_is_refused_and_creates_nothing(tmp_path, capsys):
    from wmpo_core.cli import main

    missing = tmp_path / "typo" / "store.zarr"
    assert main(["store", "label", str(missing), "ep1", "true"]) != 0
    err = capsys.readouterr().err.strip()
    assert "no episode store here" in err and "\n" not in err
    assert not missing.exists() and not missing.parent.exists()
