"""`wmpo sft`: behaviour cloning of the VLA on demonstrations from the episode store.

Targets are chunks of K consecutive actions starting at every step of every episode, turned into
tokens with q01/q99 statistics computed from the same demonstrations; the loss is the mean
cross-entropy over all K*A tokens. Chunks that run past the end of an episode are padded by
repeating the episode's last action and are NOT masked: the executor runs whole chunks, so the
policy must also say what to do after the demonstrated end (our episodes end at success, where
the last action, e.g. "keep lifting, gripper closed", is the right thing to keep doing).

Frames are read and resized once (with the shared `resize_frames`) and kept in memory; each
batch goes through `VLA.encode_inputs`, the same path as deployment. Output:

    <out>/                  the policy checkpoint (rewritten at every periodic save)
    <out>/training/         trainer state for --resume (wmpo_learner.training_state: optimizer, state.json)
    <out>/training/tensorboard/
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from wmpo_core.cli_args import DEVICE_HELP, torch_device
from wmpo_core.config_cli import add_config_arguments, config_from_args, option
from wmpo_core.devices import choose_device
from wmpo_core.episode_arrays import load_episode
from wmpo_core.vla.config import SFTRecipeConfig
from wmpo_core.window_sampler import WindowSampler

TRAINING_DIR = "training"


@dataclass
class SFTConfig:
    """`wmpo sft`: behaviour cloning of the VLA; unset optimisation sizes come from the recipe."""

    store: Path = option(help="episode store with the demonstrations")
    out: Path = option(help="checkpoint directory to write (the trained policy)")
    robot: str = option("so101_sim", "robot config name or YAML path the policy is for")
    config: str = option("tiny", "VLA recipe: 'tiny', 'realistic' or a JSON file (model + sft settings)")
    init_from: Path | None = option(
        None,
        "start from this checkpoint (its architecture and action statistics) instead of a new model",
        flag="--from",
    )
    resume: bool = option(False, "continue the run in --out from its last periodic save")
    steps: int | None = option(None, "total optimizer steps (None: the recipe's)")
    batch_size: int | None = option(None, "chunks per step (None: the recipe's)")
    lr: float | None = option(None, "peak learning rate (None: the recipe's)")
    save_every: int | None = option(None, "steps between checkpoints (None: the recipe's)")
    source: list[Literal["teleop", "scripted", "policy"]] = option(
        ["teleop", "scripted"], "which episodes to imitate, by source"
    )
    max_episodes: int | None = option(
        None, "use only the first N matching episodes, oldest first (None: all)"
    )
    include_failures: bool = option(False, "also imitate episodes labelled unsuccessful")
    device: str = option("auto", DEVICE_HELP, type=torch_device)
    seed: int = option(0, "seed for initialization, batch sampling and augmentation")

    def recipe_overrides(self) -> dict[str, Any]:
        """The recipe's `SFTRecipeConfig` values this run replaces (the fields of both that are set)."""
        own = {f.name for f in dataclasses.fields(self)}
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(SFTRecipeConfig)
            if f.name in own and getattr(self, f.name) is not None
        }


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    add_config_arguments(parser, SFTConfig)


@dataclasses.dataclass
class Demonstrations:
    """Every step of the selected episodes, preloaded at the model's image size."""

    pixels: dict[str, Any]  # camera -> (N, S, S, 3) uint8, all episodes concatenated
    actions: Any  # (N, A) float64
    states: Any  # (N, J) float64
    instructions: list[str]  # per step
    episode_end: Any  # (N,) int64: index one past the last step of the step's episode
    episode_ids: list[str]

    def __len__(self) -> int:
        return int(self.actions.shape[0])


