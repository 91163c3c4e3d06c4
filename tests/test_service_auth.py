"""Learner service: every endpoint but health needs the token; start-up security policy; OpenAPI."""

from __future__ import annotations

import argparse
import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from openapi_spec_validator import validate as validate_openapi
from service_harness import TOKEN, WRONG_TOKEN, auth, record_episodes, start_learner
from wmpo_core.config_cli import config_from_args
from wmpo_core.episode_store import EpisodeStore
from wmpo_core.protocol.archive import write_dir_archive
from wmpo_learner.service.app import (
    LearnerService,
    ServeConfig,
    ServiceConfig,
    ServiceConfigError,
    add_arguments,
    create_app,
    service_config,
)
from wmpo_ros.learner_client import LearnerClient, LearnerUnavailable

OPEN_ROUTES = {
    ("GET", "/v1/health"),
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
    ("GET", "/docs/oauth2-redirect"),
    ("GET", "/redoc"),
}
READ_METHODS = {"GET", "HEAD"}


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """The app object itself, only to enumerate its routes (requests go to the real server)."""
    root = tmp_path_factory.mktemp("app")
    service = LearnerService.open(
        ServiceConfig(
            store=root / "s.zarr",
            registry=root / "reg",
            runs=root / "runs",
            spool=root / "spool",
            robot="so101_sim",
            token=TOKEN,
        )
    )
    yield create_app(service)
    service.close()


@pytest.fixture(scope="module")
def learner(tmp_path_factory):
    learner = start_learner(tmp_path_factory.mktemp("learner"), "--max-json-bytes", "64k")
    yield learner
    learner.stop()


def routes(app) -> list[tuple[str, str]]:
    """(method, path template) of everything the app serves, FastAPI's doc pages included."""
    found = []
    for route in app.routes:
        for method in sorted(getattr(route, "methods", None) or []):
            if method != "HEAD":
                found.append((method, route.path))
    return found


def concrete(path: str, values: dict[str, str]) -> str:
    return re.sub(r"\{(\w+)(?::path)?\}", lambda m: values[m.group(1)], path)


def _tar(src: Path, name: str) -> tuple[bytes, str]:
    buf = io.BytesIO()
    info = write_dir_archive(src, name, buf)
    return buf.getvalue(), info.sha256


@pytest.fixture(scope="module")
def valid_requests(learner, tmp_path_factory):
    """One request per mutating endpoint that the service accepts with the right token, so a
    refusal without it can only be about the token. The learner is seeded so each can succeed."""
    root = tmp_path_factory.mktemp("requests")
    (episode_id,) = record_episodes(root / "robot.zarr")
    with EpisodeStore.open(root / "robot.zarr") as store:
        episode_body, episode_sha = _tar(store.episode_path(episode_id), episode_id)
    checkpoint = root / "ckpt"
    checkpoint.mkdir()
    (checkpoint / "weights.bin").write_bytes(os.urandom(1000))
    with LearnerClient(learner.url, TOKEN) as client:
        for version in ("v1", "v2"):
            client.publish_version(checkpoint, version)
        client.deploy("v1")
    policy_body, policy_sha = _tar(checkpoint, "v3")
    tar = {"Content-Type": "application/x-tar"}
    values = {"episode_id": episode_id, "version": "v3", "run_id": "run-1", "path": "weights.bin"}
    requests = {
        ("PUT", "/v1/episodes/{episode_id}"): dict(
            content=episode_body, headers={**tar, "X-Content-SHA256": episode_sha}
        ),
        ("PUT", "/v1/episodes/{episode_id}/label"): dict(json={"success": True, "labeled_by": "human"}),
        ("PUT", "/v1/policies/{version}"): dict(
            content=policy_body, headers={**tar, "X-Content-SHA256": policy_sha}
        ),
        ("PUT", "/v1/deployment"): dict(json={"version": "v2"}),
        ("POST", "/v1/deployment/rollback"): dict(json={"reason": "test"}),
        ("POST", "/v1/runs"): dict(json={"run_id": "run-1", "kind": "sft"}),
        ("PATCH", "/v1/runs/{run_id}"): dict(json={"progress": 0.5}),
    }
    return values, requests


def _state(learner) -> dict:
    with LearnerClient(learner.url, TOKEN) as client:
        return {
            "episodes": client.list_episodes().total,
            "versions": [v.version for v in client.list_versions()],
            "deployment": client.deployment_history().model_dump(),
            "runs": [r.run_id for r in client.list_runs()],
        }


