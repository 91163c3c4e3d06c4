"""Every `wmpo` command refuses bad input in one line that names the problem, with no traceback, a
non-zero exit, and nothing written: missing stores, policies, checkpoints and robot configs, a
CUDA device on a machine without one, out-of-range values.

Real parts: the real `wmpo` entry point (in-process for speed, and the installed console script for a
few cases, where a traceback would be printed by the interpreter itself).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from wmpo_core.cli import main

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")

# (argv with {tmp} for the test's empty folder, what the one-line error must name)
CASES: list[tuple[str, str]] = [
    ("sft --store {tmp}/no/demos.zarr --out {tmp}/sft", "no episode store here"),
    ("sft --store {tmp}/no/demos.zarr --out {tmp}/sft --robot no_such_arm", "no robot config named"),
    ("sft --store {tmp}/no/demos.zarr --out {tmp}/sft --from {tmp}/no/policy", "not a VLA checkpoint"),
    ("eval --policy {tmp}/no/policy --episodes 1 --workers 1", "neither an existing checkpoint"),
    ("eval --policy expert --episodes 0", "--episodes must be >= 1"),
    ("eval --policy expert --robot so101_real --episodes 1", "not a simulated arm"),
    ("wm-train --store {tmp}/no/demos.zarr --out {tmp}/wm", "no episode store here"),
    (
        "wm-train --store {tmp}/no/demos.zarr --out {tmp}/wm --steps -1",
        "--steps: Input should be greater than or equal to 0",
    ),
    ("align --store {tmp}/no/r.zarr --from {tmp}/no/wm --out {tmp}/aligned", "not a world-model checkpoint"),
    ("wm-eval --store {tmp}/no/r.zarr --wm {tmp}/no/wm --out {tmp}/wm_eval", "not a world-model checkpoint"),
    ("reward --store {tmp}/no/r.zarr --robot so101_sim --out {tmp}/reward", "no episode store here"),
    ("reward --store {tmp}/no/r.zarr --robot so101_sim --out {tmp}/reward --holdout-fraction 2", "(0, 1)"),
    ("grpo --policy {tmp}/no/policy --out {tmp}/grpo --env sim", "not a VLA checkpoint"),
    ("grpo --policy {tmp}/no/policy --out {tmp}/grpo --group-size 1", "--group-size must be >= 2"),
    (
        "imagination-check --store {tmp}/no/r.zarr --wm {tmp}/no/wm --reward {tmp}/no/rm",
        "not a world-model checkpoint",
    ),
    (
        "iterate --store {tmp}/no/r.zarr --policy {tmp}/no/p --wm {tmp}/no/wm --out {tmp}/round",
        "not a VLA checkpoint",
    ),
    (
        "iterate --store {tmp}/no/r.zarr --policy {tmp}/no/p --wm {tmp}/no/wm --out {tmp}/round "
        "--set no_such_size=1",
        "--set expects KEY=VALUE",
    ),
    ("run --out {tmp}/run --set no_such_size=1", "--set expects KEY=VALUE"),
    ("deploy --policy {tmp}/no/policy --episodes 1 --store {tmp}/rollouts.zarr", "neither an existing"),
    ("deploy --policy expert --episodes 0 --store {tmp}/rollouts.zarr", "--episodes must be at least 1"),
    ("teleop --robot {tmp}/no/arm.yaml --store {tmp}/demos.zarr", "robot config file not found"),
    ("robot --robot no_such_arm", "no robot config named"),
    ("store info {tmp}/no/demos.zarr", "no episode store here"),
    ("store verify {tmp}/no/demos.zarr", "no episode store here"),
    ("store delete {tmp}/no/demos.zarr ep_1", "no episode store here"),
    ("store export-lerobot {tmp}/no/demos.zarr {tmp}/lerobot --robot so101_sim", "no episode store here"),
    ("store import-lerobot {tmp}/no/dataset {tmp}/demos.zarr --robot so101_sim", "not a LeRobotDataset"),
    ("outbox status --store {tmp}/no/demos.zarr", "no outbox"),
]
CUDA_CASES: list[str] = [
    "sft --store {tmp}/no/demos.zarr --out {tmp}/sft",
    "eval --policy expert --episodes 1",
    "wm-train --store {tmp}/no/demos.zarr --out {tmp}/wm",
    "align --store {tmp}/no/r.zarr --from {tmp}/no/wm --out {tmp}/aligned",
    "wm-eval --store {tmp}/no/r.zarr --wm {tmp}/no/wm --out {tmp}/wm_eval",
    "reward --store {tmp}/no/r.zarr --robot so101_sim --out {tmp}/reward",
    "grpo --policy {tmp}/no/policy --out {tmp}/grpo",
    "imagination-check --store {tmp}/no/r.zarr --wm {tmp}/no/wm --reward {tmp}/no/rm",
    "iterate --store {tmp}/no/r.zarr --policy {tmp}/no/p --wm {tmp}/no/wm --out {tmp}/round",
    "run --out {tmp}/run",
]


def run_in_process(argv: list[str], capsys) -> tuple[int, str]:
    """`wmpo argv` as the console script runs it: a `SystemExit("message")` is printed by the
    interpreter on stderr with exit status 1; argparse's own refusals exit with status 2."""
    try:
        code = main(argv)
    except SystemExit as exc:
        if isinstance(exc.code, str):
            return 1, capsys.readouterr().err + exc.code + "\n"
        code = exc.code
    return code, capsys.readouterr().err


