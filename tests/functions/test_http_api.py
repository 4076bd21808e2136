"""The HTTP API and the timer, invoked as the host would, against a real Azurite.

These need no registry: starting and reading runs never contacts one. Executing runs is in
test_runs_end_to_end.py.
"""

from __future__ import annotations

import json
import logging
import re

import pytest
from azure.functions.timer import TimerRequest

from cleanup.runs import RUN_ID_PATTERN, RunMessage
from tests.functions.conftest import body_of, call, http, take_messages

pytestmark = pytest.mark.integration


async def post(functions, *, params=None, body=b""):
    return await call(functions, "start_run")(http("POST", "cleanup", params=params, body=body))


async def get_run(functions, run_id):
    request = http("GET", f"cleanup/runs/{run_id}", route_params={"runId": run_id})
    return await call(functions, "get_run")(request)


async def test_a_post_queues_a_run_and_answers_202_with_its_status_url(functions, app_env):
    """POST /api/cleanup answers 202, the run id, its status URL and Location; a message waits."""
    response = await post(functions)
    assert response.status_code == 202
    answer = body_of(response)
    assert RUN_ID_PATTERN.fullmatch(answer["runId"])
    assert answer["status"] == "queued"
    url = f"https://cleanup.example.net/api/cleanup/runs/{answer['runId']}"
    assert answer["statusUrl"] == url
    assert response.headers["Location"] == url
    (message,) = take_messages(app_env)
    parsed = RunMessage.parse(message.get_body().decode())
    assert parsed == RunMessage(run_id=answer["runId"], dry_run=False)


@pytest.mark.parametrize(
    ("params", "body", "dry_run"),
    [
        ({"dryRun": "true"}, b"", True),
        ({"dryRun": "false"}, b"", False),
        ({"dryRun": "TRUE"}, b"", True),
        ({}, b'{"dryRun": true}', True),
        ({}, b'{"dryRun": "false"}', False),
        ({}, b"{}", False),
        ({"dryRun": "true"}, b'{"dryRun": true}', True),
    ],
)
async def test_dry_run_comes_from_the_query_or_the_body(functions, app_env, params, body, dry_run):
    """dryRun, from the query or the JSON body, boolean or string, rides on the queue message."""
    response = await post(functions, params=params, body=body)
    assert response.status_code == 202
    (message,) = take_messages(app_env)
    assert RunMessage.parse(message.get_body().decode()).dry_run is dry_run


async def test_without_dry_run_the_setting_applies(functions, app_env, monkeypatch):
    """Without dryRun, CLEANUP_DRY_RUN decides."""
    monkeypatch.setenv("CLEANUP_DRY_RUN", "true")
    assert (await post(functions)).status_code == 202
    (message,) = take_messages(app_env)
    assert RunMessage.parse(message.get_body().decode()).dry_run is True


@pytest.mark.parametrize(
    ("params", "body", "parameter"),
    [
        ({"dryRun": "maybe"}, b"", "dryRun"),
        ({"dryRun": ""}, b"", "dryRun"),
        ({"dryRun": "1"}, b"", "dryRun"),
        ({}, b'{"dryRun": "yes"}', "dryRun"),
        ({}, b'{"dryRun": 1}', "dryRun"),
        ({}, b'{"dryRun": null}', "dryRun"),
        ({}, b'{"dryRun": [true]}', "dryRun"),
        ({}, b'{"dryrun": true}', "dryrun"),
        ({}, b'{"dryRun": true, "registry": "x"}', "registry"),
        ({}, b"dryRun=true", None),
        ({}, b"[true]", None),
        ({}, b'"true"', None),
        ({}, b"\xff\xfe", None),
        ({"dryRun": "true"}, b'{"dryRun": false}', None),
    ],
)
async def test_a_bad_parameter_or_body_gets_400_and_queues_nothing(
    functions, app_env, params, body, parameter
):
    """A bad dryRun, an unknown field or a body that is not a JSON object: 400, no run."""
    response = await post(functions, params=params, body=body)
    assert response.status_code == 400
    error = body_of(response)["error"]
    assert error["code"] == "BadRequest"
    assert error.get("parameter") == parameter
    if parameter:
        assert parameter in error["message"]
    assert take_messages(app_env) == []
    # and the lock is free: the next good request is accepted
    assert (await post(functions)).status_code == 202


