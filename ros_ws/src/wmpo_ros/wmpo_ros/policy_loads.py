"""Loading a new policy into the policy node, free of ROS: which `policy` parameter values are
refused at once, the outcome message the loader thread sends on `<ns>/policy/loads`, and the
sync node's wait for the outcome of the load it asked for.

The outcome is the contract between the policy node (which writes it) and the sync node (which
waits for the one answering the spec it set), so both read and write it here.
"""

from __future__ import annotations

import json
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path


def spec_refusal(spec: str) -> str | None:
    """Why a `policy` parameter value is refused before any load is queued, or None.

    A spec is a checkpoint directory that exists or a scheme spec ("scheme:..."); the loader
    checks everything else (and reports on `<ns>/policy/loads`).
    """
    if not spec:
        return "policy not loaded: no policy given (empty spec)"
    if ":" not in spec and not Path(spec).exists():
        return f"policy not loaded: '{spec}' is neither an existing checkpoint directory nor a scheme spec"
    return None


@dataclass(frozen=True)
class LoadOutcome:
    """One load's outcome: the spec asked for, whether it was staged, its version, why not."""

    spec: str
    ok: bool
    version: str | None
    reason: str

    @classmethod
    def staged(cls, spec: str, version: str) -> LoadOutcome:
        return cls(spec, True, version, "")

    @classmethod
    def refused(cls, spec: str, reason: str) -> LoadOutcome:
        return cls(spec, False, None, reason)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> LoadOutcome | None:
        """The outcome in a `<ns>/policy/loads` message; None for one that is not a JSON object.
        Missing fields read as not staged, without a reason (the waiter then says so itself)."""
        try:
            data = json.loads(text)
        except ValueError:
            return None
        if not isinstance(data, dict):
            return None
        version = data.get("version")
        return cls(
            spec=str(data.get("spec", "")),
            ok=bool(data.get("ok")),
            version=None if version is None else str(version),
            reason=str(data.get("reason") or ""),
        )


@dataclass
class PendingLoad:
    """A load asked of the policy node: `arrived` is set when its outcome (or a wake-up) comes."""

    spec: str
    arrived: threading.Event = field(default_factory=threading.Event)
    outcome: LoadOutcome | None = None


class LoadWaiter:
    """The sync node's wait for the outcome of the one load it asked for. Outcomes arrive on an
    executor thread; those for another spec (another caller's, a stale one) are ignored; `wake`
    ends a wait at shutdown, with no outcome."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: PendingLoad | None = None

    def expect(self, spec: str) -> PendingLoad:
        with self._lock:
            self._pending = PendingLoad(spec)
            return self._pending

    def deliver(self, outcome: LoadOutcome) -> None:
        with self._lock:
            if self._pending is not None and outcome.spec == self._pending.spec:
                self._pending.outcome = outcome
                self._pending.arrived.set()

    def wake(self) -> None:
        with self._lock:
            if self._pending is not None:
                self._pending.arrived.set()

    def forget(self) -> None:
        with self._lock:
            self._pending = None
