"""`wmpo run`, the main job: one full lifelong round at toy sizes, through every real part.

Real learner service (child process, HTTP on loopback, token), real ROS 2 graph (sim arm, policy
node, recorder, sync node over DDS), real Zarr stores on both sides, real training commands.
Sizes are tiny so the round takes minutes on two cores; what is checked is the plumbing: every
stage ran, the robot hot-swapped to the new version and stamped it into its episodes, both sides
hold the same episodes, and the report is complete.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from wmpo_core.cli import main
from wmpo_core.episode_store import EpisodeStore

TOY_SIZES = [
    "sft_steps=5", "wm_steps=3", "wm_vae_steps=2", "align_steps=2", "align_batch=2", "align_vae_steps=0", "reward_steps=4",
    "grpo_iterations=1", "group_size=2", "groups_per_batch=1", "minibatch=2", "sampling_steps=1", "max_resample_rounds=0",
    "horizon=16",
]


@pytest.mark.slow
def test_one_round_from_teleop_to_hot_swapped_policy_and_report(tmp_path: Path) -> None:
    out = tmp_path / "run"
    argv = ["run", "--out", str(out), "--robot", "so101_sim_near", "--rounds", "1", "--demos", "2", "--rollouts", "2", "--device", "cpu"]
    for item in TOY_SIZES:
        argv += ["--set", item]
    assert main(argv) == 0

    report = json.loads((out / "report" / "report.json").read_text())
    sft, round_1 = report["results"]
    assert (sft["label"], round_1["label"]) == ("SFT", "round 1")
    assert sft["trials"] == round_1["trials"] == 2 and sft["version"] != round_1["version"]
    assert (out / "report" / "success.png").stat().st_size > 0 and (out / "report" / "report.md").exists()
    assert len(list((out / "report" / "videos").glob("*.mp4"))) == 2

    # The robot recorded 2 demos, then 2 rollouts with each version: the second pair ran the
    # version the learner deployed after round 1, swapped in while the graph kept running.
    robot = EpisodeStore.open(out / "robot" / "episodes.zarr")
    learner = EpisodeStore.open(out / "learner" / "learner.zarr")
    assert [m.source for m in robot].count("scripted") + [m.source for m in robot].count("teleop") == 2
    by_version = {v: [m.episode_id for m in robot.select(source="policy", policy_version=v)] for v in (sft["version"], round_1["version"])}
    assert all(len(ids) == 2 for ids in by_version.values()), by_version
    assert set(robot.episode_ids) == set(learner.episode_ids)  # everything streamed to the learner

    # The new version names where it came from.
    manifest = json.loads((out / "rounds" / "round_1" / "policy" / "manifest.json").read_text())
    assert manifest["parent_version"] == sft["version"] and manifest["version"] == round_1["version"]
    assert manifest["provenance"]["aligned_on"]["policy_version"] == sft["version"]
