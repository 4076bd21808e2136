"""The registry adapter: Azure Container Registry through `azure-containerregistry`'s aio client.

One `ContainerRegistryClient` serves the whole run. Two policies of our own sit inside its
pipeline, right after azure-core's retry and the SDK's challenge policy (per-retry position):

- `AcrTokenPolicy` + `AcrTokenCache`: the SDK asks for a new refresh and access token on every
  request (4 HTTP requests per operation). The cache keeps the refresh token and the access
  tokens per scope, asks first for one wildcard token (`registry:catalog:* repository:*:*`, as
  `acr purge` does) and, when the registry does not grant wildcards (ABAC mode), for
  per-repository tokens (`repository:NAME:pull,delete,metadata_read,metadata_write`), ten
  repositories per token as the catalog names them. Tokens are renewed shortly before they
  expire and on a 401; a refused refresh token is replaced by a new exchange. The token requests
  go down the same pipeline (so they are bounded, logged and traced like the rest).
- `InFlightLimit`: one semaphore bounds the HTTP requests in flight to the registry, token
  endpoints included. Retries sleep outside it.

Retries: azure-core's retry policy retries 408/429/500/502/503/504 honouring `Retry-After`, but
only 3 times per status by default. A write budget's window can be a minute, so the adapter
allows `retry_status` (default 24) status retries with up to `retry_backoff_max` seconds
between attempts without `Retry-After`: a throttled deletion waits for the next window instead
of failing. Connection failures are retried 3 times, then ServiceUnreachableError. A response
that does not start within `timeout_s` (30 s) counts as a connection failure.

TLS trust: aiohttp (azure-core's async transport) builds its default SSL context once, when it
is imported, so an `SSL_CERT_FILE` set later is not seen; and azure-core's
`connection_verify=<path>` builds a new SSL context per request, which also defeats connection
reuse. The adapter therefore makes one SSL context when it opens: from `ca_file` when given,
otherwise OpenSSL's defaults (which do honour `SSL_CERT_FILE` at that moment), and hands the
client one aiohttp session built on it.

Errors: 401/403 raise AuthenticationError; a locked tag or manifest raises LockedError;
connection failures after retries raise ServiceUnreachableError; anything else after retries
raises RegistryOperationError. A 404 on delete counts as done (the SDK ignores it). A listing
that breaks off (connection failures included) returns `complete=False` with the reason, never a
partial listing as complete.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import ssl
import time
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any, Protocol, TypeVar
from urllib.parse import quote, unquote, urlsplit

import aiohttp
from azure.containerregistry.aio import ContainerRegistryClient
from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    DecodeError,
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
    map_error,
)
from azure.core.pipeline import PipelineContext, PipelineRequest, PipelineResponse
from azure.core.pipeline.policies import AsyncHTTPPolicy
from azure.core.pipeline.transport import AioHttpTransport
from azure.core.rest import HttpRequest

from cleanup.errors import (
    AuthenticationError,
    CleanupError,
    LockedError,
    RegistryOperationError,
    ServiceUnreachableError,
)
from cleanup.model import Manifest, RepositoryListing, Tag

log = logging.getLogger(__name__)

SERVICE_NAME = "the registry"
AUDIENCE = "https://containerregistry.azure.net"
CATALOG = "registry:catalog"
"""The resource key of registry-wide requests (the catalog)."""
WILDCARD_SCOPE = "registry:catalog:* repository:*:*"
CATALOG_SCOPE = "registry:catalog:*"
REPOSITORY_ACTIONS = "pull,delete,metadata_read,metadata_write"
REPOSITORIES_PER_TOKEN = 10
INDEX_MEDIA_TYPES = frozenset(
    {
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    }
)
IMAGE_CONFIG_MEDIA_TYPES = frozenset(
    {
        "application/vnd.oci.image.config.v1+json",
        "application/vnd.docker.container.image.v1+json",
    }
)
# ACR documents this message for locked images; the status is unverified against real ACR, so a
# lock is recognised by either.
LOCKED_STATUS = 405
LOCKED_MESSAGE = "operation is disallowed on this registry, repository or image"

API_VERSION = "2021-07-01"
_WILDCARD_KEY = "*"
_DELETE_ERRORS: dict[int, type[HttpResponseError]] = {
    401: ClientAuthenticationError,
    409: ResourceExistsError,
}
"""The SDK's own error map for its delete operations (404, gone already, is not an error)."""
_V2_PATH = re.compile(r"^(?P<name>.+?)/(?:manifests|blobs|tags|referrers)(?:/|$)")


