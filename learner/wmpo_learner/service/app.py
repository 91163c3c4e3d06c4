"""`wmpo serve`: the learner service (FastAPI), and the app factory tests and the main job use.

    wmpo serve --store data/learner.zarr --registry data/registry --robot so101_sim \
               --host 127.0.0.1 --port 8765 --token-file ~/.config/wmpo/token

Security policy (docs/learner_service.md explains each choice):
- every endpoint but `GET /v1/health` needs the bearer token, reads included (episodes are camera
  footage of someone's lab, weights are someone's work);
- no token -> refuse to start, unless `--insecure-no-auth`, which is accepted on loopback only;
- a non-loopback address needs TLS (`--ssl-certfile/--ssl-keyfile`) unless
  `--allow-insecure-remote` says a TLS proxy or a private link is in front.
"""

import argparse
import asyncio
import ipaddress
import logging
import shutil
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Annotated, Any, Literal

import anyio
from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, JSONResponse
from starlette.requests import ClientDisconnect
from wmpo_core.config_cli import add_config_arguments, config_from_args, option
from wmpo_core.episode_store import EpisodeMeta, EpisodeStore, StoreError
from wmpo_core.ids import UnsafeNameError
from wmpo_core.protocol.archive import ArchiveError, extract_dir_archive
from wmpo_core.protocol.models import (
    API_PREFIX,
    ARCHIVE_MEDIA_TYPE,
    NAME_PATTERN,
    SHA256_HEADER,
    SHA256_PATTERN,
    Deployment,
    DeploymentHistory,
    DeployRequest,
    EpisodeLabel,
    EpisodeList,
    EpisodeUploadResult,
    ErrorResponse,
    Health,
    PolicyVersion,
    PolicyVersionList,
    RollbackRequest,
    Run,
    RunCreate,
    RunList,
    RunState,
    RunSummary,
    RunUpdate,
)
from wmpo_core.protocol.token import TOKEN_ENV, TokenError, load_token
from wmpo_core.robot_config import RobotConfig, RobotConfigError, load_robot_config

from wmpo_learner.service.auth import BearerAuth
from wmpo_learner.service.ingest import EpisodeIngestor, EpisodeRejectedError
from wmpo_learner.service.notify import DeploymentWatch
from wmpo_learner.service.registry import (
    InvalidCheckpointError,
    NothingToRollBackError,
    PolicyRegistry,
    RegistryError,
    RegistryIntegrityError,
    VersionExistsError,
    VersionNotFoundError,
)
from wmpo_learner.service.runs import RunBook, RunError, RunExistsError, RunFinishedError, RunNotFoundError
from wmpo_learner.service.uploads import Spool, SpoolLockedError, check_upload_headers, receive_body

log = logging.getLogger("wmpo.service")

EPISODE_ID_PATTERN = NAME_PATTERN
GiB = 1 << 30
MiB = 1 << 20


@dataclass(frozen=True)
class ServiceConfig:
    store: Path
    registry: Path
    runs: Path
    spool: Path
    robot: str
    token: str | None
    """None only with --insecure-no-auth."""
    max_episode_bytes: int = 4 * GiB
    max_policy_bytes: int = 64 * GiB
    max_json_bytes: int = 1 * MiB
    max_concurrent_uploads: int = 4
    upload_idle_timeout_s: float = 60.0
    upload_deadline_s: float = 3600.0
    max_long_poll_s: float = 60.0


class LearnerService:
    """What the app serves. Opened before the server starts, so a locked store or a bad robot
    config is a one-line error instead of a traceback from inside the server."""

    def __init__(
        self,
        config: ServiceConfig,
        robot_config: RobotConfig,
        store: EpisodeStore,
        registry: PolicyRegistry,
        runs: RunBook,
        spool: Spool,
    ):
        self.config = config
        self.robot_config = robot_config
        self.episodes = EpisodeIngestor(store, robot_config)
        self.registry = registry
        self.runs = runs
        self.spool = spool
        self.watch = DeploymentWatch(registry.deployment())
        self.upload_slots = asyncio.Semaphore(config.max_concurrent_uploads)

    @classmethod
    def open(cls, config: ServiceConfig) -> "LearnerService":
        robot_config = load_robot_config(config.robot)
        opened: list[Any] = []
        try:
            spool = Spool(config.spool)
            opened.append(spool)
            store = EpisodeStore.open(config.store, mode="a")
            opened.append(store)
            registry = PolicyRegistry.open(config.registry)
            opened.append(registry)
            return cls(config, robot_config, store, registry, RunBook(config.runs), spool)
        except BaseException:
            for resource in reversed(opened):
                resource.close()
            raise

    def close(self) -> None:
        self.episodes.store.close()
        self.registry.close()
        self.spool.close()


