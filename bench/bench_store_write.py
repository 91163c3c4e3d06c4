"""Sustained episode-store write throughput vs. raw writes of the same bytes to the same disk.

Workload (issue target): 2 cameras 480x640 RGB at 30 Hz + 7-DoF state and action, episodes of
`--episode-seconds`, for `--seconds` of recorded time, on ONE core (the process pins itself to a
single CPU and zarr runs with one worker). Frames are camera-like: a textured scene with a moving
object and sensor noise (noise-free synthetic frames would compress unrealistically well).

Targets: >= 3x real time, and >= 50% of the raw write rate measured in the same run.

    .venv/bin/python bench/bench_store_write.py --out /tmp/bench_store  [--seconds 60]
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

import numpy as np
import zarr
from machine import describe
from wmpo_core.episode_store import EpisodeStore
from wmpo_core.robot_config import parse_robot_config

HEIGHT, WIDTH, FPS, DOF = 480, 640, 30, 7


def bench_config() -> object:
    joints = [{"name": f"j{i}", "unit": "rad", "lower": -3.0, "upper": 3.0} for i in range(DOF)]
    return parse_robot_config(
        {
            "name": "bench_arm",
            "robot_type": "bench",
            "control_rate_hz": FPS,
            "episode_time_limit_s": 60,
            "joints": joints,
            "action": {
                "space": "joint_position",
                "dims": [
                    {"name": f"j{i}", "kind": "absolute", "low": -3.0, "high": 3.0, "max_step_change": 0.1}
                    for i in range(DOF)
                ],
            },
            "cameras": [
                {"name": name, "topic": f"/cam/{name}", "width": WIDTH, "height": HEIGHT}
                for name in ("scene", "wrist")
            ],
            "topics": {
                "joint_states": "/joint_states",
                "command": "/arm_controller/commands",
                "instruction": "/instruction",
            },
            "driver": {"kind": "ros2_control", "controller": "arm_controller"},
            "tasks": ["benchmark"],
        },
        source="bench",
    )


def camera_frames(n: int, seed: int) -> np.ndarray:
    """n camera-like frames: smooth scene, moving box, per-frame sensor noise (sigma ~2 levels)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    base = np.stack(
        [(xx * 0.3 + yy * 0.1) % 255, (yy * 0.35) % 255, 128 + 60 * np.sin(xx / 37.0) * np.cos(yy / 23.0)], -1
    )
    frames = np.empty((n, HEIGHT, WIDTH, 3), dtype=np.uint8)
    for i in range(n):
        img = base.copy()
        x = 50 + (7 * i) % (WIDTH - 150)
        img[200:300, x : x + 100] = (200, 60, 40)
        img += rng.normal(0.0, 2.0, img.shape)
        frames[i] = np.clip(img, 0, 255).astype(np.uint8)
    return frames


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="scratch directory on the disk to measure (deleted after)"
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="recorded seconds to write (default 60)")
    parser.add_argument(
        "--episode-seconds", type=float, default=20.0, help="length of each episode (default 20)"
    )
    parser.add_argument(
        "--no-fsync", action="store_true", help="skip the per-episode fsync (default: durable commits)"
    )
    args = parser.parse_args()

    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    zarr.config.set({"threading.max_workers": 1, "async.concurrency": 1})
    config = bench_config()
    pool = {cam: camera_frames(45, seed) for seed, cam in enumerate(("scene", "wrist"))}
    steps_total = int(args.seconds * FPS)
    steps_per_episode = int(args.episode_seconds * FPS)
    raw_bytes = steps_total * 2 * HEIGHT * WIDTH * 3 + steps_total * (2 * DOF * 4 + 5 * 8)
    if args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)

    print(f"machine: {describe()}")
    print(
        f"workload: {steps_total} steps ({args.seconds:.0f} s at {FPS} Hz), 2 x {HEIGHT}x{WIDTH} RGB + "
        f"{DOF}-DoF state/action, "
        f"episodes of {steps_per_episode} steps, fsync per episode: {not args.no_fsync}, 1 core"
    )

    # --- episode store
    store = EpisodeStore.open(args.out / "store.zarr", mode="a", durable=not args.no_fsync)
    state = np.zeros(DOF)
    cpu0, t0 = time.process_time(), time.perf_counter()
    step = 0
    while step < steps_total:
        writer = store.begin_episode(config, "teleop", "benchmark")
        for _ in range(min(steps_per_episode, steps_total - step)):
            now = time.time()
            images = {cam: pool[cam][step % 45] for cam in pool}
            writer.append(images, state + step * 1e-3, state - step * 1e-3, now, {c: now for c in pool}, now)
            step += 1
        writer.commit()
    store_s, store_cpu = time.perf_counter() - t0, time.process_time() - cpu0
    on_disk = sum(f.stat().st_size for f in (args.out / "store.zarr").rglob("*") if f.is_file())
    store.close()

    # --- raw reference: the same bytes, one file per camera per episode, same fsync policy
    raw_dir = args.out / "raw"
    raw_dir.mkdir()
    cpu0, t0 = time.process_time(), time.perf_counter()
    step = 0
    episode = 0
    while step < steps_total:
        n = min(steps_per_episode, steps_total - step)
        paths = []
        for cam in pool:
            path = raw_dir / f"{episode}_{cam}.bin"
            with open(path, "wb") as f:
                for i in range(n):
                    f.write(pool[cam][(step + i) % 45].tobytes())
            paths.append(path)
        lowdim = raw_dir / f"{episode}_lowdim.bin"
        with open(lowdim, "wb") as f:
            f.write(np.zeros((n, 2 * DOF), np.float32).tobytes() + np.zeros((n, 5), np.float64).tobytes())
        paths.append(lowdim)
        if not args.no_fsync:
            for path in paths:
                fd = os.open(path, os.O_RDONLY)
                os.fsync(fd)
                os.close(fd)
        step += n
        episode += 1
    raw_s, raw_cpu = time.perf_counter() - t0, time.process_time() - cpu0
    shutil.rmtree(args.out)

    mb = raw_bytes / 1e6
    print(
        f"episode store: {store_s:6.1f} s wall, {store_cpu:6.1f} s CPU | {2 * steps_total / store_s:7.1f} "
        "frames/s | "
        f"{mb / store_s:7.1f} MB/s of input | {args.seconds / store_s:5.2f}x real time | "
        f"on disk {on_disk / 1e6:.0f} MB (compression {raw_bytes / on_disk:.2f}x)"
    )
    print(f"raw writes:    {raw_s:6.1f} s wall, {raw_cpu:6.1f} s CPU | {mb / raw_s:7.1f} MB/s")
    print(
        f"store / raw write rate: {raw_s / store_s:.0%} wall-clock   (targets: >= 3x real time, >= 50% of "
        "raw)"
    )
    print(
        f"load average during the run: {os.getloadavg()[0]:.2f} (other processes share the pinned core; "
        f"CPU-time real-time factor {args.seconds / store_cpu:.2f}x)"
    )


if __name__ == "__main__":
    main()
