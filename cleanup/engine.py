"""One cleanup run from parsed settings: build the credential and adapters, run, report.

This is the entry point the command line and the Function App share. It never reads the
environment: everything comes from `Settings`.
"""

from __future__ import annotations

import logging
import uuid
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime

from azure.core.credentials_async import AsyncTokenCredential

from cleanup.credentials import build_credential
from cleanup.devops import AzureDevOpsPullRequests, BearerAuth, DevOpsAuth, PatAuth
from cleanup.registry import AcrRegistry
from cleanup.report import Report, build_report
from cleanup.retry import RetryPolicy
from cleanup.runner import Clock, ProgressCallback, run_cleanup
from cleanup.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Tuning:
    """How patient the adapters are: not a user setting; tests shorten it to inject faults fast."""

    registry_timeout_s: float = 30.0
    devops_timeout_s: float = 30.0
    registry_backoff_s: float = 0.8
    """azure-core's backoff factor between registry retries without Retry-After."""
    registry_backoff_max_s: float = 60.0
    devops_retry: RetryPolicy | None = None
    """None: the Azure DevOps adapter's own RetryPolicy()."""


def utc_now() -> datetime:
    return datetime.now(UTC)


def new_run_id() -> str:
    return uuid.uuid4().hex


def credential_for(settings: Settings) -> AsyncTokenCredential:
    """The Azure credential the settings select (service principal or managed identity)."""
    return build_credential(settings.credential_choice())


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
    tuning: Tuning | None = None,
) -> Report:
    """Run one cleanup and report it; a stopped run is a report too (exit code 3)."""
    tuning = tuning or Tuning()
    run_id = run_id or new_run_id()
    mode = "dry run" if settings.dry_run else "real run"
    log.info("run %s: registry %s, %s", run_id, settings.registry, mode)
    devops_with = "a PAT" if settings.pat is not None else "the same credential"
    log.info(
        "credential: %s for the registry, %s for Azure DevOps",
        settings.credential_choice().describe(),
        devops_with,
    )
    async with AsyncExitStack() as stack:
        credential = credential_for(settings)
        stack.push_async_callback(credential.close)
        registry = await stack.enter_async_context(
            AcrRegistry(
                settings.registry_url,
                credential,
                concurrency=settings.concurrency,
                ca_file=settings.ssl_cert_file,
                timeout_s=tuning.registry_timeout_s,
                retry_backoff_factor=tuning.registry_backoff_s,
                retry_backoff_max=tuning.registry_backoff_max_s,
            )
        )
        pull_requests = await stack.enter_async_context(
            AzureDevOpsPullRequests(
                settings.org_url,
                settings.project,
                devops_auth(settings, credential),
                concurrency=settings.concurrency,
                ca_file=settings.ssl_cert_file,
                timeout_s=tuning.devops_timeout_s,
                retry=tuning.devops_retry,
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
