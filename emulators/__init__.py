"""Local stand-ins for Azure Container Registry, Azure DevOps and the managed identity endpoint.

`Emulators` starts all three on 127.0.0.1 (registry and Azure DevOps over HTTPS with one test CA,
managed identity over plain http, as in Azure), with one shared RequestLog, TestCA and
TokenIssuer, seeded from a `Scenario`::

    with Emulators(scenario) as emu:
        os.environ.update(emu.env)      # CLEANUP_REGISTRY, AZURE_DEVOPS_ORG_URL, ...
        emu.acr.state.add_image("team/api", ["PR12"])
        emu.acr.knobs.mode = "abac"
        emu.log.count(service="acr")

Each service handle (`.acr`, `.devops`, `.identity`) has `.state`, `.knobs`, `.url` and
`.call(fn)` (run `fn` on the service's own loop).
"""

from __future__ import annotations

import secrets
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from emulators.acr import AcrKnobs, AcrState
from emulators.entra import TokenIssuer
from emulators.harness import Knobs, RequestLog, ServiceThread, TestCA
from emulators.scenario import Scenario

if TYPE_CHECKING:
    from emulators.devops import DevOpsState
    from emulators.identity import IdentityState

__all__ = ["Emulators", "Service"]

DEFAULT_ORG = "contoso"
StateT = TypeVar("StateT")
KnobsT = TypeVar("KnobsT", bound=Knobs)


@dataclass(slots=True)
class Service(Generic[StateT, KnobsT]):
    """One running emulator: its state, its knobs and where it listens."""

    name: str
    state: StateT
    knobs: KnobsT
    thread: ServiceThread

    @property
    def url(self) -> str:
        return self.thread.base_url

    def call(self, fn: Callable[[], object]) -> object:
        return self.thread.call(fn)


class Emulators:
    """The three emulators, started together; a context manager."""

    def __init__(
        self,
        scenario: Scenario | None = None,
        *,
        directory: Path | None = None,
        acr_knobs: AcrKnobs | None = None,
        devops_knobs: Knobs | None = None,
        identity_knobs: Knobs | None = None,
        token_lifetime_s: float = 3600.0,
        organization: str = DEFAULT_ORG,
        pat: str | None = None,
        ports: dict[str, int] | None = None,
    ) -> None:
        self.scenario = scenario or Scenario()
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if directory is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="emulators-")
            directory = Path(self._tmp.name)
        self.directory = directory
        self.log = RequestLog()
        self.ca = TestCA(directory)
        self.issuer = TokenIssuer(lifetime_s=token_lifetime_s)
        self.organization = organization
        self.pat = pat or "emulated-pat-" + secrets.token_hex(12)
        self._ports = ports or {}
        self._acr_knobs = acr_knobs or AcrKnobs()
        self._devops_knobs = devops_knobs or Knobs()
        self._identity_knobs = identity_knobs or Knobs()
        self._acr: Service[AcrState, AcrKnobs] | None = None
        self._devops: Service[DevOpsState, Knobs] | None = None
        self._identity: Service[IdentityState, Knobs] | None = None

    # --- lifecycle ---------------------------------------------------------------------

    def __enter__(self) -> Emulators:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        try:
            self._start_acr()
            self._start_devops()
            self._start_identity()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for service in (self._identity, self._devops, self._acr):
            if service is not None:
                service.thread.stop()
        self._acr = self._devops = self._identity = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def _start_acr(self) -> None:
        from emulators import acr

        state = AcrState()
        state.seed(self.scenario)
        app = acr.make_app(state, self._acr_knobs, self.log, self.issuer)
        thread = ServiceThread(
            app, ssl_context=self.ca.server_context(), port=self._ports.get("acr", 0)
        )
        thread.start()
        self._acr = Service("acr", state, self._acr_knobs, thread)

    def _start_devops(self) -> None:
        from emulators import devops

        state = devops.DevOpsState(self.organization, pats=[self.pat])
        for project in self.scenario.projects:
            state.add_project(project)
        for pr in self.scenario.pull_requests:
            state.add_seed(pr)
        app = devops.make_app(state, self._devops_knobs, self.log, self.issuer)
        thread = ServiceThread(
            app, ssl_context=self.ca.server_context(), port=self._ports.get("devops", 0)
        )
        thread.start()
        self._devops = Service("devops", state, self._devops_knobs, thread)

    def _start_identity(self) -> None:
        from emulators import identity

        state = identity.IdentityState()
        app = identity.make_app(state, self._identity_knobs, self.log, self.issuer)
        thread = ServiceThread(app, ssl_context=None, port=self._ports.get("identity", 0))
        thread.start()
        self._identity = Service("identity", state, self._identity_knobs, thread)

    # --- handles -----------------------------------------------------------------------

    def _running(self, name: str, service: Any) -> Any:
        if service is None:
            raise RuntimeError("the emulators are not running (use `with Emulators(...)`)")
        return service

    @property
    def acr(self) -> Service[AcrState, AcrKnobs]:
        service: Service[AcrState, AcrKnobs] = self._running("acr", self._acr)
        return service

    @property
    def devops(self) -> Service[DevOpsState, Knobs]:
        service: Service[DevOpsState, Knobs] = self._running("devops", self._devops)
        return service

    @property
    def identity(self) -> Service[IdentityState, Knobs]:
        service: Service[IdentityState, Knobs] = self._running("identity", self._identity)
        return service

    @property
    def registry_url(self) -> str:
        return self.acr.url

    @property
    def ca_file(self) -> Path:
        return self.ca.ca_file

    @property
    def env(self) -> dict[str, str]:
        """The environment a client of the three services needs."""
        env = {"CLEANUP_REGISTRY": self.acr.url, "SSL_CERT_FILE": str(self.ca.ca_file)}
        if self._devops is not None:
            env["AZURE_DEVOPS_ORG_URL"] = f"{self._devops.url}/{self.organization}"
            env["AZURE_DEVOPS_PROJECT"] = self.scenario.project
            env["AZURE_DEVOPS_PAT"] = self.pat
        if self._identity is not None:
            from emulators.identity import TOKEN_PATH

            env["IDENTITY_ENDPOINT"] = self._identity.url + TOKEN_PATH
            env["IDENTITY_HEADER"] = self._identity.state.header
        return env
