"""The managed identity emulator speaks App Service's protocol to azure-identity unchanged."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
from azure.core.exceptions import ClientAuthenticationError
from azure.identity.aio import ManagedIdentityCredential

from emulators.entra import ACR_RESOURCE, DEVOPS_RESOURCE, TokenIssuer
from emulators.harness import Knobs, RequestLog, ServiceThread
from emulators.identity import TOKEN_PATH, IdentityState, make_app, user_assigned

pytestmark = pytest.mark.integration

DEVOPS_SCOPE = DEVOPS_RESOURCE + "/.default"
ACR_SCOPE = ACR_RESOURCE + "/.default"


class Server:
    def __init__(self) -> None:
        self.issuer = TokenIssuer()
        self.log = RequestLog()
        self.uami = user_assigned("cleanup")
        self.state = IdentityState(header="the-header", user_assigned_identities=(self.uami,))
        self.thread = ServiceThread(
            make_app(self.state, Knobs(), self.log, self.issuer), ssl_context=None
        )

    @property
    def endpoint(self) -> str:
        return self.thread.base_url + TOKEN_PATH


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    srv = Server()
    srv.thread.start()
    monkeypatch.setenv("IDENTITY_ENDPOINT", srv.endpoint)
    monkeypatch.setenv("IDENTITY_HEADER", srv.state.header)
    monkeypatch.delenv("IDENTITY_SERVER_THUMBPRINT", raising=False)
    monkeypatch.delenv("MSI_ENDPOINT", raising=False)
    yield srv
    srv.thread.stop()


def raw(server: Server, header: str | None = "the-header", **params: str) -> httpx.Response:
    headers = {} if header is None else {"X-IDENTITY-HEADER": header}
    query = {"api-version": "2019-08-01", "resource": DEVOPS_RESOURCE, **params}
    return httpx.get(server.endpoint, params=query, headers=headers)


async def test_system_assigned_token_for_each_resource(server):
    """ManagedIdentityCredential gets a token per resource, valid only for that resource."""
    async with ManagedIdentityCredential() as credential:
        devops = await credential.get_token(DEVOPS_SCOPE)
        acr = await credential.get_token(ACR_SCOPE)
    assert server.issuer.verify(devops.token, DEVOPS_RESOURCE) is not None
    assert server.issuer.verify(devops.token, ACR_RESOURCE) is None
    assert server.issuer.verify(acr.token, ACR_RESOURCE) is not None
    assert devops.expires_on > time.time()
    assert server.state.issued == {DEVOPS_RESOURCE: 1, ACR_RESOURCE: 1}


async def test_credential_caches_its_token(server):
    """A second get_token for the same resource is served from azure-identity's cache."""
    async with ManagedIdentityCredential() as credential:
        await credential.get_token(DEVOPS_SCOPE)
        await credential.get_token(DEVOPS_SCOPE)
    assert server.log.count("identity", "identity.token") == 1


async def test_user_assigned_by_client_id(server):
    """A user-assigned identity's client_id gets a token whose subject is its principal."""
    async with ManagedIdentityCredential(client_id=server.uami.client_id) as credential:
        token = await credential.get_token(DEVOPS_SCOPE)
    claims = server.issuer.verify(token.token, DEVOPS_RESOURCE)
    assert claims is not None
    assert claims.subject == server.uami.principal_id


async def test_user_assigned_by_resource_id(server):
    """identity_config mi_res_id selects a user-assigned identity too."""
    config = {"mi_res_id": server.uami.resource_id}
    async with ManagedIdentityCredential(identity_config=config) as credential:
        token = await credential.get_token(DEVOPS_SCOPE)
    assert server.issuer.verify(token.token, DEVOPS_RESOURCE) is not None


async def test_unknown_client_id_fails(server):
    """An identity the app does not have fails to authenticate."""
    async with ManagedIdentityCredential(client_id="00000000-0000-0000-0000-00000000beef") as c:
        with pytest.raises(ClientAuthenticationError):
            await c.get_token(DEVOPS_SCOPE)


async def test_token_lifetime_knob(server):
    """The lifetime knob sets expires_on."""
    server.state.token_lifetime_s = 120
    async with ManagedIdentityCredential() as credential:
        token = await credential.get_token(DEVOPS_SCOPE)
    assert token.expires_on <= time.time() + 121


def test_response_shape(server):
    """The answer carries access_token, expires_on as a string, resource and token_type."""
    body = raw(server).json()
    assert set(body) >= {"access_token", "expires_on", "resource", "token_type"}
    assert isinstance(body["expires_on"], str)
    assert body["expires_on"].isdigit()
    assert body["resource"] == DEVOPS_RESOURCE
    assert body["token_type"] == "Bearer"


@pytest.mark.parametrize("header", [None, "wrong"])
def test_wrong_identity_header_is_refused(server, header):
    """A missing or wrong X-IDENTITY-HEADER is refused with 401."""
    r = raw(server, header=header)
    assert r.status_code == 401
    assert server.issuer.issued == 0


@pytest.mark.parametrize(
    "params",
    [
        {"api-version": "2017-09-01"},
        {"resource": ""},
        {"client_id": "nope"},
        {"principal_id": "nope"},
    ],
)
def test_bad_requests_answer_400(server, params):
    """A wrong api-version, no resource or an unknown identity answers 400 JSON."""
    r = raw(server, **params)
    assert r.status_code == 400
    assert r.json()["statusCode"] == 400


def test_unknown_identity_message_is_app_services(server):
    """An unknown user-assigned identity gets App Service's own message."""
    r = raw(server, client_id="nope")
    assert r.json()["message"].startswith("No User Assigned or Delegated Managed Identity found")


def test_system_assigned_can_be_absent(server):
    """Without a system-assigned identity, a request naming no identity answers 400."""
    server.state.system_assigned = False
    assert raw(server).status_code == 400
