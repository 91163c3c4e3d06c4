"""Sync node: the robot's link to the learner service, episodes up and verified policies down.

Two jobs, each on its own worker thread: every learner call is network I/O with deadlines, and
none of it may ever run on an executor callback, let alone near the control loop.

Episodes up. Every episode the recorder commits (announced on `<ns>/recorder/episodes`), and at
start-up every episode already in the robot's store, goes into the durable outbox
(`wmpo_ros.outbox`: SQLite next to the store) and is uploaded with retry and backoff. Learner down,
robot restarted: nothing is lost, uploads resume, within seconds of the learner answering again
(its health endpoint is probed while it is away); the learner is idempotent by episode id, so a
duplicate is harmless. An announced episode that is not in this robot's store is another graph's
(a second robot graph on the same ROS network): it is ignored, with a warning.

Policies down. The node long-polls the learner's deployment. A newly deployed version is

1. downloaded into the policy cache; the client checks every file's size and sha256 against the
   registry listing and renames the directory into place only when all match;
2. checked against its manifest: the checkpoint names the deployed version, and was trained for
   this robot config (name and content hash);
3. handed to the policy node by setting its `policy` parameter to the verified directory. The
   policy node loads it on its loader thread into a second instance (`PolicyHolder.load`: the
   checkpoint loader checks the safetensors tensor hash, the normalization-stats and config
   hashes, keys, shapes and the robot layout; then a probe observation must give finite
   (K, action_dim) chunks), stages it only if all of that passes, and reports the outcome on
   `<ns>/policy/loads`. The swap is a reference exchange at the next episode start (or chunk,
   `swap_at`), so the control loop never waits for a load.

A version that fails any step is rejected with one error line naming the version and the reason,
reported on `<ns>/sync/status` and /diagnostics, and deleted from the cache; the running policy
keeps running. It is not retried until the learner deploys something else.

One mechanism for both topologies: the policy node's holder is never shared, only its ROS
parameter, so the sync node works the same in the policy node's process (`wmpo deploy
--learner`) or in its own (`ros2 launch ... learner_url:=...`).

This node holds the ROS side and the two worker threads; its rules are ROS-free modules:
`wmpo_ros.deployment_follower` (the policy-update loop: long-poll, download, verify, stage, retry),
`wmpo_ros.own_episodes` (which episodes are this robot's, the upload call), `wmpo_ros.policy_versions`
(manifest check, which deployments need staging, cache pruning), `wmpo_ros.sync_status` (the
status and its /diagnostics summary) and `wmpo_ros.policy_loads` (the load outcome it waits for).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.parameter_client import AsyncParameterClient
from std_msgs.msg import String
from wmpo_core.robot_config import load_robot_config

from wmpo_ros.deployment_follower import DeploymentFollower, RetryLater
from wmpo_ros.learner_client import LearnerClient
from wmpo_ros.messages import LATCHED_QOS
from wmpo_ros.names import graph_names
from wmpo_ros.node_utils import run_node
from wmpo_ros.outbox import Backoff, Outbox, OutboxEntry, OutboxWorker
from wmpo_ros.own_episodes import OwnEpisodes, announced_episode_id
from wmpo_ros.params import POLICY, SYNC
from wmpo_ros.policy_loads import LoadOutcome, LoadWaiter
from wmpo_ros.policy_versions import VersionRejected
from wmpo_ros.sync_status import SyncStatus


class SyncNode(Node):
    def __init__(self, token: str | None = None, **kwargs):
        """`token`: the learner's bearer token, for in-process callers (`wmpo_ros.session`); it is
        never a ROS parameter, which anyone on the ROS network can read. Default: `token_file`,
        else WMPO_LEARNER_TOKEN."""
        super().__init__(SYNC.node_name, **kwargs)
        p = SYNC.declare(self)
        if not p["learner_url"]:
            raise ValueError("sync_node needs the learner's URL: set the 'learner_url' parameter")
        if (
            p["long_poll_s"] <= 0
            or p["stage_timeout_s"] <= 0
            or p["retry_max_s"] <= 0
            or p["keep_versions"] < 2
        ):
            raise ValueError("long_poll_s, stage_timeout_s and retry_max_s must be > 0, keep_versions >= 2")
        self.config = load_robot_config(p["robot"])
        self.names = graph_names(self.config)
        self.store_path = Path(p["store"])
        self.cache = Path(p["policy_cache"] or f"{self.store_path}.policies")
        self._stage_timeout_s = float(p["stage_timeout_s"])
        self._backoff = Backoff(initial_s=min(1.0, float(p["retry_max_s"])), max_s=float(p["retry_max_s"]))
        verify = p["ca_file"] or True
        if token is not None:
            self.client = LearnerClient(p["learner_url"], token, verify=verify)
        else:
            self.client = LearnerClient.from_env(p["learner_url"], p["token_file"] or None, verify=verify)

        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._loads = LoadWaiter()
        self.status = SyncStatus(
            learner_url=self.client.base_url, state="waiting" if p["update_policy"] else "uploads only"
        )
        self._published: str | None = None
        self._status_pub = self.create_publisher(String, self.names.sync_status, LATCHED_QOS)
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        inputs = MutuallyExclusiveCallbackGroup()

        self._episodes = OwnEpisodes(self.store_path, self.client)
        self.outbox: Outbox | None = None
        self._uploads: OutboxWorker | None = None
        if p["upload"]:
            self.outbox = Outbox(p["outbox"] or f"{self.store_path}.outbox.sqlite")
            self._uploads = OutboxWorker(
                self.outbox,
                self._upload,
                backoff=self._backoff,
                on_parked=self._on_parked,
                probe=self.client.answers,
            )
            self.create_subscription(
                String, self.names.recorder_episodes, self._on_committed, 100, callback_group=inputs
            )
            self._enqueue_local_store()
            self._uploads.start()

        self._policy_params: AsyncParameterClient | None = None
        self._updates: threading.Thread | None = None
        if p["update_policy"]:
            self.create_subscription(
                String, self.names.policy_version, self._on_active, LATCHED_QOS, callback_group=inputs
            )
            self.create_subscription(
                String, self.names.policy_staged, self._on_staged, LATCHED_QOS, callback_group=inputs
            )
            self.create_subscription(
                String, self.names.policy_loads, self._on_load, 10, callback_group=inputs
            )
            self._policy_params = AsyncParameterClient(
                self, POLICY.node_name, callback_group=MutuallyExclusiveCallbackGroup()
            )
            follower = DeploymentFollower(
                self.client,
                self.config,
                self.cache,
                long_poll_s=float(p["long_poll_s"]),
                keep_versions=int(p["keep_versions"]),
                backoff=self._backoff,
                stopping=self._stopping,
                find_policy_node=self._see_policy_node,
                stage=self._stage,
                status=lambda: self.status,
                update=self._update,
                on_event=self._log_event,
            )
            self._updates = threading.Thread(target=follower.run, name="wmpo-sync-policy", daemon=True)
            self._updates.start()
        self.create_timer(
            1.0,
            self._publish_diagnostics,
            clock=Clock(clock_type=ClockType.STEADY_TIME),
            callback_group=inputs,
        )
        self._update()

    # ------------------------------------------------------------------ status

    def _update(self, derive: Callable[[SyncStatus], dict[str, Any]] | None = None, **changes: Any) -> None:
        """Apply `changes`, and those `derive` computes from the current status (under the lock, so a
        change that depends on the status cannot interleave with another thread's), then publish."""
        with self._lock:
            if self._stopping.is_set():  # the outbox may be closed and the publisher destroyed
                return
            if derive is not None:
                changes = {**changes, **derive(self.status)}
            self.status = replace(self.status, **changes)
            if self.outbox is not None:
                stats = self.outbox.stats()
                self.status = replace(
                    self.status, outbox={"pending": stats.pending, "sent": stats.sent, "parked": stats.parked}
                )
            text = json.dumps(asdict(self.status), sort_keys=True)
            if text == self._published:
                return
            self._published = text
            self._status_pub.publish(String(data=text))

    def diagnostics(self) -> DiagnosticStatus:
        self._update()  # refreshes the outbox counts (and republishes the status if they changed)
        s = self.status
        values = s.diagnostic_values()
        if self.outbox is not None:
            oldest = self.outbox.stats().oldest_pending_s
            values["outbox_oldest_pending_s"] = "" if oldest is None else f"{oldest:.1f}"
        level, message = s.health()
        return DiagnosticStatus(
            level=getattr(DiagnosticStatus, level),
            name=f"wmpo/{self.get_name()}",
            message=message,
            hardware_id=self.config.name,
            values=[KeyValue(key=k, value=v) for k, v in values.items()],
        )

    def _publish_diagnostics(self) -> None:
        if self._stopping.is_set():  # a timer tick racing destroy_node (an executor still spinning)
            return
        msg = DiagnosticArray(status=[self.diagnostics()])
        msg.header.stamp = self.get_clock().now().to_msg()
        self._diag_pub.publish(msg)

    # ------------------------------------------------------------------ episodes up

    def _enqueue_local_store(self) -> None:
        """Episodes committed while this node was not running (e.g. before a restart)."""
        new = self._episodes.enqueue_stored(self.outbox)
        if new:
            self.get_logger().info(
                f"queued {len(new)} episode(s) from {self.store_path} that the learner may not have yet"
            )

    def _on_committed(self, msg: String) -> None:
        try:
            episode_id = announced_episode_id(msg.data)
        except (ValueError, KeyError, TypeError) as exc:
            self.get_logger().error(
                f"unreadable episode announcement on {self.names.recorder_episodes}: {exc}"
            )
            return
        if not self._episodes.holds(episode_id):
            self.get_logger().warning(
                f"ignoring episode {episode_id} announced on {self.names.recorder_episodes}: it is not in "
                f"this robot's store {self.store_path} (another robot graph on this ROS network?); only "
                "this robot's episodes are uploaded"
            )
            return
        if self.outbox.enqueue(episode_id):
            self._uploads.wake()
        self._update()

    def _upload(self, episode_id: str) -> str:
        result = self._episodes.upload(episode_id)
        self.get_logger().info(f"episode {episode_id} uploaded ({result})")
        return result

    def _on_parked(self, entry: OutboxEntry) -> None:
        self.get_logger().error(
            f"episode {entry.episode_id} will not be uploaded (the learner refused it): {entry.last_error}"
        )

    # ------------------------------------------------------------------ policies down

    def _on_active(self, msg: String) -> None:
        self._update(lambda status: status.on_active(msg.data))

    def _on_staged(self, msg: String) -> None:
        self._update(staged_version=msg.data or None)

    def _on_load(self, msg: String) -> None:
        outcome = LoadOutcome.from_json(msg.data)
        if outcome is None:
            return
        self._loads.deliver(outcome)

    def _see_policy_node(self) -> None:
        """Before the first deployment: find the policy node and the version it runs (latched, so
        it arrives right after discovery when there is one), so a running version is not staged again."""
        while not self._policy_params.wait_for_services(timeout_sec=5.0):
            if self._stopping.is_set():
                return
            self._update(state="waiting", message=f"waiting for the policy node ({POLICY.node_name})")
        deadline = time.monotonic() + 2.0
        while (
            self.status.active_version is None and time.monotonic() < deadline and not self._stopping.is_set()
        ):
            time.sleep(0.05)
        self._update(message="")

    def _stage(self, path: Path) -> None:
        """Set the policy node's `policy` parameter and wait for the outcome of its load on
        `<ns>/policy/loads`: staged, or refused with the reason."""
        assert self._policy_params is not None
        if not self._policy_params.wait_for_services(timeout_sec=10.0):
            raise RetryLater(f"the policy node ({POLICY.node_name}) is not running")
        spec = str(path.resolve())
        pending = self._loads.expect(spec)
        try:
            future = self._policy_params.set_parameters([Parameter("policy", value=spec)])
            answered = threading.Event()
            future.add_done_callback(lambda _: answered.set())
            if not answered.wait(10.0):
                future.cancel()
                raise RetryLater("the policy node did not answer the parameter request")
            try:
                (result,) = future.result().results
            except Exception as exc:
                raise RetryLater(f"setting the policy node's 'policy' parameter failed: {exc}") from None
            if not result.successful:
                raise VersionRejected(result.reason)
            if not pending.arrived.wait(self._stage_timeout_s):
                raise RetryLater(
                    f"the policy node did not finish loading within {self._stage_timeout_s:.0f} s"
                )
            if self._stopping.is_set():
                raise RetryLater("the sync node is shutting down")
        finally:
            self._loads.forget()
        if not pending.outcome.ok:
            raise VersionRejected(pending.outcome.reason or "the policy node refused it")

    def _log_event(self, kind: str, message: str) -> None:
        """DeploymentFollower's reports: retries are throttled (a learner away for an hour says so
        every 30 s, not at every backoff step)."""
        logger = self.get_logger()
        if kind == "retry":
            logger.warning(message, throttle_duration_sec=30.0)
        elif kind == "error":
            logger.error(message)
        else:
            logger.info(message)

    # ------------------------------------------------------------------ shutdown

    def destroy_node(self) -> None:
        """Stop both workers before the handles go: a thread that publishes on, or calls a service
        of, a destroyed node dies with rclpy's InvalidHandle traceback."""
        with self._lock:  # no status publish is in flight once this returns, and none starts after
            self._stopping.set()
            self._loads.wake()
        if self._uploads is not None:
            self._uploads.stop(timeout_s=2.0)
        self.client.close()  # ends a long-poll or an upload in flight
        if self._updates is not None:
            self._updates.join(timeout=5.0)
        if self.outbox is not None:
            self.outbox.close()  # an upload still finishing is simply sent again at the next start
        self._episodes.close()
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    return run_node(SyncNode, args)
