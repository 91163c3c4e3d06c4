"""`wmpo sft`: behaviour cloning on scripted demonstrations recorded in a real episode store."""

import numpy as np
import pytest
import torch
from wmpo_core.cli import main
from wmpo_core.episode_store import EpisodeStore
from wmpo_core.robot_config import load_robot_config
from wmpo_core.sim_rollout import run_episodes, train_seeds
from wmpo_core.vla.checkpoint import load_checkpoint, read_manifest
from wmpo_learner.sft import chunk_windows, lr_at, random_shift
from wmpo_learner.training_state import load_training_state, read_counters, save_training_state


@pytest.fixture(scope="module")
def robot():
    return load_robot_config("so101_sim")


@pytest.fixture(scope="module")
def demo_store(robot, tmp_path_factory):
    path = tmp_path_factory.mktemp("demos") / "demos.zarr"
    with EpisodeStore.open(path, mode="a") as store:
        results = run_episodes(robot, None, train_seeds(3), store=store, progress=False)
    assert all(r.success for r in results)
    return path


def sft(store, out, *extra):
    return main(
        [
            "sft",
            "--store",
            str(store),
            "--robot",
            "so101_sim",
            "--config",
            "tiny",
            "--out",
            str(out),
            "--batch-size",
            "16",
            *extra,
        ]
    )


@pytest.mark.slow
def test_short_sft_lowers_the_loss_and_writes_a_loadable_policy(demo_store, robot, tmp_path):
    out = tmp_path / "policy"
    assert sft(demo_store, out, "--steps", "60", "--save-every", "30") == 0
    state = read_counters(out / "training")
    losses = [loss for _, loss in state["loss_history"]]
    assert state["step"] == 60 and len(losses) == 6
    assert losses[-1] < 0.75 * losses[0], losses  # starts near ln(256) = 5.5
    model = load_checkpoint(out, robot)
    manifest = read_manifest(out)
    assert model.version.startswith("sft-") and manifest["parent_version"] is None
    provenance = manifest["provenance"]["sft"]
    assert (
        provenance["episodes"] == 3
        and provenance["trained_steps"] == 60
        and provenance["sources"] == ["teleop", "scripted"]
    )
    # the statistics come from the demonstrations: the gripper command spans 0 (closed) .. 1 (open)
    np.testing.assert_allclose(model.action_tokenizer.normalizer.q01[3], 0.0)
    np.testing.assert_allclose(model.action_tokenizer.normalizer.q99[3], 1.0)
    assert any((out / "training" / "tensorboard").iterdir())

    # resume continues from the saved step with the saved optimizer; a second fresh run is refused
    assert sft(demo_store, out, "--steps", "70", "--resume") == 0
    resumed = read_counters(out / "training")
    assert resumed["step"] == 70 and resumed["loss_history"][:6] == state["loss_history"]
    assert read_manifest(out)["version"] != manifest["version"]
    with pytest.raises(SystemExit, match="already holds a training run"):
        sft(demo_store, out, "--steps", "10")

    # --from starts a child policy with the parent's statistics and records the parent version
    child = tmp_path / "child"
    parent_version = read_manifest(out)["version"]
    assert sft(demo_store, child, "--steps", "10", "--from", str(out)) == 0
    assert read_manifest(child)["parent_version"] == parent_version
    assert load_checkpoint(child, robot).parent_version == parent_version


def test_no_matching_episodes_is_a_clear_error(demo_store, tmp_path):
    with pytest.raises(SystemExit, match=r"no episodes .* with source in \['teleop'\]"):
        sft(demo_store, tmp_path / "x", "--steps", "1", "--source", "teleop")
    with pytest.raises(SystemExit, match="nothing to resume"):
        sft(demo_store, tmp_path / "y", "--steps", "1", "--resume")


def test_chunks_past_the_episode_end_repeat_the_last_action():
    ends = np.array([3, 3, 3, 5, 5])  # episodes [0, 3) and [3, 5)
    idx = chunk_windows(ends, chunk_size=4).flat_steps(np.array([0, 2, 3, 4]))
    assert idx.tolist() == [[0, 1, 2, 2], [2, 2, 2, 2], [3, 4, 4, 4], [4, 4, 4, 4]]


def test_random_shift_keeps_shape_and_content():
    frames = np.random.default_rng(0).integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)
    shifted = random_shift(frames, 2, np.random.default_rng(1))
    assert shifted.shape == frames.shape and shifted.dtype == np.uint8
    assert not np.array_equal(shifted, frames)
    assert np.array_equal(random_shift(frames, 0, np.random.default_rng(1)), frames)
    # the centre of a 2-px shift always comes from the original image
    assert any(
        np.array_equal(shifted[0, 2:14, 2:14], frames[0, 2 + dy : 14 + dy, 2 + dx : 14 + dx])
        for dy in range(-2, 3)
        for dx in range(-2, 3)
    )


def test_learning_rate_schedule():
    assert lr_at(0, 1.0, 10, 100) == pytest.approx(0.1)
    assert lr_at(9, 1.0, 10, 100) == pytest.approx(1.0)
    assert lr_at(100, 1.0, 10, 100) == pytest.approx(0.1)
    assert lr_at(55, 1.0, 10, 100) == pytest.approx(0.55)


def test_optimizer_state_round_trips_without_pickle(tmp_path):
    params = [torch.nn.Parameter(torch.randn(3, 2)), torch.nn.Parameter(torch.randn(4))]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    for _ in range(3):
        optimizer.zero_grad()
        sum((p**2).sum() for p in params).backward()
        optimizer.step()
    save_training_state(tmp_path / "state", optimizer, None, {"step": 3})
    restored = torch.optim.AdamW([torch.nn.Parameter(p.detach().clone()) for p in params], lr=1.0)
    assert load_training_state(tmp_path / "state", restored) == ({"step": 3}, None)
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == ["optimizer.safetensors", "state.json"]
    a, b = optimizer.state_dict(), restored.state_dict()
    assert a["param_groups"][0]["lr"] == b["param_groups"][0]["lr"] == 1e-2
    for i in a["state"]:
        for name, value in a["state"][i].items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(b["state"][i][name]))
