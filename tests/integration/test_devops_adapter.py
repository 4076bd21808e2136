"""The Azure DevOps adapter over real HTTPS and httpx against the emulators."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cleanup.credentials import make_credential
from cleanup.devops import AzureDevOpsPullRequests, BearerAuth, PatAuth
from cleanup.errors import AuthenticationError, ProjectNotFoundError, ServiceUnreachableError
from cleanup.model import PullRequestStatus
from cleanup.retry import RetryPolicy
from emulators import devops as devops_emulator
from emulators import identity as identity_emulator
from emulators.entra import TokenIssuer
from emulators.harness import FaultRule, Knobs, RequestLog, ServiceThread, TestCA

pytestmark = pytest.mark.integration

PAT = "integration-pat-6a1d"
FAST = RetryPolicy(attempts=4, base_delay_s=0.01, max_delay_s=0.05, total_s=30)


async def no_sleep(_seconds: float) -> None:
    return None


@dataclass
class Services:
    ca: TestCA
    log: RequestLog
    issuer: TokenIssuer
    devops: devops_emulator.DevOpsState
    devops_knobs: Knobs
    devops_thread: ServiceThread
    identity: identity_emulator.IdentityState
    identity_thread: ServiceThread
    uami: identity_emulator.ManagedIdentity

    @property
    def org_url(self) -> str:
        return f"{self.devops_thread.base_url}/contoso/"

    def requests(self) -> int:
        return self.log.count("devops")


@pytest.fixture
def services(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Services]:
    ca, log, issuer = TestCA(tmp_path), RequestLog(), TokenIssuer()
    state = devops_emulator.DevOpsState("contoso", pats=[PAT])
    knobs = Knobs()
    devops_thread = ServiceThread(
        devops_emulator.make_app(state, knobs, log, issuer), ssl_context=ca.server_context()
    )
    uami = identity_emulator.user_assigned("cleanup")
    identity = identity_emulator.IdentityState(user_assigned_identities=(uami,))
    identity_thread = ServiceThread(
        identity_emulator.make_app(identity, Knobs(), log, issuer), ssl_context=None
    )
    devops_thread.start()
    identity_thread.start()
    monkeypatch.setenv("SSL_CERT_FILE", str(ca.ca_file))
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    monkeypatch.setenv("IDENTITY_ENDPOINT", identity_thread.base_url + identity_emulator.TOKEN_PATH)
    monkeypatch.setenv("IDENTITY_HEADER", identity.header)
    monkeypatch.delenv("IDENTITY_SERVER_THUMBPRINT", raising=False)
    closed = datetime(2026, 11, 30, 8, 0, 0, 500000, tzinfo=UTC)
    state.add_pull_request(1, status="active", project="Fabrikam")
    state.add_pull_request(2, status="active", project="Fabrikam", is_draft=True)
    state.add_pull_request(3, status="completed", project="Fabrikam", closed_at=closed)
    state.add_pull_request(4, status="abandoned", project="Fabrikam", closed_at=closed)
    state.add_pull_request(5, status="completed", project="Other", closed_at=closed)
    yield Services(ca, log, issuer, state, knobs, devops_thread, identity, identity_thread, uami)
    identity_thread.stop()
    devops_thread.stop()


def adapter(services: Services, project: str | None, auth: object, **kwargs: object):
    kwargs.setdefault("retry", FAST)
    kwargs.setdefault("sleep", no_sleep)
    return AzureDevOpsPullRequests(services.org_url, project, auth, **kwargs)  # type: ignore[arg-type]


async def test_httpx_trusts_the_emulator_ca_through_ssl_cert_file_only(services):
    """With no verify= argument, the adapter's own client trusts the CA from SSL_CERT_FILE."""
    async with adapter(services, None, PatAuth(PAT)) as devops:
        pr = await devops.look_up(1)
    assert pr.status is PullRequestStatus.ACTIVE


async def test_untrusted_certificate_is_unreachable_at_once(services, monkeypatch):
    """Without the CA trusted, the first lookup raises ServiceUnreachableError without retrying."""
    monkeypatch.delenv("SSL_CERT_FILE")
    async with adapter(services, None, PatAuth(PAT)) as devops:
        with pytest.raises(ServiceUnreachableError, match="certificate"):
            await devops.look_up(1)
    assert services.requests() == 0


async def test_pat_with_project_answers_every_state(services):
    """With a PAT and a project: statuses, closed dates, other projects and missing ids."""
    async with adapter(services, "fabrikam", PatAuth(PAT)) as devops:
        await devops.check_access()
        states = {i: await devops.look_up(i) for i in (1, 2, 3, 4, 5, 99)}
    assert {i: s.status for i, s in states.items()} == {
        1: PullRequestStatus.ACTIVE,
        2: PullRequestStatus.ACTIVE,
        3: PullRequestStatus.COMPLETED,
        4: PullRequestStatus.ABANDONED,
        5: PullRequestStatus.NOT_FOUND,
        99: PullRequestStatus.NOT_FOUND,
    }
    assert states[3].closed_at == datetime(2026, 11, 30, 8, 0, 0, 500000, tzinfo=UTC)
    assert services.requests() <= len(states)
    assert services.log.count("devops", "devops.pr.list") == 1
    assert services.log.count("devops", "devops.pr.get") == 2, "only the ids not listed: 5, 99"


