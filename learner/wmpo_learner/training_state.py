"""Resumable training state as safetensors + JSON (no pickle: checkpoints are safe to load).

Shared by SFT and world-model training. `torch.save` of an optimizer is a pickle; here its tensors
go to a safetensors file keyed "<param index>.<name>" and everything else (param groups, scalar
state, the trainer's counters) to JSON. Every file is replaced atomically (wmpo_core.durable) and
`state.json` is written last, so a run killed while saving resumes from the previous save.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from wmpo_core.durable import atomic_output, atomic_write_json

STATE_JSON = "state.json"
OPTIMIZER_TENSORS = "optimizer.safetensors"
MODEL_TENSORS = "raw_weights.safetensors"


def save_training_state(
    directory: Path,
    optimizer: torch.optim.Optimizer | None,
    raw_weights: dict[str, torch.Tensor] | None,
    state: dict[str, Any],
) -> None:
    """Optimizer state, the un-averaged (non-EMA) weights being optimised, and JSON-able counters."""
    directory.mkdir(parents=True, exist_ok=True)
    opt = optimizer.state_dict() if optimizer is not None else {"state": {}, "param_groups": []}
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entry in opt["state"].items():
        for name, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = value
    with atomic_output(directory / OPTIMIZER_TENSORS) as tmp:
        save_file(tensors, str(tmp))
    if raw_weights is not None:
        with atomic_output(directory / MODEL_TENSORS) as tmp:
            save_file({k: v.detach().cpu().contiguous() for k, v in raw_weights.items()}, str(tmp))
    payload = {"state": state, "optimizer": {"param_groups": opt["param_groups"], "scalars": scalars}}
    atomic_write_json(directory / STATE_JSON, payload)


def has_training_state(directory: Path) -> bool:
    """Whether `directory` holds a completed save (its `state.json`)."""
    return (directory / STATE_JSON).is_file()


def read_counters(directory: Path) -> dict[str, Any]:
    """The trainer's JSON-able counters of the save in `directory` (no tensors loaded)."""
    return json.loads((directory / STATE_JSON).read_text())["state"]


def load_training_state(
    directory: Path, optimizer: torch.optim.Optimizer
) -> tuple[dict[str, Any], dict[str, torch.Tensor] | None]:
    """Restore `optimizer` in place (it moves its state to the parameters' device); returns
    (counters, raw weights on the CPU or None)."""
    payload = json.loads((directory / STATE_JSON).read_text())
    tensors = load_file(str(directory / OPTIMIZER_TENSORS))
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    for index, entries in payload["optimizer"]["scalars"].items():
        state.setdefault(int(index), {}).update(entries)
    optimizer.load_state_dict({"state": state, "param_groups": payload["optimizer"]["param_groups"]})
    raw_path = directory / MODEL_TENSORS
    raw = load_file(str(raw_path)) if raw_path.is_file() else None
    return payload["state"], raw
