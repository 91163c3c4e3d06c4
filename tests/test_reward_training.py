"""Training on a real store on disk: a short run learns a visible success pattern; the CLI."""

import numpy as np
import pytest
from wmpo_core.cli import main as wmpo
from wmpo_core.episode_store import EpisodeStore
from wmpo_core.robot_config import load_robot_config
from wmpo_learner.reward.checkpoint import load_checkpoint
from wmpo_learner.reward.train import RewardTrainConfig, train_reward_model

ROBOT = load_robot_config("so101_sim")
BOTTOM, MIDDLE, TOP = 96, 56, 8


def synthetic_episode(steps: int, outcome: str, rng: np.random.Generator) -> np.ndarray:
    """A magenta square on a noisy floor. 'success': it rises to the top over the last 6 frames;
    'halfway': it rises only to the middle (a failed lift); 'still': it never moves."""
    frames = rng.integers(50, 70, (steps, 128, 128, 3), dtype=np.uint8)
    x = int(rng.integers(4, 100))
    heights = np.full(steps, BOTTOM)
    rise = min(6, steps)
    if outcome != "still":
        heights[-rise:] = np.linspace(BOTTOM, TOP if outcome == "success" else MIDDLE, rise + 1)[1:]
    for t, y in enumerate(heights):
        frames[t, y : y + 24, x : x + 24] = (200, 60, 200)
    return frames


@pytest.fixture(scope="module")
def store_path(tmp_path_factory, write_episode_store):
    rng = np.random.default_rng(0)
    episodes = [(synthetic_episode(int(rng.integers(10, 25)), "success", rng), True) for _ in range(10)]
    episodes += [(synthetic_episode(5, "success", rng), True) for _ in range(2)]  # shorter than a window
    episodes += [
        (synthetic_episode(int(rng.integers(10, 31)), kind, rng), False) for kind in ["still", "halfway"] * 6
    ]
    path = tmp_path_factory.mktemp("reward_training") / "store"
    return write_episode_store(path, [{"frames": frames, "success": success} for frames, success in episodes])


@pytest.mark.slow
def test_short_training_reaches_high_f1_on_held_out_episodes(tiny_reward_model, store_path, tmp_path):
    store = EpisodeStore.open(store_path)
    model = tiny_reward_model()
    settings = RewardTrainConfig(
        steps=300, batch_size=16, learning_rate=1e-3, holdout_fraction=0.3, log_every=50
    )
    meta = train_reward_model(model, store, ROBOT, settings, str(tmp_path / "ckpt"), init="test")
    val = meta.validation
    assert set(val.episodes).isdisjoint(meta.training.episodes)
    assert len(val.episodes) == 4 + 4 and val.metrics.num_episodes == 8
    assert val.metrics.f1 >= 0.9, val.metrics
    # fresh episodes, never stored: successes detected near their end, failures not detected
    rng = np.random.default_rng(123)
    fresh = [
        synthetic_episode(18, "success", rng),
        synthetic_episode(18, "halfway", rng),
        synthetic_episode(18, "still", rng),
        synthetic_episode(5, "success", rng),
        synthetic_episode(5, "still", rng),
    ]
    detections = model.detect(fresh)
    assert [d.success for d in detections] == [True, False, False, True, False]
    assert 12 <= detections[0].finish_step <= 17
    assert detections[3].finish_step == 4  # a 5-frame success: scored (padded), not failed for being short
    loaded, _ = load_checkpoint(tmp_path / "ckpt")
    assert loaded.threshold == model.threshold
    np.testing.assert_allclose(loaded.detect(fresh[0]).scores, detections[0].scores, rtol=1e-5, atol=1e-6)


def test_cli_trains_rethresholds_and_evaluates(store_path, tmp_path, capsys):
    out = tmp_path / "reward"
    common = ["--store", str(store_path), "--robot", "so101_sim"]
    assert wmpo(["reward", *common, "--out", str(out), "--steps", "3", "--batch-size", "4"]) == 0
    printed = capsys.readouterr().out
    assert "precision" in printed and "recall" in printed and "F1" in printed
    model, meta = load_checkpoint(out)
    assert (
        meta.training.init == "preset:tiny" and model.spec.image_size == 64 and model.spec.camera == "front"
    )
    assert set(meta.validation.episodes).isdisjoint(meta.training.episodes)
    assert len(meta.training.episodes) + len(meta.validation.episodes) == 24
    assert any((out / "tensorboard").glob("events.out.tfevents.*"))
    # the same command and seed give the same weights (initialization included)
    same = tmp_path / "same"
    assert wmpo(["reward", *common, "--out", str(same), "--steps", "3", "--batch-size", "4"]) == 0
    assert load_checkpoint(same)[1].sha256 == meta.sha256

    # re-threshold only: held-out episodes must be ones the weights have never seen
    again = tmp_path / "rethresholded"
    assert wmpo(["reward", *common, "--out", str(again), "--from", str(out), "--steps", "0"]) == 0
    _, meta2 = load_checkpoint(again)
    assert set(meta2.validation.episodes).isdisjoint(meta.training.episodes)
    assert meta2.training.episodes == meta.training.episodes and meta2.training.init == f"checkpoint:{out}"
    capsys.readouterr()

    assert wmpo(["reward", *common, "--from", str(out), "--evaluate"]) == 0
    assert "24 episodes" in capsys.readouterr().out


def test_cli_errors_name_the_problem(store_path, tmp_path, capsys):
    common = ["--store", str(store_path), "--robot", "so101_sim"]
    cases = [
        ([*common, "--out", str(tmp_path / "a"), "--steps", "0"], "--steps 0 only re-thresholds"),
        ([*common, "--out", str(tmp_path / "b"), "--camera", "wrist"], "no camera 'wrist'"),
        (
            ["--store", str(tmp_path / "nowhere"), "--robot", "so101_sim", "--out", str(tmp_path / "c")],
            "does not exist",
        ),
        ([*common], "--out is required"),
        ([*common, "--evaluate"], "--evaluate needs --from"),
        ([*common, "--out", str(tmp_path / "d"), "--batch-size", "5"], "even number"),
        ([*common, "--out", str(tmp_path / "e"), "--holdout-fraction", "1.5"], "--holdout-fraction"),
    ]
    for argv, message in cases:
        assert wmpo(["reward", *argv]) == 2, argv
        assert message in capsys.readouterr().err, argv


def test_a_store_without_enough_labelled_episodes_is_refused(write_episode_store, tmp_path, capsys):
    rng = np.random.default_rng(1)
    write_episode_store(
        tmp_path / "store",
        [
            {"frames": synthetic_episode(12, "success", rng), "success": True},
            {"frames": synthetic_episode(12, "still", rng), "success": False},
        ],
    )
    assert (
        wmpo(
            [
                "reward",
                "--store",
                str(tmp_path / "store"),
                "--robot",
                "so101_sim",
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert "need at least 2 successful episodes" in capsys.readouterr().err
    assert not (tmp_path / "o" / "reward_model.json").exists()
