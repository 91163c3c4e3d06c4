"""The `wmpo` command: one entry point for the robot side, the data store and the learner.

Subcommands live in the package that owns them and are imported only when used, so
`wmpo --help` is instant and a robot machine without the learner installed still gets the
robot commands. Each subcommand module defines `add_arguments(parser, command)` and
`run(args) -> int` (`args.command` names the subcommand when one module serves several).
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help). Order is the order shown in --help.
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("wmpo_learner.main_job", "the whole lifelong loop on one machine (the main job)"),
    "robot": ("wmpo_ros.bringup", "bring up an arm (sim or real) behind the standard topics"),
    "teleop": ("wmpo_ros.bringup", "bring up the arm and teleoperate it to record demonstrations"),
    "deploy": ("wmpo_ros.bringup", "bring up the arm and run a policy on it, recording episodes"),
    "outbox": (
        "wmpo_ros.outbox_cli",
        "a store's upload queue: push it to the learner with no robot running, or show it",
    ),
    "policy": (
        "wmpo_ros.policy_cli",
        "the robot's running policy: show its versions, roll back to the previous one",
    ),
    "store": ("wmpo_core.store_cli", "inspect, verify, import and export episode stores"),
    "sft": ("wmpo_learner.sft", "behaviour cloning of the VLA on demonstrations"),
    "eval": ("wmpo_learner.sim_eval", "evaluate a policy checkpoint in the simulator"),
    "wm-train": ("wmpo_learner.world_model.train", "pretrain the video world model on stored episodes"),
    "align": (
        "wmpo_learner.world_model.train",
        "Policy Behavior Alignment: fine-tune the world model on rollouts",
    ),
    "wm-eval": ("wmpo_learner.world_model.evaluate", "world-model quality on held-out episodes"),
    "wm-few-step": (
        "wmpo_learner.world_model.few_step",
        "measure few-step samplers against the default on held-out rollouts; certify the cheapest match",
    ),
    "reward": ("wmpo_learner.reward.cli", "train and threshold the success reward model"),
    "grpo": ("wmpo_learner.grpo.cli", "GRPO of the policy in imagination (or in the simulator)"),
    "imagination-check": (
        "wmpo_learner.imagination_check",
        "can GRPO trust imagination? outcome agreement and policy ranking on real rollouts",
    ),
    "iterate": ("wmpo_learner.iterate", "one lifelong round: align, reward, GRPO, evaluate, new version"),
    "serve": ("wmpo_learner.service.app", "the learner service: episode ingestion and policy registry"),
}


class _MissingCommand(Exception):
    pass


def _load(name: str):
    module_name, _ = COMMANDS[name]
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise _MissingCommand(
                f"`wmpo {name}` is not available in this installation yet ({module_name} is missing)."
            ) from exc
        raise


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The full parser; when `only` names a subcommand, only that one's module is imported."""
    parser = argparse.ArgumentParser(
        prog="wmpo",
        description="WMPO stack: record on a robot over ROS 2, improve its VLA policy in a learned "
        "world model, push the new weights back. `wmpo <command> --help` explains each command.",
    )
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for name, (_, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == only:
            _load(name).add_arguments(p, name)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    name = next((a for a in argv if not a.startswith("-")), None)
    if name is not None and name not in COMMANDS:
        build_parser().parse_args(argv)  # argparse prints the valid choices and exits 2
    try:
        parser = build_parser(only=name)
    except _MissingCommand as exc:
        print(f"wmpo: {exc}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    module = _load(args.command)
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