async def test_without_project_any_project_is_found(services):
    """Without a project, pull requests of every project are found organization-wide."""
    async with adapter(services, None, PatAuth(PAT)) as devops:
        await devops.check_access()
        pr = await devops.look_up(5)
    assert pr.status is PullRequestStatus.COMPLETED
    assert services.requests() == 1


async def test_bad_pat_stops_at_check_access(services):
    """A refused PAT raises AuthenticationError from check_access when a project is set."""
    async with adapter(services, "Fabrikam", PatAuth("wrong")) as devops:
        with pytest.raises(AuthenticationError):
            await devops.check_access()


async def test_bad_pat_stops_at_first_lookup_without_project(services):
    """Without a project, a refused PAT raises AuthenticationError from the first lookup."""
    async with adapter(services, None, PatAuth("wrong")) as devops:
        await devops.check_access()
        with pytest.raises(AuthenticationError):
            await devops.look_up(1)


async def test_missing_project_is_project_not_found(services):
    """A project Azure DevOps does not have raises ProjectNotFoundError."""
    async with adapter(services, "Nope", PatAuth(PAT)) as devops:
        with pytest.raises(ProjectNotFoundError):
            await devops.check_access()


async def test_managed_identity_end_to_end_one_token_per_run(services):
    """A system-assigned managed identity gets one DevOps token for many concurrent lookups."""
    import asyncio

    async with make_credential() as credential:
        auth = BearerAuth(credential)
        async with adapter(services, None, auth) as devops:
            states = await asyncio.gather(*(devops.look_up(i) for i in (1, 2, 3, 4, 5)))
    assert [s.status.value for s in states] == [
        "active",
        "active",
        "completed",
        "abandoned",
        "completed",
    ]
    assert services.log.count("identity", "identity.token") == 1
    assert services.identity.issued == {"499b84ac-1321-427f-aa17-267ca6975798": 1}


async def test_user_assigned_identity_must_be_an_organization_member(services):
    """A user-assigned identity that was added to the organization gets in; another does not."""
    services.devops.members = {services.uami.principal_id}
    async with (
        make_credential(client_id=services.uami.client_id) as credential,
        adapter(services, None, BearerAuth(credential)) as devops,
    ):
        assert (await devops.look_up(1)).status is PullRequestStatus.ACTIVE
    async with (
        make_credential() as credential,
        adapter(services, None, BearerAuth(credential)) as devops,
    ):
        with pytest.raises(AuthenticationError, match="401"):
            await devops.look_up(1)


async def test_unknown_user_assigned_identity_is_authentication_error(services):
    """A client id the app has no identity for raises AuthenticationError."""
    async with (
        make_credential(client_id="00000000-0000-0000-0000-0000000000aa") as credential,
        adapter(services, None, BearerAuth(credential)) as devops,
    ):
        with pytest.raises(AuthenticationError):
            await devops.look_up(1)


async def test_throttling_is_waited_out(services):
    """Blocked requests (429 + Retry-After) are retried after the wait and then answered."""
    now = [0.0]
    services.devops.clock = lambda: now[0]
    services.devops.rate_limit = devops_emulator.RateLimit(budget=2, window_s=10)
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        now[0] += seconds

    policy = RetryPolicy(attempts=5, base_delay_s=0.01, total_s=60)
    async with adapter(services, None, PatAuth(PAT), sleep=sleep, retry=policy) as devops:
        states = [await devops.look_up(i) for i in (1, 2, 3, 4)]
    assert all(s.status is not PullRequestStatus.UNKNOWN for s in states)
    assert services.log.count("devops", status=429) >= 1
    assert waits
    assert min(waits) >= 1


@pytest.mark.parametrize("kind", ["status", "drop", "malformed"])
async def test_transient_faults_are_retried(services, kind):
    """Injected 503s, dropped connections and malformed bodies are retried to an answer."""
    async with adapter(services, None, PatAuth(PAT)) as devops:
        await devops.look_up(1)  # the service has answered once
        services.devops_knobs.faults.add(FaultRule(route="devops.pr.*", kind=kind, times=2))
        pr = await devops.look_up(3)
    assert pr.status is PullRequestStatus.COMPLETED
    assert services.devops_knobs.faults.injected == 2


async def test_persistent_faults_make_one_lookup_unknown(services):
    """A pull request whose lookups always fail is UNKNOWN; the others are still answered."""
    services.devops_knobs.faults.add(FaultRule(route="devops.pr.*", path_contains="/4"))
    async with adapter(services, None, PatAuth(PAT)) as devops:
        first = await devops.look_up(1)
        failed = await devops.look_up(4)
    assert first.status is PullRequestStatus.ACTIVE
    assert failed.status is PullRequestStatus.UNKNOWN
    assert failed.error is not None
    assert "503" in failed.error