async def test_a_second_post_while_a_run_is_queued_gets_409_with_its_id(functions, app_env):
    """A queued run holds the lock: a second POST answers 409 naming the queued run."""
    first = body_of(await post(functions))
    response = await post(functions, params={"dryRun": "true"})
    assert response.status_code == 409
    answer = body_of(response)
    assert answer["runId"] == first["runId"]
    assert answer["statusUrl"] == first["statusUrl"]
    assert answer["error"]["code"] == "RunGoing"
    assert len(take_messages(app_env)) == 1


async def test_the_status_url_never_carries_the_function_key(functions, app_env):
    """The function key (`code`) in the request URL is not echoed in statusUrl or Location."""
    request = http("POST", "cleanup", params={"code": "secret-function-key"})
    request = type(request)(
        "POST",
        "https://cleanup.example.net/api/cleanup?code=secret-function-key",
        params={"code": "secret-function-key"},
        body=b"",
    )
    response = await call(functions, "start_run")(request)
    assert response.status_code == 202
    assert "secret-function-key" not in response.get_body().decode()
    assert "secret-function-key" not in response.headers["Location"]


async def test_a_queued_run_reads_as_queued_without_a_report(functions, app_env):
    """GET /api/cleanup/runs/{id} of a queued run: status queued, no report yet."""
    run_id = body_of(await post(functions, params={"dryRun": "true"}))["runId"]
    response = await get_run(functions, run_id)
    assert response.status_code == 200
    answer = body_of(response)
    assert answer["runId"] == run_id
    assert answer["status"] == "queued"
    assert answer["dryRun"] is True
    assert answer["trigger"] == "http"
    assert answer["registry"] == "contoso.azurecr.io"
    assert answer["report"] is None
    assert answer["startedAt"] is None


@pytest.mark.parametrize(
    "run_id",
    [
        "nope",
        "../locks/contoso.azurecr.io",
        "20261204T020000Z-1a2b3c4d5e6f/../../x",
        "20261204T020000Z-1A2B3C4D5E6F",
        "20261204T020000Z-1a2b3c4d5e6f.json",
        "%2e%2e",
        "",
    ],
)
async def test_a_malformed_run_id_gets_400(functions, app_env, run_id):
    """Anything but the run id shape is refused before it can name a blob."""
    response = await get_run(functions, run_id)
    assert response.status_code == 400
    assert body_of(response)["error"]["parameter"] == "runId"


async def test_an_unknown_run_id_gets_404(functions, app_env):
    """A well-formed id of no run: 404."""
    response = await get_run(functions, "20261204T020000Z-1a2b3c4d5e6f")
    assert response.status_code == 404
    assert body_of(response)["error"]["code"] == "NotFound"


async def test_listing_without_runs_is_empty(functions, app_env):
    """GET /api/cleanup/runs before any run: an empty list."""
    response = await call(functions, "list_runs")(http("GET", "cleanup/runs"))
    assert response.status_code == 200
    assert body_of(response) == {"runs": []}


@pytest.mark.parametrize("limit", ["0", "101", "-1", "ten", "1.5"])
async def test_a_bad_limit_gets_400(functions, app_env, limit):
    """limit must be a whole number from 1 to 100."""
    request = http("GET", "cleanup/runs", params={"limit": limit})
    response = await call(functions, "list_runs")(request)
    assert response.status_code == 400
    assert body_of(response)["error"]["parameter"] == "limit"


