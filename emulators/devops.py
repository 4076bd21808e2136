"""Azure DevOps Services (Git pull requests, REST 7.1) as an aiohttp application.

Routes (named for the request log and fault rules):

- `devops.pr.get`      GET /{org}/{project}/_apis/git/pullrequests/{id}
- `devops.pr.get_org`  GET /{org}/_apis/git/pullrequests/{id}
- `devops.pr.list`     GET /{org}/{project}/_apis/git/pullrequests
                       (`searchCriteria.status`, `$top` default 101 max 1000, `$skip`, newest first)

Authentication, on every route: a PAT as `Basic base64(user:PAT)` (any user name) or
`Bearer <Entra token>` issued by the shared TokenIssuer for DEVOPS_RESOURCE (a token for another
resource is refused). A missing or bad credential answers `203` with an HTML sign-in page, as the
real service does for browsers, unless the request sends `X-TFS-FedAuthRedirect: Suppress`;
then `401` with the real `WWW-Authenticate` headers. `DevOpsState.members`, when set, lists the
Entra subjects added to the organization; a valid token of anyone else answers 401 TF400813.

Emulator decisions (where the notes and the spec leave the real behaviour open):

- A pull request of another project asked for through a project URL answers 404 TF401180, as if
  it did not exist (the real service's answer is unverified; clients must not rely on either).
- `api-version` is required on every route (the real service may default a missing version on
  GET; a client that relies on that is fragile). Versions 1.0 through 7.1 (with optional
  `-preview[.N]`) are accepted; later ones answer VssVersionOutOfRangeException.
- `$top` above 1000 is clamped to 1000 (community reports); a non-numeric or negative `$top` or
  `$skip`, or a non-numeric pull request id, answers 400 InvalidArgumentValueException (message
  wording unverified).
- An unknown organization answers 404 with an HTML page (not JSON).
- Rate limiting (`DevOpsState.rate_limit`): each identity has a budget of TSTUs per sliding
  window; a request past the budget but within `delay_allowance` is answered after
  `delay_s` with `X-RateLimit-Delay`; past that it is blocked with 429 and `Retry-After` (the
  seconds until the window frees enough budget). Blocked requests cost nothing.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import math
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from aiohttp import web
from aiohttp.typedefs import Middleware as AioMiddleware

from emulators.entra import DEVOPS_RESOURCE, TokenIssuer
from emulators.harness import Handler, Knobs, RequestLog, make_middlewares

if TYPE_CHECKING:
    from emulators.scenario import PullRequestSeed

SERVICE = "devops"
PrStatus = Literal["active", "completed", "abandoned", "notSet"]
LIST_STATUSES = ("notSet", "active", "completed", "abandoned", "all")
DEFAULT_TOP = 101
MAX_TOP = 1000
LATEST_API_VERSION = (7, 1)
_NAMESPACE = uuid.UUID("6f2f5e2c-5b9a-4a57-9d2f-2b1f6c0d7e11")
IDENTITY_KEY = web.RequestKey("identity", str)
_API_VERSION = re.compile(r"^(\d+)\.(\d+)(?:-preview(?:\.\d+)?)?$")


@dataclass(frozen=True, slots=True)
class Project:
    id: str
    name: str


@dataclass(frozen=True, slots=True)
class Repository:
    id: str
    name: str
    project: Project


@dataclass(slots=True)
class PullRequestRecord:
    """One pull request as the emulator stores it."""

    id: int
    repository: Repository
    status: PrStatus = "active"
    is_draft: bool = False
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    closed_at: datetime | None = None
    title: str = ""
    source_ref: str = ""
    target_ref: str = "refs/heads/main"
    omit_closed_date: bool = False
    """Leave `closedDate` out of a closed pull request (to test clients against missing data)."""


@dataclass(slots=True)
class RateLimit:
    """A TSTU-like budget per identity per sliding window."""

    budget: float = 200.0
    window_s: float = 300.0
    cost_per_request: float = 1.0
    delay_allowance: float = 0.0
    """TSTUs past the budget that are delayed rather than blocked."""
    delay_s: float = 0.0
    resource: str = "Core"


class DevOpsState:
    """Organization, projects, repositories, pull requests and credentials; thread-safe."""

    def __init__(
        self,
        org: str = "emulated",
        *,
        pats: Iterable[str] = (),
        members: Iterable[str] | None = None,
        rate_limit: RateLimit | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.org = org
        self.pats: set[str] = set(pats)
        self.members: set[str] | None = set(members) if members is not None else None
        self.rate_limit = rate_limit
        self.clock = clock
        self._projects: dict[str, Project] = {}
        self._repositories: dict[tuple[str, str], Repository] = {}
        self._pull_requests: dict[int, PullRequestRecord] = {}
        self._usage: dict[str, deque[tuple[float, float]]] = {}
        self._lock = threading.Lock()

    # --- seeding -------------------------------------------------------------------------

    def add_pat(self, pat: str) -> None:
        with self._lock:
            self.pats.add(pat)

    def add_project(self, name: str, project_id: str | None = None) -> Project:
        """The project named `name` (created when new; ids are stable per name)."""
        with self._lock:
            return self._project_locked(name, project_id)

    def _project_locked(self, name: str, project_id: str | None = None) -> Project:
        for project in self._projects.values():
            if project.name.lower() == name.lower():
                return project
        project = Project(project_id or str(uuid.uuid5(_NAMESPACE, "project:" + name)), name)
        self._projects[project.id] = project
        return project

    def add_pull_request(
        self,
        pr_id: int,
        *,
        status: PrStatus = "active",
        project: str = "Fabrikam",
        repository: str = "app",
        is_draft: bool = False,
        created_at: datetime | None = None,
        closed_at: datetime | None = None,
        title: str | None = None,
        source_ref: str | None = None,
        target_ref: str = "refs/heads/main",
        omit_closed_date: bool = False,
    ) -> PullRequestRecord:
        """Add (or replace) pull request `pr_id`; closed ones default to closing an hour ago."""
        with self._lock:
            proj = self._project_locked(project)
            key = (proj.id, repository.lower())
            repo = self._repositories.get(key)
            if repo is None:
                repo_id = str(uuid.uuid5(_NAMESPACE, f"repo:{proj.id}:{repository}"))
                repo = self._repositories[key] = Repository(repo_id, repository, proj)
            now = datetime.now(UTC)
            if status in ("completed", "abandoned") and closed_at is None:
                closed_at = now - timedelta(hours=1)
            created = created_at or (closed_at or now) - timedelta(days=1)
            record = PullRequestRecord(
                id=pr_id,
                repository=repo,
                status=status,
                is_draft=is_draft,
                created_at=created,
                closed_at=closed_at if status in ("completed", "abandoned") else None,
                title=title if title is not None else f"Pull request {pr_id}",
                source_ref=source_ref or f"refs/heads/feature/{pr_id}",
                target_ref=target_ref,
                omit_closed_date=omit_closed_date,
            )
            self._pull_requests[pr_id] = record
            return record

    def add_seed(self, seed: PullRequestSeed) -> PullRequestRecord:
        """Add the pull request a scenario describes."""
        return self.add_pull_request(
            seed.id,
            status=seed.status,
            project=seed.project,
            repository=seed.repository,
            is_draft=seed.is_draft,
            created_at=seed.created_at,
            closed_at=seed.closed_at,
            title=seed.title or None,
            source_ref=seed.source_ref,
            target_ref=seed.target_ref,
        )

    def set_status(self, pr_id: int, status: PrStatus, closed_at: datetime | None = None) -> None:
        with self._lock:
            record = self._pull_requests[pr_id]
            record.status = status
            if status in ("completed", "abandoned"):
                record.closed_at = closed_at or datetime.now(UTC)
            else:
                record.closed_at = None

    def remove_pull_request(self, pr_id: int) -> None:
        with self._lock:
            self._pull_requests.pop(pr_id, None)

    # --- queries -------------------------------------------------------------------------

    def find_project(self, name_or_id: str) -> Project | None:
        wanted = name_or_id.lower()
        with self._lock:
            for project in self._projects.values():
                if project.id.lower() == wanted or project.name.lower() == wanted:
                    return project
        return None

    def pull_request(self, pr_id: int) -> PullRequestRecord | None:
        with self._lock:
            return self._pull_requests.get(pr_id)

    def pull_requests(self, project: Project, status: str) -> list[PullRequestRecord]:
        """A project's pull requests with `status` (`all`: any), newest first."""
        with self._lock:
            found = [
                pr
                for pr in self._pull_requests.values()
                if pr.repository.project.id == project.id and status in ("all", pr.status)
            ]
        return sorted(found, key=lambda pr: (pr.created_at, pr.id), reverse=True)

    # --- rate limiting -------------------------------------------------------------------

    def charge(self, identity: str) -> tuple[str, float, dict[str, str]]:
        """Decide `ok`, `delay` or `block` for one request of `identity` and charge for it."""
        limit = self.rate_limit
        if limit is None:
            return "ok", 0.0, {}
        now = self.clock()
        with self._lock:
            usage = self._usage.setdefault(identity, deque())
            while usage and usage[0][0] <= now - limit.window_s:
                usage.popleft()
            used = sum(cost for _, cost in usage) + limit.cost_per_request
            reset = int(time.time() + (usage[0][0] + limit.window_s - now if usage else 0))
            headers = {
                "X-RateLimit-Resource": limit.resource,
                "X-RateLimit-Limit": f"{limit.budget:g}",
                "X-RateLimit-Reset": str(reset),
            }
            if used <= limit.budget:
                usage.append((now, limit.cost_per_request))
                return "ok", 0.0, {}
            if used <= limit.budget + limit.delay_allowance:
                usage.append((now, limit.cost_per_request))
                headers["X-RateLimit-Remaining"] = "0"
                headers["X-RateLimit-Delay"] = f"{limit.delay_s:.3f}"
                return "delay", limit.delay_s, headers
            # Blocked: wait until enough of the window has expired to fit this request.
            excess = used - (limit.budget + limit.delay_allowance)
            freed, wait = 0.0, limit.window_s
            for at, cost in usage:
                freed += cost
                if freed >= excess:
                    wait = at + limit.window_s - now
                    break
            headers["X-RateLimit-Remaining"] = "0"
            headers["Retry-After"] = str(max(1, math.ceil(wait)))
            return "block", 0.0, headers


