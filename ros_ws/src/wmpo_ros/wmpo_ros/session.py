"""The robot side as a Python API: the robot's node graph in this process, episodes on demand.

`RobotSession` brings up the same nodes as `ros2 launch wmpo_ros deploy.launch.py` (the arm
driver or simulator, the policy node, the recorder and, with a learner URL, the sync node;
`wmpo_ros.graph` says which, with which parameters) on one executor in a background thread, and
drives episodes through the nodes' own services, as an operator would: reset the scene (sim) or
wait for the operator (real arm) -> start recording -> enable the policy or teleop device -> the
recorder ends the episode on success or at the time limit and commits it. `wmpo teleop` and
`wmpo deploy` are thin command-line wrappers around it; `wmpo run` drives a whole lifelong loop
with it:

    from wmpo_ros.session import RobotSession

    with RobotSession("so101_sim", store="robot/episodes.zarr",
                      learner_url="http://127.0.0.1:8765", token_file="learner.token") as robot:
        robot.teleop(20)                              # demonstrations (the sim's scripted expert)
        robot.wait_uploaded(timeout_s=600)            # ... every recorded episode is at the learner
        robot.wait_for_version("sft-v1", timeout_s=600)  # deployed on the learner; downloaded,
                                                      #   verified and staged here
        episodes = robot.run_episodes(10)             # rollouts; each episode's metadata names the
        robot.policy_version                          #   version it ran ("policy_version")

With a learner, every committed episode (demonstrations and rollouts alike) is uploaded through
the durable outbox, and every version the learner deploys is downloaded, verified and staged by
the sync node; the policy node swaps it in at the next episode start (`swap_at="episode"`), so
every episode runs exactly one version.

Dry run (`dry_run=True`, `wmpo deploy --dry-run`): how one checks a new policy on a real arm
without moving it. The policy node computes every action and publishes it on
`<ns>/policy/dry_run_action` only; the arm gets no command and holds. Such episodes are *not
recorded*: each runs for the episode time limit (`max_steps` control periods of ROS time),
nothing ends it earlier (nothing moves, so there is no success to see), and `run_episodes`
returns a summary per episode (`dry_run: True`, `episode_id: None`, `num_steps` = actions
proposed). Why not record them, marked: their frames show an arm that never executed the actions
paired with them, so as (observation, action) data they are wrong for every consumer: behaviour
cloning, the world model (it would learn that actions do nothing) and the reward model alike; a
committed episode is also uploaded to the learner by the sync node, and the store's selections
(source, success) know no dry-run mark, so keeping them out of training would rest on every
consumer remembering an `extra` key. What a dry run is for, the proposed actions, is on the
dry-run topic (watch, plot or `ros2 bag record` it) and in the policy node's log.

A session owns its own rclpy context, so it coexists with other rclpy users in the process, and
a simulated arm's graph its own DDS domain, so it coexists with other graphs on the host
(`wmpo_ros.isolation`). Announcements of episodes that are not in the session's store (another
graph's) are ignored and logged, and a recorder found already recording (a start this session
did not make) has that episode discarded instead of ending the session.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import rclpy
from rclpy.node import Node
from rclpy.parameter import Parameter
from std_msgs.msg import Float64MultiArray, String
from std_srvs.srv import SetBool, Trigger
from tqdm import tqdm
from wmpo_core.episode_store import EpisodeStore
from wmpo_core.robot_config import GymSimDriver, load_robot_config

from wmpo_ros.dds import use_large_frames_profile
from wmpo_ros.graph import bringup_graph, recorder_source
from wmpo_ros.isolation import DomainRequest, GraphIsolation, isolate_graph
from wmpo_ros.lerobot_bridge_node import LeRobotBridgeNode
from wmpo_ros.messages import LATCHED_QOS
from wmpo_ros.names import graph_names
from wmpo_ros.node_utils import parameter_overrides
from wmpo_ros.params import POLICY, TELEOP
from wmpo_ros.pausable_executor import PausableExecutor
from wmpo_ros.policy_node import EXECUTOR_THREADS as POLICY_NODE_THREADS
from wmpo_ros.policy_node import PolicyNode
from wmpo_ros.recorder_node import RecorderNode
from wmpo_ros.sim_arm_node import SimArmNode
from wmpo_ros.sync_node import SyncNode
from wmpo_ros.teleop_devices import resolve_device
from wmpo_ros.teleop_node import TeleopNode

DRY_RUN_POLL_S = 0.01
"""How often a dry-run episode looks at the ROS clock for its time limit."""
CLOCK_STALL_S = 30.0
"""A dry-run episode fails when the ROS clock stands still this many wall seconds (a lockstep sim
that waits for some other commander's commands; a real arm's wall clock never stops)."""
STEP_STALL_S = 5.0
"""Wall seconds per step before an episode counts as stalled (rendering + inference on a loaded CPU)."""
SHUTDOWN_ORDER = (
    "wmpo_episode_runner",
    "policy_node",
    "teleop",
    "sync_node",
    "recorder",
    "sim_arm",
    "lerobot_bridge",
)
"""Commanders first (the arm stops being told anything), the recorder (commits) and the driver last."""


NODE_CLASSES = {
    "sim_arm": SimArmNode,
    "lerobot_bridge": LeRobotBridgeNode,
    "policy_node": PolicyNode,
    "recorder": RecorderNode,
    "teleop": TeleopNode,
    "sync_node": SyncNode,
}
"""The node class behind each console_scripts executable of the ROS package."""


OWN_EXECUTORS = {"policy_node": POLICY_NODE_THREADS}
"""Nodes that spin on an executor of their own, with this many threads, as in their own process
(`ros2 run` / `ros2 launch`): the policy node's single thread runs its callbacks without a hand-off
to a pool, which cost each frame ~1.4 ms at p50 on the shared executor (docs/robot.md)."""


def node_class(executable: str):
    """The node class behind a console_scripts executable."""
    try:
        return NODE_CLASSES[executable]
    except KeyError:
        raise ValueError(f"no node class for executable '{executable}'") from None


class RunningGraph:
    """The nodes of one bring-up, spinning on `PausableExecutor`s in background threads: one shared
    by most nodes, one of its own for each node in `OWN_EXECUTORS`.

    `context`: the rclpy context (initialised) the nodes live in. `node_kwargs`: constructor
    arguments by executable that are not ROS parameters (the sync node's learner token).
    A node is destroyed only while its executor is paused (`wmpo_ros.pausable_executor` says why):
    `remove()` pauses, destroys and resumes; `shutdown()` pauses before destroying anything."""

    def __init__(
        self,
        bringup: str,
        config,
        values: dict[str, Any],
        context,
        threads: int = 6,
        node_kwargs: dict[str, dict[str, Any]] | None = None,
    ):
        self.context = context
        self.nodes: dict[str, Any] = {}
        self.shared = PausableExecutor(context, threads)
        self.executors: dict[str, PausableExecutor] = {}
        """The executor each node spins on."""
        self._node_kwargs = node_kwargs or {}
        try:
            # The arm last: a bad policy, device or store fails in seconds, before the simulator loads.
            for spec in reversed(bringup_graph(bringup, config, values)):
                self.start_node(spec)
        except BaseException:
            self.shutdown()
            raise
        self.resume()

    def start_node(self, spec) -> Any:
        """Create the node of a `wmpo_ros.graph.NodeSpec` and add it to the running executors."""
        node = node_class(spec.executable)(
            parameter_overrides=parameter_overrides(spec.parameters),
            context=self.context,
            **self._node_kwargs.get(spec.executable, {}),
        )
        self.add(spec.executable, node)
        return node

    def add(self, name: str, node) -> None:
        own = OWN_EXECUTORS.get(name)
        executor = self.shared if own is None else PausableExecutor(self.context, own)
        self.nodes[name] = node
        self.executors[name] = executor
        executor.add(node)
        if own is not None and self.shared.spinning:
            executor.resume()

    def _distinct_executors(self) -> list[PausableExecutor]:
        return list({id(e): e for e in [self.shared, *self.executors.values()]}.values())

    def pause(self) -> None:
        """Stop every callback of the graph (nodes keep their state; `resume()` goes on)."""
        for executor in self._distinct_executors():
            executor.pause()

    def resume(self) -> None:
        for executor in self._distinct_executors():
            executor.resume()

    def remove(self, name: str) -> None:
        """Destroy one node while the rest keep running (nodes on the shared executor pause for the
        swap of executors)."""
        if name not in self.nodes:
            return
        executor = self.executors.pop(name)
        spinning = executor.spinning
        executor.pause()
        node = self.nodes.pop(name)
        executor.forget(node)
        node.destroy_node()
        if spinning and executor is self.shared:
            executor.resume()

    def shutdown(self) -> None:
        self.pause()
        for name in [*SHUTDOWN_ORDER, *self.nodes]:
            node = self.nodes.pop(name, None)
            if node is not None:
                node.destroy_node()


class EpisodeRunner:
    """Drives episodes through the graph's services, like an operator with `ros2 service call`."""

    def __init__(self, config, sim: bool, task: str | None, context, store: Path):
        self.config = config
        self.names = graph_names(config)
        self.store = store
        self._reader = None
        """The robot's store, read-only: announcements of episodes not in it are another graph's."""
        # On the graph's clock (sim time in simulation): a dry-run episode's time limit is in ROS time.
        self.node = Node(
            "wmpo_episode_runner", context=context, parameter_overrides=[Parameter("use_sim_time", value=sim)]
        )
        self._episodes: list[dict[str, Any]] = []
        self._proposals = 0
        self._version: str | None = None
        self._cond = threading.Condition()
        self.node.create_subscription(String, self.names.recorder_episodes, self._on_episode, 10)
        self.node.create_subscription(
            Float64MultiArray, self.names.policy_dry_run_action, self._on_proposal, 10
        )
        self.node.create_subscription(String, self.names.policy_version, self._on_version, LATCHED_QOS)
        self._reset = self.node.create_client(Trigger, self.names.sim_reset) if sim else None
        self._start = self.node.create_client(Trigger, self.names.recorder_start)
        self._discard = self.node.create_client(Trigger, self.names.recorder_discard)
        self._enable = {
            "policy_node": self.node.create_client(SetBool, self.names.policy_enable),
            "teleop": self.node.create_client(SetBool, self.names.teleop_enable),
        }
        self._SetBool, self._Trigger = SetBool, Trigger
        self._instruction = self.node.create_publisher(String, config.topics.instruction, LATCHED_QOS)
        if task:
            self._instruction.publish(String(data=task))

    def _on_episode(self, msg) -> None:
        meta = json.loads(msg.data)
        if not self._in_own_store(str(meta.get("episode_id"))):
            self.node.get_logger().warning(
                f"ignoring episode {meta.get('episode_id')} announced on {self.names.recorder_episodes}: it "
                "is not in this "
                f"robot's store {self.store} (another robot graph on this ROS network?)"
            )
            return
        with self._cond:
            self._episodes.append(meta)
            self._cond.notify_all()

    def _in_own_store(self, episode_id: str) -> bool:
        """The recorder announces after the commit, so our own episodes are always in the store."""
        if self._reader is None:
            if not (self.store / "zarr.json").exists():
                return False
            self._reader = EpisodeStore.open(self.store)
        if episode_id not in self._reader:
            self._reader.refresh()
        return episode_id in self._reader

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def _on_proposal(self, msg) -> None:
        with self._cond:
            self._proposals += 1

    def _on_version(self, msg) -> None:
        with self._cond:
            self._version = msg.data or None

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

    def enable(self, commander: str, on: bool) -> str:
        return self._call(self._enable[commander], self._SetBool.Request(data=on)).message

    def run_episode(self, commander: str, stall_timeout_s: float) -> dict[str, Any]:
        """One episode commanded by `commander` ("policy_node" or "teleop"); returns the committed
        episode's metadata."""
        self.enable(commander, False)
        self._prepare_scene()
        with self._cond:
            seen = len(self._episodes)
        self._start_recording()
        self.enable(commander, True)
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._episodes) > seen, timeout=stall_timeout_s):
                raise RuntimeError(
                    f"no episode committed within {stall_timeout_s:.0f} s; is the arm publishing?"
                )
            episode = self._episodes[seen]
        self.enable(commander, False)
        return episode

    def _start_recording(self) -> None:
        """Start the recorder. One that is already recording was started by nobody here (this
        runner stops every episode it starts): a foreign start, e.g. from another graph sharing
        the ROS network. Its episode is discarded, with a warning, and ours starts."""
        try:
            self._call(self._start, self._Trigger.Request())
        except RuntimeError as exc:
            try:
                self.discard_unrequested(str(exc))
            except RuntimeError:
                raise exc from None  # not recording either: the start failed for its own reason
            self._call(self._start, self._Trigger.Request())

    def discard_unrequested(self, what: str) -> None:
        """Discard an episode the recorder records although this runner did not start it."""
        self._call(self._discard, self._Trigger.Request(), timeout=30.0)
        self.node.get_logger().warning(
            f"{what}: an episode this runner did not start (another graph on this ROS network?); discarded it"
        )

    def run_dry_episode(self, max_steps: int) -> dict[str, Any]:
        """One dry-run episode of the policy node (module docstring): not recorded, it lasts the
        time limit, `max_steps` control periods of ROS time; returns its summary."""
        self.enable("policy_node", False)
        self._prepare_scene()
        self._wait_for_clock(1)  # sim time reads 0 until the first /clock
        with self._cond:
            proposed_before = self._proposals
        end_ns = self.node.get_clock().now().nanoseconds + max_steps * round(
            self.config.control_period_s * 1e9
        )
        self.enable("policy_node", True)
        self._wait_for_clock(end_ns)
        self.enable("policy_node", False)
        with self._cond:
            proposed, version = self._proposals - proposed_before, self._version
        self.node.get_logger().info(
            f"dry run: episode ended at the time limit ({max_steps} steps); {proposed} actions proposed on "
            f"{self.names.policy_dry_run_action}, none sent to the arm; nothing recorded"
        )
        return {
            "dry_run": True,
            "episode_id": None,
            "source": "policy",
            "policy_version": version,
            "num_steps": proposed,
            "success": None,
            "ended_by": "time_limit",
        }

    def _wait_for_clock(self, until_ns: int) -> None:
        """Block until the ROS clock reads `until_ns`; RuntimeError if it stands still CLOCK_STALL_S."""
        clock = self.node.get_clock()
        last, moved = clock.now().nanoseconds, time.monotonic()
        while (now := clock.now().nanoseconds) < until_ns:
            if now != last:
                last, moved = now, time.monotonic()
            elif time.monotonic() - moved > CLOCK_STALL_S:
                hint = (
                    " (a lockstep simulator advances only on commands: is a node other than the dry-run "
                    "policy node "
                    f"publishing on {self.config.topics.command}?)"
                    if self._reset is not None
                    else ""
                )
                raise RuntimeError(f"dry run: the ROS clock has stood still for {CLOCK_STALL_S:.0f} s{hint}")
            time.sleep(DRY_RUN_POLL_S)

    def _prepare_scene(self) -> None:
        if self._reset is not None:
            self._call(self._reset, self._Trigger.Request())
        else:
            input("Reset the scene, then press Enter to start the episode... ")


