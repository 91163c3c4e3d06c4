"""Few-step imagination: the ODE solvers on a world model whose sampling ODE is exactly solvable,
and the fidelity record that lets GRPO use a cheaper sampler only for the weights it was measured on.

The solvable model: the transformer is replaced by the exact rectified-flow velocity for data
x0 ~ N(mu, s^2) (independent per latent element). Along the probability-flow ODE the marginal at
sigma is N((1-sigma)*mu, (1-sigma)^2*s^2 + sigma^2), so the ODE maps the starting noise x1 to
x0 = mu + s*x1 exactly, while its path is curved (E[x0 | x_sigma] changes with sigma): a solver's
error at a given step count is real.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from wmpo_core.cli import main as wmpo
from wmpo_core.episode_store import EpisodeStore
from wmpo_core.normalization import ActionNormalizer
from wmpo_core.robot_config import load_robot_config
from wmpo_learner.grpo.rollouts import ImaginationSource
from wmpo_learner.reward.checkpoint import save_checkpoint as save_reward
from wmpo_learner.reward.model import RewardModel
from wmpo_learner.world_model import WorldModel, WorldModelConfig
from wmpo_learner.world_model.config import TransformerConfig, VAEConfig
from wmpo_learner.world_model.few_step import (
    RECORD_FILE,
    RECORD_FORMAT,
    certified_sampler,
    parse_candidate,
    passes,
    weights_sha256,
)
from wmpo_learner.world_model.sampling import SAMPLERS, evaluations


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Small models run faster single-threaded on a shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def fresh_model(
    normalizer: ActionNormalizer | None = None, robot: str = "test_robot", robot_hash: str = "sha256:x"
) -> WorldModel:
    """A small untrained world model: 32 px frames, 4x16x16 latents, window 2 + 4 (3-D actions by default)."""
    torch.manual_seed(0)
    config = WorldModelConfig(
        preset="test",
        resolution=32,
        context_frames=2,
        predicted_frames=4,
        sampling_steps=8,
        vae=VAEConfig(
            config={
                "down_block_types": ["DownEncoderBlock2D"] * 2,
                "up_block_types": ["UpDecoderBlock2D"] * 2,
                "block_out_channels": [16, 32],
                "layers_per_block": 1,
                "latent_channels": 4,
                "norm_num_groups": 16,
                "sample_size": 32,
            }
        ),
        transformer=TransformerConfig(patch_size=4, hidden_size=32, depth=1, num_heads=2, qk_norm=None),
    )
    normalizer = normalizer or ActionNormalizer([-1.0, -1.0, 0.0], [1.0, 1.0, 1.0])
    return WorldModel.from_config(config, normalizer, "front", robot, robot_hash)


class GaussianFlow(nn.Module):
    """The exact velocity E[eps - x0 | x_sigma] for x0 ~ N(mean, std^2) per element (t = 1000*sigma)."""

    def __init__(self, mean: torch.Tensor, std: float):
        super().__init__()
        self.mean = nn.Parameter(
            mean, requires_grad=False
        )  # (C, h, w); a parameter gives the model its device
        self.std = std

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, actions: torch.Tensor, mask: torch.Tensor):
        sigma = (timesteps.float() / 1000.0)[:, :, None, None, None]
        a = 1.0 - sigma
        var = a**2 * self.std**2 + sigma**2
        residual = x - a * self.mean
        x0 = self.mean + a * self.std**2 * residual / var
        eps = sigma * residual / var
        return eps - x0


def solvable_model(std: float = 0.3):
    wm = fresh_model()
    channels, side, _ = wm.latent_shape
    wm.transformer = GaussianFlow(
        torch.linspace(-1.5, 1.5, channels * side * side).view(channels, side, side), std
    )
    return wm


def sample(wm, sampler: str, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(generated window, the exact ODE solution from the same starting noise)."""
    cfg = wm.config
    channels, side, _ = wm.latent_shape
    batch = 3
    context = torch.zeros(batch, cfg.context_frames, channels, side, side)
    actions = torch.zeros(batch, cfg.predicted_frames, wm.normalizer.dim)
    out = wm.predict_window(context, actions, torch.Generator().manual_seed(7), steps, sampler)
    noise = torch.randn(out.shape, generator=torch.Generator().manual_seed(7))
    return out, wm.transformer.mean + wm.transformer.std * noise


def rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b) ** 2).mean().sqrt())


def test_every_solver_converges_to_the_exact_ode_solution():
    wm = solvable_model()
    for name in SAMPLERS:
        coarse, fine = rms(*sample(wm, name, 10)), rms(*sample(wm, name, 100))
        assert fine < 0.02 and fine < coarse / 4, (name, coarse, fine)


def test_one_step_of_any_solver_lands_on_the_conditional_mean():
    """One step from pure noise is x1 - v(x1, 1) = E[x0 | x1] = the data mean: the spread is lost,
    whatever the solver's order (that takes a distilled model, not a better solver)."""
    wm = solvable_model()
    for name in SAMPLERS:  # the multistep solvers start at sigma = 0.9997, not 1: a 1e-4 difference
        out, _ = sample(wm, name, 1)
        torch.testing.assert_close(out, wm.transformer.mean.expand_as(out), atol=1e-3, rtol=0)


def test_second_order_solvers_beat_euler_at_equal_cost():
    wm = solvable_model()
    euler_30 = rms(*sample(wm, "euler", 30))
    for name in ("dpm++2m", "unipc"):  # one evaluation per step, like Euler
        assert rms(*sample(wm, name, 30)) < euler_30 / 2.5, name
    assert evaluations("heun", 10) == 19
    assert rms(*sample(wm, "heun", 10)) < euler_30 / 4


def test_euler_through_the_solver_choice_is_the_models_own_scheduler():
    wm = fresh_model()
    with torch.no_grad():
        for p in wm.transformer.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    cfg = wm.config
    channels, side, _ = wm.latent_shape
    context = torch.randn(
        2, cfg.context_frames, channels, side, side, generator=torch.Generator().manual_seed(1)
    )
    actions = torch.rand(2, cfg.predicted_frames, 3, generator=torch.Generator().manual_seed(2)) * 2 - 1
    default = wm.predict_window(context, actions, torch.Generator().manual_seed(0), 4)
    euler = wm.predict_window(context, actions, torch.Generator().manual_seed(0), 4, "euler")
    torch.testing.assert_close(default, euler, atol=0, rtol=0)
    dpm = wm.predict_window(context, actions, torch.Generator().manual_seed(0), 4, "dpm++2m")
    assert not torch.equal(dpm, euler)
    with pytest.raises(ValueError, match="unknown sampler 'rk4'"):
        wm.predict_window(context, actions, None, 4, "rk4")


def test_candidates_and_the_fidelity_rule():
    assert parse_candidate("dpm++2m:2") == ("dpm++2m", 2)
    for bad in ("dpm:2", "euler", "euler:0", "euler:x"):
        with pytest.raises(ValueError, match="expected SAMPLER:STEPS"):
            parse_candidate(bad)
    reference = {"psnr": 22.0, "balanced_accuracy": 0.80}
    assert passes({"psnr": 21.6, "balanced_accuracy": 0.79}, reference, 0.5, 0.02)
    assert passes({"psnr": 23.0, "balanced_accuracy": 0.95}, reference, 0.5, 0.02)  # better is fine
    assert not passes({"psnr": 21.4, "balanced_accuracy": 0.80}, reference, 0.5, 0.02)
    assert not passes({"psnr": 22.0, "balanced_accuracy": 0.77}, reference, 0.5, 0.02)
    assert not passes({"psnr": 22.0, "balanced_accuracy": None}, reference, 0.5, 0.02)


def test_a_certified_sampler_holds_only_for_the_weights_it_was_measured_on(tmp_path):
    wm = fresh_model()
    wm.save(tmp_path)
    assert certified_sampler(tmp_path) is None  # never measured
    record = {
        "format": RECORD_FORMAT,
        "weights_sha256": weights_sha256(tmp_path),
        "chosen": {"sampler": "dpm++2m", "steps": 2},
    }
    (tmp_path / RECORD_FILE).write_text(json.dumps(record))
    assert certified_sampler(tmp_path) == ("dpm++2m", 2)
    (tmp_path / RECORD_FILE).write_text(json.dumps({**record, "chosen": None}))
    assert certified_sampler(tmp_path) is None  # measured, nothing passed
    (tmp_path / RECORD_FILE).write_text(json.dumps(record))
    with torch.no_grad():  # re-aligned weights: the measurement no longer applies
        next(wm.transformer.parameters()).add_(1e-3)
    wm.save(tmp_path)
    assert certified_sampler(tmp_path) is None
    (tmp_path / RECORD_FILE).write_text("{not json")
    assert certified_sampler(tmp_path) is None


