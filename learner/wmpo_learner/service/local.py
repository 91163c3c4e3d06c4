"""A learner service in a child process on loopback, for jobs that run the whole loop on one machine.

`wmpo run` needs the same service a real deployment talks to (uploads, registry, long-poll) but no
separate terminal: this starts `wmpo serve` as a child process with a fresh random token, waits
until it answers /v1/health, and stops it (SIGINT, then SIGKILL) when the job ends. A child
process rather than a thread keeps the service's event loop and store lock apart from the
training jobs, exactly as on two machines.

The child never outlives its job, however the job dies (kill -9 included): it runs
`python -m wmpo_learner.service.local OWNER_PID serve ...`, which asks the kernel for SIGTERM
when its parent dies (Linux PR_SET_PDEATHSIG, set before the service starts; a parent already
gone by then ends it at once), and it runs in its own process group, so a Ctrl-C in the terminal
reaches the job, which stops the service in order. The job holds `<root>/service.lock` while its
service runs; a new job on the same root takes the lock first, so any service still serving that
root's store is a leftover of a dead job (e.g. one started before this guard existed): it is
ended, and said so, instead of blocking the store ("another learner service uses this spool
directory"). The kernel signals the child when the *thread* that started it exits, so call
`start()` from the thread that lives as long as the job (the main thread, as `wmpo run` does).
"""

from __future__ import annotations

import ctypes
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import IO

import httpx
from wmpo_core.pid_lock import LockHeld, hold_lock

PR_SET_PDEATHSIG = 1
"""prctl option (linux/prctl.h): the signal this process gets when its parent thread exits."""
STALE_STOP_S = 20.0
"""How long a leftover service gets to stop on SIGTERM before SIGKILL."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def die_with_parent(owner_pid: int) -> None:
    """In a child: SIGTERM when the parent dies; exit now if it is already gone (the race
    between the fork and this call)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != owner_pid:
        sys.exit(f"the job that started this learner service (pid {owner_pid}) is gone; not starting")


def serving_processes(store: Path) -> list[int]:
    """Pids of `wmpo serve` processes (ours or any other) whose --store is `store` (Linux /proc;
    a relative --store is resolved against the process's working directory)."""
    store = store.resolve()
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            if "serve" not in argv or "--store" not in argv[:-1]:
                continue
            path = Path(argv[argv.index("--store") + 1])
            if not path.is_absolute():
                path = Path(os.readlink(entry / "cwd")) / path
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if path.resolve() == store and int(entry.name) != os.getpid():
            found.append(int(entry.name))
    return found


def end_process(pid: int, timeout_s: float = STALE_STOP_S) -> None:
    """SIGTERM, then SIGKILL after `timeout_s`; returns once `pid` is gone."""
    try:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not _alive(pid):
                return
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)
        while _alive(pid):
            time.sleep(0.05)
    except ProcessLookupError:
        return


def _alive(pid: int) -> bool:
    """Running (a zombie, dead but not yet reaped by its parent, counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


class LocalService:
    """`wmpo serve` on 127.0.0.1 with its store, registry and runs under `root`."""

    def __init__(self, root: Path, robot: str, port: int | None = None, startup_timeout_s: float = 120.0):
        self.root = Path(root).absolute()
        self.robot = robot
        self.port = port or free_port()
        self.startup_timeout_s = startup_timeout_s
        self.token_file = self.root / "learner.token"
        self._proc: subprocess.Popen | None = None
        self._lock: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def store(self) -> Path:
        return self.root / "learner.zarr"

    @property
    def registry(self) -> Path:
        return self.root / "registry"

    @property
    def log_path(self) -> Path:
        return self.root / "service.log"

    def _log_tail(self, lines: int = 30) -> str:
        return (
            "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
            if self.log_path.exists()
            else ""
        )

    @property
    def lock_path(self) -> Path:
        return self.root / "service.lock"

    def _take_root(self) -> None:
        """Hold `<root>/service.lock` (flock: dropped when this process dies, however it dies)."""
        try:
            self._lock = hold_lock(self.lock_path)
        except LockHeld as exc:
            raise RuntimeError(
                f"another job (pid {exc.holder}) runs the learner service of {self.root}; is a second `wmpo "
                "run` using this --out?"
            ) from None

    def _end_leftovers(self) -> None:
        """With the root's lock held, a service still serving its store belongs to a dead job."""
        for pid in serving_processes(self.store):
            print(
                f"ending a learner service left running by an earlier job on {self.root} (pid {pid})",
                file=sys.stderr,
                flush=True,
            )
            end_process(pid)

    def start(self) -> LocalService:
        self.root.mkdir(parents=True, exist_ok=True)
        self._take_root()
        try:
            self._end_leftovers()
            if not self.token_file.exists():
                self.token_file.write_text(secrets.token_urlsafe(32) + "\n")
                self.token_file.chmod(0o600)
            cmd = [
                sys.executable, "-m", "wmpo_learner.service.local", str(os.getpid()),
                "serve", "--store", str(self.store), "--registry", str(self.registry),
                "--runs", str(self.root / "runs"), "--robot", self.robot,
                "--host", "127.0.0.1", "--port", str(self.port),
                "--token-file", str(self.token_file), "--log-level", "warning",
            ]  # fmt: skip
            with open(self.log_path, "ab") as log:
                self._proc = subprocess.Popen(
                    cmd, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ), process_group=0
                )
        except BaseException:
            self.stop()
            raise
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self.stop()
                raise RuntimeError(
                    f"the learner service exited with code {code}; its log "
                    f"({self.log_path}):\n{self._log_tail()}"
                )
            try:
                if httpx.get(f"{self.url}/v1/health", timeout=1.0).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(
            f"the learner service did not answer within {self.startup_timeout_s:.0f} s; its "
            f"log:\n{self._log_tail()}"
        )

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGINT)
            try:
                self._proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def __enter__(self) -> LocalService:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _child_main(argv: list[str]) -> int:
    """`python -m wmpo_learner.service.local OWNER_PID <wmpo arguments>`: the wmpo command, bound
    to the life of the job OWNER_PID (the parent that started it)."""
    if not argv or not argv[0].isdigit():
        print(
            "usage: python -m wmpo_learner.service.local OWNER_PID <wmpo command and arguments>",
            file=sys.stderr,
        )
        return 2
    die_with_parent(int(argv[0]))
    from wmpo_core.cli import main

    return main(argv[1:])


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