BAD_CREDENTIALS = {
    "none": {},
    "wrong token": auth(WRONG_TOKEN),
    "token prefix": auth(TOKEN[:-1]),
    "empty bearer": {"Authorization": "Bearer"},
    "basic scheme": {"Authorization": "Basic dXNlcjpwYXNz"},
    "token without scheme": {"Authorization": TOKEN},
}


def test_every_mutating_endpoint_refuses_a_missing_or_wrong_token(app, learner, valid_requests):
    values, requests = valid_requests
    mutating = [(m, p) for m, p in routes(app) if m not in READ_METHODS]
    assert len(mutating) >= 7, mutating
    missing = [r for r in mutating if r not in requests]
    assert not missing, f"new mutating endpoint(s) {missing}: add a valid request for them to this test"
    before = _state(learner)
    for method, path in mutating:
        for label, headers in BAD_CREDENTIALS.items():
            kwargs = dict(requests[(method, path)])
            kwargs["headers"] = {**kwargs.get("headers", {}), **headers}
            r = httpx.request(method, learner.url + concrete(path, values), timeout=10, **kwargs)
            assert r.status_code == 401, (method, path, label, r.status_code, r.text)
            assert r.headers.get("www-authenticate") == "Bearer"
    assert _state(learner) == before, "a refused request changed the learner's state"
    # The same requests with the token are accepted: the refusals above were about the token only.
    for method, path in mutating:
        kwargs = dict(requests[(method, path)])
        kwargs["headers"] = {**kwargs.get("headers", {}), **auth()}
        r = httpx.request(method, learner.url + concrete(path, values), timeout=30, **kwargs)
        assert r.status_code in (200, 201), (method, path, r.status_code, r.text)
    after = _state(learner)
    assert after["episodes"] == 1 and "v3" in after["versions"] and after["runs"] == ["run-1"]


def test_reads_need_the_token_too_except_health_and_docs(app, learner):
    values = {"episode_id": "ep_x", "version": "v1", "run_id": "r1", "path": "weights.bin"}
    reads = [(m, p) for m, p in routes(app) if m in READ_METHODS and (m, p) not in OPEN_ROUTES]
    assert len(reads) >= 8, reads
    for method, path in reads:
        for label, headers in BAD_CREDENTIALS.items():
            r = httpx.request(method, learner.url + concrete(path, values), headers=headers, timeout=10)
            assert r.status_code == 401, (method, path, label, r.status_code)
    assert httpx.get(f"{learner.url}/v1/health", timeout=10).status_code == 200


def test_json_bodies_are_size_limited(learner):
    big = {"kind": "sft", "message": "x" * 3000, "params": {f"p{i}": "y" * 400 for i in range(200)}}
    r = httpx.post(f"{learner.url}/v1/runs", json=big, headers=auth(), timeout=10)
    assert r.status_code == 413
    assert all(run.run_id != big.get("run_id") for run in LearnerClient(learner.url, TOKEN).list_runs())


def test_openapi_schema_is_valid_and_every_endpoint_is_typed(app, learner):
    schema = httpx.get(f"{learner.url}/openapi.json", timeout=10).json()
    validate_openapi(schema)  # the OpenAPI 3.1 meta-schema
    docs_pages = {p for _, p in OPEN_ROUTES} - {"/v1/health"}
    served = {(m, p.replace(":path}", "}")) for m, p in routes(app) if p not in docs_pages}
    documented = {(m.upper(), p) for p, item in schema["paths"].items() for m in item}
    assert served == documented
    components = schema["components"]["schemas"]

    def resolve(node):
        if isinstance(node, dict):
            if "$ref" in node:
                name = node["$ref"].removeprefix("#/components/schemas/")
                assert name in components, f"dangling $ref {node['$ref']}"
            for value in node.values():
                resolve(value)
        elif isinstance(node, list):
            for value in node:
                resolve(value)

    resolve(schema)
    for path, item in schema["paths"].items():
        for method, op in item.items():
            where = f"{method.upper()} {path}"
            ok = {code: r for code, r in op["responses"].items() if code.startswith("2")}
            assert ok, f"{where}: no success response documented"
            for code, response in ok.items():
                content = response.get("content")
                assert content, f"{where} {code}: untyped response"
                for media, body in content.items():
                    s = body["schema"]
                    if media == "application/json":
                        assert "$ref" in s, f"{where} {code}: JSON response without a response model ({s})"
                    else:
                        assert s == {"type": "string", "format": "binary"}, where
            declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert declared == set(re.findall(r"\{(\w+)\}", path)), where
            if path != "/v1/health":
                assert op.get("security") == [{"HTTPBearer": []}], f"{where}: not marked as needing the token"
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


