"""`wmpo robot | teleop | deploy`: the launch files' node graph, in one process.

`launch_ros` is not installable from PyPI, so a pip-installed stack brings the same graph up here:
the nodes of `wmpo_ros.graph.bringup_graph` (same config, same parameters as launch/*.launch.py)
on one MultiThreadedExecutor, talking over real ROS 2 topics. teleop and deploy then run an
episode loop through the nodes' own services: reset the scene (sim) or wait for the operator
(real arm) -> start recording -> enable the teleop device / policy -> the recorder ends the
episode on success or at the time limit and commits it -> next.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from typing import Any

from wmpo_ros.params import POLICY, RECORDER, SIM_ARM, TELEOP

DEFAULT_STORES = {"teleop": "data/demos", "deploy": "data/rollouts"}
STEP_STALL_S = 5.0
"""Wall seconds per step before an episode counts as stalled (rendering + inference on a loaded CPU)."""


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("--robot", default="so101_sim", help="robot config name (robot_configs/<name>.yaml) or YAML path (default: so101_sim)")
    parser.add_argument("--seed", type=int, default=SIM_ARM["seed"].default, help="simulation only: seed of the first episode; episode k uses seed+k (default: %(default)s)")
    parser.add_argument(
        "--real-time-factor",
        type=float,
        default=SIM_ARM["real_time_factor"].default,
        help="simulation only: cap on simulated time per wall second; 0 = as fast as the CPU allows (default: %(default)s)",
    )
    if command == "robot":
        return
    parser.add_argument("--episodes", type=int, default=10, help="number of episodes to record (default: %(default)s)")
    parser.add_argument("--store", default=DEFAULT_STORES[command], help="episode store directory, created if missing (default: %(default)s)")
    parser.add_argument("--task", default=None, help="task instruction stamped into episodes and given to the policy (default: the config's first task)")
    parser.add_argument("--max-steps", type=int, default=RECORDER["max_steps"].default, help="steps per episode; 0 = the config's time limit (default: %(default)s)")
    if command == "teleop":
        parser.add_argument(
            "--device",
            default=TELEOP["device"].default,
            choices=["auto", "scripted", "keyboard", "gamepad", "so101_leader"],
            help="teleop device; auto = the scripted expert in a simulation that has one, else keyboard (default: %(default)s)",
        )
        parser.add_argument("--device-port", default="", help="serial port of a leader arm (so101_leader)")
        parser.add_argument("--device-id", default="", help="LeRobot id of a leader arm (its calibration file)")
    else:
        parser.add_argument("--policy", required=True, help="checkpoint directory or spec (replay:<store>[:<episode>], hold:..., scripted:<module>:<Class>)")
        parser.add_argument("--dry-run", action="store_true", help="compute and log actions but never publish them to the arm")
        parser.add_argument("--refill-threshold", type=int, default=POLICY["refill_threshold"].default, help="request a new chunk when this many actions remain (default: %(default)s)")


def parameter_values(args: argparse.Namespace) -> dict[str, Any]:
    """CLI flags -> node parameter values (names from wmpo_ros.params)."""
    values: dict[str, Any] = {"robot": args.robot, "seed": args.seed, "real_time_factor": args.real_time_factor}
    if args.command in ("teleop", "deploy"):
        values.update(store=args.store, max_steps=args.max_steps, autostart=False)
    if args.command == "teleop":
        values.update(device=args.device, device_port=args.device_port, device_id=args.device_id)
    if args.command == "deploy":
        values.update(policy=args.policy, dry_run=args.dry_run, refill_threshold=args.refill_threshold)
    return values


def node_class(executable: str):
    """The node class behind a console_scripts executable (imported only when needed)."""
    if executable == "sim_arm":
        from wmpo_ros.sim_arm_node import SimArmNode

        return SimArmNode
    if executable == "lerobot_bridge":
        from wmpo_ros.lerobot_bridge_node import LeRobotBridgeNode

        return LeRobotBridgeNode
    if executable == "policy_node":
        from wmpo_ros.policy_node import PolicyNode

        return PolicyNode
    if executable == "recorder":
        from wmpo_ros.recorder_node import RecorderNode

        return RecorderNode
    if executable == "teleop":
        from wmpo_ros.teleop_node import TeleopNode

        return TeleopNode
    raise ValueError(f"no node class for executable '{executable}'")


class RunningGraph:
    """The nodes of one bring-up, spinning on a MultiThreadedExecutor in a background thread."""

    def __init__(self, bringup: str, config, values: dict[str, Any], threads: int = 6):
        from rclpy.executors import MultiThreadedExecutor

        from wmpo_ros.graph import bringup_graph
        from wmpo_ros.node_utils import parameter_overrides

        self.nodes: dict[str, Any] = {}
        self.executor = MultiThreadedExecutor(num_threads=threads)
        self._thread: threading.Thread | None = None
        try:
            # The arm last: a bad policy, device or store fails in seconds, before the simulator loads.
            for spec in reversed(bringup_graph(bringup, config, values)):
                node = node_class(spec.executable)(parameter_overrides=parameter_overrides(spec.parameters))
                self.nodes[spec.executable] = node
                self.executor.add_node(node)
        except BaseException:
            self.shutdown()
            raise
        self._thread = threading.Thread(target=self.executor.spin, name="executor", daemon=True)
        self._thread.start()

    def add(self, name: str, node) -> None:
        self.nodes[name] = node
        self.executor.add_node(node)

    def shutdown(self) -> None:
        # Commanders first (the arm stops being told anything), the recorder (commits) and driver last.
        for name in ("wmpo_episode_runner", "policy_node", "teleop", "recorder", "sim_arm", "lerobot_bridge"):
            node = self.nodes.pop(name, None)
            if node is not None:
                self.executor.remove_node(node)
                node.destroy_node()
        self.executor.shutdown(timeout_sec=5.0)
        if self._thread is not None:
            self._thread.join(timeout=5.0)  # out of spin() before the caller shuts rclpy down


class EpisodeRunner:
    """Drives episodes through the graph's services, like an operator with `ros2 service call`."""

    def __init__(self, config, commander: str, sim: bool, task: str | None):
        from rclpy.node import Node
        from std_msgs.msg import String
        from std_srvs.srv import SetBool, Trigger

        from wmpo_ros.messages import LATCHED_QOS
        from wmpo_ros.names import graph_names

        self.config = config
        self.sim = sim
        names = graph_names(config)
        self.node = Node("wmpo_episode_runner")
        self._episodes: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self.node.create_subscription(String, names.recorder_episodes, self._on_episode, 10)
        self._reset = self.node.create_client(Trigger, names.sim_reset) if sim else None
        enable_service = names.policy_enable if commander == "policy_node" else names.teleop_enable
        self._enable = self.node.create_client(SetBool, enable_service)
        self._start = self.node.create_client(Trigger, names.recorder_start)
        self._SetBool, self._Trigger = SetBool, Trigger
        self._instruction = self.node.create_publisher(String, config.topics.instruction, LATCHED_QOS)
        if task:
            self._instruction.publish(String(data=task))

    def _on_episode(self, msg) -> None:
        with self._cond:
            self._episodes.append(json.loads(msg.data))
            self._cond.notify_all()

    def _call(self, client, request, timeout: float = 180.0):
        if not client.wait_for_service(timeout_sec=30.0):
            raise RuntimeError(f"service {client.srv_name} is not available")
        future = client.call_async(request)
        done = threading.Event()
        future.add_done_callback(lambda _: done.set())
        if not done.wait(timeout):
            raise RuntimeError(f"service {client.srv_name} did not answer within {timeout:.0f} s")
        response = future.result()
        if not response.success:
            raise RuntimeError(f"{client.srv_name}: {response.message}")
        return response

    def enable(self, on: bool) -> str:
        return self._call(self._enable, self._SetBool.Request(data=on)).message

    def run_episode(self, stall_timeout_s: float) -> dict[str, Any]:
        """One episode; returns the committed episode's metadata."""
        self.enable(False)
        if self._reset is not None:
            self._call(self._reset, self._Trigger.Request())
        else:
            input("Reset the scene, then press Enter to start the episode... ")
        with self._cond:
            seen = len(self._episodes)
        self._call(self._start, self._Trigger.Request())
        self.enable(True)
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._episodes) > seen, timeout=stall_timeout_s):
                raise RuntimeError(f"no episode committed within {stall_timeout_s:.0f} s; is the arm publishing?")
            episode = self._episodes[seen]
        self.enable(False)
        return episode


