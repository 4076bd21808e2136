"""Which Azure credential the job uses: a service principal or a managed identity.

The arguments are the (already parsed) values of azure-identity's own environment variables:

| argument         | setting                 |
|------------------|-------------------------|
| `client_id`      | `AZURE_CLIENT_ID`       |
| `tenant_id`      | `AZURE_TENANT_ID`       |
| `client_secret`  | `AZURE_CLIENT_SECRET`   |
| `authority_host` | `AZURE_AUTHORITY_HOST`  |

A service principal (`ClientSecretCredential`) when client id, tenant id and secret are all
set; otherwise a managed identity (`ManagedIdentityCredential`), user-assigned with `client_id`
when that is set, else system-assigned.

`authority_host` (a sovereign cloud: `login.microsoftonline.us` or `https://...`) becomes the
service principal's authority, as azure-identity does with `AZURE_AUTHORITY_HOST`; a managed
identity has no authority to change. The managed identity finds its endpoint in the
environment itself (`IDENTITY_ENDPOINT` and `IDENTITY_HEADER` on App Service and Functions,
IMDS elsewhere): that is azure-identity's business, not ours.

The one credential serves the registry and, without a PAT, Azure DevOps.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from azure.core.credentials_async import AsyncTokenCredential

DEVOPS_SCOPE = "499b84ac-1321-427f-aa17-267ca6975798/.default"
"""Azure DevOps' well-known resource id, as an Entra scope."""
ACR_SCOPE = "https://containerregistry.azure.net/.default"


class CredentialKind(enum.Enum):
    SERVICE_PRINCIPAL = "service principal"
    USER_ASSIGNED_MANAGED_IDENTITY = "user-assigned managed identity"
    SYSTEM_ASSIGNED_MANAGED_IDENTITY = "system-assigned managed identity"


@dataclass(frozen=True, slots=True)
class CredentialChoice:
    """The credential the settings select; prints without its secret."""

    kind: CredentialKind
    client_id: str | None = None
    tenant_id: str | None = None
    client_secret: str | None = field(default=None, repr=False)
    authority_host: str | None = None

    def describe(self) -> str:
        """A log-safe one-liner: the kind and the ids, never the secret."""
        parts = [self.kind.value]
        if self.client_id:
            parts.append(f"client id {self.client_id}")
        if self.tenant_id and self.kind is CredentialKind.SERVICE_PRINCIPAL:
            parts.append(f"tenant {self.tenant_id}")
        if self.authority_host and self.kind is CredentialKind.SERVICE_PRINCIPAL:
            parts.append(f"authority {self.authority_host}")
        return ", ".join(parts)


def _given(value: str | None) -> str | None:
    return value.strip() or None if value is not None else None


def choose_credential(
    client_id: str | None = None,
    tenant_id: str | None = None,
    client_secret: str | None = None,
    authority_host: str | None = None,
) -> CredentialChoice:
    """Pick the credential the settings ask for (pure; blank values count as unset)."""
    client_id, tenant_id = _given(client_id), _given(tenant_id)
    client_secret, authority_host = _given(client_secret), _given(authority_host)
    if client_id and tenant_id and client_secret:
        return CredentialChoice(
            CredentialKind.SERVICE_PRINCIPAL, client_id, tenant_id, client_secret, authority_host
        )
    if client_id:
        return CredentialChoice(CredentialKind.USER_ASSIGNED_MANAGED_IDENTITY, client_id)
    return CredentialChoice(CredentialKind.SYSTEM_ASSIGNED_MANAGED_IDENTITY)


def build_credential(choice: CredentialChoice, **options: Any) -> AsyncTokenCredential:
    """The azure-identity async credential for `choice`; `options` go to its constructor.

    The caller owns it: `async with` it, or `await credential.close()` when done.
    """
    from azure.identity.aio import ClientSecretCredential, ManagedIdentityCredential

    if choice.kind is CredentialKind.SERVICE_PRINCIPAL:
        if not (choice.tenant_id and choice.client_id and choice.client_secret):
            raise ValueError("a service principal needs a client id, a tenant id and a secret")
        if choice.authority_host:
            options.setdefault("authority", choice.authority_host)
        return ClientSecretCredential(
            choice.tenant_id, choice.client_id, choice.client_secret, **options
        )
    if choice.kind is CredentialKind.USER_ASSIGNED_MANAGED_IDENTITY:
        return ManagedIdentityCredential(client_id=choice.client_id, **options)
    return ManagedIdentityCredential(**options)


def make_credential(
    client_id: str | None = None,
    tenant_id: str | None = None,
    client_secret: str | None = None,
    authority_host: str | None = None,
    **options: Any,
) -> AsyncTokenCredential:
    """`build_credential(choose_credential(...))` in one call."""
    return build_credential(
        choose_credential(client_id, tenant_id, client_secret, authority_host), **options
    )