# ---------------------------------------------------------------------------------- start-up policy


def _config(*argv: str) -> ServiceConfig:
    """The service config `wmpo serve <argv>` would start with (ServiceConfigError if refused)."""
    parser = argparse.ArgumentParser()
    add_arguments(parser, "serve")
    return service_config(config_from_args(ServeConfig, parser.parse_args(list(argv))))


@pytest.fixture
def no_env_token(monkeypatch):
    monkeypatch.delenv("WMPO_LEARNER_TOKEN", raising=False)


def test_refuses_to_start_without_a_token(no_env_token):
    with pytest.raises(ServiceConfigError, match="no token"):
        _config()


def test_token_from_file_or_environment(no_env_token, tmp_path, monkeypatch):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    assert _config("--token-file", str(token_file)).token == TOKEN
    token_file.write_text("short")
    with pytest.raises(ServiceConfigError, match="at least 16"):
        _config("--token-file", str(token_file))
    with pytest.raises(ServiceConfigError, match="cannot read"):
        _config("--token-file", str(tmp_path / "missing"))
    monkeypatch.setenv("WMPO_LEARNER_TOKEN", TOKEN)
    assert _config().token == TOKEN


def test_no_auth_only_when_asked_and_only_on_loopback(no_env_token):
    assert _config("--insecure-no-auth").token is None
    assert _config("--insecure-no-auth", "--host", "::1").token is None
    for host in ("0.0.0.0", "192.168.1.20", "learner.lab"):
        with pytest.raises(ServiceConfigError, match="loopback"):
            _config("--insecure-no-auth", "--host", host)


def test_remote_binding_needs_tls_or_an_explicit_override(monkeypatch, tmp_path):
    monkeypatch.setenv("WMPO_LEARNER_TOKEN", TOKEN)
    with pytest.raises(ServiceConfigError, match="without TLS"):
        _config("--host", "0.0.0.0")
    with pytest.raises(ServiceConfigError, match="both"):
        _config("--host", "0.0.0.0", "--ssl-certfile", "cert.pem")
    assert _config("--host", "0.0.0.0", "--ssl-certfile", "c.pem", "--ssl-keyfile", "k.pem").token == TOKEN
    assert _config("--host", "0.0.0.0", "--allow-insecure-remote").token == TOKEN
    assert _config("--host", "localhost").spool == Path("data/learner.zarr.spool")


def test_upload_limits_are_sizes_and_must_be_positive(monkeypatch):
    monkeypatch.setenv("WMPO_LEARNER_TOKEN", TOKEN)
    config = _config("--max-episode-bytes", "512M", "--max-json-bytes", "64k")
    assert (config.max_episode_bytes, config.max_json_bytes, config.max_policy_bytes) == (
        512 << 20,
        64 << 10,
        64 << 30,
    )
    with pytest.raises(ServiceConfigError, match="not a size: 'lots'"):
        _config("--max-policy-bytes", "lots")
    with pytest.raises(ServiceConfigError, match="--max-json-bytes must be positive"):
        _config("--max-json-bytes", "0")


def test_cli_exits_with_a_clear_message_without_token(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "WMPO_LEARNER_TOKEN"}
    proc = subprocess.run(
        [sys.executable, "-m", "wmpo_core.cli", "serve", "--store", str(tmp_path / "s.zarr")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert "no token" in proc.stderr and "WMPO_LEARNER_TOKEN" in proc.stderr
    assert not (tmp_path / "s.zarr").exists()


def test_tls_end_to_end_with_a_private_ca(tmp_path):
    """What the off-loopback policy asks for: the token and the weights only cross TLS."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl command not available to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    learner = start_learner(
        tmp_path / "learner", "--ssl-certfile", str(cert), "--ssl-keyfile", str(key), ca=cert
    )
    try:
        assert learner.url.startswith("https://")
        with LearnerClient(learner.url, TOKEN, verify=str(cert)) as client:
            assert client.health().auth_required
            assert client.create_run("sft").state == "running"
        # The system CAs do not vouch for it.
        with (
            LearnerClient(learner.url, TOKEN) as untrusting,
            pytest.raises(LearnerUnavailable, match="unreachable"),
        ):
            untrusting.health()
        with (
            LearnerClient(learner.url.replace("https", "http"), TOKEN) as plain,
            pytest.raises(LearnerUnavailable),
        ):
            plain.health()
    finally:
        learner.stop()