def load_demonstrations(
    store_path: Path,
    robot_config,
    cameras,
    image_size: int,
    sources,
    include_failures: bool,
    max_episodes: int | None,
) -> Demonstrations:
    from tqdm import tqdm
    from wmpo_core.episode_store import EpisodeStore

    store = EpisodeStore.open(store_path, mode="r")
    metas = [
        m
        for m in store.select(source=sources, robot_config_name=robot_config.name)
        if include_failures or m.success is not False
    ]
    if max_episodes is not None:
        metas = metas[:max_episodes]
    if not metas:
        raise SystemExit(
            f"wmpo sft: no episodes in {store_path} for robot '{robot_config.name}' with source in "
            f"{list(sources)}" + ("" if include_failures else " that are not labelled failures")
        )
    for m in metas:
        if m.action_dim != robot_config.action.dim:
            raise SystemExit(
                f"wmpo sft: episode {m.episode_id} has {m.action_dim} action dims, robot has "
                f"{robot_config.action.dim}"
            )
        absent = [c for c in cameras if c not in m.cameras]
        if absent:
            raise SystemExit(f"wmpo sft: episode {m.episode_id} has no camera {absent}")
    pixels: dict[str, list] = {c: [] for c in cameras}
    actions, states, instructions, ends = [], [], [], []
    total = 0
    for meta in tqdm(metas, desc="loading episodes", unit="ep"):
        arrays = load_episode(store, meta, cameras, image_size, state=True)
        for cam in cameras:
            pixels[cam].append(arrays.frames[cam])
        actions.append(arrays.action)
        states.append(arrays.state)
        instructions.extend([meta.task] * meta.num_steps)
        total += meta.num_steps
        ends.append(np.full(meta.num_steps, total, dtype=np.int64))
    return Demonstrations(
        pixels={c: np.concatenate(v) for c, v in pixels.items()},
        actions=np.concatenate(actions),
        states=np.concatenate(states),
        instructions=instructions,
        episode_end=np.concatenate(ends),
        episode_ids=[m.episode_id for m in metas],
    )


def chunk_windows(episode_end: np.ndarray, chunk_size: int) -> WindowSampler:
    """The action chunks: one window of K steps per step (window i starts at step i of the
    concatenated episodes), padded past an episode's end by repeating its last step."""
    lengths = np.diff(np.unique(episode_end), prepend=0)
    return WindowSampler(lengths, chunk_size, pad_after=chunk_size - 1)