# --- tokens ------------------------------------------------------------------------------------


def jwt_claims(token: str) -> dict[str, Any] | None:
    """The payload of a JWT, without verifying it; None when it is not one."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1]
    try:
        decoded = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
        claims = json.loads(decoded)
    except (ValueError, TypeError):
        return None
    return claims if isinstance(claims, dict) else None


def grants_repository_wildcard(token: str) -> bool | None:
    """Whether an ACR access token's `access` claim holds `repository:*`; None: cannot tell."""
    claims = jwt_claims(token)
    if claims is None or not isinstance(claims.get("access"), list):
        return None
    return any(
        isinstance(a, dict) and a.get("type") == "repository" and a.get("name") == "*"
        for a in claims["access"]
    )


@dataclass(frozen=True, slots=True)
class CachedToken:
    value: str
    obtained_at: float
    expires_at: float

    def usable(self, now: float, margin_s: float) -> bool:
        lifetime = self.expires_at - self.obtained_at
        return now < self.expires_at - min(margin_s, lifetime * 0.2)


@dataclass(frozen=True, slots=True)
class Grant:
    """The access token for one request, and whether this very call fetched it."""

    value: str
    key: str
    fresh: bool


class RefreshTokenRejectedError(Exception):
    """The token endpoint refused the refresh token (expired or revoked)."""

    def __init__(self, message: str, response: Any = None) -> None:
        super().__init__(message)
        self.response = response
        """The registry's HTTP answer, so that the error names the registry, not the credential."""


class TokenSource(Protocol):
    """How the cache gets tokens (the policy sends these requests down the SDK's pipeline)."""

    async def exchange(self) -> str:
        """A new refresh token for the run's Entra token."""
        ...

    async def access(self, refresh_token: str, scope: str) -> str:
        """An access token for `scope` (space-separated scopes); RefreshTokenRejectedError."""
        ...


