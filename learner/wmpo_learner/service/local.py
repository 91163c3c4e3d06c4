"""A learner service in a child process on loopback, for jobs that run the whole loop on one machine.

`wmpo run` needs the same service a real deployment talks to (uploads, registry, long-poll) but no
separate terminal: this starts `wmpo serve` as a child process with a fresh random token, waits
until it answers /v1/health, and stops it (SIGINT, then SIGKILL) when the job ends. A child
process rather than a thread keeps the service's event loop and store lock apart from the
training jobs, exactly as on two machines.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalService:
    """`wmpo serve` on 127.0.0.1 with its store, registry and runs under `root`."""

    def __init__(self, root: Path, robot: str, port: int | None = None, startup_timeout_s: float = 120.0):
        self.root = Path(root)
        self.robot = robot
        self.port = port or free_port()
        self.startup_timeout_s = startup_timeout_s
        self.token_file = self.root / "learner.token"
        self._proc: subprocess.Popen | None = None

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
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:]) if self.log_path.exists() else ""

    def start(self) -> LocalService:
        self.root.mkdir(parents=True, exist_ok=True)
        if not self.token_file.exists():
            self.token_file.write_text(secrets.token_urlsafe(32) + "\n")
            self.token_file.chmod(0o600)
        cmd = [
            sys.executable, "-m", "wmpo_core.cli", "serve", "--store", str(self.store), "--registry", str(self.registry),
            "--runs", str(self.root / "runs"), "--robot", self.robot, "--host", "127.0.0.1", "--port", str(self.port),
            "--token-file", str(self.token_file), "--log-level", "warning",
        ]
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"the learner service exited with code {self._proc.returncode}; its log ({self.log_path}):\n{self._log_tail()}")
            try:
                if httpx.get(f"{self.url}/v1/health", timeout=1.0).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the learner service did not answer within {self.startup_timeout_s:.0f} s; its log:\n{self._log_tail()}")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGINT)
            try:
                self._proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def __enter__(self) -> LocalService:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
