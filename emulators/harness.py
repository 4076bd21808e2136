"""What every emulated service shares: HTTPS on loopback, a request log, latency and faults.

Each service is an aiohttp application served from a background thread with its own event
loop, so synchronous tests, the product's own event loop and the emulators never share a loop.
Routes are named (`acr.tags.list`, `devops.pr.get`, ...): the request log counts by those names
and fault rules select by them.
"""

from __future__ import annotations

import asyncio
import fnmatch
import random
import ssl
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import trustme
from aiohttp import web
from aiohttp.typedefs import Middleware

DUE = web.RequestKey("due", float)
"""When the request's answer is due (the loop's clock): arrival plus the latency knob."""
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
FaultKind = Literal["status", "drop", "slow", "malformed"]


@dataclass(frozen=True, slots=True)
class LogEntry:
    service: str
    method: str
    route: str
    path: str
    status: int
    at: float
    """When the answer was ready (time.time())."""
    received: float = 0.0
    """When the request arrived: `at - received` is the emulated latency plus the handler."""


class RequestLog:
    """Every request every emulator answered, in order; safe to read from any thread."""

    def __init__(self) -> None:
        self._entries: list[LogEntry] = []
        self._lock = threading.Lock()

    def add(self, entry: LogEntry) -> None:
        with self._lock:
            self._entries.append(entry)

    def entries(self) -> list[LogEntry]:
        with self._lock:
            return list(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def count(
        self,
        service: str | None = None,
        route: str | None = None,
        method: str | None = None,
        status: int | None = None,
    ) -> int:
        """Requests matching every filter given; `route` may be a glob (`acr.*`)."""
        return sum(1 for e in self.entries() if _matches(e, service, route, method, status))

    def by_route(self, service: str | None = None) -> Counter[str]:
        return Counter(e.route for e in self.entries() if service in (None, e.service))


def _matches(
    e: LogEntry, service: str | None, route: str | None, method: str | None, status: int | None
) -> bool:
    return (
        (service is None or e.service == service)
        and (route is None or fnmatch.fnmatchcase(e.route, route))
        and (method is None or e.method == method)
        and (status is None or e.status == status)
    )


@dataclass(slots=True)
class FaultRule:
    """One kind of misbehaviour on the requests a rule selects.

    `route` is a glob over route names; `path_contains` narrows to one item (a repository, a
    pull request id). A rule fires on a selected request with `probability`, at most `times`
    times (None: without end), after letting the first `skip` selected requests through.
    """

    route: str = "*"
    kind: FaultKind = "status"
    status: int = 503
    retry_after: float | None = None
    delay_s: float = 0.0
    probability: float = 1.0
    times: int | None = None
    skip: int = 0
    path_contains: str | None = None
    method: str | None = None
    seen: int = field(default=0, init=False)
    fired: int = field(default=0, init=False)


class Faults:
    """The fault rules of one service; thread-safe, seeded for repeatable runs."""

    def __init__(self, seed: int = 0) -> None:
        self._rules: list[FaultRule] = []
        self._lock = threading.Lock()
        self._random = random.Random(seed)

    def add(self, rule: FaultRule) -> FaultRule:
        with self._lock:
            self._rules.append(rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    @property
    def injected(self) -> int:
        with self._lock:
            return sum(r.fired for r in self._rules)

    def pick(self, route: str, method: str, path: str) -> FaultRule | None:
        """The rule that fires for this request, if any (counts it as fired)."""
        with self._lock:
            for rule in self._rules:
                if not self._selects(rule, route, method, path):
                    continue
                rule.seen += 1
                if rule.seen <= rule.skip:
                    continue
                if rule.times is not None and rule.fired >= rule.times:
                    continue
                if self._random.random() < rule.probability:
                    rule.fired += 1
                    return rule
        return None

    @staticmethod
    def _selects(rule: FaultRule, route: str, method: str, path: str) -> bool:
        return (
            fnmatch.fnmatchcase(route, rule.route)
            and (rule.method is None or rule.method == method)
            and (rule.path_contains is None or rule.path_contains in path)
        )


@dataclass(slots=True)
class Knobs:
    """Per-service behaviour tests and the benchmark turn."""

    latency_ms: float = 0.0
    """Each answer comes this long after its request reached the service's handlers, the
    handler's own work included: a service whose answers take L however busy it is (the
    emulator's one thread is not the many machines of the real service)."""
    faults: Faults = field(default_factory=Faults)


class TestCA:
    """A throwaway certificate authority; clients trust it through SSL_CERT_FILE."""

    __test__ = False  # not a pytest test class

    def __init__(self, directory: Path) -> None:
        self._ca = trustme.CA()
        self._cert = self._ca.issue_cert("127.0.0.1", "localhost", "::1")
        self.ca_file = directory / "emulators-ca.pem"
        self._ca.cert_pem.write_to_path(str(self.ca_file))

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._cert.configure_cert(ctx)
        return ctx

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))