# --- wire format ---------------------------------------------------------------------------


def format_time(value: datetime) -> str:
    """Azure DevOps' timestamps: UTC, 7 fractional digits, `Z`."""
    utc = value.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond:06d}0Z"


def pull_request_json(pr: PullRequestRecord, base_url: str, org: str) -> dict[str, Any]:
    project = pr.repository.project
    repo = pr.repository
    org_url = f"{base_url}/{org}"
    identity = {
        "displayName": "Emulated User",
        "id": str(uuid.uuid5(_NAMESPACE, "user")),
        "uniqueName": "user@example.com",
        "url": f"{org_url}/_apis/Identities/{uuid.uuid5(_NAMESPACE, 'user')}",
    }
    body: dict[str, Any] = {
        "repository": {
            "id": repo.id,
            "name": repo.name,
            "url": f"{org_url}/{project.id}/_apis/git/repositories/{repo.id}",
            "project": {
                "id": project.id,
                "name": project.name,
                "state": "wellFormed",
                "visibility": "private",
                "url": f"{org_url}/_apis/projects/{project.id}",
            },
        },
        "pullRequestId": pr.id,
        "codeReviewId": pr.id,
        "status": pr.status,
        "createdBy": identity,
        "creationDate": format_time(pr.created_at),
        "title": pr.title,
        "description": "",
        "sourceRefName": pr.source_ref,
        "targetRefName": pr.target_ref,
        "mergeStatus": "succeeded",
        "isDraft": pr.is_draft,
        "mergeId": str(uuid.uuid5(_NAMESPACE, f"merge:{pr.id}")),
        "reviewers": [],
        "url": f"{org_url}/{project.id}/_apis/git/repositories/{repo.id}/pullRequests/{pr.id}",
        "supportsIterations": True,
    }
    if pr.closed_at is not None and not pr.omit_closed_date:
        body["closedDate"] = format_time(pr.closed_at)
        body["closedBy"] = identity
    return body


