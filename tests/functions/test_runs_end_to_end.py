"""Whole runs through the Function App: POST, the queue message really in Azurite, the queue
function running the real engine against the emulators, and GET answering the report."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from azure.functions.timer import TimerRequest
from azure.storage.blob import ContainerClient

from cleanup import engine
from cleanup.runs import RunMessage, RunStore
from cleanup.settings import load_settings
from emulators import Emulators
from emulators.scenario import ScenarioBuilder
from tests.azurite import ACCOUNT_KEY
from tests.conftest import StartEmulators
from tests.functions.conftest import body_of, call, http, take_messages
from tests.otel import in_memory_telemetry

pytestmark = pytest.mark.integration


@pytest.fixture
def registry(start_emulators: StartEmulators) -> Emulators:
    """web/api: PR1 completed (its tag goes), PR2 active (stays), and a release tag."""
    scenario = (
        ScenarioBuilder()
        .image("web/api", "PR1")
        .image("web/api", "PR2")
        .image("web/api", "1.0.0")
        .pr(1, "completed")
        .pr(2, "active")
        .build()
    )
    return start_emulators(scenario)


@pytest.fixture
def live_env(
    app_env: dict[str, str], registry: Emulators, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    """The app's environment pointing at the emulators (registry, Azure DevOps, identity)."""
    for name, value in registry.env.items():
        monkeypatch.setenv(name, value)
    return app_env | registry.env


async def get(functions: dict[str, Any], run_id: str) -> dict[str, Any]:
    request = http("GET", f"cleanup/runs/{run_id}", route_params={"runId": run_id})
    response = await call(functions, "get_run")(request)
    assert response.status_code == 200
    answer: dict[str, Any] = body_of(response)
    return answer


async def test_a_posted_run_is_executed_by_the_queue_function_and_reported(
    functions, live_env, registry
):
    """POST queues, the queue function runs it against the registry, GET shows the report."""
    accepted = await call(functions, "start_run")(http("POST", "cleanup"))
    assert accepted.status_code == 202
    run_id = body_of(accepted)["runId"]
    (message,) = take_messages(live_env)

    await call(functions, "execute_run")(message)

    answer = await get(functions, run_id)
    assert answer["status"] == "succeeded"
    assert answer["exitCode"] == 0
    assert answer["startedAt"] is not None
    assert answer["finishedAt"] is not None
    report = answer["report"]
    assert report["runId"] == run_id
    actions = {a["tag"]: a for a in report["actions"]}
    assert actions["PR1"]["action"] == "delete"
    assert actions["PR1"]["digest"].startswith("sha256:")
    assert actions["PR2"]["action"] == "keep"
    assert answer["summary"]["deleted"] == 1
    assert not registry.acr.state.has_tag("web/api", "PR1")
    assert registry.acr.state.has_tag("web/api", "PR2")
    assert registry.acr.state.has_tag("web/api", "1.0.0")

    # the audit trail: the report is a blob of its own
    with ContainerClient.from_connection_string(
        live_env["AzureWebJobsStorage"], live_env["CLEANUP_STORAGE_CONTAINER"]
    ) as container:
        assert f"reports/{run_id}.json" in [b.name for b in container.list_blobs("reports/")]

    # the message delivered again runs nothing, and the lock is free for the next run
    requests_before = registry.log.count(service="acr")
    await call(functions, "execute_run")(message)
    assert registry.log.count(service="acr") == requests_before
    assert (await call(functions, "start_run")(http("POST", "cleanup"))).status_code == 202


async def test_a_dry_run_over_http_deletes_nothing(functions, live_env, registry):
    """POST ?dryRun=true: the report plans the deletion, the registry keeps every tag."""
    request = http("POST", "cleanup", params={"dryRun": "true"})
    run_id = body_of(await call(functions, "start_run")(request))["runId"]
    (message,) = take_messages(live_env)
    await call(functions, "execute_run")(message)
    answer = await get(functions, run_id)
    assert (answer["status"], answer["dryRun"]) == ("succeeded", True)
    assert answer["report"]["dryRun"] is True
    assert {a["tag"]: a["action"] for a in answer["report"]["actions"]}["PR1"] == "delete"
    assert registry.acr.state.has_tag("web/api", "PR1")


