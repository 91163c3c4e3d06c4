"""`wmpo policy status | rollback | verify`: the robot's running policy, and the check before a swap.

- `status` prints what the policy node runs (active, staged, previous version, swap point) from its
  /diagnostics, and the learner link from `<ns>/sync/status` when a sync node runs.
- `rollback` calls `<ns>/policy/rollback`: the previously active version, still loaded in the
  policy node, takes over again at the next episode (or chunk, `swap_at`). It does not change the
  learner's deployment; the sync node leaves the rollback alone until the learner deploys
  something new (`LearnerClient.rollback()` rolls back the learner, and with it every robot).

- `verify DIR` runs, offline and without ROS, exactly the check the policy node runs before it
  stages a new policy (`wmpo_ros.policy_holder.load_verified`: the checkpoint's own verification,
  then a probe inference); prints the version and exits 0, or exits 1 with the one-line reason.

`rollback` is the same as `ros2 service call <ns>/policy/rollback std_srvs/srv/Trigger` for a
pip-installed stack, which has no `ros2` command. Works with `wmpo deploy` and with the launch files alike.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import SingleThreadedExecutor
from std_msgs.msg import String
from std_srvs.srv import Trigger
from wmpo_core.robot_config import RobotConfigError, load_robot_config

from wmpo_ros.dds import use_large_frames_profile
from wmpo_ros.messages import LATCHED_QOS
from wmpo_ros.names import graph_names
from wmpo_ros.params import POLICY, SYNC
from wmpo_ros.policy_holder import load_verified


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument(
        "action",
        choices=["status", "rollback", "verify"],
        help="status: show the running policy; rollback: go back to the previous one; "
        "verify: run the robot's pre-swap check on a checkpoint",
    )
    parser.add_argument(
        "checkpoint", nargs="?", help="verify: the checkpoint directory (or policy spec) to check"
    )
    parser.add_argument(
        "--robot",
        default="so101_sim",
        help="robot config name or YAML path; names the topics (default: %(default)s)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        help="seconds to wait for the robot's nodes to answer (default: %(default)s)",
    )


def _spin_until(executor, predicate: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        executor.spin_once(timeout_sec=0.05)
    return True


def _status(executor, node, names, timeout_s: float) -> int:
    found: dict[str, dict[str, str]] = {}

    def on_diagnostics(msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name == f"wmpo/{POLICY.node_name}":
                found["policy"] = {"state": status.message, **{kv.key: kv.value for kv in status.values}}

    node.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, 10)
    node.create_subscription(
        String, names.sync_status, lambda m: found.__setitem__("sync", json.loads(m.data)), LATCHED_QOS
    )
    if not _spin_until(executor, lambda: "policy" in found, timeout_s):
        print(
            f"wmpo policy: no {POLICY.node_name} answered within {timeout_s:.0f} s (is the robot up, same "
            "ROS_DOMAIN_ID?)",
            file=sys.stderr,
        )
        return 1
    if node.count_publishers(names.sync_status):  # its latched status arrives right after discovery
        _spin_until(executor, lambda: "sync" in found, 2.0)
    p = found["policy"]
    print(f"policy node: {p['state']}")
    for key in ("policy_version", "staged_version", "previous_version", "swap_at", "watchdog"):
        print(f"  {key}: {p.get(key) or '-'}")
    sync = found.get("sync")
    if sync is None:
        print(f"{SYNC.node_name}: not running")
        return 0
    print(
        f"{SYNC.node_name}: {sync['state']} (learner {sync['learner_url']}, reachable: "
        f"{sync['learner_reachable']})"
    )
    print(f"  deployed_version: {sync['deployed_version'] or '-'}")
    if sync["last_rejection"]:
        print(f"  last rejected: {sync['last_rejection']['version']}: {sync['last_rejection']['reason']}")
    if sync["outbox"]:
        print(
            f"  uploads: {sync['outbox']['pending']} pending, {sync['outbox']['sent']} sent, "
            f"{sync['outbox']['parked']} refused"
        )
    return 0


def _rollback(executor, node, names, timeout_s: float) -> int:
    client = node.create_client(Trigger, names.policy_rollback)
    if not client.wait_for_service(timeout_sec=timeout_s):
        print(
            f"wmpo policy: {names.policy_rollback} is not available (is the policy node up, same "
            "ROS_DOMAIN_ID?)",
            file=sys.stderr,
        )
        return 1
    future = client.call_async(Trigger.Request())
    if not _spin_until(executor, future.done, timeout_s):
        print(
            f"wmpo policy: {names.policy_rollback} did not answer within {timeout_s:.0f} s", file=sys.stderr
        )
        return 1
    response = future.result()
    print(response.message, file=sys.stdout if response.success else sys.stderr)
    return 0 if response.success else 1


def _verify(spec: str | None, robot: str) -> int:
    """The policy node's pre-swap check on `spec`, for `robot`; 0 when it would be staged."""

    if not spec:
        print("wmpo policy verify: give the checkpoint directory to check", file=sys.stderr)
        return 2
    try:
        config = load_robot_config(robot)
    except RobotConfigError as exc:
        print(f"wmpo policy: {exc}", file=sys.stderr)
        return 2
    try:
        loaded = load_verified(spec, config)
    except Exception as exc:  # any failure is a refusal, reported on one line like the node logs it
        print(f"wmpo policy verify: REFUSED: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    print(
        f"wmpo policy verify: OK: {spec} is version {loaded.version}; the policy node on '{config.name}' "
        "would stage it"
    )
    return 0


def run(args: argparse.Namespace) -> int:
    if args.action == "verify":
        return _verify(args.checkpoint, args.robot)

    try:
        names = graph_names(load_robot_config(args.robot))
    except RobotConfigError as exc:
        print(f"wmpo policy: {exc}", file=sys.stderr)
        return 2
    use_large_frames_profile()
    rclpy.init(args=[])
    node = rclpy.create_node("wmpo_policy_cli")
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        return (_status if args.action == "status" else _rollback)(executor, node, names, args.timeout)
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.shutdown()
