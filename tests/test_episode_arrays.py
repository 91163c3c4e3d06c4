"""wmpo_core.episode_arrays.load_episode on a real store: resized frames, float64 arrays, refusals."""

import numpy as np
import pytest
from wmpo_core.episode_arrays import load_episode
from wmpo_core.episode_store import EpisodeStore
from wmpo_core.image_ops import resize_frames


@pytest.fixture(scope="module")
def store(tmp_path_factory, write_episode_store):
    rng = np.random.default_rng(0)
    episode = {
        "frames": rng.integers(0, 256, size=(6, 128, 128, 3), dtype=np.uint8),
        "states": np.arange(6)[:, None] * np.full((6, 6), 0.1),
        "actions": np.arange(6)[:, None] * np.full((6, 4), 0.25),
        "source": "scripted",
        "episode_id": "ep_a",
    }
    return EpisodeStore.open(write_episode_store(tmp_path_factory.mktemp("arrays") / "store", [episode]))


def test_frames_are_resized_once_and_arrays_are_float64(store):
    reader = store.episode("ep_a")
    arrays = load_episode(store, "ep_a", ["front"], 32, state=True)
    assert arrays.meta == store.meta("ep_a")
    assert arrays.frames["front"].shape == (6, 32, 32, 3) and arrays.frames["front"].dtype == np.uint8
    assert np.array_equal(arrays.frames["front"], resize_frames(reader.frames("front"), 32))
    assert arrays.action.dtype == np.float64 and np.array_equal(arrays.action, reader.action())
    assert arrays.state.dtype == np.float64 and np.array_equal(arrays.state, reader.state())
    only_frames = load_episode(store, store.meta("ep_a"), ["front"], 128, action=False)
    assert only_frames.action is None and only_frames.state is None
    assert np.array_equal(only_frames.frames["front"], reader.frames("front"))


def test_a_missing_camera_is_one_line_naming_the_episode(store):
    with pytest.raises(ValueError, match=r"episode ep_a has no camera \['wrist'\]") as info:
        load_episode(store, "ep_a", ["wrist"], 32)
    assert "\n" not in str(info.value)