# ---------------------------------------------------------------------------- wmpo wm-few-step


def _checkpoint_and_store(tmp_path: Path) -> tuple[Path, Path, Path]:
    """An untrained tiny world model for so101_sim, a tiny reward model that calls everything a
    success (threshold 0), and four labelled 3-step policy rollouts, two of them successes."""
    robot = load_robot_config("so101_sim")
    wm = fresh_model(ActionNormalizer([-1, -1, -1, 0], [1, 1, 1, 1]), robot.name, robot.content_hash)
    wm.save(tmp_path / "wm")
    reward = RewardModel.from_preset("tiny", camera="front")
    reward.threshold = 0.0
    save_reward(reward, tmp_path / "reward")
    rng = np.random.default_rng(1)
    with EpisodeStore.open(tmp_path / "check.zarr", mode="a") as store:
        for i in range(4):
            writer = store.begin_episode(robot, "policy", "pick up the cube", policy_version="v0", env_seed=i)
            for step in range(3):
                writer.append(
                    {"front": rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)},
                    np.zeros(6),
                    rng.uniform(0, 1, 4),
                    float(step),
                )
            writer.commit(success=i % 2 == 0, success_labeled_by="env")
    return tmp_path / "wm", tmp_path / "reward", tmp_path / "check.zarr"


def test_wm_few_step_certifies_the_cheapest_matching_sampler_and_grpo_uses_it(tmp_path: Path) -> None:
    wm, reward, store = _checkpoint_and_store(tmp_path)
    out = tmp_path / "few_step_copy.json"
    argv = ["wm-few-step", "--wm", str(wm), "--reward", str(reward), "--store", str(store)]
    # An untrained transformer predicts zero velocity, so every solver returns its starting noise:
    # identical fidelity, and the cheapest candidate must win even with zero tolerance.
    extra = ["--candidates", "euler:2", "dpm++2m:1", "--seeds", "0", "1", "--max-psnr-drop", "0"]
    assert wmpo([*argv, *extra, "--max-ba-drop", "0", "--json", str(out)]) == 0
    record = json.loads((wm / RECORD_FILE).read_text())
    assert record == json.loads(out.read_text())
    assert record["episodes"] == 4 and record["real_success"] == 0.5 and record["held_out"]
    ref = record["reference"]
    assert (ref["sampler"], ref["steps"], ref["evaluations_per_window"]) == ("euler", 8, 8)
    assert ref["balanced_accuracy"] == 0.5 and len(ref["per_seed"]) == 2  # everything called a success
    assert [r["passes"] for r in record["candidates"]] == [True, True]
    assert all(r["psnr"] == ref["psnr"] for r in record["candidates"])
    assert record["chosen"] == {"sampler": "dpm++2m", "steps": 1}
    assert record["weights_sha256"] == weights_sha256(wm)
    assert certified_sampler(wm) == ("dpm++2m", 1)

    frames = np.zeros((1, 32, 32, 3), dtype=np.uint8)
    source = ImaginationSource(WorldModel.load(wm), None, frames, ["x"], 3, checkpoint=wm)
    assert (source.sampler, source.sampling_steps) == ("dpm++2m", 1)
    asked = ImaginationSource(WorldModel.load(wm), None, frames, ["x"], 3, sampling_steps=4, checkpoint=wm)
    assert (asked.sampler, asked.sampling_steps) == (None, 4)  # an explicit choice wins


def test_wm_few_step_rejects_bad_inputs_with_one_line(tmp_path: Path, capsys) -> None:
    wm, reward, store = _checkpoint_and_store(tmp_path)
    argv = ["wm-few-step", "--wm", str(wm), "--reward", str(reward), "--store", str(store)]
    for extra, message in (
        (["--candidates", "rk4:2"], "candidate 'rk4:2'"),
        (["--policy-version", "nobody"], "has 0 usable labelled rollouts"),
        (["--max-ba-drop", "-1"], "must be >= 0"),
    ):
        assert wmpo([*argv, *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("wmpo wm-few-step:") and message in err and "\n" not in err
    assert not (wm / RECORD_FILE).exists()  # nothing measured, nothing certified
