"""The Function App: triggers, request parsing, and the hand-off to `cleanup`.

- `cleanup_nightly`: timer on %CLEANUP_SCHEDULE% (UTC); queues a run unless one is going.
- `start_run`: `POST /api/cleanup` [`?dryRun=` or `{"dryRun": ...}`] -> 202 and the run id.
- `get_run`: `GET /api/cleanup/runs/{runId}` -> the run's status and, once finished, its report.
- `list_runs`: `GET /api/cleanup/runs[?limit=]` -> recent runs, newest first.
- `execute_run`: queue %CLEANUP_RUN_QUEUE%; runs the engine under the registry's lock.
- `abandon_run`: queue %CLEANUP_RUN_QUEUE%-poison; a message that failed every retry marks
  its run failed, so it does not hold the lock until QUEUED_TIMEOUT.

Telemetry: the Python worker configures Azure Monitor (PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY);
this module never calls configure_azure_monitor. See docs/operations.md.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import azure.functions as func
from azure.core.exceptions import AzureError

from cleanup import runs
from cleanup.errors import ConfigurationError
from cleanup.settings import load_settings

if TYPE_CHECKING:
    from cleanup.report import Report
    from cleanup.settings import Settings

log = logging.getLogger("cleanup.function_app")

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)

POISON_REASON = (
    "did not start: its queue message failed every attempt and was moved to the poison queue"
)


class BadRequestError(Exception):
    """A request parameter or body the API refuses (400), naming the parameter."""

    def __init__(self, message: str, parameter: str | None = None) -> None:
        super().__init__(message)
        self.parameter = parameter


# --- responses ------------------------------------------------------------------------------


def _json(
    status: int, body: Mapping[str, Any], headers: Mapping[str, str] | None = None
) -> func.HttpResponse:
    return func.HttpResponse(
        json.dumps(body, indent=None),
        status_code=status,
        mimetype="application/json",
        headers=dict(headers or {}),
    )


def _error(status: int, code: str, message: str, parameter: str | None = None) -> func.HttpResponse:
    error: dict[str, Any] = {"code": code, "message": message}
    if parameter is not None:
        error["parameter"] = parameter
    return _json(status, {"error": error})


def _api_base(req: func.HttpRequest) -> str:
    """`https://host/api` of this request: no query, so the function key never echoes."""
    parts = urlsplit(str(req.url))
    path = parts.path
    marker = path.find("/cleanup")
    prefix = path[:marker] if marker >= 0 else ""
    return urlunsplit((parts.scheme, parts.netloc, prefix, "", ""))


def _status_url(req: func.HttpRequest, run_id: str) -> str:
    return f"{_api_base(req)}/cleanup/runs/{run_id}"


# --- request parsing ------------------------------------------------------------------------


def _parse_bool(value: object, parameter: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    shown = json.dumps(value) if not isinstance(value, str) else repr(value[:40])
    raise BadRequestError(f"{parameter} must be true or false, not {shown}", parameter)


def parse_start_request(req: func.HttpRequest) -> bool | None:
    """The `dryRun` override of a POST (None: CLEANUP_DRY_RUN applies); BadRequestError."""
    from_query = req.params.get("dryRun")
    query_value = _parse_bool(from_query, "dryRun") if from_query is not None else None
    body = req.get_body() or b""
    body_value: bool | None = None
    if body.strip():
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise BadRequestError('the body must be a JSON object, e.g. {"dryRun": true}') from None
        if not isinstance(data, dict):
            raise BadRequestError('the body must be a JSON object, e.g. {"dryRun": true}')
        unknown = sorted(key for key in data if key != "dryRun")
        if unknown:
            raise BadRequestError(
                f"unknown body field {unknown[0]!r}; the only field is dryRun", unknown[0]
            )
        if "dryRun" in data:
            body_value = _parse_bool(data["dryRun"], "dryRun")
    if query_value is not None and body_value is not None and query_value != body_value:
        raise BadRequestError("dryRun is given in the query and the body with different values")
    return query_value if query_value is not None else body_value


def parse_limit(req: func.HttpRequest) -> int:
    text = req.params.get("limit")
    if text is None or text == "":
        return runs.DEFAULT_LIST_LIMIT
    if not text.isdigit() or not 1 <= int(text) <= runs.MAX_LIST_LIMIT:
        raise BadRequestError(
            f"limit must be a whole number from 1 to {runs.MAX_LIST_LIMIT}", "limit"
        )
    return int(text)


def _settings(dry_run: bool | None = None) -> Settings:
    return load_settings(os.environ, dry_run=dry_run)


def _misconfigured(error: ConfigurationError) -> func.HttpResponse:
    log.error("the Function App is misconfigured: %s", error)
    return _error(500, "Misconfigured", f"the Function App is misconfigured: {error}")


def _storage_unavailable(error: AzureError) -> func.HttpResponse:
    log.error("the run store is unavailable: %s", type(error).__name__)
    return _error(503, "StoreUnavailable", "the run store (AzureWebJobsStorage) is unavailable")


# --- triggers -------------------------------------------------------------------------------


@app.timer_trigger(
    schedule="%CLEANUP_SCHEDULE%", arg_name="timer", run_on_startup=False, use_monitor=True
)
async def cleanup_nightly(timer: func.TimerRequest) -> None:
    """The nightly run: queued like an HTTP run; skipped (logged) while another is going."""
    if timer.past_due:
        log.warning("the nightly cleanup is past due; running it now")
    try:
        settings = _settings()
    except ConfigurationError as error:
        log.error("the nightly cleanup cannot run, misconfigured: %s", error)  # noqa: TRY400
        raise
    async with runs.open_store(os.environ, settings) as store:
        try:
            record = await store.claim(trigger=runs.Trigger.TIMER, dry_run=settings.dry_run)
        except runs.RunGoingError as going:
            log.warning(
                "nightly cleanup skipped: run %s is still going", going.run_id or "(unknown)"
            )
            return
    log.info("nightly cleanup queued as run %s", record.run_id)


@app.route(route="cleanup", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
async def start_run(req: func.HttpRequest) -> func.HttpResponse:
    """Queue a run: 202 with its id and status URL; 409 while one is going; 400 bad input."""
    try:
        dry_run = parse_start_request(req)
        settings = _settings(dry_run)
    except BadRequestError as bad:
        return _error(400, "BadRequest", str(bad), bad.parameter)
    except ConfigurationError as error:
        return _misconfigured(error)
    try:
        async with runs.open_store(os.environ, settings) as store:
            record = await store.claim(trigger=runs.Trigger.HTTP, dry_run=settings.dry_run)
    except runs.RunGoingError as going:
        return _json(
            409,
            {
                "error": {
                    "code": "RunGoing",
                    "message": "a cleanup run of this registry is already queued or running",
                },
                "runId": going.run_id,
                "statusUrl": _status_url(req, going.run_id) if going.run_id else None,
            },
        )
    except ConfigurationError as error:
        return _misconfigured(error)
    except AzureError as error:
        return _storage_unavailable(error)
    status_url = _status_url(req, record.run_id)
    return _json(
        202,
        {"runId": record.run_id, "status": record.state.value, "statusUrl": status_url},
        headers={"Location": status_url},
    )


@app.route(route="cleanup/runs/{runId}", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
async def get_run(req: func.HttpRequest) -> func.HttpResponse:
    """One run's status and, once finished, its report; 404 unknown, 400 not a run id."""
    run_id = req.route_params.get("runId", "")
    if not runs.is_run_id(run_id):
        return _error(
            400, "BadRequest", "not a run id (like 20261204T020000Z-1a2b3c4d5e6f)", "runId"
        )
    try:
        settings = _settings()
        async with runs.open_store(os.environ, settings) as store:
            view = await store.get(run_id)
    except ConfigurationError as error:
        return _misconfigured(error)
    except AzureError as error:
        return _storage_unavailable(error)
    if view is None:
        return _error(404, "NotFound", f"no run {run_id}")
    return _json(200, {**view.to_dict(), "statusUrl": _status_url(req, run_id)})


