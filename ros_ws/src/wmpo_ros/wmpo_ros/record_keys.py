"""Keyboard helper for recording: terminal keys -> the recorder's (and commander's) services.

ros2 run wmpo_ros record_keys --ros-args -p robot:=so101_real

s  start an episode: start recording, then enable the policy / teleop device
e  end it: disable the policy / teleop device, stop recording (commit)
d  discard the episode being recorded
y  label the current (or last committed) episode a success
n  label it a failure
q  quit
"""

from __future__ import annotations

import sys
import termios
import threading
import tty

from rclpy.node import Node
from std_srvs.srv import SetBool, Trigger
from wmpo_core.robot_config import load_robot_config

from wmpo_ros.names import graph_names
from wmpo_ros.params import RECORD_KEYS

KEYS = {"s": "start", "e": "end", "d": "discard", "y": "success", "n": "failure", "q": "quit"}


class RecordKeys(Node):
    """Maps single keys to service calls; `press(key)` returns what happened, for the terminal."""

    def __init__(self, **kwargs):
        super().__init__(RECORD_KEYS.node_name, **kwargs)
        p = RECORD_KEYS.declare(self)
        names = graph_names(load_robot_config(p["robot"]))
        self._recorder = {
            "start": self.create_client(Trigger, names.recorder_start),
            "stop": self.create_client(Trigger, names.recorder_stop),
            "discard": self.create_client(Trigger, names.recorder_discard),
            "label": self.create_client(SetBool, names.recorder_label_success),
        }
        self._commanders = [
            self.create_client(SetBool, s) for s in (names.policy_enable, names.teleop_enable)
        ]

    def _call(self, client, request, timeout: float = 60.0) -> tuple[bool, str]:
        """Call a service; the node must be spinning on an executor (main() spins it on a thread)."""
        if not client.wait_for_service(timeout_sec=1.0):
            return False, f"{client.srv_name} is not available"
        done = threading.Event()
        future = client.call_async(request)
        future.add_done_callback(lambda _: done.set())
        if not done.wait(timeout):
            return False, f"{client.srv_name} did not answer within {timeout:.0f} s"
        response = future.result()
        return response.success, response.message

    def _commanders_enable(self, on: bool) -> list[str]:
        return [self._call(c, SetBool.Request(data=on))[1] for c in self._commanders if c.service_is_ready()]

    def press(self, key: str) -> str:
        action = KEYS.get(key.lower())
        if action is None:
            return f"unknown key {key!r}; keys: " + ", ".join(f"{k}={a}" for k, a in KEYS.items())
        if action == "start":
            ok, message = self._call(self._recorder["start"], Trigger.Request())
            return "; ".join([message, *self._commanders_enable(True)]) if ok else message
        if action == "end":
            self._commanders_enable(False)
            return self._call(self._recorder["stop"], Trigger.Request())[1]
        if action == "discard":
            self._commanders_enable(False)
            return self._call(self._recorder["discard"], Trigger.Request())[1]
        if action in ("success", "failure"):
            return self._call(self._recorder["label"], SetBool.Request(data=action == "success"))[1]
        return "quit"


def main(args: list[str] | None = None) -> int:
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    rclpy.init(args=args if args is not None else sys.argv)
    node = RecordKeys()
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    threading.Thread(target=executor.spin, daemon=True).start()
    print(__doc__.split("\n\n", 2)[2], file=sys.stderr)
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd) if sys.stdin.isatty() else None
    try:
        if saved is not None:
            tty.setcbreak(fd)
        while True:
            key = sys.stdin.read(1)
            if not key:
                break
            result = node.press(key)
            print(result, file=sys.stderr)
            if result == "quit":
                break
    except KeyboardInterrupt:
        pass
    finally:
        if saved is not None:
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        executor.shutdown()
        node.destroy_node()
        rclpy.shutdown()
    return 0
