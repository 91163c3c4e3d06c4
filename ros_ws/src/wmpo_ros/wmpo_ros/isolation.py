"""DDS isolation of an in-process robot graph: its own ROS domain id and localhost-only discovery.

Why: every simulated SO-101 graph uses the same names (/so101/..., /clock). Two of them on one
host in the same domain (two `wmpo run`s, a demo next to a test) see each other's frames,
commands, clocks, recorder announcements and service calls: episodes get foreign frames, one
graph's sync node tries to upload the other's episodes, one graph's episode runner starts the
other's recorder. So a simulated graph brought up by `wmpo run|robot|teleop|deploy` or
`RobotSession` gets, by default,

- its own domain id, picked free on this host: a lease (an flock on a file in the temp directory,
  released when the process dies, however it dies) that no other wmpo graph holds, and whose
  first DDS participant port is not bound by anyone else (another ROS program in that domain);
- `ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST`, so nothing off this machine joins it.

Overrides: `--ros-domain N` (or `ros_domain=N`) uses domain N; an explicitly set `ROS_DOMAIN_ID`
is respected; `--ros-domain env` keeps the environment as it is. A real arm keeps the user's
environment unless asked (`--ros-domain auto` or N): its drivers and cameras may be other
processes, or other machines, that the user configured. A `ROS_AUTOMATIC_DISCOVERY_RANGE` the
user set is never overridden.
"""

from __future__ import annotations

import fcntl
import os
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal

DOMAIN_ENV = "ROS_DOMAIN_ID"
RANGE_ENV = "ROS_AUTOMATIC_DISCOVERY_RANGE"
AUTO_DOMAINS = range(1, 100)
"""Domains picked automatically: not 0 (plain ROS's default) and below the 100-199 the test
sessions use (tests/conftest.py); all of them map to DDS ports below Linux's ephemeral range."""
MAX_DOMAIN_ID = 232
"""The largest domain id ROS 2 accepts on Linux."""

DomainRequest = int | Literal["auto", "env"] | None
"""None: the default for the arm (sim: isolated, unless ROS_DOMAIN_ID is set; real arm: the
environment); "auto": pick a free domain; "env": the environment as it is; an int: that domain."""


def parse_domain(text: str) -> int | Literal["auto", "env"]:
    """argparse type of `--ros-domain`: 'auto', 'env' or a domain id 0..232."""
    if text in ("auto", "env"):
        return text  # type: ignore[return-value]
    try:
        value = int(text)
    except ValueError:
        raise ValueError(
            f"--ros-domain must be 'auto', 'env' or a domain id 0..{MAX_DOMAIN_ID}, got '{text}'"
        ) from None
    if not 0 <= value <= MAX_DOMAIN_ID:
        raise ValueError(f"--ros-domain must be a domain id 0..{MAX_DOMAIN_ID}, got {value}")
    return value


def participant_port(domain_id: int) -> int:
    """The unicast discovery port of a domain's first DDS participant (RTPS well-known ports)."""
    return 7400 + 250 * domain_id + 10


@dataclass
class GraphIsolation:
    """What a graph's rclpy context uses: pass `domain_id` to `rclpy.init`; `release()` when done."""

    domain_id: int | None
    """None: whatever the environment says (ROS_DOMAIN_ID, else 0)."""
    how: str
    """Why this domain: 'picked free on this host', '--ros-domain', 'ROS_DOMAIN_ID', 'the environment'."""
    discovery: str
    """ROS_AUTOMATIC_DISCOVERY_RANGE in effect ('' = the ROS default)."""
    _lease: IO[bytes] | None = field(default=None, repr=False)

    def describe(self) -> str:
        """One line for the terminal: which domain, why, and how to reach the graph."""
        if self.domain_id is None:
            domain = os.environ.get(DOMAIN_ENV, "0")
            return (
                f"ROS 2 graph: domain {domain} and discovery {self.discovery or 'default'} "
                "from the environment (not isolated)"
            )
        reach = f"{DOMAIN_ENV}={self.domain_id}" + (
            f" {RANGE_ENV}={self.discovery}" if self.discovery else ""
        )
        return (
            f"ROS 2 graph: domain {self.domain_id} ({self.how}), "
            f"discovery {self.discovery or 'default'}; reach it with {reach}"
        )

    def release(self) -> None:
        if self._lease is not None:
            self._lease.close()  # closing the descriptor drops the flock
            self._lease = None


def _lease(domain_id: int) -> IO[bytes] | None:
    """Hold domain `domain_id` for this process (flock, dropped at exit however it exits), or None."""
    path = Path(tempfile.gettempdir()) / f"wmpo-ros-domain-{domain_id}.lock"
    try:
        handle = open(path, "a+b")  # noqa: SIM115 - held open for the graph's lifetime
    except OSError:  # e.g. created by another user: theirs
        return None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        return None
    handle.truncate(0)
    handle.write(f"{os.getpid()}\n".encode())
    handle.flush()
    return handle


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind(("", port))
        except OSError:
            return False
    return True


def pick_free_domain() -> tuple[int, IO[bytes]]:
    """A domain id no other wmpo graph on this host holds and no DDS participant uses, with its lease.
    The search starts at a pid-derived id, so concurrent jobs rarely even compete for one."""
    start = os.getpid() % len(AUTO_DOMAINS)
    for k in range(len(AUTO_DOMAINS)):
        domain_id = AUTO_DOMAINS[(start + k) % len(AUTO_DOMAINS)]
        lease = _lease(domain_id)
        if lease is None:
            continue
        if _port_free(participant_port(domain_id)):
            return domain_id, lease
        lease.close()
    raise RuntimeError(
        f"no free ROS domain id in {AUTO_DOMAINS.start}..{AUTO_DOMAINS.stop - 1} on this host; choose one "
        "with --ros-domain N"
    )


def isolate_graph(requested: DomainRequest, sim: bool) -> GraphIsolation:
    """Decide the domain and discovery range of one graph (module docstring); call before rclpy.init.

    Sets ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST in this process when the graph is isolated and
    the user has not set it (rcl reads it at rclpy.init)."""
    if requested not in (None, "auto", "env") and not (
        isinstance(requested, int) and 0 <= requested <= MAX_DOMAIN_ID
    ):
        raise ValueError(
            f"ros_domain must be None, 'auto', 'env' or a domain id 0..{MAX_DOMAIN_ID}, got {requested!r}"
        )
    if requested == "env" or (requested is None and not sim):
        return GraphIsolation(None, "the environment", os.environ.get(RANGE_ENV, ""))
    os.environ.setdefault(RANGE_ENV, "LOCALHOST")
    if isinstance(requested, int):
        return GraphIsolation(requested, "--ros-domain", os.environ[RANGE_ENV])
    env_domain = os.environ.get(DOMAIN_ENV, "").strip()
    if requested is None and env_domain:
        if not env_domain.isdigit() or int(env_domain) > MAX_DOMAIN_ID:
            raise ValueError(f"{DOMAIN_ENV} must be a domain id 0..{MAX_DOMAIN_ID}, got '{env_domain}'")
        return GraphIsolation(int(env_domain), DOMAIN_ENV, os.environ[RANGE_ENV])
    domain_id, lease = pick_free_domain()
    return GraphIsolation(domain_id, "picked free on this host", os.environ[RANGE_ENV], lease)
