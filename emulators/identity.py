"""The App Service managed identity endpoint (`IDENTITY_ENDPOINT` + `IDENTITY_HEADER`).

This is the protocol azure-identity's `ManagedIdentityCredential` speaks when both variables are
set (and `IDENTITY_SERVER_THUMBPRINT` is not): `GET {IDENTITY_ENDPOINT}?api-version=2019-08-01
&resource=<resource>[&client_id=|&principal_id=|&object_id=|&mi_res_id=]` with the header
`X-IDENTITY-HEADER: <IDENTITY_HEADER>`; the answer is JSON with `access_token`, `expires_on`
(epoch seconds, as a string), `resource`, `token_type` and `client_id`. Served over plain http
on 127.0.0.1, as in Azure.

Route: `identity.token` GET /msi/token.

Tokens come from the shared TokenIssuer with the requested resource as audience, so the
registry and Azure DevOps emulators accept only tokens issued for them. The subject of a token
is the identity's principal (object) id.

Emulator decisions:

- A missing or wrong `X-IDENTITY-HEADER` answers 401 `{"statusCode": 401, "message": ...}`
  (the real body is unverified; azure-identity fails either way).
- An api-version other than 2019-08-01, or no `resource`, answers 400.
- A user-assigned identity the app does not have (unknown `client_id`, `principal_id`,
  `object_id` or `mi_res_id`) answers 400 with App Service's message "No User Assigned or
  Delegated Managed Identity found for specified ClientId/ResourceId/PrincipalId."; so does a
  request for the system-assigned identity when `system_assigned` is off.
"""

from __future__ import annotations

import secrets
import threading
import uuid
from collections import Counter
from dataclasses import dataclass

from aiohttp import web

from emulators.entra import TokenIssuer
from emulators.harness import Knobs, RequestLog, make_middlewares

SERVICE = "identity"
API_VERSION = "2019-08-01"
TOKEN_PATH = "/msi/token"  # noqa: S105 - a URL path, not a password
_ID_PARAMS = ("client_id", "principal_id", "object_id", "mi_res_id")
_NAMESPACE = uuid.UUID("0b8f3f62-3c55-4e7e-a0a5-6a3f0f0d1c25")


@dataclass(frozen=True, slots=True)
class ManagedIdentity:
    client_id: str
    principal_id: str
    resource_id: str


def user_assigned(name: str) -> ManagedIdentity:
    """A user-assigned identity with ids derived from `name` (stable across runs)."""
    return ManagedIdentity(
        client_id=str(uuid.uuid5(_NAMESPACE, "client:" + name)),
        principal_id=str(uuid.uuid5(_NAMESPACE, "principal:" + name)),
        resource_id=(
            "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/emulated"
            f"/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{name}"
        ),
    )


class IdentityState:
    """The app's identities, the header secret and the token lifetime knob; thread-safe."""

    def __init__(
        self,
        *,
        header: str | None = None,
        system_assigned: bool = True,
        user_assigned_identities: tuple[ManagedIdentity, ...] = (),
        token_lifetime_s: float | None = None,
    ) -> None:
        self.header = header or secrets.token_hex(16)
        self.system_assigned = system_assigned
        self.system_identity = ManagedIdentity(
            client_id=str(uuid.uuid5(_NAMESPACE, "client:system")),
            principal_id=str(uuid.uuid5(_NAMESPACE, "principal:system")),
            resource_id="",
        )
        self._user_assigned = list(user_assigned_identities)
        self.token_lifetime_s = token_lifetime_s
        """Lifetime of issued tokens; None: the TokenIssuer's own."""
        self.issued: Counter[str] = Counter()
        """Tokens issued per resource."""
        self._lock = threading.Lock()

    def add_user_assigned(self, identity: ManagedIdentity) -> ManagedIdentity:
        with self._lock:
            self._user_assigned.append(identity)
        return identity

    def find(self, param: str, value: str) -> ManagedIdentity | None:
        wanted = value.lower()
        with self._lock:
            for identity in self._user_assigned:
                candidate = {
                    "client_id": identity.client_id,
                    "principal_id": identity.principal_id,
                    "object_id": identity.principal_id,
                    "mi_res_id": identity.resource_id,
                }[param]
                if candidate.lower() == wanted:
                    return identity
        return None

    def record(self, resource: str) -> None:
        with self._lock:
            self.issued[resource] += 1


def _error(status: int, message: str) -> web.Response:
    return web.json_response(
        {"statusCode": status, "message": message, "correlationId": str(uuid.uuid4())},
        status=status,
    )


def make_app(
    state: IdentityState, knobs: Knobs, log: RequestLog, issuer: TokenIssuer
) -> web.Application:
    """The managed identity endpoint; serve it over plain http on 127.0.0.1."""

    async def token(request: web.Request) -> web.Response:
        supplied = request.headers.get("X-IDENTITY-HEADER")
        if supplied is None or not secrets.compare_digest(supplied, state.header):
            return _error(401, "Unauthorized: the X-IDENTITY-HEADER header is missing or wrong.")
        version = request.query.get("api-version")
        if version != API_VERSION:
            return _error(
                400,
                f"The api-version '{version}' is not supported; use {API_VERSION}."
                if version
                else "The api-version query parameter is required.",
            )
        resource = request.query.get("resource")
        if not resource:
            return _error(400, "The resource query parameter is required.")
        given = [(p, request.query[p]) for p in _ID_PARAMS if request.query.get(p)]
        if len(given) > 1:
            return _error(400, "Only one of client_id, principal_id, mi_res_id may be given.")
        identity: ManagedIdentity | None
        if given:
            identity = state.find(*given[0])
        else:
            identity = state.system_identity if state.system_assigned else None
        if identity is None:
            return _error(
                400,
                "No User Assigned or Delegated Managed Identity found for specified "
                "ClientId/ResourceId/PrincipalId.",
            )
        access_token, expires = issuer.issue(
            resource, subject=identity.principal_id, lifetime_s=state.token_lifetime_s
        )
        state.record(resource)
        return web.json_response(
            {
                "access_token": access_token,
                "expires_on": str(int(expires)),
                "resource": resource,
                "token_type": "Bearer",
                "client_id": identity.client_id,
            }
        )

    app = web.Application(middlewares=make_middlewares(SERVICE, knobs, log))
    app.router.add_get(TOKEN_PATH, token, name="identity.token")
    return app
