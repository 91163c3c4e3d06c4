"""Wire types of the learner service, shared by the server and `wmpo_ros.learner_client`.

Every endpoint's request and response is one of these models, so the OpenAPI schema is typed and
the client parses exactly what the server sends. Episode metadata is the episode store's own
`EpisodeMeta`: the service adds no second description of an episode.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from wmpo_core.episode_store import EpisodeMeta
from wmpo_core.ids import ID_PATTERN

API_PREFIX = "/v1"
SHA256_HEADER = "X-Content-SHA256"
"""Hex sha256 of the body: sent with every upload, returned with every file download."""
ARCHIVE_MEDIA_TYPE = "application/x-tar"

NAME_PATTERN = ID_PATTERN
"""Policy versions, episode ids and run ids: the one pattern of `wmpo_core.ids`, checked on both sides."""
SHA256_PATTERN = r"^[0-9a-f]{64}$"
LABELER_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"

Sha256 = Annotated[str, Field(pattern=SHA256_PATTERN, description="lowercase hex sha256")]
Name = Annotated[str, Field(pattern=NAME_PATTERN)]
StrictFloat = Annotated[float, Field(strict=True)]
"""A JSON number; `false`/`true` are refused (pydantic's lax mode would read them as 0/1)."""
StrictInt = Annotated[int, Field(strict=True)]
StrictBool = Annotated[bool, Field(strict=True)]
"""`true`/`false` only; not 1, 0, "yes" or "false"."""
MetricValue = Annotated[float, Field(allow_inf_nan=False, strict=True)] | None
"""Non-finite metric values travel as null (JSON has no NaN)."""
Metrics = Annotated[dict[Annotated[str, Field(max_length=128)], MetricValue], Field(max_length=256)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorResponse(_Model):
    """Body of every 4xx/5xx response the service raises itself."""

    detail: str


class Health(_Model):
    status: Literal["ok"] = "ok"
    service_version: str
    robot_config_name: str
    robot_config_hash: str
    episodes: int
    deployed_version: str | None
    auth_required: bool


# ----------------------------------------------------------------------------------- episodes


class EpisodeList(_Model):
    total: int
    episodes: list[EpisodeMeta]
    """Oldest first, at most `limit` starting at `offset`."""


class EpisodeUploadResult(_Model):
    episode_id: Name
    status: Literal["stored", "already_stored"]
    """'already_stored': an episode with this id was in the store; nothing was written."""
    num_steps: int
    archive_bytes: int
    """Bytes received for this request (0 when the client skipped a known episode)."""


class EpisodeLabel(_Model):
    """Relabel an uploaded episode's success, e.g. after a person reviewed it on the robot."""

    success: StrictBool | None
    labeled_by: Annotated[str, Field(pattern=LABELER_PATTERN)]


# ----------------------------------------------------------------------------------- policies


class FileEntry(_Model):
    path: str
    """Relative POSIX path inside the version directory."""
    size: int
    sha256: Sha256


class PolicyVersion(_Model):
    version: Name
    published_at: float
    """Unix time."""
    files: list[FileEntry]
    total_bytes: int
    manifest: dict[str, Any] | None
    """The checkpoint's top-level manifest.json, when it has one (the registry reads no other file)."""


class PolicyVersionList(_Model):
    versions: list[PolicyVersion]
    """Oldest first."""


class DeployRequest(_Model):
    version: Name
    reason: Annotated[str, Field(max_length=1000)] = ""


class RollbackRequest(_Model):
    reason: Annotated[str, Field(max_length=1000)] = ""


class DeployEvent(_Model):
    action: Literal["deploy", "rollback"]
    version: Name
    """The version deployed by this event."""
    previous: Name | None
    at: float
    reason: str


class Deployment(_Model):
    version: Name | None
    """The version robots should run; null before the first deploy."""
    generation: int
    """Number of deploy/rollback events so far; grows by one with each."""
    deployed_at: float | None
    rollback_to: Name | None
    """What a rollback now would deploy; null when there is nothing to roll back to."""
    policy: PolicyVersion | None
    """Files and manifest of `version`, so a robot needs no second request."""
    changed: bool = True
    """Long-poll answer: false when the wait timed out with `version` still equal to `after`."""


class DeploymentHistory(_Model):
    events: list[DeployEvent]
    """Oldest first."""
    stack: list[Name]
    """Deployed versions a rollback walks back through; the last one is deployed now."""


# --------------------------------------------------------------------------------------- runs

RunState = Literal["pending", "running", "succeeded", "failed", "cancelled"]
TERMINAL_RUN_STATES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
Params = Annotated[
    dict[Annotated[str, Field(max_length=128)], str | int | float | bool | None], Field(max_length=256)
]


class RunCreate(_Model):
    run_id: Name | None = None
    """Chosen by the job (e.g. to resume reporting after a restart) or by the service."""
    kind: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,63}$")]
    """What the job does: 'sft', 'align', 'reward', 'grpo', 'iterate', 'eval', ..."""
    stage: Annotated[str, Field(max_length=200)] = ""
    progress: Annotated[StrictFloat, Field(ge=0, le=1)] | None = None
    state: RunState = "running"
    message: Annotated[str, Field(max_length=4000)] = ""
    params: Params = {}
    metrics: Metrics = {}


class RunUpdate(_Model):
    """Fields left out keep their value; `metrics` are merged and appended to the history."""

    stage: Annotated[str, Field(max_length=200)] | None = None
    progress: Annotated[StrictFloat, Field(ge=0, le=1)] | None = None
    state: RunState | None = None
    message: Annotated[str, Field(max_length=4000)] | None = None
    metrics: Metrics = {}
    step: Annotated[StrictInt, Field(ge=0)] | None = None
    """Training step the metrics belong to."""


class MetricPoint(_Model):
    time: float
    step: int | None
    values: dict[str, MetricValue]


class RunSummary(_Model):
    run_id: Name
    kind: str
    state: RunState
    stage: str
    progress: float | None
    message: str
    params: dict[str, str | int | float | bool | None]
    metrics: dict[str, MetricValue]
    """Latest value of every metric reported so far."""
    created_at: float
    updated_at: float


class Run(RunSummary):
    history: list[MetricPoint]
    """The most recent metric points, oldest first (see `history_limit`)."""


class RunList(_Model):
    runs: list[RunSummary]
    """Most recently updated first."""


def finite_or_none(metrics: dict[str, float | None]) -> dict[str, float | None]:
    """Metrics as the API carries them: NaN and infinities become null."""
    return {k: (float(v) if v is not None and math.isfinite(v) else None) for k, v in metrics.items()}