def route_name(request: web.Request) -> str:
    name = request.match_info.route.name
    return name or "unmatched"


def make_middlewares(service: str, knobs: Knobs, log: RequestLog) -> list[Middleware]:
    """Log, then latency, then faults, around every handler of one service."""

    @web.middleware
    async def logged(request: web.Request, handler: Handler) -> web.StreamResponse:
        received = time.time()
        status = 500
        try:
            response = await handler(request)
            status = response.status
        except web.HTTPException as exc:
            status = exc.status
            raise
        except _DroppedError:
            status = 0
            # The transport is gone: whatever is returned here is never written.
            response = web.Response(status=204)
        finally:
            log.add(
                LogEntry(
                    service,
                    request.method,
                    route_name(request),
                    request.path,
                    status,
                    time.time(),
                    received,
                )
            )
        return response

    @web.middleware
    async def delayed(request: web.Request, handler: Handler) -> web.StreamResponse:
        if knobs.latency_ms <= 0:
            return await handler(request)
        due = request[DUE] = asyncio.get_running_loop().time() + knobs.latency_ms / 1000
        try:
            response = await handler(request)
        except asyncio.CancelledError:
            raise
        except BaseException:
            await _until(due)  # an error answer (a 404, a dropped connection) waits too
            raise
        await _until(due)
        return response

    @web.middleware
    async def faulty(request: web.Request, handler: Handler) -> web.StreamResponse:
        rule = knobs.faults.pick(route_name(request), request.method, request.path_qs)
        if rule is None:
            return await handler(request)
        return await apply_fault(rule, request, handler)

    return [logged, delayed, faulty]


async def _until(due: float) -> None:
    """Sleep until the loop's clock reads `due` (at once when it is past)."""
    wait = due - asyncio.get_running_loop().time()
    if wait > 0:
        await asyncio.sleep(wait)


class _DroppedError(Exception):
    """The emulator closed the connection without answering."""


async def apply_fault(
    rule: FaultRule, request: web.Request, handler: Handler
) -> web.StreamResponse:
    if rule.kind == "slow":
        await asyncio.sleep(rule.delay_s)
        return await handler(request)
    if rule.kind == "drop":
        await _until(request.get(DUE, 0.0))  # the connection drops when the answer was due
        if request.transport is not None:
            request.transport.abort()
        raise _DroppedError
    if rule.kind == "malformed":
        return web.Response(
            status=200, text='{"value": [{"truncated', content_type="application/json"
        )
    headers = {}
    if rule.retry_after is not None:
        headers["Retry-After"] = f"{rule.retry_after:g}"
    return web.json_response(
        {"errors": [{"code": "INJECTED", "message": f"injected fault {rule.status}"}]},
        status=rule.status,
        headers=headers,
    )


class ServiceThread:
    """Serves one aiohttp application on 127.0.0.1 from a background thread."""

    def __init__(
        self, app: web.Application, *, ssl_context: ssl.SSLContext | None, port: int = 0
    ) -> None:
        self._app = app
        self._ssl = ssl_context
        self._requested_port = port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def scheme(self) -> str:
        return "https" if self._ssl is not None else "http"

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=30)

    async def _start(self) -> None:
        self._runner = web.AppRunner(self._app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self._requested_port, ssl_context=self._ssl)
        await site.start()
        server = site._server  # aiohttp exposes the bound port only here
        assert server is not None  # noqa: S101 - started just above
        sockets: Iterable[object] = getattr(server, "sockets", ())
        self.port = next(iter(sockets)).getsockname()[1]  # type: ignore[attr-defined]

    def stop(self) -> None:
        if self._runner is not None:
            runner = self._runner
            asyncio.run_coroutine_threadsafe(runner.cleanup(), self._loop).result(timeout=30)
            self._runner = None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._loop.close()

    def call(self, fn: Callable[[], object]) -> object:
        """Run `fn` on the service's loop (to change state consistently while it serves)."""

        async def wrapper() -> object:
            return fn()

        return asyncio.run_coroutine_threadsafe(wrapper(), self._loop).result(timeout=30)
