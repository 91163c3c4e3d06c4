"""The reward model: one loss/scoring rule, batched sliding-window detection, checkpoints."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import (
    VideoMAEConfig,
    VideoMAEForPreTraining,
    VideoMAEForVideoClassification,
    VideoMAEImageProcessor,
)
from wmpo_core.durable import file_sha256
from wmpo_learner.reward.checkpoint import CheckpointError, load_checkpoint, read_metadata, save_checkpoint
from wmpo_learner.reward.model import RewardModel, success_loss, success_probability
from wmpo_learner.reward.preprocessing import PreprocessConfig, preprocess
from wmpo_learner.reward.windows import window_ends, window_frame_indices

N = 8


def random_episode(steps: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (steps, 48, 48, 3), dtype=np.uint8)


def test_tiny_preset_is_videomae_with_one_logit():
    model = RewardModel.from_preset("tiny", camera="front")
    config = model.classifier.config
    assert isinstance(model.classifier, VideoMAEForVideoClassification)
    assert (config.image_size, config.num_frames, config.tubelet_size, config.num_labels) == (64, 8, 2, 1)
    assert model.spec.image_size == 64 and model.spec.num_frames == 8
    with pytest.raises(ValueError, match="unknown reward model preset"):
        RewardModel.from_preset("huge", camera="front")


def test_inconsistent_configs_are_refused(tiny_reward_model):
    spec = PreprocessConfig(camera="front", image_size=32, num_frames=N)
    two_logits = VideoMAEConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        num_frames=N,
        num_labels=2,
    )
    with pytest.raises(ValueError, match=r"num_labels=2.*problem_type=None"):
        RewardModel(VideoMAEForVideoClassification(two_logits), spec)
    with pytest.raises(ValueError, match="image_size=32 but preprocessing uses 64"):
        RewardModel(tiny_reward_model().classifier, spec.model_copy(update={"image_size": 64}))


def test_training_loss_and_scoring_use_the_same_rule(tiny_reward_model):
    model = tiny_reward_model()
    clips = np.stack([random_episode(N, s) for s in range(4)])
    labels = torch.tensor([1.0, 0.0, 1.0, 0.0])
    pixels = preprocess(clips, model.spec)
    logits = model(pixels)
    # scoring is the sigmoid of the very logit the loss is computed on ...
    torch.testing.assert_close(model.clip_probabilities(clips), torch.sigmoid(logits))
    # ... and the loss is the negative log-likelihood of exactly that probability
    p = success_probability(logits)
    nll = -(labels * torch.log(p) + (1 - labels) * torch.log(1 - p)).mean()
    torch.testing.assert_close(success_loss(logits, labels), nll)
    # transformers' own loss path (labels=...) is the same BCE-with-logits, not MSE or softmax CE
    hf = model.classifier(pixel_values=pixels, labels=labels[:, None])
    torch.testing.assert_close(hf.loss, success_loss(logits, labels))
    # the detection scores of a one-window episode are those probabilities too
    torch.testing.assert_close(
        torch.from_numpy(model.detect(clips[0]).scores),
        model.clip_probabilities(clips[:1]),
        rtol=1e-5,
        atol=1e-6,
    )


def test_training_with_the_loss_moves_the_score_the_right_way(tiny_reward_model):
    model = tiny_reward_model().train()
    clips = np.stack([random_episode(N, 10), random_episode(N, 11)])
    labels = torch.tensor([1.0, 0.0])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    pixels = preprocess(clips, model.spec)
    for _ in range(60):
        loss = success_loss(model(pixels), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    scores = [model.detect(c).scores[0] for c in clips]
    assert scores[0] > 0.9 and scores[1] < 0.1


def test_scores_cover_every_stride_1_window(tiny_reward_model):
    model = tiny_reward_model()
    episode = random_episode(20, 1)
    detection = model.detect(episode)
    ends = window_ends(20, N)
    assert detection.scores.shape == (13,)
    clips = np.stack([episode[window_frame_indices(e, N)] for e in ends])
    expected = model.clip_probabilities(clips).numpy()
    np.testing.assert_allclose(detection.scores, expected, rtol=1e-5, atol=1e-6)
    # threshold at the k-th window's score: success, finishing at that window's end step
    k = 5
    at_k = model.detect(episode, threshold=float(detection.scores[: k + 1].max()))
    first = int(np.argmax(detection.scores >= detection.scores[: k + 1].max()))
    assert at_k.success and at_k.finish_step == int(ends[first])
    none = model.detect(episode, threshold=1.0 if detection.scores.max() < 1.0 else 1.1)
    assert (none.success, none.finish_step) == (False, None)


def test_short_episodes_are_scored_not_failed(tiny_reward_model):
    model = tiny_reward_model()
    for steps in (1, 3, 7):
        episode = random_episode(steps, steps)
        detection = model.detect(episode, threshold=0.0)
        assert detection.success and detection.finish_step == steps - 1 and detection.scores.shape == (1,)
        padded = episode[window_frame_indices(steps - 1, N)][None]
        np.testing.assert_allclose(
            detection.scores, model.clip_probabilities(padded).numpy(), rtol=1e-5, atol=1e-6
        )
        # its decision is the threshold rule on that score, like any other episode
        score = float(detection.scores[0])
        assert model.detect(episode, threshold=score).success
        assert not model.detect(episode, threshold=min(score + 1e-3, 1.0 + 1e-3)).success


def test_batched_detection_equals_one_by_one(tiny_reward_model):
    model = tiny_reward_model()
    episodes = [random_episode(t, 100 + t) for t in (3, 8, 9, 20, 31)]
    one_by_one = [model.detect(e) for e in episodes]
    for batch_size in (1, 5, 64):
        batched = model.detect_batch(episodes, batch_size=batch_size)
        for a, b in zip(batched, one_by_one, strict=True):
            np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5, atol=1e-6)
            assert (a.success, a.finish_step) == (b.success, b.finish_step)
    # a padded (N, T, ...) batch with lengths, as GRPO holds imagined rollouts; numpy or torch
    padded = np.zeros((len(episodes), 31, 48, 48, 3), dtype=np.uint8)
    for i, e in enumerate(episodes):
        padded[i, : len(e)] = e
    lengths = [len(e) for e in episodes]
    for frames in (padded, torch.from_numpy(padded)):
        scores = model.score_windows(frames, lengths=lengths, batch_size=16)
        for a, b in zip(scores, one_by_one, strict=True):
            np.testing.assert_allclose(a, b.scores, rtol=1e-5, atol=1e-6)
    assert isinstance(model.detect(padded), list) and len(model.detect(padded)) == 5
    with pytest.raises(ValueError, match="length 40 outside"):
        model.score_windows(padded, lengths=[40, 1, 1, 1, 1])
    with pytest.raises(ValueError, match="uint8"):
        model.detect(padded[0].astype(np.float32))


def test_checkpoint_round_trip(tiny_reward_model, tmp_path):
    model = tiny_reward_model(seed=1, threshold=0.37)
    meta = save_checkpoint(model, tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "config.json",
        "model.safetensors",
        "reward_model.json",
    ]
    loaded, loaded_meta = load_checkpoint(tmp_path / "ckpt")
    assert loaded.threshold == 0.37 and loaded.spec == model.spec and loaded_meta.sha256 == meta.sha256
    assert (
        loaded_meta.scoring.startswith("sigmoid")
        and loaded.classifier.config.problem_type == "multi_label_classification"
    )
    episode = random_episode(12, 5)
    np.testing.assert_array_equal(loaded.detect(episode).scores, model.detect(episode).scores)
    raw = json.loads((tmp_path / "ckpt" / "reward_model.json").read_text())
    assert raw["preprocessing"]["mean"] == list(model.spec.mean) and raw["threshold"] == 0.37


def test_tampered_checkpoints_are_refused(tiny_reward_model, tmp_path):
    ckpt = tmp_path / "ckpt"
    save_checkpoint(tiny_reward_model(), ckpt)
    weights = ckpt / "model.safetensors"
    original = weights.read_bytes()
    corrupted = bytearray(original)
    corrupted[-5] ^= 0xFF
    weights.write_bytes(bytes(corrupted))
    with pytest.raises(CheckpointError, match=r"model.safetensors: sha256 .* does not match"):
        load_checkpoint(ckpt)
    weights.write_bytes(original)
    config = ckpt / "config.json"
    config.write_text(config.read_text().replace('"hidden_size": 32', '"hidden_size": 64'))
    with pytest.raises(CheckpointError, match=r"config.json: sha256"):
        load_checkpoint(ckpt)
    (ckpt / "reward_model.json").unlink()
    with pytest.raises(CheckpointError, match="not a reward model checkpoint"):
        load_checkpoint(ckpt)


def test_weights_missing_a_tensor_are_refused_even_with_matching_hashes(tiny_reward_model, tmp_path):
    """A weights file that does not fit the config never loads with random stand-ins."""

    ckpt = tmp_path / "ckpt"
    save_checkpoint(tiny_reward_model(), ckpt)
    state = load_file(ckpt / "model.safetensors")
    state.pop("classifier.weight")
    save_file(state, ckpt / "model.safetensors")
    meta = json.loads((ckpt / "reward_model.json").read_text())
    meta["sha256"]["model.safetensors"] = file_sha256(ckpt / "model.safetensors")
    (ckpt / "reward_model.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"classifier.weight"):
        load_checkpoint(ckpt)
    (ckpt / "reward_model.json").write_text('{"format_version": 1, "threshold": 2}')
    with pytest.raises(CheckpointError, match="invalid metadata"):
        read_metadata(ckpt)


def test_from_pretrained_loads_a_local_videomae_with_a_fresh_single_logit_head(tmp_path):
    """The real-use path (e.g. MCG-NJU/videomae-base), from a local directory: no hub here."""

    torch.manual_seed(3)
    config = VideoMAEConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        num_frames=16,
        decoder_hidden_size=32,
        decoder_num_hidden_layers=1,
        decoder_num_attention_heads=2,
        decoder_intermediate_size=64,
    )
    pretrained = VideoMAEForPreTraining(config)
    pretrained.save_pretrained(tmp_path / "videomae")
    VideoMAEImageProcessor(image_mean=[0.5, 0.4, 0.3], image_std=[0.2, 0.2, 0.2]).save_pretrained(
        tmp_path / "videomae"
    )

    model = RewardModel.from_pretrained(str(tmp_path / "videomae"), camera="front")
    assert model.classifier.config.num_frames == 8 and model.classifier.config.num_labels == 1
    assert (
        model.spec.image_size == 32
        and model.spec.mean == (0.5, 0.4, 0.3)
        and model.spec.std == (0.2, 0.2, 0.2)
    )
    encoder = "videomae.encoder.layer.0.attention.attention.query.weight"
    torch.testing.assert_close(model.classifier.state_dict()[encoder], pretrained.state_dict()[encoder])
    assert model.detect(random_episode(10, 0)).scores.shape == (3,)
