"""Status and metrics of training runs, reported by learner jobs and read by anyone.

    <runs>/<run_id>.json             RunSummary, replaced atomically on every update
    <runs>/<run_id>.metrics.jsonl    one MetricPoint per line, appended

A job creates its run, then reports stage, progress and metrics as it goes; the summary keeps
the latest value of each metric and the JSON-lines file keeps the whole curve (a torn last
line after a crash is skipped on load). A run in a terminal state takes no more updates.
"""

from __future__ import annotations

import collections
import datetime as dt
import json
import secrets
import threading
import time
from pathlib import Path

from pydantic import ValidationError
from wmpo_core.durable import atomic_write_json
from wmpo_core.ids import check_id, child_path
from wmpo_core.protocol.models import (
    TERMINAL_RUN_STATES,
    MetricPoint,
    Run,
    RunCreate,
    RunState,
    RunSummary,
    RunUpdate,
)

HISTORY_IN_MEMORY = 10_000


class RunError(RuntimeError):
    pass


class RunNotFoundError(RunError):
    pass


class RunExistsError(RunError):
    pass


class RunFinishedError(RunError):
    pass


class RunBook:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._mutex = threading.Lock()
        self._runs: dict[str, RunSummary] = {}
        self._history: dict[str, collections.deque[MetricPoint]] = {}
        for path in sorted(self.root.glob("*.json")):
            try:
                summary = RunSummary.model_validate_json(path.read_bytes())
            except (OSError, ValidationError) as exc:
                raise RunError(f"{path}: unreadable run record ({exc})") from None
            self._runs[summary.run_id] = summary
            self._history[summary.run_id] = self._load_history(summary.run_id)

    def _load_history(self, run_id: str) -> collections.deque[MetricPoint]:
        points: collections.deque[MetricPoint] = collections.deque(maxlen=HISTORY_IN_MEMORY)
        path = self._file(run_id, ".metrics.jsonl")
        if not path.exists():
            return points
        data = path.read_bytes()
        complete = data[: data.rfind(b"\n") + 1]
        if len(complete) != len(data):  # a line torn by a crash mid-append: cut it off
            with open(path, "r+b") as f:
                f.truncate(len(complete))
        for line in complete.splitlines():
            try:
                points.append(MetricPoint.model_validate_json(line))
            except ValidationError:
                continue
        return points

    def create(self, request: RunCreate) -> RunSummary:
        now = time.time()
        run_id = (
            request.run_id or f"{request.kind}_{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}_{secrets.token_hex(3)}"
        )
        with self._mutex:
            if run_id in self._runs:
                raise RunExistsError(f"run '{run_id}' already exists; report to it with PATCH")
            summary = RunSummary(
                run_id=run_id,
                kind=request.kind,
                state=request.state,
                stage=request.stage,
                progress=request.progress,
                message=request.message,
                params=dict(request.params),
                metrics=dict(request.metrics),
                created_at=now,
                updated_at=now,
            )
            self._history[run_id] = collections.deque(maxlen=HISTORY_IN_MEMORY)
            if request.metrics:
                self._append_point(run_id, MetricPoint(time=now, step=None, values=dict(request.metrics)))
            self._save(summary)
            return summary

    def update(self, run_id: str, request: RunUpdate) -> RunSummary:
        now = time.time()
        with self._mutex:
            current = self._get(run_id)
            if current.state in TERMINAL_RUN_STATES:
                raise RunFinishedError(
                    f"run '{run_id}' is {current.state}; a finished run takes no more updates"
                )
            changes = request.model_dump(exclude_unset=True, exclude={"metrics", "step"})
            changes = {k: v for k, v in changes.items() if v is not None}
            summary = current.model_copy(
                update={**changes, "metrics": {**current.metrics, **request.metrics}, "updated_at": now}
            )
            if request.metrics:
                self._append_point(
                    run_id, MetricPoint(time=now, step=request.step, values=dict(request.metrics))
                )
            self._save(summary)
            return summary

    def get(self, run_id: str, history_limit: int = 1000) -> Run:
        with self._mutex:
            summary = self._get(run_id)
            history = list(self._history[run_id])[-history_limit:] if history_limit > 0 else []
            return Run(**summary.model_dump(), history=history)

    def list(
        self, state: RunState | None = None, kind: str | None = None, limit: int = 100
    ) -> list[RunSummary]:
        with self._mutex:
            runs = [
                r
                for r in self._runs.values()
                if (state is None or r.state == state) and (kind is None or r.kind == kind)
            ]
        return sorted(runs, key=lambda r: r.updated_at, reverse=True)[:limit]

    def _get(self, run_id: str) -> RunSummary:
        try:
            return self._runs[run_id]
        except KeyError:
            raise RunNotFoundError(f"no run '{run_id}'") from None

    def _append_point(self, run_id: str, point: MetricPoint) -> None:
        with open(self._file(run_id, ".metrics.jsonl"), "a") as f:
            f.write(point.model_dump_json() + "\n")
        self._history[run_id].append(point)

    def _file(self, run_id: str, suffix: str) -> Path:
        """A run's file; the run id (a name from a request) must keep it inside the run book."""
        return child_path(self.root, check_id(run_id, "run id") + suffix, "run file")

    def _save(self, summary: RunSummary) -> None:
        atomic_write_json(self._file(summary.run_id, ".json"), json.loads(summary.model_dump_json()))
        self._runs[summary.run_id] = summary
