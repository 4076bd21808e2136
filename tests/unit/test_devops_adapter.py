"""The Azure DevOps adapter's edge cases, against httpx.MockTransport."""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from azure.core.credentials import AccessToken
from azure.core.exceptions import ClientAuthenticationError

from cleanup.devops import AzureDevOpsPullRequests, BearerAuth, PatAuth, parse_pull_request
from cleanup.errors import AuthenticationError, ProjectNotFoundError, ServiceUnreachableError
from cleanup.model import PullRequestStatus
from cleanup.retry import RetryPolicy

ORG = "https://dev.example/contoso"
PAT = "pat-SECRET-4f9a2c"
TOKEN = "eyJ.token-SECRET-77.sig"
PROJECT_ID = "6ce954b1-ce1f-45d1-b94d-e6bf2464ba2c"

Responder = Callable[[httpx.Request], httpx.Response]


def pr_json(pr_id: int, status: str = "active", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "pullRequestId": pr_id,
        "status": status,
        "isDraft": False,
        "creationDate": "2026-11-01T10:00:00.1234567Z",
        "repository": {"id": "r", "name": "app", "project": {"id": PROJECT_ID, "name": "Fabrikam"}},
    }
    body.update(extra)
    return body


def not_found() -> httpx.Response:
    return httpx.Response(
        404,
        json={
            "message": "TF401180: The requested pull request was not found.",
            "typeKey": "GitPullRequestNotFoundException",
        },
    )


def no_project() -> httpx.Response:
    return httpx.Response(
        404,
        json={
            "message": "TF200016: The following project does not exist: Nope. Verify ...",
            "typeKey": "ProjectDoesNotExistWithNameException",
        },
    )


class Recorder:
    """Answers with `responder`, keeps every request, records sleeps without sleeping."""

    def __init__(self, responder: Responder) -> None:
        self.responder = responder
        self.requests: list[httpx.Request] = []
        self.sleeps: list[float] = []
        self.now = 0.0

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.responder(request)

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def clock(self) -> float:
        return self.now

    def adapter(
        self,
        project: str | None = None,
        auth: Any = None,
        *,
        retry: RetryPolicy | None = None,
        **kwargs: Any,
    ) -> AzureDevOpsPullRequests:
        client = httpx.AsyncClient(transport=httpx.MockTransport(self.handler))
        return AzureDevOpsPullRequests(
            ORG,
            project,
            auth or PatAuth(PAT),
            client=client,
            retry=retry or RetryPolicy(attempts=4, base_delay_s=1, max_delay_s=8, total_s=60),
            sleep=self.sleep,
            clock=self.clock,
            **kwargs,
        )


def answer(body: Any, status: int = 200) -> Responder:
    return lambda _request: httpx.Response(status, json=body)


async def test_pat_is_basic_with_empty_user_and_suppress_header():
    """A PAT goes as Basic base64(':' + PAT), with X-TFS-FedAuthRedirect: Suppress."""
    rec = Recorder(answer(pr_json(1)))
    async with rec.adapter() as devops:
        await devops.look_up(1)
    request = rec.requests[0]
    assert (
        request.headers["Authorization"] == "Basic " + base64.b64encode(f":{PAT}".encode()).decode()
    )
    assert request.headers["X-TFS-FedAuthRedirect"] == "Suppress"
    assert request.url.params["api-version"] == "7.1"
    assert request.url.path == "/contoso/_apis/git/pullrequests/1"


