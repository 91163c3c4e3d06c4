"""Bad weights never reach the arm: `wmpo policy verify` and a running policy node's hot-swap run
one check (`load_verified`), and refuse NaN weights (hashes recomputed, as a diverged run writes
them), an infinite backbone weight, weights stored as int8, finite weights whose logits overflow,
and a checkpoint holding a symlink to a file outside it. The node keeps ticking on the old version.

Real parts: real tiny VLA checkpoints on disk, the real `wmpo` command in a subprocess, a real
policy node over DDS driven tick by tick by a `FakeArm` that owns the ROS clock.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import rclpy
import torch
from rclpy.parameter import Parameter
from ros_harness import FakeArm, Graph, wait_until
from safetensors import safe_open
from safetensors.torch import save_file
from std_msgs.msg import String
from wmpo_core.cli import main as wmpo_main
from wmpo_core.robot_config import load_robot_config
from wmpo_core.vla.checkpoint import CheckpointError, load_checkpoint, save_checkpoint, tensors_sha256
from wmpo_ros.messages import LATCHED_QOS, CommandCodec
from wmpo_ros.policy_node import PolicyNode

SIM = load_robot_config("so101_sim")
BACKBONE_WEIGHT = "backbone.text_model.layers.0.mlp.down_proj.weight"


def rewrite_weights(src: Path, dst: Path, edit: Callable[[dict[str, torch.Tensor]], None]) -> Path:
    """A copy of `src` with edited tensors and every hash recomputed (metadata and manifest), as a
    trainer that diverged would write it: only checks on the values themselves can catch it."""
    shutil.copytree(src, dst)
    with safe_open(str(src / "model.safetensors"), "pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    edit(tensors)
    meta["tensors_sha256"] = tensors_sha256(tensors)
    save_file(tensors, str(dst / "model.safetensors"), metadata=meta)
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["tensors_sha256"] = meta["tensors_sha256"]
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst


def _all_nan(t: dict[str, torch.Tensor]) -> None:
    for k, v in t.items():
        t[k] = torch.full_like(v, float("nan"))


def _one_inf(t: dict[str, torch.Tensor]) -> None:
    t[BACKBONE_WEIGHT] = t[BACKBONE_WEIGHT].clone()
    t[BACKBONE_WEIGHT].view(-1)[0] = float("inf")


def _int8(t: dict[str, torch.Tensor]) -> None:
    for k, v in t.items():
        t[k] = (v * 100).round().clamp(-128, 127).to(torch.int8)


def _overflowing_head(t: dict[str, torch.Tensor]) -> None:
    """Finite weights (3e38 fits float32) whose logits overflow to inf/NaN: only the probe sees it."""
    name = max(k for k in t if k.startswith("action_head.") and k.endswith(".weight"))
    t[name] = torch.where(torch.arange(t[name].numel()).view(t[name].shape) % 2 == 0, 3e38, -3e38).to(
        t[name].dtype
    )


BAD = {
    "all-nan": (_all_nan, "tensors hold NaN or infinite values"),
    "one-inf": (_one_inf, f"NaN or infinite values (e.g. ['{BACKBONE_WEIGHT}'])"),
    "int8": (_int8, "stored as torch.int8, model has torch.float32"),
    "overflow": (_overflowing_head, "non-finite action logits"),
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, tiny_vla) -> dict[str, Path]:
    """A good tiny checkpoint ('good'), a second good one ('good-v2'), each bad kind, and 'symlink'."""
    root = tmp_path_factory.mktemp("verify")
    model = tiny_vla(SIM)
    save_checkpoint(model, root / "good", SIM, version="good-v1")
    with torch.no_grad():
        for p in model.action_head.parameters():
            p.add_(0.05 * torch.randn_like(p))
    save_checkpoint(model, root / "good-v2", SIM, version="good-v2")
    paths = {"good": root / "good", "good-v2": root / "good-v2"}
    for name, (edit, _) in BAD.items():
        paths[name] = rewrite_weights(root / "good", root / name, edit)
    # Same bytes, so every hash still matches: only refusing the link itself catches it.
    outside = tmp_path_factory.mktemp("outside") / "tokenizer.json"
    shutil.copyfile(root / "good" / "tokenizer" / "tokenizer.json", outside)
    shutil.copytree(root / "good", root / "symlink")
    (root / "symlink" / "tokenizer" / "tokenizer.json").unlink()
    (root / "symlink" / "tokenizer" / "tokenizer.json").symlink_to(outside)
    paths["symlink"] = root / "symlink"
    return paths


EXPECTED = {name: reason for name, (_, reason) in BAD.items()} | {"symlink": "is a symlink"}


def test_the_bad_checkpoints_are_otherwise_consistent(checkpoints):
    """Without the value checks they would load: hashes and shapes all match (that is the danger)."""
    for name in ("all-nan", "one-inf", "int8"):
        with pytest.raises(CheckpointError, match="weights do not fit the model") as refused:
            load_checkpoint(checkpoints[name], SIM)
        assert "sha256" not in str(refused.value) and "shape" not in str(refused.value)
    assert (
        load_checkpoint(checkpoints["overflow"], SIM).version == "good-v1"
    )  # finite weights: loads; the probe refuses


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_wmpo_policy_verify_refuses_each_kind_with_a_one_line_reason(checkpoints, name, capsys):
    code = wmpo_main(["policy", "verify", str(checkpoints[name]), "--robot", SIM.name])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert (
        len(err) == 1 and err[0].startswith("wmpo policy verify: REFUSED: ") and EXPECTED[name] in err[0]
    ), err


def test_wmpo_policy_verify_accepts_a_good_checkpoint_as_a_command(checkpoints):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    good = subprocess.run(
        [
            sys.executable,
            "-m",
            "wmpo_core.cli",
            "policy",
            "verify",
            str(checkpoints["good"]),
            "--robot",
            SIM.name,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert good.returncode == 0, good.stderr
    assert "OK" in good.stdout and "good-v1" in good.stdout
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "wmpo_core.cli",
            "policy",
            "verify",
            str(checkpoints["all-nan"]),
            "--robot",
            SIM.name,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert bad.returncode == 1 and EXPECTED["all-nan"] in bad.stderr


def test_save_refuses_non_finite_or_other_dtype_weights_and_writes_nothing(tiny_vla, tmp_path):
    model = tiny_vla(SIM)
    with torch.no_grad():
        model.action_queries[0, 0] = float("nan")
    with pytest.raises(
        CheckpointError, match=r"refusing to save: .*NaN or infinite values \(e.g. \['action_queries'\]\)"
    ):
        save_checkpoint(model, tmp_path / "nan", SIM)
    assert not (tmp_path / "nan").exists()
    with torch.no_grad():
        model.action_queries[0, 0] = 0.0
    model.action_head.half()
    with pytest.raises(CheckpointError, match=r"stored as torch.float16, model has torch.float32"):
        save_checkpoint(model, tmp_path / "half", SIM)
    assert not (tmp_path / "half").exists()


# ------------------------------------------------------------------ through a running policy node


@pytest.fixture
def graph():
    g = Graph()
    yield g
    g.close()


def test_a_running_policy_node_refuses_every_bad_kind_and_keeps_driving_with_the_old_version(
    graph, checkpoints
):
    arm = graph.add(FakeArm(SIM))
    node = graph.make(
        PolicyNode,
        robot=SIM.name,
        policy=str(checkpoints["good"]),
        use_sim_time=True,
        autostart=False,
        refill_threshold=2,
    )
    loads: list[dict] = []
    versions: list[str] = []
    probe = graph.add(rclpy.create_node("verify_probe"))
    probe.create_subscription(String, node.names.policy_loads, lambda m: loads.append(json.loads(m.data)), 10)
    probe.create_subscription(
        String, node.names.policy_version, lambda m: versions.append(m.data), LATCHED_QOS
    )
    wait_until(
        lambda: node.count_subscribers("/clock") > 0 and arm.count_publishers(SIM.topics.command) > 0,
        what="discovery",
    )
    wait_until(lambda: probe.count_publishers(node.names.policy_loads) > 0, what="discovery")

    def delivered(t: float) -> bool:
        return node.control.inputs_since(t)

    def received() -> bool:
        arm.publish_observation()
        arm.publish_clock()
        return node.control.inputs_since(-1e9)

    wait_until(received, what="the first observation")
    node.enable(True)
    wait_until(lambda: arm.num_commands > 0, what="the first command")

    for name in sorted(EXPECTED):
        spec = str(checkpoints[name])
        assert node.set_parameters([Parameter("policy", value=spec)])[0].successful
        ticks = 0
        while not any(load["spec"] == spec for load in loads):  # the control loop runs during the load
            arm.tick(delivered=delivered)  # each tick waits for its command: none is missed
            ticks += 1
            assert ticks < 2000, f"no load outcome for {name}"
        outcome = next(load for load in loads if load["spec"] == spec)
        assert not outcome["ok"] and EXPECTED[name] in outcome["reason"], outcome
        node.enable(True)  # an episode boundary: nothing was staged, the old version goes on
        assert node.holder.active.version == "good-v1" and node.holder.staged is None
        for _ in range(2):
            arm.tick(delivered=delivered)
    assert versions == ["good-v1"]
    assert not any(CommandCodec.is_hold(msg) for _, _, msg in arm.commands)
    assert node.counters["holds"] == 0 and node.counters["dropped_non_finite"] == 0, node.counters

    # A good version after all that is staged and swapped in at the next episode.
    assert node.set_parameters([Parameter("policy", value=str(checkpoints["good-v2"]))])[0].successful
    wait_until(lambda: any(load["ok"] for load in loads), timeout=120, what="the good load")
    node.enable(True)
    assert node.holder.active.version == "good-v2"
