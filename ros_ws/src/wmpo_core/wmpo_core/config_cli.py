"""Command lines generated from stage configs: one typed dataclass per stage, its fields are its flags.

A stage (`wmpo sft`, `wmpo grpo`, ...) is a function taking one `*Config` dataclass; `wmpo iterate`
and `wmpo run` build those objects directly, and the `wmpo` command builds them from argv with
`add_config_arguments` / `config_from_args`, so a flag, its type, its default and its help are
written once, on the field. `--help` shows every field with its default.

Why not draccus (LeRobot's choice, in the venv): it parses one dataclass per program with
underscore flags (`--batch_size`); `wmpo` is one argparse program with hyphenated subcommand flags
(`--batch-size`) shared with the robot commands, so this helper maps fields onto that parser.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal


def option(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    flag: str | None = None,
    aliases: tuple[str, ...] = (),
    type: Any = None,
    metavar: str | None = None,
    group: str | None = None,
    repeat: bool = False,
) -> Any:
    """A config field that is also a flag: `flag` (default `--field-name`), deprecated `aliases` of
    the same meaning, a `type` converter overriding the annotation's, the `--help` group, and for
    a list whether it is given by repeating the flag (`--rank a --rank b`) instead of `--flag a b`."""
    metadata = {
        "help": help,
        "flag": flag,
        "aliases": aliases,
        "type": type,
        "metavar": metavar,
        "group": group,
        "repeat": repeat,
    }
    if isinstance(default, list | dict):
        return dataclasses.field(default_factory=lambda: type_copy(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def type_copy(value: Any) -> Any:
    return list(value) if isinstance(value, list) else dict(value)


def flag_of(field: dataclasses.Field) -> str:
    return field.metadata.get("flag") or "--" + field.name.replace("_", "-")


def _unwrap_optional(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def add_config_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """One argparse option per field of the dataclass `cls` (fields with a `help` only)."""
    hints = typing.get_type_hints(cls)
    groups = {g.title: g for g in parser._action_groups}  # argparse keeps no public index of its groups
    for field in dataclasses.fields(cls):
        meta = field.metadata
        if "help" not in meta:
            continue  # set by the stage's caller, not a flag
        target = parser
        if meta.get("group"):
            if meta["group"] not in groups:
                groups[meta["group"]] = parser.add_argument_group(meta["group"])
            target = groups[meta["group"]]
        annotation = _unwrap_optional(hints[field.name])
        kwargs: dict[str, Any] = {"dest": field.name}
        if field.default is not dataclasses.MISSING:
            default = field.default
        elif field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        else:
            default = dataclasses.MISSING
        help_text = meta["help"]
        if annotation is bool:
            kwargs["action"] = "store_true"
        else:
            origin = typing.get_origin(annotation)
            if origin is Literal:
                kwargs["choices"] = list(typing.get_args(annotation))
            elif origin is list:
                if meta.get("repeat"):
                    kwargs["action"] = "append"
                else:
                    kwargs["nargs"] = "+"
                item = typing.get_args(annotation)[0]
                if typing.get_origin(item) is Literal:
                    kwargs["choices"] = list(typing.get_args(item))
                else:
                    kwargs["type"] = item
            elif annotation in (int, float, str, Path):
                kwargs["type"] = annotation
            if meta.get("type") is not None:
                kwargs["type"] = meta["type"]
            if meta.get("metavar"):
                kwargs["metavar"] = meta["metavar"]
            if default not in (dataclasses.MISSING, None, []):  # None, []: the help says what
                shown = " ".join(map(str, default)) if isinstance(default, list) else default
                help_text += f" (default: {shown})"
        if default is dataclasses.MISSING:
            kwargs["required"] = True
        elif annotation is not bool:
            kwargs["default"] = default
        target.add_argument(flag_of(field), *meta.get("aliases", ()), help=help_text, **kwargs)


def config_from_args(cls: type, args: argparse.Namespace, **given: Any) -> Any:
    """The `cls` config of parsed `args` (fields without a flag come from `given`)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if "help" in f.metadata}
    return cls(**values, **given)