def _service_version() -> str:
    try:
        return metadata.version("wmpo-stack")
    except metadata.PackageNotFoundError:
        return "unknown"


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error statuses an endpoint raises itself ({"detail": "..."})."""
    responses: dict[int | str, dict[str, Any]] = {code: {"model": ErrorResponse} for code in codes}
    if 422 in responses:  # the service's own 422 (detail: str) or FastAPI's request validation (detail: list)
        responses[422] = {
            "description": "Invalid request or rejected content",
            "content": {
                "application/json": {
                    "schema": {
                        "anyOf": [
                            {"$ref": "#/components/schemas/ErrorResponse"},
                            {"$ref": "#/components/schemas/HTTPValidationError"},
                        ]
                    }
                }
            },
        }
    return responses


_TAR_BODY = {
    "requestBody": {
        "required": True,
        "content": {ARCHIVE_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}},
        "description": "Uncompressed tar of one directory (see docs/learner_service.md, 'Archive format').",
    }
}
_FILE_RESPONSE = {
    200: {
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        "description": "The file's bytes; its sha256 is in the X-Content-SHA256 header and in the version "
        "listing.",
        "headers": {SHA256_HEADER: {"schema": {"type": "string", "pattern": SHA256_PATTERN}}},
    }
}
_STATUS_FOR_ERROR: list[tuple[type[Exception], int]] = [
    (ArchiveError, 400),
    (EpisodeRejectedError, 422),
    (VersionNotFoundError, 404),
    (VersionExistsError, 409),
    (InvalidCheckpointError, 422),
    (RegistryIntegrityError, 409),
    (NothingToRollBackError, 409),
    (RunNotFoundError, 404),
    (RunExistsError, 409),
    (RunFinishedError, 409),
    (UnsafeNameError, 422),
]


def create_app(service: LearnerService) -> FastAPI:
    cfg = service.config

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        service.close()

    app = FastAPI(
        title="WMPO learner service",
        version=_service_version(),
        description="Episode ingestion, policy registry and run status between robots and the learner. "
        "All endpoints but /v1/health need `Authorization: Bearer <token>`.",
        lifespan=lifespan,
        max_body_size=cfg.max_json_bytes,
    )

    for error_type, code in _STATUS_FOR_ERROR:
        app.add_exception_handler(error_type, _error_handler(code))

    @app.exception_handler(ClientDisconnect)
    async def _client_gone(request: Request, exc: ClientDisconnect) -> Response:
        log.warning(
            "%s %s: client disconnected before the upload finished; nothing stored",
            request.method,
            request.url.path,
        )
        return JSONResponse({"detail": "client disconnected"}, status_code=400)

    # Endpoints that touch the store, the registry's files or the run book are plain `def`:
    # FastAPI runs them in worker threads, so a long ingestion holding the store's mutex never
    # stalls the event loop (and with it every long-poll).
    @app.get(f"{API_PREFIX}/health", response_model=Health, tags=["service"])
    def health() -> Health:
        """Liveness and identity; the only endpoint that needs no token."""
        return Health(
            service_version=_service_version(),
            robot_config_name=service.robot_config.name,
            robot_config_hash=service.robot_config.content_hash,
            episodes=len(service.episodes),
            deployed_version=service.watch.current.version,
            auth_required=cfg.token is not None,
        )

    api = _SecuredRoutes(app, BearerAuth(cfg.token))
    _episode_routes(api, service)
    _policy_routes(api, service)
    _deployment_routes(api, service)
    _run_routes(api, service)
    return app


class _SecuredRoutes:
    """Registers `/v1/...` endpoints that all require the bearer token (declared once, here).

    Routes go straight onto the app rather than through an included APIRouter so that
    `app.routes` lists every endpoint (tests walk it to check that none is left open).
    """

    def __init__(self, app: FastAPI, auth: BearerAuth):
        self._app = app
        self._auth = Depends(auth)
        self._route_class = auth.route_class()

    def _route(
        self,
        method: str,
        path: str,
        *,
        responses: dict[int | str, dict[str, Any]] | None = None,
        **kwargs: Any,
    ):
        """Every secured route checks the token first (before its body is read) and documents the
        400 FastAPI answers for a body it cannot decode (e.g. not UTF-8)."""

        def register(endpoint: Callable[..., Any]) -> Callable[..., Any]:
            self._app.router.add_api_route(
                API_PREFIX + path,
                endpoint,
                methods=[method],
                dependencies=[self._auth],
                responses=_errors(400, 401) | (responses or {}),
                route_class_override=self._route_class,
                **kwargs,
            )
            return endpoint

        return register

    def get(self, path: str, **kwargs: Any):
        return self._route("GET", path, **kwargs)

    def put(self, path: str, **kwargs: Any):
        return self._route("PUT", path, **kwargs)

    def post(self, path: str, **kwargs: Any):
        return self._route("POST", path, **kwargs)

    def patch(self, path: str, **kwargs: Any):
        return self._route("PATCH", path, **kwargs)


def _error_handler(code: int):
    async def handler(request: Request, exc: Exception) -> JSONResponse:
        if code != 404:
            log.warning("%s %s -> %d: %s", request.method, request.url.path, code, exc)
        return JSONResponse({"detail": str(exc)}, status_code=code)

    return handler


def _upload_slot_or_503(service: LearnerService) -> None:
    if service.upload_slots.locked():
        raise HTTPException(503, "too many uploads in progress; retry later", headers={"Retry-After": "5"})


def _episode_routes(api: _SecuredRoutes, service: LearnerService) -> None:
    cfg = service.config
    EpisodeId = Annotated[str, PathParam(pattern=EPISODE_ID_PATTERN)]

    @api.get("/episodes", response_model=EpisodeList, tags=["episodes"])
    def list_episodes(
        offset: Annotated[int, Query(ge=0)] = 0, limit: Annotated[int, Query(ge=1, le=10_000)] = 1000
    ) -> EpisodeList:
        """Episodes in the learner's store, oldest first."""
        total, metas = service.episodes.page(offset, limit)
        return EpisodeList(total=total, episodes=metas)

    @api.get("/episodes/{episode_id}", response_model=EpisodeMeta, responses=_errors(404), tags=["episodes"])
    def get_episode(episode_id: EpisodeId) -> EpisodeMeta:
        meta = service.episodes.meta(episode_id)
        if meta is None:
            raise HTTPException(404, f"no episode '{episode_id}' in the learner's store")
        return meta

    @api.put(
        "/episodes/{episode_id}",
        response_model=EpisodeUploadResult,
        status_code=201,
        max_body_size=cfg.max_episode_bytes,
        openapi_extra=_TAR_BODY,
        responses={200: {"model": EpisodeUploadResult, "description": "already stored; nothing written"}}
        | _errors(400, 408, 413, 415, 422, 503, 507),
        tags=["episodes"],
    )
    async def upload_episode(
        episode_id: EpisodeId,
        request: Request,
        response: Response,
        sha256: Annotated[str, Header(alias=SHA256_HEADER, pattern=SHA256_PATTERN)],
    ) -> EpisodeUploadResult:
        """Upload one committed episode directory as a tar; idempotent by episode id.

        201: stored. 200: an episode with this id was already stored (nothing written).
        400: not a safe, complete tar or sha256 mismatch. 422: not a valid episode for this
        service's robot config. Any error leaves the store unchanged.
        """
        _upload_slot_or_503(service)
        async with service.upload_slots:
            check_upload_headers(request, service.spool, cfg.max_episode_bytes)
            workdir = service.spool.new_dir()
            try:
                received = await receive_body(
                    request, workdir / "archive.tar", sha256, cfg.upload_idle_timeout_s, cfg.upload_deadline_s
                )
                outcome, meta = await anyio.to_thread.run_sync(
                    service.episodes.ingest_archive, received.path, episode_id, workdir
                )
            finally:
                await anyio.to_thread.run_sync(shutil.rmtree, workdir, True)
        if outcome == "already_stored":
            response.status_code = 200
        log.info("episode %s: %s (%d steps, %d bytes)", episode_id, outcome, meta.num_steps, received.size)
        return EpisodeUploadResult(
            episode_id=episode_id, status=outcome, num_steps=meta.num_steps, archive_bytes=received.size
        )

    @api.put(
        "/episodes/{episode_id}/label", response_model=EpisodeMeta, responses=_errors(404), tags=["episodes"]
    )
    def label_episode(episode_id: EpisodeId, body: EpisodeLabel) -> EpisodeMeta:
        """Set (or clear) an uploaded episode's success label."""
        if service.episodes.meta(episode_id) is None:
            raise HTTPException(404, f"no episode '{episode_id}' in the learner's store")
        return service.episodes.label(episode_id, body.success, body.labeled_by)