async def test_project_lookup_uses_project_url():
    """With a project, a lookup goes through the (quoted) project URL."""
    rec = Recorder(answer(pr_json(3, "completed", closedDate="2026-11-02T00:00:00Z")))
    async with rec.adapter("My Project", max_list_pages=1) as devops:
        await devops.look_up(3)
    assert rec.requests[0].url.raw_path.startswith(
        b"/contoso/My%20Project/_apis/git/pullrequests/3"
    )


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (pr_json(1, "active"), PullRequestStatus.ACTIVE),
        (pr_json(1, "active", isDraft=True), PullRequestStatus.ACTIVE),
        (pr_json(1, "completed"), PullRequestStatus.COMPLETED),
        (pr_json(1, "abandoned"), PullRequestStatus.ABANDONED),
        (pr_json(1, "notSet"), PullRequestStatus.UNKNOWN),
        (pr_json(1, "merged"), PullRequestStatus.UNKNOWN),
        (pr_json(1, None), PullRequestStatus.UNKNOWN),
        (pr_json(2, "active"), PullRequestStatus.UNKNOWN),
    ],
)
def test_status_mapping(body, expected):
    """active (drafts too), completed, abandoned map; notSet, unknown or a wrong id is UNKNOWN."""
    assert parse_pull_request(1, body, None).status is expected


@pytest.mark.parametrize(
    ("closed", "expected"),
    [
        ("2026-11-30T12:00:01.1234567Z", datetime(2026, 11, 30, 12, 0, 1, 123456, tzinfo=UTC)),
        ("2026-11-30T12:00:01Z", datetime(2026, 11, 30, 12, 0, 1, tzinfo=UTC)),
        ("2026-11-30T13:00:01+01:00", datetime(2026, 11, 30, 12, 0, 1, tzinfo=UTC)),
    ],
)
def test_closed_date_parsed_to_aware_utc(closed, expected):
    """closedDate with 7 fractional digits or an offset becomes an aware UTC datetime."""
    pr = parse_pull_request(1, pr_json(1, "completed", closedDate=closed), None)
    assert pr.closed_at == expected
    assert pr.closed_at is not None
    assert pr.closed_at.utcoffset() is not None


def test_closed_without_closed_date_has_no_closed_at():
    """A completed pull request without closedDate is completed with closed_at None."""
    pr = parse_pull_request(1, pr_json(1, "completed"), None)
    assert pr.status is PullRequestStatus.COMPLETED
    assert pr.closed_at is None


def test_unreadable_closed_date_is_unknown():
    """A closedDate that cannot be read makes the state UNKNOWN (keep)."""
    pr = parse_pull_request(1, pr_json(1, "abandoned", closedDate="yesterday"), None)
    assert pr.status is PullRequestStatus.UNKNOWN


def test_active_pull_request_ignores_closed_date():
    """An active pull request has no closed_at even if the body carries one."""
    pr = parse_pull_request(1, pr_json(1, "active", closedDate="0001-01-01T00:00:00"), None)
    assert pr.closed_at is None


@pytest.mark.parametrize(
    ("project", "expected"),
    [
        ("Fabrikam", PullRequestStatus.ACTIVE),
        ("fabrikam", PullRequestStatus.ACTIVE),
        (PROJECT_ID.upper(), PullRequestStatus.ACTIVE),
        ("Other", PullRequestStatus.NOT_FOUND),
    ],
)
def test_project_match(project, expected):
    """With a project, one of another project (by name or id, any case) is NOT_FOUND, and
    says where it was looked for."""
    pull = parse_pull_request(1, pr_json(1), project)
    assert pull.status is expected
    if expected is PullRequestStatus.NOT_FOUND:
        assert pull.where == f"in project {project} (it belongs to another project)"


@pytest.mark.parametrize("repository", [None, {}, {"project": None}, {"project": {"url": "x"}}])
def test_an_answer_without_its_project_is_unknown_not_not_found(repository):
    """A body that does not say its project is UNKNOWN (kept), never NOT_FOUND."""
    body = pr_json(1, "completed")
    body["repository"] = repository
    pr = parse_pull_request(1, body, "Fabrikam")
    assert pr.status is PullRequestStatus.UNKNOWN
    assert "project" in (pr.error or "")


async def test_tf401180_is_not_found():
    """404 TF401180 is NOT_FOUND, looked for in the organization (no project) or the project."""
    rec = Recorder(lambda _r: not_found())
    async with rec.adapter() as devops:
        pr = await devops.look_up(5)
    assert (pr.status, pr.where) == (PullRequestStatus.NOT_FOUND, "in the organization")
    async with rec.adapter("Fabrikam", max_list_pages=1) as devops:
        pr = await devops.look_up(6)
    assert (pr.status, pr.where) == (PullRequestStatus.NOT_FOUND, "in project Fabrikam")


