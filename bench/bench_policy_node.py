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

Baseline in the same run (issue 14, item 4): a bare rclpy echo, run by default at the same time
in a process of its own (`--echo concurrent`), so the node and the echo see the same frames, the
same load and the same scheduler. It subscribes to the same camera topic (the same 480x640 rgb8
Image messages from the same arm process) with the QoS the policy node picks
(`camera_subscription_qos`, best effort keep-last 5 here), under the same Fast DDS profile
(`use_large_frames_profile`: 64 MB shared-memory segments + UDP), and publishes, from inside the
image callback, one Float64MultiArray of the node's size and layout (6 values, one dim label) on
its own topic with the node's command QoS (STATE_QOS, reliable depth 10), the frame's code read
from the first byte of the image. It does nothing else: no numpy copy of the frame, no lock, no
worker thread, no safety filter, single-threaded executor. The arm process measures it exactly
as it measures the node: its wall clock at publish and at receipt.

Why an echo per image and not on a 30 Hz timer: the node's overhead above already takes out the
wait for the control tick, so it is the time from the frame's publish to the command's receipt
had the tick come at the frame's arrival; an echo that answers in the image callback measures
exactly that path with nothing of ours in it (frame transport + rclpy callback + command
transport). A timer echo would add a 0-33 ms tick wait that would have to be measured and taken
out again, which is what the node's figure already does.

Reported next to each other over the same window: p50 / p99 / max of the node's overhead and of
the echo's image -> command latency, node p99 / echo p99 (target <= 2) and node p50 - echo p50
(target <= 1 ms). `--echo after` runs the echo alone after the node's run (a fresh arm process,
nothing else of ours running) instead, to see what the concurrent echo costs the node; `--echo
off` runs the node alone as before.

    .venv/bin/python bench/bench_policy_node.py --seconds 60 [--model-ms 0] [--echo concurrent|after|off]
        [--threads N]
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
from typing import ClassVar

import numpy as np
import yaml
from bench_store_write import camera_frames
from machine import describe

FPS = 30
CODES = 200
ECHO_TOPIC = "/bench_echo/commands"


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
            "dims": [
                {"name": f"j{i}", "kind": "absolute", "low": -3.0, "high": 3.0, "max_step_change": 10.0}
                for i in range(6)
            ],
        },
        "cameras": [{"name": "scene", "topic": "/bench/scene", "width": 640, "height": 480}],
        "topics": {
            "joint_states": "/bench/joint_states",
            "command": "/bench_controller/commands",
            "instruction": "/bench/instruction",
        },
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

    calls: ClassVar[list[tuple[float, int, float]]] = []
    """(perf_counter at the call, frame code, frame capture stamp) of every inference."""

    def predict_chunk(self, obs) -> np.ndarray:
        code = int(obs.images["scene"][0, 0, 0])
        EchoPolicy.calls.append((time.perf_counter(), code, obs.stamp))
        if self.model_s:
            time.sleep(self.model_s)
        return np.full((1, self.dim), code / CODES)


def arm_process(
    config_path: str,
    seconds: float,
    ready,
    go,
    results,
    command_topics: dict[str, str] | None = None,
    camera_subscribers: int = 1,
) -> None:
    """Publish the camera and joint state at 30 Hz; record (wall time, code) of every command on each
    of `command_topics` (label -> topic; default: the config's command topic, labelled "node")."""
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
    command_topics = command_topics or {"node": config.topics.command}
    use_large_frames_profile()  # as every node of ours does (ros2 run, launch files, wmpo CLI)
    rclpy.init()
    node = rclpy.create_node("bench_arm")
    camera = node.create_publisher(Image, "/bench/scene", camera_publisher_qos(config.cameras[0]))
    state_pub = node.create_publisher(JointState, config.topics.joint_states, STATE_QOS)
    codec = CommandCodec(config)
    received: dict[str, list[tuple[float, int]]] = {label: [] for label in command_topics}
    subscriptions = []
    for label, topic in command_topics.items():
        log = received[label]
        subscriptions.append(
            node.create_subscription(
                codec.msg_type,
                topic,
                lambda m, log=log: log.append((time.time(), round(codec.decode(m)[0] * CODES))),
                STATE_QOS,
            )
        )
    executor = rclpy.executors.SingleThreadedExecutor()
    executor.add_node(node)
    threading.Thread(target=executor.spin, daemon=True).start()
    frames = camera_frames(45, 0)
    needs_state = "node" in command_topics
    while (
        camera.get_subscription_count() < camera_subscribers
        or (needs_state and state_pub.get_subscription_count() == 0)
        or any(s.get_publisher_count() == 0 for s in subscriptions)
    ):
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
    results.put({"published": published, "received": {label: list(log) for label, log in received.items()}})
    executor.shutdown()
    rclpy.shutdown()


