"""GRPO runs end to end: in the simulator (budgeted real episodes) and in imagination."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from wmpo_core.normalization import ActionNormalizer
from wmpo_core.robot_config import load_robot_config, parse_robot_config
from wmpo_core.vla.checkpoint import load_checkpoint, read_manifest, save_checkpoint
from wmpo_core.vla.config import load_recipe
from wmpo_core.vla.model import VLA
from wmpo_learner.grpo.algorithm import GRPOConfig
from wmpo_learner.grpo.rollouts import BudgetExhausted, SimSource
from wmpo_learner.grpo.run import run_grpo


@pytest.fixture(scope="module")
def short_robot():
    """so101_sim with 1.6 s episodes (16 steps = 2 chunks): real MuJoCo, test-sized."""
    data = yaml.safe_load((Path(__file__).parents[1] / "robot_configs" / "so101_sim.yaml").read_text())
    data["episode_time_limit_s"] = 1.6
    return parse_robot_config(data, source="so101_sim (short episodes)")


def tiny_vla_checkpoint(robot, path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    vla = VLA.create(load_recipe("tiny").model, robot, ActionNormalizer([-1, -1, -1, 0], [1, 1, 1, 1]))
    save_checkpoint(vla, path, robot, version=f"test-base-{seed}")
    return path


def test_sim_source_groups_share_a_seed_and_respect_the_budget(short_robot, tmp_path: Path) -> None:
    vla = load_checkpoint(tiny_vla_checkpoint(short_robot, tmp_path / "base"), short_robot)
    source = SimSource(short_robot, seeds=[11, 12], budget_episodes=6)
    generator = torch.Generator().manual_seed(0)
    try:
        batch = source.collect(vla, num_groups=2, group_size=3, temperature=1.6, generator=generator)
        assert batch.num_groups == 2 and source.real_episodes_used == 6
        first = batch.observations[:, 0]
        assert all(np.array_equal(first[0], first[i]) for i in (1, 2)), "a group starts from one initial state"
        assert not np.array_equal(first[0], first[3]), "groups start from different seeds"
        assert batch.tokens.shape == (6, 2, 8, 4) and batch.executed.all()  # 16 steps = 2 full chunks
        assert not torch.equal(batch.tokens[0], batch.tokens[1]), "rollouts of a group sample independently"
        with pytest.raises(BudgetExhausted):
            source.collect(vla, num_groups=1, group_size=3, temperature=1.6, generator=generator)
    finally:
        source.close()


def test_sim_baseline_spends_exactly_its_budget_and_records_provenance(short_robot, tmp_path: Path) -> None:
    base = tiny_vla_checkpoint(short_robot, tmp_path / "base")
    config = GRPOConfig(group_size=2, groups_per_batch=2, minibatch_trajectories=4, iterations=5, max_resample_rounds=0, lr=1e-4)
    summary = run_grpo(base, short_robot, tmp_path / "out", config, env="sim", budget=6, seed_offset=500, progress=False)
    assert summary["real_episodes_used"] == 6  # 3 groups of 2, then the budget is spent
    manifest = read_manifest(tmp_path / "out")
    assert manifest["parent_version"] == "test-base-0"
    assert manifest["provenance"]["method"] == "grpo-sim" and manifest["provenance"]["real_episodes_used"] == 6
    history = json.loads((tmp_path / "out" / "training" / "grpo_history.json").read_text())
    assert [h["real_episodes_used"] for h in history] == [4, 6]
    assert all(h["trajectories_sampled"] in (2, 4) for h in history)
    load_checkpoint(tmp_path / "out", short_robot)  # a loadable, verified policy
