"""The imagination diagnostics (`wmpo imagination-check`) and GRPO's collapse guard, on real tiny
models: outcome agreement counts every replayed episode against its real label, the policy ranking
rolls every policy out, and the guard keeps the best-scoring iterate (the parent when none beats it)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from test_grpo_run import _imagination_parts, imagination_run
from wmpo_core.cli import main as wmpo
from wmpo_core.episode_store import EpisodeStore
from wmpo_core.vla.checkpoint import load_checkpoint
from wmpo_learner.grpo.algorithm import GRPOConfig
from wmpo_learner.grpo.rollouts import ImaginationSource
from wmpo_learner.grpo.run import grpo, initial_frames
from wmpo_learner.grpo.trainer import train
from wmpo_learner.reward.checkpoint import load_checkpoint as load_reward
from wmpo_learner.reward.checkpoint import save_checkpoint as save_reward
from wmpo_learner.world_model import WorldModel


def _labelled_store(robot, path: Path) -> Path:
    """Four 3-step policy rollouts, two labelled successful by the env."""
    rng = np.random.default_rng(1)
    with EpisodeStore.open(path, mode="a") as store:
        for i in range(4):
            writer = store.begin_episode(
                robot, "policy", "pick up the cube", policy_version="test-base-0", env_seed=i
            )
            for step in range(3):
                writer.append(
                    {"front": rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)},
                    np.zeros(6),
                    rng.uniform(0, 1, 4),
                    float(step),
                )
            writer.commit(success=i % 2 == 0, success_labeled_by="env")
    return path


def _with_threshold(reward_path: Path, threshold: float, out: Path) -> Path:
    model, _ = load_reward(reward_path)
    model.threshold = threshold
    save_reward(model, out)
    return out


@pytest.mark.parametrize(("threshold", "predicted"), [(0.0, True), (1.0, False)])
def test_outcome_agreement_counts_every_episode_against_its_real_label(
    tiny_vla_checkpoint, short_robot, tmp_path: Path, threshold, predicted
) -> None:
    _, wm, reward, _ = _imagination_parts(short_robot, tmp_path, tiny_vla_checkpoint)
    store = _labelled_store(short_robot, tmp_path / "rollouts.zarr")
    reward = _with_threshold(reward, threshold, tmp_path / "reward_t")
    evals = []
    for i, rate in enumerate((0.1, 0.2, 0.3)):
        (tmp_path / f"eval{i}.json").write_text(json.dumps({"success": {"rate": rate}}))
        evals.append(
            f"{tiny_vla_checkpoint(short_robot, tmp_path / f'p{i}', seed=i, version=f'test-base-{i}')}="
            f"{tmp_path / f'eval{i}.json'}"
        )
    out = tmp_path / "check.json"
    robot_yaml = tmp_path / "so101_sim.yaml"
    data = yaml.safe_load((Path(__file__).parents[1] / "robot_configs" / "so101_sim.yaml").read_text())
    robot_yaml.write_text(yaml.safe_dump({**data, "episode_time_limit_s": 1.6}))  # = the short_robot fixture
    argv = [
        "imagination-check",
        "--store",
        str(store),
        "--wm",
        str(wm),
        "--reward",
        str(reward),
        "--json",
        str(out),
        "--robot",
        str(robot_yaml),
        "--sampling-steps",
        "1",
        "--horizon",
        "8",
        "--rank-frames",
        "2",
    ]
    assert wmpo(argv + [a for e in evals for a in ("--rank", e)]) == 0
    result = json.loads(out.read_text())
    o = result["outcome_agreement"]
    assert o["episodes"] == 4 and o["held_out"] and o["real_success"] == 0.5
    c = o["confusion"]
    if predicted:  # threshold 0: every imagined video is a success
        assert (c["true_positive"], c["false_positive"], c["true_negative"], c["false_negative"]) == (
            2,
            2,
            0,
            0,
        )
    else:
        assert (c["true_positive"], c["false_positive"], c["true_negative"], c["false_negative"]) == (
            0,
            0,
            2,
            2,
        )
    assert o["imagined_success"] == float(predicted) and o["balanced_accuracy"] == 0.5
    assert o["reward_on_real_videos"]["predicted_success"] == float(predicted)
    ranking = result["policy_ranking"]
    assert ranking["versions"] == 3 and [p["real_success"] for p in ranking["policies"]] == [0.1, 0.2, 0.3]
    assert all(p["imagined_success"] == float(predicted) for p in ranking["policies"])
    assert ranking["spearman"] is None  # constant imagined success has no rank correlation


def test_imagination_check_refuses_bad_input_in_one_line(
    tiny_vla_checkpoint, short_robot, tmp_path: Path, capsys
) -> None:
    _, wm, reward, store = _imagination_parts(short_robot, tmp_path, tiny_vla_checkpoint)
    assert (
        wmpo(
            [
                "imagination-check",
                "--store",
                str(store),
                "--wm",
                str(wm),
                "--reward",
                str(reward),
                "--rank",
                "x",
            ]
        )
        == 2
    )
    assert "--rank expects POLICY_DIR=EVAL_JSON" in capsys.readouterr().err
    assert (
        wmpo(
            [
                "imagination-check",
                "--store",
                str(tmp_path / "none.zarr"),
                "--wm",
                str(wm),
                "--reward",
                str(reward),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.startswith("wmpo imagination-check:") and "\n" not in err


def test_collapse_guard_keeps_the_best_iterate_or_the_parent(
    tiny_vla_checkpoint, short_robot, tmp_path: Path
) -> None:
    base, wm_path, reward_path, store = _imagination_parts(short_robot, tmp_path, tiny_vla_checkpoint)
    reward, _ = load_reward(reward_path)
    frames, texts, _ = initial_frames(store, short_robot, "front")
    config = GRPOConfig(
        group_size=4,
        groups_per_batch=2,
        minibatch_trajectories=8,
        iterations=3,
        max_resample_rounds=0,
        lr=1e-2,
        clip_high=10.0,
    )

    def run(scores: list[float]):
        vla = load_checkpoint(base, short_robot)
        source = ImaginationSource(
            WorldModel.load(wm_path).eval(), reward, frames, texts, horizon=8, sampling_steps=1, seed=0
        )
        best = np.array(
            [
                s.max()
                for s in reward.score_windows(
                    source.collect(vla, 2, 4, 1.6, torch.Generator().manual_seed(0)).frames
                )
            ]
        )
        reward.threshold = float(np.median(best))  # mixed groups: every iteration updates the policy
        snapshots = []

        def guard(model) -> float:  # a scripted greedy score; records the weights it was asked about
            snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
            return scores[len(snapshots) - 1]

        history, kept = train(
            vla, source, config, torch.Generator().manual_seed(1), microbatch=8, progress=False, guard=guard
        )
        return vla, history, kept, snapshots

    vla, history, kept, snapshots = run([0.5, 0.2, 0.75, 0.1])  # parent, then after iterations 0, 1, 2
    updated = [h.groups_kept > 0 for h in history]
    assert all(updated), "every iteration must update for this test to mean anything"
    assert (kept.parent_score, kept.best_score, kept.best_iteration) == (0.5, 0.75, 1)
    assert [h.greedy_score for h in history] == [0.2, 0.75, 0.1]
    assert not all(
        torch.equal(snapshots[2][k], snapshots[3][k]) for k in snapshots[2]
    )  # the last update changed weights
    assert all(
        torch.equal(v, snapshots[2][k]) for k, v in vla.state_dict().items()
    )  # ... and iteration 1's were kept

    vla, _, kept, snapshots = run([0.5, 0.4, 0.3, 0.2])  # every update made the greedy policy worse
    assert kept.best_iteration == -1
    assert all(torch.equal(v, snapshots[0][k]) for k, v in vla.state_dict().items())  # the parent's weights


def test_grpo_in_imagination_records_what_the_guard_kept(
    tiny_vla_checkpoint, short_robot, short_robot_yaml, tmp_path: Path
) -> None:
    parts = _imagination_parts(short_robot, tmp_path, tiny_vla_checkpoint)
    run = imagination_run(parts, short_robot_yaml, tmp_path / "out", iterations=2, guard_frames=2)
    summary = grpo(run, progress=False)
    saved = json.loads((tmp_path / "out" / "training" / "grpo_summary.json").read_text())
    assert saved["guard"] == summary["guard"] and 0.0 <= saved["guard"]["parent_score"] <= 1.0
    assert saved["guard"]["best_iteration"] in (-1, 0, 1) and saved["iterations"] == 2


def test_calibration_rethresholds_the_reward_model_on_imagined_replays(
    tiny_vla_checkpoint, short_robot, tmp_path: Path
) -> None:
    _, wm, reward, _ = _imagination_parts(short_robot, tmp_path, tiny_vla_checkpoint)
    store = _labelled_store(short_robot, tmp_path / "rollouts.zarr")
    robot_yaml = tmp_path / "so101_sim.yaml"
    data = yaml.safe_load((Path(__file__).parents[1] / "robot_configs" / "so101_sim.yaml").read_text())
    robot_yaml.write_text(yaml.safe_dump({**data, "episode_time_limit_s": 1.6}))
    out, calibrated = tmp_path / "check.json", tmp_path / "reward_imagined"
    assert (
        wmpo(
            [
                "imagination-check",
                "--store",
                str(store),
                "--wm",
                str(wm),
                "--reward",
                str(reward),
                "--robot",
                str(robot_yaml),
                "--sampling-steps",
                "1",
                "--calibrate-on",
                str(store),
                "--calibrated-reward",
                str(calibrated),
                "--json",
                str(out),
            ]
        )
        == 0
    )
    result = json.loads(out.read_text())
    c = result["calibration"]
    assert c["episodes"] == 4 and c["previous_threshold"] == load_reward(reward)[0].threshold
    assert load_reward(calibrated)[0].threshold == c["threshold"] == result["outcome_agreement"]["threshold"]
    # Calibrated on the very episodes it is checked on, with the same noise: the best-F1 threshold
    # separates them at least as well as chance.
    assert result["outcome_agreement"]["balanced_accuracy"] >= 0.5
    assert (
        wmpo(
            [
                "imagination-check",
                "--store",
                str(store),
                "--wm",
                str(wm),
                "--reward",
                str(reward),
                "--robot",
                str(robot_yaml),
                "--calibrate-on",
                str(store),
            ]
        )
        == 2
    )  # nowhere to write it