async def test_missing_project_on_lookup_raises():
    """TF200016 on a lookup raises ProjectNotFoundError, never NOT_FOUND."""
    rec = Recorder(lambda _r: no_project())
    async with rec.adapter("Nope") as devops:
        with pytest.raises(ProjectNotFoundError):
            await devops.look_up(5)


async def test_missing_project_on_check_access_raises():
    """check_access with a project that does not exist raises ProjectNotFoundError."""
    rec = Recorder(lambda _r: no_project())
    async with rec.adapter("Nope") as devops:
        with pytest.raises(ProjectNotFoundError):
            await devops.check_access()


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(203, text="<html>Sign In</html>", headers={"Content-Type": "text/html"}),
        httpx.Response(401, text="Access Denied", headers={"Content-Type": "text/html"}),
        httpx.Response(403, json={"message": "TF400813: not authorized"}),
        httpx.Response(200, text="<html>hello</html>", headers={"Content-Type": "text/html"}),
        httpx.Response(302, headers={"Location": "https://login.example/"}),
    ],
    ids=["203", "401", "403", "html-200", "redirect"],
)
async def test_auth_failures_raise(response):
    """203, 401, 403, a redirect or any non-JSON answer raises AuthenticationError at once."""
    rec = Recorder(lambda _r: response)
    async with rec.adapter() as devops:
        with pytest.raises(AuthenticationError):
            await devops.look_up(1)
    assert len(rec.requests) == 1


async def test_check_access_without_project_costs_nothing():
    """Without a project, check_access sends no request."""
    rec = Recorder(answer(pr_json(1)))
    async with rec.adapter() as devops:
        await devops.check_access()
    assert rec.requests == []