def echo_process(config_path: str, ready, stop, results) -> None:
    """The bare rclpy echo (see the module docstring): image in -> command out, in the image callback."""
    import rclpy
    from sensor_msgs.msg import Image
    from std_msgs.msg import Float64MultiArray, MultiArrayDimension
    from wmpo_core.robot_config import load_robot_config
    from wmpo_ros.dds import use_large_frames_profile
    from wmpo_ros.messages import STATE_QOS, CommandCodec, camera_subscription_qos

    config = load_robot_config(config_path)
    if CommandCodec(config).msg_type is not Float64MultiArray:
        raise SystemExit("the echo mirrors a Float64MultiArray command; the bench config must use one")
    dim = config.action.dim
    use_large_frames_profile()  # the same Fast DDS profile as the node and the arm
    rclpy.init()
    node = rclpy.create_node("bench_echo")
    pub = node.create_publisher(Float64MultiArray, ECHO_TOPIC, STATE_QOS)
    callbacks: list[tuple[float, int]] = []

    def on_image(msg: Image) -> None:
        now = time.time()
        code = msg.data[0]  # top-left pixel, first channel (rgb8)
        out = Float64MultiArray()
        out.layout.dim = [MultiArrayDimension(label="action", size=dim, stride=dim)]
        out.data = [code / CODES] * dim
        pub.publish(out)
        callbacks.append((now, int(code)))

    camera = config.cameras[0]
    node.create_subscription(Image, camera.topic, on_image, camera_subscription_qos(node, camera))
    executor = rclpy.executors.SingleThreadedExecutor()
    executor.add_node(node)
    threading.Thread(target=executor.spin, daemon=True).start()
    while pub.get_subscription_count() == 0:
        time.sleep(0.05)
    ready.set()
    stop.wait()
    results.put({"callbacks": list(callbacks)})
    executor.shutdown()
    rclpy.shutdown()


def match_frames(
    published: np.ndarray, events: list[tuple[float, int]], since: float
) -> tuple[np.ndarray, np.ndarray]:
    """(event time - publish time of its frame, frame index) for each (wall time, code) event whose frame
    was published at `since` or later: its frame is the newest one with that code published before it."""
    if not events:
        return np.zeros(0), np.zeros(0, dtype=int)
    codes = np.arange(published.size) % CODES
    delays, frames = [], []
    for wall, code in events:
        idx = np.nonzero((codes == code) & (published <= wall))[0]
        if idx.size == 0:
            continue
        k = int(idx[-1])
        if published[k] >= since and wall - published[k] < 1.0:
            delays.append(wall - published[k])
            frames.append(k)
    return np.array(delays), np.array(frames, dtype=int)


def start_echo(ctx, config_path: Path):
    ready, stop, results = ctx.Event(), ctx.Event(), ctx.Queue()
    proc = ctx.Process(target=echo_process, args=(str(config_path), ready, stop, results))
    proc.start()
    return proc, ready, stop, results


def finish_echo(echo) -> list[tuple[float, int]]:
    proc, _, stop, results = echo
    stop.set()
    callbacks = results.get(timeout=60)["callbacks"]
    proc.join()
    return callbacks


def run_echo_alone(
    ctx, config_path: Path, seconds: float
) -> tuple[np.ndarray, list[tuple[float, int]], list[tuple[float, int]], float]:
    """`--echo after`: a fresh arm process and the echo, nothing else of ours running."""
    ready, go, results = ctx.Event(), ctx.Event(), ctx.Queue()
    arm = ctx.Process(
        target=arm_process,
        args=(str(config_path), seconds + 1.0, ready, go, results, {"echo": ECHO_TOPIC}, 1),
    )
    arm.start()
    echo = start_echo(ctx, config_path)
    if not ready.wait(60) or not echo[1].wait(60):
        raise SystemExit("the arm or echo process did not come up")
    go.set()
    time.sleep(1.0)  # the same warm-up the node gets
    since = time.time()
    arm_result = results.get(timeout=seconds + 60)
    callbacks = finish_echo(echo)
    arm.join()
    return np.array(arm_result["published"]), arm_result["received"]["echo"], callbacks, since


