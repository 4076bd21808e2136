"""One cleanup run from parsed settings: build the credential and adapters, run, report.

This is the entry point the command line and the Function App share. It never reads the
environment: everything comes from `Settings`.
"""

from __future__ import annotations

import logging
import uuid
from contextlib import AsyncExitStack
from datetime import UTC, datetime

from azure.core.credentials_async import AsyncTokenCredential

from cleanup.credentials import make_credential
from cleanup.devops import AzureDevOpsPullRequests, BearerAuth, DevOpsAuth, PatAuth
from cleanup.registry import AcrRegistry
from cleanup.report import Report, build_report
from cleanup.runner import Clock, ProgressCallback, run_cleanup
from cleanup.settings import Settings

log = logging.getLogger(__name__)


def utc_now() -> datetime:
    return datetime.now(UTC)


def new_run_id() -> str:
    return uuid.uuid4().hex


def credential_for(settings: Settings) -> AsyncTokenCredential:
    """The Azure credential the settings select (service principal or managed identity)."""
    secret = settings.client_secret.reveal() if settings.client_secret is not None else None
    return make_credential(settings.client_id, settings.tenant_id, secret)


def devops_auth(settings: Settings, credential: AsyncTokenCredential) -> DevOpsAuth:
    """A PAT when one is set; otherwise an Entra token from the same Azure credential."""
    if settings.pat is not None:
        return PatAuth(settings.pat.reveal())
    return BearerAuth(credential)


async def run(
    settings: Settings,
    *,
    run_id: str | None = None,
    progress: ProgressCallback | None = None,
    clock: Clock = utc_now,
) -> Report:
    """Run one cleanup and report it; a stopped run is a report too (exit code 3)."""
    run_id = run_id or new_run_id()
    mode = "dry run" if settings.dry_run else "real run"
    log.info("run %s: registry %s, %s", run_id, settings.registry, mode)
    async with AsyncExitStack() as stack:
        credential = credential_for(settings)
        stack.push_async_callback(credential.close)
        registry = await stack.enter_async_context(
            AcrRegistry(
                settings.registry_url,
                credential,
                concurrency=settings.concurrency,
                ca_file=settings.ssl_cert_file,
            )
        )
        pull_requests = await stack.enter_async_context(
            AzureDevOpsPullRequests(
                settings.org_url,
                settings.project,
                devops_auth(settings, credential),
                concurrency=settings.concurrency,
                ca_file=settings.ssl_cert_file,
            )
        )
        result = await run_cleanup(
            settings, registry, pull_requests, clock=clock, progress=progress
        )
    return build_report(
        result.plan,
        result.results.values(),
        run_id=run_id,
        registry=settings.registry,
        dry_run=settings.dry_run,
        started_at=result.started_at,
        finished_at=result.finished_at or clock(),
        stopped=result.stopped,
    )
