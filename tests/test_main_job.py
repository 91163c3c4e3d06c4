"""`wmpo run`, the main job: one full lifelong round at toy sizes, through every real part.

Real learner service (child process, HTTP on loopback, token), real ROS 2 graph (sim arm, policy
node, recorder, sync node over DDS), real Zarr stores on both sides, real training commands.
Sizes are tiny so the round takes minutes on two cores; what is checked is the plumbing: every
stage ran, the robot hot-swapped to the new version and stamped it into its episodes, both sides
hold the same episodes, and the report is complete.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from wmpo_core.cli import main
from wmpo_core.episode_store import EpisodeStore
from wmpo_learner.service.local import serving_processes

TOY_SIZES = [
    "sft_steps=5",
    "wm_steps=3",
    "wm_vae_steps=2",
    "align_steps=2",
    "align_batch=2",
    "align_vae_steps=0",
    "reward_steps=4",
    "grpo_iterations=1",
    "group_size=2",
    "groups_per_batch=1",
    "minibatch=2",
    "sampling_steps=1",
    "max_resample_rounds=0",
    "horizon=16",
]
PROMOTE_ALWAYS = ["promote=always"]
"""Toy models never earn a promotion on evidence; this test is about the hot-swap path."""


@pytest.mark.slow
def test_one_round_from_teleop_to_hot_swapped_policy_and_report(tmp_path: Path) -> None:
    out = tmp_path / "run"
    argv = [
        "run",
        "--out",
        str(out),
        "--robot",
        "so101_sim_near",
        "--rounds",
        "1",
        "--demos",
        "2",
        "--rollouts",
        "2",
        "--device",
        "cpu",
    ]
    for item in TOY_SIZES + PROMOTE_ALWAYS:
        argv += ["--set", item]
    assert main(argv) == 0

    report = json.loads((out / "report" / "report.json").read_text())
    sft, round_1 = report["results"]
    assert (sft["label"], round_1["label"]) == ("SFT", "round 1")
    assert sft["trials"] == round_1["trials"] == 2 and sft["version"] != round_1["version"]
    assert (out / "report" / "success.png").stat().st_size > 0 and (out / "report" / "report.md").exists()
    assert len(list((out / "report" / "videos").glob("*.mp4"))) == 2
    assert report["notes"][0].startswith("round 1: promoted: promote=always")

    # The robot recorded 2 demos, then 2 rollouts with each version: the second pair ran the
    # version the learner deployed after round 1, swapped in while the graph kept running.
    robot = EpisodeStore.open(out / "robot" / "episodes.zarr")
    learner = EpisodeStore.open(out / "learner" / "learner.zarr")
    assert [m.source for m in robot].count("scripted") + [m.source for m in robot].count("teleop") == 2
    by_version = {
        v: [m.episode_id for m in robot.select(source="policy", policy_version=v)]
        for v in (sft["version"], round_1["version"])
    }
    assert all(len(ids) == 2 for ids in by_version.values()), by_version
    assert set(robot.episode_ids) == set(learner.episode_ids)  # everything streamed to the learner

    # The new version names where it came from.
    manifest = json.loads((out / "rounds" / "round_1" / "policy" / "manifest.json").read_text())
    assert manifest["parent_version"] == sft["version"] and manifest["version"] == round_1["version"]
    assert manifest["provenance"]["aligned_on"]["policy_version"] == sft["version"]


def _children(pid: int) -> list[int]:
    return [
        int(child)
        for children in Path(f"/proc/{pid}/task").glob("*/children")
        for child in children.read_text().split()
    ]


def _alive(pid: int) -> bool:
    """Running (a zombie has exited; its parent, the killed job, is gone too)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _learner_answers(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/v1/health", timeout=2.0).status_code == 200
    except httpx.TransportError:
        return False


@pytest.mark.slow
def test_kill_9_mid_stage_takes_the_learner_service_along_and_the_resume_completes(tmp_path: Path) -> None:
    """`wmpo run` SIGKILLed during SFT: its learner service dies with it. A service an earlier job
    left running on the same store (as jobs did before the guard) is ended by the resume, which
    then completes with every episode on both sides exactly once."""
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "wmpo_core.cli", "run", "--out", str(out), "--robot", "so101_sim_near",
            "--rounds", "0",
            "--demos", "2", "--rollouts", "2", "--device", "cpu"]  # fmt: skip
    for item in TOY_SIZES:
        argv += ["--set", item]
    store = out / "learner" / "learner.zarr"
    job = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in job.stdout:  # until SFT runs: demonstrations recorded and streamed, stages started
        lines.append(line)
        if "SFT: started in a child process" in line:
            break
    assert job.poll() is None, "".join(lines)[-3000:]
    (service,) = serving_processes(store)
    stage_children = set(_children(job.pid)) - {service}
    assert stage_children, "SFT and world-model pretraining run in child processes"
    cmdline = Path(f"/proc/{service}/cmdline").read_bytes().split(b"\0")
    port = int(cmdline[cmdline.index(b"--port") + 1])
    assert _learner_answers(port)
    job.kill()  # SIGKILL: no finally, no atexit
    job.wait()
    killed_at = time.monotonic()
    deadline = time.monotonic() + 30.0
    while serving_processes(store) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert serving_processes(store) == [] and not _learner_answers(port)
    while any(_alive(pid) for pid in stage_children) and time.monotonic() < killed_at + 5.0:
        time.sleep(0.2)
    assert not [pid for pid in stage_children if _alive(pid)], "a training child outlived its job"

    # A service left over by an older job on this run's store (no guard: started directly).
    leftover = subprocess.Popen(
        [sys.executable, "-m", "wmpo_core.cli", "serve", "--store", str(store),
         "--registry", str(out / "learner" / "registry"),
         "--robot", "so101_sim_near", "--port", str(port),
         "--token-file", str(out / "learner" / "learner.token")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60.0
        while not _learner_answers(port):
            assert leftover.poll() is None and time.monotonic() < deadline, (
                "the leftover service did not start"
            )
            time.sleep(0.2)
        resumed = subprocess.run(argv, capture_output=True, text=True, timeout=900)
        assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
        assert (
            f"ending a learner service left running by an earlier job on {out / 'learner'} (pid "
            f"{leftover.pid})" in resumed.stderr
        )
        assert leftover.wait(timeout=5) is not None
    finally:
        leftover.kill()
    assert serving_processes(store) == []  # and the resumed job's own service ended with it

    robot = EpisodeStore.open(out / "robot" / "episodes.zarr")
    learner = EpisodeStore.open(store)
    assert len(robot.select(source=["teleop", "scripted"])) == 2 and len(robot.select(source="policy")) == 2
    assert sorted(robot.episode_ids) == sorted(learner.episode_ids)
    assert json.loads((out / "report" / "report.json").read_text())["results"][0]["trials"] == 2
