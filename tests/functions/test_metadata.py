"""What the Functions host reads from the app: triggers, routes, methods, auth levels."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from cleanup.settings import SETTING_DEFAULTS

ROOT = Path(__file__).resolve().parents[2]


def bindings(functions: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return json.loads(functions[name].get_function_json())["bindings"]


def trigger(functions: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [b for b in bindings(functions, name) if b["type"].endswith("Trigger")]
    return found


def test_the_app_has_exactly_its_functions(functions):
    """The app registers the timer, three HTTP routes and the two queue functions."""
    assert set(functions) == {
        "cleanup_nightly",
        "start_run",
        "get_run",
        "list_runs",
        "execute_run",
        "abandon_run",
    }


def test_the_timer_takes_its_schedule_from_the_setting(functions):
    """The nightly timer runs on %CLEANUP_SCHEDULE%, with the monitor, not at startup."""
    timer = trigger(functions, "cleanup_nightly")
    assert timer == {
        "direction": "IN",
        "type": "timerTrigger",
        "name": "timer",
        "schedule": "%CLEANUP_SCHEDULE%",
        "runOnStartup": False,
        "useMonitor": True,
    }


@pytest.mark.parametrize(
    ("name", "method", "route"),
    [
        ("start_run", "POST", "cleanup"),
        ("get_run", "GET", "cleanup/runs/{runId}"),
        ("list_runs", "GET", "cleanup/runs"),
    ],
)
def test_http_routes_need_a_function_key(functions, name, method, route):
    """Each HTTP function answers one method on its route and needs a function key."""
    http = trigger(functions, name)
    assert http["type"] == "httpTrigger"
    assert http["methods"] == [method]
    assert http["route"] == route
    assert http["authLevel"] == "FUNCTION"
    outputs = [b for b in bindings(functions, name) if b["direction"] == "OUT"]
    assert outputs == [{"direction": "OUT", "type": "http", "name": "$return"}]


@pytest.mark.parametrize(
    ("name", "queue"),
    [("execute_run", "%CLEANUP_RUN_QUEUE%"), ("abandon_run", "%CLEANUP_RUN_QUEUE%-poison")],
)
def test_queue_functions_read_the_run_queue_of_the_host_storage(functions, name, queue):
    """The queue functions read CLEANUP_RUN_QUEUE (and its poison queue) in AzureWebJobsStorage."""
    assert trigger(functions, name) == {
        "direction": "IN",
        "type": "queueTrigger",
        "name": "message",
        "queueName": queue,
        "connection": "AzureWebJobsStorage",
    }


def test_every_setting_a_binding_names_is_in_the_sample_settings(functions):
    """Each %SETTING% of a binding exists in local.settings.sample.json, with the default."""
    sample = json.loads((ROOT / "local.settings.sample.json").read_text())["Values"]
    for setting in ("CLEANUP_SCHEDULE", "CLEANUP_RUN_QUEUE"):
        assert sample[setting] == SETTING_DEFAULTS[setting]
    assert sample["CLEANUP_SCHEDULE"] == "0 0 2 * * *"


def _binding_settings(functions: dict[str, Any]) -> set[str]:
    names: set[str] = set()
    for name in functions:
        for binding in bindings(functions, name):
            for value in binding.values():
                if isinstance(value, str):
                    names |= set(re.findall(r"%([A-Za-z0-9_]+)%", value))
    return names


def test_every_setting_a_binding_names_is_a_documented_required_app_setting(functions):
    """The host has no default for a %SETTING% of a binding: each one is documented as a
    required app setting in docs/operations.md and set by the infra's app settings."""
    named = _binding_settings(functions)
    assert named == {"CLEANUP_SCHEDULE", "CLEANUP_RUN_QUEUE"}
    operations = (ROOT / "docs" / "operations.md").read_text()
    table = operations.split("## Settings the Function App adds", 1)[1].split("\n## ", 1)[0]
    assert "| required app setting |" in table
    main_bicep = (ROOT / "infra" / "main.bicep").read_text()
    for setting in named:
        (row,) = [line for line in table.splitlines() if line.startswith(f"| `{setting}` |")]
        assert row.split("|")[2].strip() == "**yes**", f"{setting} must be marked required"
        assert re.search(rf"^\s*{setting}:", main_bicep, re.MULTILINE), f"infra sets {setting}"


def test_the_sample_settings_name_every_product_setting():
    """The sample lists every setting, Azurite as storage, the Python worker, no credentials."""
    sample = json.loads((ROOT / "local.settings.sample.json").read_text())["Values"]
    assert set(SETTING_DEFAULTS) <= set(sample)
    assert sample["AzureWebJobsStorage"] == "UseDevelopmentStorage=true"
    assert sample["FUNCTIONS_WORKER_RUNTIME"] == "python"
    # No secret in the sample, and no placeholder either: a placeholder would be taken for a
    # value (a service principal with a bogus secret instead of the managed identity).
    for name in ("AZURE_DEVOPS_PAT", "AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET"):
        assert sample[name] == "", f"{name} must be empty in the sample"


def test_host_json_fits_flex_consumption_and_one_run_at_a_time():
    """host.json: bundle 4.x, a one-hour timeout, one queue message at a time, unsampled errors."""
    host = json.loads((ROOT / "host.json").read_text())
    assert host["version"] == "2.0"
    assert host["extensionBundle"] == {
        "id": "Microsoft.Azure.Functions.ExtensionBundle",
        "version": "[4.*, 5.0.0)",
    }
    assert host["functionTimeout"] == "01:00:00"
    queues = host["extensions"]["queues"]
    assert queues["batchSize"] == 1
    assert queues["newBatchThreshold"] == 0
    assert queues["maxDequeueCount"] >= 1
    sampling = host["logging"]["applicationInsights"]["samplingSettings"]
    assert set(sampling["excludedTypes"].split(";")) == {"Request", "Exception"}


def test_funcignore_leaves_out_everything_but_the_app():
    """.funcignore keeps tests, emulators, bench, infra, docs and local settings out."""
    ignored = {
        line.strip()
        for line in (ROOT / ".funcignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    expected = {"tests", "emulators", "bench", "infra", "docs", "local.settings.json", ".venv*"}
    assert expected | {"node_modules", ".git", ".ci"} <= ignored
