"""Fixtures of the Function App tests: the app's functions (read once), Azurite, the app's
environment, and helpers to read the run queue."""

from __future__ import annotations

import json
import os
import secrets
from typing import Any

import azure.functions as func
import pytest
from azure.storage.queue import QueueClient, TextBase64DecodePolicy

from tests.azurite import Azurite, azurite  # noqa: F401 - the session fixture, re-exported

# Valid settings that contact nothing until a run executes (the HTTP layer never does).
OFFLINE_SETTINGS = {
    "CLEANUP_REGISTRY": "contoso.azurecr.io",
    "AZURE_DEVOPS_ORG_URL": "https://dev.azure.com/contoso",
}


@pytest.fixture(scope="session")
def functions() -> dict[str, Any]:
    """The app's functions by name. `app.get_functions()` may be called once per process."""
    import function_app

    return {fn.get_function_name(): fn for fn in function_app.app.get_functions()}


@pytest.fixture
def names() -> dict[str, str]:
    """A container and queue of this test's own, so tests sharing one Azurite stay apart."""
    suffix = secrets.token_hex(4)
    return {"CLEANUP_STORAGE_CONTAINER": f"runs-{suffix}", "CLEANUP_RUN_QUEUE": f"runs-{suffix}"}


@pytest.fixture
def app_env(
    monkeypatch: pytest.MonkeyPatch,
    azurite: Azurite,  # noqa: F811 - the fixture imported above
    names: dict[str, str],
) -> dict[str, str]:
    """The Function App's environment: Azurite as AzureWebJobsStorage, offline settings."""
    for name in list(os.environ):
        if name.startswith(("CLEANUP_", "AzureWebJobsStorage")):
            monkeypatch.delenv(name)
    env = {"AzureWebJobsStorage": azurite.connection_string, **OFFLINE_SETTINGS, **names}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


def call(functions: dict[str, Any], name: str) -> Any:
    return functions[name].get_user_function()


def http(
    method: str,
    path: str,
    *,
    params: dict[str, str] | None = None,
    body: bytes = b"",
    route_params: dict[str, str] | None = None,
) -> func.HttpRequest:
    return func.HttpRequest(
        method,
        f"https://cleanup.example.net/api/{path}",
        params=params or {},
        route_params=route_params or {},
        body=body,
        headers={"content-type": "application/json"} if body else {},
    )


def body_of(response: func.HttpResponse) -> Any:
    return json.loads(response.get_body())


def queue_client(env: dict[str, str], *, poison: bool = False) -> QueueClient:
    name = env["CLEANUP_RUN_QUEUE"] + ("-poison" if poison else "")
    return QueueClient.from_connection_string(
        env["AzureWebJobsStorage"], name, message_decode_policy=TextBase64DecodePolicy()
    )


def take_messages(env: dict[str, str]) -> list[func.QueueMessage]:
    """Every message now in the run queue, taken off it as the host's trigger would."""
    with queue_client(env) as queue:
        try:
            received = list(queue.receive_messages(max_messages=32, visibility_timeout=60))
        except Exception as error:  # the queue may not exist yet: no message was ever sent
            if "QueueNotFound" in str(error):
                return []
            raise
        taken = []
        for message in received:
            taken.append(
                func.QueueMessage(
                    id=message.id, body=message.content.encode(), pop_receipt=message.pop_receipt
                )
            )
            queue.delete_message(message)
        return taken
