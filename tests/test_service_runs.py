"""Training-run status and metrics: reported by learner jobs over HTTP, read back by anyone with the
token, kept across service restarts."""

from __future__ import annotations

import math

import httpx
import pytest
from pydantic import ValidationError
from service_harness import TOKEN, auth, start_learner
from wmpo_core.protocol.models import RunCreate, RunUpdate
from wmpo_learner.service.runs import RunBook, RunFinishedError
from wmpo_ros.learner_client import LearnerClient, LearnerRejected


@pytest.fixture(scope="module")
def learner(tmp_path_factory):
    learner = start_learner(tmp_path_factory.mktemp("learner"))
    yield learner
    learner.stop()


@pytest.fixture
def client(learner):
    with LearnerClient(learner.url, TOKEN) as c:
        yield c


def test_a_run_reports_progress_and_metrics(client):
    run = client.create_run(
        "grpo", run_id="grpo-round-1", stage="imagination", params={"group_size": 8, "lr": 1e-5}
    )
    assert run.state == "running" and run.params == {"group_size": 8, "lr": 1e-5}
    for step in range(3):
        client.update_run(
            run.run_id,
            progress=(step + 1) / 4,
            metrics={"loss": 1.0 / (step + 1), "success_rate": 0.2 * step},
            step=step,
        )
    client.update_run(run.run_id, stage="evaluate", metrics={"eval_success": 0.6})
    got = client.get_run(run.run_id)
    assert got.stage == "evaluate" and got.progress == pytest.approx(0.75)
    assert got.metrics == {
        "loss": pytest.approx(1 / 3),
        "success_rate": pytest.approx(0.4),
        "eval_success": 0.6,
    }
    assert [p.step for p in got.history] == [0, 1, 2, None]
    assert [p.values.get("loss") for p in got.history[:3]] == pytest.approx([1.0, 0.5, 1 / 3])
    assert len(client.get_run(run.run_id, history_limit=2).history) == 2
    assert run.run_id in [r.run_id for r in client.list_runs(kind="grpo", state="running")]


def test_non_finite_metrics_travel_as_null(client):
    run = client.create_run("sft", metrics={"loss": math.nan})
    updated = client.update_run(run.run_id, metrics={"loss": math.inf, "grad_norm": 3.0})
    assert updated.metrics == {"loss": None, "grad_norm": 3.0}


def test_finished_runs_take_no_updates_and_errors_are_clear(client):
    run = client.create_run("align")
    client.update_run(run.run_id, state="succeeded", progress=1.0, message="done")
    with pytest.raises(LearnerRejected) as finished:
        client.update_run(run.run_id, progress=0.5)
    assert finished.value.status_code == 409 and "succeeded" in finished.value.detail
    with pytest.raises(LearnerRejected) as dup:
        client.create_run("align", run_id=run.run_id)
    assert dup.value.status_code == 409
    with pytest.raises(LearnerRejected) as unknown:
        client.get_run("no-such-run")
    assert unknown.value.status_code == 404
    with pytest.raises(ValidationError):
        client.update_run(run.run_id, progress=2.0)  # the client's model refuses before sending
    r = httpx.patch(
        f"{client.base_url}/v1/runs/{run.run_id}", json={"progress": 2.0}, headers=auth(), timeout=10
    )
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "progress"]


def test_runs_survive_a_restart(learner, client):
    run = client.create_run("reward", metrics={"auc": 0.9})
    client.update_run(run.run_id, metrics={"auc": 0.95}, step=10)
    before = client.get_run(run.run_id)
    learner.stop()
    learner.start()
    with LearnerClient(learner.url, TOKEN) as fresh:
        assert fresh.get_run(run.run_id) == before


def test_runbook_skips_a_torn_metrics_line(tmp_path):
    book = RunBook(tmp_path)
    book.create(RunCreate(run_id="r1", kind="sft"))
    book.update("r1", RunUpdate(metrics={"loss": 1.0}, step=1))
    with open(tmp_path / "r1.metrics.jsonl", "a") as f:
        f.write('{"time": 1.0, "step": 2, "val')  # the process died mid-append
    reopened = RunBook(tmp_path)
    assert [p.step for p in reopened.get("r1").history] == [1]
    reopened.update("r1", RunUpdate(metrics={"loss": 0.5}, step=3))  # appends after the torn line
    assert [p.step for p in RunBook(tmp_path).get("r1").history] == [1, 3]
    reopened.update("r1", RunUpdate(state="failed", message="diverged"))
    with pytest.raises(RunFinishedError):
        reopened.update("r1", RunUpdate(progress=0.1))
