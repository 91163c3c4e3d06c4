"""Policy-node overhead (image in -> action out, minus model time) and command jitter at 30 Hz.

An "arm" process publishes a 480x640 RGB camera and the joint state at 30 Hz (wall clock) and
listens to the command topic; this process runs only the policy node (wall time, 30 Hz control,
chunks of 1 requested every tick, i.e. the worst case for overhead) with an echo policy that
writes the frame's code into the action, so each command is traced back to the frame it answered.

Reported, p50 / p99 / max over all commands:
- overhead: image published -> command received, minus model time, minus the wait for the next
  control tick (a frame waits up to one period for the tick; that is the control rate, not overhead)
- node: control tick -> command published, minus model time (inside the node only)
- jitter: |interval between received commands - 33.3 ms|

    .venv/bin/python bench/bench_policy_node.py --seconds 60 [--model-ms 0]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import tempfile
import threading
import time
from collections import deque
from pathlib import Path

import numpy as np
import yaml

from bench_store_write import camera_frames, machine

FPS = 30
CODES = 200


def bench_config(model_dir: Path) -> Path:
    joints = [{"name": f"j{i}", "unit": "rad", "lower": -3.0, "upper": 3.0} for i in range(6)]
    data = {
        "name": "bench_policy_arm",
        "robot_type": "bench",
        "control_rate_hz": FPS,
        "episode_time_limit_s": 3600,
        "joints": joints,
        "action": {
            "space": "joint_position",
            # no rate limit in the way: the echo code must pass through unchanged
            "dims": [{"name": f"j{i}", "kind": "absolute", "low": -3.0, "high": 3.0, "max_step_change": 10.0} for i in range(6)],
        },
        "cameras": [{"name": "scene", "topic": "/bench/scene", "width": 640, "height": 480}],
        "topics": {"joint_states": "/bench/joint_states", "command": "/bench_controller/commands", "instruction": "/bench/instruction"},
        "driver": {"kind": "ros2_control", "controller": "bench_controller"},
        "tasks": ["benchmark"],
    }
    path = model_dir / "bench_policy_arm.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


class EchoPolicy:
    """Returns the frame's code (top-left pixel / CODES) in every dim, after `model_ms` of 'thinking'."""

    chunk_size = 1
    version = "echo-v1"
    model_s = 0.0

    def __init__(self, config):
        self.dim = config.action.dim

    def reset(self) -> None:
        pass

    calls: list[tuple[float, int, float]] = []
    """(perf_counter at the call, frame code, frame capture stamp) of every inference."""

    def predict_chunk(self, obs) -> np.ndarray:
        code = int(obs.images["scene"][0, 0, 0])
        EchoPolicy.calls.append((time.perf_counter(), code, obs.stamp))
        if self.model_s:
            time.sleep(self.model_s)
        return np.full((1, self.dim), code / CODES)


def arm_process(config_path: str, seconds: float, ready, go, results) -> None:
    import rclpy
    from sensor_msgs.msg import Image, JointState

    from wmpo_core.robot_config import load_robot_config
    from wmpo_ros.dds import use_large_frames_profile
    from wmpo_ros.image_conversion import image_to_msg
    from wmpo_ros.messages import STATE_QOS, CommandCodec, camera_publisher_qos, joint_state_msg, nanoseconds_to_stamp

    config = load_robot_config(config_path)
    use_large_frames_profile()  # as every node of ours does (ros2 run, launch files, wmpo CLI)
    rclpy.init()
    node = rclpy.create_node("bench_arm")
    camera = node.create_publisher(Image, "/bench/scene", camera_publisher_qos(config.cameras[0]))
    state_pub = node.create_publisher(JointState, config.topics.joint_states, STATE_QOS)
    codec = CommandCodec(config)
    received: list[tuple[float, int]] = []
    node.create_subscription(codec.msg_type, config.topics.command, lambda m: received.append((time.time(), round(codec.decode(m)[0] * CODES))), STATE_QOS)
    executor = rclpy.executors.SingleThreadedExecutor()
    executor.add_node(node)
    threading.Thread(target=executor.spin, daemon=True).start()
    frames = camera_frames(45, 0)
    while camera.get_subscription_count() == 0 or state_pub.get_subscription_count() == 0:
        time.sleep(0.05)
    ready.set()
    go.wait()
    published: list[float] = []
    start = next_tick = time.monotonic()
    k = 0
    while time.monotonic() - start < seconds:
        frame = frames[k % 45].copy()
        frame[0, 0, 0] = k % CODES
        now_ns = time.time_ns()
        msg = image_to_msg(frame, nanoseconds_to_stamp(now_ns), "scene")  # header stamp = publish time
        published.append(now_ns * 1e-9)
        camera.publish(msg)
        state_pub.publish(joint_state_msg(config, np.zeros(6), msg.header.stamp))
        k += 1
        next_tick += 1.0 / FPS
        time.sleep(max(0.0, next_tick - time.monotonic()))
    time.sleep(1.0)
    results.put({"published": published, "received": list(received)})
    executor.shutdown()
    rclpy.shutdown()


