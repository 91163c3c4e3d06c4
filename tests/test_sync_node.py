"""The sync node over real DDS and real HTTP: hot-swap without a missed tick, bad weights refused
while the old policy keeps running, rollback, and episode uploads through learner restarts.

Every test runs a real `wmpo serve` subprocess on loopback, a real policy node running real tiny
VLA checkpoints, a real recorder writing a real episode store, and the sync node between them.
A `FakeArm` owns the ROS clock, so the control loop ticks once per `tick()` however loaded the
machine is: assertions count ticks and commands, they never time anything.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import rclpy
import torch
from ros_harness import FakeArm, Graph, wait_until
from safetensors import safe_open
from safetensors.torch import save_file
from service_harness import TOKEN, Learner, start_learner
from std_msgs.msg import String
from std_srvs.srv import Trigger
from wmpo_core.episode_store import EpisodeStore
from wmpo_core.policy import load_policy
from wmpo_core.robot_config import load_robot_config
from wmpo_core.vla.checkpoint import save_checkpoint, tensors_sha256
from wmpo_ros.learner_client import LearnerClient
from wmpo_ros.messages import LATCHED_QOS
from wmpo_ros.policy_node import PolicyNode
from wmpo_ros.recorder_node import RecorderNode
from wmpo_ros.session import RobotSession
from wmpo_ros.sync_node import SyncNode

SIM = load_robot_config("so101_sim")
PERIOD_NS = round(SIM.control_period_s * 1e9)


# ------------------------------------------------------------------ checkpoints


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, tiny_vla) -> Path:
    """Two real tiny VLA checkpoints for so101_sim: sync-v1, and sync-v2 (v1 after a weight update)."""
    root = tmp_path_factory.mktemp("checkpoints")
    model = tiny_vla(SIM)
    save_checkpoint(model, root / "sync-v1", SIM, version="sync-v1")
    with torch.no_grad():
        for p in model.action_head.parameters():
            p.add_(0.05 * torch.randn_like(p))
    save_checkpoint(model, root / "sync-v2", SIM, version="sync-v2", parent_version="sync-v1")
    return root


def variant(
    src: Path,
    dst: Path,
    version: str,
    *,
    tensors: Callable[[dict[str, torch.Tensor]], None] | None = None,
    rehash_tensors: bool = True,
    normalization: dict | None = None,
    manifest: Callable[[dict], None] | None = None,
) -> Path:
    """A copy of checkpoint `src` renamed to `version`, optionally with edited tensors (hash
    recomputed, or left stale with `rehash_tensors=False`), statistics or manifest fields."""
    shutil.copytree(src, dst)
    with safe_open(str(src / "model.safetensors"), "pt") as f:
        meta = dict(f.metadata())
        weights = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    if tensors is not None:
        tensors(weights)
    meta["version"] = version
    if rehash_tensors:
        meta["tensors_sha256"] = tensors_sha256(weights)
    if normalization is not None:
        (dst / "normalization.json").write_text(json.dumps(normalization))
        canonical = json.dumps(normalization, sort_keys=True, separators=(",", ":")).encode()
        meta["normalization_sha256"] = "sha256:" + hashlib.sha256(canonical).hexdigest()
    save_file(weights, str(dst / "model.safetensors"), metadata=meta)
    data = json.loads((dst / "manifest.json").read_text())
    data["version"] = version
    data["tensors_sha256"] = meta["tensors_sha256"]
    if manifest is not None:
        manifest(data)
    (dst / "manifest.json").write_text(json.dumps(data))
    return dst


# ------------------------------------------------------------------ the robot under test


class GatedLoader:
    """The real `load_policy`, held open for versions in `gated` until the test releases it: proves
    the control loop keeps ticking while a new version is loading."""

    def __init__(self):
        self.gated: set[str] = set()
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, spec: str, config):
        if Path(spec).name in self.gated:
            self.entered.set()
            assert self.release.wait(60.0), "the test never released the load"
        return load_policy(spec, config)


class Robot:
    """FakeArm + policy node + recorder + sync node in one executor, like `wmpo deploy --learner`."""

    def __init__(
        self,
        graph: Graph,
        root: Path,
        learner: Learner,
        *,
        swap_at: str = "episode",
        max_steps: int = 6,
        policy: str = "",
        update_policy: bool = True,
    ):
        self.graph, self.root, self.learner = graph, root, learner
        self.store = root / "robot.zarr"
        root.mkdir(parents=True, exist_ok=True)
        (root / "token").write_text(TOKEN)
        self.arm = graph.add(FakeArm(SIM))
        self.recorder = graph.make(
            RecorderNode,
            robot=SIM.name,
            store=str(self.store),
            source="policy",
            max_steps=max_steps,
            use_sim_time=True,
        )
        self.policy = graph.make(
            PolicyNode,
            robot=SIM.name,
            policy=policy,
            autostart=False,
            use_sim_time=True,
            refill_threshold=2,
            swap_at=swap_at,
        )
        self.loader = GatedLoader()
        self.policy.holder._loader = self.loader
        self.versions: list[str] = []
        self.statuses: list[dict] = []
        self.episodes: list[dict] = []
        self.probe = graph.add(rclpy.create_node("sync_test_probe"))
        names = self.policy.names
        self.probe.create_subscription(
            String, names.policy_version, lambda m: self.versions.append(m.data), LATCHED_QOS
        )
        self.probe.create_subscription(
            String, names.sync_status, lambda m: self.statuses.append(json.loads(m.data)), LATCHED_QOS
        )
        self.probe.create_subscription(
            String, names.recorder_episodes, lambda m: self.episodes.append(json.loads(m.data)), 10
        )
        self.rollback_client = self.probe.create_client(Trigger, names.policy_rollback)
        self.sync = self.start_sync(update_policy=update_policy)
        wait_until(
            lambda: (
                self.policy.count_subscribers("/clock") > 0
                and self.arm.count_subscribers(SIM.topics.joint_states) >= 2
            ),
            what="discovery",
        )
        wait_until(
            lambda: (
                self.arm.count_publishers(SIM.topics.command) > 0
                and self.recorder.count_publishers(SIM.topics.command) > 0
            ),
            what="discovery",
        )

        def received() -> bool:  # best-effort frames sent before discovery completed may be lost
            self.arm.publish_observation()
            self.arm.publish_clock()
            return self.policy.control.inputs_since(-1e9) and bool(self.recorder._sync._frames["front"].sent)

        wait_until(received, what="the first observation at the policy node and the recorder")

    def start_sync(self, **params) -> SyncNode:
        return self.graph.make(
            SyncNode,
            robot=SIM.name,
            learner_url=self.learner.url,
            token_file=str(self.root / "token"),
            store=str(self.store),
            long_poll_s=1.0,
            retry_max_s=0.5,
            use_sim_time=True,
            **params,
        )

    def restart_sync(self, **params) -> None:
        self.graph.remove(self.sync)
        self.sync = self.start_sync(**params)

    def tick(self) -> np.ndarray:
        """One control period. /clock goes out once the policy node has the observation and has
        finished the inference it started last tick: a machine on which inference fits in the
        refill budget, so any tick that waits is one the node made wait (episode start, swap)."""

        def delivered(t: float) -> bool:
            control = self.policy.control
            with control.lock:
                return control.inputs_since(t) and not control.inflight

        return self.arm.tick(delivered=delivered)

    def tick_until(self, predicate: Callable[[], bool], what: str, max_ticks: int = 2000) -> int:
        """Keep the control loop running until `predicate`; returns the number of ticks it took."""
        for n in range(max_ticks):
            if predicate():
                return n
            self.tick()
        raise AssertionError(
            f"{what} did not happen within {max_ticks} control ticks; sync status: {self.sync.status}"
        )

    def start_episode(self, record: bool = True) -> None:
        """The episode boundary, as `wmpo deploy` drives it: start recording, enable the policy."""
        if record:
            self.recorder.start()
        self.policy.enable(True)
        # The current tick is served at once, unless it already was (episodes back to back).
        wait_until(
            lambda: self.arm.commands and self.arm.commands[-1][0] == self.arm.now_ns,
            what="the episode's first command",
        )

    def run_episode(self, max_steps: int) -> dict:
        """Tick until the recorder commits the episode (at max_steps); returns its metadata."""
        before = len(self.episodes)
        self.start_episode()
        for _ in range(max_steps + 20):
            if len(self.episodes) > before:
                break
            self.tick()
        # The recorder writes and commits off the control loop: on a loaded machine that can take
        # longer than the ticks above, so wait for it in wall time rather than in more ticks.
        wait_until(
            lambda: len(self.episodes) > before, what=f"the episode commit (sync status: {self.sync.status})"
        )
        return self.episodes[before]

    @property
    def staged(self) -> str | None:
        return self.policy.holder.staged.version if self.policy.holder.staged else None

    @property
    def active(self) -> str | None:
        return self.policy.holder.active.version if self.policy.holder.active else None

    def assert_one_command_per_tick(self) -> None:
        """Every control tick got exactly one command: none missed, none twice, no hold."""
        times = [t for t, _, _ in self.arm.commands]
        assert times == [times[0] + k * PERIOD_NS for k in range(len(times))], (
            "a tick was missed or served twice"
        )
        counters = self.policy.counters
        assert counters["holds"] == 0 and counters["dropped_non_finite"] == 0, counters
        assert counters["commands"] == len(times) == counters["ticks"], counters


@pytest.fixture
def graph():
    g = Graph()
    yield g
    g.close()


@pytest.fixture
def learner(tmp_path):
    service = start_learner(tmp_path / "learner")
    yield service
    service.stop()


@pytest.fixture
def client(learner):
    with LearnerClient(learner.url, TOKEN) as c:
        yield c


def wmpo(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """The `wmpo` command in a subprocess, on this test session's ROS domain."""
    env = {**os.environ, "WMPO_LEARNER_TOKEN": TOKEN}
    result = subprocess.run(
        [sys.executable, "-m", "wmpo_core.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    assert result.returncode == 0, (
        f"wmpo {' '.join(args)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    )
    return result


def publish(client: LearnerClient, checkpoint: Path, deploy: bool = True) -> str:
    version = checkpoint.name
    client.publish_version(checkpoint, version)
    if deploy:
        client.deploy(version, reason="test")
    return version


# ------------------------------------------------------------------ hot-swap


def test_a_deployed_version_is_loaded_while_the_loop_runs_and_swapped_in_at_the_next_episode(
    graph, learner, client, checkpoints, tmp_path
):
    publish(client, checkpoints / "sync-v1")
    robot = Robot(graph, tmp_path / "robot", learner, max_steps=6)
    wait_until(
        lambda: robot.staged == "sync-v1", what="the sync node to stage the deployed version at start-up"
    )

    before = len(robot.episodes)
    robot.start_episode()
    assert robot.active == "sync-v1"
    robot.tick()
    robot.tick()
    robot.loader.gated.add("sync-v2")
    publish(client, checkpoints / "sync-v2")
    # The sync node downloads and verifies v2 and hands it to the policy node, whose load we hold open:
    robot.tick_until(robot.loader.entered.is_set, what="the policy node to start loading sync-v2")
    for _ in range(3):  # the control loop keeps ticking while the new version loads
        robot.tick()
    robot.loader.release.set()
    robot.tick_until(
        lambda: robot.staged == "sync-v2" and len(robot.episodes) > before,
        what="sync-v2 staged and episode 1 committed",
    )
    assert robot.active == "sync-v1", "a staged version must wait for the episode boundary"
    robot.tick()

    second = robot.run_episode(max_steps=6)
    assert robot.active == "sync-v2" and robot.policy.holder.previous.version == "sync-v1"
    robot.assert_one_command_per_tick()
    assert (
        robot.policy.counters["late_ticks"] == 2
    )  # each episode's first tick waits for its first chunk; nothing else waits

    first = robot.episodes[before]
    assert first["policy_version"] == "sync-v1" and "policy_versions" not in first["extra"]
    assert second["policy_version"] == "sync-v2" and "policy_versions" not in second["extra"]
    assert first["num_steps"] == second["num_steps"] == 6
    assert robot.versions == ["sync-v1", "sync-v2"]
    store = EpisodeStore.open(robot.store)
    assert [m.policy_version for m in store] == ["sync-v1", "sync-v2"]
    wait_until(
        lambda: robot.statuses and robot.statuses[-1]["state"] == "running",
        what="the status to show sync-v2 running",
    )
    status = robot.statuses[-1]
    assert (
        status["active_version"] == status["deployed_version"] == "sync-v2"
        and status["last_rejection"] is None
    )


def test_swap_at_chunk_changes_the_policy_mid_episode_without_a_late_tick(
    graph, learner, client, checkpoints, tmp_path
):
    publish(client, checkpoints / "sync-v1")
    robot = Robot(graph, tmp_path / "robot", learner, swap_at="chunk", max_steps=10_000)
    wait_until(lambda: robot.staged == "sync-v1", what="the sync node to stage the deployed version")
    robot.start_episode()
    for _ in range(3):
        robot.tick()
    publish(client, checkpoints / "sync-v2")
    robot.tick_until(lambda: robot.active == "sync-v2", what="the chunk-boundary swap")
    for _ in range(5):
        robot.tick()
    episode = robot.recorder.stop()
    robot.assert_one_command_per_tick()
    assert (
        robot.policy.counters["late_ticks"] == 1
    )  # only the episode's first tick: the swap made no tick wait
    assert episode["policy_version"] == "sync-v1" and episode["extra"]["policy_versions"] == [
        "sync-v1",
        "sync-v2",
    ]
    assert robot.versions == ["sync-v1", "sync-v2"]


def test_rollback_service_returns_to_the_previous_version(graph, learner, client, checkpoints, tmp_path):
    publish(client, checkpoints / "sync-v1")
    robot = Robot(graph, tmp_path / "robot", learner, max_steps=3)
    wait_until(lambda: robot.staged == "sync-v1", what="sync-v1 staged")
    assert robot.run_episode(3)["policy_version"] == "sync-v1"
    publish(client, checkpoints / "sync-v2")
    robot.tick_until(lambda: robot.staged == "sync-v2", what="sync-v2 staged")
    assert robot.run_episode(3)["policy_version"] == "sync-v2"

    status = wmpo("policy", "status")
    assert "policy_version: sync-v2" in status.stdout and "previous_version: sync-v1" in status.stdout
    assert "deployed_version: sync-v2" in status.stdout
    assert "staged sync-v1" in wmpo("policy", "rollback").stdout  # <ns>/policy/rollback from another process
    assert robot.staged == "sync-v1" and robot.active == "sync-v2"  # active from the next episode
    assert robot.run_episode(3)["policy_version"] == "sync-v1"
    assert robot.active == "sync-v1"
    # The learner still deploys sync-v2: the sync node does not undo the operator's rollback.
    robot.tick()
    assert robot.staged is None and robot.sync.status.deployed_version == "sync-v2"
    assert robot.versions == ["sync-v1", "sync-v2", "sync-v1"]
    robot.assert_one_command_per_tick()

    # The learner's own rollback reaches the robot like a deploy, even when it undoes a version the
    # robot has staged but not yet run: the running version is staged again in its place.
    client.rollback(reason="test")  # learner: sync-v2 -> sync-v1, which the robot already runs
    robot.tick_until(lambda: robot.sync.status.deployed_version == "sync-v1", what="the learner's rollback")
    client.deploy("sync-v2")
    robot.tick_until(lambda: robot.staged == "sync-v2", what="sync-v2 staged again")
    client.rollback(reason="test")  # before the robot's next episode
    robot.tick_until(lambda: robot.staged == "sync-v1", what="sync-v1 staged in place of sync-v2")
    assert robot.run_episode(3)["policy_version"] == "sync-v1"
    assert robot.versions == ["sync-v1", "sync-v2", "sync-v1"]
    robot.assert_one_command_per_tick()


# ------------------------------------------------------------------ bad weights


def test_bad_weights_are_refused_while_the_old_policy_keeps_running(
    graph, learner, client, checkpoints, tmp_path, capfd
):
    v1 = checkpoints / "sync-v1"
    bad = tmp_path / "bad"
    bad.mkdir()
    publish(client, v1)
    robot = Robot(graph, tmp_path / "robot", learner)
    wait_until(lambda: robot.staged == "sync-v1", what="sync-v1 staged")
    robot.start_episode(record=False)
    robot.tick()

    def perturb(weights):
        name = min(weights)
        weights[name] = weights[name] + 1.0

    def rejected(version: str, reason: str) -> None:
        """The rejection is reported while the control loop keeps running the old policy."""

        def seen() -> bool:
            last = robot.sync.status.last_rejection
            return last is not None and last.version == version

        robot.tick_until(seen, what=f"the rejection of {version}")
        assert reason in robot.sync.status.last_rejection.reason, robot.sync.status.last_rejection
        assert robot.active == "sync-v1" and robot.staged is None
        for _ in range(2):
            robot.tick()
        assert not (robot.sync.cache / version).exists()

    # 1. Bytes changed on the learner after publishing: the client's per-file sha256 check refuses them.
    tampered = publish(client, variant(v1, bad / "tampered-file", "tampered-file"), deploy=False)
    robot.graph.remove(robot.sync)  # the robot's sync process is down while the registry copy is altered
    client.deploy(tampered)
    weights = learner.registry / "versions" / tampered / "files" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF
    weights.write_bytes(bytes(data))
    robot.sync = robot.start_sync()
    rejected(tampered, "sha256")

    # 2. Weights that do not match the tensor hash recorded inside the checkpoint, published as they
    #    are (so every file matches the registry listing): only the load verification catches them.
    rejected(
        publish(
            client,
            variant(v1, bad / "tampered-tensors", "tampered-tensors", tensors=perturb, rehash_tensors=False),
        ),
        "weights do not match their recorded sha256",
    )
    # 3. Trained for another robot config, and for another version of this one.
    rejected(
        publish(
            client,
            variant(
                v1,
                bad / "other-robot",
                "other-robot",
                manifest=lambda m: m["robot"].update(name="so101_real"),
            ),
        ),
        "trained for robot config 'so101_real'",
    )
    rejected(
        publish(
            client,
            variant(
                v1,
                bad / "old-config",
                "old-config",
                manifest=lambda m: m["robot"].update(content_hash="sha256:" + "0" * 64),
            ),
        ),
        "different version of robot config",
    )
    # 4. Wrong action dimensions (statistics for 5 dims; the manifest claims this robot).
    rejected(
        publish(
            client,
            variant(
                v1,
                bad / "five-dims",
                "five-dims",
                normalization={"action": {"q01": [-1] * 5, "q99": [1] * 5}, "state": None},
            ),
        ),
        "action dims",
    )
    # 5. Non-finite actions: statistics whose range overflows float64.
    rejected(
        publish(
            client,
            variant(
                v1,
                bad / "overflow",
                "overflow",
                normalization={"action": {"q01": [-1e308] * 4, "q99": [1e308] * 4}, "state": None},
            ),
        ),
        "non-finite actions",
    )
    # 6. A checkpoint that calls itself something other than what was deployed.
    rejected(
        publish(
            client, variant(v1, bad / "renamed", "renamed", manifest=lambda m: m.update(version="sync-v9"))
        ),
        "calls itself 'sync-v9'",
    )

    robot.assert_one_command_per_tick()  # control never stopped, no hold, no missed tick
    assert robot.versions == ["sync-v1"]
    err = capfd.readouterr().err
    for version in (
        "tampered-file",
        "tampered-tensors",
        "other-robot",
        "old-config",
        "five-dims",
        "overflow",
        "renamed",
    ):
        lines = [line for line in err.splitlines() if f"rejected policy version '{version}'" in line]
        assert len(lines) == 1 and "[ERROR]" in lines[0] and "still running sync-v1" in lines[0], lines
    status = robot.statuses[-1]
    assert status["state"] == "rejected" and status["last_rejection"]["version"] == "renamed"
    assert any(s.name == "wmpo/sync_node" and s.level == s.ERROR for s in [robot.sync.diagnostics()])

    # A good version after all that is accepted and swapped in at the next episode.
    publish(client, checkpoints / "sync-v2")
    robot.tick_until(lambda: robot.staged == "sync-v2", what="sync-v2 staged")
    robot.start_episode(record=False)
    assert robot.active == "sync-v2"


# ------------------------------------------------------------------ episodes up


def test_episodes_reach_the_learner_exactly_once_through_learner_and_robot_restarts(
    graph, learner, client, tmp_path
):
    robot = Robot(
        graph, tmp_path / "robot", learner, policy="hold:gripper=1.0", max_steps=3, update_policy=False
    )
    recorded = [robot.run_episode(3)["episode_id"] for _ in range(2)]
    wait_until(lambda: robot.sync.outbox.stats().sent == 2, what="the first two uploads")
    assert client.list_episodes().total == 2

    learner.kill()  # SIGKILL: the learner vanishes mid-run
    recorded += [robot.run_episode(3)["episode_id"] for _ in range(2)]
    wait_until(
        lambda: (
            robot.sync.outbox.stats().pending == 2 and robot.sync.outbox.entries("pending")[0].attempts >= 1
        ),
        what="the uploads to fail and wait",
    )
    robot.restart_sync(update_policy=False)  # the robot's sync process restarts while the learner is down
    recorded.append(robot.run_episode(3)["episode_id"])
    learner.start()  # same port, same store
    wait_until(lambda: robot.sync.outbox.stats().pending == 0, timeout=60.0, what="the backlog to drain")

    stored = client.list_episodes()
    assert stored.total == 5 and sorted(m.episode_id for m in stored.episodes) == sorted(recorded)
    assert {e.episode_id for e in robot.sync.outbox.entries("sent")} == set(recorded)
    assert robot.sync.outbox.stats().parked == 0
    local = EpisodeStore.open(robot.store)
    for meta in stored.episodes:
        assert meta.model_dump(exclude={"extra"}) == local.meta(meta.episode_id).model_dump(exclude={"extra"})
    # Re-announcing or re-queueing an uploaded episode sends nothing twice.
    robot.restart_sync(update_policy=False)
    assert robot.sync.outbox.stats().pending == 0 and client.list_episodes().total == 5


# ------------------------------------------------------------------ the in-process bring-up


def test_wmpo_deploy_with_a_learner_runs_the_deployed_version_and_uploads_its_episodes(
    learner, client, checkpoints, tmp_path
):
    """`wmpo deploy --learner` as the main job runs it: the real MuJoCo arm, no --policy."""
    publish(client, checkpoints / "sync-v1")
    store = tmp_path / "rollouts"
    result = wmpo(
        "deploy",
        "--robot",
        "so101_sim",
        "--learner",
        learner.url,
        "--episodes",
        "2",
        "--max-steps",
        "3",
        "--store",
        str(store),
        "--real-time-factor",
        "0",
    )
    assert "running sync-v1" in result.stderr and "uploaded 2/2 episodes" in result.stderr
    local = list(EpisodeStore.open(store))
    assert [m.policy_version for m in local] == ["sync-v1", "sync-v1"] and all(
        m.num_steps == 3 for m in local
    )
    remote = client.list_episodes()
    assert sorted(m.episode_id for m in remote.episodes) == sorted(m.episode_id for m in local)
    assert (
        store.parent / "rollouts.policies" / "sync-v1" / "model.safetensors"
    ).is_file()  # the verified copy it ran


def test_robot_session_records_demos_and_rollouts_and_follows_the_learners_deployments(
    learner, client, checkpoints, tmp_path
):
    """The Python API `wmpo run` drives: one session on the real MuJoCo arm records demonstrations,
    runs each version the learner deploys (hot-swapped at an episode boundary) and uploads it all."""
    token = tmp_path / "token"
    token.write_text(TOKEN)
    with RobotSession(
        "so101_sim", store=tmp_path / "robot.zarr", learner_url=learner.url, token_file=token, max_steps=3
    ) as robot:
        demos = robot.teleop(2, progress=False)
        assert [m["source"] for m in demos] == ["scripted", "scripted"] and robot.count_episodes(
            source={"teleop", "scripted"}
        ) == 2
        with pytest.raises(RuntimeError, match="no policy loaded"):
            robot.run_episodes(1)
        v1 = publish(client, checkpoints / "sync-v1")
        assert robot.wait_for_version(v1, timeout_s=120) == v1
        first = robot.run_episodes(2, progress=False)
        assert robot.policy_version == v1
        v2 = publish(client, checkpoints / "sync-v2")
        assert (
            robot.wait_for_version(v2, timeout_s=120) == v2 and robot.policy_version == v1
        )  # staged: the next episode runs it
        second = robot.run_episodes(1, progress=False)
        assert robot.policy_version == v2
        # A version this robot must not run fails the wait at once, with the reason; v2 keeps running.
        other = publish(
            client,
            variant(
                checkpoints / "sync-v1",
                tmp_path / "other-robot",
                "other-robot",
                manifest=lambda m: m["robot"].update(name="so101_real"),
            ),
        )
        with pytest.raises(
            RuntimeError,
            match="'other-robot' was rejected by this robot: trained for robot config 'so101_real'",
        ):
            robot.wait_for_version(other, timeout_s=120)
        assert robot.policy_version == v2 and robot.staged_version is None
        robot.wait_uploaded(timeout_s=120)

    episodes = demos + first + second
    assert [(m["source"], m["policy_version"]) for m in episodes] == [("scripted", None)] * 2 + [
        ("policy", v1)
    ] * 2 + [("policy", v2)]
    assert [m["env_seed"] for m in episodes] == [0, 1, 2, 3, 4] and all(m["num_steps"] == 3 for m in episodes)
    remote = {m.episode_id: m for m in client.list_episodes().episodes}
    assert sorted(remote) == sorted(m["episode_id"] for m in episodes)
    assert all(remote[m["episode_id"]].policy_version == m["policy_version"] for m in episodes)
