"""Change notification: robots long-poll for the deployed version instead of polling hard.

`GET /v1/deployment?after=<version robots run>&timeout_s=30` answers at once when the deployed
version differs from `after`, else holds the request until a deploy or rollback changes it or
the timeout passes. One idle request per robot per `timeout_s`, and a new version reaches every
robot within one round trip of being deployed.
"""

from __future__ import annotations

import asyncio

from wmpo_core.protocol.models import Deployment


class DeploymentWatch:
    """The current deployment, and a way to wait for the next change. Use from the event loop only."""

    def __init__(self, current: Deployment):
        self._current = current
        self._changed = asyncio.Event()

    @property
    def current(self) -> Deployment:
        return self._current

    def publish(self, deployment: Deployment) -> None:
        self._current = deployment
        self._changed.set()  # wakes every waiter; later waiters wait on a fresh event
        self._changed = asyncio.Event()

    async def wait(self, after: str | None, timeout_s: float) -> Deployment:
        """The deployment once its version differs from `after`, or (changed=False) at the timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self._current.version == after:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return self._current.model_copy(update={"changed": False})
            try:
                async with asyncio.timeout(remaining):
                    await self._changed.wait()
            except TimeoutError:
                return self._current.model_copy(update={"changed": False})
        return self._current
