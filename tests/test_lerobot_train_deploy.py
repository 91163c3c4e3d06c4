"""The LeRobot round trip a user makes: export episodes, train with `lerobot-train` (LeRobot's own
training code, a tiny ACT built from scratch on CPU, nothing downloaded), deploy the checkpoint with
`wmpo deploy` on the simulated SO-101 and record what it does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from lerobot_harness import record
from wmpo_core.episode_store import EpisodeStore
from wmpo_core.lerobot_dataset import export_lerobot
from wmpo_core.robot_config import load_robot_config

BIN = Path(sys.executable).parent


def _run(args: list[str]) -> subprocess.CompletedProcess:
    done = subprocess.run(
        args,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, (
        f"{Path(args[0]).name} {args[1:3]} exited {done.returncode}:\n{output[-4000:]}"
    )
    assert "Traceback" not in output, output[-4000:]
    return done


@pytest.mark.slow
def test_a_policy_trained_by_lerobot_train_on_our_export_deploys_with_wmpo_deploy(tmp_path: Path) -> None:
    config = load_robot_config("so101_sim")
    with EpisodeStore.open(tmp_path / "demos.zarr", mode="a") as store:
        record(store, config, n_episodes=2, n_steps=6, source="scripted")
        root = export_lerobot(store, config, tmp_path / "lerobot", "local/so101_sim_demos", progress=False)

    _run(
        [
            str(BIN / "lerobot-train"),
            "--dataset.repo_id=local/so101_sim_demos",
            f"--dataset.root={root}",
            "--dataset.video_backend=pyav",
            "--policy.type=act",
            "--policy.device=cpu",
            "--policy.push_to_hub=false",
            "--policy.pretrained_backbone_weights=null",  # no ImageNet download
            "--policy.dim_model=32",
            "--policy.n_heads=2",
            "--policy.dim_feedforward=64",
            "--policy.n_encoder_layers=1",
            "--policy.n_decoder_layers=1",
            "--policy.use_vae=false",
            "--policy.chunk_size=4",
            "--policy.n_action_steps=4",
            "--steps=2",
            "--batch_size=2",
            "--num_workers=0",
            "--save_freq=2",
            "--wandb.enable=false",
            f"--output_dir={tmp_path / 'train'}",
        ]
    )
    checkpoint = tmp_path / "train" / "checkpoints" / "last" / "pretrained_model"
    trained = json.loads((checkpoint / "config.json").read_text())
    # the policy reads exactly what the robot config provides
    assert {k: v["shape"] for k, v in trained["input_features"].items()} == {
        "observation.images.front": [3, 128, 128],
        "observation.state": [6],
    }

    rollouts = tmp_path / "rollouts.zarr"
    _run(
        [
            sys.executable,
            "-m",
            "wmpo_core.cli",
            "deploy",
            "--robot",
            "so101_sim",
            "--policy",
            str(checkpoint),
            "--episodes",
            "1",
            "--max-steps",
            "6",
            "--store",
            str(rollouts),
            "--real-time-factor",
            "0",
        ]
    )
    (meta,) = list(EpisodeStore.open(rollouts))
    assert meta.source == "policy" and meta.num_steps == 6
    assert meta.policy_version.startswith("lerobot:act:pretrained_model@sha256:")
    actions = EpisodeStore.open(rollouts).episode(meta.episode_id).action()
    low, high = np.array([d.low for d in config.action.dims]), np.array([d.high for d in config.action.dims])
    assert np.all(actions >= low) and np.all(actions <= high)
