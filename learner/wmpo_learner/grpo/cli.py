"""`wmpo grpo`: improve a VLA checkpoint with GRPO in imagination (WMPO) or in the simulator.

The flags are the fields of `GRPORunConfig` and `GRPOConfig` (wmpo_core.config_cli); the stage is
`wmpo_learner.grpo.run.grpo`, which `wmpo iterate` calls with the same config.
"""

from __future__ import annotations

import argparse
import json
import sys

from wmpo_core.config_cli import add_config_arguments, config_from_args
from wmpo_core.policy import PolicyLoadError
from wmpo_core.robot_config import RobotConfigError

from wmpo_learner.grpo.algorithm import GRPOConfig
from wmpo_learner.grpo.run import GRPORunConfig, grpo


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.description = (
        "GRPO of a VLA checkpoint. In imagination (default, WMPO): the policy is rolled out inside the "
        "world model from real first frames of the store, and the reward model scores the imagined "
        "videos; no real episode is spent. In the simulator (--env sim): the same algorithm on real "
        "(simulated) episodes, spending a budget of P episodes; the paper's baseline. Defaults are "
        "the paper's; on a CPU use the small settings shown in docs/wmpo.md."
    )
    add_config_arguments(parser, GRPORunConfig)
    add_config_arguments(parser, GRPOConfig)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(GRPORunConfig, args, algorithm=config_from_args(GRPOConfig, args))
    try:
        result = grpo(config)
    except (FileNotFoundError, ValueError, PolicyLoadError, RobotConfigError) as exc:
        print(f"wmpo grpo: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return 0
