"""`wmpo eval`, the plain sim rollout loop it runs, seed ranges and the reporting statistics."""

import json

import numpy as np
import pytest
from wmpo_core.cli import main
from wmpo_core.episode_store import EpisodeStore
from wmpo_core.policy import Observation
from wmpo_core.robot_config import load_robot_config
from wmpo_core.sim_env import SimArm
from wmpo_core.sim_rollout import EVAL_SEED_START, eval_seeds, rollout, train_seeds
from wmpo_core.vla.checkpoint import save_checkpoint
from wmpo_learner.stats import PairedComparison, SuccessRate, difference_interval, wilson_interval


@pytest.fixture(scope="module")
def robot():
    return load_robot_config("so101_sim")


def test_wilson_interval_matches_published_values():
    # Newcombe (1998), Statistics in Medicine 17:857, Table I
    assert wilson_interval(81, 263) == pytest.approx((0.2553, 0.3662), abs=1e-4)
    assert wilson_interval(15, 148) == pytest.approx((0.0624, 0.1605), abs=1e-4)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    # Newcombe (1998), Statistics in Medicine 17:873, example (a): 56/70 - 48/80
    assert difference_interval(56, 70, 48, 80) == pytest.approx((0.0524, 0.3339), abs=1e-4)
    low, high = wilson_interval(21, 50, confidence=0.99)
    assert low < wilson_interval(21, 50)[0] and high > wilson_interval(21, 50)[1]
    with pytest.raises(ValueError, match="at least one trial"):
        wilson_interval(0, 0)
    with pytest.raises(ValueError, match="successes must be in"):
        wilson_interval(11, 10)
    rate = SuccessRate.from_outcomes([True, False, True, True])
    assert rate.rate == 0.75 and str(rate).startswith("75.0% (3/4), Wilson 95% CI [")


def test_a_paired_comparison_counts_discordant_seeds_and_gives_the_exact_mcnemar_p():
    old = {1: True, 2: False, 3: False, 4: True, 5: False}
    new = {1: True, 2: True, 3: True, 4: False, 5: False}
    paired = PairedComparison.from_outcomes(old, new)
    assert (paired.gained, paired.lost, paired.both, paired.neither) == (2, 1, 1, 1)
    assert paired.better_p_value == pytest.approx(4 / 8)  # P(X >= 2), X ~ Bin(3, 1/2)
    # 15 gained, 6 lost: P(X >= 15), X ~ Bin(21, 1/2) = 0.0392 (binomial tables)
    assert PairedComparison(15, 6, 25, 154).better_p_value == pytest.approx(0.0392, abs=1e-4)
    assert PairedComparison(0, 0, 3, 2).better_p_value == 1.0  # no discordant seed: no evidence
    assert PairedComparison(3, 0, 0, 0).better_p_value == pytest.approx(1 / 8)
    with pytest.raises(ValueError, match="same seeds"):
        PairedComparison.from_outcomes(old, {1: True})


def test_train_and_eval_seed_ranges_are_disjoint():
    assert max(train_seeds(1000)) < EVAL_SEED_START == min(eval_seeds(1000))
    assert not set(train_seeds(500, offset=999_000)) & set(eval_seeds(500))
    with pytest.raises(ValueError, match="training seeds must stay in"):
        train_seeds(10, offset=EVAL_SEED_START - 5)


class _WildPolicy:
    """Proposes out-of-range actions, to check that every action goes through the safety filter."""

    version = "wild-test"
    chunk_size = 8

    def __init__(self):
        self.calls = 0

    def reset(self):
        self.calls = 0

    def predict_chunk(self, obs: Observation) -> np.ndarray:
        assert obs.images["front"].shape == (128, 128, 3) and obs.instruction == "pick up the cube"
        self.calls += 1
        return np.tile([5.0, -5.0, 0.3, 2.0], (self.chunk_size, 1))


