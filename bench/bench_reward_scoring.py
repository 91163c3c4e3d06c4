"""Sliding-window scoring throughput of the reward model, as GRPO uses it on imagined rollouts.

Scores `--episodes` random episodes of `--steps` frames (stride-1 windows of 8 frames) in one
`detect_batch` call and prints windows per second and seconds per episode, with the machine.
The load average is printed too: on a shared machine it explains slow numbers.

    .venv/bin/python bench/bench_reward_scoring.py --preset tiny --episodes 64 --steps 40
    .venv/bin/python bench/bench_reward_scoring.py --pretrained MCG-NJU/videomae-base --device cuda
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch
from machine import describe
from wmpo_learner.reward.model import RewardModel


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny", help="model size from scratch (default tiny)")
    p.add_argument("--pretrained", help="a VideoMAE id/path instead of --preset")
    p.add_argument("--episodes", type=int, default=64, help="episodes scored in one call (default 64)")
    p.add_argument("--steps", type=int, default=40, help="frames per episode (default 40)")
    p.add_argument("--frame-size", type=int, default=128, help="stored frame side in pixels (default 128)")
    p.add_argument("--batch-size", type=int, default=64, help="windows per forward pass (default 64)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)

    torch.manual_seed(0)
    if args.pretrained:
        model = RewardModel.from_pretrained(args.pretrained, camera="front")
    else:
        model = RewardModel.from_preset(args.preset, camera="front")
    model.to(args.device).eval()
    rng = np.random.default_rng(0)
    frames = rng.integers(
        0, 256, (args.episodes, args.steps, args.frame_size, args.frame_size, 3), dtype=np.uint8
    )
    model.detect_batch(frames[:1], batch_size=args.batch_size)  # warm-up
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    detections = model.detect_batch(frames, batch_size=args.batch_size)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    windows = sum(len(d.scores) for d in detections)
    print(f"machine: {describe()}")
    print(f"load average: {os.getloadavg()[0]:.1f} (1 min), torch threads: {torch.get_num_threads()}")
    print(
        f"model: {args.pretrained or 'preset ' + args.preset} at {model.spec.image_size} px, device "
        f"{args.device}"
    )
    print(
        f"{args.episodes} episodes x {args.steps} frames of {args.frame_size} px = {windows} windows in "
        f"{seconds:.2f} s: "
        f"{windows / seconds:.0f} windows/s, {seconds / args.episodes * 1000:.0f} ms per episode"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
