"""Test helpers for the learner service: a real `wmpo serve` process on loopback, real stores."""

from __future__ import annotations

import hashlib
import io
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from wmpo_core.episode_store import EpisodeStore
from wmpo_core.protocol.archive import write_dir_archive
from wmpo_core.robot_config import load_robot_config
from wmpo_learner.service.local import free_port

TOKEN = "test-token-0123456789abcdef"
WRONG_TOKEN = "test-token-0123456789abcdeX"


@dataclass
class Learner:
    """A `wmpo serve` subprocess with its own store, registry, runs and spool under `root`."""

    root: Path
    port: int
    args: tuple[str, ...]
    proc: subprocess.Popen | None = None
    ca: Path | None = None
    """Certificate to trust when the service runs with TLS (then the URL is https)."""

    @property
    def url(self) -> str:
        return f"{'https' if self.ca else 'http'}://127.0.0.1:{self.port}"

    @property
    def store(self) -> Path:
        return self.root / "learner.zarr"

    @property
    def registry(self) -> Path:
        return self.root / "registry"

    @property
    def spool(self) -> Path:
        return self.root / "learner.zarr.spool"

    @property
    def log(self) -> str:
        path = self.root / "service.log"
        return path.read_text() if path.exists() else ""

    def start(self, timeout_s: float = 60.0) -> Learner:
        cmd = [
            sys.executable,
            "-m",
            "wmpo_core.cli",
            "serve",
            "--store",
            str(self.store),
            "--registry",
            str(self.registry),
            "--runs",
            str(self.root / "runs"),
            "--robot",
            "so101_sim",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--log-level",
            "warning",
            *self.args,
        ]
        env = {**os.environ, "WMPO_LEARNER_TOKEN": TOKEN}
        with open(self.root / "service.log", "ab") as log:
            self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"learner service exited with {self.proc.returncode}:\n{self.log}")
            try:
                if (
                    httpx.get(
                        f"{self.url}/v1/health",
                        timeout=1.0,
                        verify=ssl.create_default_context(cafile=self.ca) if self.ca else True,
                    ).status_code
                    == 200
                ):
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"learner service did not come up within {timeout_s} s:\n{self.log}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as when the machine loses power or the OOM killer strikes."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=15)
        self.proc = None


def start_learner(root: Path, *args: str, ca: Path | None = None) -> Learner:
    root.mkdir(parents=True, exist_ok=True)
    return Learner(root=root, port=free_port(), args=args, ca=ca).start()


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def record_episodes(
    store_path: Path, n: int = 1, steps: int = 5, robot: str = "so101_sim", seed: int = 0, noise: bool = True
) -> list[str]:
    """Commit `n` episodes into a (robot-side) store; returns their ids. Random (incompressible)
    frames by default, black ones with `noise=False`."""
    cfg = load_robot_config(robot)
    rng = np.random.default_rng(seed)
    ids = []
    with EpisodeStore.open(store_path, mode="a", durable=False) as store:
        for _ in range(n):
            writer = store.begin_episode(
                robot_config=cfg, source="policy", task="pick up the cube", policy_version="v0"
            )
            t0 = time.time()
            for k in range(steps):
                images = {
                    c.name: rng.integers(0, 256, size=c.shape, dtype=np.uint8)
                    if noise
                    else np.zeros(c.shape, np.uint8)
                    for c in cfg.cameras
                }
                writer.append(
                    images=images,
                    state=rng.uniform(-1, 1, len(cfg.joints)),
                    action=rng.uniform(0, 1, cfg.action.dim),
                    time=t0 + k / cfg.control_rate_hz,
                )
            ids.append(writer.commit(success=bool(rng.integers(0, 2)), success_labeled_by="env").episode_id)
    return ids


def store_listing(path: Path) -> dict[str, list[str]]:
    """What a store holds on disk, committed and staged (staging must stay empty after refusals)."""
    return {
        "episodes": sorted(p.name for p in (path / "episodes").iterdir() if p.is_dir()),
        "staging": sorted(p.name for p in (path / ".staging").iterdir())
        if (path / ".staging").exists()
        else [],
    }


def archive_bytes(src: Path, name: str) -> bytes:
    buf = io.BytesIO()
    write_dir_archive(src, name, buf)
    return buf.getvalue()


def spool_leftovers(spool: Path) -> list[str]:
    return sorted(p.name for p in spool.iterdir() if p.name != ".lock")


def send_partial_upload(
    learner: Learner, episode_id: str, body: bytes, fraction: float = 0.5
) -> socket.socket:
    """Start a real HTTP upload and stop after `fraction` of the body; returns the open socket."""
    sock = socket.create_connection(("127.0.0.1", learner.port), timeout=10)
    head = (
        f"PUT /v1/episodes/{episode_id} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
        f"Content-Type: application/x-tar\r\nX-Content-SHA256: {hashlib.sha256(body).hexdigest()}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    sock.sendall(head.encode() + body[: int(len(body) * fraction)])
    return sock


def wait_for_spool_file(learner: Learner, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(p.is_file() and p.stat().st_size > 0 for p in learner.spool.rglob("archive.tar")):
            return
        time.sleep(0.02)
    raise AssertionError("the service never started receiving the upload")
