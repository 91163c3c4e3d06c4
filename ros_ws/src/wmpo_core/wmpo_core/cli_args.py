"""The flags every `wmpo` command spells the same way, with one meaning each (docs/cli.md has the table).

A command adds a shared flag through these helpers instead of writing its own `add_argument`, so
`--device` is a torch device everywhere, `--store` an episode store everywhere, and a bad value is
refused while the command line is parsed, before anything is loaded, brought up or written.
"""

from __future__ import annotations

import argparse

DEVICE_HELP = "torch device: auto (cuda when a GPU is visible, else cpu), cpu, cuda or cuda:N"


def torch_device(text: str) -> str:
    """argparse type of `--device`: 'auto' or a torch device this machine has, else a one-line error."""
    if text == "auto":
        return text
    # torch only when a device is named: `wmpo --help` and the robot commands stay light.
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(
            f"'{text}' is not a torch device (auto, cpu, cuda, cuda:N)"
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(
                f"'{text}': CUDA is not available on this machine (use cpu or auto)"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(
                f"'{text}': this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    elif device.type not in ("cpu", "mps"):
        raise argparse.ArgumentTypeError(f"'{text}': device type '{device.type}' is not supported")
    return text


def add_device_argument(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup, default: str = "auto"
) -> None:
    """`--device`: the torch device to compute on."""
    parser.add_argument(
        "--device", type=torch_device, default=default, help=f"{DEVICE_HELP} (default: %(default)s)"
    )
