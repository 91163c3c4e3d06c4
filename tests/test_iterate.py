"""`wmpo iterate`: one full lifelong round with tiny models on CPU, from a store of real sim episodes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from wmpo_core.cli import main
from wmpo_core.episode_store import EpisodeStore
from wmpo_core.normalization import ActionNormalizer
from wmpo_core.policy import load_policy
from wmpo_core.robot_config import load_robot_config
from wmpo_core.sim_rollout import run_episodes, train_seeds
from wmpo_core.vla.checkpoint import read_manifest, save_checkpoint
from wmpo_core.vla.config import load_recipe
from wmpo_core.vla.model import VLA
from wmpo_learner.iterate import promotion, stage_sizes


@pytest.mark.slow
def test_one_round_aligns_rethresholds_improves_and_evaluates(tmp_path: Path) -> None:
    from wmpo_learner.world_model import WorldModel, load_preset

    robot = load_robot_config("so101_sim")
    torch.manual_seed(0)
    normalizer = ActionNormalizer([-1, -1, -1, 0], [1, 1, 1, 1])
    save_checkpoint(
        VLA.create(load_recipe("tiny").model, robot, normalizer), tmp_path / "base", robot, version="base-v1"
    )
    wm_config, _ = load_preset("tiny")
    WorldModel.from_config(wm_config, normalizer, "front", robot.name, robot.content_hash).save(
        tmp_path / "wm0"
    )

    store_path = tmp_path / "learner.zarr"
    with EpisodeStore.open(store_path, mode="a") as store:
        run_episodes(robot, None, train_seeds(3), store=store, progress=False)  # successful demos
        policy = load_policy(str(tmp_path / "base"), robot)
        run_episodes(
            robot, policy, train_seeds(3, offset=100), store=store, progress=False
        )  # the base policy's rollouts
        assert {m.source for m in store} == {"scripted", "policy"}

    sizes = [
        "align_steps=3",
        "align_batch=2",
        "align_vae_steps=0",
        "reward_steps=4",
        "grpo_iterations=1",
        "group_size=2",
        "groups_per_batch=1",
        "minibatch=2",
        "sampling_steps=1",
        "max_resample_rounds=0",
        "horizon=24",
        "eval_episodes=2",
        "guard_frames=2",
        "few_step=1",
    ]
    argv = [
        "iterate",
        "--store",
        str(store_path),
        "--policy",
        str(tmp_path / "base"),
        "--wm",
        str(tmp_path / "wm0"),
        "--out",
        str(tmp_path / "round1"),
        "--version",
        "round1-v2",
        "--device",
        "cpu",
    ]
    for item in sizes:
        argv += ["--set", item]
    # An alignment killed midway left its folder behind: the round continues it instead of refusing.
    (tmp_path / "round1" / "world_model").mkdir(parents=True)
    (tmp_path / "round1" / "world_model" / "train_config.json").write_text("{}")
    assert main(argv) == 0

    summary = json.loads((tmp_path / "round1" / "round.json").read_text())
    assert (summary["parent_version"], summary["version"], summary["aligned_on"]) == (
        "base-v1",
        "round1-v2",
        "base-v1",
    )
    assert [s["stage"] for s in summary["stages"]] == ["align", "reward", "check", "few_step", "grpo", "eval"]
    # All rollouts failed, so no sampler can be certified: GRPO keeps the preset's sampler, and says so.
    why_not = json.loads((tmp_path / "round1" / "few_step.json").read_text())
    assert why_not["chosen"] is None and "needs successes and failures" in why_not["why_not"]
    assert summary["imagination_sampler"] == {"sampler": "euler", "steps": 1, "why": "asked for"}
    assert summary["eval"]["trials"] == 2
    # The untrained policy's rollouts all failed: the check cannot tell outcomes apart, so no promotion.
    assert summary["check"]["episodes"] == 3 and summary["check"]["real_success"] == 0.0
    assert summary["check"]["held_out"] is False  # no --check-store: it fell back to trained-on rollouts
    assert not summary["promoted"] and summary["next_policy"] == str(tmp_path / "base") and summary["reason"]
    manifest = read_manifest(tmp_path / "round1" / "policy")
    assert manifest["parent_version"] == "base-v1"
    provenance = manifest["provenance"]
    assert provenance["world_model"] == str(tmp_path / "round1" / "world_model")
    assert provenance["reward_model"] == str(tmp_path / "round1" / "reward_model")
    assert provenance["aligned_on"] == {"store": str(store_path), "policy_version": "base-v1"}
    assert len(provenance["data"]["initial_episodes"]) == 3  # the policy's rollouts start imagination

    # Re-running the round resumes: every finished stage is skipped.
    assert main(argv) == 0
    again = json.loads((tmp_path / "round1" / "round.json").read_text())
    assert all(s.get("skipped") for s in again["stages"])


def test_stage_size_overrides_are_checked() -> None:
    assert stage_sizes("cpu", ["grpo_iterations=3"])["grpo_iterations"] == 3
    with pytest.raises(ValueError, match="KEY one of"):
        stage_sizes("cpu", ["grpo_iters=3"])
    with pytest.raises(ValueError, match="expected a int"):
        stage_sizes("cpu", ["grpo_iterations=many"])


def test_promotion_needs_an_update_a_better_greedy_iterate_and_trusted_imagination() -> None:
    guard = {"parent_score": 0.25, "best_score": 0.5, "best_iteration": 2}
    trusted = {"balanced_accuracy": 0.85}
    assert promotion({"updates": 3, "guard": guard}, trusted, 0.7)[0]
    promoted, reason = promotion({"updates": 0, "guard": guard}, trusted, 0.7)
    assert not promoted and "no update" in reason
    promoted, reason = promotion(
        {"updates": 3, "guard": {**guard, "best_iteration": -1, "best_score": 0.25}}, trusted, 0.7
    )
    assert not promoted and "kept the parent" in reason
    promoted, reason = promotion({"updates": 3, "guard": guard}, {"balanced_accuracy": 0.6}, 0.7)
    assert not promoted and "not trusted: outcome agreement 0.60 < 0.7" in reason
    assert not promotion({"updates": 3, "guard": guard}, {"balanced_accuracy": None}, 0.7)[0]
    assert not promotion({"updates": 3, "guard": None}, trusted, 0.7)[0]
