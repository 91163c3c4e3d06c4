"""wmpo_core.durable: atomic replacement, tree fsync and file hashes, on real files."""

import hashlib
import json
import os

import pytest
from wmpo_core.durable import (
    atomic_write_bytes,
    atomic_write_json,
    file_sha256,
    tagged_sha256,
)


def test_atomic_write_replaces_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "state.json"
    target.write_text("old")
    atomic_write_json(target, {"b": 1, "a": [1, 2]}, sort_keys=True)
    assert json.loads(target.read_text()) == {"a": [1, 2], "b": 1}
    assert target.read_text().endswith("\n")
    assert target.read_text().index('"a"') < target.read_text().index('"b"')
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_failed_write_keeps_the_old_file_and_removes_its_temporary(tmp_path):
    target = tmp_path / "state.json"
    target.write_text("old")
    with pytest.raises(TypeError):
        atomic_write_json(target, {"not json": object()})
    assert target.read_text() == "old"
    occupied = tmp_path / "occupied"
    (occupied / "inside").mkdir(parents=True)
    with pytest.raises(OSError):  # the rename fails: a non-empty directory is in the way
        atomic_write_bytes(occupied, b"new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["occupied", "state.json"]
    assert [p.name for p in occupied.iterdir()] == ["inside"]


def test_file_sha256_matches_hashlib_over_many_blocks(tmp_path):
    data = os.urandom(3 << 20) + b"tail"
    path = tmp_path / "weights.bin"
    atomic_write_bytes(path, data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()
    assert tagged_sha256(data) == "sha256:" + hashlib.sha256(data).hexdigest()
