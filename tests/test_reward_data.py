"""Training clips from a real episode store on disk: labels, padding, split, balanced batches."""

from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader
from wmpo_core.episode_store import EpisodeStore
from wmpo_learner.reward.dataset import (
    BalancedBatchSampler,
    Clip,
    ClipDataset,
    episode_clips,
    labelled_episodes,
    split_episodes,
)
from wmpo_learner.reward.preprocessing import PreprocessConfig, preprocess
from wmpo_learner.reward.windows import window_ends, window_frame_indices

N = 8


def step_frames(episode: int, num_steps: int) -> np.ndarray:
    """Frame t of episode k is uniformly (10 k + t): every stored frame is identifiable."""
    values = (10 * episode + np.arange(num_steps)).astype(np.uint8)
    return np.broadcast_to(values[:, None, None, None], (num_steps, 128, 128, 3)).copy()


# (episode id, steps, success)
EPISODES = [
    ("long_success", 20, True),
    ("long_failure", 12, False),
    ("short_success", 5, True),
    ("short_failure", 3, False),
    ("exact_success", 8, True),
    ("unlabelled", 10, None),
]


@pytest.fixture(scope="module")
def store(tmp_path_factory, write_episode_store):
    path = tmp_path_factory.mktemp("reward_data") / "store"
    episodes = [
        {"frames": step_frames(k, steps), "success": success, "episode_id": episode_id}
        for k, (episode_id, steps, success) in enumerate(EPISODES)
    ]
    return EpisodeStore.open(write_episode_store(path, episodes), mode="r")


def test_window_geometry():
    assert window_ends(20, N).tolist() == list(range(7, 20))
    assert window_ends(8, N).tolist() == [7]
    assert window_ends(3, N).tolist() == [2]  # shorter than a window: one window, ending at the last frame
    assert window_frame_indices(10, N).tolist() == [3, 4, 5, 6, 7, 8, 9, 10]
    assert window_frame_indices(2, N).tolist() == [0, 0, 0, 0, 0, 0, 1, 2]  # padded with the first frame


def test_positives_and_negatives_as_specified():
    clips = episode_clips("s", 20, True, N)
    assert [c.end for c in clips if c.label] == [19]  # the last 8 frames, 12..19
    # negatives share no frame with the last window: they end at 11 at the latest
    assert [c.end for c in clips if not c.label] == [7, 8, 9, 10, 11]
    overlapping_kept = episode_clips("s", 20, True, N, exclude_overlapping=False)
    assert [c.end for c in overlapping_kept if not c.label] == list(range(7, 19))
    assert episode_clips("f", 12, False, N) == [Clip("f", e, False) for e in range(7, 12)]
    assert episode_clips("s", 5, True, N) == [Clip("s", 4, True)]
    assert episode_clips("f", 3, False, N) == [Clip("f", 2, False)]
    assert episode_clips("s", 8, True, N) == [Clip("s", 7, True)]


def test_labelled_episodes_skip_unlabelled_and_check_the_camera(store):
    metas = labelled_episodes(store, "so101_sim", "front")
    assert sorted(m.episode_id for m in metas) == sorted(e for e, _, s in EPISODES if s is not None)
    with pytest.raises(ValueError, match="no camera 'wrist'"):
        labelled_episodes(store, "so101_sim", "wrist")
    with pytest.raises(ValueError, match=r"no episodes recorded with robot config 'ur5e'.*so101_sim"):
        labelled_episodes(store, "ur5e", "front")


@pytest.mark.parametrize("cached", [True, False])
def test_dataset_items_are_the_preprocessed_store_frames(store, cached):
    spec = PreprocessConfig(camera="front", image_size=32, num_frames=N)
    metas = {m.episode_id: m for m in labelled_episodes(store, "so101_sim", "front")}
    clips = [c for i, m in metas.items() for c in episode_clips(i, m.num_steps, bool(m.success), N)]
    dataset = ClipDataset(store, clips, spec, cache_bytes=(1 << 30) if cached else 0)
    assert len(dataset) == len(clips) == 6 + 5 + 1 + 1 + 1
    assert dataset.labels.sum() == 3
    for i, clip in enumerate(clips):
        k = [e for e, _, _ in EPISODES].index(clip.episode_id)
        expected = step_frames(k, metas[clip.episode_id].num_steps)[window_frame_indices(clip.end, N)]
        pixels, label = dataset[i]
        assert pixels.shape == (N, 3, 32, 32)
        torch.testing.assert_close(pixels, preprocess(expected, spec))
        assert label.item() == float(clip.label)
    # the short successful episode (5 frames) is a padded positive: frame 0 four times, then 1..4
    short = next(i for i, c in enumerate(clips) if c.episode_id == "short_success")
    first_values = dataset[short][0][:, 0, 0, 0]
    assert torch.unique(first_values[:4]).numel() == 1 and torch.unique(first_values[3:]).numel() == 5