class AcrTokenCache:
    """One registry's refresh token and its access tokens per scope; safe across tasks."""

    def __init__(
        self,
        *,
        margin_s: float = 60.0,
        default_lifetime_s: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._margin_s = margin_s
        self._default_lifetime_s = default_lifetime_s
        self._clock = clock
        self._refresh: CachedToken | None = None
        self._access: dict[str, CachedToken] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._hints: dict[str, None] = {}
        self.wildcard_refused = False
        self.counts: Counter[str] = Counter()
        """`exchange`, `access` (token requests) and `wildcard_refused`, for tests and logs."""

    # --- what the adapter tells the cache ----------------------------------------------

    def hint(self, repository: str) -> None:
        """A repository the run will touch soon (batched into per-repository tokens)."""
        self._hints[repository] = None

    def refuse_wildcard(self) -> None:
        if not self.wildcard_refused:
            log.info("the registry does not grant wildcard scopes; using per-repository tokens")
        self.wildcard_refused = True
        self._access.pop(_WILDCARD_KEY, None)
        self.counts["wildcard_refused"] += 1

    def invalidate(self, grant: Grant) -> None:
        cached = self._access.get(grant.key)
        if cached is not None and cached.value == grant.value:
            del self._access[grant.key]

    # --- tokens --------------------------------------------------------------------------

    def _key(self, resource: str) -> str:
        if not self.wildcard_refused:
            return _WILDCARD_KEY
        return resource

    def _cached(self, key: str) -> CachedToken | None:
        cached = self._access.get(key)
        if cached is not None and cached.usable(self._clock(), self._margin_s):
            return cached
        return None

    def _lock(self, key: str) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock

    async def token_for(self, resource: str, source: TokenSource) -> Grant:
        """An access token good for `resource` (a repository name or CATALOG)."""
        while True:
            key = self._key(resource)
            cached = self._cached(key)
            if cached is not None:
                return Grant(cached.value, key, fresh=False)
            # One lock for every access-token fetch: tasks that wait find the token a batch
            # fetched for them (tokens are few, so serialising their requests costs nothing).
            async with self._lock("access"):
                if self._key(resource) != key:
                    continue  # the wildcard was refused while we waited
                cached = self._cached(key)
                if cached is not None:
                    return Grant(cached.value, key, fresh=False)
                grant = await self._fetch(key, source)
            if grant is not None:
                return grant

    async def _fetch(self, key: str, source: TokenSource) -> Grant | None:
        if key == _WILDCARD_KEY:
            scope, keys = WILDCARD_SCOPE, [key]
        elif key == CATALOG:
            scope, keys = CATALOG_SCOPE, [key]
        else:
            keys = [key, *self._batch(key)]
            scope = " ".join(f"repository:{k}:{REPOSITORY_ACTIONS}" for k in keys)
        try:
            value = await self._access_token(scope, source)
        except RefreshTokenRejectedError:
            if key != _WILDCARD_KEY:
                raise
            # A registry may refuse the wildcard at the token endpoint itself.
            self.refuse_wildcard()
            return None
        if key == _WILDCARD_KEY and grants_repository_wildcard(value) is False:
            self.refuse_wildcard()
            return None
        token = self._cache_token(value)
        for k in keys:
            self._access[k] = token
        return Grant(value, key, fresh=True)

    def _batch(self, key: str) -> list[str]:
        now = self._clock()
        batch: list[str] = []
        for name in self._hints:
            if len(batch) >= REPOSITORIES_PER_TOKEN - 1:
                break
            cached = self._access.get(name)
            if name != key and (cached is None or not cached.usable(now, self._margin_s)):
                batch.append(name)
        for name in batch:
            self._hints.pop(name, None)
        self._hints.pop(key, None)
        return batch

    def _cache_token(self, value: str) -> CachedToken:
        now = self._clock()
        claims = jwt_claims(value) or {}
        try:
            expires = float(claims["exp"])
        except (KeyError, TypeError, ValueError):
            expires = now + self._default_lifetime_s
        return CachedToken(value, now, expires)

    async def _access_token(self, scope: str, source: TokenSource) -> str:
        refresh, fresh = await self._refresh_token(source)
        try:
            self.counts["access"] += 1
            return await source.access(refresh.value, scope)
        except RefreshTokenRejectedError:
            if fresh:
                raise
        # The refresh token expired or was revoked early: exchange again, once.
        self._refresh = None
        refresh, _ = await self._refresh_token(source)
        self.counts["access"] += 1
        return await source.access(refresh.value, scope)

    async def _refresh_token(self, source: TokenSource) -> tuple[CachedToken, bool]:
        cached = self._refresh
        if cached is not None and cached.usable(self._clock(), self._margin_s):
            return cached, False
        async with self._lock("refresh"):
            cached = self._refresh
            if cached is not None and cached.usable(self._clock(), self._margin_s):
                return cached, False
            self.counts["exchange"] += 1
            self._refresh = self._cache_token(await source.exchange())
            return self._refresh, True


# --- pipeline policies ---------------------------------------------------------------------


def resource_of(url: str, base_path: str = "") -> str | None:
    """The repository (or CATALOG) a registry URL needs a token for; None for token endpoints."""
    path = urlsplit(url).path.removeprefix(base_path)
    if path.startswith("/acr/v1/"):
        rest = path.removeprefix("/acr/v1/")
        if rest == "_catalog":
            return CATALOG
        name = rest.split("/_", 1)[0]
        return unquote(name) if name else None
    if path.startswith("/v2/"):
        rest = path.removeprefix("/v2/")
        if rest in ("", "_catalog"):
            return CATALOG
        match = _V2_PATH.match(rest)
        return unquote(match["name"]) if match else None
    return None


class _RetryableTokenFailureError(Exception):
    def __init__(self, response: PipelineResponse[Any, Any]) -> None:
        super().__init__(f"token endpoint answered {response.http_response.status_code}")
        self.response = response


class _PipelineTokenSource:
    """Sends the token requests down the rest of the pipeline the policy sits in."""

    def __init__(self, policy: AcrTokenPolicy, send: Callable[[Any], Awaitable[Any]]) -> None:
        self._policy = policy
        self._send = send

    async def _post(self, path: str, form: dict[str, str]) -> dict[str, Any]:
        request = HttpRequest("POST", self._policy.endpoint + path, data=form)
        response: PipelineResponse[Any, Any] = await self._send(
            PipelineRequest(request, PipelineContext(None))
        )
        http = response.http_response
        await http.read()
        status = http.status_code
        if status == 200:
            try:
                body = json.loads(http.text())
            except ValueError as exc:
                raise DecodeError(f"{path} answered a body that is not JSON") from exc
            if isinstance(body, dict):
                return body
            raise DecodeError(f"{path} answered JSON that is not an object")
        if status in (401, 403):
            raise RefreshTokenRejectedError(f"{path} answered {status}", http)
        if status in (408, 429) or status >= 500:
            raise _RetryableTokenFailureError(response)
        raise HttpResponseError(message=f"{path} answered {status}", response=http)

    async def exchange(self) -> str:
        entra = await self._policy.credential.get_token(self._policy.audience + "/.default")
        try:
            body = await self._post(
                "/oauth2/exchange",
                {
                    "grant_type": "access_token",
                    "service": self._policy.service,
                    "access_token": entra.token,
                },
            )
        except RefreshTokenRejectedError as exc:
            raise ClientAuthenticationError(
                message="the registry refused the Entra token (/oauth2/exchange)",
                response=exc.response,
            ) from exc
        token = body.get("refresh_token")
        if not isinstance(token, str) or not token:
            raise DecodeError("/oauth2/exchange answered no refresh_token")
        return token

    async def access(self, refresh_token: str, scope: str) -> str:
        body = await self._post(
            "/oauth2/token",
            {
                "grant_type": "refresh_token",
                "service": self._policy.service,
                "scope": scope,
                "refresh_token": refresh_token,
            },
        )
        token = body.get("access_token")
        if not isinstance(token, str) or not token:
            raise DecodeError("/oauth2/token answered no access_token")
        return token


class AcrTokenPolicy(AsyncHTTPPolicy[Any, Any]):
    """Authorizes each request from the shared AcrTokenCache; renews on a 401."""

    def __init__(
        self, cache: AcrTokenCache, credential: AsyncTokenCredential, endpoint: str, audience: str
    ) -> None:
        super().__init__()
        self.cache = cache
        self.credential = credential
        self.endpoint = endpoint.rstrip("/")
        parts = urlsplit(self.endpoint)
        self.service = parts.netloc
        self._base_path = parts.path
        self.audience = audience

    async def send(self, request: PipelineRequest[Any]) -> PipelineResponse[Any, Any]:
        resource = resource_of(request.http_request.url, self._base_path)
        if resource is None:
            return await self.next.send(request)
        source = _PipelineTokenSource(self, self.next.send)
        try:
            for _ in range(3):
                grant = await self.cache.token_for(resource, source)
                request.http_request.headers["Authorization"] = "Bearer " + grant.value
                response = await self.next.send(request)
                if response.http_response.status_code != 401:
                    return response
                if not grant.fresh:
                    self.cache.invalidate(grant)  # expired or revoked early: fetch anew
                elif grant.key == _WILDCARD_KEY:
                    self.cache.refuse_wildcard()
                else:
                    break
        except _RetryableTokenFailureError as failure:
            return failure.response  # the retry policy above waits and tries again
        except RefreshTokenRejectedError as exc:
            raise ClientAuthenticationError(
                message="the registry refused its own refresh token twice",
                response=exc.response,
            ) from exc
        raise ClientAuthenticationError(
            message=f"the registry refused a fresh token for {resource}",
            response=response.http_response,
        )


class InFlightLimit(AsyncHTTPPolicy[Any, Any]):
    """At most N requests on the wire at once (one semaphore for the registry).

    A request holds its place until its answer is read to the end, a streamed one included:
    so every answer the policies above drop (a 401 renewed, a 429 retried) has freed its
    connection for the next request.
    """

    def __init__(self, semaphore: asyncio.Semaphore) -> None:
        super().__init__()
        self._semaphore = semaphore

    async def send(self, request: PipelineRequest[Any]) -> PipelineResponse[Any, Any]:
        async with self._semaphore:
            response = await self.next.send(request)
            if request.context.options.get("stream"):
                read = getattr(response.http_response, "read", None)  # a REST response's
                if read is not None:
                    await read()
            return response


class _PerPipeline:
    """Per-retry policies, made anew for each pipeline that iterates them.

    The SDK builds two pipelines from the same keyword arguments (the client's and its token
    exchange client's); azure-core links policies through their `next` attribute, so one
    instance must not sit in two pipelines.
    """

    def __init__(self, *factories: Callable[[], AsyncHTTPPolicy[Any, Any]]) -> None:
        self._factories = factories

    def __iter__(self) -> Iterator[AsyncHTTPPolicy[Any, Any]]:
        return (factory() for factory in self._factories)


# --- the adapter -------------------------------------------------------------------------


def _status(exc: BaseException) -> int | None:
    status = getattr(exc, "status_code", None)
    return status if isinstance(status, int) else None


def _error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    try:
        body = json.loads(response.text()) if response is not None else {}
        first = body["errors"][0]
        return f"{first.get('code', '')}: {first.get('message', '')}"
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        return ""


def is_locked(exc: BaseException) -> bool:
    return _status(exc) == LOCKED_STATUS or LOCKED_MESSAGE in _error_code(exc).lower()


_REGISTRY_PATH = re.compile(r"^/(?:acr/|v2/|oauth2/(?:exchange|token)$)")


def _answered_by_registry(exc: BaseException) -> bool:
    """True when the error's HTTP answer came from the registry, not an identity endpoint."""
    response = getattr(exc, "response", None)
    request = getattr(response, "request", None)
    url = getattr(request, "url", None)
    return isinstance(url, str) and _REGISTRY_PATH.match(urlsplit(url).path) is not None


def _first(exc: BaseException) -> str:
    """The first line of an SDK message, short: azure-identity's run to many lines."""
    text = str(getattr(exc, "message", None) or exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


def translate(exc: BaseException, what: str) -> CleanupError:
    """Our error for an SDK error, naming what failed; never a secret."""
    status = _status(exc)
    code = _error_code(exc)
    detail = f"{what}: {type(exc).__name__}" + (f" {status}" if status else "")
    detail += f" ({code})" if code else ""
    # A lock first: the status ACR gives a locked item is unverified, and a 403 that says
    # "disallowed" is a lock to keep, not a refused credential that stops the run.
    if is_locked(exc):
        return LockedError(f"{what} is locked (deleteEnabled is false)")
    if isinstance(exc, ClientAuthenticationError) and not _answered_by_registry(exc):
        # The Azure credential (managed identity, service principal) got no token: say so,
        # rather than blame the registry, which was never asked.
        return AuthenticationError("the Azure credential", f"no token for {what}: {_first(exc)}")
    if isinstance(exc, ClientAuthenticationError) or status in (401, 403):
        return AuthenticationError(SERVICE_NAME, detail)
    if isinstance(exc, (ServiceRequestError, ServiceResponseError)) and status is None:
        return ServiceUnreachableError(SERVICE_NAME, detail)
    return RegistryOperationError(detail)


class AcrRegistry:
    """The Registry protocol over one `ContainerRegistryClient` with a token cache."""

    def __init__(
        self,
        endpoint: str,
        credential: AsyncTokenCredential,
        *,
        concurrency: int = 16,
        ca_file: str | None = None,
        audience: str = AUDIENCE,
        retry_total: int = 30,
        retry_status: int = 24,
        retry_backoff_factor: float = 0.8,
        retry_backoff_max: float = 60.0,
        retry_connect: int = 3,
        page_size: int | None = None,
        timeout_s: float = 30.0,
    ) -> None:
        if not endpoint.startswith(("https://", "http://")):
            endpoint = "https://" + endpoint
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.endpoint = endpoint.rstrip("/")
        self._credential = credential
        self._concurrency = concurrency
        self._ca_file = ca_file
        self._audience = audience
        self._retry: dict[str, Any] = {
            "retry_total": retry_total,
            "retry_status": retry_status,
            "retry_backoff_factor": retry_backoff_factor,
            "retry_backoff_max": retry_backoff_max,
            "retry_connect": retry_connect,
            "retry_read": retry_connect,
        }
        self._page_size = page_size
        self._timeout_s = timeout_s
        self.token_cache = AcrTokenCache()
        self._semaphore = asyncio.Semaphore(concurrency)
        self._session: aiohttp.ClientSession | None = None
        self._client: ContainerRegistryClient | None = None

    # --- lifecycle -----------------------------------------------------------------------

    def ssl_context(self) -> ssl.SSLContext:
        if self._ca_file:
            return ssl.create_default_context(cafile=self._ca_file)
        return ssl.create_default_context()  # OpenSSL's defaults honour SSL_CERT_FILE now

    async def open(self) -> None:
        if self._client is not None:
            return
        connector = aiohttp.TCPConnector(ssl=self.ssl_context(), limit=self._concurrency + 4)
        self._session = aiohttp.ClientSession(
            connector=connector,
            # With trust_env aiohttp looks up ~/.netrc and the proxy variables in a worker
            # thread on every request (two thread hops, a third of a delete's CPU); look the
            # proxy up once here and trust the environment only when one is configured.
            trust_env=_https_proxy_configured(),
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
        )
        # azure-core waits 300 s for a silent connection by default: a hung registry would
        # hold the run for many minutes per retry.
        transport = AioHttpTransport(
            session=self._session,
            session_owner=False,
            connection_timeout=min(10.0, self._timeout_s),
            read_timeout=self._timeout_s,
        )
        policies = _PerPipeline(
            lambda: AcrTokenPolicy(
                self.token_cache, self._credential, self.endpoint, self._audience
            ),
            lambda: InFlightLimit(self._semaphore),
        )
        self._client = ContainerRegistryClient(
            self.endpoint,
            self._credential,
            audience=self._audience,
            transport=transport,
            per_retry_policies=policies,
            **self._retry,
        )

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> AcrRegistry:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _sdk(self) -> ContainerRegistryClient:
        if self._client is None:
            await self.open()
        assert self._client is not None  # noqa: S101 - open() just set it  # nosec B101
        return self._client

    # --- Registry --------------------------------------------------------------------------

    async def list_repository_names(self) -> AsyncIterator[str]:
        client = await self._sdk()
        try:
            async for page in self._pages(client, "/acr/v1/_catalog", "repositories", str):
                for name in page:
                    self.token_cache.hint(name)
                    yield name
        except AzureError as exc:
            raise translate(exc, "listing the repositories") from None

    async def list_repository(self, name: str) -> RepositoryListing:
        client = await self._sdk()
        try:
            tags, raw = await _both(self._tags(client, name), self._raw_manifests(client, name))
            manifests = [_manifest(name, item) for item in raw]
            artifacts = frozenset(str(item["digest"]) for item in raw if _is_artifact(item))
            manifests = await self._fill_in(client, name, manifests, artifacts)
        except AzureError as exc:
            error = translate(exc, f"listing {name}")
            # The catalog was read, so the registry is reachable: connections that keep
            # failing on one repository make that listing incomplete, not the run stop.
            if isinstance(error, AuthenticationError):
                raise error from None
            log.warning("listing %s broke off: %s", name, error)
            return RepositoryListing(name, (), (), complete=False, error=str(error))
        return RepositoryListing(name, tuple(tags), tuple(manifests))

    async def _tags(self, client: ContainerRegistryClient, name: str) -> list[Tag]:
        return [
            Tag(
                repository=name,
                name=str(item["name"]),
                digest=str(item["digest"]),
                delete_enabled=(item.get("changeableAttributes") or {}).get("deleteEnabled")
                is not False,
                last_updated=_time(item.get("lastUpdateTime")),
            )
            async for page in self._pages(client, f"/acr/v1/{_path(name)}/_tags", "tags")
            for item in page
        ]

    async def _manifests(self, client: ContainerRegistryClient, name: str) -> list[Manifest]:
        return [_manifest(name, item) for item in await self._raw_manifests(client, name)]

    async def _raw_manifests(
        self, client: ContainerRegistryClient, name: str
    ) -> list[dict[str, Any]]:
        path = f"/acr/v1/{_path(name)}/_manifests"
        return [item async for page in self._pages(client, path, "manifests") for item in page]

    async def _pages(
        self, client: ContainerRegistryClient, path: str, key: str, item: type = dict
    ) -> AsyncIterator[list[Any]]:
        """A listing's pages as plain JSON (lists of `item`: objects, or the catalog's
        names), following `Link: <...>; rel="next"`; a next page already read is an error.

        The SDK's own paging turns every item into models (and every date through isodate),
        about three times the CPU of the JSON alone; the listing also carries `references`
        and `mediaType`, which its models drop. The requests go through the same client
        pipeline: token cache, in-flight limit, retries and the SDK's challenge policy.
        """
        url: str | None = self._url(path)
        seen: set[str] = set()
        while url is not None:
            if url in seen:
                raise DecodeError(f"{path}: the registry's next page is one already read")
            seen.add(url)
            request = HttpRequest("GET", url, headers={"Accept": "application/json"})
            # The generated client's send_request runs a request through the SDK's pipeline.
            # Streamed, the pipeline leaves the body to be parsed once, here (InFlightLimit
            # has read it already).
            response = await client._client.send_request(request, stream=True)
            if response.status_code in (401, 403):
                raise ClientAuthenticationError(response=response)
            if response.status_code != 200:
                raise HttpResponseError(response=response)
            try:
                items = response.json().get(key) or []
            except (ValueError, AttributeError):
                raise DecodeError(f"{path} answered a page that is not JSON") from None
            if not isinstance(items, list) or not all(isinstance(i, item) for i in items):
                raise DecodeError(f"{path} answered a page without a list of {key}")
            yield items
            url = _next_page(response.headers.get("Link"), self.endpoint)

    def _url(self, path: str) -> str:
        query = f"api-version={API_VERSION}"
        if self._page_size:
            query += f"&n={self._page_size}"
        return f"{self.endpoint}{path}?{query}"

    async def _fill_in(
        self,
        client: ContainerRegistryClient,
        name: str,
        manifests: list[Manifest],
        artifacts: frozenset[str] = frozenset(),
    ) -> list[Manifest]:
        """Read the bodies the listing cannot replace: referrers' subjects, indexes' children.

        Untagged manifests that no index uses may be referrers; so may tagged `artifacts`
        (a config media type that is not an image's: signatures, SBOMs). Tagged images are
        not read: an image is not attached to anything.
        """
        children = {ref for m in manifests for ref in m.references}
        wanted = [
            m
            for m in manifests
            if (not m.tags and m.digest not in children)
            or (m.media_type in INDEX_MEDIA_TYPES and not m.references)
            or m.digest in artifacts
        ]
        bodies = await asyncio.gather(*(self._body(client, name, m.digest) for m in wanted))
        filled = {m.digest: _with_body(m, body) for m, body in zip(wanted, bodies, strict=True)}
        kept: list[Manifest] = []
        for manifest in manifests:
            replacement = filled.get(manifest.digest, manifest)
            if replacement is not None:  # None: deleted since it was listed
                kept.append(replacement)
        return kept

    async def _body(
        self, client: ContainerRegistryClient, name: str, digest: str
    ) -> dict[str, Any] | None:
        try:
            result = await client.get_manifest(name, digest)
        except ResourceNotFoundError:
            return None  # deleted since it was listed
        manifest = result.manifest
        return dict(manifest) if isinstance(manifest, dict) else {}

    async def list_manifests(self, repository: str) -> tuple[Manifest, ...]:
        client = await self._sdk()
        try:
            raw = await self._raw_manifests(client, repository)
            manifests = [_manifest(repository, item) for item in raw]
            artifacts = frozenset(str(item["digest"]) for item in raw if _is_artifact(item))
            return tuple(await self._fill_in(client, repository, manifests, artifacts))
        except AzureError as exc:
            raise translate(exc, f"listing the manifests of {repository}") from None

    async def delete_tag(self, repository: str, tag: str) -> None:
        path = f"/acr/v1/{_path(repository)}/_tags/{quote(tag, safe='')}?api-version={API_VERSION}"
        await self._delete(path, f"tag {repository}:{tag}")

    async def delete_manifest(self, repository: str, digest: str) -> None:
        await self._delete(
            f"/v2/{_path(repository)}/manifests/{quote(digest, safe='')}",
            f"manifest {repository}@{digest}",
        )

    async def _delete(self, path: str, what: str) -> None:
        """One DELETE through the client's pipeline, answered as the SDK's own delete_tag and
        delete_manifest answer: 202 deleted, 404 gone already, anything else an error.

        Sent as a plain request, it skips the SDK's operation layer (URL templating, tracing
        decorator, model deserializer): a sixth of a deletion's CPU, over thousands a run.
        """
        client = await self._sdk()
        request = HttpRequest(
            "DELETE", self.endpoint + path, headers={"Accept": "application/json"}
        )
        try:
            response = await client._client.send_request(request)
            if response.status_code not in (202, 404):
                map_error(response.status_code, response, _DELETE_ERRORS)
                raise HttpResponseError(response=response)
        except AzureError as exc:
            raise translate(exc, what) from None


def _https_proxy_configured() -> bool:
    """Whether HTTPS_PROXY (any case) is set: the one proxy aiohttp's trust_env would use here."""
    return bool(urllib.request.getproxies().get("https"))


_T1 = TypeVar("_T1")
_T2 = TypeVar("_T2")


async def _both(first: Awaitable[_T1], second: Awaitable[_T2]) -> tuple[_T1, _T2]:
    """Await two reads at once; the first failure is raised once both have ended."""
    a, b = await asyncio.gather(first, second, return_exceptions=True)
    for outcome in (a, b):
        if isinstance(outcome, BaseException):
            raise outcome
    return a, b  # type: ignore[return-value]


def _path(repository: str) -> str:
    """A repository name as one URL path segment (`team/api` -> `team%2Fapi`)."""
    return quote(repository, safe="")


_LINK = re.compile(r'<(?P<url>[^>]*)>\s*;\s*rel="?next"?')


def _next_page(link: str | None, endpoint: str) -> str | None:
    """The next page's URL from a `Link` header, or None on the last page."""
    match = _LINK.search(link or "")
    if match is None:
        return None
    target = match["url"]
    if target.startswith("/"):
        target = endpoint + target
    if not target.startswith(endpoint + "/"):
        raise DecodeError("the registry's next page points to another host")
    if "api-version=" not in target:
        target += ("&" if "?" in target else "?") + f"api-version={API_VERSION}"
    return target


def _time(value: object) -> datetime | None:
    """ACR's `2022-07-08T21:58:45.1880796Z` as an aware datetime; None when unreadable."""
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def _is_artifact(item: dict[str, Any]) -> bool:
    """A manifest whose config is not an image's: a signature, an SBOM, another artifact."""
    config = item.get("configMediaType")
    return bool(config) and config not in IMAGE_CONFIG_MEDIA_TYPES


def _manifest(repository: str, item: dict[str, Any]) -> Manifest:
    attributes = item.get("changeableAttributes") or {}
    return Manifest(
        repository=repository,
        digest=str(item["digest"]),
        tags=tuple(item.get("tags") or ()),
        references=tuple(str(r["digest"]) for r in item.get("references") or () if "digest" in r),
        delete_enabled=attributes.get("deleteEnabled") is not False,
        media_type=item.get("mediaType"),
    )


def _with_body(manifest: Manifest, body: dict[str, Any] | None) -> Manifest | None:
    if body is None:
        return None
    subject = body.get("subject")
    references = manifest.references
    if not references and isinstance(body.get("manifests"), list):
        references = tuple(
            str(child["digest"])
            for child in body["manifests"]
            if isinstance(child, dict) and "digest" in child
        )
    media_type = manifest.media_type or body.get("mediaType")
    return Manifest(
        repository=manifest.repository,
        digest=manifest.digest,
        tags=manifest.tags,
        references=references,
        subject=str(subject["digest"])
        if isinstance(subject, dict) and "digest" in subject
        else None,
        delete_enabled=manifest.delete_enabled,
        media_type=media_type,
    )