async def test_a_misconfigured_app_answers_500_naming_the_setting(
    functions, app_env, monkeypatch, caplog
):
    """A bad setting: 500 with a message naming it, logged, and nothing queued."""
    monkeypatch.setenv("CLEANUP_MAX_DELETIONS", "-5")
    with caplog.at_level(logging.ERROR):
        response = await post(functions)
    assert response.status_code == 500
    error = body_of(response)["error"]
    assert error["code"] == "Misconfigured"
    assert "CLEANUP_MAX_DELETIONS" in error["message"]
    assert "CLEANUP_MAX_DELETIONS" in caplog.text
    assert take_messages(app_env) == []


async def test_a_misconfigured_app_never_shows_a_secret(functions, app_env, monkeypatch):
    """The 500 names a bad secret setting but never its value."""
    monkeypatch.setenv("AZURE_CLIENT_SECRET", "sup3r-s3cret-value")
    response = await post(functions)
    assert response.status_code == 500
    assert "AZURE_CLIENT_SECRET" in body_of(response)["error"]["message"]
    assert "sup3r-s3cret-value" not in response.get_body().decode()


async def test_the_timer_queues_a_run_and_warns_when_past_due(functions, app_env, caplog):
    """A past-due timer logs a warning and still queues the nightly run."""
    with caplog.at_level(logging.INFO):
        await call(functions, "cleanup_nightly")(TimerRequest(past_due=True))
    assert "past due" in caplog.text
    (message,) = take_messages(app_env)
    run_id = RunMessage.parse(message.get_body().decode()).run_id
    answer = body_of(await get_run(functions, run_id))
    assert (answer["status"], answer["trigger"]) == ("queued", "timer")


async def test_the_timer_skips_and_logs_while_a_run_is_going(functions, app_env, caplog):
    """The timer queues nothing while another run holds the lock, and says so."""
    run_id = body_of(await post(functions))["runId"]
    take_messages(app_env)
    with caplog.at_level(logging.INFO):
        await call(functions, "cleanup_nightly")(TimerRequest(past_due=False))
    assert re.search(rf"skipped.*{run_id}", caplog.text)
    assert take_messages(app_env) == []


async def test_a_malformed_queue_message_is_dropped(functions, app_env, caplog):
    """A message that is not a run message is logged and dropped, never retried."""
    import azure.functions as func

    for body in (b"not json", json.dumps({"runId": "../x", "dryRun": True}).encode()):
        await call(functions, "execute_run")(func.QueueMessage(id="m1", body=body))
    assert "dropped" in caplog.text


async def test_a_message_for_an_unknown_run_does_nothing(functions, app_env, caplog):
    """A well-formed message naming no run is dropped."""
    import azure.functions as func

    body = RunMessage(run_id="20261204T020000Z-1a2b3c4d5e6f", dry_run=True).to_json()
    with caplog.at_level(logging.INFO):
        await call(functions, "execute_run")(func.QueueMessage(id="m2", body=body.encode()))
    assert "no such run" in caplog.text


async def test_a_poisoned_message_marks_its_run_failed_and_frees_the_lock(functions, app_env):
    """The poison-queue function fails the queued run, so the next POST is accepted."""
    first = body_of(await post(functions))
    (message,) = take_messages(app_env)
    await call(functions, "abandon_run")(message)
    answer = body_of(await get_run(functions, first["runId"]))
    assert answer["status"] == "failed"
    assert "poison" in answer["error"]
    assert answer["finishedAt"] is not None
    assert (await post(functions)).status_code == 202
    # and the original message, delivered once more, does not run it
    await call(functions, "execute_run")(message)
    assert body_of(await get_run(functions, first["runId"]))["status"] == "failed"


async def test_a_misconfigured_timer_logs_the_setting_and_fails(
    functions, app_env, monkeypatch, caplog
):
    """The timer with a bad setting logs the setting's message, fails, and queues nothing."""
    from cleanup.errors import ConfigurationError

    monkeypatch.setenv("CLEANUP_UNKNOWN_PR", "maybe")
    with caplog.at_level(logging.ERROR), pytest.raises(ConfigurationError):
        await call(functions, "cleanup_nightly")(TimerRequest())
    assert "CLEANUP_UNKNOWN_PR" in caplog.text
    assert take_messages(app_env) == []
