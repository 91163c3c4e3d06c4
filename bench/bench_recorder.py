"""Recorder node under a real camera load: 2 x 480x640 RGB at 30 Hz for minutes, over DDS.

A separate "arm" process publishes two cameras (camera-like frames: textured scene, moving box,
sensor noise), the joint state and a command at 30 Hz, stamped with the wall clock; this process
runs only the recorder node (as `ros2 run wmpo_ros recorder` would) recording one long episode
into a durable episode store. Reported: frames published vs frames in the store (dropped, target
0), the recorder's own cadence report, its CPU time (user + system, % of one core) and peak RSS.

    .venv/bin/python bench/bench_recorder.py --out /tmp/bench_recorder --seconds 200
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import yaml
from bench_store_write import bench_config, camera_frames
from machine import describe

FPS = 30


def arm_process(config_path: str, seconds: float, ready: mp.Event, go: mp.Event, results: mp.Queue) -> None:
    """Publishes cameras, joint state and command at 30 Hz on the wall clock."""
    import rclpy
    from sensor_msgs.msg import Image, JointState
    from wmpo_core.robot_config import load_robot_config
    from wmpo_ros.dds import use_large_frames_profile
    from wmpo_ros.image_conversion import image_to_msg
    from wmpo_ros.messages import (
        STATE_QOS,
        CommandCodec,
        camera_publisher_qos,
        joint_state_msg,
        nanoseconds_to_stamp,
    )

    config = load_robot_config(config_path)
    use_large_frames_profile()  # as every node of ours does (ros2 run, launch files, wmpo CLI)
    rclpy.init()
    node = rclpy.create_node("bench_arm")
    cameras = {c.name: node.create_publisher(Image, c.topic, camera_publisher_qos(c)) for c in config.cameras}
    state_pub = node.create_publisher(JointState, config.topics.joint_states, STATE_QOS)
    codec = CommandCodec(config)
    command_pub = node.create_publisher(codec.msg_type, config.topics.command, STATE_QOS)
    pool = {cam: camera_frames(45, seed) for seed, cam in enumerate(cameras)}
    while any(p.get_subscription_count() == 0 for p in (*cameras.values(), state_pub, command_pub)):
        time.sleep(0.05)
    ready.set()
    go.wait()
    period = 1.0 / FPS
    published = 0
    late_ticks = 0
    start = time.monotonic()
    next_tick = start
    dof = len(config.joints)
    while time.monotonic() - start < seconds:
        stamp = nanoseconds_to_stamp(time.time_ns())
        for cam, pub in cameras.items():
            pub.publish(image_to_msg(pool[cam][published % 45], stamp, cam))
        state_pub.publish(joint_state_msg(config, np.full(dof, 0.001 * (published % 100)), stamp))
        command_pub.publish(codec.encode(np.full(dof, 0.001 * (published % 100))))
        published += 1
        next_tick += period
        delay = next_tick - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        else:
            late_ticks += 1
    time.sleep(1.0)  # let the last messages arrive
    results.put({"published": published, "late_ticks": late_ticks, "seconds": time.monotonic() - start})
    node.destroy_node()
    rclpy.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True, help="scratch directory (deleted first)")
    parser.add_argument("--seconds", type=float, default=200.0, help="recording length (default 200)")
    args = parser.parse_args()
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("ROS_DOMAIN_ID", str(100 + os.getpid() % 100))
    if args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)
    config_data = bench_config().model_dump(mode="json")
    config_data["episode_time_limit_s"] = args.seconds + 60
    config_path = args.out / f"{config_data['name']}.yaml"
    config_path.write_text(yaml.safe_dump(config_data))

    import rclpy
    from rclpy.executors import MultiThreadedExecutor
    from wmpo_core.episode_store import EpisodeStore
    from wmpo_ros.dds import use_large_frames_profile
    from wmpo_ros.node_utils import parameter_overrides
    from wmpo_ros.recorder_node import RecorderNode

    ctx = mp.get_context("spawn")
    ready, go, results = ctx.Event(), ctx.Event(), ctx.Queue()
    arm = ctx.Process(target=arm_process, args=(str(config_path), args.seconds, ready, go, results))
    arm.start()

    use_large_frames_profile()
    rclpy.init()
    recorder = RecorderNode(
        parameter_overrides=parameter_overrides(
            {"robot": str(config_path), "store": str(args.out / "store"), "source": "teleop"}
        )
    )
    executor = MultiThreadedExecutor(num_threads=4)
    executor.add_node(recorder)
    threading.Thread(target=executor.spin, daemon=True).start()
    if not ready.wait(60):
        raise SystemExit("the arm process did not come up")
    time.sleep(1.0)
    recorder.start()
    usage0, wall0 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
    loads = []
    go.set()
    arm_result = results.get(timeout=args.seconds + 120)
    loads.append(os.getloadavg()[0])
    meta = recorder.stop(timeout=300)
    wall = time.monotonic() - wall0
    usage1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (usage1.ru_utime - usage0.ru_utime) + (usage1.ru_stime - usage0.ru_stime)
    arm.join()
    executor.shutdown()
    recorder.destroy_node()
    rclpy.shutdown()

    store = EpisodeStore.open(args.out / "store")
    episode = store.episode(meta["episode_id"])
    cadence = meta["extra"]["cadence"]
    on_disk = sum(f.stat().st_size for f in (args.out / "store").rglob("*") if f.is_file())
    print(f"machine: {describe()}")
    print(f"load average (1 min) at the end: {loads[-1]:.1f}")
    print(
        f"workload: 2 x 480x640 rgb8 + joint state + command at {FPS} Hz for {arm_result['seconds']:.0f} s "
        f"({arm_result['published']} ticks, {arm_result['late_ticks']} late publisher ticks), one episode, "
        "durable store"
    )
    print(f"steps recorded: {meta['num_steps']} of {arm_result['published']} commands")
    for cam in ("scene", "wrist"):
        recorded = len(np.unique(episode.image_time(cam)))
        print(
            f"camera {cam}: {arm_result['published']} published, {recorded} distinct frames stored, "
            f"{arm_result['published'] - recorded} dropped; recorder report: "
            f"{cadence['dropped_frames'][cam]} dropped, "
            f"{cadence['late_frames'][cam]} late, {cadence['frames_received'][cam]} received"
        )
    print(
        f"cadence: {cadence['effective_hz']:.2f} Hz effective, {cadence['unsettled_steps']} unsettled steps, "
        f"write queue max {cadence['max_write_queue']}"
    )
    print(
        f"recorder CPU: {cpu:.1f} s over {wall:.1f} s = {100 * cpu / wall:.0f}% of one core; peak RSS "
        f"{usage1.ru_maxrss / 1024:.0f} MiB"
    )
    print(f"store on disk: {on_disk / 1e9:.2f} GB ({on_disk / 1e6 / wall:.1f} MB/s)")
    shutil.rmtree(args.out)


if __name__ == "__main__":
    main()
