"""End to end on the simulated SO-101, through `wmpo teleop` / `wmpo deploy` as a user runs them:
sim arm (MuJoCo, offscreen) + teleop or policy node + recorder in one process, over real DDS, into
a real episode store. Lockstep simulation makes the results independent of how loaded the CPU is.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from wmpo_core.episode_store import EpisodeStore
from wmpo_core.robot_config import load_robot_config

SIM = load_robot_config("so101_sim")
DEMOS = 8


def wmpo(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "wmpo_core.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={
            **os.environ,
            "PYTHONPATH": os.path.dirname(__file__) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        },
    )
    assert result.returncode == 0, f"wmpo {' '.join(args)} failed:\n{result.stderr[-4000:]}"
    return result


@pytest.fixture(scope="module")
def demos(tmp_path_factory):
    store = tmp_path_factory.mktemp("sim") / "demos"
    wmpo(
        "teleop",
        "--robot",
        "so101_sim",
        "--episodes",
        str(DEMOS),
        "--store",
        str(store),
        "--real-time-factor",
        "0",
    )
    return store


@pytest.mark.slow
def test_scripted_teleop_seeds_successful_demonstrations(demos):
    store = EpisodeStore.open(demos)
    metas = list(store)
    assert len(metas) == DEMOS
    assert sum(bool(m.success) for m in metas) >= 0.9 * DEMOS
    assert sorted(m.env_seed for m in metas) == list(range(DEMOS))  # seed, seed + 1, ...
    for m in metas:
        assert (m.source, m.task, m.robot_config_name, m.robot_config_hash) == (
            "scripted",
            SIM.tasks[0],
            "so101_sim",
            SIM.content_hash,
        )
        assert m.success_labeled_by == "env" and m.policy_version is None
        assert 1 < m.num_steps <= SIM.max_episode_steps
        if m.success:
            assert m.extra["ended_by"] == "success"
        cadence = m.extra["cadence"]
        assert cadence["effective_hz"] == pytest.approx(SIM.control_rate_hz, rel=1e-6)
        assert cadence["dropped_frames"] == {"front": 0} and cadence["unpaired_commands"] == 0
        episode = store.episode(m.episode_id)
        assert episode.frames("front").shape == (m.num_steps, 128, 128, 3)
        assert episode.state().shape == (m.num_steps, 6) and episode.action().shape == (m.num_steps, 4)
        np.testing.assert_allclose(np.diff(episode.time()), SIM.control_period_s, atol=1e-6)
        np.testing.assert_allclose(episode.image_time("front"), episode.time())


@pytest.mark.slow
def test_deployed_replay_reproduces_the_demonstrations_exactly(demos, tmp_path):
    rollouts = tmp_path / "rollouts"
    wmpo(
        "deploy",
        "--robot",
        "so101_sim",
        "--policy",
        f"replay:{demos}",
        "--episodes",
        "2",
        "--store",
        str(rollouts),
        "--real-time-factor",
        "0",
    )
    demo_store, rollout_store = EpisodeStore.open(demos), EpisodeStore.open(rollouts)
    demo_by_seed = {m.env_seed: m for m in demo_store}
    rollout_metas = list(rollout_store)
    assert len(rollout_metas) == 2
    for m in rollout_metas:
        assert m.source == "policy" and m.policy_version == f"replay:demos[{DEMOS}]"
        demo = demo_by_seed[m.env_seed]
        assert (m.num_steps, m.success) == (demo.num_steps, demo.success)
        replayed, original = rollout_store.episode(m.episode_id), demo_store.episode(demo.episode_id)
        # Same seed, same actions -> the same frames: frame i was answered by action i in both runs.
        np.testing.assert_allclose(replayed.action(), original.action(), atol=1e-6)
        np.testing.assert_array_equal(replayed.frames("front"), original.frames("front"))
        np.testing.assert_allclose(replayed.state(), original.state(), atol=1e-6)


@pytest.mark.slow
def test_deploy_records_a_lerobot_checkpoint_and_stamps_its_version(tmp_path):
    import torch
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.act.configuration_act import ACTConfig
    from lerobot.policies.factory import get_policy_class, make_pre_post_processors

    config = ACTConfig(
        input_features={
            "observation.images.front": PolicyFeature(FeatureType.VISUAL, (3, 64, 64)),
            "observation.state": PolicyFeature(FeatureType.STATE, (6,)),
        },
        output_features={"action": PolicyFeature(FeatureType.ACTION, (4,))},
        dim_model=32, n_heads=2, dim_feedforward=64, n_encoder_layers=1, n_decoder_layers=1,
        use_vae=False, chunk_size=4, n_action_steps=4, pretrained_backbone_weights=None, device="cpu",
    )  # fmt: skip
    stats = {
        "observation.state": {"mean": torch.zeros(6), "std": torch.ones(6)},
        "action": {"mean": torch.tensor([0, 0, 0, 0.5]), "std": torch.tensor([0.5, 0.5, 0.5, 0.5])},
        "observation.images.front": {"mean": torch.full((3, 1, 1), 0.5), "std": torch.full((3, 1, 1), 0.2)},
    }
    checkpoint = tmp_path / "act_sim"
    get_policy_class("act")(config).save_pretrained(checkpoint)
    for processor in make_pre_post_processors(config, dataset_stats=stats):
        processor.save_pretrained(checkpoint)
    store = tmp_path / "act_rollouts"
    wmpo(
        "deploy",
        "--robot",
        "so101_sim",
        "--policy",
        str(checkpoint),
        "--episodes",
        "1",
        "--max-steps",
        "8",
        "--store",
        str(store),
        "--real-time-factor",
        "0",
    )
    (meta,) = list(EpisodeStore.open(store))
    assert meta.num_steps == 8 and meta.extra["ended_by"] == "time_limit"
    assert meta.policy_version.startswith("lerobot:act:act_sim@sha256:") and meta.success is False
    actions = EpisodeStore.open(store).episode(meta.episode_id).action()
    low, high = np.array([d.low for d in SIM.action.dims]), np.array([d.high for d in SIM.action.dims])
    assert np.all(actions >= low) and np.all(actions <= high)  # through the safety filter