def _policy_routes(api: _SecuredRoutes, service: LearnerService) -> None:
    cfg = service.config
    Version = Annotated[str, PathParam(pattern=NAME_PATTERN)]

    @api.get("/policies", response_model=PolicyVersionList, tags=["policies"])
    async def list_versions() -> PolicyVersionList:
        """Every published version with its files (size, sha256) and manifest, oldest first."""
        return PolicyVersionList(versions=service.registry.versions())

    @api.get("/policies/{version}", response_model=PolicyVersion, responses=_errors(404), tags=["policies"])
    async def get_version(version: Version) -> PolicyVersion:
        return service.registry.get(version)

    @api.put(
        "/policies/{version}",
        response_model=PolicyVersion,
        status_code=201,
        max_body_size=cfg.max_policy_bytes,
        openapi_extra=_TAR_BODY,
        responses=_errors(400, 408, 409, 413, 415, 422, 503, 507),
        tags=["policies"],
    )
    async def publish_version(
        version: Version,
        request: Request,
        sha256: Annotated[str, Header(alias=SHA256_HEADER, pattern=SHA256_PATTERN)],
    ) -> PolicyVersion:
        """Publish a checkpoint directory (as a tar named `<version>/`) as a new, immutable version.

        409 when the version exists. The registry records every file's size and sha256.
        """
        _upload_slot_or_503(service)
        async with service.upload_slots:
            check_upload_headers(request, service.spool, cfg.max_policy_bytes)
            workdir = service.spool.new_dir()
            try:
                received = await receive_body(
                    request, workdir / "archive.tar", sha256, cfg.upload_idle_timeout_s, cfg.upload_deadline_s
                )
                unpacked = await anyio.to_thread.run_sync(
                    extract_dir_archive, received.path, workdir / "unpacked", version
                )
                record = await anyio.to_thread.run_sync(service.registry.publish, unpacked, version)
            finally:
                await anyio.to_thread.run_sync(shutil.rmtree, workdir, True)
        log.info("policy %s published (%d files, %d bytes)", version, len(record.files), record.total_bytes)
        return record

    @api.get(
        "/policies/{version}/files/{path:path}",
        response_class=FileResponse,
        responses=_FILE_RESPONSE | _errors(404),
        tags=["policies"],
    )
    async def download_file(version: Version, path: str) -> FileResponse:
        """One file of a version. Verify it against the sha256 in the listing (the client does)."""
        file, entry = service.registry.file_path(version, path)
        return FileResponse(
            file, media_type="application/octet-stream", headers={SHA256_HEADER: entry.sha256}
        )


