"""World model: shapes, the training objective's conditioning, sampling, checkpoints, metrics, imagination.

The synthetic "square world" used here and in test_world_model_training.py is a real episode store
written through `EpisodeStore`: a red square on a grey background moved by a 2-D delta action
(3 px per unit per step); the gripper dim tints the square blue when closed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn
from wmpo_core.episode_store import EpisodeStore
from wmpo_core.image_ops import resize_frames
from wmpo_core.normalization import ActionNormalizer
from wmpo_core.robot_config import load_robot_config
from wmpo_learner.world_model import ImaginedRollouts, WorldModel, WorldModelConfig
from wmpo_learner.world_model.config import TransformerConfig, VAEConfig, load_preset
from wmpo_learner.world_model.data import LatentEpisode, LatentWindowSampler, select_episodes, window_starts
from wmpo_learner.world_model.imagine import ChunkSamplingPolicy, imagine
from wmpo_learner.world_model.metrics import psnr, ssim
from wmpo_learner.world_model.model import WorldModelLoadError

SIDE = 32
SQUARE = 6
SPEED = 3.0


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """These small models run several times faster single-threaded on a loaded CI machine (two
    OpenMP threads stall on each other's barriers when the cores are shared)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------------------- square world


def square_robot_config(directory: Path) -> Path:
    """A robot config file for the square world: 2-D end-effector deltas + a gripper dim, one 32 px camera."""
    data = load_robot_config("so101_sim").model_dump(mode="json")
    data.update(
        name="square_world",
        description="synthetic: a square moved by the commanded action",
        joints=[
            {"name": "x", "unit": "m", "lower": 0.0, "upper": float(SIDE)},
            {"name": "y", "unit": "m", "lower": 0.0, "upper": float(SIDE)},
        ],
        action={
            "space": "ee_delta_gripper",
            "dims": [
                {"name": "dx", "kind": "delta", "low": -1.0, "high": 1.0, "max_step_change": 1.0},
                {"name": "dy", "kind": "delta", "low": -1.0, "high": 1.0, "max_step_change": 1.0},
                {"name": "gripper", "kind": "absolute", "low": 0.0, "high": 1.0, "max_step_change": 1.0},
            ],
        },
        cameras=[{"name": "front", "topic": "/square/front", "width": SIDE, "height": SIDE}],
        tasks=["move the square"],
    )
    data["driver"]["state_indices"] = None
    path = directory / "square_world.yaml"  # a robot config's file name is its name
    path.write_text(yaml.safe_dump(data))
    return path


def render_square(pos: np.ndarray, gripper: float) -> np.ndarray:
    frame = np.full((SIDE, SIDE, 3), 60, dtype=np.uint8)
    x, y = np.round(pos).astype(int)
    colour = (220, 40, 40) if gripper > 0.5 else (40, 40, 220)
    frame[y : y + SQUARE, x : x + SQUARE] = colour
    return frame


def step_square(pos: np.ndarray, action: np.ndarray) -> np.ndarray:
    return np.clip(pos + SPEED * action[:2], 0, SIDE - SQUARE)


def write_square_store(root: Path, robot_yaml: Path, episodes: int, steps: int, seed: int = 0) -> Path:
    """Episodes of random 2-D commands held for 2-5 steps. A command that would push the square into
    a wall is turned around, so every command moves it; the gripper dim (closed 20% of the time)
    tints the square from the next frame on."""
    cfg = load_robot_config(robot_yaml)
    rng = np.random.default_rng(seed)
    with EpisodeStore.open(root, mode="a", durable=False) as store:
        for e in range(episodes):
            pos, gripper, hold = rng.uniform(4, SIDE - SQUARE - 4, size=2), 1.0, 0
            writer = store.begin_episode(
                cfg, source="policy" if e % 2 else "scripted", task=cfg.tasks[0], policy_version="v1"
            )
            for t in range(steps):
                if hold == 0:
                    action, hold = (
                        np.array([*rng.uniform(-1, 1, size=2), float(rng.random() > 0.2)]),
                        int(rng.integers(2, 6)),
                    )
                outside = (pos + SPEED * action[:2] < 0) | (pos + SPEED * action[:2] > SIDE - SQUARE)
                action[:2] = np.where(outside, -action[:2], action[:2])
                hold -= 1
                writer.append({"front": render_square(pos, gripper)}, pos, action, float(t) * 0.1)
                pos, gripper = step_square(pos, action), action[2]
            writer.commit(success=bool(e % 3), success_labeled_by="env")
    return root


def square_model_config(**overrides) -> WorldModelConfig:
    """A world model small enough to learn the square world in a few minutes on two cores (0.60 M
    transformer parameters; hidden 64 was too small to learn the motion in that time)."""
    settings = {
        "preset": "test",
        "resolution": SIDE,
        "context_frames": 2,
        "predicted_frames": 4,
        "sampling_steps": 8,
    }
    settings.update(overrides)
    return WorldModelConfig(
        **settings,
        vae=VAEConfig(
            config={
                "down_block_types": ["DownEncoderBlock2D"] * 2,
                "up_block_types": ["UpDecoderBlock2D"] * 2,
                "block_out_channels": [16, 32],
                "layers_per_block": 1,
                "latent_channels": 4,
                "norm_num_groups": 16,
                "sample_size": SIDE,
            }
        ),
        # 32 px -> 4x16x16 latents (a 2x VAE keeps the 6 px square) -> 4x4 = 16 tokens per frame.
        transformer=TransformerConfig(
            patch_size=4, hidden_size=96, depth=2, num_heads=4, mlp_ratio=2.0, qk_norm=None
        ),
    )


def square_normalizer() -> ActionNormalizer:
    return ActionNormalizer([-1.0, -1.0, 0.0], [1.0, 1.0, 1.0])


def fresh_model(**overrides) -> WorldModel:
    torch.manual_seed(0)
    return WorldModel.from_config(
        square_model_config(**overrides), square_normalizer(), "front", "square_world", "sha256:x"
    )


class TinyTokenPolicy(nn.Module):
    """A real (small) discrete-token policy: conv net -> logits over 256 bins per action dim.

    Implements `ChunkSamplingPolicy` the way the project's VLA does (256 uniform bins over the
    normalized [-1, 1] range, log-probs at the sampling temperature)."""

    num_bins = 256

    def __init__(self, normalizer: ActionNormalizer, chunk_size: int = 3, image_size: int = 24):
        super().__init__()
        self.normalizer, self.chunk_size, self.image_size = normalizer, chunk_size, image_size
        self.action_dim = normalizer.dim
        self.net = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(8 * (image_size // 4) ** 2, chunk_size * self.action_dim * self.num_bins),
        )

    def encode_inputs(self, frames, instructions, state=None):
        pixels = (
            torch.from_numpy(resize_frames(np.asarray(frames), self.image_size)).permute(0, 3, 1, 2).float()
            / 255
        )
        return {"pixels": pixels, "instructions": list(instructions)}

    def logits(self, inputs):
        return self.net(inputs["pixels"]).view(-1, self.chunk_size, self.action_dim, self.num_bins)

    @torch.no_grad()
    def sample(self, inputs, temperature=1.6, greedy=False, generator=None):
        log_p = torch.log_softmax(self.logits(inputs) / temperature, dim=-1)
        if greedy:
            tokens = log_p.argmax(-1)
        else:
            tokens = torch.multinomial(log_p.exp().reshape(-1, self.num_bins), 1, generator=generator).view(
                log_p.shape[:-1]
            )
        return tokens, log_p.gather(-1, tokens[..., None]).squeeze(-1)

    def log_probs(self, inputs, tokens, temperature=1.6):
        return (
            torch.log_softmax(self.logits(inputs) / temperature, dim=-1)
            .gather(-1, tokens[..., None])
            .squeeze(-1)
        )

    def tokens_to_actions(self, tokens):
        centers = (tokens.double() + 0.5) / self.num_bins * 2 - 1
        return self.normalizer.unnormalize(centers.cpu().numpy())


# ---------------------------------------------------------------------------- shapes and dtypes


def test_vae_and_transformer_shapes_and_dtypes():
    wm = fresh_model()
    frames = np.random.default_rng(0).integers(0, 256, size=(5, 128, 96, 3), dtype=np.uint8)
    prepared = wm.prepare_frames(frames)
    assert prepared.shape == (5, SIDE, SIDE, 3) and prepared.dtype == np.uint8
    np.testing.assert_array_equal(prepared, resize_frames(frames, SIDE))  # the shared resize, nothing else
    pixels = wm.to_pixels(prepared)
    assert pixels.shape == (5, 3, SIDE, SIDE) and pixels.dtype == torch.float32
    assert float(pixels.min()) >= -1.0 and float(pixels.max()) <= 1.0
    latents = wm.encode(pixels)
    assert latents.shape == (5, *wm.latent_shape) == (5, 4, 16, 16) and latents.dtype == torch.float32
    decoded = wm.decode(latents)
    assert decoded.shape == pixels.shape and decoded.dtype == torch.float32
    assert wm.to_uint8(decoded).shape == (5, SIDE, SIDE, 3) and wm.to_uint8(decoded).dtype == np.uint8

    window = torch.randn(2, 6, 4, 16, 16)
    velocity = wm.transformer(
        window, torch.rand(2, 6) * 1000, torch.rand(2, 6, 3) * 2 - 1, wm.window_masks(2, window.device)
    )
    assert velocity.shape == window.shape and velocity.dtype == torch.float32
    with pytest.raises(ValueError, match="per-frame inputs"):
        wm.transformer(window, torch.rand(2, 5), torch.rand(2, 6, 3), wm.window_masks(2, window.device))


def test_presets_build_and_xl_size_is_documented():
    tiny, _ = load_preset("tiny")
    assert (tiny.resolution, tiny.context_frames, tiny.predicted_frames) == (64, 4, 8)
    wm = WorldModel.from_config(tiny, ActionNormalizer([-1] * 4, [1] * 4), "front", "so101_sim", "sha256:x")
    assert wm.latent_shape == (4, 16, 16)
    xl, _ = load_preset("xl")
    assert xl.vae.pretrained == "stabilityai/sdxl-vae" and xl.resolution == 256 and xl.sampling_steps == 30
    with torch.device("meta"):
        from wmpo_learner.world_model.transformer import ActionConditionedVideoTransformer

        big = ActionConditionedVideoTransformer(
            in_channels=4, sample_size=32, action_dim=7, **xl.transformer.model_dump()
        )
    assert 1.3e9 < sum(p.numel() for p in big.parameters()) < 1.4e9  # 1.34 B, as docs/world_model.md says


# ---------------------------------------------------------------------------- conditioning


class _Recorder(nn.Module):
    """Wraps the transformer and records what it is called with."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner, self.calls = inner, []

    def forward(self, latents, timesteps, actions, mask):
        self.calls.append(
            (latents.detach().clone(), timesteps.detach().clone(), actions.detach().clone(), mask.clone())
        )
        return self.inner(latents, timesteps, actions, mask)


def test_context_noise_is_applied_in_training_only():
    wm = fresh_model()
    c, p = wm.config.context_frames, wm.config.predicted_frames
    clean = torch.randn(3, c + p, 4, 16, 16)
    actions = torch.rand(3, c + p, 3) * 2 - 1
    recorder = _Recorder(wm.transformer)
    gen = torch.Generator().manual_seed(1)
    wm.training_loss(clean, actions, denoiser=recorder, generator=gen)
    noisy, timesteps, _, mask = recorder.calls[0]
    # Replay the generator: the first draw is the per-window sigma, the second the noise.
    gen = torch.Generator().manual_seed(1)
    u = torch.sigmoid(torch.randn(3, generator=gen))  # logit-normal draw ...
    shift = wm.config.timestep_shift
    sigma = shift * u / (1 + (shift - 1) * u)  # ... moved toward noise by the sampler's own shift
    noise = torch.randn(clean.shape, generator=gen)
    torch.testing.assert_close(noisy[:, :c], 0.985 * clean[:, :c] + 0.015 * noise[:, :c])
    assert torch.all(timesteps[:, :c] == 15.0)
    torch.testing.assert_close(timesteps[:, c:], (1000 * sigma)[:, None].expand(-1, p))
    torch.testing.assert_close(
        noisy[:, c:],
        (1 - sigma[:, None, None, None, None]) * clean[:, c:]
        + sigma[:, None, None, None, None] * noise[:, c:],
    )
    assert not mask[:, :c].any() and mask[:, c:].all()
    assert (noisy[:, :c] - clean[:, :c]).abs().max() > 1e-3

    # Inference: the context goes in clean, still labelled with the small timestep.
    wm.transformer = recorder
    wm.predict_window(clean[:, :c], actions[:, c:], torch.Generator().manual_seed(0), sampling_steps=2)
    for latents_in, timesteps_in, actions_in, mask_in in recorder.calls[1:]:
        torch.testing.assert_close(latents_in[:, :c], clean[:, :c], rtol=0, atol=0)
        assert torch.all(timesteps_in[:, :c] == 15.0)
        torch.testing.assert_close(actions_in[:, c:], actions[:, c:])
        assert not mask_in[:, :c].any()
    assert len(recorder.calls) == 3  # one call per sampling step


def test_loss_only_scores_predicted_frames():
    wm = fresh_model()
    c = wm.config.context_frames
    clean = torch.randn(2, wm.config.window, 4, 16, 16)
    actions = torch.zeros(2, wm.config.window, 3)

    class ExactOnContext(nn.Module):
        """Predicts the true velocity on predicted frames only if told the truth; garbage on context."""

        def forward(self, latents, timesteps, acts, mask):
            out = torch.full_like(latents, 1e3)
            return out

    loss_a = wm.training_loss(
        clean, actions, denoiser=ExactOnContext(), generator=torch.Generator().manual_seed(0)
    )
    perturbed = clean.clone()
    perturbed[:, :c] += 100.0  # a different context changes nothing the loss scores
    loss_b = wm.training_loss(
        perturbed, actions, denoiser=ExactOnContext(), generator=torch.Generator().manual_seed(0)
    )
    torch.testing.assert_close(loss_a, loss_b)


def test_actions_change_the_conditioning_of_predicted_frames_only():
    wm = fresh_model()
    t = torch.full((1, 6), 500.0)
    mask = wm.window_masks(1, torch.device("cpu"))
    a1, a2 = torch.zeros(1, 6, 3), torch.ones(1, 6, 3)
    c1 = wm.transformer.frame_conditioning(t, a1, mask)
    c2 = wm.transformer.frame_conditioning(t, a2, mask)
    ctx = wm.config.context_frames
    torch.testing.assert_close(c1[:ctx], c2[:ctx])  # context frames: the "no action" embedding
    assert (c1[ctx:] - c2[ctx:]).abs().max() > 1e-4


def test_temporal_blocks_are_modulated_by_each_frames_action():
    """The action reaches the temporal attention (where a frame sees the frames before it) through
    that frame's adaLN modulation, as the timestep does in STDiT3. With the spatial blocks and the
    output layer made action-blind, changing one frame's action must still change the prediction,
    and it changes the other predicted frames too."""
    wm = fresh_model()
    tr = wm.transformer
    torch.manual_seed(1)
    with torch.no_grad():
        for p in tr.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        for block in tr.spatial_blocks:
            block.modulation[1].weight.zero_()  # spatial blocks: constant modulation (bias only)
        tr.norm_out.linear.weight.zero_()
    c = wm.config.context_frames
    latents, t = torch.randn(1, wm.config.window, 4, 16, 16), torch.full((1, wm.config.window), 500.0)
    mask = wm.window_masks(1, latents.device)
    a1 = torch.zeros(1, wm.config.window, 3)
    a2 = a1.clone()
    a2[0, c] = 1.0  # only the first predicted frame's action differs
    with torch.no_grad():
        out1, out2 = tr(latents, t, a1, mask), tr(latents, t, a2, mask)
    change = (out1 - out2).abs().amax(dim=(0, 2, 3, 4))
    assert change[c] > 1e-3 and change[c + 1 :].min() > 1e-4, change
    with torch.no_grad():
        for block in tr.temporal_blocks:
            block.modulation[1].weight.zero_()
        torch.testing.assert_close(
            tr(latents, t, a1, mask), tr(latents, t, a2, mask)
        )  # ... and only through them


# ---------------------------------------------------------------------------- sampling and checkpoints


def test_seeded_sampling_is_deterministic_and_seed_dependent():
    wm = fresh_model()
    with torch.no_grad():  # give the zero-initialised output head some weight so samples depend on the model
        for p in wm.transformer.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    frames = np.random.default_rng(3).integers(0, 256, size=(2, SIDE, SIDE, 3), dtype=np.uint8)
    actions = np.random.default_rng(4).uniform(-1, 1, size=(2, 6, 3))
    a = wm.replay(frames, actions, torch.Generator().manual_seed(7), sampling_steps=3)
    b = wm.replay(frames, actions, torch.Generator().manual_seed(7), sampling_steps=3)
    c = wm.replay(frames, actions, torch.Generator().manual_seed(8), sampling_steps=3)
    assert (
        a.shape == (2, 6, SIDE, SIDE, 3) and a.dtype == np.uint8
    )  # 6 steps = one full window + a padded partial one
    np.testing.assert_array_equal(a, b)
    assert np.abs(a.astype(int) - c).mean() > 0.5


def test_checkpoint_round_trip(tmp_path):
    wm = fresh_model()
    with torch.no_grad():
        for p in wm.transformer.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    wm.vae.register_to_config(scaling_factor=1.7, shift_factor=0.1)
    wm.provenance = {"history": [{"command": "wm-train", "episodes": ["a", "b"]}]}
    wm.save(tmp_path / "wm")
    files = {p.relative_to(tmp_path / "wm").as_posix() for p in (tmp_path / "wm").rglob("*") if p.is_file()}
    assert {
        "world_model.json",
        "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors",
        "transformer/config.json",
        "transformer/diffusion_pytorch_model.safetensors",
        "scheduler/scheduler_config.json",
    } <= files
    assert not any(f.endswith((".bin", ".pt", ".pth", ".pkl")) for f in files)
    loaded = WorldModel.load(tmp_path / "wm")
    for (name, p), q in zip(wm.state_dict().items(), loaded.state_dict().values(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)
    assert loaded.config == wm.config and loaded.camera == "front" and loaded.provenance == wm.provenance
    assert loaded.normalizer.content_hash == wm.normalizer.content_hash
    assert loaded.vae.config.scaling_factor == 1.7 and loaded.vae.config.shift_factor == 0.1
    frames = np.random.default_rng(0).integers(0, 256, size=(1, SIDE, SIDE, 3), dtype=np.uint8)
    actions = np.zeros((1, 4, 3))
    before = wm.eval().replay(frames, actions, torch.Generator().manual_seed(0), 2).astype(int)
    after = loaded.replay(frames, actions, torch.Generator().manual_seed(0), 2)
    assert (
        np.abs(before - after).max() <= 1
    )  # same weights; at most float-rounding differences at .5 boundaries

    meta = json.loads((tmp_path / "wm" / "world_model.json").read_text())
    meta["action_normalizer"]["q99"][0] = 5.0
    (tmp_path / "wm" / "world_model.json").write_text(json.dumps(meta))
    with pytest.raises(WorldModelLoadError, match="normalizer"):
        WorldModel.load(tmp_path / "wm")
    with pytest.raises(WorldModelLoadError, match="not a world-model checkpoint"):
        WorldModel.load(tmp_path)


# ---------------------------------------------------------------------------- data


def test_windows_pad_the_start_and_pair_each_frame_with_its_action():
    assert list(window_starts(num_steps=10, context=2, predicted=4)) == list(range(-1, 5))
    latents = torch.arange(10, dtype=torch.float16)[:, None, None, None].expand(10, 1, 1, 1)
    actions = torch.arange(10, dtype=torch.float32)[:, None] * 0.1
    sampler = LatentWindowSampler([LatentEpisode("e", latents, actions)], context=2, predicted=4)
    assert len(sampler) == 6
    first_latents, first_actions = sampler.window(0)  # s = -1: context = frame 0 twice
    assert first_latents.flatten().tolist() == [0, 0, 1, 2, 3, 4]
    # predicted frame k comes from action k-1; context rows carry no action
    torch.testing.assert_close(first_actions[:, 0], torch.tensor([0, 0, 0.0, 0.1, 0.2, 0.3]))
    last_latents, last_actions = sampler.window(len(sampler) - 1)
    assert last_latents.flatten().tolist() == [4, 5, 6, 7, 8, 9]
    torch.testing.assert_close(last_actions[2:, 0], torch.tensor([0.5, 0.6, 0.7, 0.8]))
    short = LatentEpisode("s", latents[:4], actions[:4])
    with pytest.raises(ValueError, match="shorter than 5 steps"):
        LatentWindowSampler([short], context=2, predicted=4)


def test_episode_selection(tmp_path):
    robot = square_robot_config(tmp_path)
    store = EpisodeStore.open(write_square_store(tmp_path / "store", robot, episodes=5, steps=6))
    ids = store.episode_ids
    assert [m.episode_id for m in select_episodes(store, "last:2")] == ids[-2:]
    assert [m.episode_id for m in select_episodes(store, "first:2")] == ids[:2]
    assert [m.episode_id for m in select_episodes(store, f"{ids[3]},{ids[1]}")] == [ids[3], ids[1]]
    assert all(m.source == "policy" for m in select_episodes(store, source="policy"))
    assert all(m.success is False for m in select_episodes(store, success=False))
    with pytest.raises(ValueError, match="nope"):
        select_episodes(store, "nope")
    with pytest.raises(ValueError, match="positive integer"):
        select_episodes(store, "last:x")


# ---------------------------------------------------------------------------- metrics


def test_psnr_and_ssim():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(2, 32, 32, 3), dtype=np.uint8)
    assert np.all(psnr(img, img) == 100.0)
    np.testing.assert_allclose(ssim(img, img), 1.0)
    off = np.clip(img.astype(int) + 10, 0, 255).astype(np.uint8)
    mse = ((img.astype(float) - off) ** 2).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(psnr(img, off), 10 * np.log10(255**2 / mse))
    noisy = np.clip(img + rng.normal(0, 40, img.shape), 0, 255).astype(np.uint8)
    assert np.all(ssim(img, noisy) < ssim(img, off)) and np.all(ssim(img, noisy) > 0)
    # Constant images: no variance, SSIM = luminance term (2 mu_a mu_b + C1) / (mu_a^2 + mu_b^2 + C1).
    a, b = np.full((1, 16, 16, 3), 100, np.uint8), np.full((1, 16, 16, 3), 150, np.uint8)
    c1 = (0.01 * 255) ** 2
    np.testing.assert_allclose(ssim(a, b), (2 * 100 * 150 + c1) / (100**2 + 150**2 + c1))


# ---------------------------------------------------------------------------- imagination


def test_imagine_batches_groups_and_reports_what_the_policy_saw():
    wm = fresh_model()
    with torch.no_grad():
        for p in wm.transformer.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    torch.manual_seed(0)
    policy = TinyTokenPolicy(wm.normalizer, chunk_size=3)
    assert isinstance(policy, ChunkSamplingPolicy)
    firsts = np.random.default_rng(0).integers(0, 256, size=(2, 128, 128, 3), dtype=np.uint8)
    kwargs = dict(horizon=7, group_size=3, sampling_steps=2)
    out = imagine(wm, policy, firsts, "move the square", generator=torch.Generator().manual_seed(0), **kwargs)
    assert isinstance(out, ImaginedRollouts)
    batch, steps = 2 * 3, 9  # horizon 7 rounded up to whole chunks of 3
    assert out.frames.shape == (batch, steps + 1, SIDE, SIDE, 3) and out.frames.dtype == np.uint8
    assert out.actions.shape == (batch, steps, 3) and out.actions.dtype == np.float64
    assert out.tokens.shape == (batch, steps, 3) and out.tokens.dtype == torch.long
    assert out.log_probs.shape == (batch, steps, 3) and torch.all(out.log_probs <= 0)
    assert out.observations.shape == (batch, 3, SIDE, SIDE, 3)
    assert out.initial_index.tolist() == [0, 0, 0, 1, 1, 1] and len(out.instructions) == batch
    np.testing.assert_array_equal(out.frames[:3, 0], np.repeat(resize_frames(firsts[:1], SIDE), 3, axis=0))
    np.testing.assert_allclose(out.actions, policy.tokens_to_actions(out.tokens))
    # The stored observations are what the policy acted on: recomputed log-probs match exactly.
    for c in range(out.num_chunks):
        obs = out.observations[:, c]
        recomputed = policy.log_probs(
            policy.encode_inputs(obs, out.instructions), out.tokens[:, c * 3 : (c + 1) * 3]
        )
        torch.testing.assert_close(recomputed, out.log_probs[:, c * 3 : (c + 1) * 3])
    assert len({out.tokens[i].numpy().tobytes() for i in range(3)}) == 3  # group members sample differently
    again = imagine(
        wm, policy, firsts, "move the square", generator=torch.Generator().manual_seed(0), **kwargs
    )
    np.testing.assert_array_equal(out.frames, again.frames)
    torch.testing.assert_close(out.tokens, again.tokens)
    with pytest.raises(ValueError, match="instructions"):
        imagine(wm, policy, firsts, ["only one"], horizon=3)


def test_imagine_with_the_project_vla():
    from wmpo_core.vla import model as vla_module
    from wmpo_core.vla.config import load_recipe

    recipe = load_recipe("tiny")
    robot = load_robot_config("so101_sim")
    normalizer = ActionNormalizer([-1, -1, -1, 0], [1, 1, 1, 1])
    torch.manual_seed(0)
    vla = vla_module.VLA.create(recipe.model, robot, normalizer).eval()
    assert isinstance(vla, ChunkSamplingPolicy)
    wm = WorldModel.from_config(
        square_model_config(predicted_frames=vla.chunk_size),
        normalizer,
        "front",
        robot.name,
        robot.content_hash,
    )
    firsts = np.random.default_rng(0).integers(0, 256, size=(2, 128, 128, 3), dtype=np.uint8)
    out = imagine(
        wm,
        vla,
        firsts,
        robot.tasks[0],
        horizon=vla.chunk_size + 1,
        group_size=2,
        generator=torch.Generator().manual_seed(0),
        sampling_steps=1,
    )
    steps = 2 * vla.chunk_size
    assert out.frames.shape == (4, steps + 1, SIDE, SIDE, 3)
    assert out.tokens.shape == (4, steps, 4) and out.actions.shape == (4, steps, 4)
    inputs = vla.encode_inputs(out.observations[:, 1], out.instructions)
    with torch.no_grad():
        recomputed = vla.log_probs(inputs, out.tokens[:, vla.chunk_size :])
    torch.testing.assert_close(recomputed, out.log_probs[:, vla.chunk_size :], rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------- command-line errors


def test_cli_rejects_bad_inputs_with_clear_messages(tmp_path, capsys):
    from wmpo_core.cli import main as wmpo

    robot = square_robot_config(tmp_path)
    store = write_square_store(tmp_path / "store", robot, episodes=2, steps=6)
    cases = [
        (
            ["wm-train", "--store", str(tmp_path / "missing"), "--out", str(tmp_path / "o1")],
            "no episode store",
        ),
        (
            [
                "wm-train",
                "--store",
                str(store),
                "--robot",
                str(robot),
                "--config",
                "huge",
                "--out",
                str(tmp_path / "o2"),
            ],
            "neither a preset",
        ),
        (
            [
                "wm-train",
                "--store",
                str(store),
                "--robot",
                str(robot),
                "--camera",
                "wrist",
                "--out",
                str(tmp_path / "o3"),
            ],
            "no camera 'wrist'",
        ),
        (
            ["wm-train", "--store", str(store), "--robot", "so101_sim", "--out", str(tmp_path / "o4")],
            "no episodes of robot 'so101_sim'",
        ),
        (
            [
                "wm-train",
                "--store",
                str(store),
                "--robot",
                str(robot),
                "--out",
                str(tmp_path),
                "--steps",
                "1",
            ],
            "is not empty",
        ),
        (
            ["align", "--store", str(store), "--from", str(tmp_path), "--out", str(tmp_path / "o5")],
            "not a world-model checkpoint",
        ),
        (
            ["wm-eval", "--store", str(store), "--wm", str(tmp_path), "--out", str(tmp_path / "o6")],
            "not a world-model checkpoint",
        ),
    ]
    for argv, message in cases:
        assert wmpo(argv) == 2, argv
        assert message in capsys.readouterr().err, argv
