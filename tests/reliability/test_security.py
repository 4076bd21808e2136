"""Security: no secret (PAT, identity header, Entra and ACR tokens) in any output; credentials
only over HTTPS; the static security scans are clean. (The function key on every HTTP route is
tests/functions/test_metadata.py::test_http_routes_need_a_function_key.)"""

from __future__ import annotations

import base64
import logging
import re
import shutil
import subprocess
import sys

import pytest
from aiohttp import web

from cleanup.devops import AzureDevOpsPullRequests, PatAuth
from cleanup.engine import run
from emulators import Emulators
from tests.otel import in_memory_telemetry
from tests.reliability.conftest import (
    FAST,
    ROOT,
    Emulate,
    cli_environment,
    run_cli,
    settings_for,
)
from tests.reliability.scenarios import small_registry

pytestmark = pytest.mark.integration

PAT = "PAT-recognisable-0123456789abcdefSECRET"
JWT = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
"""Every token the emulators issue (Entra, ACR refresh and access) is a JWT."""


def secrets_of(emulators: Emulators) -> list[str]:
    basic = base64.b64encode(f":{PAT}".encode()).decode()
    return [PAT, basic, emulators.env["IDENTITY_HEADER"]]


def leaks(text: str, emulators: Emulators) -> list[str]:
    found = [secret[:12] + "..." for secret in secrets_of(emulators) if secret in text]
    return found + [match[:12] + "..." for match in JWT.findall(text)]


@pytest.fixture
def demo(emulate: Emulate) -> Emulators:
    return emulate(small_registry(), pat=PAT)


@pytest.mark.parametrize(
    ("args", "overrides", "exit_code"),
    [
        ((), {}, 0),
        (("--json",), {}, 0),
        (("-v",), {}, 0),
        (("-v", "--json", "--dry-run"), {}, 0),
        (("-v",), {"AZURE_DEVOPS_PAT": None}, 0),  # managed identity tokens for both services
        (("-v", "--json"), {"AZURE_DEVOPS_PAT": PAT[::-1]}, 3),  # refused PAT
        (("-v",), {"IDENTITY_HEADER": "wrong-header"}, 3),  # no Entra token
    ],
)
def test_no_secret_in_any_output_of_the_command_line(demo: Emulators, args, overrides, exit_code):
    """stdout (the report) and stderr (logs, errors) of the real CLI hold no PAT, no identity
    header and no token, whether the run succeeds, is verbose or fails authentication."""
    completed = run_cli(cli_environment(demo, **overrides), *args)
    assert completed.returncode == exit_code, completed.stderr
    assert demo.identity.state.issued or overrides.get("IDENTITY_HEADER")
    assert leaks(completed.stdout + completed.stderr, demo) == []


async def test_no_secret_in_logs_reports_exceptions_or_telemetry(
    demo: Emulators, caplog: pytest.LogCaptureFixture
):
    """A run with every logger at DEBUG, faults that raise and retry, and a refused PAT:
    no secret in the log records, the report (text and JSON), its errors or the spans."""
    telemetry = in_memory_telemetry()
    caplog.set_level(logging.DEBUG)
    texts = []
    for overrides in ({}, {"AZURE_DEVOPS_PAT": None}, {"AZURE_DEVOPS_PAT": PAT[::-1]}):
        report = await run(settings_for(demo, **overrides), tuning=FAST)
        texts += [report.to_json(), report.render_text(), repr(report)]
    texts += [record.getMessage() for record in caplog.records]
    texts += [str(record.exc_info) for record in caplog.records if record.exc_info]
    for span in telemetry.finished_spans():
        texts.append(str(dict(span.attributes or {})))
        texts += [f"{e.name} {dict(e.attributes or {})}" for e in span.events]
    texts += [str(point) for point in telemetry.points()]
    assert demo.identity.state.issued  # tokens were issued, so there was something to leak
    assert leaks("\n".join(texts), demo) == []


async def test_the_devops_adapter_never_sends_a_credential_over_http():
    """Built with an http:// URL (settings refuse one), the adapter refuses: nothing is sent."""
    seen: list[str | None] = []

    async def answer(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        return web.json_response({"pullRequestId": 1, "status": "active"})

    app = web.Application()
    app.router.add_get("/{tail:.*}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        with pytest.raises(ValueError, match="https"):
            AzureDevOpsPullRequests(
                f"http://127.0.0.1:{port}/org", None, PatAuth(PAT), retry=FAST.devops_retry
            )
    finally:
        await runner.cleanup()
    assert [header for header in seen if header] == []


def test_bandit_scans_the_product_and_finds_nothing():
    """bandit over cleanup/ and function_app.py (as `make security` runs it): no finding."""
    bandit = shutil.which("bandit", path=str(ROOT / ".venv" / "bin")) or shutil.which("bandit")
    assert bandit is not None
    completed = subprocess.run(  # noqa: S603 - our own tool on our own tree
        [bandit, "-q", "-c", "pyproject.toml", "-r", "cleanup", "function_app.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr


def test_ruff_security_rules_pass_with_every_skip_explained():
    """ruff's S rules are clean on the product, and every `noqa: S` says why."""
    completed = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--select", "S", "cleanup", "function_app.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout
    unexplained = []
    for path in [*(ROOT / "cleanup").glob("*.py"), ROOT / "function_app.py"]:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            skip = re.search(r"(?:noqa: [^#]*S\d{3}|nosec)(?P<why>.*)", line)
            if skip and not skip["why"].strip(" -"):
                unexplained.append(f"{path.name}:{number}")
    assert unexplained == []
