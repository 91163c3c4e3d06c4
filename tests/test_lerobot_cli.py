"""LeRobot's own command-line tools run in our venv, on our exports, without traceback noise.

They need what docker/setup.sh installs: the FFmpeg shared libraries that torchcodec loads, and
LeRobot's `training` extra (accelerate) through our `lerobot-tools` extra.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from lerobot_harness import record
from wmpo_core.episode_store import EpisodeStore
from wmpo_core.lerobot_dataset import export_lerobot
from wmpo_core.robot_config import load_robot_config

BIN = Path(sys.executable).parent
NOISE = ("Traceback", "libtorchcodec", "falling back to 'pyav'")


def _run(args: list[str]) -> str:
    """Run a command from the venv; return stdout and stderr together after checking exit 0 and no noise."""
    done = subprocess.run(args, capture_output=True, text=True, timeout=600, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{args[0]} exited {done.returncode}:\n{output[-3000:]}"
    for noise in NOISE:
        assert noise not in output, f"{args[0]} printed {noise!r}:\n{output[-3000:]}"
    return output


@pytest.mark.parametrize("command", ["lerobot-info", "lerobot-edit-dataset", "lerobot-train"])
def test_lerobot_cli_help_runs_cleanly(command: str) -> None:
    output = _run([str(BIN / command), "--help"])
    if command == "lerobot-info":  # it prints the system report (it takes no arguments)
        assert "- Torchcodec version: N/A" not in output and "- FFmpeg version: N/A" not in output
    else:
        assert "usage:" in output


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("lerobot_cli")
    config = load_robot_config("so101_sim")
    with EpisodeStore.open(tmp / "robot.zarr", mode="a") as store:
        record(store, config, n_episodes=2, n_steps=4)
        return export_lerobot(store, config, tmp / "lerobot", "local/so101_sim_cli", progress=False)


def test_lerobot_edit_dataset_reads_our_export(exported: Path) -> None:
    output = _run(
        [
            str(BIN / "lerobot-edit-dataset"),
            "--operation.type=info",
            "--operation.show_features=true",
            "--repo_id=local/so101_sim_cli",
            f"--root={exported}",
        ]
    )
    assert "Total episode: 2" in output and "Total frame(Actual Count): 8(8)" in output
    assert "FPS: 10" in output and '"observation.images.front"' in output


def test_lerobot_decodes_our_videos_with_its_default_backend_silently(exported: Path) -> None:
    """LeRobot picks torchcodec when it loads (it needs the system FFmpeg) and decodes our MP4s; the
    import logs nothing (without FFmpeg it logs ~30 lines of libtorchcodec traceback)."""
    script = (
        "from lerobot.datasets.lerobot_dataset import LeRobotDataset\n"
        "from lerobot.utils.import_utils import get_safe_default_video_backend\n"
        "print('backend', get_safe_default_video_backend())\n"
        f"d = LeRobotDataset('local/so101_sim_cli', root={str(exported)!r})\n"
        "print('frame', tuple(d[5]['observation.images.front'].shape))\n"
    )
    output = _run([sys.executable, "-c", script])
    assert "backend torchcodec" in output and "frame (3, 128, 128)" in output
