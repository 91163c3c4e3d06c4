"""What the sync node reports, free of ROS: its status (latched on `<ns>/sync/status` as JSON)
and the /diagnostics level, message and values derived from it, so the rules read (and test) alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Rejection:
    """A deployed version this robot refused, why, and when (wall time, s)."""

    version: str
    reason: str
    at: float


@dataclass(frozen=True)
class SyncStatus:
    """What `<ns>/sync/status` carries (JSON, latched) and /diagnostics summarises."""

    learner_url: str
    learner_reachable: bool | None = None
    state: str = "waiting"
    """waiting | downloading | loading | staged | running | rejected | retrying | uploads only"""
    deployed_version: str | None = None
    """The learner's deployed version this node last saw."""
    active_version: str | None = None
    """The policy node's running version (`<ns>/policy/version`)."""
    staged_version: str | None = None
    """The last version the policy node staged (`<ns>/policy/staged`)."""
    last_rejection: Rejection | None = None
    message: str = ""
    outbox: dict[str, Any] = field(default_factory=dict)

    def on_active(self, version: str) -> dict[str, Any]:
        """The changes when the policy node announces `version` as running ("" for none): a staged
        deployment that becomes active is running."""
        running = version and version == self.deployed_version and self.state == "staged"
        return {"active_version": version or None, **({"state": "running"} if running else {})}

    def on_staged(self, version: str) -> dict[str, Any]:
        """The changes once the policy node confirmed it staged deployed `version`: running if it
        already announced that version active (an episode began between its staged message and
        this confirmation, so `on_active` saw no staged state to promote), else staged."""
        return {"state": "running" if version == self.active_version else "staged"}

    def health(self) -> tuple[str, str]:
        """(level, message) for /diagnostics; level is "OK", "WARN" or "ERROR"."""
        if self.state == "rejected":
            return (
                "ERROR",
                f"deployed version {self.deployed_version} rejected; running {self.active_version}",
            )
        if self.learner_reachable is False or self.outbox.get("parked"):
            return "WARN", self.message or "learner unreachable"
        return "OK", self.state

    def diagnostic_values(self) -> dict[str, str]:
        """The key/values /diagnostics carries (without the outbox's oldest pending age)."""
        return {
            "learner_url": self.learner_url,
            "learner_reachable": str(self.learner_reachable),
            "state": self.state,
            "deployed_version": self.deployed_version or "",
            "active_version": self.active_version or "",
            "staged_version": self.staged_version or "",
            "last_rejected_version": self.last_rejection.version if self.last_rejection else "",
            "last_rejection": self.last_rejection.reason if self.last_rejection else "",
            **{f"outbox_{k}": str(v) for k, v in self.outbox.items()},
        }