def error_body(message: str, type_key: str, type_name: str, event_id: int = 3000) -> dict[str, Any]:
    return {
        "$id": "1",
        "innerException": None,
        "message": message,
        "typeName": type_name,
        "typeKey": type_key,
        "errorCode": 0,
        "eventId": event_id,
    }


def error(status: int, message: str, type_key: str, type_name: str) -> web.Response:
    return web.json_response(error_body(message, type_key, type_name), status=status)


def pull_request_not_found() -> web.Response:
    return error(
        404,
        "TF401180: The requested pull request was not found.",
        "GitPullRequestNotFoundException",
        "Microsoft.TeamFoundation.Git.Server.GitPullRequestNotFoundException, "
        "Microsoft.TeamFoundation.Git.Server",
    )


def project_not_found(project: str) -> web.Response:
    return error(
        404,
        f"TF200016: The following project does not exist: {project}. Verify that the name of "
        "the project is correct and that the project exists on the specified Azure DevOps Server.",
        "ProjectDoesNotExistWithNameException",
        "Microsoft.TeamFoundation.Core.WebApi.ProjectDoesNotExistWithNameException, "
        "Microsoft.TeamFoundation.Core.WebApi",
    )


def invalid_argument(name: str, value: str) -> web.Response:
    return error(
        400,
        f"The value '{value}' is not valid for {name}.",
        "InvalidArgumentValueException",
        "Microsoft.TeamFoundation.SourceControl.WebServer.InvalidArgumentValueException, "
        "Microsoft.TeamFoundation.SourceControl.WebServer",
    )