def run(args: argparse.Namespace) -> int:
    import rclpy
    from tqdm import tqdm
    from wmpo_core.robot_config import GymSimDriver, RobotConfigError, load_robot_config

    try:
        config = load_robot_config(args.robot)
    except RobotConfigError as exc:
        print(f"wmpo {args.command}: {exc}", file=sys.stderr)
        return 2
    if args.command != "robot" and args.episodes < 1:
        print(f"wmpo {args.command}: --episodes must be at least 1", file=sys.stderr)
        return 2
    sim = isinstance(config.driver, GymSimDriver)
    if args.command == "teleop" and not sim and args.device in ("keyboard", "auto"):
        print(
            f"wmpo teleop: on a real arm the keyboard device and this command's prompts would share the terminal; use "
            f"`ros2 launch wmpo_ros teleop.launch.py robot:={config.name} device:=keyboard` with `ros2 run wmpo_ros "
            f"record_keys`, or another --device",
            file=sys.stderr,
        )
        return 2
    from wmpo_ros.dds import use_large_frames_profile

    use_large_frames_profile()
    rclpy.init(args=[])
    graph = None
    try:
        print(f"bringing up {config.name} ({config.driver.kind}) ...", file=sys.stderr)
        graph = RunningGraph(args.command, config, parameter_values(args))
        if args.command == "robot":
            print("arm is up; Ctrl-C to stop", file=sys.stderr)
            while True:
                time.sleep(1.0)
        commander = "policy_node" if args.command == "deploy" else "teleop"
        runner = EpisodeRunner(config, commander, sim, args.task)
        graph.add("wmpo_episode_runner", runner.node)
        max_steps = args.max_steps or config.max_episode_steps
        stall = max_steps * STEP_STALL_S + 120.0
        successes = 0
        with tqdm(total=args.episodes, desc=f"{args.command} {config.name}", unit="episode") as progress:
            for _ in range(args.episodes):
                meta = runner.run_episode(stall)
                successes += bool(meta.get("success"))
                progress.set_postfix(success=f"{successes}/{progress.n + 1}", steps=meta["num_steps"])
                progress.update(1)
        print(f"recorded {args.episodes} episodes into {os.path.abspath(args.store)}: {successes} successful", file=sys.stderr)
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (RuntimeError, ValueError, OSError) as exc:  # bad config, policy, device, store: say what, not a traceback
        print(f"wmpo {args.command}: {exc}", file=sys.stderr)
        return 1
    finally:
        if graph is not None:
            graph.shutdown()
        if rclpy.ok():
            rclpy.shutdown()
