"""Azure DevOps pull requests over one shared httpx client: the PullRequests protocol.

What it costs. Without a project, `check_access` sends nothing and each distinct pull request
costs one `GET {org}/_apis/git/pullrequests/{id}` (an auth failure surfaces on the first one).
With a project, `check_access` lists the project's newest pull requests of every status
(`searchCriteria.status=all`, `$top=1000`; the page also proves the credential and the
project), and `look_up` answers an id found there without a request: image tags mostly name
recent pull requests, so one page usually answers them all. An older id costs one
`GET {org}/{project}/_apis/git/pullrequests/{id}` until more ids have been asked beyond the
first page than there are pages missing down to it (estimated from the first page's ids); then
those pages are listed (`$skip`, concurrently, at most `max_list_pages` in all) and answer
every id on them. So a run costs about `pages + min(distinct ids not listed, pages)`
requests, and a project of 20,000 pull requests about 40 instead of 20,000. Answers are cached
per id, so asking twice costs nothing. Listing every status rather than the active ones only
costs the same requests and also answers the closed pull requests, the ones whose images go:
Azure DevOps' rate limits count requests.

What it answers. `active` (drafts included), `completed` and `abandoned` map to the statuses of
the same name; `notSet` or anything else is UNKNOWN. `closedDate` becomes an aware UTC datetime;
a completed or abandoned pull request without one has `closed_at=None` (policy treats that as
closed at an unknown time), an unparseable one is UNKNOWN. 404 TF401180 is NOT_FOUND; with a
project, a pull request whose `repository.project` (name or id, any case) is another project is
NOT_FOUND too. A project that does not exist raises ProjectNotFoundError.

What stops the run. 203 (the sign-in page), 3xx, 401, 403 or any answer that is not JSON raise
AuthenticationError. 408, 429, 5xx, a malformed JSON body, timeouts and connection errors are
retried with backoff, honouring `Retry-After`; after the retries a lookup is UNKNOWN with the
reason, unless the service never answered anything at all in this run, which raises
ServiceUnreachableError (as does a certificate the client does not trust, at once).

No secret (PAT, token) reaches an exception, a log line or a repr: messages are built from
status codes and the service's own error text, and scrubbed of the credential all the same.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import ssl
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Protocol, Self
from urllib.parse import quote

import httpx
from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import AzureError, ClientAuthenticationError

from cleanup.credentials import DEVOPS_SCOPE
from cleanup.errors import (
    AuthenticationError,
    ProjectNotFoundError,
    ServiceUnreachableError,
    StopRunError,
)
from cleanup.model import PullRequest, PullRequestStatus
from cleanup.retry import Clock, Retrier, RetryPolicy, Sleep, parse_retry_after

SERVICE = "Azure DevOps"
API_VERSION = "7.1"
LIST_PAGE_SIZE = 1000
LISTING_PAGES_AT_ONCE = 4
RETRIED_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
_STATUSES = {
    "active": PullRequestStatus.ACTIVE,
    "completed": PullRequestStatus.COMPLETED,
    "abandoned": PullRequestStatus.ABANDONED,
}
_MAX_DETAIL = 300
_LISTED = frozenset(_STATUSES.values())

log = logging.getLogger(__name__)


class DevOpsAuth(Protocol):
    """Gives the Authorization header value; knows its secrets so they can be scrubbed."""

    async def authorization(self) -> str: ...

    def redact(self, text: str) -> str: ...


class PatAuth:
    """A personal access token (or a pipeline's System.AccessToken) sent as Basic."""

    __slots__ = ("_header", "_pat")

    def __init__(self, pat: str) -> None:
        if not pat:
            raise ValueError("a personal access token must not be empty")
        self._pat = pat
        self._header = "Basic " + base64.b64encode(f":{pat}".encode()).decode("ascii")

    async def authorization(self) -> str:
        return self._header

    def redact(self, text: str) -> str:
        return _scrub(text, (self._pat, self._header.removeprefix("Basic ")))

    def __repr__(self) -> str:
        return "PatAuth(<redacted>)"


class BearerAuth:
    """An Entra token for Azure DevOps from an azure-identity credential, cached until near expiry.

    One token serves the whole run: concurrent first callers wait for one fetch, and a new one is
    fetched only within `refresh_margin_s` of expiry.
    """

    def __init__(
        self,
        credential: AsyncTokenCredential,
        *,
        scope: str = DEVOPS_SCOPE,
        refresh_margin_s: float = 300.0,
        clock: Clock = time.time,
    ) -> None:
        self._credential = credential
        self._scope = scope
        self._margin = refresh_margin_s
        self._clock = clock
        self._lock = asyncio.Lock()
        self._token: str | None = None
        self._expires_on = 0.0
        self.fetches = 0

    def _fresh(self) -> bool:
        return self._token is not None and self._expires_on - self._clock() > self._margin

    async def authorization(self) -> str:
        if not self._fresh():
            async with self._lock:
                if not self._fresh():
                    await self._fetch()
        assert self._token is not None  # noqa: S101 - _fetch sets it or raises  # nosec B101
        return f"Bearer {self._token}"

    async def _fetch(self) -> None:
        name = type(self._credential).__name__
        self.fetches += 1
        try:
            token = await self._credential.get_token(self._scope)
        except ClientAuthenticationError as exc:
            detail = self.redact(_first_line(exc.message))
            raise AuthenticationError(SERVICE, f"{name} gave no token: {detail}") from None
        except AzureError as exc:
            detail = self.redact(_first_line(exc.message))
            raise ServiceUnreachableError("Microsoft Entra ID", f"{name}: {detail}") from None
        self._token, self._expires_on = token.token, float(token.expires_on)

    def redact(self, text: str) -> str:
        return _scrub(text, (self._token,) if self._token else ())

    def __repr__(self) -> str:
        return f"BearerAuth({type(self._credential).__name__}, scope={self._scope!r})"


def _scrub(text: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "<redacted>")
    return text


def _first_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line[:_MAX_DETAIL]


def make_http_client(
    concurrency: int = 16, *, timeout_s: float = 30.0, ca_file: str | None = None
) -> httpx.AsyncClient:
    """The shared HTTP/1.1 keep-alive client.

    It trusts SSL_CERT_FILE / SSL_CERT_DIR from the environment (trust_env) and, when `ca_file`
    is given (the parsed SSL_CERT_FILE setting), that bundle explicitly, so a caller whose
    process environment lacks the variable (tests, the Function App host) gets the same trust.
    """
    verify: ssl.SSLContext | bool = True
    if ca_file is not None:
        verify = ssl.create_default_context(cafile=ca_file)
    return httpx.AsyncClient(
        verify=verify,
        http1=True,
        http2=False,
        trust_env=True,
        follow_redirects=False,
        limits=httpx.Limits(
            max_connections=concurrency,
            max_keepalive_connections=concurrency,
            keepalive_expiry=30.0,
        ),
        timeout=httpx.Timeout(timeout_s, connect=min(10.0, timeout_s)),
        headers={"Accept": "application/json", "User-Agent": "acr-pr-cleanup"},
    )


class _Answer:
    """A JSON answer that is neither an auth failure nor retryable."""

    __slots__ = ("body", "status")

    def __init__(self, status: int, body: Any) -> None:
        self.status = status
        self.body = body


class _GaveUp(Exception):  # noqa: N818 - an internal signal, not an error users see
    """Retries spent; `reason` says why (no secrets)."""

    def __init__(self, reason: str, *, reached: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.reached = reached


class AzureDevOpsPullRequests:
    """The PullRequests protocol over Azure DevOps REST 7.1; use with `async with`."""

    def __init__(
        self,
        org_url: str,
        project: str | None,
        auth: DevOpsAuth,
        *,
        concurrency: int = 16,
        client: httpx.AsyncClient | None = None,
        retry: RetryPolicy | None = None,
        sleep: Sleep = asyncio.sleep,
        clock: Clock = time.monotonic,
        max_list_pages: int = 100,
        timeout_s: float = 30.0,
        ca_file: str | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if not org_url.lower().startswith("https://"):
            raise ValueError(
                "Azure DevOps is reached over https only: every request has a credential"
            )
        self._org_url = org_url.rstrip("/")
        self._project = project.strip() if project and project.strip() else None
        self._auth = auth
        self._owns_client = client is None
        self._client = client or make_http_client(concurrency, timeout_s=timeout_s, ca_file=ca_file)
        self._retrier = Retrier(retry, sleep=sleep, clock=clock)
        self._semaphore = asyncio.Semaphore(concurrency)
        self._max_list_pages = max(1, max_list_pages)
        self._pages: dict[int, asyncio.Future[None]] = {}
        self._page_slots = asyncio.Semaphore(LISTING_PAGES_AT_ONCE)
        """Deeper listing pages started (page 0 is check_access's)."""
        self._top_id: int | None = None
        self._ids_per_page = LIST_PAGE_SIZE
        self._end_page: int | None = None
        """The first page past the listing's end (a short page ends it)."""
        self._beyond_first_page = 0
        """Lookups of ids older than the first page: what deeper pages would save."""
        self._known: dict[int, PullRequest] = {}
        self._pending: dict[int, asyncio.Future[PullRequest]] = {}
        self._reached = False
        self.requests = 0
        """HTTP requests sent (retries included)."""
        self.listed_pages = 0

    def __repr__(self) -> str:
        return (
            f"AzureDevOpsPullRequests({self._org_url!r}, project={self._project!r}, "
            f"auth={self._auth!r})"
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        for page in self._pages.values():
            page.cancel()
        if self._owns_client:
            await self._client.aclose()

    # --- the protocol ----------------------------------------------------------------------

    async def check_access(self) -> None:
        """With a project: list its newest pull requests, any status (proves credential and
        project); deeper pages are listed later, when lookups show that they pay."""
        if self._project is None:
            return
        try:
            answer = await self._get(self._list_url(), self._page_params(0))
        except _GaveUp as exc:
            raise ServiceUnreachableError(SERVICE, exc.reason) from None
        if answer.status == 404 and _is_project_missing(answer.body):
            raise ProjectNotFoundError(self._project)
        items = self._items(answer)
        if items is None:
            detail = self._safe(f"listing pull requests answered {_describe(answer)}")
            raise ServiceUnreachableError(SERVICE, detail)
        ids = self._took_page(0, items)
        if len(items) == LIST_PAGE_SIZE and ids:
            # Ids in a project grow with time, not one by one (the organization numbers them):
            # the first page's spread estimates the ids each deeper page covers.
            self._top_id = max(ids)
            self._ids_per_page = max(1, max(ids) - min(ids) + 1)

    async def look_up(self, pr_id: int) -> PullRequest:
        """One pull request's state; each id costs at most one request per run."""
        known = self._known.get(pr_id)
        if known is not None:
            return known
        if await self._listed_deeper_for(pr_id):
            return self._known[pr_id]
        pending = self._pending.get(pr_id)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[PullRequest] = asyncio.get_running_loop().create_future()
        self._pending[pr_id] = future
        try:
            result = await self._fetch(pr_id)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it, nobody logs it as lost
            raise
        finally:
            del self._pending[pr_id]
        self._known[pr_id] = result
        future.set_result(result)
        return result

    # --- internals -------------------------------------------------------------------------

    async def _listed_deeper_for(self, pr_id: int) -> bool:
        """Whether listing deeper pages (cheaper than a GET each) answered `pr_id`.

        An id older than the first page estimates the page it is on. The pages down to it are
        listed once fewer pages are missing than ids have been asked beyond the first page:
        each of those would otherwise cost a GET. Until then the id is asked for on its own.
        """
        page = self._estimated_page(pr_id)
        if page is None:
            return False
        self._beyond_first_page += 1
        wanted = range(1, page + 1)
        missing = [p for p in wanted if p not in self._pages]
        if len(missing) > self._beyond_first_page:
            return False
        for number in missing:
            self._pages[number] = asyncio.ensure_future(self._list_page(number))
        await asyncio.gather(*(asyncio.shield(self._pages[p]) for p in wanted))
        return pr_id in self._known

    def _estimated_page(self, pr_id: int) -> int | None:
        if self._top_id is None or pr_id > self._top_id:
            return None
        page = (self._top_id - pr_id) // self._ids_per_page
        if page == 0 or page >= min(self._max_list_pages, self._end_page or page + 1):
            return None
        return page

    async def _list_page(self, page: int) -> None:
        """One deeper page of the listing. A page that fails, however, leaves its ids to their
        GETs; only a refused credential (StopRunError) reaches the lookups waiting for it."""
        try:
            async with self._page_slots:  # a page is a megabyte of JSON: a few at a time
                answer = await self._get(self._list_url(), self._page_params(page))
        except _GaveUp as exc:
            log.warning("listing pull requests, page %d, failed: %s", page + 1, exc.reason)
            return
        except StopRunError:
            raise
        except Exception as exc:  # noqa: BLE001 - a broken page must not fail lookups it cannot answer
            detail = self._safe(type(exc).__name__)
            log.warning("listing pull requests, page %d, failed: %s", page + 1, detail)
            return
        items = self._items(answer)
        if items is None:
            detail = self._safe(f"listing pull requests answered {_describe(answer)}")
            log.warning(
                "%s (page %d); its pull requests are looked up one by one", detail, page + 1
            )
            return
        self._took_page(page, items)

    def _list_url(self) -> str:
        return f"{self._org_url}/{quote(self._project or '', safe='')}/_apis/git/pullrequests"

    @staticmethod
    def _page_params(page: int) -> dict[str, str]:
        return {
            "searchCriteria.status": "all",
            "$top": str(LIST_PAGE_SIZE),
            "$skip": str(page * LIST_PAGE_SIZE),
        }

    @staticmethod
    def _items(answer: _Answer) -> list[Any] | None:
        items = answer.body.get("value") if isinstance(answer.body, dict) else None
        return items if answer.status == 200 and isinstance(items, list) else None

    def _took_page(self, page: int, items: list[Any]) -> list[int]:
        """Keep what a listing page answers; the ids it listed."""
        self.listed_pages += 1
        ids = []
        for item in items:
            pr = self._parse_listed(item)
            # Only a clear answer is kept; anything else is asked for on its own.
            if pr is not None and pr.status in _LISTED:
                self._known.setdefault(pr.id, pr)
                ids.append(pr.id)
        if len(items) < LIST_PAGE_SIZE:
            self._end_page = min(self._end_page or page + 1, page + 1)
        return ids

    def _where(self) -> str:
        return f"in project {self._project}" if self._project else "in the organization"

    def _pr_url(self, pr_id: int) -> str:
        if self._project is None:
            return f"{self._org_url}/_apis/git/pullrequests/{pr_id}"
        return f"{self._org_url}/{quote(self._project, safe='')}/_apis/git/pullrequests/{pr_id}"

    async def _fetch(self, pr_id: int) -> PullRequest:
        try:
            answer = await self._get(self._pr_url(pr_id), {})
        except _GaveUp as exc:
            if not exc.reached and not self._reached:
                raise ServiceUnreachableError(SERVICE, exc.reason) from None
            return _unknown(pr_id, exc.reason)
        if answer.status == 404:
            if _is_project_missing(answer.body):
                raise ProjectNotFoundError(self._project or "")
            if _type_key(answer.body) == "GitPullRequestNotFoundException" or _message(
                answer.body
            ).startswith("TF401180"):
                return PullRequest(pr_id, PullRequestStatus.NOT_FOUND, where=self._where())
        if answer.status != 200 or not isinstance(answer.body, dict):
            return _unknown(pr_id, self._safe(f"Azure DevOps answered {_describe(answer)}"))
        return self._parse(pr_id, answer.body)

    def _parse_listed(self, item: Any) -> PullRequest | None:
        if not isinstance(item, dict):
            return None
        pr_id = item.get("pullRequestId")
        if not isinstance(pr_id, int) or isinstance(pr_id, bool):
            return None
        return self._parse(pr_id, item)

    def _parse(self, pr_id: int, body: Mapping[str, Any]) -> PullRequest:
        return parse_pull_request(pr_id, body, self._project)

    async def _get(self, url: str, params: Mapping[str, str]) -> _Answer:
        """GET with retries; raises AuthenticationError, ServiceUnreachableError or _GaveUp."""
        budget = self._retrier.budget()
        query = {**params, "api-version": API_VERSION}
        reached = False
        while True:
            retry_after: float | None = None
            async with self._semaphore:
                headers = {
                    "Authorization": await self._auth.authorization(),
                    "X-TFS-FedAuthRedirect": "Suppress",
                    "Accept": "application/json",
                }
                self.requests += 1
                try:
                    response = await self._client.get(url, params=query, headers=headers)
                    body = response.content
                except httpx.TransportError as exc:
                    if _is_certificate_error(exc):
                        raise ServiceUnreachableError(
                            SERVICE, f"TLS certificate not trusted ({_first_line(str(exc))})"
                        ) from None
                    reason = f"{type(exc).__name__} {self._safe(_first_line(str(exc)))}".strip()
                    response = None
            if response is not None:
                reached = self._reached = True
                outcome = self._classify(response, body)
                if isinstance(outcome, _Answer):
                    return outcome
                reason = outcome
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
            log.debug("GET %s failed (%s); retry %d", url, reason, budget.retries + 1)
            if not await budget.wait(retry_after):
                attempts = budget.retries + 1
                suffix = "attempt" if attempts == 1 else "attempts"
                raise _GaveUp(f"{reason} (after {attempts} {suffix})", reached=reached)

    def _classify(self, response: httpx.Response, body: bytes) -> _Answer | str:
        """An answer to return, a retryable reason (str), or raise for auth failures."""
        status = response.status_code
        content_type = response.headers.get("Content-Type", "")
        if status == 203:
            raise AuthenticationError(
                SERVICE, "answered 203 with a sign-in page: the credential was not accepted"
            )
        if status in (401, 403):
            detail = response.headers.get("X-TFS-ServiceError") or _json_message(body)
            suffix = f" ({self._safe(_first_line(detail))})" if detail else ""
            raise AuthenticationError(SERVICE, f"HTTP {status}{suffix}")
        if status in RETRIED_STATUSES or status >= 500:
            return f"HTTP {status}"
        if 300 <= status < 400:
            raise AuthenticationError(
                SERVICE, f"redirected (HTTP {status}) instead of answering: sign-in required"
            )
        if "json" not in content_type.lower():
            raise AuthenticationError(
                SERVICE,
                f"answered HTTP {status} with {content_type.split(';')[0] or 'no content type'} "
                "instead of JSON: the credential was refused, or AZURE_DEVOPS_ORG_URL is not an "
                "Azure DevOps organization",
            )
        try:
            parsed = response.json() if body else None
        except ValueError:
            return f"malformed JSON (HTTP {status})"
        return _Answer(status, parsed)

    def _safe(self, text: str) -> str:
        return self._auth.redact(text)[:_MAX_DETAIL]


def parse_pull_request(pr_id: int, body: Mapping[str, Any], project: str | None) -> PullRequest:
    """One GitPullRequest body -> PullRequest (pure)."""
    if body.get("pullRequestId") != pr_id:
        return _unknown(pr_id, f"the answer is for pull request {body.get('pullRequestId')!r}")
    if project is not None:
        owner = _project_of(body)
        if owner is None:
            return _unknown(pr_id, "the answer does not say which project the pull request is in")
        if not _names(owner, project):
            where = f"in project {project} (it belongs to another project)"
            return PullRequest(pr_id, PullRequestStatus.NOT_FOUND, where=where)
    raw = body.get("status")
    status = _STATUSES.get(raw) if isinstance(raw, str) else None
    if status is None:
        return _unknown(pr_id, f"unexpected status {raw!r}")
    closed = body.get("closedDate") if status.is_closed else None
    closed_at = parse_time(closed)
    if closed is not None and closed_at is None:
        return _unknown(pr_id, f"unreadable closedDate {str(closed)[:40]!r}")
    return PullRequest(pr_id, status, closed_at=closed_at)


def parse_time(value: object) -> datetime | None:
    """Azure DevOps' `2026-11-30T12:00:01.1234567Z` (any fraction, offset or Z) -> aware UTC."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def _project_of(body: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """`repository.project` of a pull request, or None when the answer lacks it."""
    repository = body.get("repository")
    owner = repository.get("project") if isinstance(repository, dict) else None
    if not isinstance(owner, dict) or not any(
        isinstance(owner.get(k), str) for k in ("id", "name")
    ):
        return None
    return owner


def _names(owner: Mapping[str, Any], project: str) -> bool:
    """True when the project `owner` is `project`, by id or name (case-insensitive)."""
    wanted = project.casefold()
    return any(
        isinstance(owner.get(key), str) and owner[key].casefold() == wanted
        for key in ("id", "name")
    )


def _unknown(pr_id: int, reason: str) -> PullRequest:
    return PullRequest(pr_id, PullRequestStatus.UNKNOWN, error=reason)


def _type_key(body: Any) -> str:
    value = body.get("typeKey") if isinstance(body, dict) else None
    return value if isinstance(value, str) else ""


def _message(body: Any) -> str:
    value = body.get("message") if isinstance(body, dict) else None
    return value if isinstance(value, str) else ""


def _is_project_missing(body: Any) -> bool:
    return _type_key(body) == "ProjectDoesNotExistWithNameException" or _message(body).startswith(
        "TF200016"
    )


def _json_message(body: bytes) -> str:
    try:
        return _message(json.loads(body))
    except ValueError:
        return ""


def _describe(answer: _Answer) -> str:
    message = _first_line(_message(answer.body))
    return f"HTTP {answer.status}" + (f": {message}" if message else "")


def _is_certificate_error(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