class RobotSession:
    """The robot's node graph, up in this process, recording episodes on demand (module docstring).

    Args:
        robot: robot config name (robot_configs/<name>.yaml) or path to a config YAML.
        store: the robot's episode store (created if missing); every episode is committed here.
        learner_url: the learner service (`http://host:port`; `https://` off loopback). Empty: no
            sync node (nothing uploaded, no policy updates).
        token_file: file holding the learner's bearer token; None: `token`, else the
            WMPO_LEARNER_TOKEN environment variable.
        token: the bearer token itself (handed to the sync node in-process, never a ROS parameter).
        ca_file: CA bundle of an https learner with a private CA.
        policy: checkpoint directory or spec to start with; empty: the learner's deployed version
            (`wait_for_version`).
        bringup: "deploy" (arm, policy node, recorder, sync node) or "teleop" (arm, teleop node,
            recorder: what `wmpo teleop` runs). `teleop()` works in both; `run_episodes()` needs
            "deploy".
        seed: simulation: seed of the first episode; episode k uses seed + k.
        real_time_factor: simulation: cap on simulated time per wall second; 0 = as fast as the
            CPU allows (the sim runs in lockstep either way, so results do not depend on it).
        max_steps: steps per episode; 0 = the robot config's episode time limit.
        task: instruction stamped into episodes and given to the policy (default: the config's first).
        swap_at: "episode" (default; every episode runs one version) or "chunk" (mid-episode).
        refill_threshold: policy node parameter (wmpo_ros.params.POLICY).
        dry_run: the policy's actions never reach the arm, and its episodes are not recorded
            (module docstring).
        device: the teleop device of `bringup="teleop"` (`teleop()` may choose another).
        ros_domain: DDS isolation of the graph (`wmpo_ros.isolation`): None = the default (a
            simulated arm gets a free domain of its own and localhost-only discovery, unless
            ROS_DOMAIN_ID is set; a real arm keeps the environment), "auto", "env" or a domain id.
            Printed at start; `isolation` says what was chosen.
    """

    def __init__(
        self,
        robot: str | Path = "so101_sim",
        *,
        store: str | Path,
        learner_url: str = "",
        token_file: str | Path | None = None,
        token: str | None = None,
        ca_file: str | Path | None = None,
        policy: str | Path = "",
        bringup: Literal["deploy", "teleop"] = "deploy",
        seed: int = 0,
        real_time_factor: float = 0.0,
        max_steps: int = 0,
        task: str | None = None,
        swap_at: Literal["episode", "chunk"] = "episode",
        refill_threshold: int = POLICY["refill_threshold"].default,
        dry_run: bool = False,
        device: str = TELEOP["device"].default,
        ros_domain: DomainRequest = None,
    ):

        if bringup not in ("deploy", "teleop"):
            raise ValueError(f"bringup must be 'deploy' or 'teleop', got '{bringup}'")
        if learner_url and bringup != "deploy":
            raise ValueError("a learner (sync node) runs with bringup='deploy'")
        self.config = load_robot_config(str(robot))
        self.names = graph_names(self.config)
        """Topic and service names of this robot's graph (wmpo_ros.names)."""
        self.sim = isinstance(self.config.driver, GymSimDriver)
        self.store = Path(store)
        self.bringup = bringup
        self.task = task
        self._token = token
        self.values: dict[str, Any] = {
            "robot": str(robot),
            "seed": seed,
            "real_time_factor": float(real_time_factor),
            "store": str(self.store),
            "max_steps": max_steps,
            "autostart": False,
            "policy": str(policy),
            "dry_run": dry_run,
            "refill_threshold": refill_threshold,
            "swap_at": swap_at,
            "learner_url": learner_url,
            "token_file": str(token_file) if token_file else "",
            "ca_file": str(ca_file) if ca_file else "",
            "device": device,
        }
        self.max_steps = max_steps or self.config.max_episode_steps
        self.recorded: list[dict[str, Any]] = []
        """Metadata of every episode this session recorded, in order."""
        self.ros_domain = ros_domain
        self.isolation: GraphIsolation | None = None
        """The graph's domain and discovery range, once started."""
        self._context = None
        self._graph: RunningGraph | None = None
        self._runner: EpisodeRunner | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> RobotSession:
        """Bring the graph up (the simulator loads last). Raises ValueError / RuntimeError / OSError
        with the reason when a node cannot start (bad policy, device, store, config)."""
        if self._graph is not None:
            return self
        use_large_frames_profile()
        self.isolation = isolate_graph(self.ros_domain, self.sim)
        print(self.isolation.describe(), file=sys.stderr, flush=True)
        self._context = rclpy.Context()
        try:
            rclpy.init(args=[], context=self._context, domain_id=self.isolation.domain_id)
            self._graph = RunningGraph(
                self.bringup,
                self.config,
                self.values,
                self._context,
                node_kwargs={"sync_node": {"token": self._token}},
            )
            self._runner = EpisodeRunner(self.config, self.sim, self.task, self._context, self.store)
            self._graph.add("wmpo_episode_runner", self._runner.node)
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Shut the graph down: a finished episode is committed, an unfinished one discarded."""
        if self._graph is not None:
            self._graph.shutdown()
            self._graph = None
        if self._runner is not None:
            self._runner.close()
            self._runner = None
        if self._context is not None:
            self._context.try_shutdown()
            self._context = None
        if self.isolation is not None:
            self.isolation.release()

    def __enter__(self) -> RobotSession:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def paused(self) -> Iterator[None]:
        """No callback of the graph runs inside this block; for a job that trains on the robot's own
        machine while the robot is idle (`wmpo run`). An idle graph still takes every frame, joint
        state and clock message the arm publishes: about a quarter of a core on the 2-core VM,
        measured, which training would otherwise lose. Uploads go on (the outbox has its own
        thread); episodes and version swaps wait for the end of the block."""
        if self._graph is None:
            raise RuntimeError("the robot session is not started (use `with RobotSession(...)` or .start())")
        self._graph.pause()
        try:
            yield
        finally:
            self._graph.resume()

    def _node(self, name: str):
        if self._graph is None:
            raise RuntimeError("the robot session is not started (use `with RobotSession(...)` or .start())")
        return self._graph.nodes.get(name)

    # ------------------------------------------------------------------ policy versions

    @property
    def policy_version(self) -> str | None:
        """The version the policy node runs now (the one the last episode ran), or None."""
        node = self._node("policy_node")
        active = node.holder.active if node is not None else None
        return active.version if active else None

    @property
    def dry_run(self) -> bool:
        """The policy node is in dry run: `run_episodes` records nothing (module docstring)."""
        node = self._node("policy_node")
        return bool(node is not None and node.dry_run)

    @property
    def staged_version(self) -> str | None:
        """A verified version waiting for the next episode start, or None."""
        node = self._node("policy_node")
        staged = node.holder.staged if node is not None else None
        return staged.version if staged else None

    @property
    def sync_status(self):
        """The sync node's `SyncStatus` (deployment followed, last rejection, upload backlog), or None."""
        sync = self._node("sync_node")
        return sync.status if sync is not None else None

    def wait_for_version(self, version: str | None = None, timeout_s: float = 600.0) -> str:
        """Block until the policy node has `version` (any version if None) active or staged, i.e.
        until the next episode runs it; returns the version. Raises RuntimeError at once if the sync
        node rejected that version (the reason is in the message), or after `timeout_s`."""
        policy_node = self._node("policy_node")
        if policy_node is None:
            raise RuntimeError("this session runs no policy node (bringup='teleop')")
        deadline = time.monotonic() + timeout_s
        while True:
            holder = policy_node.holder
            candidates = [p.version for p in (holder.staged, holder.active) if p is not None]
            if candidates and (version is None or version in candidates):
                return version or candidates[0]
            status = self.sync_status
            rejection = status.last_rejection if status is not None else None
            if rejection is not None and (version is None or rejection.version == version):
                raise RuntimeError(
                    f"policy version '{rejection.version}' was rejected by this robot: {rejection.reason}"
                )
            if time.monotonic() > deadline:
                where = (
                    f"; sync node: {status.state} {status.message}".rstrip()
                    if status is not None
                    else " (no learner configured)"
                )
                raise RuntimeError(
                    f"policy version {version or '(any)'} not loaded within {timeout_s:.0f} s{where}"
                )
            time.sleep(0.1)

    # ------------------------------------------------------------------ episodes

    def run_episodes(self, count: int, progress: bool = True) -> list[dict[str, Any]]:
        """Record `count` episodes with the policy (a staged version takes over at the first);
        returns their metadata (`episode_id`, `success`, `num_steps`, `policy_version`, ...).
        In dry run nothing is recorded and each episode lasts the time limit; the summaries say
        `dry_run: True` (module docstring)."""
        if self._node("policy_node") is None:
            raise RuntimeError("this session runs no policy node (bringup='teleop')")
        if self.policy_version is None and self.staged_version is None:
            raise RuntimeError(
                "no policy loaded: give `policy=` or wait_for_version() for the learner's deployed one"
            )
        if self.dry_run:
            # A teleop node left by teleop() is a commander: the lockstep sim would wait for its
            # commands and time would stand still. teleop() brings it back when needed.
            self._graph.remove("teleop")
            self._runner.node.get_logger().warning(
                f"dry run: the policy's actions go to {self.names.policy_dry_run_action}, never to the arm; "
                "each episode "
                f"runs for the time limit ({self.max_steps} steps) and is not recorded"
            )
            return self._episodes(
                "policy_node", "policy", count, f"dry run {self.config.name}", progress, dry_run=True
            )
        return self._episodes("policy_node", "policy", count, f"rollouts {self.config.name}", progress)

    def teleop(
        self,
        count: int,
        device: str = "auto",
        device_port: str = "",
        device_id: str = "",
        progress: bool = True,
    ) -> list[dict[str, Any]]:
        """Record `count` teleoperated episodes (demonstrations) with `device` ("auto" = the
        scripted expert in a simulation that has one, else the keyboard); returns their metadata."""
        resolved = resolve_device(device, self.config)
        if not self.sim and resolved == "keyboard":
            raise ValueError(
                "on a real arm the keyboard device and the episode prompts would share the terminal; use "
                f"`ros2 launch wmpo_ros teleop.launch.py robot:={self.config.name} device:=keyboard` with "
                "`ros2 run wmpo_ros record_keys`, or another device"
            )
        teleop = self._node("teleop")
        if teleop is None or teleop.device != resolved:
            self._graph.remove("teleop")
            values = {**self.values, "device": device, "device_port": device_port, "device_id": device_id}
            (spec,) = [s for s in bringup_graph("teleop", self.config, values) if s.executable == "teleop"]
            self._graph.start_node(spec)
        return self._episodes(
            "teleop",
            recorder_source("teleop", self.config, device),
            count,
            f"teleop {self.config.name}",
            progress,
        )

    def _episodes(
        self, commander: str, source: str, count: int, what: str, progress: bool, dry_run: bool = False
    ) -> list[dict[str, Any]]:
        if count < 0:
            raise ValueError(f"episode count must be >= 0, got {count}")
        recorder = self._node("recorder")
        if recorder.recording:  # between this session's episodes only a foreign start records
            self._runner.discard_unrequested("the recorder is recording")
        result = recorder.set_parameters([Parameter("source", value=source)])[0]
        if not result.successful:
            raise RuntimeError(f"recorder: {result.reason}")
        stall = self.max_steps * STEP_STALL_S + 120.0
        metas: list[dict[str, Any]] = []
        successes = 0
        with tqdm(total=count, desc=what, unit="episode", disable=not progress) as bar:
            for _ in range(count):
                if dry_run:
                    meta = self._runner.run_dry_episode(self.max_steps)
                else:
                    meta = self._runner.run_episode(commander, stall)
                    self.recorded.append(meta)
                metas.append(meta)
                successes += bool(meta.get("success"))
                counts = (
                    {"proposed": meta["num_steps"]}
                    if dry_run
                    else {"success": f"{successes}/{len(metas)}", "steps": meta["num_steps"]}
                )
                bar.set_postfix(**counts, policy=meta.get("policy_version"))
                bar.update(1)
        return metas

    def count_episodes(self, **select: Any) -> int:
        """Committed episodes in the robot's store matching `EpisodeStore.select(**select)`, e.g.
        `count_episodes(source={"teleop", "scripted"})` (all sessions, not only this one)."""
        if not (self.store / "zarr.json").exists():
            return 0
        with EpisodeStore.open(self.store) as store:
            return len(store.select(**select))

    # ------------------------------------------------------------------ uploads

    def wait_uploaded(self, timeout_s: float = 600.0) -> int:
        """Block until the learner has every episode this session recorded, and nothing else is
        waiting in the outbox; returns how many episodes the outbox has sent in all. Raises
        RuntimeError if the learner refused one (the reasons are in the message) or after
        `timeout_s` (what is left stays queued and goes out later, even after a restart)."""
        sync = self._node("sync_node")
        if sync is None or sync.outbox is None:
            raise RuntimeError("this session uploads nothing (no learner_url)")
        ids = [m["episode_id"] for m in self.recorded]
        deadline = time.monotonic() + timeout_s
        while True:
            entries = {eid: sync.outbox.entry(eid) for eid in ids}
            stats = sync.outbox.stats()
            refused = {
                eid: e.last_error for eid, e in entries.items() if e is not None and e.state == "parked"
            }
            if refused:
                raise RuntimeError(
                    f"the learner refused {len(refused)} episode(s): "
                    + "; ".join(f"{k}: {v}" for k, v in refused.items())
                )
            if stats.pending == 0 and all(e is not None and e.state == "sent" for e in entries.values()):
                return stats.sent
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{stats.pending} episode(s) still waiting to reach the learner at "
                    f"{sync.client.base_url} after {timeout_s:.0f} s "
                    f"(they stay queued in {sync.outbox.path} and go out with the next robot session, or "
                    "now with "
                    f"`wmpo outbox push --store {self.store} --learner {sync.client.base_url}`; "
                    f"sync status: {sync.status.message or sync.status.state})"
                )
            time.sleep(0.2)