def stats(values_ms: np.ndarray) -> str:
    if values_ms.size == 0:
        return "no samples"
    p50, p99 = np.percentile(values_ms, 50), np.percentile(values_ms, 99)
    return f"p50 {p50:.2f} ms, p99 {p99:.2f} ms, max {values_ms.max():.2f} ms (n={values_ms.size})"


def loadavg() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f} (1 / 5 / 15 min)"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="measurement length (default 60)")
    parser.add_argument(
        "--model-ms", type=float, default=0.0, help="simulated model time per inference (default 0)"
    )
    parser.add_argument(
        "--echo",
        choices=("concurrent", "after", "off"),
        default="concurrent",
        help="the bare rclpy echo baseline: at the same time as the node (default), alone after it, or not "
        "at all",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="executor threads of the node; 1 = single-threaded (default: policy_node.EXECUTOR_THREADS, "
        "what `ros2 run` and the launch files use)",
    )
    args = parser.parse_args()
    print(f"machine: {describe()}")
    print(f"load average at start: {loadavg()}", flush=True)
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("ROS_DOMAIN_ID", str(100 + os.getpid() % 100))
    EchoPolicy.model_s = args.model_ms / 1000.0
    workdir = Path(tempfile.mkdtemp(prefix="bench_policy_"))
    config_path = bench_config(workdir)

    import rclpy
    from wmpo_core.policy import register_scheme
    from wmpo_core.robot_config import load_robot_config
    from wmpo_ros.dds import use_large_frames_profile
    from wmpo_ros.node_utils import node_executor, parameter_overrides
    from wmpo_ros.policy_node import EXECUTOR_THREADS, PolicyNode

    register_scheme("bench_echo", lambda rest, config: EchoPolicy(config))
    ctx = mp.get_context("spawn")
    concurrent = args.echo == "concurrent"
    ready, go, results = ctx.Event(), ctx.Event(), ctx.Queue()
    topics = {"node": load_robot_config(config_path).topics.command} | (
        {"echo": ECHO_TOPIC} if concurrent else {}
    )
    arm = ctx.Process(
        target=arm_process,
        args=(str(config_path), args.seconds, ready, go, results, topics, 2 if concurrent else 1),
    )
    arm.start()
    echo = start_echo(ctx, config_path) if concurrent else None
    use_large_frames_profile()
    rclpy.init()
    node = PolicyNode(
        parameter_overrides=parameter_overrides(
            {"robot": str(config_path), "policy": "bench_echo:", "refill_threshold": 0, "autostart": False}
        )
    )
    threads = EXECUTOR_THREADS if args.threads is None else args.threads
    executor = node_executor(threads)
    executor.add_node(node)
    threading.Thread(target=executor.spin, daemon=True).start()
    if not ready.wait(60) or (echo is not None and not echo[1].wait(60)):
        raise SystemExit("the arm or echo process did not come up")
    wall_minus_perf = time.time() - time.perf_counter()
    go.set()
    time.sleep(1.0)  # first frames in
    node.control.timings = deque(maxlen=1_000_000)  # keep every inference, not just the diagnostics window
    enabled_wall = time.time()
    node.enable(True)
    arm_result = results.get(timeout=args.seconds + 60)
    node.enable(False)
    timings = [t for t in node.control.timings if t.published is not None]
    executor.shutdown()
    node.destroy_node()
    rclpy.shutdown()
    arm.join()
    echo_callbacks = finish_echo(echo) if echo is not None else []

    published = np.array(arm_result["published"])
    received = arm_result["received"]["node"]
    recv_wall = np.array([r[0] for r in received])
    recv_code = np.array([r[1] for r in received])
    call_time = np.array([c[0] for c in EchoPolicy.calls])
    overhead, node_ms, transport = [], [], []
    for timing in timings:  # inferences that served a tick; holds (watchdog) are not inferences
        _, code, frame_pub = EchoPolicy.calls[int(np.searchsorted(call_time, timing.model_start))]
        published_wall = timing.published + wall_minus_perf
        # the command it produced: the first one received with its code after it was published
        match = np.nonzero(
            (recv_code == code) & (recv_wall >= published_wall - 2e-3) & (recv_wall < published_wall + 1.0)
        )[0]
        if match.size == 0:
            continue
        tick_wait = timing.requested - timing.frame_arrival
        overhead.append((recv_wall[match[0]] - frame_pub - timing.model_s - tick_wait) * 1e3)
        node_ms.append(timing.overhead_s * 1e3)
        transport.append((timing.frame_arrival + wall_minus_perf - frame_pub) * 1e3)
    intervals = np.diff(recv_wall) * 1e3
    jitter = np.abs(intervals - 1000.0 / FPS)
    overhead_ms = np.array(overhead)

    # the echo, over the node's window (frames published once the node was enabled)
    if concurrent:
        echo_published, echo_received, echo_since = published, arm_result["received"]["echo"], enabled_wall
    elif args.echo == "after":
        print(f"load average after the node's run, before the echo's: {loadavg()}", flush=True)
        echo_published, echo_received, echo_callbacks, echo_since = run_echo_alone(
            ctx, config_path, args.seconds
        )
    echo_ms = echo_frames = echo_transport_ms = None
    if args.echo != "off":
        latency, echo_frames = match_frames(echo_published, echo_received, echo_since)
        echo_ms = latency * 1e3
        echo_transport_ms = match_frames(echo_published, echo_callbacks, echo_since)[0] * 1e3
        echo_window = int(np.count_nonzero(echo_published >= echo_since))

    print(f"load average at end: {loadavg()}")
    print(
        f"workload: 1 x 480x640 rgb8 camera + joint state at {FPS} Hz for {args.seconds:.0f} s; policy node "
        f"at {FPS} Hz on {threads} executor thread(s), "
        f"chunk 1 requested every tick, model time {args.model_ms:g} ms; bare rclpy echo: {args.echo}"
    )
    print(
        f"commands received: {len(received)} for {published.size} frames; late ticks served: "
        f"{node.counters['late_ticks']}, holds: {node.counters['holds']}"
    )
    print(f"overhead (image in -> action out - model - tick wait): {stats(overhead_ms)}")
    print(f"  of which frame transport (publish -> node callback): {stats(np.array(transport))}")
    print(f"  of which in the node (tick -> publish - model): {stats(np.array(node_ms))}")
    print(
        f"command jitter at {FPS} Hz (|interval - {1000 / FPS:.1f} ms|): {stats(jitter)}; interval std "
        f"{intervals.std():.2f} ms"
    )
    if echo_ms is None:
        return
    print(f"bare rclpy echo (image published -> echo command received): {stats(echo_ms)}")
    print(f"  of which frame transport (publish -> echo callback): {stats(echo_transport_ms)}")
    print(
        f"  echo commands matched: {echo_ms.size} for {echo_window} frames in the window "
        f"({np.unique(echo_frames).size} distinct)"
    )
    if overhead_ms.size == 0 or echo_ms.size == 0:
        print("no samples to compare")
        return
    rows = [("policy node overhead", overhead_ms), ("bare rclpy echo", echo_ms)]
    print()
    print(f"{'ms':<22}{'p50':>8}{'p99':>8}{'max':>8}{'n':>7}")
    for label, values in rows:
        print(
            f"{label:<22}{np.percentile(values, 50):>8.2f}{np.percentile(values, 99):>8.2f}"
            f"{values.max():>8.2f}{values.size:>7}"
        )
    ratio = np.percentile(overhead_ms, 99) / np.percentile(echo_ms, 99)
    added = np.percentile(overhead_ms, 50) - np.percentile(echo_ms, 50)
    print(f"node p99 / echo p99: {ratio:.2f} (target <= 2): {'holds' if ratio <= 2.0 else 'DOES NOT HOLD'}")
    print(
        f"node p50 - echo p50: {added:.2f} ms (target <= 1 ms): "
        f"{'holds' if added <= 1.0 else 'DOES NOT HOLD'}"
    )


if __name__ == "__main__":
    main()