def _metas(successes: int, failures: int):
    from wmpo_core.episode_store import EpisodeMeta

    base = dict(
        robot_config_name="so101_sim",
        robot_config_hash="x",
        policy_version=None,
        source="policy",
        task="t",
        start_time=0.0,
        num_steps=10,
        control_rate_hz=10.0,
        cameras={"front": (128, 128, 3)},
        state_dim=6,
        action_dim=4,
    )
    return [EpisodeMeta(episode_id=f"s{i:02d}", success=True, **base) for i in range(successes)] + [
        EpisodeMeta(episode_id=f"f{i:02d}", success=False, **base) for i in range(failures)
    ]


def test_split_is_episode_level_stratified_and_deterministic():
    metas = _metas(8, 12)
    train, holdout = split_episodes(metas, 0.25, seed=3)
    assert not set(train) & set(holdout) and len(train) + len(holdout) == 20
    assert sum(i.startswith("s") for i in holdout) == 2 and sum(i.startswith("f") for i in holdout) == 3
    assert split_episodes(metas, 0.25, seed=3) == (train, holdout)
    assert split_episodes(metas, 0.25, seed=4) != (train, holdout)


def test_split_never_holds_out_episodes_already_trained_on():
    metas = _metas(8, 12)
    seen = [f"s{i:02d}" for i in range(6)] + [f"f{i:02d}" for i in range(10)]
    for seed in range(10):
        train, holdout = split_episodes(metas, 0.25, seed=seed, never_holdout=seen)
        assert not set(holdout) & set(seen) and set(seen) <= set(train)
    with pytest.raises(ValueError, match="at least 2 successful episodes"):
        split_episodes(_metas(1, 5), 0.25, seed=0)
    with pytest.raises(ValueError, match="not yet trained on"):
        split_episodes(_metas(3, 5), 0.25, seed=0, never_holdout=["s00", "s01", "s02"])


def test_balanced_batches():
    labels = np.zeros(53, dtype=bool)
    labels[[4, 20, 41]] = True
    sampler = BalancedBatchSampler(labels, batch_size=8, num_batches=30, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 30
    for batch in batches:
        assert len(batch) == 8 and labels[batch].sum() == 4
    # every positive is used equally often (cycled), and negatives are spread over all of them
    uses = Counter(i for b in batches for i in b if labels[i])
    assert set(uses) == {4, 20, 41} and max(uses.values()) - min(uses.values()) <= 1
    assert len({i for b in batches for i in b if not labels[i]}) == 50
    assert list(BalancedBatchSampler(labels, 8, 30, seed=0)) == batches  # reproducible
    with pytest.raises(ValueError, match="even batch size"):
        BalancedBatchSampler(labels, 7, 3)
    with pytest.raises(ValueError, match="positive and negative"):
        BalancedBatchSampler(np.zeros(5, dtype=bool), 4, 3)


def test_loader_with_balanced_sampler_yields_balanced_batches(store):
    spec = PreprocessConfig(camera="front", image_size=16, num_frames=N)
    metas = labelled_episodes(store, "so101_sim", "front")
    clips = [c for m in metas for c in episode_clips(m.episode_id, m.num_steps, bool(m.success), N)]
    dataset = ClipDataset(store, clips, spec)
    loader = DataLoader(dataset, batch_sampler=BalancedBatchSampler(dataset.labels, 6, 5, seed=1))
    for pixels, labels in loader:
        assert pixels.shape == (6, N, 3, 16, 16) and labels.sum().item() == 3
