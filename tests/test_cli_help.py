"""The `wmpo` command: each package registers its own commands (entry points), every command's
`--help` works, and a stage's flags are its config's fields, each listed with its default.

Real parts: the installed entry points and the real argparse parser of `wmpo`.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest
from wmpo_core.cli import build_parser, installed_commands
from wmpo_core.config_cli import config_from_args, flag_of
from wmpo_learner.grpo.algorithm import GRPOConfig
from wmpo_learner.grpo.run import GRPORunConfig
from wmpo_learner.imagination_check import ImaginationCheckConfig
from wmpo_learner.iterate import IterateConfig
from wmpo_learner.reward.cli import RewardConfig
from wmpo_learner.service.app import ServeConfig
from wmpo_learner.sft import SFTConfig
from wmpo_learner.sim_eval import EvalConfig
from wmpo_learner.world_model.evaluate import WorldModelEvalConfig
from wmpo_learner.world_model.few_step import FewStepConfig
from wmpo_learner.world_model.train import AlignConfig, WorldModelTrainConfig
from wmpo_loop.main_job import MainJobConfig
from wmpo_ros.bringup import BringupConfig, DeployConfig, TeleopConfig

COMMAND_CONFIGS: dict[str, tuple[type, ...]] = {
    "sft": (SFTConfig,),
    "eval": (EvalConfig,),
    "wm-train": (WorldModelTrainConfig,),
    "align": (AlignConfig,),
    "wm-few-step": (FewStepConfig,),
    "reward": (RewardConfig,),
    "grpo": (GRPORunConfig, GRPOConfig),
    "imagination-check": (ImaginationCheckConfig,),
    "iterate": (IterateConfig,),
    "wm-eval": (WorldModelEvalConfig,),
    "run": (MainJobConfig,),
    "serve": (ServeConfig,),
    "robot": (BringupConfig,),
    "teleop": (TeleopConfig,),
    "deploy": (DeployConfig,),
}
"""Every command whose flags are generated from config dataclasses; `store`, `policy` and `outbox`
are groups of small tools with positional arguments and keep plain argparse."""


def help_text(command: str) -> str:
    parser = build_parser(only=command)
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    return " ".join(sub.format_help().split())


def test_each_package_registers_its_own_commands():
    commands = installed_commands()
    assert {"store", "robot", "teleop", "deploy", "sft", "grpo", "iterate", "run", "serve"} <= set(commands)
    for name, (module, _) in commands.items():
        owner = module.split(".")[0]
        assert owner in ("wmpo_core", "wmpo_ros", "wmpo_learner", "wmpo_loop"), name
    robot_side = {n for n, (m, _) in commands.items() if m.startswith("wmpo_ros.")}
    assert robot_side == {"robot", "teleop", "deploy", "outbox", "policy"}
    top_layer = {n for n, (m, _) in commands.items() if m.startswith("wmpo_loop.")}
    assert top_layer == {"run"}


@pytest.mark.parametrize("command", sorted(installed_commands()))
def test_every_command_has_a_help(command):
    text = help_text(command)
    assert text.startswith(f"usage: wmpo {command}")


def test_no_command_help_imports_the_world_model_code():
    """diffusers costs ~5 s of import; `wmpo <command> --help` only builds a parser (issue 14)."""
    script = (
        "import sys\n"
        "from wmpo_core.cli import build_parser, installed_commands\n"
        "for name in installed_commands():\n"
        "    build_parser(only=name)\n"
        "heavy = sorted(m for m in ('diffusers', 'wmpo_learner.world_model.model') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


@pytest.mark.parametrize("command", sorted(COMMAND_CONFIGS))
def test_a_config_command_help_lists_every_field_with_its_default(command):
    text = help_text(command)
    for cls in COMMAND_CONFIGS[command]:
        for field in dataclasses.fields(cls):
            if "help" not in field.metadata:
                continue
            flag = flag_of(field)
            assert re.search(rf"{re.escape(flag)}\b", text), (command, flag)
            default = field.default
            if default in (dataclasses.MISSING, None, False) or field.type == "bool":
                continue
            assert f"(default: {default})" in text, (command, flag, default)


def test_argv_and_a_config_built_in_code_are_the_same_config(tmp_path):
    argv = ["grpo", "--policy", str(tmp_path / "p"), "--out", str(tmp_path / "o"), "--env", "sim"]
    argv += ["--group-size", "4", "--minibatch", "8", "--budget", "12", "--device", "cpu"]
    args = build_parser(only="grpo").parse_args(argv)
    parsed = config_from_args(GRPORunConfig, args, algorithm=config_from_args(GRPOConfig, args))
    built = GRPORunConfig(
        policy=tmp_path / "p",
        out=tmp_path / "o",
        env="sim",
        budget=12,
        device="cpu",
        algorithm=GRPOConfig(group_size=4, minibatch_trajectories=8),
    )
    assert parsed == built
    args = build_parser(only="iterate").parse_args(
        [
            "iterate",
            "--store",
            "s",
            "--policy",
            "p",
            "--wm",
            "w",
            "--out",
            "o",
            "--set",
            "a=1",
            "--set",
            "b=2",
        ]
    )
    config = config_from_args(IterateConfig, args)
    assert config.overrides == ["a=1", "b=2"] and config.store == Path("s")