def listing(active: int, page_size: int = 1000, closed: int = 0) -> Responder:
    """A project with `active` active pull requests (ids 1..active), then `closed` completed
    ones (the next ids, newer); any other id is completed too but missing from the listing."""

    def listed(pr_id: int) -> dict[str, object]:
        if pr_id <= active:
            return pr_json(pr_id)
        return pr_json(pr_id, "completed", closedDate="2026-01-01T00:00:00Z")

    def respond(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/pullrequests"):
            skip = int(request.url.params["$skip"])
            top = min(int(request.url.params["$top"]), page_size)
            ids = list(range(active + closed, 0, -1))[skip : skip + top]
            return httpx.Response(200, json={"count": len(ids), "value": [listed(i) for i in ids]})
        pr_id = int(request.url.path.rsplit("/", 1)[1])
        if pr_id <= active:
            return httpx.Response(200, json=pr_json(pr_id))
        return httpx.Response(
            200, json=pr_json(pr_id, "completed", closedDate="2026-01-01T00:00:00Z")
        )

    return respond


async def test_listing_answers_lookups_without_requests():
    """With a project, listed ids (any status) need no request; others cost one GET each."""
    rec = Recorder(listing(active=5, closed=3))
    async with rec.adapter("Fabrikam") as devops:
        await devops.check_access()
        states = [await devops.look_up(i) for i in (1, 2, 7, 9)]
    assert [s.status for s in states] == [PullRequestStatus.ACTIVE] * 2 + [
        PullRequestStatus.COMPLETED
    ] * 2
    assert states[2].closed_at is not None
    assert len(rec.requests) == 2, "the listing, then one GET for id 9 only"
    assert rec.requests[0].url.params["searchCriteria.status"] == "all"
    assert rec.requests[0].url.params["$top"] == "1000"


def skips(rec: Recorder) -> list[str | None]:
    """The `$skip` of each request in order; None for a GET of one pull request."""
    return [r.url.params.get("$skip") for r in rec.requests]


async def test_deeper_pages_are_listed_once_they_cost_less_than_gets():
    """Ids older than the first page: the pages down to one are listed when no more of them
    are missing than ids were asked beyond the first page; ids on them need no request."""
    rec = Recorder(listing(active=2500))  # pages: 2500-1501, 1500-501, 500-1
    async with rec.adapter("Fabrikam") as devops:
        await devops.check_access()
        states = [await devops.look_up(i) for i in (1400, 1300, 100, 200, 7)]
        assert devops.listed_pages == 3
    assert skips(rec) == ["0", "1000", "2000"]
    assert {s.status for s in states} == {PullRequestStatus.ACTIVE}


async def test_one_old_id_costs_one_get_not_many_pages():
    """A single id nine pages deep is asked for on its own: one GET, not nine pages."""
    rec = Recorder(listing(active=10_000))
    async with rec.adapter("Fabrikam") as devops:
        await devops.check_access()
        oldest = await devops.look_up(5)
    assert skips(rec) == ["0", None]
    assert oldest.status is PullRequestStatus.ACTIVE


async def test_many_old_ids_asked_at_once_list_each_page_once():
    """A hundred old ids asked concurrently: every page is listed at most once, and the
    run costs far fewer requests than ids."""
    rec = Recorder(listing(active=5000))
    ids = range(1, 5000, 50)
    async with rec.adapter("Fabrikam") as devops:
        await devops.check_access()
        states = await asyncio.gather(*(devops.look_up(i) for i in ids))
    pages = [skip for skip in skips(rec) if skip is not None]
    assert len(pages) == len(set(pages)) == 5
    assert len(rec.requests) < 20
    assert all(s.status is PullRequestStatus.ACTIVE for s in states)


async def test_the_listing_goes_no_deeper_than_max_list_pages():
    """Past `max_list_pages` pages every id is asked for on its own."""
    rec = Recorder(listing(active=2500))
    async with rec.adapter("Fabrikam", max_list_pages=2) as devops:
        await devops.check_access()
        states = [await devops.look_up(i) for i in (1400, 100, 90)]
    assert skips(rec) == ["0", "1000", None, None]
    assert {s.status for s in states} == {PullRequestStatus.ACTIVE}


async def test_a_deeper_page_that_fails_leaves_its_ids_to_gets():
    """A deeper page answered 500 (after retries): its ids are still answered, one GET each."""
    ok = listing(active=2500)

    def respond(request: httpx.Request) -> httpx.Response:
        if request.url.params.get("$skip") == "1000":
            return httpx.Response(500, json={"message": "busy"})
        return ok(request)

    rec = Recorder(respond)
    async with rec.adapter("Fabrikam") as devops:
        await devops.check_access()
        state = await devops.look_up(1400)
    assert state.status is PullRequestStatus.ACTIVE
    assert skips(rec)[-1] is None, "the id was asked for on its own after the page failed"


async def test_a_deeper_page_that_breaks_leaves_only_its_own_ids_to_gets():
    """A page whose answer cannot be read at all (not a retried status) fails no lookup: ids
    on the other pages are answered by them, ids on the broken one by a GET each."""
    ok = listing(active=5000)

    def respond(request: httpx.Request) -> httpx.Response:
        if request.url.params.get("$skip") == "2000":
            raise httpx.DecodingError("corrupt body", request=request)
        return ok(request)

    rec = Recorder(respond)
    async with rec.adapter("Fabrikam") as devops:
        await devops.check_access()
        states = await asyncio.gather(*(devops.look_up(i) for i in (3900, 3800, 2500, 1500, 100)))
    assert all(s.status is PullRequestStatus.ACTIVE for s in states)
    gets = [r.url.path.rsplit("/", 1)[1] for r in rec.requests if "$skip" not in r.url.params]
    assert gets == ["2500"], "only the id on the broken page was asked for on its own"


async def test_each_id_costs_one_request_even_when_asked_twice():
    """Asking for the same id again, or concurrently, sends no second request."""
    rec = Recorder(answer(pr_json(7)))
    async with rec.adapter() as devops:
        first, second, third = await asyncio.gather(*(devops.look_up(7) for _ in range(3)))
        again = await devops.look_up(7)
    assert first == second == third == again
    assert len(rec.requests) == 1


async def test_retries_honour_retry_after():
    """429 with Retry-After is retried after at least that many seconds."""
    responses = iter(
        [
            httpx.Response(429, headers={"Retry-After": "7"}, json={}),
            httpx.Response(200, json=pr_json(1)),
        ]
    )
    rec = Recorder(lambda _r: next(responses))
    async with rec.adapter() as devops:
        pr = await devops.look_up(1)
    assert pr.status is PullRequestStatus.ACTIVE
    assert len(rec.sleeps) == 1
    assert 7 <= rec.sleeps[0] < 8


async def test_5xx_retried_then_unknown():
    """A lookup failing with 503 every time ends UNKNOWN after the bounded attempts."""
    rec = Recorder(lambda _r: httpx.Response(503, json={"message": "down"}))
    async with rec.adapter(retry=RetryPolicy(attempts=4, base_delay_s=1, total_s=1000)) as devops:
        pr = await devops.look_up(1)
    assert pr.status is PullRequestStatus.UNKNOWN
    assert pr.error is not None
    assert "503" in pr.error
    assert len(rec.requests) == 4
    assert len(rec.sleeps) == 3
    assert all(s <= 1 * 2**i for i, s in enumerate(rec.sleeps))


async def test_retry_after_past_the_total_budget_gives_up_at_once():
    """A Retry-After beyond the total time budget ends the retries without sleeping."""
    rec = Recorder(lambda _r: httpx.Response(429, headers={"Retry-After": "3600"}, json={}))
    async with rec.adapter(retry=RetryPolicy(attempts=5, total_s=60)) as devops:
        pr = await devops.look_up(1)
    assert pr.status is PullRequestStatus.UNKNOWN
    assert rec.sleeps == []


async def test_malformed_json_is_retried():
    """A truncated JSON body is retried, not taken for an auth failure."""
    responses = iter(
        [
            httpx.Response(
                200, text='{"value": [{"trunc', headers={"Content-Type": "application/json"}
            ),
            httpx.Response(200, json=pr_json(1)),
        ]
    )
    rec = Recorder(lambda _r: next(responses))
    async with rec.adapter() as devops:
        assert (await devops.look_up(1)).status is PullRequestStatus.ACTIVE


async def test_connection_errors_before_any_answer_mean_unreachable():
    """When the service never answered at all, exhausted connection retries raise Unreachable."""

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    rec = Recorder(refuse)
    async with rec.adapter() as devops:
        with pytest.raises(ServiceUnreachableError):
            await devops.look_up(1)
    assert len(rec.requests) == 4


async def test_connection_errors_after_answers_are_one_unknown_lookup():
    """Once the service has answered, a lookup that keeps failing to connect is UNKNOWN."""

    def respond(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/2"):
            raise httpx.ReadTimeout("timed out", request=request)
        return httpx.Response(200, json=pr_json(1))

    rec = Recorder(respond)
    async with rec.adapter() as devops:
        await devops.look_up(1)
        pr = await devops.look_up(2)
    assert pr.status is PullRequestStatus.UNKNOWN
    assert pr.error is not None
    assert "ReadTimeout" in pr.error


async def test_other_client_errors_are_unknown_without_retry():
    """A 400 with a JSON error is UNKNOWN with the service's message, not retried."""
    rec = Recorder(answer({"message": "The value 'x' is not valid"}, status=400))
    async with rec.adapter() as devops:
        pr = await devops.look_up(1)
    assert pr.status is PullRequestStatus.UNKNOWN
    assert pr.error is not None
    assert "not valid" in pr.error
    assert len(rec.requests) == 1


async def test_concurrency_is_bounded():
    """No more than `concurrency` requests are in flight at once."""
    in_flight = 0
    peak = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        in_flight -= 1
        pr_id = int(request.url.path.rsplit("/", 1)[1])
        return httpx.Response(200, json=pr_json(pr_id))

    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    async with AzureDevOpsPullRequests(ORG, None, PatAuth(PAT), concurrency=3, client=client) as d:
        await asyncio.gather(*(d.look_up(i) for i in range(1, 21)))
    await client.aclose()
    assert 1 <= peak <= 3


class FakeCredential:
    """An async credential that counts its token fetches."""

    def __init__(self, lifetime_s: float = 3600, error: Exception | None = None) -> None:
        self.calls = 0
        self.scopes: list[str] = []
        self.lifetime_s = lifetime_s
        self.error = error

    async def get_token(self, *scopes: str, **_kwargs: Any) -> AccessToken:
        self.calls += 1
        self.scopes.extend(scopes)
        await asyncio.sleep(0)
        if self.error is not None:
            raise self.error
        import time

        return AccessToken(TOKEN, int(time.time() + self.lifetime_s))

    async def close(self) -> None:
        return None

    async def __aenter__(self) -> FakeCredential:
        return self

    async def __aexit__(self, *args: object) -> None:
        return None


async def test_bearer_token_fetched_once_for_concurrent_lookups():
    """Concurrent first lookups share one token fetch, for Azure DevOps' scope."""
    credential = FakeCredential()
    rec = Recorder(lambda r: httpx.Response(200, json=pr_json(int(r.url.path.rsplit("/", 1)[1]))))
    auth = BearerAuth(credential)  # type: ignore[arg-type]
    async with rec.adapter(auth=auth) as devops:
        await asyncio.gather(*(devops.look_up(i) for i in range(1, 30)))
    assert credential.calls == 1
    assert credential.scopes == ["499b84ac-1321-427f-aa17-267ca6975798/.default"]
    assert {r.headers["Authorization"] for r in rec.requests} == {f"Bearer {TOKEN}"}


async def test_bearer_token_refreshed_near_expiry():
    """A token within the refresh margin of expiry is fetched again."""
    credential = FakeCredential(lifetime_s=60)
    auth = BearerAuth(credential, refresh_margin_s=300)  # type: ignore[arg-type]
    await auth.authorization()
    await auth.authorization()
    assert credential.calls == 2


async def test_credential_failure_is_authentication_error():
    """A credential that cannot get a token raises AuthenticationError."""
    credential = FakeCredential(error=ClientAuthenticationError("no identity here"))
    rec = Recorder(answer(pr_json(1)))
    async with rec.adapter(auth=BearerAuth(credential)) as devops:  # type: ignore[arg-type]
        with pytest.raises(AuthenticationError, match="no identity here"):
            await devops.look_up(1)
    assert rec.requests == []


async def test_no_secret_in_errors_logs_or_reprs(caplog):
    """Neither the PAT nor the token appears in exception text, log lines or reprs."""
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []
    cases = [(PatAuth(PAT), PAT), (BearerAuth(FakeCredential()), TOKEN)]  # type: ignore[arg-type]
    for auth, secret in cases:
        echo = f"TF400813: a service that echoes the credential {secret}"
        responders: list[Responder] = [
            lambda _r, e=echo: httpx.Response(401, headers={"X-TFS-ServiceError": e}, text=""),
            lambda _r, e=echo: httpx.Response(400, json={"message": e}),
            lambda _r, e=echo: httpx.Response(503, json={"message": e}),
        ]
        for responder in responders:
            rec = Recorder(responder)
            async with rec.adapter(auth=auth) as devops:
                texts.append(repr(devops))
                try:
                    pr = await devops.look_up(1)
                except AuthenticationError as exc:
                    texts.append(str(exc))
                    texts.append(repr(exc))
                else:
                    texts.append(str(pr.error))
                    texts.append(repr(pr))
        texts.append(repr(auth))
    texts.extend(record.getMessage() for record in caplog.records)
    encoded = base64.b64encode(f":{PAT}".encode()).decode()
    for text in texts:
        assert PAT not in text
        assert TOKEN not in text
        assert encoded not in text


def test_pat_must_not_be_empty():
    """An empty PAT is refused when the auth is built."""
    with pytest.raises(ValueError, match="empty"):
        PatAuth("")