def test_rollout_clamps_records_and_replans_like_the_policy_node(robot, tmp_path):
    arm = SimArm(robot)
    policy = _WildPolicy()
    try:
        with EpisodeStore.open(tmp_path / "store.zarr", mode="a") as store:
            writer = store.begin_episode(
                robot, source="policy", task="pick up the cube", policy_version=policy.version, env_seed=7
            )
            result = rollout(arm, policy, seed=7, writer=writer, max_steps=8)
            episode = store.episode(result.episode_id)
            assert episode.meta.source == "policy" and episode.meta.policy_version == "wild-test"
            assert (
                episode.meta.env_seed == 7
                and episode.meta.success is False
                and episode.meta.success_labeled_by == "env"
            )
            actions = episode.action()
        assert result.num_steps == 8 and result.safety_interventions == 8
        np.testing.assert_allclose(actions, np.tile([1.0, -1.0, 0.3, 1.0], (8, 1)), atol=1e-6)
        assert policy.calls == 2  # chunk of 8, refilled when 1 is left: at steps 0 and 7
        rollout(arm, policy, seed=7, max_steps=8, refill_threshold=0)
        assert policy.calls == 1  # whole chunks: only at step 0
    finally:
        arm.close()


@pytest.mark.slow
def test_eval_reports_success_rate_with_interval_on_eval_seeds(tiny_vla, robot, tmp_path, capsys):
    model = tiny_vla(robot)
    ckpt = tmp_path / "policy"
    save_checkpoint(model, ckpt, robot)
    summary_path = tmp_path / "eval.json"
    assert (
        main(
            [
                "eval",
                "--policy",
                str(ckpt),
                "--robot",
                "so101_sim",
                "--episodes",
                "2",
                "--videos",
                str(tmp_path / "videos"),
                "--json",
                str(summary_path),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "Wilson 95% CI [" in printed and "mean episode length" in printed
    summary = json.loads(summary_path.read_text())
    assert summary["version"] == model.version and summary["mode"] == "greedy"
    assert [e["seed"] for e in summary["episodes"]] == eval_seeds(2)
    assert (
        summary["success"]["trials"] == 2
        and summary["success"]["ci_low"] <= summary["success"]["rate"] <= summary["success"]["ci_high"]
    )
    videos = sorted(p.name for p in (tmp_path / "videos").iterdir())
    assert len(videos) == 2 and all(
        v.startswith(f"seed{EVAL_SEED_START}") or v.startswith(f"seed{EVAL_SEED_START + 1}") for v in videos
    )
    assert all((tmp_path / "videos" / v).stat().st_size > 1000 for v in videos)

    # the scripted expert succeeds, and the report says so
    assert (
        main(
            [
                "eval",
                "--policy",
                "expert",
                "--robot",
                "so101_sim",
                "--episodes",
                "1",
                "--json",
                str(summary_path),
            ]
        )
        == 0
    )
    assert json.loads(summary_path.read_text())["success"]["successes"] == 1
    assert "100.0% (1/1)" in capsys.readouterr().out


def test_eval_refuses_a_real_arm(tmp_path):
    with pytest.raises(SystemExit, match="not a simulated arm"):
        main(["eval", "--policy", "expert", "--robot", "so101_real", "--episodes", "1"])


def test_parallel_eval_gives_the_sequential_results_in_seed_order(tiny_vla_checkpoint, robot, tmp_path):
    tiny_vla_checkpoint(robot, tmp_path / "policy", seed=1)
    runs = {}
    for workers in (1, 2):
        out = tmp_path / f"eval{workers}.json"
        assert (
            main(
                [
                    "eval",
                    "--policy",
                    str(tmp_path / "policy"),
                    "--robot",
                    "so101_sim",
                    "--episodes",
                    "3",
                    "--workers",
                    str(workers),
                    "--json",
                    str(out),
                ]
            )
            == 0
        )
        runs[workers] = json.loads(out.read_text())
    assert runs[2]["workers"] == 2 and runs[2]["episodes_per_minute"] > 0
    assert runs[1]["episodes"] == runs[2]["episodes"]  # same seeds, same order, same outcomes and lengths
    assert [e["seed"] for e in runs[2]["episodes"]] == eval_seeds(3)
    with pytest.raises(SystemExit, match="--workers must be >= 1"):
        main(["eval", "--policy", "expert", "--robot", "so101_sim", "--episodes", "1", "--workers", "0"])
