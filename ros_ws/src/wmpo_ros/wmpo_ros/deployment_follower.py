"""The sync node's policy-update loop without ROS: follow the learner's deployment, retry with
backoff, and hand each new version to the policy node only after it is downloaded and verified.

    follower = DeploymentFollower(client, config, cache, stage=set_policy_parameter, ...)
    threading.Thread(target=follower.run).start()     # until `stopping` is set

One deployed version is acted on once: downloaded into the cache (the client checks every file's
size and sha256), checked against its manifest (`wmpo_ros.policy_versions`), then `stage(path)`,
which the node implements by setting the policy node's `policy` parameter and waiting for the
load's outcome. A version that fails any step is rejected (reported, deleted from the cache, not
retried until the learner deploys another). A failure that may pass (`RetryLater`, or a
retryable `LearnerError`) is retried with jittered exponential backoff; while the learner does
not answer, its health endpoint is probed every `PROBE_INTERVAL_S`, so work resumes within
seconds of its return instead of at the end of a long backoff.
"""

from __future__ import annotations

import random
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from wmpo_core.ids import UnsafeNameError, child_path
from wmpo_core.robot_config import RobotConfig

from wmpo_ros.learner_client import IntegrityError, LearnerClient, LearnerError, LearnerRejected
from wmpo_ros.outbox import Backoff
from wmpo_ros.policy_versions import VersionRejected, check_manifest, settled_state, versions_to_prune
from wmpo_ros.sync_status import Rejection, SyncStatus

PROBE_INTERVAL_S = 2.0
"""While the learner does not answer, its health endpoint is probed this often (jittered)."""


class RetryLater(Exception):
    """A step that failed for a reason that may pass (learner or policy node unavailable)."""


class DeploymentFollower:
    """`run()` is the loop (one thread). The node supplies what needs ROS:

    - `find_policy_node()`: block until the policy node is there (and its running version known);
    - `stage(path)`: make the policy node load and stage `path`; raise VersionRejected with the
      reason it refused it, RetryLater if it could not be asked or did not answer;
    - `status()` / `update(derive=None, **changes)`: the sync status (wmpo_ros.sync_status);
    - `on_event(kind, message)`: what to log: 'retry' (a warning worth throttling), 'error', 'info'.
    """

    def __init__(
        self,
        client: LearnerClient,
        config: RobotConfig,
        cache: Path,
        *,
        long_poll_s: float,
        keep_versions: int,
        backoff: Backoff,
        stopping: threading.Event,
        find_policy_node: Callable[[], None],
        stage: Callable[[Path], None],
        status: Callable[[], SyncStatus],
        update: Callable[..., None],
        on_event: Callable[[str, str], None],
        rng: random.Random | None = None,
    ):
        self.client = client
        self.config = config
        self.cache = cache
        self._long_poll_s = long_poll_s
        self._keep_versions = keep_versions
        self.backoff = backoff
        self._stopping = stopping
        self._find_policy_node = find_policy_node
        self._stage = stage
        self._status = status
        self._update = update
        self._on_event = on_event
        self._rng = rng or random.Random()

    def run(self) -> None:
        handled: str | None = None  # the deployed version last acted on (staged, running or rejected)
        failures = 0
        seen_policy_node = False
        while not self._stopping.is_set():
            try:
                if not seen_policy_node:
                    self._find_policy_node()
                    seen_policy_node = True
                deployment = self.client.wait_for_deployed(after=handled, timeout_s=self._long_poll_s)
                self._update(learner_reachable=True)
                version = deployment.version
                if deployment.changed and version is not None and version != handled:
                    self.apply(version)
                    handled = version
                failures = 0
            except (LearnerError, RetryLater) as exc:
                if self._stopping.is_set():
                    return
                failures += 1
                delay = self.backoff.delay(failures, self._rng)
                unreachable = isinstance(exc, LearnerError) and exc.retryable
                self._update(
                    state="retrying",
                    message=f"{exc}; retrying in {delay:.0f} s",
                    **({"learner_reachable": False} if unreachable else {}),
                )
                self._on_event("retry", f"policy update: {exc}; retrying in {delay:.1f} s")
                if unreachable and not self.client.answers():
                    self.wait_for_learner(delay)  # back as soon as it answers, not after the backoff
                else:
                    self._stopping.wait(delay)
            except Exception as exc:  # a bug here must not end the updates silently
                if self._stopping.is_set():
                    return  # the node's handles are going away under this thread: nothing to report
                self._on_event("error", f"policy update failed unexpectedly: {type(exc).__name__}: {exc}")
                self._stopping.wait(self.backoff.max_s)

    def wait_for_learner(self, longest_s: float) -> None:
        """Wait until the learner answers its health probe again, at most `longest_s`."""
        deadline = time.monotonic() + longest_s
        while not self._stopping.is_set() and time.monotonic() < deadline:
            self._stopping.wait(
                min(PROBE_INTERVAL_S * (0.5 + self._rng.random() / 2), max(0.0, deadline - time.monotonic()))
            )
            if self.client.answers():
                return

    def apply(self, version: str) -> None:
        """Download, verify and stage one deployed version; a rejection is reported, not raised."""
        self._update(deployed_version=version, message="")
        status = self._status()
        settled = settled_state(version, status.active_version, status.staged_version)
        if settled is not None:
            self._update(state=settled)
            return
        try:
            self._update(state="downloading")
            try:
                path = self.client.download_version(version, self.cache)
            except IntegrityError as exc:
                raise VersionRejected(str(exc)) from None
            except LearnerRejected as exc:
                if exc.retryable:
                    raise
                raise VersionRejected(f"the learner refused the download: {exc.detail}") from None
            check_manifest(path, version, self.config)
            self._update(state="loading")
            self._stage(path)
        except VersionRejected as exc:
            self.reject(version, str(exc))
            return
        self._on_event("info", f"policy version '{version}' verified and staged in the policy node")
        self._update(lambda status: status.on_staged(version))
        self.prune_cache(keep=version)

    def reject(self, version: str, reason: str) -> None:
        running = self._status().active_version or "no policy"
        self._on_event(
            "error",
            f"rejected policy version '{version}' from the learner: {reason} (still running {running})",
        )
        try:  # the version came from the network: delete only inside the cache
            shutil.rmtree(child_path(self.cache, version, "rejected policy version"), ignore_errors=True)
        except UnsafeNameError as exc:
            self._on_event("error", str(exc))
        self._update(state="rejected", last_rejection=Rejection(version, reason, time.time()))

    def prune_cache(self, keep: str) -> None:
        protected: set[Any] = {keep, self._status().active_version}
        for old in versions_to_prune(self.cache, protected, self._keep_versions):
            shutil.rmtree(old, ignore_errors=True)
