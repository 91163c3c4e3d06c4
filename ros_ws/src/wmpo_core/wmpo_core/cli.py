"""The `wmpo` command: one entry point for the robot side, the data store and the learner.

Subcommands live in the package that owns them, which registers them under the `wmpo.commands`
entry point (pyproject.toml; each ROS package's setup.py for a colcon install). They are imported
only when used, so `wmpo --help` is instant and a robot machine without the learner installed gets
the robot commands only. Each subcommand module defines `add_arguments(parser, command)` and
`run(args) -> int` (`args.command` names the subcommand when one module serves several).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from importlib.metadata import distributions

ENTRY_POINT_GROUP = "wmpo.commands"
"""Each installed package of the stack registers its `COMMANDS` dict (name -> (module, one-line
help)) here: `wmpo_core.commands`, `wmpo_ros.commands`, `wmpo_learner.commands`."""


def installed_commands() -> dict[str, tuple[str, str]]:
    """Every registered command, by package (core, learner, robot side), in each package's order."""
    # Every distribution's entries, not `entry_points(group=...)`: that keeps one distribution per
    # name, and under `python -m` a stale `wmpo_stack.egg-info` in the working directory (left by an
    # older `pip install -e`) would hide the installed registrations.
    entries = {e.name: e for d in distributions() for e in d.entry_points if e.group == ENTRY_POINT_GROUP}
    found: dict[str, tuple[str, str]] = {}
    for name in sorted(entries):
        found.update(entries[name].load())
    return found


class _MissingCommand(Exception):
    pass


def _load(name: str):
    module_name, _ = installed_commands()[name]
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
    for name, (_, help_text) in installed_commands().items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == only:
            _load(name).add_arguments(p, name)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    name = next((a for a in argv if not a.startswith("-")), None)
    if name is not None and name not in installed_commands():
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
