"""`--device`, the flag every `wmpo` command that computes spells the same way (docs/cli.md has
the table of shared flags): its help text and its argparse type, which refuses a device this
machine lacks while the command line is parsed, before anything is loaded or written. A config
field takes it as `option("auto", DEVICE_HELP, type=torch_device)`.
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
