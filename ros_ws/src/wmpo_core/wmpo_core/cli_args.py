"""The flags every `wmpo` command spells the same way, with one meaning each (docs/cli.md has the table).

A command adds a shared flag through these helpers instead of writing its own `add_argument`, so
`--device` is a torch device everywhere, `--store` an episode store everywhere, and a bad value is
refused while the command line is parsed, before anything is loaded, brought up or written.
"""

from __future__ import annotations

import argparse

DEVICE_HELP = "torch device: auto (cuda when a GPU is visible, else cpu), cpu, cuda or cuda:N"


def torch_device(text: str) -> str:
    """argparse type of `--device`: 'auto' or a torch device this machine has, else a one-line error
    (the rule is `wmpo_core.devices.choose_device`'s, applied while parsing)."""
    if text == "auto":
        return text
    # torch only when a device is named: `wmpo --help` and the robot commands stay light.
    from wmpo_core.devices import DeviceError, choose_device

    try:
        choose_device(text)
    except DeviceError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def add_device_argument(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup, default: str = "auto"
) -> None:
    """`--device`: the torch device to compute on."""
    parser.add_argument(
        "--device", type=torch_device, default=default, help=f"{DEVICE_HELP} (default: %(default)s)"
    )
