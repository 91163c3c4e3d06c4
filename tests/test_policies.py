"""Policy backends (replay, hold, scripted, LeRobot checkpoints) and the policy holder's swap path."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from wmpo_core.episode_store import EpisodeStore
from wmpo_core.policy import Observation, PolicyLoadError, load_policy
from wmpo_core.robot_config import load_robot_config
from wmpo_ros.policy_holder import PolicyHolder, probe_observation

SIM = load_robot_config("so101_sim")
REAL = load_robot_config("so101_real")


def obs(config, stamp: float = 0.0, state=None) -> Observation:
    o = probe_observation(config)
    o.stamp, o.extra = stamp, {}
    if state is not None:
        o.state = np.asarray(state, dtype=np.float64)
    return o


@pytest.fixture
def demo_store(tmp_path):
    path = tmp_path / "demos"
    with EpisodeStore.open(path, mode="a", durable=False) as store:
        for e in range(2):
            writer = store.begin_episode(
                SIM, source="scripted", task="pick up the cube", episode_id=f"ep_{e}"
            )
            for t in range(12):
                writer.append(
                    {"front": np.zeros((128, 128, 3), np.uint8)},
                    np.zeros(6),
                    np.array([t / 100, e, 0.0, 1.0]),
                    1000.0 + t / 10,
                )
            writer.commit(success=True, success_labeled_by="env")
    return path


def test_replay_is_indexed_by_time_since_the_episode_start(demo_store):
    policy = load_policy(f"replay:{demo_store}:ep_1", SIM)
    assert policy.version == "replay:ep_1" and policy.chunk_size == 10
    policy.reset()
    first = policy.predict_chunk(obs(SIM, stamp=50.0))
    np.testing.assert_allclose(first[:, 0], np.arange(10) / 100)
    later = policy.predict_chunk(obs(SIM, stamp=50.7))  # 7 ticks later, whatever was called in between
    np.testing.assert_allclose(later[:5, 0], np.arange(7, 12) / 100)
    np.testing.assert_allclose(
        later[5:], np.tile([0.0, 0.0, 0.0, 1.0], (5, 1))
    )  # past the end: hold (delta 0, gripper kept)


def test_replay_without_an_id_walks_the_store_one_episode_per_acting_episode(demo_store):
    holder = PolicyHolder(SIM)
    loaded = holder.load(f"replay:{demo_store}")  # verification probes and resets must not use up an episode
    holder.swap(loaded)
    seen = []
    for _ in range(3):
        holder.begin_episode()
        holder.begin_episode()  # an episode that never acted does not count either
        seen.append(loaded.policy.predict_chunk(obs(SIM, stamp=1.0))[0, 1])
        seen.append(loaded.policy.predict_chunk(obs(SIM, stamp=1.1))[0, 1])
    assert seen == [0.0, 0.0, 1.0, 1.0, 0.0, 0.0]


@pytest.mark.parametrize(
    ("spec", "error"),
    [
        ("replay:", "needs a store path"),
        ("replay:/no/such/store", "no episode store here"),
        ("replay:{store}:ep_9", "no episode 'ep_9'"),
    ],
)
def test_replay_errors_name_the_problem(demo_store, spec, error):
    with pytest.raises(PolicyLoadError, match=error):
        load_policy(spec.format(store=demo_store), SIM)


def test_replay_refuses_another_robots_episodes(demo_store):
    with pytest.raises(PolicyLoadError, match="4-dim actions"):
        load_policy(f"replay:{demo_store}:ep_0", REAL)


def test_hold_policy():
    np.testing.assert_allclose(load_policy("hold:gripper=0.5", SIM).predict_chunk(obs(SIM)), [[0, 0, 0, 0.5]])
    state = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    np.testing.assert_allclose(load_policy("hold:", REAL).predict_chunk(obs(REAL, state=state)), [state])
    with pytest.raises(PolicyLoadError, match=re.escape("needs a value, e.g. hold:gripper=0.5")):
        load_policy("hold:", SIM)
    with pytest.raises(PolicyLoadError, match="unknown action dims"):
        load_policy("hold:elbow=1", SIM)


def test_scripted_policy_and_unknown_specs():
    policy = load_policy("scripted:ros_harness:ConstantPolicy", SIM)
    assert policy.version == "constant-v1" and policy.predict_chunk(obs(SIM)).shape == (3, 4)
    with pytest.raises(PolicyLoadError, match="cannot import"):
        load_policy("scripted:ros_harness:NoSuchPolicy", SIM)
    with pytest.raises(PolicyLoadError, match="neither an existing checkpoint directory nor a known scheme"):
        load_policy("bogus:thing", SIM)


# ------------------------------------------------------------------------------- LeRobot checkpoints


@pytest.fixture(scope="module")
def act_checkpoint(tmp_path_factory):
    """A tiny ACT policy built from scratch (nothing downloaded), saved as `lerobot-train` saves it."""
    import torch
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.act.configuration_act import ACTConfig
    from lerobot.policies.factory import get_policy_class, make_pre_post_processors

    torch.manual_seed(0)
    config = ACTConfig(
        input_features={
            "observation.images.front": PolicyFeature(FeatureType.VISUAL, (3, 64, 64)),
            "observation.state": PolicyFeature(FeatureType.STATE, (6,)),
        },
        output_features={"action": PolicyFeature(FeatureType.ACTION, (6,))},
        dim_model=32, n_heads=2, dim_feedforward=64, n_encoder_layers=1, n_decoder_layers=1,
        use_vae=False, chunk_size=4, n_action_steps=4, pretrained_backbone_weights=None, device="cpu",
    )  # fmt: skip
    policy = get_policy_class("act")(config)
    # LeRobot units: degrees for arm joints, 0..100 for the gripper.
    stats = {
        "observation.state": {"mean": torch.zeros(6), "std": torch.full((6,), 30.0)},
        "action": {
            "mean": torch.tensor([0, 0, 0, 0, 0, 50.0]),
            "std": torch.tensor([30, 30, 30, 30, 30, 20.0]),
        },
        "observation.images.front": {"mean": torch.full((3, 1, 1), 0.5), "std": torch.full((3, 1, 1), 0.2)},
    }
    preprocessor, postprocessor = make_pre_post_processors(config, dataset_stats=stats)
    path = tmp_path_factory.mktemp("act") / "pretrained_model"
    policy.save_pretrained(path)
    preprocessor.save_pretrained(path)
    postprocessor.save_pretrained(path)
    return path


def test_lerobot_checkpoint_is_detected_and_runs_in_robot_units(act_checkpoint):
    policy = load_policy(act_checkpoint.parent, REAL)  # a training output dir holding pretrained_model/
    assert policy.version.startswith("lerobot:act:pretrained_model@sha256:") and policy.chunk_size == 1
    policy.reset()
    o = obs(REAL, state=np.zeros(6))
    o.images["front"] = np.random.default_rng(0).integers(
        0, 256, (480, 640, 3), dtype=np.uint8
    )  # resized to 64x64
    actions = np.concatenate([policy.predict_chunk(o) for _ in range(4)])
    assert actions.shape == (4, 6) and np.all(np.isfinite(actions))
    # Outputs come back from LeRobot units (degrees, 0..100) into the config's radians / [0, 1]:
    # a degree-scale output of this untrained net is a fraction of a radian.
    assert np.all(np.abs(actions[:, :5]) < math.radians(200))


def test_lerobot_checkpoint_for_another_robot_is_refused(act_checkpoint):
    with pytest.raises(
        PolicyLoadError, match=r"action has shape \(6,\), robot config .so101_sim. needs \(4,\)"
    ):
        load_policy(act_checkpoint, SIM)


# ------------------------------------------------------------------------------------ policy holder


def test_holder_verifies_stages_swaps_at_the_boundary_and_rolls_back():
    holder = PolicyHolder(SIM)
    first = holder.load("hold:gripper=1")
    assert holder.active is None  # loading changes nothing that runs
    holder.swap(first)
    candidate = holder.load("scripted:ros_harness:ConstantPolicy")
    holder.stage(candidate)
    assert holder.active is first and holder.staged is candidate
    assert holder.begin_episode() is candidate and holder.previous is first and holder.staged is None
    assert holder.begin_episode() is candidate  # nothing staged: the same policy continues
    assert holder.rollback() is first
    assert holder.begin_episode() is first and holder.previous is candidate


def test_holder_refuses_policies_that_fail_verification():
    holder = PolicyHolder(SIM)
    with pytest.raises(PolicyLoadError, match="empty spec"):
        holder.load("")

    class WrongShape:
        version, chunk_size = "bad-v1", 2

        def reset(self):
            pass

        def predict_chunk(self, obs):
            return np.zeros((2, 6))

    class NonFinite(WrongShape):
        def predict_chunk(self, obs):
            return np.full((1, 4), np.nan)

    with pytest.raises(PolicyLoadError, match=r"returned shape \(2, 6\)"):
        holder.verify(WrongShape())
    with pytest.raises(PolicyLoadError, match="non-finite"):
        holder.verify(NonFinite())
    with pytest.raises(PolicyLoadError, match="no previous policy"):
        holder.rollback()