def _deployment_routes(api: _SecuredRoutes, service: LearnerService) -> None:
    cfg = service.config

    @api.get("/deployment", response_model=Deployment, tags=["deployment"])
    async def get_deployment(
        after: Annotated[
            str | None,
            Query(
                max_length=128,
                description="The version the caller runs ('' for none): wait while it is still the deployed "
                "one.",
            ),
        ] = None,
        timeout_s: Annotated[
            float,
            Query(
                ge=0,
                description="How long to wait for a change (long-poll); at most --max-long-poll-s "
                f"({cfg.max_long_poll_s:g} s here).",
            ),
        ] = 0.0,
    ) -> Deployment:
        """The version robots should run. With `after`, a long-poll: answers as soon as the deployed
        version differs from `after`, or with `changed: false` after `timeout_s`."""
        if after is None:
            return service.watch.current
        return await service.watch.wait(after or None, min(timeout_s, cfg.max_long_poll_s))

    @api.put("/deployment", response_model=Deployment, responses=_errors(404, 409), tags=["deployment"])
    async def deploy(body: DeployRequest) -> Deployment:
        """Mark a published version as the one robots should run (its files are re-verified first)."""
        deployment = await anyio.to_thread.run_sync(service.registry.deploy, body.version, body.reason)
        service.watch.publish(deployment)
        log.info("deployed %s (%s)", body.version, body.reason or "no reason given")
        return deployment

    @api.post("/deployment/rollback", response_model=Deployment, responses=_errors(409), tags=["deployment"])
    async def rollback(body: RollbackRequest) -> Deployment:
        """Deploy the version that was deployed before the current one. 409 when there is none."""
        deployment = await anyio.to_thread.run_sync(service.registry.rollback, body.reason)
        service.watch.publish(deployment)
        log.info("rolled back to %s (%s)", deployment.version, body.reason or "no reason given")
        return deployment

    @api.get("/deployment/history", response_model=DeploymentHistory, tags=["deployment"])
    async def deployment_history() -> DeploymentHistory:
        return service.registry.history()


