"""The one rule for where tensors go: every stage and the robot's policy loader choose through it.

"auto" means the device named by the environment variable WMPO_DEVICE when set (a robot or a
job pinned to a device without a flag), else CUDA when a GPU is visible, else the CPU. A named
device this machine does not have is refused with a one-line `DeviceError` before anything is
loaded, instead of a CUDA traceback half-way through a run.
"""

from __future__ import annotations

import os

import torch

ENV_VAR = "WMPO_DEVICE"


class DeviceError(ValueError):
    """A device name that is not a torch device, or a device this machine does not have."""


def choose_device(name: str | torch.device = "auto") -> torch.device:
    """`name` ('auto', 'cpu', 'cuda', 'cuda:N', 'mps') as a torch device this machine has."""
    if isinstance(name, torch.device):
        name = str(name)
    if name == "auto":
        name = os.environ.get(ENV_VAR) or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise DeviceError(f"'{name}' is not a torch device (auto, cpu, cuda, cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"'{name}': CUDA is not available on this machine (use cpu or auto)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(f"'{name}': this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise DeviceError(f"'{name}': MPS is not available on this machine (use cpu or auto)")
    elif device.type != "cpu":
        raise DeviceError(f"'{name}': device type '{device.type}' is not supported")
    return device
