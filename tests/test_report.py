"""Run reports: the success table and plot carry the Wilson intervals, and the real-vs-imagined video
puts the recorded episode next to the world model's replay of the same actions, frame for frame."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
from test_world_model import fresh_model, render_square, square_robot_config, step_square
from wmpo_core.episode_store import EpisodeStore
from wmpo_core.robot_config import load_robot_config
from wmpo_learner.report import VersionResult, real_vs_imagined_video, results_table, write_report
from wmpo_learner.stats import wilson_interval


def test_table_and_report_carry_wilson_intervals(tmp_path: Path) -> None:
    results = [VersionResult("SFT", "sft-1", 3, 16), VersionResult("round 1", "grpo-2", 9, 16)]
    table = results_table(results)
    lo, hi = wilson_interval(9, 16)
    assert f"| round 1 | `grpo-2` | 9/16 (56%) | [{100 * lo:.0f}%, {100 * hi:.0f}%] |" in table
    report = write_report(tmp_path / "report", "title", results, {"robot": "so101_sim"}, [])
    payload = json.loads((tmp_path / "report" / "report.json").read_text())
    assert [r["successes"] for r in payload["results"]] == [3, 9] and payload["robot"] == "so101_sim"
    assert payload["results"][1]["ci95"] == pytest.approx([lo, hi])
    png = (tmp_path / "report" / "success.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert "success.png" in report.read_text()


def test_real_vs_imagined_video_pairs_each_real_frame_with_its_prediction(tmp_path: Path) -> None:
    robot = load_robot_config(square_robot_config(tmp_path))
    store_path = tmp_path / "store"
    pos, action = np.array([10.0, 10.0]), np.array([1.0, 0.0, 1.0])
    with EpisodeStore.open(store_path, mode="a", durable=False) as store:
        writer = store.begin_episode(robot, source="policy", task=robot.tasks[0], policy_version="v1")
        for t in range(7):
            writer.append({"front": render_square(pos, 1.0)}, pos, action, 0.1 * t)
            pos = step_square(pos, action)
        episode_id = writer.commit(success=True, success_labeled_by="env").episode_id
    wm_dir = fresh_model().save(tmp_path / "wm")
    video = real_vs_imagined_video(wm_dir, store_path, episode_id, tmp_path / "v.mp4", max_steps=4)
    with av.open(str(video)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 4  # steps 1..4: each real frame next to the prediction of the same step
    side = 32
    assert frames[0].shape[:2] == (side, 2 * side + 4)
    # The left half is the recorded frame 1: the square moved 3 px right of where it started.
    real_1 = frames[0][:, :side].astype(int)
    expected = render_square(np.array([13.0, 10.0]), 1.0).astype(int)
    assert np.abs(real_1 - expected).mean() < 12  # video compression only