async def test_a_run_the_registry_refuses_is_failed_with_why(functions, live_env, monkeypatch):
    """A credential Azure DevOps refuses stops the run (exit 3): failed, the reason on it."""
    monkeypatch.setenv("AZURE_DEVOPS_PAT", "not-the-pat")
    run_id = body_of(await call(functions, "start_run")(http("POST", "cleanup")))["runId"]
    (message,) = take_messages(live_env)
    await call(functions, "execute_run")(message)
    answer = await get(functions, run_id)
    assert (answer["status"], answer["exitCode"]) == ("failed", 3)
    assert answer["error"].startswith("stopped:")
    assert answer["report"]["summary"]["deleted"] == 0


async def test_while_a_run_executes_posts_get_409_and_the_timer_skips(
    functions, live_env, registry, caplog
):
    """During a real run (held at its start) a POST gets 409 naming it and the timer skips."""
    run_id = body_of(await call(functions, "start_run")(http("POST", "cleanup")))["runId"]
    (message,) = take_messages(live_env)
    started, release = asyncio.Event(), asyncio.Event()

    async def held_engine(settings, run_id):
        started.set()
        await release.wait()
        return await engine.run(settings, run_id=run_id)

    settings = load_settings(live_env)
    async with RunStore.from_environ(live_env, settings) as store:
        execution = asyncio.create_task(
            store.execute(RunMessage.parse(message.get_body().decode()), settings, held_engine)
        )
        await asyncio.wait_for(started.wait(), timeout=60)
        try:
            assert (await get(functions, run_id))["status"] == "running"
            busy = await call(functions, "start_run")(http("POST", "cleanup"))
            assert busy.status_code == 409
            assert body_of(busy)["runId"] == run_id
            with caplog.at_level(logging.INFO):
                await call(functions, "cleanup_nightly")(TimerRequest())
            assert "skipped" in caplog.text
            assert take_messages(live_env) == []
        finally:
            release.set()
            record = await execution
    assert record is not None
    assert record.state.value == "succeeded"
    assert not registry.acr.state.has_tag("web/api", "PR1")


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _strings(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield str(key)
            yield from _strings(item)
    elif value is not None:
        yield str(value)


async def test_a_run_emits_its_metrics_and_spans_and_no_secret(
    functions, live_env, registry, caplog
):
    """A queued run emits spans per phase and the run metrics for its registry; no attribute,
    dimension or log line carries the PAT, the storage key or the identity header."""
    capture = in_memory_telemetry()
    run_id = body_of(await call(functions, "start_run")(http("POST", "cleanup")))["runId"]
    (message,) = take_messages(live_env)
    with caplog.at_level(logging.DEBUG):
        await call(functions, "execute_run")(message)
    settings = load_settings(live_env)

    trace_id = _trace_of(capture, run_id)
    spans = [s for s in capture.finished_spans() if s.context.trace_id == trace_id]
    names = {s.name for s in spans}
    assert {"cleanup.execute", "cleanup.run", "cleanup.scan", "cleanup.plan"} <= names
    assert "cleanup.delete" in names

    points = [p for p in capture.points() if p.attributes.get("registry") == settings.registry]
    by_name = {p.metric: p for p in points}
    assert by_name["cleanup.tags.scanned"].value == 3
    assert by_name["cleanup.tags.deleted"].value == 1
    assert by_name["cleanup.pull_requests.looked_up"].value == 2
    assert by_name["cleanup.runs"].attributes["outcome"] == "succeeded"
    assert by_name["cleanup.run.duration"].value[0] == 1

    secrets = [
        registry.pat,
        ACCOUNT_KEY,
        live_env["IDENTITY_HEADER"],
    ]
    seen: list[str] = []
    for span in spans:
        seen += _strings(dict(span.attributes or {}))
        for event in span.events:
            seen += _strings(dict(event.attributes or {}))
    for point in capture.points():
        seen += _strings(point.attributes)
    for record in caplog.records:
        seen.append(record.getMessage())
        seen += _strings({k: v for k, v in vars(record).items() if k.startswith("cleanup.")})
    for secret in secrets:
        assert not [text for text in seen if secret in text], "a secret reached telemetry"


def _trace_of(capture: Any, run_id: str) -> int | None:
    for span in capture.finished_spans():
        if span.name == "cleanup.execute" and span.attributes.get("cleanup.run_id") == run_id:
            return int(span.context.trace_id)
    return None
