"""`wmpo store delete`: an episode leaves the store whole, the others stay bit for bit, and a refused
delete (unknown id, missing store, store held by a writer) removes nothing and says why in one line.

Real parts: real Zarr stores on disk and the real `wmpo` command in-process.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from wmpo_core.cli import main
from wmpo_core.episode_store import EpisodeStore
from wmpo_core.robot_config import load_robot_config

SIM = load_robot_config("so101_sim")


def record(store: EpisodeStore, seed: int, steps: int = 3) -> str:
    rng = np.random.default_rng(seed)
    writer = store.begin_episode(SIM, source="teleop", task="pick up the cube")
    t0 = time.time()
    for k in range(steps):
        writer.append(
            images={c.name: rng.integers(0, 256, c.shape, dtype=np.uint8) for c in SIM.cameras},
            state=rng.uniform(-1, 1, len(SIM.joints)),
            action=rng.uniform(0, 1, SIM.action.dim),
            time=t0 + k / SIM.control_rate_hz,
        )
    return writer.commit(success=True, success_labeled_by="env").episode_id


def snapshot(path: Path) -> dict[str, bytes]:
    return {str(f.relative_to(path)): f.read_bytes() for f in sorted(path.rglob("*")) if f.is_file()}


@pytest.fixture
def store(tmp_path) -> tuple[Path, list[str]]:
    path = tmp_path / "demos.zarr"
    with EpisodeStore.open(path, mode="a", durable=False) as s:
        ids = [record(s, seed) for seed in range(3)]
    return path, ids


def test_delete_removes_the_episode_and_keeps_the_others_bit_for_bit(store, capsys):
    path, ids = store
    reader = EpisodeStore.open(path)
    kept = {i: snapshot(path / "episodes" / i) for i in (ids[0], ids[2])}
    assert main(["store", "delete", str(path), ids[1]]) == 0
    assert f"deleted 1 episode(s) from {path}; 2 left" in capsys.readouterr().out
    assert not (path / "episodes" / ids[1]).exists()
    assert list((path / ".staging").iterdir()) == []  # nothing left behind
    reopened = EpisodeStore.open(path)
    assert reopened.episode_ids == [ids[0], ids[2]]
    assert {i: snapshot(path / "episodes" / i) for i in (ids[0], ids[2])} == kept
    assert main(["store", "verify", str(path)]) == 0
    reader.refresh()  # a reader opened before the delete sees it gone, the others intact
    assert reader.episode_ids == [ids[0], ids[2]]
    with pytest.raises(KeyError, match=ids[1]):
        reader.episode(ids[1])


def test_delete_of_several_ids_checks_them_all_first(store, capsys):
    path, ids = store
    before = snapshot(path / "episodes")
    assert main(["store", "delete", str(path), ids[0], "ep_no_such_episode"]) != 0
    err = capsys.readouterr().err.strip()
    assert "'ep_no_such_episode'" in err and "nothing deleted" in err and "\n" not in err
    assert snapshot(path / "episodes") == before
    assert main(["store", "delete", str(path), ids[0], ids[2]]) == 0
    assert EpisodeStore.open(path).episode_ids == [ids[1]]


def test_delete_refuses_a_missing_store_and_a_locked_one(store, tmp_path, capsys):
    path, ids = store
    missing = tmp_path / "typo" / "store.zarr"
    assert main(["store", "delete", str(missing), ids[0]]) != 0
    err = capsys.readouterr().err.strip()
    assert "no episode store here" in err and "\n" not in err
    assert not missing.parent.exists()
    before = snapshot(path / "episodes")
    with EpisodeStore.open(path, mode="a", durable=False):  # the recorder is writing
        assert main(["store", "delete", str(path), ids[0]]) != 0
    err = capsys.readouterr().err.strip()
    assert "another process is writing to this store" in err and "\n" not in err
    assert snapshot(path / "episodes") == before


def test_an_unreadable_episode_can_be_deleted(store):
    path, ids = store
    (path / "episodes" / ids[0] / "zarr.json").write_text("{not json")
    assert ids[0] in EpisodeStore.open(path).corrupt
    assert main(["store", "delete", str(path), ids[0]]) == 0
    reopened = EpisodeStore.open(path)
    assert reopened.episode_ids == ids[1:] and reopened.corrupt == {}