@app.route(route="cleanup/runs", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
async def list_runs(req: func.HttpRequest) -> func.HttpResponse:
    """The most recent runs, newest first (`?limit=`, 1 to 100, default 20), no reports."""
    try:
        limit = parse_limit(req)
        settings = _settings()
        async with runs.open_store(os.environ, settings) as store:
            records = await store.list(limit)
    except BadRequestError as bad:
        return _error(400, "BadRequest", str(bad), bad.parameter)
    except ConfigurationError as error:
        return _misconfigured(error)
    except AzureError as error:
        return _storage_unavailable(error)
    return _json(
        200,
        {"runs": [{**r.to_dict(), "statusUrl": _status_url(req, r.run_id)} for r in records]},
    )


async def run_engine(settings: Settings, run_id: str) -> Report:
    from cleanup.engine import run

    return await run(settings, run_id=run_id)


@app.queue_trigger(
    arg_name="message", queue_name="%CLEANUP_RUN_QUEUE%", connection="AzureWebJobsStorage"
)
async def execute_run(message: func.QueueMessage) -> None:
    """Run a queued run once, under the lock. Raises only to have the queue retry it later."""
    try:
        request = runs.RunMessage.parse(message.get_body().decode("utf-8", errors="replace"))
    except ValueError as bad:
        log.error("cleanup queue message %s dropped: %s", message.id, bad)  # noqa: TRY400
        return
    try:
        # The run's dry-run flag is its stored record's (the store applies it), not the
        # message's: a message never decides whether a run deletes.
        settings = _settings()
    except ConfigurationError as error:
        # Nothing to retry: the record turns failed ("did not start") after QUEUED_TIMEOUT.
        log.error("cleanup run %s cannot start, misconfigured: %s", request.run_id, error)  # noqa: TRY400
        return
    if message.dequeue_count and message.dequeue_count > 1:
        log.warning("cleanup run %s: delivery %d", request.run_id, message.dequeue_count)
    async with runs.open_store(os.environ, settings) as store:
        await store.execute(request, settings, run_engine)


@app.queue_trigger(
    arg_name="message",
    queue_name="%CLEANUP_RUN_QUEUE%-poison",
    connection="AzureWebJobsStorage",
)
async def abandon_run(message: func.QueueMessage) -> None:
    """A run message that failed every attempt: its run is marked failed, never started."""
    try:
        request = runs.RunMessage.parse(message.get_body().decode("utf-8", errors="replace"))
        settings = _settings()
    except (ValueError, ConfigurationError) as bad:
        log.error("poison cleanup message %s dropped: %s", message.id, bad)  # noqa: TRY400
        return
    async with runs.open_store(os.environ, settings) as store:
        await store.abandon(request.run_id, POISON_REASON)