def stats(values_ms: np.ndarray) -> str:
    return f"p50 {np.percentile(values_ms, 50):.2f} ms, p99 {np.percentile(values_ms, 99):.2f} ms, max {values_ms.max():.2f} ms (n={values_ms.size})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="measurement length (default 60)")
    parser.add_argument("--model-ms", type=float, default=0.0, help="simulated model time per inference (default 0)")
    args = parser.parse_args()
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("ROS_DOMAIN_ID", str(100 + os.getpid() % 100))
    EchoPolicy.model_s = args.model_ms / 1000.0
    workdir = Path(tempfile.mkdtemp(prefix="bench_policy_"))
    config_path = bench_config(workdir)

    import rclpy
    from rclpy.executors import MultiThreadedExecutor

    from wmpo_core.policy import register_scheme
    from wmpo_ros.dds import use_large_frames_profile
    from wmpo_ros.node_utils import parameter_overrides
    from wmpo_ros.policy_node import PolicyNode

    register_scheme("bench_echo", lambda rest, config: EchoPolicy(config))
    ctx = mp.get_context("spawn")
    ready, go, results = ctx.Event(), ctx.Event(), ctx.Queue()
    arm = ctx.Process(target=arm_process, args=(str(config_path), args.seconds, ready, go, results))
    arm.start()
    use_large_frames_profile()
    rclpy.init()
    node = PolicyNode(parameter_overrides=parameter_overrides({"robot": str(config_path), "policy": "bench_echo:", "refill_threshold": 0, "autostart": False}))
    executor = MultiThreadedExecutor(num_threads=4)
    executor.add_node(node)
    threading.Thread(target=executor.spin, daemon=True).start()
    if not ready.wait(60):
        raise SystemExit("the arm process did not come up")
    wall_minus_perf = time.time() - time.perf_counter()
    go.set()
    time.sleep(1.0)  # first frames in
    node.timings = deque(maxlen=1_000_000)  # keep every inference, not just the diagnostics window
    node.enable(True)
    arm_result = results.get(timeout=args.seconds + 60)
    node.enable(False)
    timings = [t for t in node.timings if t.published is not None]
    executor.shutdown()
    node.destroy_node()
    rclpy.shutdown()
    arm.join()

    published = np.array(arm_result["published"])
    received = arm_result["received"]
    recv_wall = np.array([r[0] for r in received])
    recv_code = np.array([r[1] for r in received])
    call_time = np.array([c[0] for c in EchoPolicy.calls])
    overhead, node_ms, transport = [], [], []
    for timing in timings:  # inferences that served a tick; holds (watchdog) are not inferences
        _, code, frame_pub = EchoPolicy.calls[int(np.searchsorted(call_time, timing.model_start))]
        published_wall = timing.published + wall_minus_perf
        # the command it produced: the first one received with its code after it was published
        match = np.nonzero((recv_code == code) & (recv_wall >= published_wall - 2e-3) & (recv_wall < published_wall + 1.0))[0]
        if match.size == 0:
            continue
        tick_wait = timing.requested - timing.frame_arrival
        overhead.append((recv_wall[match[0]] - frame_pub - timing.model_s - tick_wait) * 1e3)
        node_ms.append(timing.overhead_s * 1e3)
        transport.append((timing.frame_arrival + wall_minus_perf - frame_pub) * 1e3)
    intervals = np.diff(recv_wall) * 1e3
    jitter = np.abs(intervals - 1000.0 / FPS)
    print(f"machine: {machine()}")
    print(f"load average (1 min): {os.getloadavg()[0]:.1f}")
    print(f"workload: 1 x 480x640 rgb8 camera + joint state at {FPS} Hz for {args.seconds:.0f} s; policy node at {FPS} Hz, "
          f"chunk 1 requested every tick, model time {args.model_ms:g} ms")
    print(f"commands received: {len(received)} for {published.size} frames; late ticks served: {node.counters['late_ticks']}, holds: {node.counters['holds']}")
    print(f"overhead (image in -> action out - model - tick wait): {stats(np.array(overhead))}")
    print(f"  of which frame transport (publish -> node callback): {stats(np.array(transport))}")
    print(f"  of which in the node (tick -> publish - model): {stats(np.array(node_ms))}")
    print(f"command jitter at {FPS} Hz (|interval - {1000 / FPS:.1f} ms|): {stats(jitter)}; interval std {intervals.std():.2f} ms")


if __name__ == "__main__":
    main()
