"""GRPO runs end to end: in the simulator (budgeted real episodes) and in imagination."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from wmpo_core.normalization import ActionNormalizer
from wmpo_core.vla.checkpoint import load_checkpoint, read_manifest
from wmpo_learner.grpo.algorithm import GRPOConfig
from wmpo_learner.grpo.rollouts import BudgetExhausted, SimSource
from wmpo_learner.grpo.run import GRPORunConfig, grpo


def test_sim_source_groups_share_a_seed_and_respect_the_budget(
    tiny_vla_checkpoint, short_robot, tmp_path: Path
) -> None:
    vla = load_checkpoint(
        tiny_vla_checkpoint(short_robot, tmp_path / "base", version="test-base-0"), short_robot
    )
    source = SimSource(short_robot, seeds=[11, 12], budget_episodes=6)
    generator = torch.Generator().manual_seed(0)
    try:
        batch = source.collect(vla, num_groups=2, group_size=3, temperature=1.6, generator=generator)
        assert batch.num_groups == 2 and source.real_episodes_used == 6
        first = batch.observations[:, 0]
        assert all(np.array_equal(first[0], first[i]) for i in (1, 2)), (
            "a group starts from one initial state"
        )
        assert not np.array_equal(first[0], first[3]), "groups start from different seeds"
        assert batch.tokens.shape == (6, 2, 8, 4) and batch.executed.all()  # 16 steps = 2 full chunks
        assert not torch.equal(batch.tokens[0], batch.tokens[1]), "rollouts of a group sample independently"
        with pytest.raises(BudgetExhausted):
            source.collect(vla, num_groups=1, group_size=3, temperature=1.6, generator=generator)
    finally:
        source.close()


def test_sim_baseline_spends_exactly_its_budget_and_records_provenance(
    tiny_vla_checkpoint, short_robot, short_robot_yaml, tmp_path: Path
) -> None:
    base = tiny_vla_checkpoint(short_robot, tmp_path / "base", version="test-base-0")
    config = GRPOConfig(
        group_size=2,
        groups_per_batch=2,
        minibatch_trajectories=4,
        iterations=5,
        max_resample_rounds=0,
        lr=1e-4,
    )
    run = GRPORunConfig(
        policy=base, out=tmp_path / "out", robot=str(short_robot_yaml), env="sim", budget=6, seed_offset=500
    )
    summary = grpo(dataclasses.replace(run, algorithm=config), progress=False)
    assert summary["real_episodes_used"] == 6  # 3 groups of 2, then the budget is spent
    manifest = read_manifest(tmp_path / "out")
    assert manifest["parent_version"] == "test-base-0"
    assert (
        manifest["provenance"]["method"] == "grpo-sim" and manifest["provenance"]["real_episodes_used"] == 6
    )
    history = json.loads((tmp_path / "out" / "training" / "grpo_history.json").read_text())
    assert [h["real_episodes_used"] for h in history] == [4, 6]
    assert all(h["trajectories_sampled"] in (2, 4) for h in history)
    load_checkpoint(tmp_path / "out", short_robot)  # a loadable, verified policy


# ---------------------------------------------------------------------------- imagination


def _imagination_parts(robot, tmp_path: Path, tiny_vla_checkpoint):
    """Untrained but real tiny world model, reward model and VLA, plus a store of real first frames."""
    from wmpo_core.episode_store import EpisodeStore
    from wmpo_learner.reward.checkpoint import save_checkpoint as save_reward
    from wmpo_learner.reward.model import RewardModel
    from wmpo_learner.world_model import WorldModel, load_preset

    torch.manual_seed(0)
    normalizer = ActionNormalizer([-1, -1, -1, 0], [1, 1, 1, 1])
    wm_config, _ = load_preset("tiny")
    wm = WorldModel.from_config(wm_config, normalizer, "front", robot.name, robot.content_hash)
    wm.save(tmp_path / "wm")
    save_reward(RewardModel.from_preset("tiny", camera="front"), tmp_path / "reward")
    store = EpisodeStore.open(tmp_path / "store.zarr", mode="a")
    rng = np.random.default_rng(0)
    for seed in range(3):
        writer = store.begin_episode(
            robot, "policy", "pick up the cube", policy_version="test-base-0", env_seed=seed
        )
        for step in range(2):
            writer.append(
                {"front": rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)},
                np.zeros(6),
                np.zeros(4),
                float(step),
            )
        writer.commit(success=False, success_labeled_by="env")
    store.close()
    return (
        tiny_vla_checkpoint(robot, tmp_path / "base", version="test-base-0"),
        tmp_path / "wm",
        tmp_path / "reward",
        tmp_path / "store.zarr",
    )


def test_imagined_groups_scored_by_the_reward_model_drive_the_update(
    tiny_vla_checkpoint, short_robot, tmp_path: Path
) -> None:
    from wmpo_learner.grpo.algorithm import group_advantages, informative_groups
    from wmpo_learner.grpo.rollouts import ImaginationSource
    from wmpo_learner.grpo.run import initial_frames
    from wmpo_learner.grpo.trainer import TokenScorer, update
    from wmpo_learner.reward.checkpoint import load_checkpoint as load_reward
    from wmpo_learner.world_model import WorldModel

    base, wm_path, reward_path, store = _imagination_parts(short_robot, tmp_path, tiny_vla_checkpoint)
    vla = load_checkpoint(base, short_robot)
    frames, texts, ids = initial_frames(store, short_robot, "front")
    assert frames.shape == (3, 128, 128, 3) and len(ids) == 3
    reward, _ = load_reward(reward_path)
    source = ImaginationSource(
        WorldModel.load(wm_path).eval(), reward, frames, texts, horizon=16, sampling_steps=1, seed=0
    )

    def collect():
        return source.collect(
            vla, num_groups=2, group_size=4, temperature=1.6, generator=torch.Generator().manual_seed(7)
        )

    batch = collect()
    assert batch.tokens.shape == (8, 2, 8, 4) and batch.observations.shape == (8, 2, 64, 64, 3)
    assert batch.frames.shape == (8, 17, 64, 64, 3) and source.real_episodes_used == 0
    # Put the threshold at the median of the imagined episodes' best window scores: half succeed.
    best = np.array([s.max() for s in reward.score_windows(batch.frames)])
    reward.threshold = float(np.median(best))
    batch = collect()  # same seed, same imagined videos
    assert torch.equal(batch.rewards, torch.from_numpy(best >= reward.threshold).float())
    success_rows = torch.nonzero(batch.rewards).flatten()
    assert all(0 <= int(batch.finish_steps[r]) < 16 for r in success_rows)
    assert all(int(batch.finish_steps[r]) == -1 for r in torch.nonzero(batch.rewards == 0).flatten())

    keep = informative_groups(batch.group_rewards())
    assert keep.any(), "the median threshold gives at least one mixed group"
    batch = batch.select_groups(keep)
    advantages = group_advantages(batch.group_rewards()).view(-1)
    config = GRPOConfig(group_size=4, minibatch_trajectories=len(batch.instructions), lr=1e-3, clip_high=10.0)

    def chosen_log_probs():
        with torch.no_grad():
            obs = batch.observations.reshape(-1, 64, 64, 3)
            texts = [t for t in batch.instructions for _ in range(2)]
            lp = vla.log_probs(vla.encode_inputs(obs, texts), batch.tokens.reshape(-1, 8, 4))
        return lp.view(len(batch.instructions), -1).sum(dim=1)

    # An update that cannot move the weights measures no distance from the sampling policy ...
    frozen = update(
        TokenScorer(vla), torch.optim.AdamW(vla.parameters(), lr=0.0, weight_decay=0.0), batch, config, 4
    )
    assert frozen["post_update_kl"] == pytest.approx(0.0, abs=1e-6)
    before = chosen_log_probs()
    stats = update(
        TokenScorer(vla),
        torch.optim.AdamW(vla.parameters(), lr=1e-3, weight_decay=0.0),
        batch,
        config,
        microbatch=4,
    )
    change = chosen_log_probs() - before
    assert stats["entropy"] > 0 and stats["grad_norm"] > 0
    assert stats["post_update_kl"] > 1e-4  # ... and a real one does
    assert change[advantages > 0].mean() > 0 > change[advantages < 0].mean()


def imagination_run(
    parts: tuple[Path, Path, Path, Path], robot_yaml: Path, out: Path, iterations: int, **changes
) -> GRPORunConfig:
    """A test-sized GRPO run in imagination over `_imagination_parts` (8 steps, 1 sampling step)."""
    base, wm_path, reward_path, store = parts
    algorithm = GRPOConfig(
        group_size=2,
        groups_per_batch=2,
        minibatch_trajectories=4,
        iterations=iterations,
        max_resample_rounds=0,
    )
    return GRPORunConfig(
        policy=base,
        out=out,
        robot=str(robot_yaml),
        wm=wm_path,
        reward=reward_path,
        store=store,
        horizon=8,
        sampling_steps=1,
        algorithm=algorithm,
        **changes,
    )


def test_grpo_in_imagination_writes_a_new_version_naming_its_sources(
    tiny_vla_checkpoint, short_robot, short_robot_yaml, tmp_path: Path
) -> None:
    parts = _imagination_parts(short_robot, tmp_path, tiny_vla_checkpoint)
    wm_path, reward_path = parts[1], parts[2]
    run = imagination_run(parts, short_robot_yaml, tmp_path / "out", iterations=1, version="test-grpo-1")
    summary = grpo(run, progress=False)
    assert summary["version"] == "test-grpo-1" and summary["real_episodes_used"] == 0
    provenance = read_manifest(tmp_path / "out")["provenance"]
    assert provenance["method"] == "grpo-imagination" and provenance["world_model"] == str(wm_path)
    assert provenance["reward_model"] == str(reward_path) and len(provenance["data"]["initial_episodes"]) == 3
    assert load_checkpoint(tmp_path / "out", short_robot).parent_version == "test-base-0"
    with pytest.raises(ValueError, match="imagination needs --wm"):
        grpo(dataclasses.replace(run, out=tmp_path / "x", wm=None), progress=False)
    assert not (tmp_path / "x").exists()
