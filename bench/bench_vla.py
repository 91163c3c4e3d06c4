"""Speed of the VLA: policy latency (batch 1), sampling throughput, and training-step time.

    python bench/bench_vla.py [--config tiny] [--device cpu] [--threads 1] [--repeats 20]

Prints the machine (CPU model, cores, load average) with the numbers: on a shared machine the
load average says how much of the CPU the benchmark actually had.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from machine import describe
from wmpo_core.normalization import ActionNormalizer
from wmpo_core.policy import Observation
from wmpo_core.robot_config import load_robot_config
from wmpo_core.vla.config import load_recipe
from wmpo_core.vla.model import VLA, cross_entropy
from wmpo_core.vla.policy import VLAPolicy


def timed(fn, repeats: int, sync) -> float:
    fn()
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="tiny", help="VLA recipe name or JSON path")
    parser.add_argument("--robot", default="so101_sim")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    robot = load_robot_config(args.robot)
    recipe = load_recipe(args.config)
    torch.manual_seed(0)
    model = VLA.create(recipe.model, robot, ActionNormalizer([-1, -1, -1, 0], [1, 1, 1, 1])).to(device)
    params = sum(p.numel() for p in model.parameters())
    cam = robot.cameras[0]
    rng = np.random.default_rng(0)
    print(f"machine: {describe()}, device {device}")
    print(
        f"model: recipe '{recipe.name}', {params / 1e6:.2f}M parameters, image {model.image_size} px, "
        f"K={model.chunk_size} x A={model.action_dim} tokens x {model.num_bins} bins"
    )

    model.eval()
    policy = VLAPolicy(model, robot)
    obs = Observation(
        {cam.name: rng.integers(0, 256, cam.shape, dtype=np.uint8)},
        np.zeros(len(robot.joints)),
        robot.tasks[0],
    )
    latency = timed(lambda: policy.predict_chunk(obs), args.repeats, sync)
    print(f"predict_chunk (batch 1, raw {cam.width}x{cam.height} frame, greedy): {1000 * latency:.1f} ms")

    for batch in (8, 64):
        frames = rng.integers(0, 256, (batch, cam.height, cam.width, 3), dtype=np.uint8)
        inputs = model.encode_inputs(frames, robot.tasks[0])
        t = timed(lambda inputs=inputs: model.sample(inputs), max(3, args.repeats // 4), sync)
        print(f"sample (batch {batch}, T=1.6): {1000 * t:.1f} ms = {batch / t:.0f} chunks/s")

    model.train()
    batch = recipe.sft.batch_size
    frames = rng.integers(0, 256, (batch, model.image_size, model.image_size, 3), dtype=np.uint8)
    inputs = model.encode_inputs(frames, robot.tasks[0])
    targets = torch.randint(0, model.num_bins, (batch, model.chunk_size, model.action_dim), device=device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def train_step() -> None:
        loss = cross_entropy(model.action_logits(inputs), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    t = timed(train_step, max(3, args.repeats // 4), sync)
    print(f"SFT step (batch {batch}, forward + backward + AdamW): {1000 * t:.0f} ms")


if __name__ == "__main__":
    main()