def assert_refused(code: int, err: str, expected: str, tmp_path: Path) -> None:
    assert code != 0
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) >= 1 and expected in lines[-1], err
    assert not [line for line in lines if not line.startswith(("wmpo", "usage:", "  "))], err
    assert list(tmp_path.iterdir()) == [], "a refused command wrote something"


@pytest.mark.parametrize(("argv", "expected"), CASES, ids=[c[0].split(" --")[0] for c in CASES])
def test_bad_paths_and_values_are_refused_in_one_line(argv, expected, tmp_path, capsys):
    code, err = run_in_process(argv.format(tmp=tmp_path).split(), capsys)
    assert_refused(code, err, expected, tmp_path)


@NO_CUDA
@pytest.mark.parametrize("argv", CUDA_CASES, ids=[c.split(" --")[0] for c in CUDA_CASES])
def test_a_cuda_device_on_a_machine_without_one_is_refused_before_anything_runs(argv, tmp_path, capsys):
    code, err = run_in_process([*argv.format(tmp=tmp_path).split(), "--device", "cuda"], capsys)
    assert code == 2
    assert_refused(code, err, "CUDA is not available on this machine", tmp_path)


def test_not_a_device_is_refused(tmp_path, capsys):
    code, err = run_in_process(
        ["sft", "--store", f"{tmp_path}/s.zarr", "--out", f"{tmp_path}/o", "--device", "gpu0"], capsys
    )
    assert_refused(code, err, "'gpu0' is not a torch device", tmp_path)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ("sft --store {tmp}/no/demos.zarr --out {tmp}/sft", "no episode store here"),
        ("eval --policy {tmp}/no/policy --episodes 1 --workers 1", "neither an existing checkpoint"),
        ("deploy --policy {tmp}/no/policy --episodes 1 --store {tmp}/rollouts.zarr", "neither an existing"),
    ],
    ids=["sft", "eval", "deploy"],
)
def test_the_installed_command_prints_no_traceback(argv, expected, tmp_path):
    wmpo = Path(sys.executable).with_name("wmpo")
    done = subprocess.run(
        [str(wmpo), *argv.format(tmp=tmp_path).split()], capture_output=True, text=True, timeout=300
    )
    assert done.returncode != 0
    assert "Traceback" not in done.stderr and expected in done.stderr.strip().splitlines()[-1], done.stderr
    assert list(tmp_path.iterdir()) == []
