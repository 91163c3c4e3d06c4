"""VLA checkpoints: bit-exact round trip, tamper detection, robot-config checks, load_policy."""

import json
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import wmpo_core.vla as vla_package
from safetensors import safe_open
from safetensors.torch import save_file
from wmpo_core.policy import Observation, PolicyLoadError, load_policy
from wmpo_core.robot_config import load_robot_config, parse_robot_config
from wmpo_core.vla.checkpoint import (
    CheckpointError,
    load_checkpoint,
    read_manifest,
    save_checkpoint,
    update_provenance,
)
from wmpo_core.vla.policy import VLAPolicy


@pytest.fixture(scope="module")
def robot():
    return load_robot_config("so101_sim")


@pytest.fixture(scope="module")
def saved(robot, tmp_path_factory, tiny_vla):
    model = tiny_vla(robot)
    path = tmp_path_factory.mktemp("ckpt") / "policy"
    save_checkpoint(model, path, robot, parent_version="sft-parent", provenance={"data": "unit test"})
    return model, path


@pytest.fixture
def copy(saved, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(saved[1], target)
    return target


def inputs_for(model):
    image = np.random.default_rng(0).integers(0, 256, (2, 128, 128, 3), dtype=np.uint8)
    return model.encode_inputs(image, "pick up the cube")


def test_save_then_load_is_bit_exact(saved, robot):
    model, path = saved
    loaded = load_checkpoint(path, robot)
    original, restored = model.state_dict(), loaded.state_dict()
    assert original.keys() == restored.keys()
    assert all(
        torch.equal(original[k], restored[k]) and original[k].dtype == restored[k].dtype for k in original
    )
    with torch.no_grad():
        assert torch.equal(model.action_logits(inputs_for(model)), loaded.action_logits(inputs_for(loaded)))
    manifest = read_manifest(path)
    assert loaded.version == manifest["version"] == model.version and re.fullmatch(
        r"vla-[0-9a-f]{12}", loaded.version
    )
    assert loaded.parent_version == "sft-parent"
    assert (
        manifest["robot"]["name"] == "so101_sim" and manifest["robot"]["content_hash"] == robot.content_hash
    )
    assert manifest["provenance"] == {"data": "unit test"}
    assert (manifest["chunk_size"], manifest["action_dim"], manifest["num_bins"]) == (8, 4, 256)
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        meta = f.metadata()
    assert meta["version"] == manifest["version"] and meta["parent_version"] == "sft-parent"
    assert meta["tensors_sha256"] == manifest["tensors_sha256"] and meta["normalization_sha256"].startswith(
        "sha256:"
    )


def test_checkpoint_holds_no_pickle(saved):
    _, path = saved
    files = {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()}
    assert files == {
        "manifest.json",
        "model.safetensors",
        "vla_config.json",
        "normalization.json",
        "backbone/config.json",
        "tokenizer/tokenizer.json",
        "tokenizer/tokenizer_config.json",
    }
    sources = "\n".join(p.read_text() for p in Path(vla_package.__file__).parent.glob("*.py"))
    assert "torch.load" not in sources and "import pickle" not in sources


def test_tampered_tensor_bytes_are_refused(copy, robot):
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x01  # one bit of the last tensor
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="do not match their recorded sha256"):
        load_checkpoint(copy, robot)


def _rewrite_metadata(path: Path, **changes: str) -> None:
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (a safetensors handle is not iterable)
    save_file(tensors, str(path / "model.safetensors"), metadata={**meta, **changes})


def test_tampered_metadata_is_refused(copy, robot):
    _rewrite_metadata(copy, version="sft-forged")
    with pytest.raises(CheckpointError, match="metadata says version='sft-forged'"):
        load_checkpoint(copy, robot)


def test_tampered_tensors_with_recomputed_file_are_refused(copy, robot):
    # Rewriting the whole file with changed weights but the old metadata is caught by the tensor hash.
    with safe_open(str(copy / "model.safetensors"), "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (a safetensors handle is not iterable)
    tensors["action_queries"] = tensors["action_queries"] + 1e-3
    save_file(tensors, str(copy / "model.safetensors"), metadata=meta)
    with pytest.raises(CheckpointError, match="recorded sha256"):
        load_checkpoint(copy, robot)


def test_tampered_statistics_are_refused(copy, robot):
    stats = json.loads((copy / "normalization.json").read_text())
    stats["action"]["q99"][0] = 2.0
    (copy / "normalization.json").write_text(json.dumps(stats))
    with pytest.raises(CheckpointError, match="statistics do not match"):
        load_checkpoint(copy, robot)


def test_tampered_config_or_tokenizer_is_refused(copy, robot):
    config = json.loads((copy / "vla_config.json").read_text())
    config["chunk_size"] = 4
    (copy / "vla_config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="differ from what was saved"):
        load_checkpoint(copy, robot)


def test_incomplete_checkpoint_is_refused(copy, robot):
    (copy / "normalization.json").unlink()
    with pytest.raises(CheckpointError, match=r"incomplete, missing \['normalization.json'\]"):
        load_checkpoint(copy, robot)


def test_another_robot_is_refused_with_a_clear_error(saved):
    _, path = saved
    with pytest.raises(
        CheckpointError, match="trained for robot config 'so101_sim', refusing to run it on 'so101_real'"
    ):
        load_checkpoint(path, load_robot_config("so101_real"))
    with pytest.raises(PolicyLoadError, match="so101_real"):
        load_policy(path, load_robot_config("so101_real"))


def test_changed_action_layout_or_camera_is_refused(saved, robot):
    _, path = saved
    data = robot.model_dump(mode="json")
    data["action"]["dims"][0]["name"] = "dx_base"
    with pytest.raises(CheckpointError, match=r"action dims: checkpoint \['dx', 'dy', 'dz', 'gripper'\]"):
        load_checkpoint(path, parse_robot_config(data))
    data = robot.model_dump(mode="json")
    data["cameras"][0]["name"] = "top"
    data["driver"]["image_keys"] = {"top": "pixels/front"}
    with pytest.raises(CheckpointError, match="camera 'front' used by the policy is not in the robot config"):
        load_checkpoint(path, parse_robot_config(data))


def test_cosmetic_robot_config_change_loads_with_a_warning(saved, robot):
    _, path = saved
    data = robot.model_dump(mode="json")
    data["description"] = "same arm, new words"
    with pytest.warns(UserWarning, match="changed since this policy was trained"):
        load_checkpoint(path, parse_robot_config(data))


def test_provenance_update_keeps_the_checkpoint_loadable(copy, robot):
    update_provenance(copy, world_model="wm-123")
    assert read_manifest(copy)["provenance"] == {"data": "unit test", "world_model": "wm-123"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_checkpoint(copy, robot)


def test_load_policy_gives_a_vla_policy(saved, robot):
    _, path = saved
    policy = load_policy(path, robot)
    assert (
        isinstance(policy, VLAPolicy)
        and policy.version == read_manifest(path)["version"]
        and policy.chunk_size == 8
    )
    obs = Observation(images={"front": np.zeros((128, 128, 3), np.uint8)}, state=np.zeros(6), instruction="")
    chunk = policy.predict_chunk(obs)
    assert chunk.shape == (8, 4) and chunk.dtype == np.float64
    assert np.array_equal(chunk, policy.predict_chunk(obs))  # greedy by default
    with pytest.raises(ValueError, match="lacks camera"):
        policy.predict_chunk(Observation(images={}, state=np.zeros(6), instruction="x"))
