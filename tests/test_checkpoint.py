"""wmpo_core.checkpoint: the manifest, hash, entry and weight rules shared by the VLA, reward-model
and world-model checkpoints, on real files; and the checks the reward and world-model formats
gained from it (symlinked entries, tampered files, non-finite weights)."""

import json
import os

import pytest
import torch
from test_world_model import fresh_model
from wmpo_core.checkpoint import CheckpointError, CheckpointFormat, tensors_sha256, weight_problems
from wmpo_learner.reward.checkpoint import CheckpointError as RewardCheckpointError
from wmpo_learner.reward.checkpoint import load_checkpoint as load_reward
from wmpo_learner.reward.checkpoint import save_checkpoint as save_reward
from wmpo_learner.world_model import WorldModel
from wmpo_learner.world_model.model import WorldModelLoadError


class ToyError(CheckpointError):
    pass


TOY = CheckpointFormat(
    name="toy",
    version=3,
    manifest="toy.json",
    entries=("toy.json", "w.safetensors", "extra"),
    label="toy",
    error=ToyError,
)


def write_toy(root, tensors):
    root.mkdir(parents=True, exist_ok=True)
    TOY.save_tensors(root / "w.safetensors", tensors, {"format": "toy"})
    (root / "extra").mkdir(exist_ok=True)
    (root / "extra" / "notes.txt").write_text("hello")
    TOY.write_manifest(
        root,
        {"format": "toy", "format_version": 3, "sha256": TOY.file_hashes(root, ["w.safetensors", "extra"])},
    )


def test_manifest_hashes_and_tensors_round_trip(tmp_path):
    tensors = {"a": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.ones(2, dtype=torch.int8)}
    write_toy(tmp_path / "ck", tensors)
    assert TOY.is_checkpoint(tmp_path / "ck") and not TOY.is_checkpoint(tmp_path)
    manifest = TOY.read_manifest(tmp_path / "ck")
    assert set(manifest["sha256"]) == {"w.safetensors", "extra/notes.txt"}
    TOY.check_entries(tmp_path / "ck")
    TOY.check_complete(tmp_path / "ck")
    TOY.verify_file_hashes(tmp_path / "ck", manifest["sha256"])
    loaded, metadata = TOY.load_tensors(tmp_path / "ck" / "w.safetensors")
    assert metadata == {"format": "toy"} and tensors_sha256(loaded) == tensors_sha256(tensors)
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["extra", "toy.json", "w.safetensors"]


def test_refusals_name_the_problem_in_one_line(tmp_path):
    root = tmp_path / "ck"
    write_toy(root, {"a": torch.zeros(2)})
    recorded = TOY.read_manifest(root)["sha256"]
    (root / "extra" / "notes.txt").write_text("changed")
    with pytest.raises(ToyError, match=r"notes.txt: sha256 .* does not match the recorded"):
        TOY.verify_file_hashes(root, recorded)
    (root / "extra" / "notes.txt").unlink()
    (root / "extra" / "notes.txt").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ToyError, match="is a symlink"):
        TOY.check_entries(root)
    (root / "w.safetensors").unlink()
    with pytest.raises(ToyError, match=r"incomplete, missing \['w.safetensors'\]"):
        TOY.check_complete(root)
    (root / "w.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ToyError, match="unreadable safetensors file"):
        TOY.load_tensors(root / "w.safetensors")
    (root / "toy.json").write_text(json.dumps({"format": "toy", "format_version": 2}))
    with pytest.raises(ToyError, match="format version 2; this version reads 3"):
        TOY.read_manifest(root)
    (root / "toy.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ToyError, match="is not a 'toy' manifest"):
        TOY.read_manifest(root)
    os.unlink(root / "toy.json")
    with pytest.raises(ToyError, match=r"not a toy \(no toy.json\)"):
        TOY.read_manifest(root)


def test_weight_problems_cover_keys_shapes_dtypes_and_non_finite_values():
    model = {"a": torch.zeros(2, 3), "b": torch.zeros(4), "c": torch.zeros(1)}
    assert weight_problems(model, model) == []
    problems = weight_problems(
        {"a": torch.zeros(3, 2), "b": torch.tensor([0.0, float("nan"), 0, 0]), "d": torch.zeros(1)}, model
    )
    assert [p.split(" (")[0] for p in problems] == [
        "missing 1 weights",
        "1 unexpected weights",
        "1 shape mismatches",
        "1 tensors hold NaN or infinite values",
    ]
    assert weight_problems({**model, "c": torch.zeros(1, dtype=torch.float16)}, model) == [
        "1 dtype mismatches (e.g. ['c: stored as torch.float16, model has torch.float32'])"
    ]
    with pytest.raises(
        ToyError, match="weights do not fit the model its config describes: missing 1 weights"
    ):
        TOY.check_weights({}, {"a": torch.zeros(1)}, source="here")


def test_reward_checkpoints_refuse_symlinks_and_non_finite_weights(tiny_reward_model, tmp_path):
    model = tiny_reward_model()
    save_reward(model, tmp_path / "rm")
    load_reward(tmp_path / "rm")
    (tmp_path / "config.json").write_bytes((tmp_path / "rm" / "config.json").read_bytes())
    (tmp_path / "rm" / "config.json").unlink()
    (tmp_path / "rm" / "config.json").symlink_to(tmp_path / "config.json")  # same bytes, same hash
    with pytest.raises(RewardCheckpointError, match="is a symlink"):
        load_reward(tmp_path / "rm")
    with torch.no_grad():
        next(model.classifier.parameters())[0] = float("inf")
    with pytest.raises(RewardCheckpointError, match=r"refusing to save: .*NaN or infinite"):
        save_reward(model, tmp_path / "diverged")
    assert not (tmp_path / "diverged").exists()


def test_world_model_checkpoints_record_and_verify_file_hashes(tmp_path):
    wm = fresh_model()
    wm.save(tmp_path / "wm")
    manifest = json.loads((tmp_path / "wm" / "world_model.json").read_text())
    assert "transformer/diffusion_pytorch_model.safetensors" in manifest["sha256"]
    weights = tmp_path / "wm" / "transformer" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(WorldModelLoadError, match=r"diffusion_pytorch_model.safetensors: sha256"):
        WorldModel.load(tmp_path / "wm")
    with torch.no_grad():
        next(wm.transformer.parameters()).fill_(float("nan"))
    with pytest.raises(WorldModelLoadError, match=r"refusing to save: .*NaN or infinite"):
        wm.save(tmp_path / "diverged")
    assert not (tmp_path / "diverged").exists()