def check_api_version(request: web.Request) -> web.Response | None:
    value = request.query.get("api-version")
    if value is None:
        accept = request.headers.get("Accept", "")
        match = re.search(r"api-version=([^;,\s]+)", accept)
        value = match.group(1) if match else None
    if value is None:
        return error(
            400,
            f'No api-version was supplied for the "{request.method}" request. The version must '
            'be supplied either as part of the Accept header (e.g. "application/json; '
            'api-version=1.0") or as a query parameter (e.g. "?api-version=1.0").',
            "VssVersionNotSpecifiedException",
            "Microsoft.VisualStudio.Services.WebApi.VssVersionNotSpecifiedException, "
            "Microsoft.VisualStudio.Services.WebApi",
        )
    match = _API_VERSION.match(value)
    if match is None:
        return error(
            400,
            f"The api-version '{value}' is not in a valid format.",
            "VssInvalidApiVersionException",
            "Microsoft.VisualStudio.Services.WebApi.VssInvalidApiVersionException, "
            "Microsoft.VisualStudio.Services.WebApi",
        )
    if (int(match.group(1)), int(match.group(2))) > LATEST_API_VERSION:
        return error(
            400,
            f"The requested REST API version of {value} is out of range for this server. "
            "The latest REST API version this server supports is "
            f"{LATEST_API_VERSION[0]}.{LATEST_API_VERSION[1]}.",
            "VssVersionOutOfRangeException",
            "Microsoft.VisualStudio.Services.WebApi.VssVersionOutOfRangeException, "
            "Microsoft.VisualStudio.Services.WebApi",
        )
    return None


SIGN_IN_PAGE = """<!DOCTYPE html>
<html lang="en-US">
<head><title>Azure DevOps Services | Sign In</title></head>
<body>
<p>Sign in to your account to continue to Azure DevOps.</p>
<a href="https://app.vssps.visualstudio.com/_signin?realm=dev.azure.com">Sign in</a>
</body>
</html>
"""


def _unauthorized(request: web.Request, reason: str) -> web.Response:
    if request.headers.get("X-TFS-FedAuthRedirect", "").lower() != "suppress":
        return web.Response(status=203, text=SIGN_IN_PAGE, content_type="text/html")
    host = request.host
    response = web.Response(
        status=401,
        text=f"<html><head><title>Access Denied</title></head><body>{reason}</body></html>",
        content_type="text/html",
    )
    response.headers.add(
        "WWW-Authenticate",
        "Bearer authorization_uri=https://login.microsoftonline.com/"
        "00000000-0000-0000-0000-000000000000",
    )
    response.headers.add("WWW-Authenticate", f'Basic realm="https://{host}/"')
    response.headers.add("WWW-Authenticate", "TFS-Federated")
    response.headers["X-TFS-FedAuthRealm"] = f"https://{host}/"
    response.headers["X-TFS-FedAuthIssuer"] = f"https://{host}/"
    response.headers["X-VSS-ResourceTenant"] = "00000000-0000-0000-0000-000000000000"
    response.headers["X-TFS-ServiceError"] = reason.replace("\n", " ")
    return response


def identify(state: DevOpsState, issuer: TokenIssuer, authorization: str) -> str | None:
    """The identity the Authorization header proves, or None."""
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        _, sep, pat = decoded.partition(":")
        if sep and pat in state.pats:
            return "pat:" + pat[-4:]
        return None
    if scheme.lower() == "bearer":
        claims = issuer.verify(value.strip(), DEVOPS_RESOURCE)
        if claims is None:
            return None
        return "aad:" + claims.subject
    return None


# --- application ---------------------------------------------------------------------------


def make_app(
    state: DevOpsState, knobs: Knobs, log: RequestLog, issuer: TokenIssuer
) -> web.Application:
    """The Azure DevOps emulator; serve it over HTTPS (clients refuse Bearer over http)."""
    shared = make_middlewares(SERVICE, knobs, log)
    app = web.Application(middlewares=[*shared, *_service_middlewares(state, issuer)])
    get_pr, list_prs = _handlers(state)
    app.router.add_get("/{org}/_apis/git/pullrequests/{id}", get_pr, name="devops.pr.get_org")
    app.router.add_get("/{org}/{project}/_apis/git/pullrequests/{id}", get_pr, name="devops.pr.get")
    app.router.add_get("/{org}/{project}/_apis/git/pullrequests", list_prs, name="devops.pr.list")
    return app