def _run_routes(api: _SecuredRoutes, service: LearnerService) -> None:
    RunId = Annotated[str, PathParam(pattern=NAME_PATTERN)]

    @api.get("/runs", response_model=RunList, tags=["runs"])
    async def list_runs(
        state: RunState | None = None,
        kind: Annotated[str | None, Query(max_length=64)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> RunList:
        """Training runs, most recently updated first."""
        return RunList(runs=service.runs.list(state=state, kind=kind, limit=limit))

    @api.post("/runs", response_model=RunSummary, status_code=201, responses=_errors(409), tags=["runs"])
    def create_run(body: RunCreate) -> RunSummary:
        """Register a training run (learner jobs call this when they start)."""
        return service.runs.create(body)

    @api.get("/runs/{run_id}", response_model=Run, responses=_errors(404), tags=["runs"])
    def get_run(run_id: RunId, history_limit: Annotated[int, Query(ge=0, le=10_000)] = 1000) -> Run:
        return service.runs.get(run_id, history_limit)

    @api.patch("/runs/{run_id}", response_model=RunSummary, responses=_errors(404, 409), tags=["runs"])
    def update_run(run_id: RunId, body: RunUpdate) -> RunSummary:
        """Report stage, progress, state and metrics. A finished run takes no more updates (409)."""
        return service.runs.update(run_id, body)


# ------------------------------------------------------------------------------------ command


class ServiceConfigError(ValueError):
    pass


def parse_size(text: str) -> int:
    """'4G', '512M', '100k' or a plain number of bytes."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    s = text.strip().lower().removesuffix("b").removesuffix("i")
    try:
        if s and s[-1] in units:
            return int(float(s[:-1]) * units[s[-1]])
        return int(s)
    except ValueError:
        raise ServiceConfigError(f"not a size: '{text}' (examples: 4G, 512M, 1048576)") from None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass
class ServeConfig:
    """`wmpo serve`: where the service keeps its data, where it listens, how it authenticates, and
    its limits on what clients may send. `service_config` checks the security flags together."""

    store: Path = option(
        Path("data/learner.zarr"), "the learner's episode store; the service is its only writer"
    )
    registry: Path = option(Path("data/registry"), "policy registry directory")
    runs: Path = option(Path("data/runs"), "where training-run status and metrics are kept")
    spool: Path | None = option(
        None, "scratch directory for uploads in flight, emptied at start (default: <store>.spool)"
    )
    robot: str = option("so101_sim", "robot config name or YAML path; uploaded episodes must match it")
    host: str = option("127.0.0.1", "address to listen on (loopback only by default)")
    port: int = option(8765, "port")
    token_file: Path | None = option(
        None, f"file holding the bearer token (default: the {TOKEN_ENV} environment variable)"
    )
    insecure_no_auth: bool = option(False, "run without a token; accepted only when listening on loopback")
    ssl_certfile: Path | None = option(None, "TLS certificate (PEM); needed off loopback")
    ssl_keyfile: Path | None = option(None, "TLS private key (PEM)")
    allow_insecure_remote: bool = option(
        False, "listen off loopback without TLS (only behind a TLS proxy or on a private link)"
    )
    max_episode_bytes: str = option("4G", "largest episode upload, e.g. 4G or 512M; larger ones get 413")
    max_policy_bytes: str = option("64G", "largest policy upload")
    max_json_bytes: str = option("1M", "largest JSON request body")
    max_concurrent_uploads: int = option(4, "uploads received at once; more get 503 + Retry-After")
    upload_idle_timeout_s: float = option(60.0, "drop an upload that sends nothing for this long")
    upload_deadline_s: float = option(3600.0, "drop an upload not finished within this time")
    max_long_poll_s: float = option(60.0, "longest wait a client may ask of GET /v1/deployment")
    log_level: Literal["debug", "info", "warning", "error"] = option("info", "server log verbosity")


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    add_config_arguments(parser, ServeConfig)


def service_config(serve: ServeConfig) -> ServiceConfig:
    """Validate the security-relevant flags together; raises ServiceConfigError with the fix."""
    try:
        token = load_token(serve.token_file)
    except TokenError as exc:
        raise ServiceConfigError(str(exc)) from None
    loopback = is_loopback(serve.host)
    if serve.insecure_no_auth:
        if token is not None:
            raise ServiceConfigError(
                f"--insecure-no-auth given, but a token is configured ({TOKEN_ENV} or --token-file); pick one"
            )
        if not loopback:
            raise ServiceConfigError(
                f"--insecure-no-auth is accepted only on a loopback address, not on '{serve.host}'"
            )
    elif token is None:
        raise ServiceConfigError(
            f"no token: set {TOKEN_ENV} or pass --token-file (or --insecure-no-auth for a local test on "
            "loopback)"
        )
    if (serve.ssl_certfile is None) != (serve.ssl_keyfile is None):
        raise ServiceConfigError("TLS needs both --ssl-certfile and --ssl-keyfile")
    if not loopback and serve.ssl_certfile is None and not serve.allow_insecure_remote:
        raise ServiceConfigError(
            f"refusing to listen on '{serve.host}' without TLS: the token and the weights would cross the "
            "network in clear text. Give --ssl-certfile/--ssl-keyfile, or --allow-insecure-remote behind "
            "a TLS proxy or VPN."
        )
    sizes = {
        flag: parse_size(getattr(serve, flag))
        for flag in ("max_episode_bytes", "max_policy_bytes", "max_json_bytes")
    }
    for flag, value in (*sizes.items(), ("max_concurrent_uploads", serve.max_concurrent_uploads)):
        if value < 1:
            raise ServiceConfigError(f"--{flag.replace('_', '-')} must be positive")
    return ServiceConfig(
        store=serve.store,
        registry=serve.registry,
        runs=serve.runs,
        spool=serve.spool or serve.store.with_name(serve.store.name + ".spool"),
        robot=serve.robot,
        token=token,
        **sizes,
        max_concurrent_uploads=serve.max_concurrent_uploads,
        upload_idle_timeout_s=serve.upload_idle_timeout_s,
        upload_deadline_s=serve.upload_deadline_s,
        max_long_poll_s=serve.max_long_poll_s,
    )


def run(args: argparse.Namespace) -> int:
    import uvicorn

    serve = config_from_args(ServeConfig, args)
    logging.basicConfig(
        level=serve.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        config = service_config(serve)
        service = LearnerService.open(config)
    except (
        ServiceConfigError,
        RobotConfigError,
        StoreError,
        RegistryError,
        RunError,
        SpoolLockedError,
    ) as exc:
        print(f"wmpo serve: {exc}", file=sys.stderr)
        return 2
    scheme = "https" if serve.ssl_certfile else "http"
    log.info(
        "learner service for robot '%s' on %s://%s:%d (store %s, registry %s, auth %s)",
        service.robot_config.name,
        scheme,
        serve.host,
        serve.port,
        config.store,
        config.registry,
        "bearer token" if config.token else "DISABLED",
    )
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(service),
            host=serve.host,
            port=serve.port,
            ssl_certfile=serve.ssl_certfile,
            ssl_keyfile=serve.ssl_keyfile,
            log_level=serve.log_level,
            workers=1,  # one process: the service is the single writer of the store and registry
            timeout_graceful_shutdown=5,  # long-polls would otherwise hold shutdown for up to a minute
        )
    )
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl+C after its graceful shutdown
        pass
    finally:
        service.close()
    return 0 if server.started else 1