def random_shift(frames, pad: int, rng):
    """DrQ-style augmentation: replicate-pad by `pad` px and crop back at a random offset per sample."""
    if pad <= 0:
        return frames
    n, h, w, _ = frames.shape
    padded = np.pad(frames, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="edge")
    dy, dx = rng.integers(0, 2 * pad + 1, size=(2, n))
    return np.stack([padded[i, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])


def lr_at(step: int, peak: float, warmup: int, total: int) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def train_sft(config: SFTConfig) -> int:
    """The `train_sft` stage; returns the exit status."""
    import torch
    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm
    from wmpo_core.episode_store import StoreError
    from wmpo_core.normalization import ActionNormalizer
    from wmpo_core.robot_config import load_robot_config
    from wmpo_core.vla.checkpoint import load_checkpoint, save_checkpoint
    from wmpo_core.vla.config import load_recipe
    from wmpo_core.vla.model import VLA, cross_entropy, resolve_cameras

    from wmpo_learner.training_state import (
        STATE_JSON,
        has_training_state,
        load_training_state,
        read_counters,
        save_training_state,
    )

    try:
        robot = load_robot_config(config.robot)
        recipe = load_recipe(config.config)
        settings = dataclasses.replace(recipe.sft, **config.recipe_overrides())
        for name in ("steps", "batch_size", "save_every"):
            if getattr(settings, name) < 1:
                raise SystemExit(f"wmpo sft: --{name.replace('_', '-')} must be >= 1")
        device = choose_device(config.device)
        out: Path = config.out
        training_dir = out / TRAINING_DIR
        if config.resume and config.init_from is not None:
            raise SystemExit(
                "wmpo sft: --resume continues the run in --out; it cannot be combined with --from"
            )
        if config.resume and not has_training_state(training_dir):
            raise SystemExit(f"wmpo sft: nothing to resume in {out} (no {TRAINING_DIR}/{STATE_JSON})")
        if not config.resume and has_training_state(training_dir):
            raise SystemExit(
                f"wmpo sft: {out} already holds a training run; pass --resume to continue it or choose "
                "another --out"
            )
        torch.manual_seed(config.seed)

        # Model first (its cameras and image size decide how the demonstrations are preloaded).
        start_step, rng_state, history = 0, None, []
        parent_version = None
        if config.resume:
            trainer_state = read_counters(training_dir)
            model = load_checkpoint(out, robot, device=device)
            start_step, rng_state, history = (
                trainer_state["step"],
                trainer_state["rng"],
                trainer_state["loss_history"],
            )
            parent_version = model.parent_version
            recipe_name = trainer_state["recipe"]
        elif config.init_from is not None:
            model = load_checkpoint(config.init_from, robot, device=device)
            parent_version = model.version
            recipe_name = f"from:{config.init_from}"
        else:
            model = None
            recipe_name = recipe.name
        cameras = model.cameras if model is not None else resolve_cameras(recipe.model, robot)
        image_size = model.image_size if model is not None else recipe.model.image_size
        demos = load_demonstrations(
            config.store,
            robot,
            cameras,
            image_size,
            config.source,
            config.include_failures,
            config.max_episodes,
        )
    except (ValueError, StoreError) as exc:  # robot config, recipe, checkpoint, store
        raise SystemExit(f"wmpo sft: {exc}") from None
    if model is None:
        state_norm = ActionNormalizer.from_actions(demos.states) if recipe.model.use_state else None
        model = VLA.create(recipe.model, robot, ActionNormalizer.from_actions(demos.actions), state_norm).to(
            device
        )
    model.train()
    tokens_all = model.actions_to_tokens(demos.actions)  # (N, A), with the model's own statistics

    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    if config.resume:
        load_training_state(training_dir, optimizer)
    rng = np.random.default_rng(config.seed)
    if rng_state is not None:
        rng.bit_generator.state = rng_state
    autocast = (
        torch.autocast(device.type, dtype=getattr(torch, settings.autocast_dtype))
        if settings.autocast_dtype
        else torch.autocast(device.type, enabled=False)
    )

    data_hash = hashlib.sha256("\n".join(demos.episode_ids).encode()).hexdigest()
    provenance = {
        "sft": {
            "store": str(Path(config.store).resolve()),
            "sources": list(config.source),
            "episodes": len(demos.episode_ids),
            "steps_of_data": len(demos),
            "episode_ids_sha256": "sha256:" + data_hash,
            "recipe": recipe_name,
            "settings": dataclasses.asdict(settings),
        },
        "parent": parent_version,
    }

    def save(step: int) -> None:
        provenance["sft"]["trained_steps"] = step
        model.eval()
        save_checkpoint(
            model, out, robot, version_prefix="sft", parent_version=parent_version, provenance=provenance
        )
        model.train()
        state = {
            "step": step,
            "rng": rng.bit_generator.state,
            "loss_history": history,
            "recipe": recipe_name,
            "episode_ids_sha256": "sha256:" + data_hash,
        }
        save_training_state(training_dir, optimizer, None, state)

    writer = SummaryWriter(str(training_dir / "tensorboard"))
    print(
        f"wmpo sft: {len(demos.episode_ids)} episodes, {len(demos)} steps; model "
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M "
        f"params on {device}; steps {start_step}->{settings.steps}, batch {settings.batch_size}"
    )
    bar = tqdm(
        range(start_step, settings.steps), initial=start_step, total=settings.steps, desc="sft", unit="step"
    )
    window: list[float] = []
    t_start = time.time()
    step = start_step
    windows = chunk_windows(demos.episode_end, model.chunk_size)
    for step in bar:
        starts = rng.integers(0, len(demos), size=settings.batch_size)
        chunks = windows.flat_steps(starts)
        frames = {c: random_shift(demos.pixels[c][starts], settings.augment_shift_px, rng) for c in cameras}
        inputs = model.encode_inputs(
            frames,
            [demos.instructions[i] for i in starts],
            demos.states[starts] if model.state_dim is not None else None,
        )
        targets = torch.as_tensor(tokens_all[chunks], device=device)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, settings.lr, settings.warmup_steps, settings.steps)
        with autocast:
            logits = model.action_logits(inputs)
        loss = cross_entropy(logits.float(), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
        optimizer.step()

        window.append(loss.item())
        if (step + 1) % 10 == 0 or step + 1 == settings.steps:
            accuracy = (logits.argmax(-1) == targets).float().mean().item()
            mean_loss = float(np.mean(window))
            history.append([step + 1, mean_loss])
            window.clear()
            writer.add_scalar("sft/loss", mean_loss, step + 1)
            writer.add_scalar("sft/token_accuracy", accuracy, step + 1)
            writer.add_scalar("sft/lr", optimizer.param_groups[0]["lr"], step + 1)
            writer.add_scalar("sft/grad_norm", float(grad_norm), step + 1)
            bar.set_postfix(loss=f"{mean_loss:.3f}", acc=f"{accuracy:.2f}")
        if (step + 1) % settings.save_every == 0 and step + 1 < settings.steps:
            save(step + 1)
    save(settings.steps)
    writer.close()
    elapsed = time.time() - t_start
    print(
        f"wmpo sft: wrote {out} (version {model.version}) after {settings.steps - start_step} steps in "
        f"{elapsed:.0f} s; "
        f"final loss {history[-1][1] if history else float('nan'):.3f}"
    )
    return 0


def run(args: argparse.Namespace) -> int:
    return train_sft(config_from_args(SFTConfig, args))