def _service_middlewares(state: DevOpsState, issuer: TokenIssuer) -> list[AioMiddleware]:
    """Organization check, then authentication, then rate limiting."""

    @web.middleware
    async def authenticated(request: web.Request, handler: Handler) -> web.StreamResponse:
        identity = identify(state, issuer, request.headers.get("Authorization", ""))
        if identity is None:
            return _unauthorized(request, "TF400813: Resource not available for anonymous access.")
        if (
            identity.startswith("aad:")
            and state.members is not None
            and identity.removeprefix("aad:") not in state.members
        ):
            return _unauthorized(
                request,
                f"TF400813: The user '{identity.removeprefix('aad:')}' is not authorized to "
                "access this resource.",
            )
        request[IDENTITY_KEY] = identity
        return await handler(request)

    @web.middleware
    async def rate_limited(request: web.Request, handler: Handler) -> web.StreamResponse:
        verdict, delay, headers = state.charge(request.get(IDENTITY_KEY, ""))
        if verdict == "block":
            body = error_body(
                f"Request was blocked due to exceeding usage of resource "
                f"'{headers['X-RateLimit-Resource']}' in namespace 'User'. For more information "
                'on why your request was blocked, see the topic "Rate limits" on the Microsoft '
                "Web site (https://go.microsoft.com/fwlink/?LinkId=823950).",
                "RequestBlockedException",
                "Microsoft.TeamFoundation.Framework.Server.RequestBlockedException, "
                "Microsoft.TeamFoundation.Framework.Server",
            )
            return web.json_response(body, status=429, headers=headers)
        if verdict == "delay" and delay > 0:
            await asyncio.sleep(delay)
        response = await handler(request)
        response.headers.update(headers)
        return response

    @web.middleware
    async def organization(request: web.Request, handler: Handler) -> web.StreamResponse:
        org = request.match_info.get("org")
        if org is not None and org.lower() != state.org.lower():
            return web.Response(
                status=404,
                text="<html><body><h1>404 - Page not found</h1></body></html>",
                content_type="text/html",
            )
        return await handler(request)

    return [organization, authenticated, rate_limited]


def _handlers(state: DevOpsState) -> tuple[Handler, Handler]:
    def base_url(request: web.Request) -> str:
        return f"{request.scheme}://{request.host}"

    def parse_id(raw: str) -> int | None:
        if not re.fullmatch(r"-?\d{1,10}", raw):
            return None
        value = int(raw)
        return value if -(2**31) <= value < 2**31 else None

    async def get_pr(request: web.Request) -> web.Response:
        if (bad := check_api_version(request)) is not None:
            return bad
        project = None
        project_name = request.match_info.get("project")
        if project_name is not None:
            project = state.find_project(project_name)
            if project is None:
                return project_not_found(project_name)
        raw = request.match_info["id"]
        pr_id = parse_id(raw)
        if pr_id is None:
            return invalid_argument("pullRequestId", raw)
        pr = state.pull_request(pr_id)
        if pr is None or (project is not None and pr.repository.project.id != project.id):
            return pull_request_not_found()
        return web.json_response(pull_request_json(pr, base_url(request), state.org))

    async def list_prs(request: web.Request) -> web.Response:
        if (bad := check_api_version(request)) is not None:
            return bad
        project_name = request.match_info["project"]
        project = state.find_project(project_name)
        if project is None:
            return project_not_found(project_name)
        status = request.query.get("searchCriteria.status", "active")
        canonical = {s.lower(): s for s in LIST_STATUSES}.get(status.lower())
        if canonical is None:
            return invalid_argument("searchCriteria.status", status)
        numbers: dict[str, int] = {}
        for name, default in (("$top", DEFAULT_TOP), ("$skip", 0)):
            raw = request.query.get(name)
            if raw is None:
                numbers[name] = default
                continue
            if not re.fullmatch(r"\d{1,10}", raw.strip()) or int(raw) >= 2**31:
                return invalid_argument(name, raw)
            numbers[name] = int(raw)
        top = min(numbers["$top"], MAX_TOP)
        skip = numbers["$skip"]
        found = state.pull_requests(project, canonical)[skip : skip + top]
        value = [pull_request_json(pr, base_url(request), state.org) for pr in found]
        return web.json_response({"value": value, "count": len(value)})

    return get_pr, list_prs
